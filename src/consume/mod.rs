//! The consumer loops: consume → decode → apply → hand to the producer over `mpsc` →
//! (encode → produce, in [`crate::produce`]) → acknowledge → store offsets.
//!
//! # Delivery guarantee
//!
//! Commands are read at least once and applied exactly once. For each batch (a poll's
//! worth of records of one topic) a consumer thread:
//!
//! 1. decodes every record; a record that cannot be a command is dead-lettered;
//! 2. applies the commands in one database transaction that also records each outcome
//!    under its command id ([`crate::db::apply`]);
//! 3. hands the answers, BalanceChanged events and dead letters to the producer thread
//!    and waits until Kafka has acknowledged every one of them;
//! 4. only then stores the offsets (`enable.auto.offset.store=false`), which librdkafka
//!    commits in the background and on shutdown.
//!
//! A crash anywhere before 4 makes Kafka deliver the batch again; step 2 then finds the
//! recorded outcomes and answers exactly as the first time, so nothing is lost and
//! nothing is applied twice (answers may be duplicated).
//!
//! Batches are pipelined: while Kafka acknowledges batch N (step 3), batch N+1 is
//! decoded and applied (steps 1 and 2) and handed to the producer behind it; N's
//! offsets are stored before N+1's. The reasoning above holds batch by batch: a crash
//! redelivers N and N+1, both recorded, both answered as the first time. Order holds
//! too: N+1 is applied after N, its records are sent after N's by the one producer
//! (idempotent, so in order per partition), and when N must be sent again, N+1 is sent
//! again in full behind it.
//!
//! # Failures
//!
//! Each layer's error says what the loop does ([`retry`]): a transient failure
//! (registry, database or broker unreachable, a race between instances) retries the
//! same stage of the same batch with backoff and never skips a record; a database error
//! that will recur for the same data applies the batch's commands one by one and
//! dead-letters the one the database refuses; a fatal one (the producer cannot go on)
//! stops the process with a non-zero exit, and the batch is redelivered after restart.

mod apply;
pub(crate) mod batch;
pub(crate) mod consumer;
pub(crate) mod kinds;
mod publish;
pub(crate) mod retry;

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use log::{info, warn};
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use self::batch::{Batch, Decoded, Intake};
use self::consumer::CommandConsumer;
use self::kinds::CommandKind;
use self::publish::InFlight;
pub use self::retry::LoopError;
use self::retry::{Attempt, Interrupted, Retries};
use crate::config::Topics;
use crate::db::Database;
use crate::ops::heartbeat::Heartbeat;
use crate::ops::metrics::Metrics;
use crate::produce::{Destinations, PublishRequest};
use crate::wire::{CommandDecoder, DecodeError};

/// How often a loop runs its kind's housekeeping after storing offsets.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// The consumer loop of one kind of command, `K`.
pub(crate) struct CommandLoop<K: CommandKind> {
    /// Shared with the readiness probe, which asks it for the brokers' metadata.
    pub consumer: Arc<CommandConsumer>,
    pub decoder: CommandDecoder,
    pub database: Database,
    pub topics: Topics,
    pub destinations: Destinations,
    pub publish: mpsc::Sender<PublishRequest>,
    pub shutdown: Arc<AtomicBool>,
    pub batch_size: usize,
    pub metrics: Arc<Metrics>,
    /// Shared with the liveness probe.
    pub heartbeat: Arc<Heartbeat>,
    /// Commands whose events Kafka acknowledged, to forget with the next transaction.
    pub acknowledged_events: RefCell<Vec<uuid::Uuid>>,
    /// When the kind's housekeeping last ran ([`CommandKind::offsets_stored`]).
    pub last_sweep: Cell<Option<Instant>>,
    /// `fn() -> K`: the loop holds no `K`, so it is `Send` whatever `K` is.
    pub kind: PhantomData<fn() -> K>,
}

impl<K: CommandKind> CommandLoop<K> {
    fn topic(&self) -> &str {
        self.topics.commands(K::TOPIC)
    }

    /// Runs until shutdown is requested (Ok) or a failure it cannot get past (Err).
    pub fn run(self) -> Result<(), LoopError> {
        info!("consuming {}", self.topic());
        let outcome = match self.consume() {
            Ok(()) | Err(Interrupted::Shutdown) => Ok(()),
            Err(Interrupted::Fatal(error)) => Err(error),
        };
        self.forget_acknowledged();
        // Commit what was stored, then leave the group, so a successor starts where
        // this instance stopped.
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => info!("committed offsets of {}", self.topic()),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => warn!("final commit of {} failed: {error}", self.topic()),
        }
        outcome
    }

    /// The data path. Pipelined: while Kafka acknowledges one batch, the next is
    /// decoded and applied; batches are completed (acknowledged, offsets stored) in the
    /// order they were polled.
    fn consume(&self) -> Result<(), Interrupted> {
        let mut in_flight: Option<InFlight<'_>> = None;
        let outcome = self.consume_pipelined(&mut in_flight);
        // Stopping: the batch in flight is finished if Kafka acknowledges it in time.
        match (outcome, in_flight.take()) {
            (Ok(()) | Err(Interrupted::Shutdown), Some(last)) => self.complete(last, None),
            (outcome, _) => outcome,
        }
    }

    fn consume_pipelined<'c>(
        &'c self,
        in_flight: &mut Option<InFlight<'c>>,
    ) -> Result<(), Interrupted> {
        while !self.shutdown.load(Ordering::Acquire) {
            self.heartbeat.beat();
            let batch = self.poll_batch();
            if batch.records.is_empty() {
                match in_flight.take() {
                    Some(previous) => self.complete(previous, None)?,
                    // Quiet: forget acknowledged events now, not with the next batch.
                    None => self.forget_acknowledged(),
                }
                continue;
            }
            let decoded = self.decode(&batch)?;
            let applied = self.apply(&batch, decoded)?;
            let mut next = self.hand_over(batch, applied)?;
            if let Some(previous) = in_flight.take() {
                self.complete(previous, Some(&mut next))?;
            }
            *in_flight = Some(next);
        }
        Ok(())
    }

    /// Retries of a stage of `batch`.
    fn retries<'a>(&'a self, batch: &'a Batch<'a>) -> Retries<'a> {
        Retries {
            consumer: &self.consumer,
            shutdown: &self.shutdown,
            heartbeat: &self.heartbeat,
            metrics: &self.metrics,
            topic: self.topic(),
            batch,
        }
    }

    /// Up to `batch_size` records: waits briefly for the first, then takes what is
    /// already fetched, so a quiet topic answers each command at once and a busy one
    /// is applied in large transactions.
    fn poll_batch(&self) -> Batch<'_> {
        let mut records = Vec::new();
        let mut timeout = Duration::from_millis(100);
        while records.len() < self.batch_size {
            match self.consumer.poll(timeout) {
                None => break,
                Some(Ok(record)) => records.push(record),
                Some(Err(error)) => {
                    warn!("polling {} failed: {error}", self.topic());
                    break;
                }
            }
            timeout = Duration::ZERO;
        }
        let events = self.consumer.context();
        if events.rebalanced.swap(false, Ordering::AcqRel)
            && let Ok(assigned) = self.consumer.assignment()
        {
            events.note_assignment(&assigned);
            // Records of partitions revoked while polling belong to their new owner now.
            records.retain(|m| assigned.find_partition(m.topic(), m.partition()).is_some());
        }
        Batch {
            records,
            polled_at: Instant::now(),
        }
    }

    /// Stage 1: each record's command, or why it is not one. Waits out registry
    /// outages.
    fn decode(&self, batch: &Batch<'_>) -> Result<Decoded<K::Command>, Interrupted> {
        let what = || format!("decoding commands of {}", batch.describe());
        self.retries(batch).run(what, || {
            let mut intake = Vec::with_capacity(batch.len());
            for record in &batch.records {
                intake.push(match self.decode_one(record) {
                    Ok(command) => Intake::Command(command),
                    Err(DecodeError::Malformed(why)) => Intake::DeadLetter(why),
                    Err(error @ DecodeError::RegistryUnavailable(_)) => {
                        return Err(Attempt::Transient(error));
                    }
                });
            }
            Ok(Decoded { intake })
        })
    }

    fn decode_one(&self, record: &impl Message) -> Result<K::Command, DecodeError> {
        let malformed = |why: &str| Err(DecodeError::Malformed(why.to_string()));
        match record.key() {
            None | Some([]) => return malformed("record has no key"),
            Some(key) if std::str::from_utf8(key).is_err() => return malformed("key is not UTF-8"),
            Some(_) => {}
        }
        let Some(value) = record.payload() else {
            return malformed("record has no value");
        };
        K::decode(&self.decoder, record, value)
    }

    /// Deletes the recorded events of acknowledged batches that no next batch carried.
    /// Best effort: if it fails, a later redelivery publishes them once more, which is
    /// allowed, and the sweep takes them.
    fn forget_acknowledged(&self) {
        let acknowledged = self.acknowledged_events.take();
        if acknowledged.is_empty() {
            return;
        }
        let result = self
            .database
            .connection()
            .and_then(|mut conn| Ok(K::forget(&mut conn, &acknowledged)?));
        if let Err(error) = result {
            warn!(
                "could not forget the published events of {} transfers: {error}",
                acknowledged.len()
            );
        }
    }

    /// Stage 4: stores, per partition, the offset after the batch's last record. Fails
    /// only for partitions revoked meanwhile, whose new owner redelivers those records.
    /// Then, now and then, the kind's housekeeping that needs the stored offsets.
    fn store_offsets(&self, batch: &Batch<'_>) {
        if let Err(error) = self
            .consumer
            .store_offsets(&batch.offsets_to_store(self.topic()))
        {
            info!(
                "offsets of {} not stored (partition revoked?): {error}",
                batch.describe()
            );
            return;
        }
        if self
            .last_sweep
            .get()
            .is_some_and(|at| at.elapsed() < SWEEP_INTERVAL)
        {
            return;
        }
        self.last_sweep.set(Some(Instant::now()));
        let swept = self
            .database
            .connection()
            .and_then(|mut conn| Ok(K::offsets_stored(&mut conn, &batch.next_offsets())?));
        match swept {
            Ok(0) => {}
            Ok(rows) => info!("swept {rows} leftover event rows of {}", self.topic()),
            Err(error) => warn!(
                "sweeping leftover event rows of {} failed: {error}",
                self.topic()
            ),
        }
    }
}
