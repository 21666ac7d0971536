//! `dev/bench --scaling`: one, two and three handler instances of one consumer group,
//! on hot accounts (4, shared by every transfer) and on spread ones (200). Each run has
//! topics (9 partitions), a consumer group and a database of its own; its instances start
//! together and are measured once each holds partitions of the transfer topic and a
//! warm-up round saw no assignment change. Then an open-loop load of transfers: latency
//! from the moment each was due to its answer, and afterwards, once the outbox drained,
//! every BalanceChanged event of the run read back in offset order, each IBAN's checked
//! to follow one another (repeats only of a run already published, in its order) and its
//! last to carry the IBAN's balance in PostgreSQL. Writes scaling.md and scaling.json.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::client::{self, Answer, Stack};
use crate::cpu::{Counters, Processes, process_seconds};
use crate::group::{self, HANDLER_LOG, Instances, Traffic, drain_outbox, settle};
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
    instances: Instances,
    traffic: Traffic,
    /// One instance is still to start during the load (the joining workload).
    joins_later: bool,
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
        let traffic = Traffic::new(stack, &resources, 2026 + accounts as u64, false);
        let joins_later = workload == JOINING;
        let mut handlers = Instances::new(binary, out, &name);
        for _ in 0..instances - usize::from(joins_later) {
            handlers.add(resources.handler_env.clone());
        }
        let mut run = Run {
            stack,
            resources,
            instances: handlers,
            traffic,
            joins_later,
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
        run.instances.stop_all();
        (result.handler_warnings, result.frequent_warnings) = run.instances.warnings();
        let Run {
            resources, traffic, ..
        } = run;
        // The answer reader first, so that it does not read the topics going away.
        drop(traffic);
        resources.remove(stack);
        result
    }

    fn measure_into(
        &mut self,
        result: &mut ScalingRun,
        accounts: usize,
        load: &Load,
    ) -> Result<(), String> {
        self.traffic.open_and_fund(accounts)?;
        let transfer_topic = &self.resources.topics[2];
        result.settled = settle(
            &self.instances,
            &mut self.traffic,
            transfer_topic,
            Duration::from_secs(90),
        )?;
        result.partitions_held = self
            .instances
            .assignments(transfer_topic)
            .iter()
            .map(Vec::len)
            .collect();
        let changes_before = self.instances.membership_changes();
        self.load(result, load)?;
        result.membership_changes_during = self.instances.membership_changes() - changes_before;
        result.outbox_left = drain_outbox(self.resources.database_url(), Duration::from_secs(60))?;
        self.check_events(result);
        result.publishers = self.instances.publishers();
        Ok(())
    }

    /// The open-loop load, each command sent when due whatever the handlers do.
    fn load(&mut self, result: &mut ScalingRun, load: &Load) -> Result<(), String> {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        let rate = load.per_second;
        let total = (rate as u64 * load.seconds) as usize;
        let mut ids = Vec::with_capacity(total);
        let cpu = CpuReading::new(self.stack, &self.instances.pids());
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
                let transfer = self.traffic.next_transfer();
                ids.push(transfer.id);
                self.traffic.answers.due(transfer.id, due);
                self.traffic.send(transfer);
                sent += 1;
            }
            if start.elapsed() >= JOIN_AFTER && self.joins_later {
                self.joins_later = false;
                self.instances.add(self.resources.handler_env.clone());
            }
            // Read answers meanwhile, so that their receive times are exact.
            self.traffic
                .answers
                .take(Some(&mut histogram), Duration::from_micros(500));
        }
        self.traffic
            .answers
            .wait_for(&ids, Duration::from_secs(60), Some(&mut histogram));
        let after = cpu.read();
        result.cpu_seconds = cpu.between(&before, &after, start.elapsed().as_secs_f64());
        result.lock_waits = locks.stop();
        let answers: Vec<&Answer> = ids
            .iter()
            .filter_map(|id| self.traffic.answers.first(id))
            .collect();
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

    /// Every event of the run's topic, each IBAN's in order, its last against its
    /// balance in PostgreSQL.
    fn check_events(&self, result: &mut ScalingRun) {
        let balances = client::balances(self.resources.database_url());
        let check = group::check_events(self.stack, &self.resources.topics[4], balances.as_ref());
        result.events_error = check.error;
        result.events = check.events;
        result.ibans = check.ibans;
        result.out_of_order = check.out_of_order;
        result.repeats = check.repeats;
        result.last_event_differs = check.last_event_differs;
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
