//! Prometheus metrics: what the loops count and measure, registered here, and what is
//! read when scraped ([`crate::ops::scraped`]). Served by [`crate::ops::http`] in the
//! OpenMetrics text format; every name starts with `command_handler_`.
//!
//! Recording is a few atomic operations, so the metrics are always kept, also when no
//! HTTP port is configured.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};
use rdkafka::statistics::Statistics;

use crate::config::CommandTopic;
use crate::ops::scraped::Scraped;
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
const BUILD_INFO: Describe = ("build_info", "The handler's version");
// Read when scraped.
pub(crate) const ASSIGNED_PARTITIONS: Describe = (
    "assigned_partitions",
    "Partitions of the command topic assigned to this instance",
);
pub(crate) const PRODUCER_QUEUE_DEPTH: Describe = (
    "producer_queue_depth",
    "Messages and requests waiting in the producer (librdkafka's out-queue length)",
);
pub(crate) const DB_POOL_CONNECTIONS: Describe = (
    "db_pool_connections",
    "Database connections of the pool, by state",
);
pub(crate) const DB_POOL_MAX_CONNECTIONS: Describe = (
    "db_pool_max_connections",
    "Most connections the pool opens (DB_POOL_SIZE)",
);
pub(crate) const DEPENDENCY_UP: Describe = (
    "dependency_up",
    "1 when the latest readiness check of a dependency passed (HTTP_PORT set)",
);
pub(crate) const RETRYING_SECONDS: Describe = (
    "retrying_seconds",
    "How long a partition has been retrying its batch (absent when it is not)",
);

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
    batch_retries: Family<TopicLabel, Counter>,
    consumer_lag: Family<PartitionLabels, Gauge>,
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
        let batch_retries = register(r, BATCH_RETRIES, Family::default());
        let consumer_lag = register(r, CONSUMER_LAG, Family::default());
        let version = [("version", env!("CARGO_PKG_VERSION"))];
        let build_info: Family<_, Gauge> = register(r, BUILD_INFO, Family::default());
        build_info.get_or_create(&version).set(1);
        Metrics {
            registry,
            commands,
            dead_letters,
            processing_seconds,
            batch_retries,
            consumer_lag,
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

    /// The exposition: what was recorded, then what is read now.
    pub(crate) fn encode(&self, now: Scraped) -> String {
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
mod tests {
    use super::*;
    use crate::db::PoolUsage;

    /// What the loops record, and what a scrape reads, in a handler at work.
    fn at_work() -> (Metrics, Scraped) {
        let metrics = Metrics::new();
        let tally = |confirmed, failed, dead_lettered| BatchTally {
            confirmed,
            failed,
            dead_lettered,
        };
        let millis = Duration::from_millis;
        let transfer = CommandTopic::MoneyTransfer;
        metrics.batch_done(transfer, "cmt", tally(2, 1, 1), 3, millis(3));
        let creation = CommandTopic::AccountCreation;
        metrics.batch_done(creation, "cac", tally(1, 0, 0), 1, millis(30));
        metrics.batch_retried("cmt");
        let mut topic = rdkafka::statistics::Topic::default();
        // Stored lag, committed lag before anything is stored, not known yet.
        for (partition, stored, committed) in [(0, 7, 9), (1, -1, 4), (2, -1, -1)] {
            let stats = topic.partitions.entry(partition).or_default();
            (stats.consumer_lag_stored, stats.consumer_lag) = (stored, committed);
        }
        let mut statistics = Statistics::default();
        statistics.topics.insert("cmt".to_string(), topic);
        metrics.consumer_statistics(&statistics, "cmt", &[0, 1, 2]);
        let scraped = Scraped {
            assigned: vec![("cmt".to_string(), 2), ("cac".to_string(), 1)],
            producer_queue_depth: 5,
            pool: PoolUsage {
                idle: 1,
                in_use: 2,
                max: 4,
            },
            dependencies: [
                ("database", true),
                ("schema_registry", false),
                ("kafka:cmt", true),
            ]
            .map(|(name, up)| (name.to_string(), up))
            .to_vec(),
            retrying: vec![(("cmt".to_string(), 0), Duration::from_millis(12_500))],
        };
        (metrics, scraped)
    }

    /// The exposition as a set of lines (a family's series come in no set order); every
    /// sample under its own family's `# TYPE`.
    fn lines(exposition: &str) -> Vec<&str> {
        let mut family = "";
        for line in exposition.lines() {
            match line.strip_prefix("# TYPE ") {
                Some(typed) => family = typed.split(' ').next().unwrap_or_default(),
                None if !line.starts_with('#') => {
                    assert!(line.starts_with(family), "{line} outside {family}");
                }
                None => {}
            }
        }
        let mut lines: Vec<&str> = exposition.lines().collect();
        lines.sort_unstable();
        lines
    }

    /// Names, types, helps, labels and values as the handler exposed them before the
    /// scrape-time values were read through a collector (testdata, taken from it).
    #[test]
    fn the_exposition_is_what_it_was() {
        let (metrics, scraped) = at_work();
        let exposition = metrics.encode(scraped);
        let before = include_str!("testdata/exposition.txt");
        assert_eq!(lines(&exposition), lines(before), "{exposition}");
        assert!(exposition.ends_with("# EOF\n"));

        let idle = Scraped {
            assigned: Vec::new(),
            producer_queue_depth: 0,
            pool: PoolUsage {
                idle: 0,
                in_use: 0,
                max: 4,
            },
            dependencies: Vec::new(),
            retrying: Vec::new(),
        };
        let exposition = Metrics::new().encode(idle);
        let before = include_str!("testdata/exposition_empty.txt");
        assert_eq!(lines(&exposition), lines(before), "{exposition}");
    }

    #[test]
    fn a_partition_no_longer_assigned_loses_its_lag() {
        let (metrics, scraped) = at_work();
        metrics.consumer_statistics(&Statistics::default(), "cmt", &[]);
        let exposition = metrics.encode(scraped);
        assert!(!exposition.contains("consumer_lag{"), "{exposition}");
    }
}
