//! Applies a batch of commands in one database transaction and says what to answer.
//!
//! One transaction per batch (a poll's worth of records of one topic) holds every
//! balance change and every record of an outcome, so a batch is applied entirely or
//! not at all. A command id already recorded — by an earlier batch, another partition,
//! another instance, or the JVM handler — is answered as the first time and changes
//! nothing. Concurrent batches lock the accounts they touch in IBAN order; a unique
//! violation on `cmt`/`cac`/`balance` means another transaction got there first, and the
//! caller retries the whole batch, which then sees the recorded outcome.

use std::collections::{HashMap, HashSet};

use diesel::pg::PgConnection;
use diesel::prelude::*;
use uuid::Uuid;

use crate::rules::{
    self, AccountCreationOutcome, AccountType, BalanceChange, IBAN_ATTEMPTS, IBAN_TAKEN, Iban,
    Transfer, settle_transfer,
};
use crate::storage::{
    self, NewAccountCreation, NewBalance, NewBalanceChange, NewTransfer, RecordPosition,
};

/// A ConfirmAccountCreation, as the handler needs it.
#[derive(Clone, Debug)]
pub struct AccountCreationCommand {
    pub id: Uuid,
    pub account_type: AccountType,
}

/// A ConfirmMoneyTransfer, with the position of the record that carried it.
#[derive(Clone, Debug)]
pub struct TransferCommand {
    pub id: Uuid,
    pub read_at: RecordPosition,
    pub transfer: Transfer,
}

/// The answer to a transfer and the BalanceChanged events to publish with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferAnswer {
    /// `None` when confirmed.
    pub failure: Option<String>,
    pub balance_changes: Vec<BalanceChange>,
}

/// Creates accounts for the commands not seen before; answers, in command order.
pub fn handle_account_creations(
    conn: &mut PgConnection,
    commands: &[AccountCreationCommand],
) -> QueryResult<Vec<AccountCreationOutcome>> {
    conn.transaction(|conn| {
        let ids: Vec<Uuid> = commands.iter().map(|c| c.id).collect();
        let mut answers: HashMap<Uuid, AccountCreationOutcome> =
            storage::recorded_account_creations(conn, &ids)?;

        // Commands seen for the first time (once each, even if the batch repeats an id).
        let mut seen = HashSet::new();
        let fresh: Vec<&AccountCreationCommand> = commands
            .iter()
            .filter(|c| !answers.contains_key(&c.id) && seen.insert(c.id))
            .collect();

        let mut rng = rand::rng();
        let mut drawn: HashMap<Uuid, (Iban, String)> = HashMap::new();
        let mut pending: Vec<Uuid> = fresh.iter().map(|c| c.id).collect();
        let mut claimed: HashSet<Iban> = HashSet::new();
        for _ in 0..IBAN_ATTEMPTS {
            if pending.is_empty() {
                break;
            }
            for id in &pending {
                drawn.insert(
                    *id,
                    (Iban::generate(&mut rng), rules::generate_token(&mut rng)),
                );
            }
            let candidates: Vec<&str> = pending.iter().map(|id| drawn[id].0.as_str()).collect();
            let taken: HashSet<String> = storage::existing_ibans(conn, &candidates)?
                .into_iter()
                .collect();
            // Also refuse an IBAN drawn twice within this batch.
            pending.retain(|id| {
                let iban = &drawn[id].0;
                taken.contains(iban.as_str()) || !claimed.insert(iban.clone())
            });
        }
        let failed: HashSet<Uuid> = pending.into_iter().collect();

        let mut new_balances = Vec::new();
        let mut new_records = Vec::new();
        for command in &fresh {
            let (iban, token) = &drawn[&command.id];
            let account_type = command.account_type;
            let reason = failed.contains(&command.id).then_some(IBAN_TAKEN);
            if reason.is_none() {
                new_balances.push(NewBalance::new_account(iban.as_str(), token, account_type));
            }
            // Like the JVM handler, a failure row keeps the IBAN and token it drew.
            new_records.push(NewAccountCreation {
                uuid: command.id,
                iban: Some(iban.as_str()),
                token: Some(token),
                account_type: Some(account_type.as_str()),
                reason,
            });
        }
        if !new_balances.is_empty() {
            storage::insert_balances(conn, &new_balances)?;
        }
        if !new_records.is_empty() {
            new_records.sort_by_key(|row| row.uuid);
            storage::insert_account_creations(conn, &new_records)?;
        }

        for command in &fresh {
            let (iban, token) = &drawn[&command.id];
            let taken = failed.contains(&command.id);
            let answer = AccountCreationOutcome::decide(iban, token, command.account_type, taken);
            answers.insert(command.id, answer);
        }
        Ok(commands.iter().map(|c| answers[&c.id].clone()).collect())
    })
}

/// Applies the transfers not seen before, in command order; answers, in command order.
///
/// A command whose id was recorded is answered as recorded. Its BalanceChanged events
/// are published again only when this is the very record that was applied and its
/// events were not yet acknowledged by Kafka (a redelivery after a crash; the consumer
/// loop forgets the events once acknowledged). A different record with the same id is
/// a duplicate command and changes nothing downstream.
pub fn handle_transfers(
    conn: &mut PgConnection,
    commands: &[TransferCommand],
) -> QueryResult<Vec<TransferAnswer>> {
    conn.transaction(|conn| {
        let ids: Vec<Uuid> = commands.iter().map(|c| c.id).collect();
        let recorded = storage::recorded_transfers(conn, &ids)?;
        let redelivered: HashSet<Uuid> = commands
            .iter()
            .filter(|c| {
                recorded
                    .get(&c.id)
                    .is_some_and(|r| r.first_seen_at == Some(c.read_at))
            })
            .map(|c| c.id)
            .collect();
        let redelivered_ids: Vec<Uuid> = redelivered.iter().copied().collect();
        let mut replayed_events = storage::recorded_balance_changes(conn, &redelivered_ids)?;

        let mut seen = HashSet::new();
        let fresh: Vec<&TransferCommand> = commands
            .iter()
            .filter(|c| !recorded.contains_key(&c.id) && seen.insert(c.id))
            .collect();

        let mut ibans: Vec<Iban> = fresh
            .iter()
            .flat_map(|c| rules::ibans_touched(&c.transfer))
            .collect();
        ibans.sort();
        ibans.dedup();
        let iban_texts: Vec<&str> = ibans.iter().map(Iban::as_str).collect();
        let mut accounts = storage::lock_accounts(conn, &iban_texts)?;
        let amounts_before: HashMap<Iban, i64> = accounts
            .iter()
            .map(|(iban, a)| (iban.clone(), a.amount))
            .collect();

        let mut fresh_answers: HashMap<Uuid, TransferAnswer> = HashMap::with_capacity(fresh.len());
        for command in &fresh {
            let answer = match settle_transfer(&command.transfer, &mut accounts) {
                Ok(balance_changes) => TransferAnswer {
                    failure: None,
                    balance_changes,
                },
                Err(failure) => TransferAnswer {
                    failure: Some(failure.reason().to_string()),
                    balance_changes: vec![],
                },
            };
            fresh_answers.insert(command.id, answer);
        }

        let changed: Vec<(&str, i64)> = accounts
            .iter()
            .filter(|(iban, account)| amounts_before[*iban] != account.amount)
            .map(|(iban, account)| (iban.as_str(), account.amount))
            .collect();
        let (changed_ibans, changed_amounts): (Vec<&str>, Vec<i64>) = changed.into_iter().unzip();
        storage::update_amounts(conn, &changed_ibans, &changed_amounts)?;

        let mut transfer_rows: Vec<NewTransfer> = fresh
            .iter()
            .map(|c| NewTransfer {
                uuid: c.id,
                reason: fresh_answers[&c.id].failure.as_deref(),
                source_partition: Some(c.read_at.partition),
                source_offset: Some(c.read_at.offset),
            })
            .collect();
        if !transfer_rows.is_empty() {
            transfer_rows.sort_by_key(|row| row.uuid);
            storage::insert_transfers(conn, &transfer_rows)?;
        }
        let change_rows: Vec<NewBalanceChange> =
            fresh
                .iter()
                .flat_map(|c| {
                    fresh_answers[&c.id].balance_changes.iter().enumerate().map(
                        |(position, change)| NewBalanceChange {
                            cmt_uuid: c.id,
                            position: position as i16,
                            iban: &change.iban,
                            new_balance: change.new_balance,
                            changed_by: change.changed_by,
                            from_to: change.from_to.as_bytes(),
                            description: change.description.as_bytes(),
                        },
                    )
                })
                .collect();
        storage::insert_balance_changes(conn, &change_rows)?;

        // Answers in command order. The first occurrence in the batch of a fresh id gets
        // the events; a repeat of it within the batch is a duplicate command.
        let mut events_given = HashSet::new();
        Ok(commands
            .iter()
            .map(|c| {
                if let Some(answer) = fresh_answers.get(&c.id) {
                    if events_given.insert(c.id) {
                        return answer.clone();
                    }
                    return TransferAnswer {
                        failure: answer.failure.clone(),
                        balance_changes: vec![],
                    };
                }
                let failure = recorded[&c.id].reason.clone();
                let balance_changes = if redelivered.contains(&c.id) {
                    replayed_events.remove(&c.id).unwrap_or_default()
                } else {
                    vec![]
                };
                TransferAnswer {
                    failure,
                    balance_changes,
                }
            })
            .collect())
    })
}
