//! Kafka clients: the settings they share (brokers, TLS, SASL, `RDKAFKA_*`), and the
//! command consumers with the context that watches rebalances. The producer is in
//! [`crate::produce`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use log::{info, warn};
use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;

use crate::config::{ClientScope, Config, KafkaTls};
use crate::metrics::Metrics;

/// Sets the `RDKAFKA_*` properties of this scope, after the handler's own settings so
/// that they win.
pub(crate) fn pass_through(client: &mut ClientConfig, config: &Config, scope: ClientScope) {
    for property in config.kafka_properties.iter().filter(|p| p.scope == scope) {
        client.set(&property.name, property.value.expose());
    }
}

/// Settings shared by the consumers and the producer: brokers, client id, TLS and SASL.
pub fn client_config(config: &Config) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.kafka_brokers)
        .set("client.id", &config.client_id)
        .set_log_level(RDKafkaLogLevel::Warning);
    // SASL always goes over TLS: passwords and balances never cross the network in clear.
    let protocol = match (&config.sasl, &config.tls) {
        (Some(_), _) => "sasl_ssl",
        (None, Some(_)) => "ssl",
        (None, None) => "plaintext",
    };
    client.set("security.protocol", protocol);
    if let Some(KafkaTls::JvmStores(stores)) = &config.tls {
        // As the JVM clients of the Open Bank stack: the stores' one password, and no
        // hostname check (its brokers' certificates name no host to check against).
        client
            .set("ssl.keystore.location", stores.keystore.to_string_lossy())
            .set("ssl.keystore.password", stores.password.expose())
            .set("ssl.ca.pem", &stores.trusted_pem)
            .set("ssl.endpoint.identification.algorithm", "none");
    }
    if let Some(KafkaTls::Pem(tls)) = &config.tls {
        if let Some(ca) = &tls.ca_location {
            client.set("ssl.ca.location", ca.to_string_lossy());
        }
        if let Some(certificate) = &tls.client_certificate {
            client
                .set(
                    "ssl.certificate.location",
                    certificate.certificate_location.to_string_lossy(),
                )
                .set(
                    "ssl.key.location",
                    certificate.key_location.to_string_lossy(),
                );
            if !certificate.key_password.expose().is_empty() {
                client.set("ssl.key.password", certificate.key_password.expose());
            }
        }
    }
    if let Some(login) = &config.sasl {
        client
            .set("sasl.mechanism", login.mechanism.name())
            .set("sasl.username", &login.username)
            .set("sasl.password", login.password.expose());
    }
    pass_through(&mut client, config, ClientScope::All);
    client
}

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
        self.metrics
            .partitions_assigned(&self.topic, partitions.len());
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
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // librdkafka prefetches up to 64 MB / 100k records per partition by default; a
        // few batches ahead is all a loop that waits on the database can use, and the
        // memory stays bounded when the handler falls behind (see dev/bench). With a
        // small queue the fetch backoff must be short too: at its default (1 s) every
        // full queue stalls the partition for a second.
        .set("queued.max.messages.kbytes", "4096")
        .set("queued.min.messages", "1000")
        .set("fetch.queue.backoff.ms", "10")
        // Statistics feed the consumer lag metric.
        .set("statistics.interval.ms", "5000");
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
