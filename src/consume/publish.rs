//! Stage 3, hand over and acknowledge: a batch's records go to the producer thread over
//! `mpsc` ([`CommandLoop::hand_over`]), and while Kafka acknowledges them the loop
//! applies the next batch; then it waits for the acknowledgement of every record,
//! publishing again what was not ([`CommandLoop::complete`]), and stores the offsets.

use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use log::warn;
use uuid::Uuid;

use super::CommandLoop;
use super::batch::{Applied, Batch};
use super::kinds::CommandKind;
use super::retry::{Attempt, Hold, Interrupted, LoopError};
use crate::ops::metrics::BatchTally;
use crate::produce::{Outbound, PublishError, PublishRequest};

/// How long a loop still waits for an acknowledgement after shutdown was asked (the
/// broker may be down); then the batch is left unstored and redelivered on restart.
const ACKNOWLEDGEMENT_GRACE: Duration = Duration::from_secs(15);

/// An acknowledgement slower than this is Kafka retrying a send: the consumer is kept
/// in its group meanwhile.
const HOLD_AFTER: Duration = Duration::from_secs(1);

type Acknowledgement = mpsc::Receiver<Result<(), PublishError>>;

/// A batch handed to the producer, its acknowledgement still to come.
pub(super) struct InFlight<'c> {
    pub batch: Batch<'c>,
    records: Arc<Vec<Outbound>>,
    acknowledgement: Acknowledgement,
    with_events: Vec<Uuid>,
    tally: BatchTally,
    /// An earlier batch was sent again after this one was handed over: this one is sent
    /// again in full behind it, so that no partition's records change order.
    send_again: bool,
}

impl<K: CommandKind> CommandLoop<K> {
    /// Stage 3a: hands an applied batch's records to the producer thread, which sends
    /// them behind those of the batch in flight.
    pub(super) fn hand_over<'c>(
        &self,
        batch: Batch<'c>,
        applied: Applied,
    ) -> Result<InFlight<'c>, Interrupted> {
        let records = Arc::new(applied.outbound);
        let acknowledgement = self.send(&records).map_err(Interrupted::Fatal)?;
        Ok(InFlight {
            batch,
            records,
            acknowledgement,
            with_events: applied.with_events,
            tally: applied.tally,
            send_again: false,
        })
    }

    /// Stage 3b and 4: waits until Kafka acknowledged every record of `in_flight`,
    /// publishing again from the first record it did not acknowledge, in order; then
    /// counts the batch and stores its offsets. When anything was sent again, `next`
    /// (handed over meanwhile) is marked to be sent again in full behind it.
    pub(super) fn complete(
        &self,
        in_flight: InFlight<'_>,
        next: Option<&mut InFlight<'_>>,
    ) -> Result<(), Interrupted> {
        let InFlight {
            batch,
            mut records,
            acknowledgement,
            with_events,
            tally,
            send_again,
        } = in_flight;
        let mut pending = Some(acknowledgement);
        if send_again {
            // Whatever became of the first send, the records go again behind the batch
            // that was sent again before them.
            let first = pending
                .take()
                .and_then(|a| self.wait_for_acknowledgement(&batch, &a));
            if let Some(Err(PublishError::Fatal(why))) = first {
                return Err(Interrupted::Fatal(LoopError::PublishFatal(why)));
            }
        }
        let mut sent_again = send_again;
        let what = || format!("publishing answers of {}", batch.describe());
        self.retries(&batch).run(what, || {
            let acknowledgement = match pending.take() {
                Some(acknowledgement) => acknowledgement,
                None => {
                    sent_again = true;
                    self.send(&records).map_err(Attempt::Fatal)?
                }
            };
            match self.wait_for_acknowledgement(&batch, &acknowledgement) {
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
                    records = Arc::new(resend_from_first(&records, &unacknowledged, &too_large));
                    Err(Attempt::Transient(format!(
                        "{} records not acknowledged: {why}",
                        unacknowledged.len()
                    )))
                }
            }
        })?;
        if sent_again && let Some(next) = next {
            next.send_again = true;
        }
        self.metrics.batch_done(
            K::TOPIC,
            self.topic(),
            tally,
            batch.len(),
            batch.polled_at.elapsed(),
        );
        self.acknowledged_events.borrow_mut().extend(with_events);
        self.store_offsets(&batch);
        Ok(())
    }

    /// One request to the producer thread.
    fn send(&self, records: &Arc<Vec<Outbound>>) -> Result<Acknowledgement, LoopError> {
        let (done, acknowledgement) = mpsc::sync_channel(1);
        let request = PublishRequest {
            records: Arc::clone(records),
            done,
        };
        self.publish
            .send(request)
            .map_err(|_| LoopError::ProducerGone)?;
        Ok(acknowledgement)
    }

    /// Waits for a batch's acknowledgement, beating the heartbeat. After shutdown is
    /// requested it waits [`ACKNOWLEDGEMENT_GRACE`] more and then gives up (None): the
    /// batch's offsets are not stored, so it is redelivered on restart.
    ///
    /// librdkafka retries a send until `message.timeout.ms` (5 minutes), as long as the
    /// default `max.poll.interval.ms`: a wait longer than [`HOLD_AFTER`] keeps the
    /// consumer in its group as a retry does ([`Hold`]), and shows the batch's
    /// partitions as retrying, so that a long wait is seen and sets off no rebalance.
    fn wait_for_acknowledgement(
        &self,
        batch: &Batch<'_>,
        acknowledged: &Acknowledgement,
    ) -> Option<Result<(), PublishError>> {
        let retries = self.retries(batch);
        let waiting_since = Instant::now();
        let mut hold: Option<Hold> = None;
        let outcome = self.await_acknowledgement(acknowledged, || {
            if hold.is_none() && waiting_since.elapsed() >= HOLD_AFTER {
                hold = Some(retries.hold("waiting for Kafka to acknowledge the answers"));
            }
            if let Some(hold) = &mut hold {
                hold.poll(&self.consumer, Duration::ZERO);
            }
        });
        if let Some(hold) = hold {
            retries.release(hold);
        }
        outcome
    }

    /// The waiting itself; `meanwhile` runs between slices of it.
    fn await_acknowledgement(
        &self,
        acknowledged: &Acknowledgement,
        mut meanwhile: impl FnMut(),
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
                    meanwhile();
                }
            }
        }
    }
}

/// What to send again after a partial failure: from the first record Kafka did not
/// acknowledge onward, in the same order (a later record that got through goes again
/// too: duplicates are allowed, reordering a partition is not). Of the dead letters
/// refused for their size, the largest goes without its value: records refused
/// together may have been refused for one of them only, so the others are tried again
/// as they are, and the next round takes the next largest if need be.
fn resend_from_first(
    records: &[Outbound],
    unacknowledged: &[usize],
    too_large: &[usize],
) -> Vec<Outbound> {
    let first = unacknowledged.iter().copied().min().unwrap_or(0);
    let mut again: Vec<Outbound> = records[first..].to_vec();
    let largest_dead_letter = too_large
        .iter()
        .copied()
        .filter_map(|position| Some((position, records[position].dead_letter_size()?)))
        .max_by_key(|(_, size)| *size);
    if let Some((position, _)) = largest_dead_letter
        && let Some(stub) = records[position].without_value()
    {
        warn!(
            "a dead letter is larger than {} accepts; sending it without its value",
            records[position].topic
        );
        again[position - first] = stub;
    }
    for &position in too_large {
        if records[position].dead_letter_size().is_none() {
            warn!(
                "an answer is larger than {} or the brokers accept \
                 (max.message.bytes, message.max.bytes); retrying until it is raised",
                records[position].topic
            );
        }
    }
    again
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    use super::*;

    fn dead_letter(offset: i64, size: usize) -> Outbound {
        let record = OwnedMessage::new(
            Some(vec![0xab; size]),
            Some(b"key".to_vec()),
            "commands".into(),
            Timestamp::NotAvailable,
            0,
            offset,
            None,
        );
        Outbound::dead_letter(
            &Arc::from("dead-letters"),
            usize::MAX,
            &record,
            "not a command",
        )
    }

    #[test]
    fn a_resend_starts_at_the_first_unacknowledged_and_strips_only_the_largest_refused_dead_letter()
    {
        let records = [
            dead_letter(0, 5),
            dead_letter(1, 10),
            dead_letter(2, 65_536),
            dead_letter(3, 7),
        ];
        // Refused together for the size of one of them; the first was acknowledged.
        let again = resend_from_first(&records, &[1, 2, 3], &[1, 2]);
        let sizes: Vec<Option<usize>> = again.iter().map(Outbound::dead_letter_size).collect();
        assert_eq!(sizes, [Some(10), None, Some(7)]);
    }
}
