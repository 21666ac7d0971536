//! The producer side: the one producer thread, the Kafka producer it drives, and the
//! tracking of each published batch until Kafka acknowledged every record of it.
//!
//! A consumer loop hands a batch's answers, events and dead letters over `mpsc` as one
//! [`PublishRequest`]; this thread encodes them (all before sending any, so a registry
//! failure sends nothing), sends them in order, and [`BatchDelivery`] reports the
//! batch's outcome straight back to the loop, which stores offsets only then.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use log::{error, warn};
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};

use crate::config::{ClientScope, Config};
use crate::kafka::{client_config, pass_through};
use crate::records::{AnswerEncoder, OutputRecord};

/// A record for the producer thread to publish.
#[derive(Clone, Debug)]
pub struct Outbound {
    /// Shared: the same few topic names go on every record.
    pub topic: Arc<str>,
    /// None only for a dead letter of a record that had no key.
    pub key: Option<Vec<u8>>,
    pub body: OutboundBody,
}

#[derive(Clone, Debug)]
pub enum OutboundBody {
    /// An answer or event, encoded by the producer thread.
    Record(OutputRecord),
    /// A record that could not be handled, published as it came with where it came from.
    DeadLetter {
        value: Option<Vec<u8>>,
        headers: OwnedHeaders,
    },
}

pub struct PublishRequest {
    /// Shared with the consumer thread, which sends the same records again on a retry.
    pub records: Arc<Vec<Outbound>>,
    pub done: mpsc::SyncSender<Result<(), PublishError>>,
}

/// The producer thread: encodes and sends every request; Kafka's acknowledgements are
/// reported straight to the requesting consumer thread by [`BatchDelivery`].
pub fn run_producer(
    producer: Arc<AnswerProducer>,
    encoder: AnswerEncoder,
    requests: mpsc::Receiver<PublishRequest>,
) {
    for request in requests {
        if let Some(fatal) = producer.client().fatal_error() {
            let _ = request
                .done
                .send(Err(PublishError::Fatal(format!("{fatal:?}"))));
            break;
        }
        publish(&producer, &encoder, request);
    }
    // Every sender is gone: the consumers have stopped. Deliver what is queued.
    if let Err(error) = producer.flush(Duration::from_secs(30)) {
        error!("producer flush at shutdown failed: {error}");
    }
}

fn publish(producer: &AnswerProducer, encoder: &AnswerEncoder, request: PublishRequest) {
    // Encode everything before sending anything, so a registry failure sends nothing.
    let mut payloads = Vec::with_capacity(request.records.len());
    for outbound in request.records.iter() {
        match &outbound.body {
            OutboundBody::Record(record) => match encoder.encode(&outbound.topic, record) {
                Ok(bytes) => payloads.push(Some(bytes)),
                Err(error) => {
                    // Nothing was sent: all of the batch is still to publish.
                    let unacknowledged = (0..request.records.len()).collect();
                    let why = error.to_string();
                    let _ = request.done.send(Err(PublishError::Retry {
                        unacknowledged,
                        why,
                    }));
                    return;
                }
            },
            OutboundBody::DeadLetter { value, .. } => payloads.push(value.clone()),
        }
    }
    if request.records.is_empty() {
        let _ = request.done.send(Ok(()));
        return;
    }
    let batch = BatchDelivery::new(request.records.len(), request.done);
    for (position, (outbound, payload)) in request.records.iter().zip(payloads).enumerate() {
        let mut record: BaseRecord<'_, Vec<u8>, Vec<u8>, _> =
            BaseRecord::with_opaque_to(&outbound.topic, Box::new((Arc::clone(&batch), position)));
        if let Some(key) = &outbound.key {
            record = record.key(key);
        }
        if let Some(payload) = &payload {
            record = record.payload(payload);
        }
        if let OutboundBody::DeadLetter { headers, .. } = &outbound.body {
            record = record.headers(headers.clone());
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    // The background thread drains the queue; give it a moment.
                    record = returned;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((error, returned)) => {
                    warn!("could not send to {}: {error}", returned.topic);
                    batch.settle(position, Err(error));
                    break;
                }
            }
        }
    }
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
