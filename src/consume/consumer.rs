//! The command consumers: their settings, and the context whose callbacks only record
//! what happened (the rebalance callback raises a flag that the loop reads).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use log::{info, warn};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext};

use crate::config::{ClientScope, CommandTopic, Config};
use crate::kafka::{client_config, log_librdkafka, pass_through};
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
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_librdkafka(level, facility, message);
    }

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
            Rebalance::Assign(partitions) => {
                info!("assigned {}", describe_partitions(&self.topic, partitions))
            }
            Rebalance::Revoke(partitions) => {
                info!("revoked {}", describe_partitions(&self.topic, partitions))
            }
            Rebalance::Error(error) => warn!("rebalance failed: {error}"),
        }
        self.rebalanced.store(true, Ordering::Release);
    }
}

fn describe_partitions(topic: &str, list: &rdkafka::TopicPartitionList) -> String {
    let parts: Vec<String> = list
        .elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect();
    if parts.is_empty() {
        // An incremental (cooperative) rebalance that moved nothing of this consumer's.
        format!("no partitions of {topic}")
    } else {
        parts.join(", ")
    }
}

pub type CommandConsumer = BaseConsumer<ConsumerEvents>;

/// `RDKAFKA_CONSUMER_GROUP_PROTOCOL=consumer` (or `RDKAFKA_GROUP_PROTOCOL`): KIP-848.
fn next_generation_protocol(config: &Config) -> bool {
    config.kafka_properties.iter().any(|property| {
        property.scope != ClientScope::Producer
            && property.name == "group.protocol"
            && property.value.expose().eq_ignore_ascii_case("consumer")
    })
}

/// A consumer of one command topic. Offsets are stored by the loop only once the
/// answers of a record are acknowledged (`enable.auto.offset.store=false`); stored
/// offsets are committed in the background and on shutdown.
pub fn command_consumer(
    config: &Config,
    kind: CommandTopic,
    metrics: Arc<Metrics>,
) -> KafkaResult<CommandConsumer> {
    let topic = config.topics.commands(kind);
    let consumer: CommandConsumer =
        consumer_settings(config, kind).create_with_context(ConsumerEvents {
            topic: topic.to_string(),
            rebalanced: AtomicBool::new(false),
            assignment: Mutex::new(None),
            metrics,
        })?;
    consumer.subscribe(&[topic.as_str()])?;
    Ok(consumer)
}

/// The settings of the consumer of one kind of command.
fn consumer_settings(config: &Config, kind: CommandTopic) -> ClientConfig {
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
            "fetch.error.backoff.ms",
            tuning.fetch_error_backoff_ms.to_string(),
        )
        .set(
            "coordinator.query.interval.ms",
            tuning.coordinator_query_interval_ms.to_string(),
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
    if let Some(instance_id) = config.membership.instance_id(kind) {
        settings.set("group.instance.id", instance_id);
    }
    // The classic protocol's settings; the next-generation protocol (KIP-848) refuses
    // them, its brokers decide. `session.timeout.ms` stays librdkafka's 45 s: how long
    // a static member may be away without its partitions moving, and how long the
    // brokers may be out of reach before librdkafka rejoins, which fences a static
    // member's own requests still in flight (the loop then stops; see `consumer_fatal`).
    if !next_generation_protocol(config) {
        settings
            .set("partition.assignment.strategy", tuning.assignment_strategy)
            .set(
                "heartbeat.interval.ms",
                tuning.heartbeat_interval_ms.to_string(),
            );
    }
    pass_through(&mut settings, config, ClientScope::Consumers);
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Config {
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_vars(vars).expect("a valid configuration")
    }

    #[test]
    fn each_consumer_is_a_static_member_of_its_own_name_on_the_classic_protocol() {
        let config = config(&[("KAFKA_GROUP_INSTANCE_ID", "bank-2")]);
        let settings = consumer_settings(&config, CommandTopic::MoneyTransfer);
        assert_eq!(
            settings.get("group.instance.id"),
            Some("bank-2-money_transfer")
        );
        let other = consumer_settings(&config, CommandTopic::AccountCreation);
        assert_eq!(
            other.get("group.instance.id"),
            Some("bank-2-account_creation")
        );
        assert_eq!(settings.get("group.id"), Some("command-handler"));
        assert_eq!(
            settings.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(
            settings.get("session.timeout.ms"),
            None,
            "librdkafka's 45 s"
        );
        assert_eq!(settings.get("heartbeat.interval.ms"), Some("1000"));
    }

    #[test]
    fn dynamic_membership_sets_no_instance_id() {
        let config = config(&[("KAFKA_GROUP_INSTANCE_ID", "none")]);
        let settings = consumer_settings(&config, CommandTopic::MoneyTransfer);
        assert_eq!(settings.get("group.instance.id"), None);
    }

    #[test]
    fn the_next_generation_protocol_gets_none_of_the_classic_settings() {
        let config = config(&[("RDKAFKA_CONSUMER_GROUP_PROTOCOL", "consumer")]);
        let settings = consumer_settings(&config, CommandTopic::MoneyTransfer);
        assert_eq!(settings.get("group.protocol"), Some("consumer"));
        for classic in [
            "partition.assignment.strategy",
            "session.timeout.ms",
            "heartbeat.interval.ms",
        ] {
            assert_eq!(settings.get(classic), None, "{classic}");
        }
    }

    #[test]
    fn a_pass_through_setting_wins_over_the_handlers_default() {
        let config = config(&[("RDKAFKA_CONSUMER_SESSION_TIMEOUT_MS", "45000")]);
        let settings = consumer_settings(&config, CommandTopic::MoneyTransfer);
        assert_eq!(settings.get("session.timeout.ms"), Some("45000"));
    }
}
