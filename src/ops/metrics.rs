//! Prometheus metrics: what the loops count and measure, and what is read from the
//! clients and the pool when scraped. Served by [`crate::ops::http`] in the OpenMetrics text
//! format; every name starts with `command_handler_`.
//!
//! Recording is a few atomic operations, so the metrics are always kept, also when no
//! HTTP port is configured.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rdkafka::statistics::Statistics;

use crate::config::CommandTopic;
use crate::db::PoolUsage;
use crate::ops::stalls::Stalls;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolStateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DependencyLabel {
    dependency: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
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
    assigned_partitions: Family<TopicLabel, Gauge>,
    consumer_lag: Family<PartitionLabels, Gauge>,
    /// The partitions with a lag gauge, by topic, so that those no longer assigned
    /// lose theirs.
    lag_reported: Mutex<BTreeMap<String, BTreeSet<i32>>>,
    producer_queue_depth: Gauge,
    db_pool_connections: Family<PoolStateLabel, Gauge>,
    db_pool_max: Gauge,
    dependency_up: Family<DependencyLabel, Gauge>,
    retrying_seconds: Family<PartitionLabels, Gauge<f64, AtomicU64>>,
    /// The partitions retrying a batch, reported by the loops.
    pub stalls: Stalls,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let commands = Family::default();
        let dead_letters = Family::default();
        let processing_seconds: Family<CommandTypeLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let batch_retries = Family::default();
        let assigned_partitions = Family::default();
        let consumer_lag = Family::default();
        let producer_queue_depth = Gauge::default();
        let db_pool_connections = Family::default();
        let db_pool_max = Gauge::default();
        let dependency_up = Family::default();
        let retrying_seconds = Family::default();
        let build_info: Family<VersionLabel, Gauge> = Family::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);

        let mut registry = Registry::with_prefix("command_handler");
        registry.register(
            "commands",
            "Commands answered (acknowledged by Kafka), by type and outcome",
            commands.clone(),
        );
        registry.register(
            "dead_letters",
            "Records sent to the dead-letter topic, by the topic they came from",
            dead_letters.clone(),
        );
        registry.register(
            "processing_seconds",
            "Time from polling a record to its answers being acknowledged (each record of a batch gets the batch's time)",
            processing_seconds.clone(),
        );
        registry.register(
            "batch_retries",
            "Attempts at a batch that failed and were retried (registry, database or broker trouble)",
            batch_retries.clone(),
        );
        registry.register(
            "assigned_partitions",
            "Partitions of the command topic assigned to this instance",
            assigned_partitions.clone(),
        );
        registry.register(
            "consumer_lag",
            "Records of an assigned partition not yet handled (librdkafka statistics, taken while the loop polls)",
            consumer_lag.clone(),
        );
        registry.register(
            "producer_queue_depth",
            "Messages and requests waiting in the producer (librdkafka's out-queue length)",
            producer_queue_depth.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Database connections of the pool, by state",
            db_pool_connections.clone(),
        );
        registry.register(
            "db_pool_max_connections",
            "Most connections the pool opens (DB_POOL_SIZE)",
            db_pool_max.clone(),
        );
        registry.register(
            "dependency_up",
            "1 when the latest readiness check of a dependency passed (HTTP_PORT set)",
            dependency_up.clone(),
        );
        registry.register(
            "retrying_seconds",
            "How long a partition has been retrying its batch (absent when it is not)",
            retrying_seconds.clone(),
        );
        registry.register("build_info", "The handler's version", build_info);
        Metrics {
            registry,
            commands,
            dead_letters,
            processing_seconds,
            batch_retries,
            assigned_partitions,
            consumer_lag,
            lag_reported: Mutex::new(BTreeMap::new()),
            producer_queue_depth,
            db_pool_connections,
            db_pool_max,
            dependency_up,
            retrying_seconds,
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

    pub fn dependency_checked(&self, dependency: &str, up: bool) {
        self.dependency_up
            .get_or_create(&DependencyLabel {
                dependency: dependency.to_string(),
            })
            .set(i64::from(up));
    }

    /// Drops a dependency's series (a check that is no longer made).
    pub fn forget_dependency(&self, dependency: &str) {
        self.dependency_up.remove(&DependencyLabel {
            dependency: dependency.to_string(),
        });
    }

    pub fn batch_retried(&self, topic: &str) {
        self.batch_retries
            .get_or_create(&TopicLabel {
                topic: topic.to_string(),
            })
            .inc();
    }

    pub fn partitions_assigned(&self, topic: &str, count: usize) {
        self.assigned_partitions
            .get_or_create(&TopicLabel {
                topic: topic.to_string(),
            })
            .set(count as i64);
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

    /// The exposition, with the gauges read at scrape time set first.
    pub fn encode(&self, producer_queue_depth: i32, pool: PoolUsage) -> String {
        self.producer_queue_depth
            .set(i64::from(producer_queue_depth));
        for (state, count) in [("idle", pool.idle), ("in_use", pool.in_use)] {
            self.db_pool_connections
                .get_or_create(&PoolStateLabel { state })
                .set(i64::from(count));
        }
        self.db_pool_max.set(i64::from(pool.max));
        self.retrying_seconds.clear();
        for ((topic, partition), stall) in self.stalls.now() {
            self.retrying_seconds
                .get_or_create(&PartitionLabels { topic, partition })
                .set(stall.since.elapsed().as_secs_f64());
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_metric() {
        let metrics = Metrics::new();
        let tally = BatchTally {
            confirmed: 0,
            failed: 1,
            dead_lettered: 2,
        };
        let topic = "confirm_money_transfer";
        metrics.batch_done(
            CommandTopic::MoneyTransfer,
            topic,
            tally,
            3,
            Duration::from_millis(3),
        );
        let text = metrics.encode(
            2,
            PoolUsage {
                idle: 1,
                in_use: 2,
                max: 4,
            },
        );
        for line in [
            r#"command_handler_commands_total{command="money_transfer",outcome="failed"} 1"#,
            r#"command_handler_dead_letters_total{topic="confirm_money_transfer"} 2"#,
            r#"command_handler_processing_seconds_count{command="money_transfer"} 3"#,
            r#"command_handler_processing_seconds_bucket{le="0.004",command="money_transfer"} 3"#,
            "command_handler_producer_queue_depth 2",
            r#"command_handler_db_pool_connections{state="in_use"} 2"#,
            "command_handler_db_pool_max_connections 4",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
