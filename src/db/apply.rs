//! The batch transactions: each applies a batch of commands of one kind in one database
//! transaction and says what to answer.
//!
//! One transaction per batch (a poll's worth of records of one topic) holds every
//! balance change and every record of an outcome, so a batch is applied entirely or
//! not at all. A command id already recorded — by an earlier batch, another partition,
//! another instance, or the JVM handler — is answered as the first time and changes
//! nothing. Concurrent batches lock the accounts they touch in IBAN order; a unique
//! violation on `cmt`/`cac`/`balance` means another transaction got there first, and the
//! caller retries the whole batch, which then sees the recorded outcome. No network
//! call other than to PostgreSQL happens while a transaction is open.

use std::collections::{HashMap, HashSet};

use diesel::pg::PgConnection;
use diesel::prelude::*;
use uuid::Uuid;

use crate::db::accounts::{self, NewAccountCreation, NewBalance};
use crate::db::outbox;
use crate::db::transfers::{self, NewBalanceChange, NewTransfer};
use crate::domain::account::{IBAN_TAKEN, draw_new_accounts};
use crate::domain::transfer::{ibans_touched, settle_transfer};
use crate::domain::{
    AccountCreationCommand, AccountCreationOutcome, Iban, TransferAnswer, TransferCommand,
};

/// Creates accounts for the commands not seen before; answers, in command order.
pub fn apply_account_creations(
    conn: &mut PgConnection,
    commands: &[AccountCreationCommand],
) -> QueryResult<Vec<AccountCreationOutcome>> {
    conn.transaction(|conn| {
        let ids: Vec<Uuid> = commands.iter().map(|c| c.id).collect();
        let mut answers: HashMap<Uuid, AccountCreationOutcome> =
            accounts::recorded_account_creations(conn, &ids)?;

        // Commands seen for the first time (once each, even if the batch repeats an id).
        let mut seen = HashSet::new();
        let fresh: Vec<&AccountCreationCommand> = commands
            .iter()
            .filter(|c| !answers.contains_key(&c.id) && seen.insert(c.id))
            .collect();
        let fresh_ids: Vec<Uuid> = fresh.iter().map(|c| c.id).collect();
        let drawn = draw_new_accounts(&fresh_ids, &mut rand::rng(), |candidates| {
            accounts::taken_ibans(conn, candidates)
        })?;

        let mut new_balances = Vec::new();
        let mut new_records = Vec::new();
        for (command, (_, draw)) in fresh.iter().zip(&drawn) {
            if !draw.taken {
                new_balances.push(NewBalance::new_account(
                    draw.iban.as_str(),
                    &draw.token,
                    command.account_type,
                ));
            }
            // Like the JVM handler, a failure row keeps the IBAN and token it drew.
            new_records.push(NewAccountCreation {
                uuid: command.id,
                iban: Some(draw.iban.as_str()),
                token: Some(&draw.token),
                account_type: Some(command.account_type.as_str()),
                reason: draw.taken.then_some(IBAN_TAKEN),
            });
        }
        if !new_balances.is_empty() {
            accounts::insert_balances(conn, &new_balances)?;
        }
        if !new_records.is_empty() {
            new_records.sort_by_key(|row| row.uuid);
            accounts::insert_account_creations(conn, &new_records)?;
        }

        for (command, (_, draw)) in fresh.iter().zip(&drawn) {
            let answer = AccountCreationOutcome::decide(
                &draw.iban,
                &draw.token,
                command.account_type,
                draw.taken,
            );
            answers.insert(command.id, answer);
        }
        // Every id is recorded or fresh, so every command has its answer.
        Ok(commands
            .iter()
            .filter_map(|c| answers.get(&c.id).cloned())
            .collect())
    })
}

/// Where the publisher of the events a batch writes runs, as far as the loop knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// This instance publishes: the loop wakes it in process after the commit.
    InThisInstance,
    /// Another instance may: the transaction also notifies it through PostgreSQL.
    ElsewhereToo,
}

/// Applies the transfers not seen before, in command order; answers, in command order.
///
/// The BalanceChanged events of the confirmed ones go into the outbox in the same
/// transaction (see [`crate::outbox`]), after the accounts are locked, so for each
/// account their `seq` follows the order of its balance changes. A command whose id was
/// recorded is answered as recorded and writes no event: if its first record's events
/// are still unpublished (a crash), they are in the outbox already.
pub fn apply_transfers(
    conn: &mut PgConnection,
    commands: &[TransferCommand],
    wake: Wake,
) -> QueryResult<Vec<TransferAnswer>> {
    conn.transaction(|conn| {
        let ids: Vec<Uuid> = commands.iter().map(|c| c.id).collect();
        let recorded = transfers::recorded_transfers(conn, &ids)?;

        let mut seen = HashSet::new();
        let fresh: Vec<&TransferCommand> = commands
            .iter()
            .filter(|c| !recorded.contains_key(&c.id) && seen.insert(c.id))
            .collect();

        let mut ibans: Vec<Iban> = fresh
            .iter()
            .flat_map(|c| ibans_touched(&c.transfer))
            .collect();
        ibans.sort();
        ibans.dedup();
        let iban_texts: Vec<&str> = ibans.iter().map(Iban::as_str).collect();
        let mut accounts = transfers::lock_accounts(conn, &iban_texts)?;
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
        let mut transfer_rows: Vec<NewTransfer> = fresh
            .iter()
            .map(|c| NewTransfer {
                uuid: c.id,
                reason: fresh_answers[&c.id].failure.as_deref(),
                source_partition: Some(c.read_at.partition),
                source_offset: Some(c.read_at.offset),
            })
            .collect();
        // In id order, so that two instances inserting the same ids cannot deadlock.
        transfer_rows.sort_by_key(|row| row.uuid);
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
        transfers::write_transfers(conn, &changed, &transfer_rows, &change_rows)?;
        if !change_rows.is_empty() && wake == Wake::ElsewhereToo {
            outbox::wake_publisher(conn)?;
        }

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
                TransferAnswer {
                    failure: recorded[&c.id].clone(),
                    balance_changes: vec![],
                }
            })
            .collect())
    })
}

#[cfg(test)]
mod tests {
    use diesel::dsl::count_star;

    use super::*;
    use crate::db::schema::balance;
    use crate::db::test_database::TestDatabase;
    use crate::domain::account::{NEW_ACCOUNT_AMOUNT, NEW_ACCOUNT_LIMIT};
    use crate::domain::iban::BANK_IBAN;
    use crate::domain::{AccountType, RecordPosition, Transfer};

    fn open(conn: &mut PgConnection, id: Uuid) -> (String, String) {
        let command = AccountCreationCommand {
            id,
            account_type: AccountType::Manual,
        };
        match &apply_account_creations(conn, &[command]).unwrap()[..] {
            [AccountCreationOutcome::Confirmed { iban, token, .. }] => {
                (iban.clone(), token.clone())
            }
            other => panic!("not confirmed: {other:?}"),
        }
    }

    fn accounts(conn: &mut PgConnection) -> i64 {
        balance::table.select(count_star()).first(conn).unwrap()
    }

    fn amount_and_limit(conn: &mut PgConnection, iban: &str) -> (i64, i64) {
        balance::table
            .filter(balance::iban.eq(iban))
            .select((balance::amount, balance::lmt))
            .first(conn)
            .unwrap()
    }

    fn transfer(
        id: Uuid,
        offset: i64,
        from: &str,
        to: &str,
        token: &str,
        amount: i64,
    ) -> TransferCommand {
        TransferCommand {
            id,
            read_at: RecordPosition {
                partition: 0,
                offset,
            },
            transfer: Transfer {
                token: token.into(),
                amount,
                from: from.into(),
                to: to.into(),
                description: "unit test".into(),
            },
        }
    }

    #[test]
    fn an_account_is_created_once_and_answered_again_as_recorded() {
        let mut db = TestDatabase::new("accounts");
        let conn = &mut db.conn;
        let before = accounts(conn);
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        let command = |id| AccountCreationCommand {
            id,
            account_type: AccountType::Auto,
        };
        // The batch repeats an id: one account for it, the same answer twice.
        let answers =
            apply_account_creations(conn, &[command(first), command(first), command(second)])
                .unwrap();
        assert_eq!(answers.len(), 3);
        assert_eq!(answers[0], answers[1]);
        assert_ne!(answers[0], answers[2]);
        assert_eq!(accounts(conn), before + 2);
        let AccountCreationOutcome::Confirmed { iban, .. } = &answers[0] else {
            panic!("{answers:?}")
        };
        assert_eq!(
            amount_and_limit(conn, iban),
            (NEW_ACCOUNT_AMOUNT, NEW_ACCOUNT_LIMIT)
        );

        // Redelivered later: answered as recorded, nothing created.
        let again = apply_account_creations(conn, &[command(second), command(first)]).unwrap();
        assert_eq!(again, vec![answers[2].clone(), answers[0].clone()]);
        assert_eq!(accounts(conn), before + 2);
    }

    #[test]
    fn a_transfer_is_applied_once_and_its_events_written_once_to_the_outbox() {
        let mut db = TestDatabase::new("transfers");
        let conn = &mut db.conn;
        let (iban, _) = open(conn, Uuid::new_v4());
        let id = Uuid::new_v4();
        let deposit = transfer(id, 7, "cash", &iban, "", 500);
        let answers =
            apply_transfers(conn, std::slice::from_ref(&deposit), Wake::InThisInstance).unwrap();
        assert_eq!(answers[0].failure, None);
        assert_eq!(answers[0].balance_changes.len(), 1);
        assert_eq!(answers[0].balance_changes[0].new_balance, 500);

        // The same record again (a crash before the acknowledgement) and another record
        // with the same id: answered as recorded, no second deposit, no second event.
        let duplicate = transfer(id, 8, "cash", &iban, "", 500);
        for again in [deposit, duplicate] {
            let answer = &apply_transfers(conn, &[again], Wake::InThisInstance).unwrap()[0];
            assert_eq!(
                (answer.failure.as_deref(), answer.balance_changes.len()),
                (None, 0)
            );
        }
        assert_eq!(amount_and_limit(conn, &iban).0, 500);
        let outbox = outbox::take_published_and_read_next(conn, &[], 10).unwrap();
        let events: Vec<_> = outbox.into_iter().map(|e| e.event).collect();
        assert_eq!(events, answers[0].balance_changes);
    }

    #[test]
    fn a_batch_applies_its_transfers_in_order_in_one_transaction() {
        let mut db = TestDatabase::new("order");
        let conn = &mut db.conn;
        let (iban, token) = open(conn, Uuid::new_v4());
        let batch = [
            transfer(Uuid::new_v4(), 0, "cash", &iban, "", 100),
            // 100 - 50,101 passes the limit of -500.00: refused; 50,100 reaches it.
            transfer(Uuid::new_v4(), 1, &iban, BANK_IBAN, &token, 50_101),
            transfer(Uuid::new_v4(), 2, &iban, BANK_IBAN, &token, 50_100),
            transfer(Uuid::new_v4(), 3, &iban, BANK_IBAN, "wrong", 1),
        ];
        let failures: Vec<Option<String>> = apply_transfers(conn, &batch, Wake::InThisInstance)
            .unwrap()
            .into_iter()
            .map(|answer| answer.failure)
            .collect();
        assert_eq!(
            failures,
            [
                None,
                Some("insufficient funds".into()),
                None,
                Some("invalid token".into())
            ]
        );
        assert_eq!(amount_and_limit(conn, &iban).0, NEW_ACCOUNT_LIMIT);
    }
}
