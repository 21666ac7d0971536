//! How a stage that did not succeed ends: tried again after a backoff, or the loop
//! stops (for shutdown, or for good with a non-zero exit).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
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
    /// The consumer cannot go on: fenced by another member with the same
    /// `group.instance.id`, for example.
    #[error("consuming {topic} failed for good: {why}")]
    ConsumerFatal { topic: String, why: String },
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

/// How long the loop waits, and for what: one place for every delay of a retry, so
/// tests can make them short.
#[derive(Clone, Debug)]
pub(crate) struct RetryPolicy {
    /// The first backoff after a failed attempt; it doubles up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// An acknowledgement slower than this is Kafka retrying a send: the consumer is
    /// kept in its group meanwhile ([`Hold`]).
    pub hold_acknowledgement_after: Duration,
    /// How long a loop still waits for an acknowledgement after shutdown was asked (the
    /// broker may be down); then the batch is left unstored and redelivered on restart.
    pub acknowledgement_grace: Duration,
    /// How long a poll during a hold waits at most.
    pub poll_slice: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            hold_acknowledgement_after: Duration::from_secs(1),
            acknowledgement_grace: Duration::from_secs(15),
            poll_slice: Duration::from_millis(100),
        }
    }
}

/// What a waiting loop needs of its consumer: to stay in its group without taking new
/// records. The command consumer is the one implementation outside tests.
pub(crate) trait Membership: Send + Sync {
    /// Pauses every assigned partition; what was paused, None when nothing could be.
    fn pause_all(&self) -> Option<TopicPartitionList>;
    /// One poll, which tells the group the member is alive and runs the rebalance
    /// callbacks; where the record it still handed out is, if any.
    fn keep_alive(&self, timeout: Duration) -> Option<(i32, i64)>;
    fn resume(&self, paused: &TopicPartitionList);
    /// Reads `partition` of `topic` again from `offset`.
    fn rewind(&self, topic: &str, partition: i32, offset: i64);
}

impl Membership for CommandConsumer {
    fn pause_all(&self) -> Option<TopicPartitionList> {
        let assigned = self.assignment().ok()?;
        match self.pause(&assigned) {
            Ok(()) => Some(assigned),
            Err(error) => {
                warn!("cannot pause partitions while retrying: {error}");
                None
            }
        }
    }

    fn keep_alive(&self, timeout: Duration) -> Option<(i32, i64)> {
        match self.poll(timeout) {
            Some(Ok(record)) => Some((record.partition(), record.offset())),
            _ => None,
        }
    }

    fn resume(&self, paused: &TopicPartitionList) {
        if let Err(error) = Consumer::resume(self, paused) {
            warn!("cannot resume partitions after retrying: {error}");
        }
    }

    fn rewind(&self, topic: &str, partition: i32, offset: i64) {
        // A partition revoked meanwhile cannot be sought; its new owner reads it.
        if let Err(error) = self.seek(topic, partition, Offset::Offset(offset), SEEK_TIMEOUT) {
            info!("not rewinding {topic}/{partition} to {offset}: {error}");
        }
    }
}

/// What every stage of a loop shares while it waits: the consumer to keep in its
/// group, the shutdown flag, the heartbeat liveness reads, the metrics a stall shows
/// in, and the delays.
pub(crate) struct LoopContext {
    pub member: Arc<dyn Membership>,
    pub shutdown: Arc<AtomicBool>,
    pub heartbeat: Arc<Heartbeat>,
    pub metrics: Arc<Metrics>,
    /// The topic the loop consumes: failed attempts are counted under it.
    pub topic: String,
    pub policy: RetryPolicy,
}

impl LoopContext {
    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Retries of a stage of `batch`.
    pub fn retries<'a>(&'a self, batch: &'a Batch) -> Retries<'a> {
        Retries {
            context: self,
            batch,
        }
    }
}

/// A stage's retries: a backoff (see [`RetryPolicy`]), a log line per attempt (errors
/// from the fifth on), and, while waiting, the consumer kept in its group: its
/// partitions are paused and it keeps polling ([`Hold`]), so a long outage does not
/// exceed `max.poll.interval.ms` and set off a rebalance.
pub(crate) struct Retries<'a> {
    context: &'a LoopContext,
    /// The batch whose partitions a failed attempt reports stalled.
    batch: &'a Batch,
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
        let context = self.context;
        context
            .metrics
            .stalls
            .retrying(&context.topic, &self.batch.partitions(), why);
        Hold {
            paused: context.member.pause_all(),
            rewind: BTreeMap::new(),
        }
    }

    /// Ends a [`Retries::hold`]: the partitions resume and are no longer stalled.
    pub fn release(&self, hold: Hold) {
        let context = self.context;
        hold.release(&*context.member, &context.topic);
        context
            .metrics
            .stalls
            .resolved(&context.topic, &self.batch.partitions());
    }

    fn attempts<T, E: fmt::Display>(
        &self,
        what: impl Fn() -> String,
        mut attempt: impl FnMut() -> Result<T, Attempt<E>>,
        hold: &mut Option<Hold>,
    ) -> Result<T, Interrupted> {
        let context = self.context;
        let policy = &context.policy;
        let mut backoff = Backoff::new(policy.first_backoff, policy.max_backoff);
        loop {
            let error = match attempt() {
                Ok(value) => return Ok(value),
                Err(Attempt::Fatal(error)) => return Err(Interrupted::Fatal(error)),
                Err(Attempt::Shutdown) => return Err(Interrupted::Shutdown),
                Err(Attempt::Transient(error)) => error,
            };
            context.metrics.batch_retried(&context.topic);
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
                    context
                        .metrics
                        .stalls
                        .retrying(&context.topic, &self.batch.partitions(), &why);
                    hold
                }
                None => hold.insert(self.hold(&why)),
            };
            if !hold.wait(delay, context) {
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
    /// Waits `delay`, polling; false when shutdown was asked meanwhile.
    fn wait(&mut self, delay: Duration, context: &LoopContext) -> bool {
        let until = Instant::now() + delay;
        loop {
            if context.shutdown_requested() {
                return false;
            }
            let now = Instant::now();
            if now >= until {
                return true;
            }
            context.heartbeat.beat();
            self.poll(
                &*context.member,
                (until - now).min(context.policy.poll_slice),
            );
        }
    }

    /// One poll: tells the group the member is alive and runs the rebalance callbacks;
    /// a record it still hands out is rewound to on release.
    pub(super) fn poll(&mut self, member: &dyn Membership, timeout: Duration) {
        if let Some((partition, offset)) = member.keep_alive(timeout) {
            self.rewind
                .entry(partition)
                .and_modify(|first| *first = (*first).min(offset))
                .or_insert(offset);
        }
    }

    fn release(self, member: &dyn Membership, topic: &str) {
        if let Some(paused) = &self.paused {
            member.resume(paused);
        }
        for (partition, offset) in self.rewind {
            member.rewind(topic, partition, offset);
        }
    }
}

const SEEK_TIMEOUT: Duration = Duration::from_secs(5);
