//! How a stage that did not succeed ends: tried again after a backoff, or the loop
//! stops (for shutdown, or for good with a non-zero exit).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::{info, warn};
use rdkafka::consumer::Consumer;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::batch::Batch;
use super::consumer::CommandConsumer;
use crate::backoff::Backoff;
use crate::ops::heartbeat::Heartbeat;
use crate::ops::metrics::Metrics;

/// Why a consumer loop stopped before shutdown was asked: the process exits non-zero
/// and, restarted, is redelivered the batch in flight.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// The producer cannot go on (a fatal idempotence error, for example).
    #[error("publishing failed for good: {0}")]
    PublishFatal(String),
    #[error("the producer thread has stopped")]
    ProducerGone,
    /// A per-kind handler broke its contract (one answer per command).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a stage returned without its result.
#[derive(Debug)]
pub(crate) enum Interrupted {
    /// Shutdown was asked while the stage waited: leave the batch unstored.
    Shutdown,
    Fatal(LoopError),
}

impl From<LoopError> for Interrupted {
    fn from(error: LoopError) -> Self {
        Interrupted::Fatal(error)
    }
}

/// What one attempt at a stage came to when it did not succeed.
pub(crate) enum Attempt<E> {
    /// Try the same work again after a backoff (an outage, a race between instances).
    Transient(E),
    /// Stop the loop for good.
    Fatal(LoopError),
    /// Shutdown was asked while the attempt waited.
    Shutdown,
}

/// A stage's retries: a backoff from 0.1 s to 10 s, a log line per attempt (errors from
/// the fifth on), and, while waiting, the consumer kept in its group: its partitions
/// are paused and it keeps polling ([`Hold`]), so a long outage does not exceed
/// `max.poll.interval.ms` and set off a rebalance.
pub(crate) struct Retries<'a> {
    pub consumer: &'a CommandConsumer,
    pub shutdown: &'a AtomicBool,
    pub heartbeat: &'a Heartbeat,
    /// Each failed attempt is counted under this topic, and its partitions are reported
    /// stalled until the attempt passes.
    pub metrics: &'a Metrics,
    pub topic: &'a str,
    /// The batch whose partitions a failed attempt reports stalled.
    pub batch: &'a Batch<'a>,
}

impl Retries<'_> {
    /// Runs `attempt` until it succeeds, is fatal, or shutdown is asked; `what` names
    /// the work in log lines (made only when an attempt fails).
    pub fn run<T, E: fmt::Display>(
        &self,
        what: impl Fn() -> String,
        attempt: impl FnMut() -> Result<T, Attempt<E>>,
    ) -> Result<T, Interrupted> {
        let mut hold = None;
        let outcome = self.attempts(what, attempt, &mut hold);
        // A hold exists once an attempt failed: the stall it reported is over too.
        if let Some(hold) = hold {
            self.release(hold);
        }
        outcome
    }

    /// Keeps the consumer in its group while the batch waits ([`Hold`]), and reports
    /// the batch's partitions stalled for `why`.
    pub fn hold(&self, why: &str) -> Hold {
        self.metrics
            .stalls
            .retrying(self.topic, &self.batch.partitions(), why);
        Hold::pause(self.consumer)
    }

    /// Ends a [`Retries::hold`]: the partitions resume and are no longer stalled.
    pub fn release(&self, hold: Hold) {
        hold.release(self.consumer, self.topic);
        self.metrics
            .stalls
            .resolved(self.topic, &self.batch.partitions());
    }

    fn attempts<T, E: fmt::Display>(
        &self,
        what: impl Fn() -> String,
        mut attempt: impl FnMut() -> Result<T, Attempt<E>>,
        hold: &mut Option<Hold>,
    ) -> Result<T, Interrupted> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let error = match attempt() {
                Ok(value) => return Ok(value),
                Err(Attempt::Fatal(error)) => return Err(Interrupted::Fatal(error)),
                Err(Attempt::Shutdown) => return Err(Interrupted::Shutdown),
                Err(Attempt::Transient(error)) => error,
            };
            self.metrics.batch_retried(self.topic);
            let why = error.to_string();
            let delay = backoff.next_delay();
            let attempts = backoff.attempts();
            let level = if attempts < 5 {
                log::Level::Warn
            } else {
                log::Level::Error
            };
            log::log!(
                level,
                "{} failed (attempt {attempts}), retrying in {delay:?}: {error}",
                what()
            );
            let hold = match hold {
                Some(hold) => {
                    // The latest failure is the one readiness shows.
                    self.metrics
                        .stalls
                        .retrying(self.topic, &self.batch.partitions(), &why);
                    hold
                }
                None => hold.insert(self.hold(&why)),
            };
            if !hold.wait(delay, self) {
                return Err(Interrupted::Shutdown);
            }
        }
    }
}

/// A consumer kept in its group while a batch is retried: every assigned partition
/// paused, polled all the same (each poll tells the group the member is alive and runs
/// the rebalance callbacks), and what a poll still hands out (records fetched before
/// the pause, or of partitions assigned meanwhile) rewound when the hold is released,
/// so no record is skipped.
pub(crate) struct Hold {
    paused: Option<TopicPartitionList>,
    /// Per partition, the first record handed out during the hold.
    rewind: BTreeMap<i32, i64>,
}

impl Hold {
    fn pause(consumer: &CommandConsumer) -> Hold {
        let paused = consumer
            .assignment()
            .ok()
            .filter(|assigned| match consumer.pause(assigned) {
                Ok(()) => true,
                Err(error) => {
                    warn!("cannot pause partitions while retrying: {error}");
                    false
                }
            });
        Hold {
            paused,
            rewind: BTreeMap::new(),
        }
    }

    /// Waits `delay`, polling; false when shutdown was asked meanwhile.
    fn wait(&mut self, delay: Duration, retries: &Retries<'_>) -> bool {
        let until = Instant::now() + delay;
        loop {
            if retries.shutdown.load(Ordering::Acquire) {
                return false;
            }
            let now = Instant::now();
            if now >= until {
                return true;
            }
            retries.heartbeat.beat();
            self.poll(retries.consumer, (until - now).min(POLL_SLICE));
        }
    }

    /// One poll: tells the group the member is alive and runs the rebalance callbacks;
    /// a record it still hands out is rewound to on release.
    pub(super) fn poll(&mut self, consumer: &CommandConsumer, timeout: Duration) {
        if let Some(Ok(record)) = consumer.poll(timeout) {
            self.rewind
                .entry(record.partition())
                .and_modify(|first| *first = (*first).min(record.offset()))
                .or_insert(record.offset());
        }
    }

    fn release(self, consumer: &CommandConsumer, topic: &str) {
        if let Some(paused) = &self.paused
            && let Err(error) = consumer.resume(paused)
        {
            warn!("cannot resume partitions after retrying: {error}");
        }
        for (partition, offset) in self.rewind {
            // A partition revoked meanwhile cannot be sought; its new owner reads it.
            if let Err(error) =
                consumer.seek(topic, partition, Offset::Offset(offset), SEEK_TIMEOUT)
            {
                info!("not rewinding {topic}/{partition} to {offset}: {error}");
            }
        }
    }
}

/// How long a poll during a hold waits at most.
const POLL_SLICE: Duration = Duration::from_millis(100);
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);
