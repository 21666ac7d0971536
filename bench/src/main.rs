//! The benchmark of `dev/bench`: drives a real handler process only through Kafka and
//! the Schema Registry, as Open Bank's command generator does, and reports what
//! operators care about, per load step: end-to-end latency (HDR histogram, from the
//! moment a command was *due* to be sent, so a slow handler cannot hide its latency by
//! slowing the load down), the rate achieved, the CPU of every process of the stack
//! (handler, broker, PostgreSQL, load generator) and of the machine, also per 1,000
//! commands, and the handler's memory, sampled from /proc. Then a saturation run
//! (preloaded commands drained as fast as possible) and a correctness check (one kind of
//! answer per command, balances in PostgreSQL equal to what the confirmed transfers
//! imply). Before the variants, the floor: a Kafka round trip and a PostgreSQL
//! transaction on the same stack, of which latencies are also given as multiples.
//!
//!   open-bank-bench --stack-env FILE --handler PATH --out DIR [--quick]
//!                   [--baseline PATH] [--variants NAME,NAME...] [--steps RATE,RATE...]
//!
//! `--baseline PATH` measures another build (say, the last release) as shipped, side by
//! side with this one, and the report gives this build's figures as ratios of it.
//!   open-bank-bench --replot DIR    rewrite report.md and the plots from DIR/report.json
//!
//! `--scaling` runs only the scaling runs (see `scaling`) instead of the floor and the
//! variants: one, two and three instances of the handler in one consumer group, on 4 hot
//! accounts and on 200, each run's latency and each account's BalanceChanged events
//! checked to be in the order its balance changed; writes DIR/scaling.{md,json}.
//!   open-bank-bench --stack-env FILE --handler PATH --out DIR --scaling [--quick]
//!                   [--variants WORKLOAD,...] [--rate N]
//!                   (workloads hot, spread, hot-joining, all by default; N commands/s, 300)
//!
//! `--disruptions` runs only the disruption scenarios (see `disruption`): rolling and
//! crash restarts of handler instances, a broker stopped or killed (on a three-broker
//! stack, beside a plain librdkafka pair under the same action); writes
//! DIR/disruptions.{md,json}.
//!   open-bank-bench --stack-env FILE --handler PATH --out DIR --disruptions [--quick]
//!                   [--scenarios NAME,...] [--rate N] [--handler-env K=V]... [--compare]
//!                   [--crash-instances N] [--append]
//!                   (the stack's state dir, for `dev/stack`, is the env file's folder)

mod answers;
mod client;
mod comparison;
mod cpu;
mod disruption;
mod floor;
mod group;
mod markdown;
mod mix;
mod procstat;
mod report;
mod scaling;
mod stages;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use markdown::shown;
use report::{Report, VariantResult};

/// A configuration of the handler measured side by side with the others.
pub struct Variant {
    pub name: &'static str,
    pub description: &'static str,
    pub handler_env: Vec<(&'static str, &'static str)>,
    pub steps: Vec<u32>,
    pub saturation_commands: usize,
    /// Another build to run instead of `--handler` (the baseline).
    pub binary: Option<PathBuf>,
}

fn variants(quick: bool, baseline: Option<&PathBuf>) -> Vec<Variant> {
    let steps = if quick {
        vec![100, 1000]
    } else {
        vec![100, 500, 1000, 2000, 5000, 10_000]
    };
    let saturation = if quick { 5_000 } else { 40_000 };
    let mut variants = vec![
        Variant {
            name: "default",
            description: "as shipped: batches of up to 100 commands per transaction, linger 0 ms",
            handler_env: vec![],
            steps: steps.clone(),
            saturation_commands: saturation,
            binary: None,
        },
        Variant {
            name: "http-on",
            description: "as shipped, with health and metrics served (HTTP_PORT) and probed every 5 s",
            handler_env: vec![("HTTP_PORT", "0"), ("HTTP_BIND_ADDRESS", "127.0.0.1")],
            steps: steps.iter().copied().filter(|r| *r <= 2000).collect(),
            saturation_commands: saturation / 2,
            binary: None,
        },
        Variant {
            name: "linger-5",
            description: "producer linger 5 ms, librdkafka's default",
            handler_env: vec![("KAFKA_LINGER_MS", "5")],
            steps: steps.iter().copied().filter(|r| *r <= 2000).collect(),
            saturation_commands: 0,
            binary: None,
        },
        Variant {
            name: "linger-100",
            description: "producer linger 100 ms, the JVM handler's setting",
            handler_env: vec![("KAFKA_LINGER_MS", "100")],
            steps: steps.iter().copied().filter(|r| *r <= 2000).collect(),
            saturation_commands: 0,
            binary: None,
        },
        Variant {
            name: "one-per-transaction",
            description: "one command per database transaction (COMMAND_BATCH_SIZE=1)",
            handler_env: vec![("COMMAND_BATCH_SIZE", "1")],
            steps: steps.iter().copied().filter(|r| *r <= 1000).collect(),
            saturation_commands: saturation / 2,
            binary: None,
        },
    ];
    if let Some(path) = baseline {
        variants.insert(
            1,
            Variant {
                name: "baseline",
                description: "the build given by --baseline, as shipped",
                handler_env: vec![],
                steps,
                saturation_commands: saturation,
                binary: Some(path.clone()),
            },
        );
    }
    variants
}

struct Args {
    stack_env: PathBuf,
    handler: PathBuf,
    out: PathBuf,
    quick: bool,
    step_seconds: u64,
    baseline: Option<PathBuf>,
    /// Only these variants (all when empty).
    only: Vec<String>,
    /// Only these load steps, commands per second, in every variant (each variant's own
    /// when empty): a side-by-side comparison of a few rates at full step length.
    steps: Vec<u32>,
    /// The scaling runs instead of the variants.
    scaling: bool,
    /// The scaling runs' load, commands per second (default 300, quick 100); the
    /// disruption scenarios' (default 300, 50 on a three-broker stack).
    rate: Option<u32>,
    /// The disruption scenarios instead of the variants.
    disruptions: bool,
    /// Only these disruption scenarios (all when empty).
    scenarios: Vec<disruption::Scenario>,
    /// Added to every handler's environment in the disruption scenarios.
    handler_env: Vec<(String, String)>,
    /// The restart scenarios also with other consumer group settings.
    compare: bool,
    crash_instances: usize,
    /// Keep the other scenarios' runs of disruptions.json.
    append: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut stack_env, mut handler, mut out, mut quick, mut step_seconds) =
        (None, None, None, false, 15);
    let (mut baseline, mut only, mut scaling, mut rate) = (None, Vec::new(), false, None);
    let (mut disruptions, mut scenarios, mut handler_env) = (false, Vec::new(), Vec::new());
    let (mut compare, mut crash_instances, mut append) = (false, 3, false);
    let mut steps = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--stack-env" => stack_env = Some(PathBuf::from(value()?)),
            "--handler" => handler = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--step-seconds" => {
                step_seconds = value()?
                    .parse()
                    .map_err(|_| "--step-seconds takes whole seconds")?
            }
            "--quick" => quick = true,
            "--scaling" => scaling = true,
            "--rate" => {
                rate = Some(
                    value()?
                        .parse()
                        .map_err(|_| "--rate takes commands per second")?,
                )
            }
            "--baseline" => baseline = Some(PathBuf::from(value()?)),
            "--variants" => only = value()?.split(',').map(str::to_string).collect(),
            "--steps" => {
                steps = value()?
                    .split(',')
                    .map(|rate| {
                        rate.parse()
                            .map_err(|_| "--steps takes commands per second, comma-separated")
                    })
                    .collect::<Result<_, _>>()?
            }
            "--disruptions" => disruptions = true,
            "--scenarios" => {
                scenarios = value()?
                    .split(',')
                    .map(|name| {
                        disruption::Scenario::named(name)
                            .ok_or_else(|| format!("no disruption scenario {name}"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--handler-env" => {
                let pair = value()?;
                let (key, value) = pair
                    .split_once('=')
                    .ok_or("--handler-env takes NAME=VALUE")?;
                handler_env.push((key.to_string(), value.to_string()));
            }
            "--compare" => compare = true,
            "--crash-instances" => {
                crash_instances = value()?
                    .parse()
                    .map_err(|_| "--crash-instances takes a number of instances")?
            }
            "--append" => append = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        stack_env: stack_env.ok_or("--stack-env FILE is required")?,
        handler: handler.ok_or("--handler PATH is required")?,
        out: out.ok_or("--out DIR is required")?,
        quick,
        step_seconds: if quick {
            step_seconds.min(8)
        } else {
            step_seconds
        },
        baseline,
        only,
        steps,
        scaling,
        rate,
        disruptions,
        scenarios,
        handler_env,
        compare,
        crash_instances,
        append,
    })
}

fn main() {
    // Under a disruption the load generator's own Kafka clients report every broker
    // gone and every topic deleted; the report says what matters.
    let disrupting = std::env::args().any(|a| a == "--disruptions");
    env_logger::Builder::new()
        .parse_filters(match disrupting {
            true => "warn,librdkafka=off,rdkafka::client=off",
            false => "warn",
        })
        .parse_default_env()
        .init();
    if let [flag, dir] = &std::env::args().skip(1).collect::<Vec<_>>()[..]
        && flag == "--replot"
    {
        let dir = PathBuf::from(dir);
        let json = std::fs::read_to_string(dir.join("report.json")).expect("read report.json");
        let report: Report = serde_json::from_str(&json).expect("parse report.json");
        report.write_readable(&dir).expect("write the report");
        return;
    }
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("open-bank-bench: {e}\nusage: open-bank-bench --stack-env FILE --handler PATH --out DIR [--quick] [--step-seconds N] [--baseline PATH] [--variants NAME,...] [--steps RATE,...] [--scaling] [--disruptions [--scenarios NAME,...] [--handler-env K=V]... [--compare] [--crash-instances N] [--append]]");
        std::process::exit(2)
    });
    let stack = client::Stack::read(&args.stack_env);
    std::fs::create_dir_all(&args.out).expect("create the output folder");
    // dev/bench says how it was called; run directly, the arguments tell.
    let command = std::env::var("BENCH_COMMAND").unwrap_or_else(|_| {
        let args: Vec<String> = std::env::args().collect();
        args.join(" ")
    });
    if args.disruptions {
        let options = disruption::Options {
            quick: args.quick,
            scenarios: args.scenarios,
            rate: args.rate,
            handler_env: args.handler_env,
            compare: args.compare,
            crash_instances: args.crash_instances,
            append: args.append,
            command,
        };
        let stack_dir = args
            .stack_env
            .parent()
            .expect("the env file is in the stack's state dir");
        disruption::run(&stack, stack_dir, &args.handler, &args.out, &options);
        return;
    }
    if args.scaling {
        let mut load = scaling::Load::new(args.quick);
        if let Some(rate) = args.rate {
            load.per_second = rate;
        }
        scaling::run(&stack, &args.handler, &args.out, &load, &args.only, command);
        return;
    }
    let mut report = Report::new(&stack, args.step_seconds);
    eprintln!("== floor: Kafka round trip and PostgreSQL transaction");
    let floor = floor::Floor::measure(&stack);
    eprintln!(
        "   per command: p50 {} ms, p99 {} ms",
        shown(floor.per_command_p50_ms, 2),
        shown(floor.per_command_p99_ms, 2)
    );
    report.floor = Some(floor);
    let mut chosen: Vec<Variant> = variants(args.quick, args.baseline.as_ref())
        .into_iter()
        .filter(|v| args.only.is_empty() || args.only.iter().any(|name| name == v.name))
        .collect();
    if !args.steps.is_empty() {
        for variant in &mut chosen {
            variant.steps = args.steps.clone();
        }
    }
    // In the order asked for: the first variant runs on a broker just started, which
    // may still be busy (its idle CPU shows it), so swapping the order tells the two apart.
    chosen.sort_by_key(|v| args.only.iter().position(|name| name == v.name));
    for variant in chosen {
        eprintln!("== variant {}: {}", variant.name, variant.description);
        let result = run_variant(&stack, &args, &variant);
        report.variants.push(result);
        report.write(&args.out).expect("write the report");
    }
    eprintln!("report written to {}", args.out.join("report.md").display());
}

/// The load every variant gets before its measured steps.
const WARM_UP_RATE: u32 = 500;
const WARM_UP: Duration = Duration::from_secs(10);

fn run_variant(stack: &client::Stack, args: &Args, variant: &Variant) -> VariantResult {
    let binary = variant.binary.as_ref().unwrap_or(&args.handler);
    let mut bench = workload::Bench::setup(stack, binary, &args.out, variant);
    let mut result = VariantResult::new(variant);
    bench.open_accounts(200);
    let idle = bench.idle(Duration::from_secs(5));
    (result.idle, result.idle_cpu) = (idle.usage, idle.cpu);
    result.idle_memory = bench.memory_breakdown();
    eprintln!("   idle: rss {:.1} MiB", result.idle.rss_mib_avg);
    // Not measured: the broker's JVM compiles its produce and fetch paths under the
    // first load it sees, which otherwise falls on the first variant's first steps
    // (the broker then took three times the CPU at 100/s as for the second variant).
    let warm_up = bench.step(WARM_UP_RATE, WARM_UP);
    eprintln!(
        "   warm-up: {WARM_UP_RATE}/s for {} s (not measured), p99 {:.1} ms",
        WARM_UP.as_secs(),
        warm_up.p99_ms
    );
    for &rate in &variant.steps {
        let step = bench.step(rate, Duration::from_secs(args.step_seconds));
        eprintln!(
            "   {rate:>6}/s: achieved {:>7.0}/s p50 {:.1} ms p99 {:.1} ms max {:.1} ms cpu {:.0}% rss {:.1} MiB, stack {} CPU-ms/1000",
            step.achieved_per_second,
            step.p50_ms,
            step.p99_ms,
            step.max_ms,
            step.cpu_percent_avg,
            step.rss_mib_peak,
            shown(step.cpu_ms_per_1000.stack, 0)
        );
        let broken = step.broken();
        result.steps.push(step);
        if broken {
            eprintln!("   latency broke down at {rate}/s; no higher steps");
            break;
        }
    }
    if variant.saturation_commands > 0 {
        let saturation = bench.saturation(variant.saturation_commands);
        eprintln!(
            "   saturation: {:.0} commands/s",
            saturation.commands_per_second
        );
        result.saturation = Some(saturation);
    }
    result.correctness = bench.check_correctness();
    eprintln!("   correctness: {}", result.correctness.summary());
    bench.teardown();
    result
}
