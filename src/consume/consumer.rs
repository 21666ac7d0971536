//! The command consumers: their settings, and the context whose callbacks only record
//! what happened (the rebalance callback raises a flag that the loop reads).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use log::{info, warn};
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;

use crate::config::{ClientScope, Config};
use crate::kafka::{client_config, pass_through};
use crate::ops::metrics::Metrics;

/// What a command consumer's callbacks record. The rebalance callback, which runs inside
/// `poll`, only logs and raises `rebalanced`; the loop then reads the new assignment,
/// drops what it holds of partitions it no longer owns, and notes the assignment here
/// for readiness and metrics ([`ConsumerEvents::note_assignment`]).
pub struct ConsumerEvents {
    topic: String,
    pub rebalanced: AtomicBool,
    /// The partitions assigned now; None until the group first answered (an instance
    /// beyond the partition count gets an empty assignment, and is ready all the same).
    assignment: Mutex<Option<Vec<i32>>>,
    metrics: Arc<Metrics>,
}

impl ConsumerEvents {
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Keeps the assignment the loop read after a rebalance, for readiness and metrics.
    pub fn note_assignment(&self, assigned: &rdkafka::TopicPartitionList) {
        let partitions: Vec<i32> = assigned
            .elements_for_topic(&self.topic)
            .iter()
            .map(|element| element.partition())
            .collect();
        *self
            .assignment
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(partitions);
    }

    pub fn assignment(&self) -> Option<Vec<i32>> {
        self.assignment
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl ClientContext for ConsumerEvents {
    fn error(&self, error: KafkaError, reason: &str) {
        warn!("kafka consumer of {}: {error}: {reason}", self.topic);
    }

    fn stats(&self, statistics: Statistics) {
        let assigned = self.assignment().unwrap_or_default();
        self.metrics
            .consumer_statistics(&statistics, &self.topic, &assigned);
    }
}

impl ConsumerContext for ConsumerEvents {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => info!("assigned {}", describe_partitions(partitions)),
            Rebalance::Revoke(partitions) => info!("revoked {}", describe_partitions(partitions)),
            Rebalance::Error(error) => warn!("rebalance failed: {error}"),
        }
        self.rebalanced.store(true, Ordering::Release);
    }
}

fn describe_partitions(list: &rdkafka::TopicPartitionList) -> String {
    let parts: Vec<String> = list
        .elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect();
    if parts.is_empty() {
        "no partitions".to_string()
    } else {
        parts.join(", ")
    }
}

pub type CommandConsumer = BaseConsumer<ConsumerEvents>;

/// A consumer of one command topic. Offsets are stored by the loop only once the
/// answers of a record are acknowledged (`enable.auto.offset.store=false`); stored
/// offsets are committed in the background and on shutdown.
pub fn command_consumer(
    config: &Config,
    topic: &str,
    metrics: Arc<Metrics>,
) -> KafkaResult<CommandConsumer> {
    let mut settings = client_config(config);
    settings
        .set("group.id", &config.client_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    let tuning = &config.consumer;
    settings
        .set(
            "auto.commit.interval.ms",
            tuning.auto_commit_interval_ms.to_string(),
        )
        .set(
            "queued.max.messages.kbytes",
            tuning.queued_max_kbytes.to_string(),
        )
        .set(
            "queued.min.messages",
            tuning.queued_min_messages.to_string(),
        )
        .set(
            "fetch.queue.backoff.ms",
            tuning.fetch_queue_backoff_ms.to_string(),
        )
        .set(
            "statistics.interval.ms",
            // The statistics feed only the lag metric: without HTTP nobody reads it,
            // and librdkafka then keeps no latency histograms (about 0.5 MiB).
            match config.http_address {
                Some(_) => tuning.statistics_interval_ms,
                None => 0,
            }
            .to_string(),
        );
    pass_through(&mut settings, config, ClientScope::Consumers);
    let consumer: CommandConsumer = settings.create_with_context(ConsumerEvents {
        topic: topic.to_string(),
        rebalanced: AtomicBool::new(false),
        assignment: Mutex::new(None),
        metrics,
    })?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}
