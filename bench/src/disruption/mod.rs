//! `dev/bench --disruptions`: the handler's latency and correctness while something
//! goes wrong. Each scenario runs on topics (9 partitions), a consumer group and a
//! database of its own, under an open-loop load of transfers between 50 accounts, and
//! reports latency from each command's sending to its first answer, overall and per
//! second of sending, the longest time nothing was answered, and the scaling runs'
//! checks: one kind of answer per command (repeats counted), none lost, balances as the
//! answers imply, each account's BalanceChanged events in order and the last carrying
//! its balance. Pauses are reported, never asserted.
//!
//! - `rolling-restart`: three instances; each in turn gets SIGTERM, is waited for and
//!   started again at once, 8 s before the next.
//! - `crash-restart`: three instances (`--crash-instances N`); one, the outbox's
//!   publisher, SIGKILLed and started again at once.
//! - `broker-sigterm`, `broker-sigkill` (a three-broker stack): one instance; `kafka-2`
//!   stopped (controlled shutdown) or killed, and started again 10 s later; then the
//!   floor, the same action under a plain librdkafka producer and consumer (`plain`).
//!
//! Each invocation begins with a short run on one instance, not reported (a broker just
//! started is slow for a while). Every instance keeps one `KAFKA_GROUP_INSTANCE_ID`
//! across its restarts (static membership, for a handler that reads it).
//! `--handler-env K=V` adds to every handler's environment; `--compare` runs the
//! restart scenarios as given, with the consumer group protocol and with
//! cooperative-sticky assignment. Writes
//! disruptions.md and disruptions.json; `--append` keeps the runs of other scenarios
//! already in disruptions.json (dev/bench runs the broker scenarios on a stack of their
//! own, after the others).

mod broker;
mod plain;
mod report;
mod seconds;
mod timeline;

use std::path::Path;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::client::{self, Stack};
use crate::floor::short_id;
use crate::group::{HANDLER_LOG, Instances, Traffic, check_events, drain_outbox, settle};
use crate::report::Machine;
use crate::workload::{PARTITIONS, Resources};
use plain::PlainPair;
use report::{DisruptionReport, HANDLER, PLAIN, ScenarioRun};
use seconds::Latency;
use timeline::{Pace, Subject, Timeline, open_loop};

/// The accounts the transfers go between.
const ACCOUNTS: usize = 50;

/// How long answers still missing after the load are waited for.
const ANSWER_LIMIT: Duration = Duration::from_secs(120);

/// The settings `--compare` runs the restart scenarios with, beside those given.
const COMPARED: [Option<(&str, &str)>; 3] = [
    None,
    Some(("RDKAFKA_CONSUMER_GROUP_PROTOCOL", "consumer")),
    Some((
        "RDKAFKA_CONSUMER_PARTITION_ASSIGNMENT_STRATEGY",
        "cooperative-sticky",
    )),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    RollingRestart,
    CrashRestart,
    BrokerSigterm,
    BrokerSigkill,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::RollingRestart,
        Scenario::CrashRestart,
        Scenario::BrokerSigterm,
        Scenario::BrokerSigkill,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::RollingRestart => "rolling-restart",
            Scenario::CrashRestart => "crash-restart",
            Scenario::BrokerSigterm => "broker-sigterm",
            Scenario::BrokerSigkill => "broker-sigkill",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Scenario::RollingRestart => {
                "Three instances in one group; after the warm-up each in turn gets SIGTERM, is \
                 waited for and started again at once with the same environment, and 8 s later \
                 the next one's turn comes."
            }
            Scenario::CrashRestart => {
                "One instance (the outbox's publisher, if one said so) SIGKILLed after the \
                 warm-up and started again at once with the same identity."
            }
            Scenario::BrokerSigterm => {
                "One instance on a three-broker stack; kafka-2 gets SIGTERM (a controlled \
                 shutdown) after the warm-up and is started again 10 s after it is gone. \
                 Beside it the floor: the same action under a plain librdkafka pair."
            }
            Scenario::BrokerSigkill => {
                "One instance on a three-broker stack; kafka-2 is SIGKILLed after the warm-up \
                 and started again 10 s later. Beside it the floor: the same action under a \
                 plain librdkafka pair."
            }
        }
    }

    /// The brokers the stack must have.
    fn brokers_needed(self) -> usize {
        match self {
            Scenario::BrokerSigterm | Scenario::BrokerSigkill => 3,
            _ => 1,
        }
    }

    pub fn named(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// How a process is stopped.
#[derive(Clone, Copy, Debug)]
pub enum Signal {
    Term,
    Kill,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Kill => "SIGKILL",
        }
    }
}

pub struct Options {
    pub quick: bool,
    /// The scenarios to run, in this order; all when empty.
    pub scenarios: Vec<Scenario>,
    /// Commands per second; default 300 on a one-broker stack, 50 on more.
    pub rate: Option<u32>,
    /// Added to every handler's environment.
    pub handler_env: Vec<(String, String)>,
    /// The restart scenarios also with each of [`COMPARED`].
    pub compare: bool,
    /// The instances of crash-restart.
    pub crash_instances: usize,
    /// Keeps the runs of other scenarios already in disruptions.json.
    pub append: bool,
    /// What produced the report.
    pub command: String,
}

/// What the handler's environment gets beside the run's own, and its name.
#[derive(Clone)]
struct Settings {
    env: Vec<(String, String)>,
}

impl Settings {
    fn label(&self) -> String {
        match self.env.is_empty() {
            true => "as shipped".to_string(),
            false => {
                let pairs: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
                pairs.join(" ")
            }
        }
    }
}

/// What every run of one invocation shares.
struct Context<'a> {
    stack: &'a Stack,
    /// The stack's state dir, for `dev/stack`.
    stack_dir: &'a Path,
    binary: &'a Path,
    out: &'a Path,
    rate: u32,
    pace: Pace,
}

/// Runs the scenarios of `options` on the stack, the report rewritten after each run.
pub fn run(stack: &Stack, stack_dir: &Path, binary: &Path, out: &Path, options: &Options) {
    let chosen = match options.scenarios.is_empty() {
        true => Scenario::ALL.to_vec(),
        false => options.scenarios.clone(),
    };
    let mut report = options
        .append
        .then(|| DisruptionReport::read(out))
        .flatten()
        .unwrap_or_else(|| {
            let machine = Machine::read(stack, 0);
            DisruptionReport::new(machine, options.command.clone(), handler_note(binary))
        });
    // A scenario run again replaces its earlier runs.
    report
        .runs
        .retain(|r| !chosen.iter().any(|s| s.name() == r.scenario));
    report
        .skipped
        .retain(|line| !chosen.iter().any(|s| line.starts_with(s.name())));
    let ctx = Context {
        stack,
        stack_dir,
        binary,
        out,
        rate: options
            .rate
            .unwrap_or(if stack.brokers() > 1 { 50 } else { 300 }),
        pace: Pace::new(options.quick),
    };
    let given = Settings {
        env: options.handler_env.clone(),
    };
    let compared: Vec<Settings> = match options.compare {
        false => vec![given.clone()],
        true => COMPARED
            .iter()
            .map(|extra| {
                let mut settings = given.clone();
                settings
                    .env
                    .extend(extra.map(|(k, v)| (k.to_string(), v.to_string())));
                settings
            })
            .collect(),
    };
    // A broker just started is busy for a while (its coordinators loading, its first
    // segments): a short run first, not reported, as the scaling runs do.
    eprintln!("== warm-up run, not reported");
    handler_run(&ctx, "warm-up", &given, 1, |_, _| {
        std::thread::sleep(Duration::from_secs(3));
        Ok(())
    });
    for scenario in chosen {
        if stack.brokers() < scenario.brokers_needed() {
            let why = format!(
                "{}: needs a stack of {} brokers, this one has {}",
                scenario.name(),
                scenario.brokers_needed(),
                stack.brokers()
            );
            eprintln!("== {why}; skipped");
            report.skipped.push(why);
            continue;
        }
        eprintln!("== {}: {}", scenario.name(), scenario.description());
        let runs: Vec<ScenarioRun> = match scenario {
            Scenario::RollingRestart => compared.iter().map(|s| rolling_restart(&ctx, s)).collect(),
            Scenario::CrashRestart => compared
                .iter()
                .map(|s| crash_restart(&ctx, s, options.crash_instances))
                .collect(),
            Scenario::BrokerSigterm => broker_stop(&ctx, scenario, Signal::Term, &given),
            Scenario::BrokerSigkill => broker_stop(&ctx, scenario, Signal::Kill, &given),
        };
        report.runs.extend(runs);
        report.write(out).expect("write the disruption report");
    }
    report.write(out).expect("write the disruption report");
    eprintln!("report written to {}", out.join("disruptions.md").display());
}

fn rolling_restart(ctx: &Context, settings: &Settings) -> ScenarioRun {
    handler_run(
        ctx,
        Scenario::RollingRestart.name(),
        settings,
        3,
        |instances, timeline| {
            std::thread::sleep(ctx.pace.warm_up);
            for i in 0..instances.len() {
                if i > 0 {
                    std::thread::sleep(ctx.pace.between_restarts);
                }
                restart(instances, i, Signal::Term, "", timeline);
            }
            Ok(())
        },
    )
}

fn crash_restart(ctx: &Context, settings: &Settings, instances: usize) -> ScenarioRun {
    handler_run(
        ctx,
        Scenario::CrashRestart.name(),
        settings,
        instances,
        |instances, timeline| {
            std::thread::sleep(ctx.pace.warm_up);
            // The publisher's crash hands the outbox over too: the worse case for events.
            let (victim, role) = match instances.publishers().first() {
                Some(&publisher) => (publisher, " (publishes the outbox)"),
                None => (0, ""),
            };
            restart(instances, victim, Signal::Kill, role, timeline);
            Ok(())
        },
    )
}

/// The handler run, then the floor, under the same broker action.
fn broker_stop(
    ctx: &Context,
    scenario: Scenario,
    signal: Signal,
    settings: &Settings,
) -> Vec<ScenarioRun> {
    let action = |timeline: &Timeline| {
        std::thread::sleep(ctx.pace.warm_up);
        broker::stop_and_start(
            ctx.stack_dir,
            broker::BROKER,
            signal,
            ctx.pace.broker_down,
            timeline,
        )
    };
    let handler = handler_run(ctx, scenario.name(), settings, 1, |_, timeline| {
        action(timeline)
    });
    let floor = plain_run(ctx, scenario, action);
    vec![handler, floor]
}

/// Signals instance `i`, waits for its exit and starts it again at once with the same
/// environment (its group instance id included).
fn restart(instances: &mut Instances, i: usize, signal: Signal, role: &str, timeline: &Timeline) {
    let signalled = timeline.action(format!("{} i{i}{role}", signal.name()));
    let status = match signal {
        Signal::Term => instances.terminate(i),
        Signal::Kill => instances.kill(i),
    };
    timeline.exited(i, signal.name(), signalled, status);
    instances.start(i);
    timeline.mark(format!("i{i} started again"));
}

/// `instances` handler instances under load while `disruption` runs, then the checks.
fn handler_run<F>(
    ctx: &Context,
    scenario: &str,
    settings: &Settings,
    instances: usize,
    disruption: F,
) -> ScenarioRun
where
    F: FnOnce(&mut Instances, &Timeline) -> Result<(), String> + Send,
{
    let name = format!("dis_{}_{}", scenario.replace('-', "_"), short_id());
    let mut run = ScenarioRun {
        scenario: scenario.to_string(),
        subject: HANDLER.to_string(),
        settings: settings.label(),
        brokers: ctx.stack.brokers(),
        instances,
        per_second: ctx.rate,
        ..ScenarioRun::default()
    };
    eprintln!("-- handler, {instances} instance(s), {}", run.settings);
    let mut resources = Resources::create(ctx.stack, &name);
    let log = ("RUST_LOG".to_string(), HANDLER_LOG.to_string());
    for (key, value) in std::iter::once(log).chain(settings.env.iter().cloned()) {
        let env = &mut resources.handler_env;
        env.retain(|(k, _)| *k != key);
        env.push((key, value));
    }
    let mut traffic = Traffic::new(ctx.stack, &resources, 2027, true);
    let mut handlers = Instances::new(ctx.binary, ctx.out, &name);
    for i in 0..instances {
        let mut env = resources.handler_env.clone();
        env.push((
            "KAFKA_GROUP_INSTANCE_ID".to_string(),
            format!("{name}-i{i}"),
        ));
        handlers.add(env);
    }
    if let Err(error) = measure_handler(
        ctx,
        &resources,
        &mut handlers,
        &mut traffic,
        &mut run,
        disruption,
    ) {
        run.error = Some(error);
    }
    handlers.stop_all();
    (run.handler_warnings, run.frequent_warnings) = handlers.warnings();
    // The answer reader first, so that it does not read the topics going away.
    drop(traffic);
    resources.remove(ctx.stack);
    eprintln!("   {}", run.summary());
    run
}

fn measure_handler<F>(
    ctx: &Context,
    resources: &Resources,
    handlers: &mut Instances,
    traffic: &mut Traffic,
    run: &mut ScenarioRun,
    disruption: F,
) -> Result<(), String>
where
    F: FnOnce(&mut Instances, &Timeline) -> Result<(), String> + Send,
{
    traffic.open_and_fund(ACCOUNTS)?;
    let (transfer_topic, answer_topic) = (&resources.topics[2], &resources.topics[3]);
    run.settled = settle(handlers, traffic, transfer_topic, Duration::from_secs(90))?;
    run.partitions_held = handlers
        .assignments(transfer_topic)
        .iter()
        .map(Vec::len)
        .collect();
    let topics = [("transfer", transfer_topic), ("answer", answer_topic)];
    run.leaders = leaders(ctx, &topics);
    let changes_before = handlers.membership_changes();
    run.load_average.push(load_average());
    let mut load = HandlerLoad {
        traffic,
        ids: Vec::new(),
    };
    let sent = open_loop(&mut load, ctx.rate, &ctx.pace, ANSWER_LIMIT, |timeline| {
        disruption(handlers, timeline)
    });
    let HandlerLoad { traffic, ids } = load;
    let answers = &traffic.answers;
    let first: Vec<Option<Instant>> = ids
        .iter()
        .map(|id| answers.first(id).map(|a| a.received))
        .collect();
    let every: Vec<Instant> = ids
        .iter()
        .flat_map(|id| answers.to(id))
        .map(|a| a.received)
        .collect();
    run.latency = Latency::of(&sent, &first, &every);
    run.load_average.push(load_average());
    (run.marks, run.exits, run.error) = (sent.marks, sent.exits, sent.script_error);
    run.membership_changes_during = handlers.membership_changes() - changes_before;
    run.leaders_after = leaders(ctx, &topics);
    run.publishers = handlers.publishers();
    let database_url = resources.database_url();
    run.outbox_left = Some(drain_outbox(database_url, Duration::from_secs(60))?);
    // Answers repeated late count too.
    traffic.answers.take(None, Duration::from_secs(2));
    let balances = client::balances(database_url);
    run.events = Some(check_events(
        ctx.stack,
        &resources.topics[4],
        balances.as_ref(),
    ));
    let correctness = traffic
        .answers
        .correctness(&traffic.sent, &traffic.accounts, &balances?);
    (run.lost, run.duplicates) = (correctness.unanswered, correctness.duplicate_answers);
    run.correctness = Some(correctness);
    Ok(())
}

/// The load's commands, as transfers of the run's traffic.
struct HandlerLoad<'t> {
    traffic: &'t mut Traffic,
    /// Command `k`'s id.
    ids: Vec<Uuid>,
}

impl Subject for HandlerLoad<'_> {
    fn send(&mut self, _: usize) {
        let transfer = self.traffic.next_transfer();
        self.ids.push(transfer.id);
        self.traffic.send(transfer);
    }

    fn take(&mut self, wait: Duration) {
        self.traffic.answers.take(None, wait);
    }

    fn first_answer(&self, k: usize) -> Option<Instant> {
        self.traffic.answers.first(&self.ids[k]).map(|a| a.received)
    }
}

/// The floor: a plain producer and consumer on a topic of their own while `action`
/// runs.
fn plain_run<F>(ctx: &Context, scenario: Scenario, action: F) -> ScenarioRun
where
    F: FnOnce(&Timeline) -> Result<(), String> + Send,
{
    let mut run = ScenarioRun {
        scenario: scenario.name().to_string(),
        subject: PLAIN.to_string(),
        settings: "librdkafka defaults, acks=all, idempotence".to_string(),
        brokers: ctx.stack.brokers(),
        per_second: ctx.rate,
        ..ScenarioRun::default()
    };
    eprintln!("-- the floor: {}", run.settings);
    let topic = format!(
        "dis_plain_{}_{}",
        scenario.name().replace('-', "_"),
        short_id()
    );
    ctx.stack
        .create_topics(std::slice::from_ref(&topic), PARTITIONS);
    let topics = [("record", &topic)];
    match PlainPair::start(ctx.stack, &topic) {
        Ok(mut pair) => {
            run.leaders = leaders(ctx, &topics);
            run.load_average.push(load_average());
            let sent = open_loop(&mut pair, ctx.rate, &ctx.pace, ANSWER_LIMIT, action);
            let first: Vec<Option<Instant>> =
                (0..sent.at.len()).map(|k| pair.first_answer(k)).collect();
            run.latency = Latency::of(&sent, &first, &pair.read_at);
            run.load_average.push(load_average());
            (run.marks, run.exits, run.error) = (sent.marks, sent.exits, sent.script_error);
            run.leaders_after = leaders(ctx, &topics);
            (run.lost, run.duplicates) = (pair.lost(), pair.duplicates);
            run.delivery_errors = pair.delivery_errors.len();
            if let Some(first) = pair.delivery_errors.first() {
                eprintln!("   the plain producer gave up on records, first: {first}");
            }
        }
        Err(error) => run.error = Some(error),
    }
    ctx.stack.delete_topics(&[topic]);
    eprintln!("   {}", run.summary());
    run
}

/// The handler binary: where, when built, and whether it names the static membership
/// variable (a handler that does not ignores it, and every restart rebalances the group).
fn handler_note(binary: &Path) -> String {
    let built = std::process::Command::new("date")
        .arg("-u")
        .arg("-r")
        .arg(binary)
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let reads_instance_id = std::fs::read(binary)
        .map(|bytes| {
            let name = b"KAFKA_GROUP_INSTANCE_ID";
            bytes.windows(name.len()).any(|w| w == name)
        })
        .unwrap_or(false);
    format!(
        "`{}`, built {built}; {} `KAFKA_GROUP_INSTANCE_ID`",
        binary.display(),
        match reads_instance_id {
            true => "names",
            false => "does not name (so ignores)",
        }
    )
}

/// The machine's one-minute load average now (0 when /proc/loadavg cannot be read): the
/// runs share the machine with whatever else runs on it.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Which broker leads which partitions of each `(role, topic)`, on a stack of several.
fn leaders(ctx: &Context, topics: &[(&str, &String)]) -> Vec<(String, String)> {
    if ctx.stack.brokers() < 2 {
        return Vec::new();
    }
    topics
        .iter()
        .map(|(role, topic)| {
            let leaders =
                broker::leaders(ctx.stack, topic).unwrap_or_else(|e| format!("unknown: {e}"));
            (role.to_string(), leaders)
        })
        .collect()
}
