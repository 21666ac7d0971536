//! Prometheus metrics: what the loops count and measure, and what is read from the
//! clients and the pool when scraped. Served by [`crate::http`] in the OpenMetrics text
//! format; every name starts with `command_handler_`.
//!
//! Recording is a few atomic operations, so the metrics are always kept, also when no
//! HTTP port is configured.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rdkafka::statistics::Statistics;

use crate::pipeline::CommandTopic;
use crate::storage::PoolUsage;

fn command_label(command: CommandTopic) -> &'static str {
    match command {
        CommandTopic::AccountCreation => "account_creation",
        CommandTopic::MoneyTransfer => "money_transfer",
    }
}

/// Confirmed or failed, as answered (a replayed command counts again).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Confirmed,
    Failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: &'static str,
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

pub struct Metrics {
    registry: Registry,
    commands: Family<CommandLabels, Counter>,
    dead_letters: Family<TopicLabel, Counter>,
    processing_seconds: Family<CommandTypeLabel, Histogram, fn() -> Histogram>,
    batch_retries: Family<TopicLabel, Counter>,
    assigned_partitions: Family<TopicLabel, Gauge>,
    consumer_lag: Family<PartitionLabels, Gauge>,
    /// Partitions with a lag gauge, so that those no longer reported lose theirs.
    lag_reported: Mutex<BTreeSet<(String, i32)>>,
    producer_queue_depth: Gauge,
    db_pool_connections: Family<PoolStateLabel, Gauge>,
    db_pool_max: Gauge,
    dependency_up: Family<DependencyLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("command_handler");
        let metrics = Metrics {
            commands: Family::default(),
            dead_letters: Family::default(),
            processing_seconds: Family::new_with_constructor(latency_histogram),
            batch_retries: Family::default(),
            assigned_partitions: Family::default(),
            consumer_lag: Family::default(),
            lag_reported: Mutex::new(BTreeSet::new()),
            producer_queue_depth: Gauge::default(),
            db_pool_connections: Family::default(),
            db_pool_max: Gauge::default(),
            dependency_up: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "commands",
            "Commands answered, by type and outcome",
            metrics.commands.clone(),
        );
        registry.register(
            "dead_letters",
            "Records sent to the dead-letter topic, by the topic they came from",
            metrics.dead_letters.clone(),
        );
        registry.register(
            "processing_seconds",
            "Time from polling a command to storing its offset (answers acknowledged)",
            metrics.processing_seconds.clone(),
        );
        registry.register(
            "batch_retries",
            "Attempts at a batch that failed and were retried (registry, database or broker trouble)",
            metrics.batch_retries.clone(),
        );
        registry.register(
            "assigned_partitions",
            "Partitions of the command topic assigned to this instance",
            metrics.assigned_partitions.clone(),
        );
        registry.register(
            "consumer_lag",
            "Records of an assigned partition not yet handled (from librdkafka statistics)",
            metrics.consumer_lag.clone(),
        );
        registry.register(
            "producer_queue_depth",
            "Records handed to the producer and not yet acknowledged by Kafka",
            metrics.producer_queue_depth.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Database connections of the pool, by state",
            metrics.db_pool_connections.clone(),
        );
        registry.register(
            "db_pool_max_connections",
            "Most connections the pool opens (DB_POOL_SIZE)",
            metrics.db_pool_max.clone(),
        );
        registry.register(
            "dependency_up",
            "1 when the latest readiness check of a dependency passed (HTTP_PORT set)",
            metrics.dependency_up.clone(),
        );
        let build_info: Family<VersionLabel, Gauge> = Family::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The handler's version", build_info);
        Metrics {
            registry,
            ..metrics
        }
    }

    pub fn command_answered(&self, command: CommandTopic, outcome: Outcome) {
        self.commands
            .get_or_create(&CommandLabels {
                command: command_label(command),
                outcome: match outcome {
                    Outcome::Confirmed => "confirmed",
                    Outcome::Failed => "failed",
                },
            })
            .inc();
    }

    pub fn dead_lettered(&self, topic: &str) {
        self.dead_letters
            .get_or_create(&TopicLabel {
                topic: topic.to_string(),
            })
            .inc();
    }

    pub fn processed(&self, command: CommandTopic, records: usize, elapsed: Duration) {
        let histogram = self.processing_seconds.get_or_create(&CommandTypeLabel {
            command: command_label(command),
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

    /// Takes the lag of each partition this consumer fetches from its statistics;
    /// partitions it no longer reports (revoked) lose their gauge.
    pub fn consumer_statistics(&self, statistics: &Statistics) {
        let mut current = BTreeSet::new();
        for (topic, topic_statistics) in &statistics.topics {
            for (partition, partition_statistics) in &topic_statistics.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a negative lag
                // means not known yet (no offset or high watermark).
                // The lag behind the offsets this instance stored, or behind the committed
                // ones before it stored any (just after an assignment).
                let lag = if partition_statistics.consumer_lag_stored >= 0 {
                    partition_statistics.consumer_lag_stored
                } else {
                    partition_statistics.consumer_lag
                };
                if *partition < 0 || lag < 0 {
                    continue;
                }
                self.consumer_lag
                    .get_or_create(&PartitionLabels {
                        topic: topic.clone(),
                        partition: *partition,
                    })
                    .set(lag);
                current.insert((topic.clone(), *partition));
            }
        }
        let mut reported = self
            .lag_reported
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let topics: BTreeSet<&String> = statistics.topics.keys().collect();
        for (topic, partition) in reported.iter() {
            if topics.contains(topic) && !current.contains(&(topic.clone(), *partition)) {
                self.consumer_lag.remove(&PartitionLabels {
                    topic: topic.clone(),
                    partition: *partition,
                });
            }
        }
        reported.retain(|(topic, _)| !topics.contains(topic));
        reported.extend(current);
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
        metrics.command_answered(CommandTopic::MoneyTransfer, Outcome::Failed);
        metrics.dead_lettered("confirm_money_transfer");
        metrics.processed(CommandTopic::MoneyTransfer, 3, Duration::from_millis(3));
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
            r#"command_handler_dead_letters_total{topic="confirm_money_transfer"} 1"#,
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
