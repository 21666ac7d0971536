//! Stage 3, hand over and acknowledge: the batch's records go to the producer thread
//! over `mpsc`, and the loop waits until Kafka acknowledged every one, publishing again
//! what was not.

use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use log::warn;

use super::CommandLoop;
use super::batch::Batch;
use super::kinds::CommandKind;
use super::retry::{Attempt, Interrupted, LoopError};
use crate::produce::{Outbound, PublishError, PublishRequest};

/// How long a loop still waits for an acknowledgement after shutdown was asked (the
/// broker may be down); then the batch is left unstored and redelivered on restart.
const ACKNOWLEDGEMENT_GRACE: Duration = Duration::from_secs(15);

impl<K: CommandKind> CommandLoop<K> {
    /// Stage 3: hands the records to the producer thread and waits for Kafka's
    /// acknowledgement of every one, publishing again what was not acknowledged.
    pub(super) fn publish(
        &self,
        batch: &Batch<'_>,
        outbound: Vec<Outbound>,
    ) -> Result<(), Interrupted> {
        let what = || format!("publishing answers of {}", batch.describe());
        let mut records = Arc::new(outbound);
        self.retries(batch).run(what, || {
            let (done, acknowledged) = mpsc::sync_channel(1);
            let request = PublishRequest {
                records: Arc::clone(&records),
                done,
            };
            if self.publish.send(request).is_err() {
                return Err(Attempt::Fatal(LoopError::ProducerGone));
            }
            match self.wait_for_acknowledgement(&acknowledged) {
                None => Err(Attempt::Shutdown),
                Some(Ok(())) => Ok(()),
                Some(Err(PublishError::Fatal(why))) => {
                    Err(Attempt::Fatal(LoopError::PublishFatal(why)))
                }
                Some(Err(PublishError::Retry {
                    unacknowledged,
                    too_large,
                    why,
                })) => {
                    // Send again from the first record Kafka did not acknowledge, in the
                    // same order: a later record that got through is sent again too
                    // (duplicates are allowed, reordering a partition is not).
                    let first = unacknowledged.iter().copied().min().unwrap_or(0);
                    let mut again: Vec<Outbound> = records[first..].to_vec();
                    for position in too_large {
                        match records[position].without_value() {
                            Some(stub) => {
                                warn!(
                                    "a dead letter is larger than {} accepts; sending it without its value",
                                    records[position].topic
                                );
                                again[position - first] = stub;
                            }
                            None => warn!(
                                "an answer is larger than {} or the brokers accept \
                                 (max.message.bytes, message.max.bytes); retrying until it is raised",
                                records[position].topic
                            ),
                        }
                    }
                    records = Arc::new(again);
                    Err(Attempt::Transient(format!(
                        "{} records not acknowledged: {why}",
                        unacknowledged.len()
                    )))
                }
            }
        })
    }

    /// Waits for a batch's acknowledgement, beating the heartbeat. After shutdown is
    /// requested it waits [`ACKNOWLEDGEMENT_GRACE`] more and then gives up (None): the
    /// batch's offsets are not stored, so it is redelivered on restart.
    fn wait_for_acknowledgement(
        &self,
        acknowledged: &mpsc::Receiver<Result<(), PublishError>>,
    ) -> Option<Result<(), PublishError>> {
        let mut shutdown_seen: Option<Instant> = None;
        loop {
            self.heartbeat.beat();
            match acknowledged.recv_timeout(Duration::from_millis(200)) {
                Ok(result) => return Some(result),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Some(Err(PublishError::Fatal(
                        "the producer thread has stopped".into(),
                    )));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.shutdown.load(Ordering::Acquire) {
                        let since = *shutdown_seen.get_or_insert_with(Instant::now);
                        if since.elapsed() > ACKNOWLEDGEMENT_GRACE {
                            warn!(
                                "shutting down with a batch of {} unacknowledged; it will be redelivered",
                                self.topic()
                            );
                            return None;
                        }
                    }
                }
            }
        }
    }
}
