//! `dev/bench --scaling`: one, two and three handler instances of one consumer group,
//! on hot accounts (4, shared by every transfer) and on spread ones (200). Each run has
//! topics (9 partitions), a consumer group and a database of its own; its instances start
//! together and are measured once each holds partitions of the transfer topic and a
//! warm-up round saw no assignment change. Then an open-loop load of transfers: latency
//! from the moment each was due to its answer, and afterwards, once the outbox drained,
//! every BalanceChanged event of the run read back in offset order, each IBAN's checked
//! to follow one another (repeats only of a run already published, in its order) and its
//! last to carry the IBAN's balance in PostgreSQL. Writes scaling.md and scaling.json.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::answers::Answers;
use crate::client::{
    Answer, AnswerReader, BalanceEvent, CommandWriter, HandlerProcess, Stack, Transfer,
    read_balance_changed,
};
use crate::cpu::{Counters, Processes, process_seconds};
use crate::markdown::shown;
use crate::procstat::clock_ticks;
use crate::report::Machine;
use crate::workload::{PARTITIONS, Resources};

const INSTANCES: [usize; 3] = [1, 2, 3];

/// Name, accounts, what it is.
const WORKLOADS: [(&str, usize, &str); 3] = [
    ("hot", 4, "4 accounts shared by all transfers"),
    ("spread", 200, "200 accounts"),
    (
        JOINING,
        4,
        "4 hot accounts, the second instance started 5 s into the load (as a user scaling out does)",
    ),
];

/// The workload whose last instance joins the group under load, [`JOIN_AFTER`] in.
const JOINING: &str = "hot-joining";
const JOIN_AFTER: Duration = Duration::from_secs(5);

/// What each account gets from "cash" before the load: enough that transfers of up to
/// 5,000 between the accounts are nearly all confirmed.
const FUNDING: i64 = 1_000_000;

/// The handler's default filter: assignments, the publisher's role and every warning.
const HANDLER_LOG: &str = "warn,open_bank_command_handler=info";

#[derive(Serialize, Deserialize)]
pub struct ScalingReport {
    pub machine: Machine,
    /// What produced the report.
    pub command: String,
    pub per_second: u32,
    pub seconds: u64,
    pub runs: Vec<ScalingRun>,
}

#[derive(Default, Serialize, Deserialize)]
pub struct ScalingRun {
    pub workload: String,
    pub accounts: usize,
    pub instances: usize,
    /// Every instance held partitions of the transfer topic, together all of them once,
    /// and a warm-up round saw no assignment change, before the measurement.
    pub settled: bool,
    /// Transfer topic partitions each instance held when the measurement began.
    pub partitions_held: Vec<usize>,
    /// Assignments and revocations logged during the measurement (all instances).
    pub membership_changes_during: usize,
    /// The instances that said they publish the outbox (one, unless it changed hands).
    pub publishers: Vec<usize>,
    pub commands: usize,
    pub answered: usize,
    pub confirmed: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Rows still in the outbox when its deadline passed: 0 when it drained.
    pub outbox_left: i64,
    /// The events could not be read to the end of their topic: why.
    pub events_error: Option<String>,
    pub events: usize,
    pub ibans: usize,
    pub out_of_order: usize,
    pub repeats: usize,
    /// IBANs whose last event's new_balance differs from their balance in PostgreSQL.
    pub last_event_differs: usize,
    pub cpu_seconds: RunCpu,
    pub lock_waits: LockWaits,
    /// Warning lines of all instances' logs, and the most frequent ones (digits as #).
    pub handler_warnings: usize,
    pub frequent_warnings: Vec<(String, usize)>,
    /// Why the run stopped short, if it did.
    pub error: Option<String>,
}

/// CPU seconds used during the measurement (first command due to last answer).
#[derive(Default, Serialize, Deserialize)]
pub struct RunCpu {
    pub window_seconds: f64,
    pub handlers: Vec<Option<f64>>,
    pub broker: Option<f64>,
    pub postgres: Option<f64>,
    pub load_generator: Option<f64>,
    /// All cores together: everything but idle and I/O wait.
    pub machine: Option<f64>,
}

/// The run database's sessions waiting for a lock (`pg_stat_activity`), sampled every
/// 50 ms during the measurement.
#[derive(Default, Serialize, Deserialize)]
pub struct LockWaits {
    pub samples: usize,
    /// Samples in which at least one session waited.
    pub samples_waiting: usize,
    pub waiting_max: i64,
    pub waiting_mean: f64,
}

/// The load of each run.
#[derive(Clone)]
pub struct Load {
    pub per_second: u32,
    pub seconds: u64,
}

impl Load {
    pub fn new(quick: bool) -> Load {
        if quick {
            Load {
                per_second: 100,
                seconds: 5,
            }
        } else {
            Load {
                per_second: 300,
                seconds: 20,
            }
        }
    }
}

/// Every run, the report rewritten after each.
/// Runs the workloads named in `only` (all when empty).
pub fn run(
    stack: &Stack,
    binary: &Path,
    out: &Path,
    load: &Load,
    only: &[String],
    command: String,
) {
    let mut report = ScalingReport {
        machine: Machine::read(stack, load.seconds),
        command,
        per_second: load.per_second,
        seconds: load.seconds,
        runs: Vec::new(),
    };
    // A broker just started is busy for a while (its coordinator loading, its first
    // segments): a short run first, not reported, so that the first measured run
    // does not pay for it.
    eprintln!("== scaling: warm-up run, not reported");
    let warm_up = Load {
        seconds: load.seconds.min(5),
        ..load.clone()
    };
    let (workload, accounts, _) = WORKLOADS[0];
    Run::measure(stack, binary, out, (workload, accounts), 1, &warm_up);
    for (workload, accounts, description) in WORKLOADS {
        if !only.is_empty() && !only.iter().any(|name| name == workload) {
            continue;
        }
        for instances in INSTANCES {
            // Joining needs one instance there and one coming.
            if workload == JOINING && instances != 2 {
                continue;
            }
            eprintln!("== scaling: {workload} ({description}), {instances} instance(s)");
            let result = Run::measure(stack, binary, out, (workload, accounts), instances, load);
            eprintln!("   {}", result.summary());
            report.runs.push(result);
            report.write(out).expect("write the scaling report");
        }
    }
    eprintln!("report written to {}", out.join("scaling.md").display());
}

/// One run: its resources, handlers and the commands it sent.
struct Run<'a> {
    stack: &'a Stack,
    resources: Resources,
    handlers: Vec<HandlerProcess>,
    logs: Vec<PathBuf>,
    writer: CommandWriter,
    _reader: AnswerReader,
    answers: Answers,
    accounts: Vec<(String, String)>,
    rng: StdRng,
    /// The instance to start during the load (its log), for the joining workload.
    joins_later: Option<PathBuf>,
    binary: PathBuf,
}

impl<'a> Run<'a> {
    fn measure(
        stack: &'a Stack,
        binary: &Path,
        out: &Path,
        (workload, accounts): (&str, usize),
        instances: usize,
        load: &Load,
    ) -> ScalingRun {
        let name = format!(
            "scale_{workload}_{instances}_{}",
            &Uuid::new_v4().simple().to_string()[..6]
        );
        let mut resources = Resources::create(stack, &name);
        resources.handler_env.retain(|(k, _)| k != "RUST_LOG");
        resources
            .handler_env
            .push(("RUST_LOG".to_string(), HANDLER_LOG.to_string()));
        let topics = &resources.topics;
        let writer = CommandWriter::new(stack, &topics[0], &topics[2]);
        let (reader, answers) =
            AnswerReader::start(stack, &[topics[1].clone(), topics[3].clone()], PARTITIONS);
        let logs: Vec<PathBuf> = (0..instances)
            .map(|i| out.join(format!("{name}.handler-{i}.log")))
            .collect();
        let mut logs = logs;
        let joins_later = (workload == JOINING).then(|| logs.pop()).flatten();
        let handlers = logs
            .iter()
            .map(|log| HandlerProcess::start(binary, &resources.handler_env, log.clone()))
            .collect();
        let mut run = Run {
            stack,
            resources,
            handlers,
            logs,
            writer,
            _reader: reader,
            answers: Answers::new(answers),
            accounts: Vec::new(),
            rng: StdRng::seed_from_u64(2026 + accounts as u64),
            joins_later,
            binary: binary.to_path_buf(),
        };
        let mut result = ScalingRun {
            workload: workload.to_string(),
            accounts,
            instances,
            ..ScalingRun::default()
        };
        if let Err(error) = run.measure_into(&mut result, accounts, load) {
            result.error = Some(error);
        }
        run.stop_handlers();
        (result.handler_warnings, result.frequent_warnings) = run.warnings();
        run.resources.remove(stack);
        result
    }

    fn measure_into(
        &mut self,
        result: &mut ScalingRun,
        accounts: usize,
        load: &Load,
    ) -> Result<(), String> {
        self.accounts = self.answers.open_accounts(&self.writer, accounts)?;
        let funding: Vec<Transfer> = (0..accounts).map(|a| self.deposit(a, FUNDING)).collect();
        self.send_and_wait(&funding, Duration::from_secs(120))?;
        result.settled = self.settle(Duration::from_secs(90))?;
        result.partitions_held = self.assignments().iter().map(Vec::len).collect();
        let changes_before = self.membership_changes();
        self.load(result, load)?;
        result.membership_changes_during = self.membership_changes() - changes_before;
        result.outbox_left = self.drain_outbox(Duration::from_secs(60))?;
        self.check_events(result);
        result.publishers = (0..self.logs.len())
            .filter(|&i| {
                self.log(i)
                    .contains("publishing the outbox's BalanceChanged events")
            })
            .collect();
        Ok(())
    }

    /// A deposit from "cash" to account `a`; its description is its id, as of every
    /// command of the run, so that two equal events are one event sent twice.
    fn deposit(&self, a: usize, amount: i64) -> Transfer {
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
    fn next_transfer(&mut self) -> Transfer {
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

    fn send_and_wait(&mut self, transfers: &[Transfer], limit: Duration) -> Result<(), String> {
        for transfer in transfers {
            self.writer.transfer(transfer);
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

    fn log(&self, instance: usize) -> String {
        std::fs::read_to_string(&self.logs[instance]).unwrap_or_default()
    }

    /// Assignment and revocation lines of every instance's log.
    fn membership_changes(&self) -> usize {
        (0..self.logs.len())
            .map(|i| {
                self.log(i)
                    .lines()
                    .filter(|l| l.contains("] assigned ") || l.contains("] revoked "))
                    .count()
            })
            .sum()
    }

    /// The transfer topic partitions each instance holds, as its log tells.
    fn assignments(&self) -> Vec<Vec<i32>> {
        let prefix = format!("{}/", self.resources.topics[2]);
        (0..self.logs.len())
            .map(|i| {
                let mut held: Vec<i32> = Vec::new();
                for line in self.log(i).lines() {
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

    /// Waits until every instance holds partitions of the transfer topic, each
    /// partition is held once, and a warm-up round of deposits is answered with no
    /// assignment changing meanwhile; false when `limit` passed first.
    fn settle(&mut self, limit: Duration) -> Result<bool, String> {
        let deadline = Instant::now() + limit;
        loop {
            let before = self.membership_changes();
            let held = self.assignments();
            let mut all: Vec<i32> = held.iter().flatten().copied().collect();
            all.sort();
            let spread =
                held.iter().all(|h| !h.is_empty()) && all == (0..PARTITIONS).collect::<Vec<i32>>();
            let round: Vec<Transfer> = (0..2 * PARTITIONS as usize)
                .map(|i| self.deposit(i % self.accounts.len(), 1))
                .collect();
            self.send_and_wait(&round, Duration::from_secs(60))?;
            if spread && self.membership_changes() == before {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The open-loop load, each command sent when due whatever the handlers do.
    fn load(&mut self, result: &mut ScalingRun, load: &Load) -> Result<(), String> {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        let rate = load.per_second;
        let total = (rate as u64 * load.seconds) as usize;
        let mut ids = Vec::with_capacity(total);
        let pids: Vec<u32> = self.handlers.iter().map(HandlerProcess::pid).collect();
        let cpu = CpuReading::new(self.stack, &pids);
        let locks = LockSampler::start(
            self.stack.get("TEST_ADMIN_DATABASE_URL"),
            &self.resources.database,
        );
        let before = cpu.read();
        let start = Instant::now();
        let mut sent = 0usize;
        while sent < total {
            let due_now = ((start.elapsed().as_secs_f64() * rate as f64) as usize + 1).min(total);
            while sent < due_now {
                let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
                let transfer = self.next_transfer();
                self.writer.transfer(&transfer);
                ids.push(transfer.id);
                self.answers.due(transfer.id, due);
                sent += 1;
            }
            if start.elapsed() >= JOIN_AFTER
                && let Some(log) = self.joins_later.take()
            {
                self.handlers.push(HandlerProcess::start(
                    &self.binary,
                    &self.resources.handler_env,
                    log.clone(),
                ));
                self.logs.push(log);
            }
            // Read answers meanwhile, so that their receive times are exact.
            self.answers
                .take(Some(&mut histogram), Duration::from_micros(500));
        }
        self.answers
            .wait_for(&ids, Duration::from_secs(60), Some(&mut histogram));
        let after = cpu.read();
        result.cpu_seconds = cpu.between(&before, &after, start.elapsed().as_secs_f64());
        result.lock_waits = locks.stop();
        let answers: Vec<&Answer> = ids.iter().filter_map(|id| self.answers.first(id)).collect();
        result.commands = total;
        result.answered = answers.len();
        result.confirmed = answers
            .iter()
            .filter(|a| a.kind == "MoneyTransferConfirmed")
            .count();
        let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
        (result.p50_ms, result.p90_ms, result.p99_ms) = (ms(0.5), ms(0.9), ms(0.99));
        result.max_ms = histogram.max() as f64 / 1000.0;
        Ok(())
    }

    fn database(&self) -> Result<PgConnection, String> {
        PgConnection::establish(self.resources.database_url())
            .map_err(|e| format!("cannot connect to the run's database: {e}"))
    }

    /// Waits until the outbox is empty; the rows left when `limit` passed.
    fn drain_outbox(&self, limit: Duration) -> Result<i64, String> {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let mut db = self.database()?;
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

    /// Every event of the run's topic, each IBAN's in order, its last against its
    /// balance in PostgreSQL.
    fn check_events(&self, result: &mut ScalingRun) {
        let events = match read_balance_changed(
            self.stack,
            &self.resources.topics[4],
            PARTITIONS,
            Duration::from_secs(120),
        ) {
            Ok(events) => events,
            Err(error) => {
                result.events_error = Some(error);
                return;
            }
        };
        result.events = events.len();
        let mut histories: HashMap<String, History> = HashMap::new();
        for event in events {
            histories.entry(event.iban.clone()).or_default().read(event);
        }
        result.ibans = histories.len();
        result.out_of_order = histories.values().map(|h| h.out_of_order).sum();
        result.repeats = histories.values().map(|h| h.repeats).sum();
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            iban: String,
            #[diesel(sql_type = BigInt)]
            amount: i64,
        }
        let rows = self.database().and_then(|mut db| {
            diesel::sql_query("SELECT iban, amount FROM balance")
                .load::<Row>(&mut db)
                .map_err(|e| format!("cannot read balances: {e}"))
        });
        let balances: HashMap<String, i64> = match rows {
            Ok(rows) => rows.into_iter().map(|r| (r.iban, r.amount)).collect(),
            Err(error) => {
                result.events_error = Some(error);
                return;
            }
        };
        result.last_event_differs = histories
            .iter()
            .filter(|(iban, history)| history.last_balance() != balances.get(*iban).copied())
            .count();
    }

    /// SIGTERM to every instance at once, each waited for.
    fn stop_handlers(&mut self) {
        let handlers: Vec<HandlerProcess> = self.handlers.drain(..).collect();
        std::thread::scope(|scope| {
            for handler in handlers {
                scope.spawn(move || handler.stop());
            }
        });
    }

    /// How many warning lines the instances logged, and the most frequent.
    fn warnings(&self) -> (usize, Vec<(String, usize)>) {
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut total = 0;
        for i in 0..self.logs.len() {
            for line in self.log(i).lines().filter(|l| l.contains(" WARN ")) {
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

impl Drop for Run<'_> {
    /// A run that panicked leaves no handler behind.
    fn drop(&mut self) {
        self.stop_handlers();
    }
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

/// CPU counters of the run's handlers and of the rest of the stack.
struct CpuReading {
    pids: Vec<u32>,
    processes: Processes,
    ticks_per_second: f64,
}

impl CpuReading {
    fn new(stack: &Stack, pids: &[u32]) -> CpuReading {
        CpuReading {
            pids: pids.to_vec(),
            processes: Processes::of(stack, pids[0]),
            ticks_per_second: clock_ticks(),
        }
    }

    fn read(&self) -> (Vec<Option<f64>>, Counters) {
        let handlers = self
            .pids
            .iter()
            .map(|pid| process_seconds(*pid, self.ticks_per_second))
            .collect();
        (
            handlers,
            Counters::read(&self.processes, self.ticks_per_second),
        )
    }

    fn between(
        &self,
        (handlers_before, before): &(Vec<Option<f64>>, Counters),
        (handlers_after, after): &(Vec<Option<f64>>, Counters),
        window_seconds: f64,
    ) -> RunCpu {
        let used = |a: Option<f64>, b: Option<f64>| Some((b? - a?).max(0.0));
        RunCpu {
            window_seconds,
            handlers: handlers_before
                .iter()
                .zip(handlers_after)
                .map(|(a, b)| used(*a, *b))
                .collect(),
            broker: used(before.broker, after.broker),
            postgres: used(before.postgres, after.postgres),
            load_generator: used(before.load_generator, after.load_generator),
            machine: used(before.machine, after.machine),
        }
    }
}

/// Samples, on a thread of its own, how many sessions of a database wait for a lock.
struct LockSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<LockWaits>,
}

impl LockSampler {
    fn start(admin_url: &str, database: &str) -> LockSampler {
        #[derive(QueryableByName)]
        struct Waiting {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let (url, database) = (admin_url.to_string(), database.to_string());
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut waits = LockWaits::default();
            let Ok(mut db) = PgConnection::establish(&url) else {
                return waits;
            };
            let mut sum = 0;
            while !stopping.load(Ordering::Acquire) {
                let query = diesel::sql_query(
                    "SELECT count(*) AS n FROM pg_stat_activity \
                     WHERE datname = $1 AND wait_event_type = 'Lock'",
                )
                .bind::<Text, _>(&database);
                if let Ok(row) = query.get_result::<Waiting>(&mut db) {
                    waits.samples += 1;
                    waits.samples_waiting += usize::from(row.n > 0);
                    waits.waiting_max = waits.waiting_max.max(row.n);
                    sum += row.n;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            waits.waiting_mean = sum as f64 / waits.samples.max(1) as f64;
            waits
        });
        LockSampler { stop, thread }
    }

    fn stop(self) -> LockWaits {
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap_or_default()
    }
}

impl ScalingRun {
    fn summary(&self) -> String {
        if let Some(error) = &self.error {
            return format!("FAILED: {error}");
        }
        format!(
            "{}/{} answered, p50 {:.1} ms p99 {:.1} ms max {:.1} ms; {} events, {} out of order, \
             {} repeats, {} last event ≠ database{}",
            self.answered,
            self.commands,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.events,
            self.out_of_order,
            self.repeats,
            self.last_event_differs,
            if self.settled {
                ""
            } else {
                " (group not settled)"
            }
        )
    }
}

impl ScalingReport {
    pub fn write(&self, out: &Path) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(out.join("scaling.json"), json)?;
        std::fs::write(out.join("scaling.md"), self.markdown())
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Command handler scaling\n");
        let _ = writeln!(
            md,
            "{} {}. Produced by `{}`; every figure in [scaling.json](scaling.json).\n",
            self.machine.note(),
            self.machine.date,
            self.command
        );
        let _ = writeln!(
            md,
            "Each run: topics of its own ({PARTITIONS} partitions each), a consumer group and a database \
             of its own, and that many instances of the handler started together, measured once each \
             holds partitions of the transfer topic and a warm-up round saw no assignment change. \
             The accounts are funded from cash first; then {} commands/s for {} s, open loop, keys \
             over every partition: transfers between two random accounts of the run (100 to 5,000 \
             each), one in five a cash deposit instead. Latency: from the moment a command was due \
             to its answer. Events: every BalanceChanged event of the run, read in offset order once \
             the outbox drained; *out of order*: neither follows the previous distinct event of its \
             IBAN (new_balance = previous new_balance + changed_by) nor repeats, in order, a run \
             already published; *last ≠ database*: IBANs whose last event's new_balance is not \
             their balance in PostgreSQL.\n",
            self.per_second, self.seconds
        );
        for (workload, _, description) in WORKLOADS {
            let runs: Vec<&ScalingRun> = self
                .runs
                .iter()
                .filter(|r| r.workload == workload)
                .collect();
            if runs.is_empty() {
                continue;
            }
            let _ = writeln!(md, "## {workload}: {description}\n");
            let _ = writeln!(
                md,
                "| instances | answered | p50 ms | p90 ms | p99 ms | max ms | p50 × 1 instance | events | out of order | repeats | last ≠ database |\n\
                 |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            let single = runs
                .iter()
                .find(|r| r.instances == 1 && r.error.is_none())
                .map(|r| r.p50_ms);
            for r in &runs {
                let ratio = single.filter(|s| *s > 0.0).map(|s| r.p50_ms / s);
                let _ = writeln!(
                    md,
                    "| {} | {}/{} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
                    r.instances,
                    r.answered,
                    r.commands,
                    r.p50_ms,
                    r.p90_ms,
                    r.p99_ms,
                    r.max_ms,
                    shown(ratio, 2),
                    r.events,
                    r.out_of_order,
                    r.repeats,
                    r.last_event_differs
                );
            }
            md.push('\n');
        }
        let _ = writeln!(
            md,
            "## Where the time went\n\nCPU seconds over each measurement (first command due to last \
             answer); lock waits: the share of 50 ms samples in which a session of the run's database \
             waited for a lock (most at once).\n\n\
             | workload | instances | seconds | handlers CPU s | broker CPU s | PostgreSQL CPU s | machine CPU s | lock waits | handler warnings |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in &self.runs {
            let c = &r.cpu_seconds;
            let handlers: Vec<String> = c.handlers.iter().map(|h| shown(*h, 1)).collect();
            let l = &r.lock_waits;
            let share =
                (l.samples > 0).then(|| 100.0 * l.samples_waiting as f64 / l.samples as f64);
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {} | {} | {} | {} | {}% ({}) | {} |",
                r.workload,
                r.instances,
                c.window_seconds,
                if handlers.is_empty() {
                    "—".to_string()
                } else {
                    handlers.join(" + ")
                },
                shown(c.broker, 1),
                shown(c.postgres, 1),
                shown(c.machine, 1),
                shown(share, 0),
                l.waiting_max,
                r.handler_warnings
            );
        }
        md.push('\n');
        let notes: Vec<String> = self.runs.iter().filter_map(ScalingRun::note).collect();
        if !notes.is_empty() {
            let _ = writeln!(md, "Notes:\n");
            for note in notes {
                let _ = writeln!(md, "- {note}");
            }
            md.push('\n');
        }
        md
    }
}

impl ScalingRun {
    /// What a reader must know about the run beside its figures.
    fn note(&self) -> Option<String> {
        let mut problems = Vec::new();
        if let Some(error) = &self.error {
            problems.push(format!("stopped short: {error}"));
        }
        if self.error.is_none() && !self.settled {
            problems.push("the group had not settled when the measurement began".to_string());
        }
        if self.membership_changes_during > 0 {
            problems.push(format!(
                "{} assignment changes during the measurement",
                self.membership_changes_during
            ));
        }
        if self.outbox_left > 0 {
            problems.push(format!("{} events left in the outbox", self.outbox_left));
        }
        if let Some(error) = &self.events_error {
            problems.push(format!("events not checked: {error}"));
        }
        (!problems.is_empty()).then(|| {
            format!(
                "{}, {} instance(s): {}",
                self.workload,
                self.instances,
                problems.join("; ")
            )
        })
    }
}
