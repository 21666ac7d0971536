//! Kafka clients: their configuration, the consumer context that watches rebalances,
//! and the producer context that reports deliveries back to the batch that sent them.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use log::{info, warn};
use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;

use crate::config::{ClientScope, Config, KafkaTls};
use crate::metrics::Metrics;

/// Sets the `RDKAFKA_*` properties of this scope, after the handler's own settings so
/// that they win.
fn pass_through(client: &mut ClientConfig, config: &Config, scope: ClientScope) {
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
/// `poll`, only raises `rebalanced` (the loop then drops what it holds of partitions it no
/// longer owns) and notes the new assignment for readiness and metrics.
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
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => info!("assigned {}", describe_partitions(partitions)),
            Rebalance::Revoke(partitions) => info!("revoked {}", describe_partitions(partitions)),
            Rebalance::Error(error) => warn!("rebalance failed: {error}"),
        }
        if let Ok(assigned) = consumer.assignment() {
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

/// What went wrong publishing a batch, and so what the loop does next.
#[derive(Debug)]
pub enum PublishError {
    /// Registry or broker trouble: publish again the records at these positions of the
    /// batch (those Kafka did not acknowledge).
    Retry {
        unacknowledged: Vec<usize>,
        why: String,
    },
    /// The producer cannot go on (fatal idempotence error, producer thread gone):
    /// stop the process; the batch is redelivered after the restart.
    Fatal(String),
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::Retry {
                unacknowledged,
                why,
            } => {
                write!(
                    f,
                    "{} records not acknowledged, will retry: {why}",
                    unacknowledged.len()
                )
            }
            PublishError::Fatal(why) => write!(f, "publishing failed for good: {why}"),
        }
    }
}

/// Tracks the records of one published batch until every one is acknowledged.
pub struct BatchDelivery {
    outstanding: AtomicUsize,
    failures: Mutex<Vec<(usize, KafkaError)>>,
    done: mpsc::SyncSender<Result<(), PublishError>>,
}

impl BatchDelivery {
    pub fn new(records: usize, done: mpsc::SyncSender<Result<(), PublishError>>) -> Arc<Self> {
        Arc::new(BatchDelivery {
            outstanding: AtomicUsize::new(records),
            failures: Mutex::new(Vec::new()),
            done,
        })
    }

    /// Counts the record at `position` in the batch as settled (acknowledged, or failed
    /// after librdkafka's own retries); the last one reports the batch's outcome.
    pub fn settle(&self, position: usize, result: Result<(), KafkaError>) {
        if let Err(error) = result {
            self.failures
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push((position, error));
        }
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut failures =
                std::mem::take(&mut *self.failures.lock().unwrap_or_else(|p| p.into_inner()));
            failures.sort_by_key(|(position, _)| *position);
            let outcome = match failures.first() {
                None => Ok(()),
                Some((_, error)) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) => {
                    Err(PublishError::Fatal(error.to_string()))
                }
                Some((_, error)) => Err(PublishError::Retry {
                    why: error.to_string(),
                    unacknowledged: failures.iter().map(|(position, _)| *position).collect(),
                }),
            };
            // The batch's owner may have given up waiting (shutdown); nothing to tell then.
            let _ = self.done.send(outcome);
        }
    }
}

/// Sends each delivery report to the batch the record belongs to.
pub struct DeliveryReports;

impl ClientContext for DeliveryReports {
    fn error(&self, error: KafkaError, reason: &str) {
        warn!("kafka producer: {error}: {reason}");
    }
}

impl ProducerContext for DeliveryReports {
    /// The batch a record belongs to, and its position in it.
    type DeliveryOpaque = Box<(Arc<BatchDelivery>, usize)>;

    fn delivery(&self, result: &DeliveryResult<'_>, record: Self::DeliveryOpaque) {
        let (batch, position) = *record;
        batch.settle(
            position,
            match result {
                Ok(_) => Ok(()),
                Err((error, message)) => {
                    warn!(
                        "could not deliver to {}/{}: {error}",
                        message.topic(),
                        message.partition()
                    );
                    Err(error.clone())
                }
            },
        );
    }
}

pub type AnswerProducer = ThreadedProducer<DeliveryReports>;

/// The producer of answers, events and dead letters: acknowledged by all in-sync
/// replicas, idempotent (no duplicates or reordering from its own retries), and
/// partitioning keys as the JVM clients do (murmur2), so a key stays on its partition
/// when this handler replaces the JVM one.
pub fn answer_producer(config: &Config) -> KafkaResult<AnswerProducer> {
    let mut settings = client_config(config);
    settings
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", config.producer_linger_ms.to_string())
        .set("partitioner", "murmur2_random");
    pass_through(&mut settings, config, ClientScope::Producer);
    settings.create_with_context(DeliveryReports)
}
