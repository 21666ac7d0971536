//! What every run that breaks things checks afterwards: no command lost, none applied
//! twice, one kind of answer per command, every confirmed transfer's events there, each
//! account's events in the order its balance changed and its last one carrying its
//! balance ([`check_invariants`], [`assert_nothing_lost`]); and the load such runs send.

use std::collections::{HashMap, HashSet};

use rand::RngExt;
use rand::rngs::StdRng;

use crate::harness::*;

/// Commands for a few accounts: cash deposits and transfers between them, so that
/// several instances and partitions touch the same accounts at once. The description
/// carries the command id, to find each transfer's BalanceChanged events.
pub(crate) fn load(
    rng: &mut StdRng,
    accounts: &[(String, String)],
    count: usize,
) -> Vec<TransferCmd> {
    (0..count)
        .map(|_| {
            let (a, b) = (
                rng.random_range(0..accounts.len()),
                rng.random_range(0..accounts.len()),
            );
            let mut command = if rng.random_range(0..3) == 0 || a == b {
                TransferCmd::new("", rng.random_range(100..5_000), "cash", &accounts[a].0)
            } else {
                // Large enough that accounts reach their limit and some are refused.
                TransferCmd::new(
                    &accounts[a].1,
                    rng.random_range(1_000..40_000),
                    &accounts[a].0,
                    &accounts[b].0,
                )
            };
            command.description = command.id.to_string();
            command
        })
        .collect()
}

/// What a fault run found; every field but the duplicates and the counts must be zero.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    pub(crate) unanswered: usize,
    pub(crate) answers_disagreeing: usize,
    pub(crate) balances_wrong: usize,
    pub(crate) events_missing: usize,
    /// Events that neither follow the one before of their account nor repeat, in
    /// order, a run already published ([`AccountHistory`]).
    pub(crate) events_out_of_order: usize,
    /// Accounts whose last event does not carry their balance in PostgreSQL.
    pub(crate) last_events_stale: usize,
    pub(crate) duplicate_answers: usize,
    pub(crate) duplicate_events: usize,
    pub(crate) confirmed: usize,
    pub(crate) events: usize,
}

/// One event of an account: what a reader keeping its balance sees.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Event {
    new_balance: i64,
    changed_by: i64,
    from_to: String,
    description: String,
}

/// One account's events as read in offset order. Each must follow the previous one
/// (`new_balance = previous new_balance + changed_by`), except an event sent again
/// after a failure, which may only repeat a run already published, in its order.
#[derive(Default)]
struct AccountHistory {
    /// The distinct events, in the order first read.
    distinct: Vec<Event>,
    /// Where the reader is in `distinct`: a repeat goes on from here.
    at: usize,
    out_of_order: usize,
    repeats: usize,
}

impl AccountHistory {
    fn read(&mut self, event: Event) {
        let seen = self.distinct.iter().position(|e| *e == event);
        if seen == Some(self.at + 1) {
            // A repeat going on in order.
            self.at += 1;
            self.repeats += 1;
        } else if let Some(earlier) = seen.filter(|earlier| *earlier <= self.at) {
            // A repeat starting again from an earlier event.
            self.at = earlier;
            self.repeats += 1;
        } else if let Some(later) = seen {
            // Skipping ahead within a repeat.
            self.out_of_order += 1;
            self.at = later;
        } else {
            let follows = self.at + 1 == self.distinct.len()
                && self.distinct[self.at].new_balance + event.changed_by == event.new_balance;
            if !follows && !self.distinct.is_empty() {
                self.out_of_order += 1;
            }
            self.distinct.push(event);
            self.at = self.distinct.len() - 1;
        }
    }

    /// The balance a reader of the events holds at the end.
    fn last_balance(&self) -> Option<i64> {
        self.distinct.get(self.at).map(|e| e.new_balance)
    }
}

pub(crate) fn check_invariants(
    env: &mut TestEnv,
    commands: &[TransferCmd],
    accounts: &[(String, String)],
) -> Findings {
    let ids: Vec<uuid::Uuid> = commands.iter().map(|c| c.id).collect();
    env.await_answers(&ids);
    let mut findings = Findings::default();
    let mut expected: HashMap<&str, i64> = accounts
        .iter()
        .map(|(iban, _)| (iban.as_str(), 0))
        .collect();
    let mut wanted_events: HashMap<String, usize> = HashMap::new();
    for command in commands {
        let answers = env.answers_to(command.id);
        if answers.is_empty() {
            findings.unanswered += 1;
            continue;
        }
        let kinds: HashSet<String> = answers.iter().map(|a| a.summary()).collect();
        findings.answers_disagreeing += kinds.len() - 1;
        findings.duplicate_answers += answers.len() - 1;
        if answers[0].record_name().ends_with("MoneyTransferConfirmed") {
            findings.confirmed += 1;
            let mut events = 0;
            for (party, sign) in [(&command.from, -1), (&command.to, 1)] {
                if let Some(balance) = expected.get_mut(party.as_str()) {
                    *balance += sign * command.amount;
                    events += 1;
                }
            }
            wanted_events.insert(command.id.to_string(), events);
        }
    }
    let bc = env.topics.bc.clone();
    let total: usize = wanted_events.values().sum();
    let mut events_read = 0;
    env.collect_counting("the events of every confirmed transfer", |_, new| {
        events_read += new.iter().filter(|o| o.topic == bc).count();
        events_read >= total
    });
    env.barrier();
    let mut seen: HashMap<String, Vec<(String, i64, i64)>> = HashMap::new();
    for event in env.on_topic(&bc) {
        let triple = (
            event.string("iban"),
            event.long("new_balance"),
            event.long("changed_by"),
        );
        seen.entry(event.string("description"))
            .or_default()
            .push(triple);
    }
    for (id, events) in &wanted_events {
        let got = seen.get(id).map(Vec::as_slice).unwrap_or_default();
        let distinct: HashSet<&(String, i64, i64)> = got.iter().collect();
        findings.events_missing += events.saturating_sub(distinct.len());
        findings.duplicate_events += got.len() - distinct.len();
    }
    let mut events: Vec<&Output> = env.on_topic(&bc).collect();
    events.sort_by_key(|e| (e.partition, e.offset));
    findings.events = events.len();
    let mut histories: HashMap<String, AccountHistory> = HashMap::new();
    for event in events {
        histories
            .entry(event.string("iban"))
            .or_default()
            .read(Event {
                new_balance: event.long("new_balance"),
                changed_by: event.long("changed_by"),
                from_to: event.string("from_to"),
                description: event.string("description"),
            });
    }
    for history in histories.values() {
        findings.events_out_of_order += history.out_of_order;
    }
    for (iban, want) in expected {
        let amount = env.amount(iban);
        if amount != Some(want) {
            findings.balances_wrong += 1;
        }
        let last = histories.get(iban).and_then(AccountHistory::last_balance);
        if last.is_some() && last != amount {
            findings.last_events_stale += 1;
        }
    }
    findings
}

pub(crate) fn assert_nothing_lost(what: &str, findings: &Findings, commands: usize) {
    eprintln!(
        "{what}: {commands} commands ({} confirmed, {} events): lost {}, disagreeing {}, \
         wrong balances {}, events missing {}, events out of order {}, stale last events {}; \
         duplicates after crashes: {} answers, {} events",
        findings.confirmed,
        findings.events,
        findings.unanswered,
        findings.answers_disagreeing,
        findings.balances_wrong,
        findings.events_missing,
        findings.events_out_of_order,
        findings.last_events_stale,
        findings.duplicate_answers,
        findings.duplicate_events
    );
    assert_eq!(
        (
            findings.unanswered,
            findings.answers_disagreeing,
            findings.balances_wrong,
            findings.events_missing,
            findings.events_out_of_order,
            findings.last_events_stale,
        ),
        (0, 0, 0, 0, 0, 0),
        "{what}: {findings:?}"
    );
    assert!(
        findings.confirmed < commands,
        "{what}: some transfers must be refused for the run to test the limit"
    );
}

/// `FAULT_SCALE=N` runs the SIGKILL and rebalance tests N times longer (more load,
/// more kills); the suite's default is 1.
pub(crate) fn scale() -> usize {
    std::env::var("FAULT_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// How often an instance's group membership changed: its two consumers share its
/// group, so every assignment or revocation, of either topic, is a rebalance of it.
pub(crate) fn membership_changes(env: &mut TestEnv, instance: usize) -> usize {
    let log = env.handler(instance).log();
    log.matches("assigned ").count() + log.matches("revoked ").count()
}

/// Waits until the instance holds partitions of both command topics.
pub(crate) fn wait_for_both_topics(env: &mut TestEnv, instance: usize) {
    let (cac, cmt) = (env.topics.cac.clone(), env.topics.cmt.clone());
    env.handler(instance)
        .wait_for_log_where("partitions of both topics", |log| {
            log.contains(&format!("assigned {cac}/")) && log.contains(&format!("assigned {cmt}/"))
        });
}

/// Waits until the group is settled: every instance holds partitions of both topics,
/// and a round of deposits to a fresh account is answered with no assignment changing
/// meanwhile.
pub(crate) fn settle_group(env: &mut TestEnv, instances: &[usize]) {
    let (iban, _) = env.open_account();
    settle_group_with(env, instances, &iban);
}

/// [`settle_group`] with deposits of 1 to `iban`; the deposits it sent.
pub(crate) fn settle_group_with(
    env: &mut TestEnv,
    instances: &[usize],
    iban: &str,
) -> Vec<TransferCmd> {
    let rebalances = |env: &mut TestEnv| -> usize {
        instances.iter().map(|i| membership_changes(env, *i)).sum()
    };
    let mut sent = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        for &instance in instances {
            wait_for_both_topics(env, instance);
        }
        let before = rebalances(env);
        let round: Vec<TransferCmd> = (0..8)
            .map(|_| TransferCmd::new("", 1, "cash", iban))
            .collect();
        for command in &round {
            env.send_transfer(command);
        }
        env.flush();
        env.await_answers(&round.iter().map(|c| c.id).collect::<Vec<_>>());
        sent.extend(round);
        if rebalances(env) == before {
            return sent;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the group never settled"
        );
    }
}
