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
//!    under its command id and writes the BalanceChanged events to the outbox
//!    ([`crate::db::apply`]), which [`crate::outbox`] publishes in each account's
//!    commit order, whichever instance committed them;
//! 3. hands the answers and dead letters to the producer thread and waits until Kafka
//!    has acknowledged every one of them;
//! 4. only then stores the offsets (`enable.auto.offset.store=false`), which librdkafka
//!    commits in the background and on shutdown.
//!
//! A crash anywhere before 4 makes Kafka deliver the batch again; step 2 then finds the
//! recorded outcomes and answers exactly as the first time, so nothing is lost and
//! nothing is applied twice (answers may be duplicated). Events committed are in the
//! outbox until Kafka acknowledged them, so none is lost either.
//!
//! Batches are pipelined ([`pipeline`]): while Kafka acknowledges batch N (step 3),
//! batch N+1 is decoded and applied (steps 1 and 2) and handed to the producer behind
//! it; N's offsets are stored before N+1's. The reasoning above holds batch by batch: a crash
//! redelivers N and N+1, both recorded, both answered as the first time. Order holds
//! too: N+1 is applied after N, its records are sent after N's by the one producer
//! (idempotent, so in order per partition), and when N must be sent again, N+1 is sent
//! again in full behind it.
//!
//! # Rebalances
//!
//! Rebalances are incremental (cooperative-sticky on the classic protocol, or KIP-848):
//! a member joining or leaving moves only the partitions that change owner, and the
//! loop handles each revocation for the revoked partitions alone. The rebalance
//! callback only raises a flag ([`consumer::ConsumerEvents`]); after the poll the loop
//! drops the records it just polled of partitions it no longer holds, and a batch in
//! flight still completes, its offsets stored for the partitions still held (librdkafka
//! refuses them per partition for the others). The new owner reads a revoked
//! partition from its last committed offset and answers what it finds recorded as the
//! first time. Instances are static members ([`crate::config::GroupMembership`]), so a
//! restart under the same name within the session timeout moves no partition at all.
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
mod pipeline;
pub(crate) mod retry;

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use log::{info, warn};
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use schema_registry_converter::blocking::schema_registry::SrSettings;

use self::batch::{Batch, Decoded, Intake};
use self::consumer::CommandConsumer;
use self::kinds::CommandKind;
use self::pipeline::{Completed, Pipeline};
pub use self::retry::LoopError;
use self::retry::{Attempt, Interrupted, LoopContext, RetryPolicy};
use crate::config::Topics;
use crate::db::Database;
use crate::ops::heartbeat::Heartbeat;
use crate::ops::metrics::{Metrics, Stage, StageClock};
use crate::outbox::OutboxSignal;
use crate::produce::{Destinations, PublishRequest};
use crate::wire::{CommandDecoder, DecodeError};

/// How many batches wait for their acknowledgement while the next one is applied.
const BATCHES_IN_FLIGHT: usize = 1;

/// What a consumer loop is made of.
pub(crate) struct LoopParts<'a> {
    /// Subscribed to the kind's command topic.
    pub consumer: Arc<CommandConsumer>,
    /// Shared with the liveness probe.
    pub heartbeat: Arc<Heartbeat>,
    pub registry: &'a SrSettings,
    pub database: &'a Database,
    pub topics: &'a Topics,
    /// The largest dead letter its topic takes.
    pub dead_letter_limit: usize,
    pub publish: mpsc::Sender<PublishRequest>,
    pub outbox: OutboxSignal,
    pub shutdown: &'a Arc<AtomicBool>,
    pub metrics: &'a Arc<Metrics>,
    pub batch_size: usize,
}

/// The consumer loop of one kind of command, `K`.
pub(crate) struct CommandLoop<K: CommandKind> {
    consumer: Arc<CommandConsumer>,
    /// Shutdown, heartbeat, metrics and delays, which every stage's retries share.
    context: LoopContext,
    decoder: CommandDecoder,
    database: Database,
    destinations: Destinations,
    batch_size: usize,
    /// The batches handed to the producer, waiting for Kafka's acknowledgement.
    pipeline: Pipeline<mpsc::Sender<PublishRequest>>,
    /// Whether this instance publishes the outbox, and how to wake it.
    outbox: OutboxSignal,
    /// `fn() -> K`: the loop holds no `K`, so it is `Send` whatever `K` is.
    kind: PhantomData<fn() -> K>,
}

impl<K: CommandKind> CommandLoop<K> {
    pub fn new(parts: LoopParts<'_>) -> Self {
        let topic = parts.topics.commands(K::TOPIC).clone();
        CommandLoop {
            context: LoopContext {
                member: Arc::clone(&parts.consumer) as _,
                shutdown: Arc::clone(parts.shutdown),
                heartbeat: parts.heartbeat,
                metrics: Arc::clone(parts.metrics),
                topic,
                policy: RetryPolicy::default(),
            },
            consumer: parts.consumer,
            decoder: CommandDecoder::new(parts.registry.clone()),
            database: parts.database.clone(),
            destinations: Destinations::new(parts.topics, parts.dead_letter_limit),
            batch_size: parts.batch_size,
            pipeline: Pipeline::new(parts.publish),
            outbox: parts.outbox,
            kind: PhantomData,
        }
    }

    fn topic(&self) -> &str {
        &self.context.topic
    }

    /// Runs until shutdown is requested (Ok) or a failure it cannot get past (Err).
    pub fn run(mut self) -> Result<(), LoopError> {
        info!("consuming {}", self.topic());
        let outcome = match self.consume() {
            // Stopping: the batches in flight are finished if Kafka acknowledges them
            // in time.
            Ok(()) | Err(Interrupted::Shutdown) => self.complete_in_flight().map(|_| ()),
            Err(fatal) => Err(fatal),
        };
        let outcome = match outcome {
            Ok(()) | Err(Interrupted::Shutdown) => Ok(()),
            Err(Interrupted::Fatal(error)) => Err(error),
        };
        // Commit what was stored, then leave the group, so a successor starts where
        // this instance stopped.
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => info!("committed offsets of {}", self.topic()),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => warn!("final commit of {} failed: {error}", self.topic()),
        }
        outcome
    }

    /// The data path: poll → decode → apply → hand over; then, pipelined, complete the
    /// batch handed over before (acknowledged → offsets stored) while this one is in
    /// flight. Batches complete in the order they were polled.
    fn consume(&mut self) -> Result<(), Interrupted> {
        while !self.context.shutdown_requested() {
            self.context.heartbeat.beat();
            let mut stages = StageClock::start(&self.context.metrics, K::TOPIC);
            let batch = self.poll_batch()?;
            if batch.is_empty() {
                // Quiet: nothing comes behind what is in flight.
                if self.complete_in_flight()? > 0 {
                    // After work: the batches' buffers are free now.
                    crate::memory::give_back_free_memory();
                }
                continue;
            }
            stages.lap(Stage::Poll);
            let decoded = self.decode(&batch)?;
            stages.lap(Stage::Decode);
            let applied = self.apply(&batch, decoded)?;
            stages.lap(Stage::Apply);
            self.pipeline.hand_over(batch, applied)?;
            stages.lap(Stage::HandOver);
            while self.pipeline.len() > BATCHES_IN_FLIGHT {
                self.complete_oldest()?;
            }
        }
        Ok(())
    }

    /// Up to `batch_size` records: waits briefly for the first, then takes what is
    /// already fetched, so a quiet topic answers each command at once and a busy one
    /// is applied in large transactions.
    fn poll_batch(&self) -> Result<Batch, Interrupted> {
        let mut records = Vec::new();
        let mut timeout = Duration::from_millis(100);
        while records.len() < self.batch_size {
            match self.consumer.poll(timeout) {
                None => break,
                Some(Ok(record)) => records.push(record.detach()),
                Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                    return Err(Interrupted::Fatal(self.consumer_fatal(code)));
                }
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
        Ok(Batch {
            records,
            polled_at: Instant::now(),
        })
    }

    /// The consumer is unusable (librdkafka raised a fatal error): the loop stops, and
    /// the process exits non-zero with what to do about it.
    fn consumer_fatal(&self, code: RDKafkaErrorCode) -> LoopError {
        // The poll's code says only "fatal"; the client keeps the one that was.
        let (code, why) = self
            .consumer
            .client()
            .fatal_error()
            .unwrap_or_else(|| (code, code.to_string()));
        let why = match code {
            RDKafkaErrorCode::FencedInstanceId | RDKafkaErrorCode::UnreleasedInstanceId => {
                format!(
                    "{why}: a consumer with this group.instance.id joined the group, either \
                     another instance under the same name (give each instance its own \
                     KAFKA_GROUP_INSTANCE_ID) or this one, rejoining after its session timed \
                     out while the brokers were out of reach; a restart joins afresh"
                )
            }
            _ => why,
        };
        LoopError::ConsumerFatal {
            topic: self.topic().to_string(),
            why,
        }
    }

    /// Stage 1: each record's command, or why it is not one. Waits out registry
    /// outages.
    fn decode(&self, batch: &Batch) -> Result<Decoded<K::Command>, Interrupted> {
        let what = || format!("decoding commands of {}", batch.describe());
        self.context.retries(batch).run(what, || {
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

    /// Stages 3 and 4 for the oldest batch in flight: waits for its acknowledgement
    /// (sending again what Kafka refused), then counts it and stores its offsets.
    fn complete_oldest(&mut self) -> Result<bool, Interrupted> {
        match self.pipeline.complete_oldest(&self.context)? {
            Some(completed) => {
                self.finish(completed);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Completes every batch in flight; how many there were.
    fn complete_in_flight(&mut self) -> Result<usize, Interrupted> {
        let mut completed = 0;
        while self.complete_oldest()? {
            completed += 1;
        }
        Ok(completed)
    }

    /// Stage 4: counts an acknowledged batch and stores its offsets.
    fn finish(&mut self, completed: Completed) {
        let Completed {
            batch,
            tally,
            acknowledged_in,
        } = completed;
        let metrics = &self.context.metrics;
        metrics.stage_took(K::TOPIC, Stage::Acknowledge, acknowledged_in);
        metrics.batch_done(
            K::TOPIC,
            self.topic(),
            tally,
            batch.len(),
            batch.polled_at.elapsed(),
        );
        let storing = Instant::now();
        self.store_offsets(&batch);
        let metrics = &self.context.metrics;
        metrics.stage_took(K::TOPIC, Stage::StoreOffsets, storing.elapsed());
    }

    /// Stores, per partition, the offset after the batch's last record. Fails only for
    /// partitions revoked meanwhile, whose new owner redelivers those records.
    fn store_offsets(&mut self, batch: &Batch) {
        if let Err(error) = self
            .consumer
            .store_offsets(&batch.offsets_to_store(self.topic()))
        {
            info!(
                "offsets of {} not stored (partition revoked?): {error}",
                batch.describe()
            );
        }
    }
}
