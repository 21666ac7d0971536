//! Handler instances in one consumer group, and the load generator's traffic to them:
//! what the scaling runs and the disruption scenarios share. Each run has topics, a
//! group and a database of its own (`workload::Resources`).
//!
//! - [`Instances`] starts, stops, kills and restarts the handler processes, and reads
//!   their logs: the partitions each holds, assignment changes, the outbox publisher,
//!   warnings.
//! - [`Traffic`] opens and funds the run's accounts and sends transfers between them,
//!   each described by its own id, so that two equal events are one event sent twice.
//! - [`settle`] waits for the group to hold every partition, steadily.
//! - [`drain_outbox`] and [`check_events`], after the load: every BalanceChanged event
//!   of the run read back in offset order, each IBAN's checked to follow one another
//!   (repeats only of a run already published, in its order) and its last to carry the
//!   IBAN's balance in PostgreSQL.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::answers::Answers;
use crate::client::{
    AnswerReader, BalanceEvent, CommandWriter, HandlerProcess, Stack, Transfer,
    read_balance_changed,
};
use crate::workload::{PARTITIONS, Resources};

/// What each account gets from "cash" before the load: enough that transfers of up to
/// 5,000 between the accounts are nearly all confirmed.
pub const FUNDING: i64 = 1_000_000;

/// The handler's default filter: assignments, the publisher's role and every warning.
pub const HANDLER_LOG: &str = "warn,open_bank_command_handler=info";

/// The handler processes of one run, each with its environment and one log per start.
pub struct Instances {
    binary: PathBuf,
    out: PathBuf,
    /// The run's name, which the logs' names begin with.
    run: String,
    list: Vec<Instance>,
}

struct Instance {
    env: Vec<(String, String)>,
    /// None while stopped.
    process: Option<HandlerProcess>,
    /// One per start, the latest last.
    logs: Vec<PathBuf>,
}

impl Instances {
    pub fn new(binary: &Path, out: &Path, run: &str) -> Instances {
        Instances {
            binary: binary.to_path_buf(),
            out: out.to_path_buf(),
            run: run.to_string(),
            list: Vec::new(),
        }
    }

    /// Starts one more instance with `env`.
    ///
    /// Each instance is a static group member of a name of its own, kept across its
    /// restarts, unless `env` names one: every instance runs on this one host, whose
    /// name the handler would otherwise give them all.
    pub fn add(&mut self, mut env: Vec<(String, String)>) {
        if !env.iter().any(|(k, _)| k == "KAFKA_GROUP_INSTANCE_ID") {
            env.push((
                "KAFKA_GROUP_INSTANCE_ID".to_string(),
                format!("{}-i{}", self.run, self.list.len()),
            ));
        }
        self.list.push(Instance {
            env,
            process: None,
            logs: Vec::new(),
        });
        self.start(self.list.len() - 1);
    }

    /// Starts instance `i` (again) with its environment, logging to a new file.
    pub fn start(&mut self, i: usize) {
        let instance = &mut self.list[i];
        let log = match instance.logs.len() {
            0 => self.out.join(format!("{}.handler-{i}.log", self.run)),
            n => self
                .out
                .join(format!("{}.handler-{i}.restart-{n}.log", self.run)),
        };
        instance.process = Some(HandlerProcess::start(
            &self.binary,
            &instance.env,
            log.clone(),
        ));
        instance.logs.push(log);
    }

    /// SIGTERM to instance `i`, waited for: how it exited.
    pub fn terminate(&mut self, i: usize) -> Option<ExitStatus> {
        self.list[i].process.take()?.stop()
    }

    /// SIGKILL to instance `i`: how it exited.
    pub fn kill(&mut self, i: usize) -> Option<ExitStatus> {
        self.list[i].process.take()?.kill()
    }

    /// SIGTERM to every instance at once, each waited for.
    pub fn stop_all(&mut self) {
        let running: Vec<HandlerProcess> = self
            .list
            .iter_mut()
            .filter_map(|i| i.process.take())
            .collect();
        std::thread::scope(|scope| {
            for handler in running {
                scope.spawn(move || handler.stop());
            }
        });
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// The processes running now.
    pub fn pids(&self) -> Vec<u32> {
        self.list
            .iter()
            .filter_map(|i| i.process.as_ref().map(HandlerProcess::pid))
            .collect()
    }

    /// What instance `i` logged since it last started.
    fn latest_log(&self, i: usize) -> String {
        self.list[i]
            .logs
            .last()
            .and_then(|log| std::fs::read_to_string(log).ok())
            .unwrap_or_default()
    }

    /// What instance `i` logged, every start's log in turn.
    fn every_log(&self, i: usize) -> String {
        self.list[i]
            .logs
            .iter()
            .filter_map(|log| std::fs::read_to_string(log).ok())
            .collect::<Vec<String>>()
            .join("\n")
    }

    /// Assignment and revocation lines of every instance's logs.
    pub fn membership_changes(&self) -> usize {
        (0..self.len())
            .map(|i| {
                self.every_log(i)
                    .lines()
                    .filter(|l| l.contains("] assigned ") || l.contains("] revoked "))
                    .count()
            })
            .sum()
    }

    /// The partitions of `topic` each instance holds, as its log since its last start
    /// tells.
    pub fn assignments(&self, topic: &str) -> Vec<Vec<i32>> {
        let prefix = format!("{topic}/");
        (0..self.len())
            .map(|i| {
                let mut held: Vec<i32> = Vec::new();
                for line in self.latest_log(i).lines() {
                    let (assigned, list) = if let Some((_, list)) = line.split_once("] assigned ") {
                        (true, list)
                    } else if let Some((_, list)) = line.split_once("] revoked ") {
                        (false, list)
                    } else {
                        continue;
                    };
                    let partitions = list
                        .split(", ")
                        .filter_map(|p| p.strip_prefix(&prefix)?.trim().parse::<i32>().ok());
                    for partition in partitions {
                        // Eager rebalances revoke everything first; cooperative ones
                        // assign and revoke increments: both read the same way.
                        held.retain(|p| *p != partition);
                        if assigned {
                            held.push(partition);
                        }
                    }
                }
                held.sort();
                held
            })
            .collect()
    }

    /// The instances that said they publish the outbox (one, unless it changed hands).
    pub fn publishers(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| {
                self.every_log(i)
                    .contains("publishing the outbox's BalanceChanged events")
            })
            .collect()
    }

    /// How many warning lines the instances logged, and the most frequent (digits as #).
    pub fn warnings(&self) -> (usize, Vec<(String, usize)>) {
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut total = 0;
        for i in 0..self.len() {
            for line in self.every_log(i).lines().filter(|l| l.contains(" WARN ")) {
                total += 1;
                let message = line.split_once("] ").map_or(line, |(_, m)| m);
                let shape: String = message
                    .chars()
                    .take(160)
                    .map(|c| if c.is_ascii_digit() { '#' } else { c })
                    .collect();
                *counts.entry(shape).or_default() += 1;
            }
        }
        let mut frequent: Vec<(String, usize)> = counts.into_iter().collect();
        frequent.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        frequent.truncate(5);
        (total, frequent)
    }
}

impl Drop for Instances {
    /// A run that panicked leaves no handler behind.
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The load generator's side of a run: its commands, the answers, the accounts.
pub struct Traffic {
    writer: CommandWriter,
    _reader: AnswerReader,
    pub answers: Answers,
    /// IBAN and token of each account of the run.
    pub accounts: Vec<(String, String)>,
    rng: StdRng,
    /// Every transfer sent, for the balance check.
    pub sent: Vec<Transfer>,
}

impl Traffic {
    /// On the run's topics; `idempotent_writer`: see `CommandWriter::configured`.
    pub fn new(
        stack: &Stack,
        resources: &Resources,
        seed: u64,
        idempotent_writer: bool,
    ) -> Traffic {
        let topics = &resources.topics;
        let writer = CommandWriter::configured(stack, &topics[0], &topics[2], idempotent_writer);
        let (reader, answers) =
            AnswerReader::start(stack, &[topics[1].clone(), topics[3].clone()], PARTITIONS);
        Traffic {
            writer,
            _reader: reader,
            answers: Answers::new(answers),
            accounts: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            sent: Vec::new(),
        }
    }

    /// Opens `count` accounts and funds each with [`FUNDING`] from cash.
    pub fn open_and_fund(&mut self, count: usize) -> Result<(), String> {
        self.accounts = self.answers.open_accounts(&self.writer, count)?;
        let funding: Vec<Transfer> = (0..count).map(|a| self.deposit(a, FUNDING)).collect();
        self.send_and_wait(&funding, Duration::from_secs(120))
    }

    /// A deposit from "cash" to account `a`; its description is its id, as of every
    /// command of the run, so that two equal events are one event sent twice.
    pub fn deposit(&self, a: usize, amount: i64) -> Transfer {
        let id = Uuid::new_v4();
        Transfer {
            id,
            token: String::new(),
            amount,
            from: "cash".to_string(),
            to: self.accounts[a].0.clone(),
            description: id.to_string(),
        }
    }

    /// One in five a deposit from "cash", else a transfer between two of the accounts.
    pub fn next_transfer(&mut self) -> Transfer {
        let n = self.accounts.len();
        let a = self.rng.random_range(0..n);
        let amount = self.rng.random_range(100..5_000);
        if self.rng.random_range(0..5) == 0 {
            return self.deposit(a, amount);
        }
        let b = self.rng.random_range(0..n - 1);
        let b = if b >= a { b + 1 } else { b };
        let id = Uuid::new_v4();
        Transfer {
            id,
            token: self.accounts[a].1.clone(),
            amount,
            from: self.accounts[a].0.clone(),
            to: self.accounts[b].0.clone(),
            description: id.to_string(),
        }
    }

    /// Hands `transfer` to the producer (which sends it within a millisecond).
    pub fn send(&mut self, transfer: Transfer) {
        self.writer.transfer(&transfer);
        self.sent.push(transfer);
    }

    pub fn send_and_wait(&mut self, transfers: &[Transfer], limit: Duration) -> Result<(), String> {
        for transfer in transfers {
            self.send(transfer.clone());
        }
        self.writer.flush();
        let ids: Vec<Uuid> = transfers.iter().map(|t| t.id).collect();
        self.answers.wait_for(&ids, limit, None);
        let missing = ids.len() - self.answers.answered(&ids);
        match missing {
            0 => Ok(()),
            _ => Err(format!("{missing} commands unanswered after {limit:?}")),
        }
    }
}

/// Waits until every instance holds partitions of the transfer topic `topic`, each
/// partition is held once, and a round of deposits of 1 is answered with no assignment
/// changing meanwhile; false when `limit` passed first.
pub fn settle(
    instances: &Instances,
    traffic: &mut Traffic,
    topic: &str,
    limit: Duration,
) -> Result<bool, String> {
    let deadline = Instant::now() + limit;
    loop {
        let before = instances.membership_changes();
        let held = instances.assignments(topic);
        let mut all: Vec<i32> = held.iter().flatten().copied().collect();
        all.sort();
        let spread =
            held.iter().all(|h| !h.is_empty()) && all == (0..PARTITIONS).collect::<Vec<i32>>();
        let round: Vec<Transfer> = (0..2 * PARTITIONS as usize)
            .map(|i| traffic.deposit(i % traffic.accounts.len(), 1))
            .collect();
        traffic.send_and_wait(&round, Duration::from_secs(60))?;
        if spread && instances.membership_changes() == before {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until the run's outbox is empty; the rows left when `limit` passed.
pub fn drain_outbox(database_url: &str, limit: Duration) -> Result<i64, String> {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut db = PgConnection::establish(database_url)
        .map_err(|e| format!("cannot connect to the run's database: {e}"))?;
    let deadline = Instant::now() + limit;
    loop {
        let left = diesel::sql_query("SELECT count(*) AS n FROM cmt_balance_changed")
            .get_result::<Count>(&mut db)
            .map_err(|e| format!("cannot count the outbox: {e}"))?
            .n;
        if left == 0 || Instant::now() >= deadline {
            return Ok(left);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the check of a run's BalanceChanged events found.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EventCheck {
    /// The events could not be read to the end of their topic, or the balances not
    /// read: why.
    pub error: Option<String>,
    pub events: usize,
    pub ibans: usize,
    pub out_of_order: usize,
    pub repeats: usize,
    /// IBANs whose last event's new_balance differs from their balance in PostgreSQL.
    pub last_event_differs: usize,
}

/// Every event of the run's BalanceChanged topic `topic`, each IBAN's in order, its
/// last against `balances` (the database's, or an error reading them).
pub fn check_events(
    stack: &Stack,
    topic: &str,
    balances: Result<&HashMap<String, i64>, &String>,
) -> EventCheck {
    let mut check = EventCheck::default();
    let events = match read_balance_changed(stack, topic, PARTITIONS, Duration::from_secs(120)) {
        Ok(events) => events,
        Err(error) => {
            check.error = Some(error);
            return check;
        }
    };
    check.events = events.len();
    let mut histories: HashMap<String, History> = HashMap::new();
    for event in events {
        histories.entry(event.iban.clone()).or_default().read(event);
    }
    check.ibans = histories.len();
    check.out_of_order = histories.values().map(|h| h.out_of_order).sum();
    check.repeats = histories.values().map(|h| h.repeats).sum();
    match balances {
        Ok(balances) => {
            check.last_event_differs = histories
                .iter()
                .filter(|(iban, history)| history.last_balance() != balances.get(*iban).copied())
                .count();
        }
        Err(error) => check.error = Some(error.clone()),
    }
    check
}

/// One IBAN's events in offset order. Each must follow the previous distinct one
/// (`new_balance = previous new_balance + changed_by`), except an event sent again
/// after a failure, which may only repeat a run already published, in its order.
#[derive(Default)]
struct History {
    /// The distinct events, in the order first read.
    distinct: Vec<BalanceEvent>,
    /// Where the reader is in `distinct`: a repeat goes on from here.
    at: usize,
    out_of_order: usize,
    repeats: usize,
}

fn same(a: &BalanceEvent, b: &BalanceEvent) -> bool {
    (
        a.iban.as_str(),
        a.new_balance,
        a.changed_by,
        &a.from_to,
        &a.description,
    ) == (
        b.iban.as_str(),
        b.new_balance,
        b.changed_by,
        &b.from_to,
        &b.description,
    )
}

impl History {
    // The same reading as the end-to-end tests' (tests/e2e/faults.rs, AccountHistory).
    fn read(&mut self, event: BalanceEvent) {
        let seen = self.distinct.iter().position(|e| same(e, &event));
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
