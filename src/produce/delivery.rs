//! Delivery reports: [`BatchDelivery`] tracks the records of one published batch until
//! Kafka acknowledged (or refused) every one, and reports the batch's outcome straight
//! back to the consumer thread that is waiting for it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use log::warn;
use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::ProducerContext;

use super::outbound::Outbound;

/// A batch's records for the producer thread, and where to report their outcome.
pub struct PublishRequest {
    /// Shared with the consumer thread, which sends the same records again on a retry.
    pub records: Arc<Vec<Outbound>>,
    pub done: mpsc::SyncSender<Result<Acknowledged, PublishError>>,
}

/// Kafka acknowledged every record of a batch.
#[derive(Clone, Copy, Debug)]
pub struct Acknowledged {
    /// When the last acknowledgement came (the loop may notice it later).
    pub at: Instant,
}

impl Acknowledged {
    pub fn now() -> Self {
        Acknowledged { at: Instant::now() }
    }
}

/// What went wrong publishing a batch, and so what the loop does next.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Registry or broker trouble: publish again from the first record Kafka did not
    /// acknowledge (positions in the batch, in order).
    #[error("{} records not acknowledged, will retry: {why}", unacknowledged.len())]
    Retry {
        unacknowledged: Vec<usize>,
        /// Those refused for their size (larger than the topic or broker accepts).
        too_large: Vec<usize>,
        why: String,
    },
    /// The producer cannot go on (a fatal idempotence error): stop the process; the
    /// batch is redelivered after the restart.
    #[error("publishing failed for good: {0}")]
    Fatal(String),
}

/// Tracks the records of one published batch until every one is acknowledged.
pub struct BatchDelivery {
    outstanding: AtomicUsize,
    failures: Mutex<Vec<(usize, String, KafkaError)>>,
    done: mpsc::SyncSender<Result<Acknowledged, PublishError>>,
}

impl BatchDelivery {
    pub fn new(
        records: usize,
        done: mpsc::SyncSender<Result<Acknowledged, PublishError>>,
    ) -> Arc<Self> {
        Arc::new(BatchDelivery {
            outstanding: AtomicUsize::new(records),
            failures: Mutex::new(Vec::new()),
            done,
        })
    }

    /// Counts the record at `position` in the batch, bound for `topic`, as settled
    /// (acknowledged, or failed after librdkafka's own retries); the last one reports
    /// the batch's outcome.
    pub fn settle(&self, position: usize, topic: &str, result: Result<(), KafkaError>) {
        if let Err(error) = result {
            self.failures
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push((position, topic.to_string(), error));
        }
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut failures =
                std::mem::take(&mut *self.failures.lock().unwrap_or_else(|p| p.into_inner()));
            failures.sort_by_key(|(position, _, _)| *position);
            // The batch's owner may have given up waiting (shutdown); nothing to tell then.
            let _ = self.done.send(outcome(&failures));
        }
    }
}

/// A batch's outcome from its failed records (in batch order).
fn outcome(failures: &[(usize, String, KafkaError)]) -> Result<Acknowledged, PublishError> {
    let Some((_, _, first)) = failures.first() else {
        return Ok(Acknowledged::now());
    };
    if let Some(why) = failures
        .iter()
        .find_map(|(_, topic, error)| fatal(topic, error))
    {
        return Err(PublishError::Fatal(why));
    }
    Err(PublishError::Retry {
        why: first.to_string(),
        unacknowledged: failures.iter().map(|(position, _, _)| *position).collect(),
        too_large: failures
            .iter()
            .filter(|(_, _, error)| {
                error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge)
            })
            .map(|(position, _, _)| *position)
            .collect(),
    })
}

/// Why no retry gets past this error, if none does: the producer's own fatal state
/// (fenced, its idempotence broken), or brokers that do not let this handler write to
/// `topic` (an operator must grant it; until then a restart refuses to start).
fn fatal(topic: &str, error: &KafkaError) -> Option<String> {
    match error.rdkafka_error_code()? {
        RDKafkaErrorCode::Fatal => Some(format!("the producer cannot go on: {error}")),
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed => Some(format!(
            "Kafka does not let this handler write to {topic} ({error}): grant its principal \
             WRITE on the topic"
        )),
        _ => None,
    }
}

/// Sends each delivery report to the batch the record belongs to.
pub struct DeliveryReports;

impl ClientContext for DeliveryReports {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        crate::kafka::log_librdkafka(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!("kafka producer: {error}: {reason}");
    }
}

impl ProducerContext for DeliveryReports {
    /// The batch a record belongs to, and its position in it.
    type DeliveryOpaque = Box<(Arc<BatchDelivery>, usize)>;

    fn delivery(&self, result: &DeliveryResult<'_>, record: Self::DeliveryOpaque) {
        let (batch, position) = *record;
        let (topic, outcome) = match result {
            Ok(message) => (message.topic(), Ok(())),
            Err((error, message)) => {
                warn!(
                    "could not deliver to {}/{}: {error}",
                    message.topic(),
                    message.partition()
                );
                (message.topic(), Err(error.clone()))
            }
        };
        batch.settle(position, topic, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(
        position: usize,
        topic: &str,
        code: RDKafkaErrorCode,
    ) -> (usize, String, KafkaError) {
        (
            position,
            topic.to_string(),
            KafkaError::MessageProduction(code),
        )
    }

    #[test]
    fn a_topic_the_handler_may_not_write_to_stops_it_naming_the_topic() {
        let failures = [
            refused(1, "answers", RDKafkaErrorCode::RequestTimedOut),
            refused(
                2,
                "dead-letters",
                RDKafkaErrorCode::TopicAuthorizationFailed,
            ),
        ];
        match outcome(&failures) {
            Err(PublishError::Fatal(why)) => assert!(why.contains("dead-letters"), "{why}"),
            other => panic!("not fatal: {other:?}"),
        }
    }

    #[test]
    fn other_failures_are_sent_again_from_the_first() {
        let failures = [
            refused(3, "answers", RDKafkaErrorCode::RequestTimedOut),
            refused(5, "dead-letters", RDKafkaErrorCode::MessageSizeTooLarge),
        ];
        match outcome(&failures) {
            Err(PublishError::Retry {
                unacknowledged,
                too_large,
                ..
            }) => {
                assert_eq!(unacknowledged, [3, 5]);
                assert_eq!(too_large, [5]);
            }
            other => panic!("not retried: {other:?}"),
        }
        assert!(outcome(&[]).is_ok());
    }
}
