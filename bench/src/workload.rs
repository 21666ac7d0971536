//! The workload: accounts opened first, then an open-loop mix of transfers like Open
//! Bank's command generator's, every answer matched to its command by id.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::StdRng;
use uuid::Uuid;

use crate::Variant;
use crate::answers::Answers;
use crate::client::{self, AnswerReader, CommandWriter, HandlerProcess, Stack, Transfer};
use crate::cpu::Processes;
use crate::mix;
use crate::procstat::{MemoryBreakdown, Sampler, Window, memory_breakdown};
use crate::report::{Correctness, Saturation, Step};
use crate::stages;

pub const PARTITIONS: i32 = 9;

/// A run's own topics and database on the stack, and the environment of a handler
/// using them.
pub struct Resources {
    /// cac, acf, cmt, mtf, bc, dlq: `PARTITIONS` partitions each.
    pub topics: Vec<String>,
    pub database: String,
    /// Consumer group (`KAFKA_CLIENT_ID`) `{name}.handler`; `RUST_LOG=warn`.
    pub handler_env: Vec<(String, String)>,
}

impl Resources {
    pub fn create(stack: &Stack, name: &str) -> Resources {
        let topic = |suffix: &str| format!("{name}.{suffix}");
        let topics = ["cac", "acf", "cmt", "mtf", "bc", "dlq"]
            .map(topic)
            .to_vec();
        stack.create_topics(&topics, PARTITIONS);
        let database = format!("b_{name}");
        let database_url = stack.create_database(&database);
        let handler_env = vec![
            ("KAFKA_BROKERS", stack.get("KAFKA_BROKERS").to_string()),
            (
                "SCHEMA_REGISTRY_URL",
                stack.get("SCHEMA_REGISTRY_URL").to_string(),
            ),
            ("DB_HOSTNAME", stack.get("DB_HOSTNAME").to_string()),
            ("DB_PORT", stack.get("DB_PORT").to_string()),
            ("DB_PASSWORD", stack.get("DB_PASSWORD").to_string()),
            ("DATABASE_URL", database_url),
            ("KAFKA_CAC_TOPIC", topics[0].clone()),
            ("KAFKA_ACF_TOPIC", topics[1].clone()),
            ("KAFKA_CMT_TOPIC", topics[2].clone()),
            ("KAFKA_MTF_TOPIC", topics[3].clone()),
            ("KAFKA_BC_TOPIC", topics[4].clone()),
            ("KAFKA_DEAD_LETTER_TOPIC", topics[5].clone()),
            ("KAFKA_CLIENT_ID", format!("{name}.handler")),
            ("RUST_LOG", "warn".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Resources {
            topics,
            database,
            handler_env,
        }
    }

    pub fn database_url(&self) -> &str {
        &self
            .handler_env
            .iter()
            .find(|(k, _)| k == "DATABASE_URL")
            .expect("the handler's environment has DATABASE_URL")
            .1
    }

    pub fn remove(&self, stack: &Stack) {
        stack.drop_database(&self.database);
        stack.delete_topics(&self.topics);
    }
}

pub struct Bench<'a> {
    stack: &'a Stack,
    binary: &'a Path,
    out: &'a Path,
    name: String,
    topics: Vec<String>,
    database: String,
    handler_env: Vec<(String, String)>,
    /// The handler's `/metrics`, in variants serving HTTP.
    metrics_url: Option<String>,
    handler: Option<HandlerProcess>,
    sampler: Option<Sampler>,
    writer: CommandWriter,
    _reader: AnswerReader,
    answers: Answers,
    accounts: Vec<(String, String)>,
    rng: StdRng,
    /// Every transfer sent.
    sent: HashMap<Uuid, Transfer>,
}

impl<'a> Bench<'a> {
    pub fn setup(
        stack: &'a Stack,
        binary: &'a Path,
        out: &'a Path,
        variant: &Variant,
    ) -> Bench<'a> {
        let name = format!(
            "bench_{}_{}",
            variant.name.replace('-', "_"),
            &Uuid::new_v4().simple().to_string()[..6]
        );
        let Resources {
            topics,
            database,
            mut handler_env,
        } = Resources::create(stack, &name);
        for (key, value) in &variant.handler_env {
            handler_env.retain(|(k, _)| k != key);
            handler_env.push((key.to_string(), value.to_string()));
        }
        // A variant serving HTTP gets a port of its own, kept across the restart of the
        // saturation run, where the per-stage histograms are read.
        let metrics_url =
            handler_env
                .iter_mut()
                .find(|(k, _)| k == "HTTP_PORT")
                .map(|(_, port)| {
                    if port == "0" {
                        *port = free_port().to_string();
                    }
                    format!("http://127.0.0.1:{port}/metrics")
                });
        let writer = CommandWriter::new(stack, &topics[0], &topics[2]);
        let (reader, answers) =
            AnswerReader::start(stack, &[topics[1].clone(), topics[3].clone()], PARTITIONS);
        let mut bench = Bench {
            stack,
            binary,
            out,
            name,
            topics,
            database,
            handler_env,
            metrics_url,
            handler: None,
            sampler: None,
            writer,
            _reader: reader,
            answers: Answers::new(answers),
            accounts: Vec::new(),
            rng: StdRng::seed_from_u64(2026),
            sent: HashMap::new(),
        };
        bench.start_handler();
        bench
    }

    fn handler_log(&self) -> std::path::PathBuf {
        self.out.join(format!("{}.handler.log", self.name))
    }

    fn start_handler(&mut self) {
        let handler = HandlerProcess::start(self.binary, &self.handler_env, self.handler_log());
        self.sampler = Some(Sampler::start(Processes::of(self.stack, handler.pid())));
        self.handler = Some(handler);
    }

    fn stop_handler(&mut self) {
        self.sampler = None;
        if let Some(handler) = self.handler.take() {
            handler.stop();
        }
    }

    fn sampler(&self) -> &Sampler {
        self.sampler.as_ref().expect("the handler runs")
    }

    pub fn open_accounts(&mut self, count: usize) {
        self.accounts = self
            .answers
            .open_accounts(&self.writer, count)
            .expect("every account opened");
    }

    /// The handler's usage and the stack's CPU while idle, after the accounts are open.
    pub fn idle(&mut self, span: Duration) -> Window {
        self.sampler().sample_now();
        let start = Instant::now();
        std::thread::sleep(span);
        self.sampler().sample_now();
        self.sampler().window(start, Instant::now())
    }

    pub fn memory_breakdown(&self) -> MemoryBreakdown {
        memory_breakdown(self.handler.as_ref().expect("the handler runs").pid())
    }

    /// Sends `rate` commands a second for `span`, each at the moment it is due whatever
    /// the handler does (open loop), and measures them.
    pub fn step(&mut self, rate: u32, span: Duration) -> Step {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        let total = (rate as f64 * span.as_secs_f64()) as usize;
        let mut ids = Vec::with_capacity(total);
        let stages_before = self.metrics_url.as_deref().and_then(stages::scrape);
        self.sampler().sample_now();
        let start = Instant::now();
        let mut sent = 0usize;
        while sent < total {
            let due_now = ((start.elapsed().as_secs_f64() * rate as f64) as usize + 1).min(total);
            while sent < due_now {
                let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
                let transfer = mix::next_transfer(&mut self.rng, &self.accounts);
                self.writer.transfer(&transfer);
                ids.push(transfer.id);
                self.answers.due(transfer.id, due);
                self.sent.insert(transfer.id, transfer);
                sent += 1;
            }
            // Read answers until the next command is due (the reader thread timed each
            // as it came), rather than waking every half millisecond to look.
            let next_due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
            self.answers.take(
                Some(&mut histogram),
                next_due.saturating_duration_since(Instant::now()),
            );
        }
        let sending_ended = Instant::now();
        self.answers
            .wait_for(&ids, Duration::from_secs(30), Some(&mut histogram));
        self.sampler().sample_now();
        let last_answer = ids
            .iter()
            .filter_map(|id| self.answers.first(id).map(|a| a.received))
            .max()
            .unwrap_or(sending_ended);
        let answered = self.answers.answered(&ids);
        let stages_after = self.metrics_url.as_deref().and_then(stages::scrape);
        let stages = match (&stages_before, &stages_after) {
            (Some(before), Some(after)) => stages::between(before, after),
            _ => Vec::new(),
        };
        let window = self.sampler().window(start, last_answer.max(sending_ended));
        let usage = window.usage;
        let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
        Step {
            target_per_second: rate,
            commands: total,
            answered,
            achieved_per_second: answered as f64
                / last_answer
                    .duration_since(start)
                    .as_secs_f64()
                    .max(span.as_secs_f64()),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: histogram.max() as f64 / 1000.0,
            cpu_percent_avg: usage.cpu_percent_avg,
            cpu_percent_peak: usage.cpu_percent_peak,
            rss_mib_avg: usage.rss_mib_avg,
            rss_mib_peak: usage.rss_mib_peak,
            cpu: window.cpu,
            cpu_ms_per_1000: window.per_thousand(answered),
            stages,
        }
    }

    /// Stops the handler, preloads `count` transfers, starts it again and measures how
    /// fast it drains them.
    pub fn saturation(&mut self, count: usize) -> Saturation {
        self.stop_handler();
        let mut ids = Vec::with_capacity(count);
        let preload = Instant::now();
        for _ in 0..count {
            let transfer = mix::next_transfer(&mut self.rng, &self.accounts);
            self.writer.transfer(&transfer);
            ids.push(transfer.id);
            self.answers.due(transfer.id, preload);
            self.sent.insert(transfer.id, transfer);
        }
        self.writer.flush();
        let started = Instant::now();
        self.start_handler();
        // Samples as the first answer comes and after the last: the drain's edges.
        while self.answers.take(None, Duration::from_millis(2)) == 0
            && started.elapsed() < Duration::from_secs(600)
        {}
        self.sampler().sample_now();
        self.answers.wait_for(&ids, Duration::from_secs(600), None);
        self.sampler().sample_now();
        let times: Vec<Instant> = ids
            .iter()
            .filter_map(|id| self.answers.first(id).map(|a| a.received))
            .collect();
        let (first, last) = (
            times.iter().min().copied().unwrap_or(started),
            times.iter().max().copied().unwrap_or(started),
        );
        let window = self.sampler().window(first, last);
        Saturation {
            commands: count,
            answered: times.len(),
            seconds_from_start: last.duration_since(started).as_secs_f64(),
            commands_per_second: times.len() as f64
                / last.duration_since(first).as_secs_f64().max(0.001),
            cpu_percent_avg: window.usage.cpu_percent_avg,
            rss_mib_peak: window.usage.rss_mib_peak,
            cpu: window.cpu,
            cpu_ms_per_1000: window.per_thousand(times.len()),
        }
    }

    /// Every transfer got exactly one kind of answer, and every balance equals what
    /// the confirmed transfers imply.
    pub fn check_correctness(&mut self) -> Correctness {
        let ids: Vec<Uuid> = self.sent.keys().copied().collect();
        self.answers.wait_for(&ids, Duration::from_secs(60), None);
        self.answers.take(None, Duration::from_secs(2));
        let url = self
            .handler_env
            .iter()
            .find(|(k, _)| k == "DATABASE_URL")
            .unwrap()
            .1
            .clone();
        let balances = client::balances(&url).expect("read balances");
        self.answers
            .correctness(self.sent.values(), &self.accounts, &balances)
    }

    pub fn teardown(mut self) {
        self.stop_handler();
        let Bench {
            stack,
            database,
            topics,
            _reader: reader,
            ..
        } = self;
        // The answer reader first, so that it does not read the topics going away.
        drop(reader);
        stack.drop_database(&database);
        stack.delete_topics(&topics);
    }
}

/// A loopback port free now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}
