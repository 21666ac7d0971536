//! The producer side: the one producer thread, the Kafka producer it drives, and the
//! tracking of each published batch until Kafka acknowledged every record of it.
//!
//! A consumer loop hands a batch's answers, events and dead letters over `mpsc` as one
//! [`PublishRequest`]; this thread encodes them (all before sending any, so a registry
//! failure sends nothing), sends them in order, and [`BatchDelivery`] reports the
//! batch's outcome straight back to the loop, which stores offsets only then.

pub(crate) mod delivery;
pub(crate) mod outbound;

use std::borrow::Cow;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use log::{error, warn};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

pub(crate) use self::delivery::{
    Acknowledged, BatchDelivery, DeliveryReports, PublishError, PublishRequest,
};
pub(crate) use self::outbound::{Destinations, Outbound, OutboundBody};
use crate::config::{ClientScope, Config};
use crate::kafka::{client_config, pass_through};
use crate::wire::AnswerEncoder;

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
    // Dead letters go as they came, borrowed.
    let mut payloads: Vec<Option<Cow<'_, [u8]>>> = Vec::with_capacity(request.records.len());
    for outbound in request.records.iter() {
        match &outbound.body {
            OutboundBody::Record(record) => match encoder.encode(&outbound.topic, record) {
                Ok(bytes) => payloads.push(Some(Cow::Owned(bytes))),
                Err(error) => {
                    // Nothing was sent: all of the batch is still to publish.
                    let unacknowledged = (0..request.records.len()).collect();
                    let why = error.to_string();
                    let _ = request.done.send(Err(PublishError::Retry {
                        unacknowledged,
                        too_large: Vec::new(),
                        why,
                    }));
                    return;
                }
            },
            OutboundBody::DeadLetter { value, .. } => {
                payloads.push(value.as_deref().map(Cow::Borrowed))
            }
        }
    }
    if request.records.is_empty() {
        let _ = request.done.send(Ok(Acknowledged::now()));
        return;
    }
    let batch = BatchDelivery::new(request.records.len(), request.done);
    for (position, (outbound, payload)) in request.records.iter().zip(payloads).enumerate() {
        let mut record: BaseRecord<'_, [u8], [u8], _> =
            BaseRecord::with_opaque_to(&outbound.topic, Box::new((Arc::clone(&batch), position)));
        if let Some(key) = &outbound.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &payload {
            record = record.payload(payload.as_ref());
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
                    batch.settle(position, returned.topic, Err(error));
                    break;
                }
            }
        }
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
