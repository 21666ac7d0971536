//! Prometheus metrics: what the loops count and measure, registered here, and what is
//! read when scraped ([`crate::ops::scraped`]). Served by [`crate::ops::http`] in the
//! OpenMetrics text format; every name starts with `command_handler_`.
//!
//! Recording is a few atomic operations, so the metrics are always kept, also when no
//! HTTP port is configured.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{EncodeLabelSet, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};
use rdkafka::statistics::Statistics;

use crate::config::CommandTopic;
use crate::ops::stalls::Stalls;

/// A metric family's name (after the prefix) and help, as the README's table lists them.
pub(crate) type Describe = (&'static str, &'static str);

const PREFIX: &str = "command_handler";
const COMMANDS: Describe = (
    "commands",
    "Commands answered (acknowledged by Kafka), by type and outcome",
);
const DEAD_LETTERS: Describe = (
    "dead_letters",
    "Records sent to the dead-letter topic, by the topic they came from",
);
const PROCESSING_SECONDS: Describe = (
    "processing_seconds",
    "Time from polling a record to its answers being acknowledged (each record of a batch gets the batch's time)",
);
const BATCH_RETRIES: Describe = (
    "batch_retries",
    "Attempts at a batch that failed and were retried (registry, database or broker trouble)",
);
const CONSUMER_LAG: Describe = (
    "consumer_lag",
    "Records of an assigned partition not yet handled (librdkafka statistics, taken while the loop polls)",
);
const BALANCE_CHANGED_PUBLISHED: Describe = (
    "balance_changed_published",
    "BalanceChanged events this instance published from the outbox (acknowledged by Kafka; one sent again after a failure counts again)",
);
const BALANCE_CHANGED_PUBLISHER: Describe = (
    "balance_changed_publisher",
    "1 while this instance publishes the outbox's BalanceChanged events (one instance per database does), else 0",
);
const STAGE_SECONDS: Describe = (
    "stage_seconds",
    "Time a batch spent in each stage of its loop, by command type: poll (waiting for and taking its records), decode, apply (the database transaction), hand_over (to the producer thread), acknowledge (from hand-over to Kafka's last acknowledgement, while the next batch is applied), store_offsets",
);
const BUILD_INFO: Describe = ("build_info", "The handler's version");
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: &'static str,
    /// `confirmed` or `failed`, as answered (a replayed command counts again).
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandTypeLabel {
    command: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    command: &'static str,
    stage: &'static str,
}

/// The stages of a batch, in the order the loop takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Poll,
    Decode,
    Apply,
    HandOver,
    Acknowledge,
    StoreOffsets,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::Poll => "poll",
            Stage::Decode => "decode",
            Stage::Apply => "apply",
            Stage::HandOver => "hand_over",
            Stage::Acknowledge => "acknowledge",
            Stage::StoreOffsets => "store_offsets",
        }
    }
}

/// Times the stages of one batch that follow each other: each lap records the time
/// since the one before it (or since the start).
pub struct StageClock {
    metrics: Arc<Metrics>,
    command: CommandTopic,
    since: Instant,
}

impl StageClock {
    pub fn start(metrics: &Arc<Metrics>, command: CommandTopic) -> Self {
        StageClock {
            metrics: Arc::clone(metrics),
            command,
            since: Instant::now(),
        }
    }

    pub fn lap(&mut self, stage: Stage) {
        let now = Instant::now();
        self.metrics
            .stage_took(self.command, stage, now.duration_since(self.since));
        self.since = now;
    }
}

/// From 50 µs to about 26 s: decoding a batch takes tens of microseconds, waiting out
/// an outage seconds.
fn stage_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabel {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: i32,
}

/// From 1 ms to about 33 s: a quiet handler answers in milliseconds, one waiting out a
/// database or broker outage in seconds.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// What a batch came to, counted once Kafka has acknowledged its answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchTally {
    pub confirmed: u64,
    pub failed: u64,
    pub dead_lettered: u64,
}

pub struct Metrics {
    registry: Registry,
    commands: Family<CommandLabels, Counter>,
    dead_letters: Family<TopicLabel, Counter>,
    processing_seconds: Family<CommandTypeLabel, Histogram, fn() -> Histogram>,
    stage_seconds: Family<StageLabels, Histogram, fn() -> Histogram>,
    batch_retries: Family<TopicLabel, Counter>,
    consumer_lag: Family<PartitionLabels, Gauge>,
    balance_changed_published: Counter,
    balance_changed_publisher: Gauge,
    /// The partitions with a lag gauge, by topic, so that those no longer assigned
    /// lose theirs.
    lag_reported: Mutex<BTreeMap<String, BTreeSet<i32>>>,
    /// The partitions retrying a batch, reported by the loops, read by readiness and
    /// the scrape. Shared state, not a metric: here only because the loops reach it
    /// through their `Metrics` today.
    pub stalls: Stalls,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Registers `metric` and hands back the handle that records into it.
fn register<M: Metric + Clone>(registry: &mut Registry, (name, help): Describe, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let r = &mut registry;
        let commands = register(r, COMMANDS, Family::default());
        let dead_letters = register(r, DEAD_LETTERS, Family::default());
        let histograms = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let processing_seconds = register(r, PROCESSING_SECONDS, histograms);
        let stages = Family::new_with_constructor(stage_histogram as fn() -> Histogram);
        let stage_seconds = register(r, STAGE_SECONDS, stages);
        let batch_retries = register(r, BATCH_RETRIES, Family::default());
        let consumer_lag = register(r, CONSUMER_LAG, Family::default());
        let balance_changed_published = register(r, BALANCE_CHANGED_PUBLISHED, Counter::default());
        let balance_changed_publisher = register(r, BALANCE_CHANGED_PUBLISHER, Gauge::default());
        let version = [("version", env!("CARGO_PKG_VERSION"))];
        let build_info: Family<_, Gauge> = register(r, BUILD_INFO, Family::default());
        build_info.get_or_create(&version).set(1);
        Metrics {
            registry,
            commands,
            dead_letters,
            processing_seconds,
            stage_seconds,
            batch_retries,
            consumer_lag,
            balance_changed_published,
            balance_changed_publisher,
            lag_reported: Mutex::default(),
            stalls: Stalls::default(),
        }
    }

    /// Counts a batch whose answers Kafka acknowledged: its outcomes, its dead letters,
    /// and each record's time from poll to acknowledgement.
    pub fn batch_done(
        &self,
        command: CommandTopic,
        topic: &str,
        tally: BatchTally,
        records: usize,
        elapsed: Duration,
    ) {
        for (outcome, count) in [("confirmed", tally.confirmed), ("failed", tally.failed)] {
            if count > 0 {
                self.commands
                    .get_or_create(&CommandLabels {
                        command: CommandTopic::label(command),
                        outcome,
                    })
                    .inc_by(count);
            }
        }
        if tally.dead_lettered > 0 {
            self.dead_letters
                .get_or_create(&TopicLabel {
                    topic: topic.to_string(),
                })
                .inc_by(tally.dead_lettered);
        }
        let histogram = self.processing_seconds.get_or_create(&CommandTypeLabel {
            command: CommandTopic::label(command),
        });
        for _ in 0..records {
            histogram.observe(elapsed.as_secs_f64());
        }
    }

    /// How long a batch took in one stage of its loop.
    pub fn stage_took(&self, command: CommandTopic, stage: Stage, took: Duration) {
        self.stage_seconds
            .get_or_create(&StageLabels {
                command: command.label(),
                stage: stage.label(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts BalanceChanged events Kafka acknowledged.
    pub fn balance_events_published(&self, events: usize) {
        self.balance_changed_published.inc_by(events as u64);
    }

    /// Whether this instance publishes the outbox now.
    pub fn balance_publisher(&self, publishing: bool) {
        self.balance_changed_publisher.set(i64::from(publishing));
    }

    pub fn batch_retried(&self, topic: &str) {
        self.batch_retries
            .get_or_create(&TopicLabel {
                topic: topic.to_string(),
            })
            .inc();
    }

    /// Takes the lag of the `assigned` partitions of `topic` from a consumer's
    /// statistics; partitions no longer assigned lose their gauge (librdkafka goes on
    /// reporting every partition of the topic, with the last offsets it knew).
    pub fn consumer_statistics(&self, statistics: &Statistics, topic: &str, assigned: &[i32]) {
        let labels = |partition: i32| PartitionLabels {
            topic: topic.to_string(),
            partition,
        };
        let partitions = statistics.topics.get(topic).map(|t| &t.partitions);
        let mut current = BTreeSet::new();
        for partition in assigned {
            let Some(stats) = partitions.and_then(|p| p.get(partition)) else {
                continue;
            };
            // The lag behind the offsets this instance stored, or behind the committed
            // ones before it stored any (just after an assignment); negative: not known
            // yet (no offset or high watermark).
            let lag = if stats.consumer_lag_stored >= 0 {
                stats.consumer_lag_stored
            } else {
                stats.consumer_lag
            };
            if lag >= 0 {
                self.consumer_lag
                    .get_or_create(&labels(*partition))
                    .set(lag);
                current.insert(*partition);
            }
        }
        let mut reported = self
            .lag_reported
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let previous = reported.insert(topic.to_string(), current.clone());
        for gone in previous.unwrap_or_default().difference(&current) {
            self.consumer_lag.remove(&labels(*gone));
        }
    }

    /// The exposition: what was recorded, then what is read now ([`crate::ops::scraped`]).
    pub(crate) fn encode(&self, now: impl Collector + 'static) -> String {
        let mut scraped = Registry::with_prefix(PREFIX);
        scraped.register_collector(Box::new(now));
        let mut exposition = String::new();
        // Writing into a String cannot fail.
        let _ = text::encode_registry(&mut exposition, &self.registry)
            .and_then(|()| text::encode_registry(&mut exposition, &scraped))
            .and_then(|()| text::encode_eof(&mut exposition));
        exposition
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
