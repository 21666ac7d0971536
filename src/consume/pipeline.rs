//! Stage 3, hand over and acknowledge: an applied batch's records go to the producer
//! thread over `mpsc` ([`Pipeline::hand_over`]) and wait there, in a queue, for Kafka's
//! acknowledgement while the loop applies the next batch; [`Pipeline::complete_oldest`]
//! then waits for the oldest batch's acknowledgement of every record, publishing again
//! what was not acknowledged, and gives the batch back for its offsets to be stored.
//!
//! Order: batches are handed over and completed in the order they were polled, by one
//! producer (idempotent, so in order per partition). When a batch is sent again, every
//! batch queued behind it is sent again in full behind it, so that no partition's
//! records change order. When one cannot be completed (shutdown, a fatal error), the
//! queue is emptied: no later batch may store offsets past an unacknowledged one.

use std::collections::VecDeque;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use log::warn;

use super::batch::{Applied, Batch};
use super::retry::{Attempt, Hold, Interrupted, LoopContext, LoopError};
use crate::ops::metrics::BatchTally;
use crate::produce::{Acknowledged, Outbound, PublishError, PublishRequest};

/// Where a batch's outcome comes back from the producer thread.
pub(super) type Acknowledgement = mpsc::Receiver<Result<Acknowledged, PublishError>>;

/// Hands records to the producer thread; [`mpsc::Sender`] outside tests.
pub(super) trait Publish {
    fn publish(&self, records: Arc<Vec<Outbound>>) -> Result<Acknowledgement, LoopError>;
}

impl Publish for mpsc::Sender<PublishRequest> {
    fn publish(&self, records: Arc<Vec<Outbound>>) -> Result<Acknowledgement, LoopError> {
        let (done, acknowledgement) = mpsc::sync_channel(1);
        self.send(PublishRequest { records, done })
            .map_err(|_| LoopError::ProducerGone)?;
        Ok(acknowledgement)
    }
}

/// A batch handed to the producer, its acknowledgement still to come.
struct InFlight {
    batch: Batch,
    /// Shared with the producer thread; replaced by the part to send again on a retry.
    records: Arc<Vec<Outbound>>,
    /// The first send's outcome, still to come.
    acknowledgement: Acknowledgement,
    tally: BatchTally,
    /// A batch ahead of this one was sent again after this one was handed over: this
    /// one goes again in full behind it.
    send_again: bool,
    handed_over_at: Instant,
}

/// A batch Kafka acknowledged in full: its offsets may be stored now.
pub(super) struct Completed {
    pub batch: Batch,
    pub tally: BatchTally,
    /// From its hand-over to Kafka's last acknowledgement (not to when the loop, busy
    /// with the next batch meanwhile, noticed it).
    pub acknowledged_in: Duration,
}

/// The batches handed to the producer, oldest first.
pub(super) struct Pipeline<P> {
    publisher: P,
    in_flight: VecDeque<InFlight>,
}

impl<P: Publish> Pipeline<P> {
    pub fn new(publisher: P) -> Self {
        Pipeline {
            publisher,
            in_flight: VecDeque::new(),
        }
    }

    /// Batches handed over and not completed yet.
    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// Hands an applied batch's records to the producer thread, which sends them behind
    /// those of the batches already in flight.
    pub fn hand_over(&mut self, batch: Batch, applied: Applied) -> Result<(), LoopError> {
        let records = Arc::new(applied.outbound);
        let acknowledgement = self.publisher.publish(Arc::clone(&records))?;
        self.in_flight.push_back(InFlight {
            batch,
            records,
            acknowledgement,
            tally: applied.tally,
            send_again: false,
            handed_over_at: Instant::now(),
        });
        Ok(())
    }

    /// Waits until Kafka acknowledged every record of the oldest batch, publishing again
    /// from the first record it did not acknowledge, in order. None when nothing is in
    /// flight. On an error the whole queue is dropped, unstored.
    pub fn complete_oldest(
        &mut self,
        context: &LoopContext,
    ) -> Result<Option<Completed>, Interrupted> {
        let Some(oldest) = self.in_flight.pop_front() else {
            return Ok(None);
        };
        match self.acknowledge(oldest, context) {
            Ok((completed, sent_again)) => {
                if sent_again {
                    for behind in &mut self.in_flight {
                        behind.send_again = true;
                    }
                }
                Ok(Some(completed))
            }
            Err(interrupted) => {
                self.in_flight.clear();
                Err(interrupted)
            }
        }
    }

    /// The waiting and sending again of one batch; true with it when anything was sent
    /// again.
    fn acknowledge(
        &self,
        in_flight: InFlight,
        context: &LoopContext,
    ) -> Result<(Completed, bool), Interrupted> {
        let InFlight {
            batch,
            mut records,
            acknowledgement,
            tally,
            send_again,
            handed_over_at,
        } = in_flight;
        let mut pending = Some(acknowledgement);
        if send_again {
            // Whatever became of the first send, the records go again behind the batch
            // that was sent again before them.
            let first = pending
                .take()
                .map(|first| wait_for_acknowledgement(context, &batch, &first));
            match first {
                // Shutdown's grace ran out: no second grace for the sending again.
                Some(None) => return Err(Interrupted::Shutdown),
                Some(Some(Err(PublishError::Fatal(why)))) => {
                    return Err(Interrupted::Fatal(LoopError::PublishFatal(why)));
                }
                _ => {}
            }
        }
        let mut sent_again = send_again;
        let what = || format!("publishing answers of {}", batch.describe());
        let acknowledged = context.retries(&batch).run(what, || {
            let acknowledgement = match pending.take() {
                Some(acknowledgement) => acknowledgement,
                None => {
                    sent_again = true;
                    self.publisher
                        .publish(Arc::clone(&records))
                        .map_err(Attempt::Fatal)?
                }
            };
            match wait_for_acknowledgement(context, &batch, &acknowledgement) {
                None => Err(Attempt::Shutdown),
                Some(Ok(acknowledged)) => Ok(acknowledged),
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
        let completed = Completed {
            batch,
            tally,
            acknowledged_in: acknowledged.at.saturating_duration_since(handed_over_at),
        };
        Ok((completed, sent_again))
    }
}

/// Waits for a batch's acknowledgement, beating the heartbeat. After shutdown is
/// requested it waits [`super::retry::RetryPolicy::acknowledgement_grace`] more and then
/// gives up (None): the batch's offsets are not stored, so it is redelivered on restart.
///
/// librdkafka retries a send until `message.timeout.ms` (5 minutes), as long as the
/// default `max.poll.interval.ms`: a wait longer than `hold_acknowledgement_after`
/// keeps the consumer in its group as a retry does ([`Hold`]), and shows the batch's
/// partitions as retrying, so that a long wait is seen and sets off no rebalance.
fn wait_for_acknowledgement(
    context: &LoopContext,
    batch: &Batch,
    acknowledgement: &Acknowledgement,
) -> Option<Result<Acknowledged, PublishError>> {
    let retries = context.retries(batch);
    let policy = &context.policy;
    let waiting_since = Instant::now();
    let mut shutdown_seen: Option<Instant> = None;
    let mut hold: Option<Hold> = None;
    let outcome = loop {
        context.heartbeat.beat();
        match acknowledgement.recv_timeout(ACKNOWLEDGEMENT_SLICE) {
            Ok(result) => break Some(result),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Some(Err(PublishError::Fatal(
                    "the producer thread has stopped".into(),
                )));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if context.shutdown_requested() {
            let since = *shutdown_seen.get_or_insert_with(Instant::now);
            if since.elapsed() > policy.acknowledgement_grace {
                warn!(
                    "shutting down with a batch of {} unacknowledged; it will be redelivered",
                    context.topic
                );
                break None;
            }
        }
        if hold.is_none() && waiting_since.elapsed() >= policy.hold_acknowledgement_after {
            hold = Some(retries.hold("waiting for Kafka to acknowledge the answers"));
        }
        if let Some(hold) = &mut hold {
            hold.poll(&*context.member, Duration::ZERO);
        }
    };
    if let Some(hold) = hold {
        retries.release(hold);
    }
    outcome
}

/// The longest single wait for an acknowledgement between looks at shutdown.
const ACKNOWLEDGEMENT_SLICE: Duration = Duration::from_millis(200);

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
#[path = "pipeline_tests.rs"]
mod tests;
