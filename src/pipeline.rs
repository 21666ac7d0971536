//! The consumer loops: poll, decode, apply, hand to the producer thread, wait for the
//! acknowledgement, store offsets.
//!
//! # Delivery guarantee
//!
//! Commands are read at least once and applied exactly once. For each batch (a poll's
//! worth of records of one topic) a consumer thread:
//!
//! 1. decodes every record; a record that cannot be a command is dead-lettered;
//! 2. applies the commands in one database transaction that also records each outcome
//!    under its command id ([`crate::handler`]);
//! 3. hands the answers, BalanceChanged events and dead letters to the producer thread
//!    and waits until Kafka has acknowledged every one of them;
//! 4. only then stores the offsets (`enable.auto.offset.store=false`), which librdkafka
//!    commits in the background and on shutdown.
//!
//! A crash anywhere before 4 makes Kafka deliver the batch again; step 2 then finds the
//! recorded outcomes and answers exactly as the first time, so nothing is lost and
//! nothing is applied twice (answers may be duplicated). Transient failures (registry,
//! database, broker) retry the same batch with backoff and never skip a record.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use uuid::Uuid;

use crate::backoff;
use crate::config::{CommandTopic, Topics};
use crate::handler::{self, AccountCreationCommand, TransferCommand};
use crate::heartbeat::Heartbeat;
use crate::kafka::CommandConsumer;
use crate::metrics::{BatchTally, Metrics};
use crate::produce::{Outbound, OutboundBody, PublishError, PublishRequest};
use crate::records::{CommandDecoder, DecodeError, OutputRecord};
use crate::rules::AccountCreationOutcome;
use crate::storage::{self, Database, RecordPosition};

/// Why a consumer loop ended early, making the process exit non-zero.
#[derive(Debug)]
pub struct Stopped(pub String);

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The consumer loop's retry of a batch: a [`backoff::Backoff`] from 0.1 s to 10 s, a
/// log line per attempt (errors from the fifth on), and the heartbeat kept beating.
struct Backoff(backoff::Backoff);

impl Backoff {
    fn new() -> Self {
        Backoff(backoff::Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(10),
        ))
    }

    /// Waits before the next attempt; false when shutdown was requested meanwhile.
    fn wait(
        &mut self,
        shutdown: &AtomicBool,
        heartbeat: &Heartbeat,
        what: &str,
        error: &dyn fmt::Display,
    ) -> bool {
        let delay = self.0.next_delay();
        let attempts = self.0.attempts();
        let level = if attempts < 5 {
            log::Level::Warn
        } else {
            log::Level::Error
        };
        log::log!(
            level,
            "{what} failed (attempt {attempts}), retrying in {delay:?}: {error}"
        );
        backoff::sleep_unless_shutdown(delay, shutdown, || heartbeat.beat())
    }
}

/// Where a loop's records go, named once rather than copied into every record.
pub struct Destinations {
    pub account_creation_feedback: Arc<str>,
    pub money_transfer_feedback: Arc<str>,
    pub balance_changed: Arc<str>,
    pub dead_letter: Arc<str>,
}

impl From<&Topics> for Destinations {
    fn from(topics: &Topics) -> Self {
        Destinations {
            account_creation_feedback: topics.account_creation_feedback.as_str().into(),
            money_transfer_feedback: topics.money_transfer_feedback.as_str().into(),
            balance_changed: topics.balance_changed.as_str().into(),
            dead_letter: topics.dead_letter.as_str().into(),
        }
    }
}

/// A record of the batch in the database's answers, by command id, or its dead letter.
enum Slot {
    Account(Uuid),
    Transfer(Uuid),
    DeadLetter(String),
}

/// A batch applied in the database: what to publish, in record order; the transfers
/// whose events are in it; what it came to.
struct Applied {
    outbound: Vec<Outbound>,
    with_events: Vec<Uuid>,
    tally: BatchTally,
}

/// What became of one record of a batch before the database.
enum Intake {
    Account(AccountCreationCommand),
    Transfer(TransferCommand),
    DeadLetter(String),
}

pub struct CommandLoop {
    pub kind: CommandTopic,
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
}

impl CommandLoop {
    fn topic(&self) -> &str {
        self.topics.commands(self.kind)
    }

    /// Counts and logs a failed attempt at `batch` and waits before the next one; false
    /// when shutdown was requested meanwhile.
    fn retry(
        &self,
        backoff: &mut Backoff,
        batch: &[OwnedMessage],
        what: &str,
        error: &dyn fmt::Display,
    ) -> bool {
        self.metrics.batch_retried(self.topic());
        backoff.wait(
            &self.shutdown,
            &self.heartbeat,
            &format!("{what} of {}", describe_batch(batch)),
            error,
        )
    }

    /// Runs until shutdown is requested (Ok) or the producer fails for good (Err).
    pub fn run(self) -> Result<(), Stopped> {
        info!("consuming {}", self.topic());
        let outcome = self.consume();
        // Commit what was stored, then leave the group, so a successor starts where
        // this instance stopped.
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => info!("committed offsets of {}", self.topic()),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => warn!("final commit of {} failed: {error}", self.topic()),
        }
        outcome
    }

    fn consume(&self) -> Result<(), Stopped> {
        while !self.shutdown.load(Ordering::Acquire) {
            self.heartbeat.beat();
            let batch = self.poll_batch();
            if batch.is_empty() {
                continue;
            }
            let polled_at = Instant::now();
            let Some(intake) = self.intake(&batch) else {
                return Ok(());
            };
            let Some(applied) = self.apply(&batch, intake) else {
                return Ok(());
            };
            if !self.publish(&batch, applied.outbound)? {
                return Ok(());
            }
            self.metrics.batch_done(
                self.kind,
                self.topic(),
                applied.tally,
                batch.len(),
                polled_at.elapsed(),
            );
            self.forget_published(&applied.with_events);
            self.store_offsets(&batch);
        }
        Ok(())
    }

    /// Up to `batch_size` records: waits briefly for the first, then takes what is
    /// already fetched, so a quiet topic answers each command at once and a busy one
    /// is applied in large transactions.
    fn poll_batch(&self) -> Vec<OwnedMessage> {
        let mut batch = Vec::new();
        let mut timeout = Duration::from_millis(100);
        while batch.len() < self.batch_size {
            match self.consumer.poll(timeout) {
                None => break,
                Some(Ok(message)) => batch.push(message.detach()),
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
            batch.retain(|m| assigned.find_partition(m.topic(), m.partition()).is_some());
        }
        batch
    }

    /// Decodes the batch; records that cannot be commands become dead letters. Waits out
    /// registry outages (None when shutdown came first).
    fn intake(&self, batch: &[OwnedMessage]) -> Option<Vec<Intake>> {
        let mut backoff = Backoff::new();
        loop {
            let mut unavailable = None;
            let intake: Vec<Intake> = batch
                .iter()
                .map(|message| match self.decode(message) {
                    Ok(intake) => intake,
                    Err(DecodeError::Malformed(why)) => Intake::DeadLetter(why),
                    Err(error @ DecodeError::RegistryUnavailable(_)) => {
                        unavailable = Some(error);
                        Intake::DeadLetter(String::new())
                    }
                })
                .collect();
            match unavailable {
                None => return Some(intake),
                Some(error) => {
                    if !self.retry(&mut backoff, batch, "decoding commands", &error) {
                        return None;
                    }
                }
            }
        }
    }

    fn decode(&self, message: &OwnedMessage) -> Result<Intake, DecodeError> {
        let malformed = |why: &str| Err(DecodeError::Malformed(why.to_string()));
        match message.key() {
            None | Some([]) => return malformed("record has no key"),
            Some(key) if std::str::from_utf8(key).is_err() => return malformed("key is not UTF-8"),
            Some(_) => {}
        }
        let Some(payload) = message.payload() else {
            return malformed("record has no value");
        };
        Ok(match self.kind {
            CommandTopic::AccountCreation => {
                let command = self.decoder.decode_account_creation(payload)?;
                Intake::Account(AccountCreationCommand {
                    id: command.command_id(),
                    account_type: command.a_type.into(),
                })
            }
            CommandTopic::MoneyTransfer => {
                let command = self.decoder.decode_money_transfer(payload)?;
                Intake::Transfer(TransferCommand {
                    id: command.command_id(),
                    read_at: RecordPosition {
                        partition: message.partition(),
                        offset: message.offset(),
                    },
                    transfer: command.into_transfer(),
                })
            }
        })
    }

    /// Applies the commands in one transaction (retried until it commits) and lists
    /// what to publish, in record order, and the transfers whose events are in it.
    fn apply(&self, batch: &[OwnedMessage], intake: Vec<Intake>) -> Option<Applied> {
        // The commands move into the database's batches; the slots keep record order.
        let (mut accounts, mut transfers) = (Vec::new(), Vec::new());
        let slots: Vec<Slot> = intake
            .into_iter()
            .map(|intake| match intake {
                Intake::Account(command) => {
                    let id = command.id;
                    accounts.push(command);
                    Slot::Account(id)
                }
                Intake::Transfer(command) => {
                    let id = command.id;
                    transfers.push(command);
                    Slot::Transfer(id)
                }
                Intake::DeadLetter(reason) => Slot::DeadLetter(reason),
            })
            .collect();

        let mut backoff = Backoff::new();
        let (mut account_answers, mut transfer_answers) = loop {
            let attempt = self.database.connection().and_then(|mut conn| {
                let accounts = if accounts.is_empty() {
                    vec![]
                } else {
                    handler::handle_account_creations(&mut conn, &accounts)
                        .map_err(|e| e.to_string())?
                };
                let transfers = if transfers.is_empty() {
                    vec![]
                } else {
                    handler::handle_transfers(&mut conn, &transfers).map_err(|e| e.to_string())?
                };
                Ok((accounts.into_iter(), transfers.into_iter()))
            });
            match attempt {
                Ok(answers) => break answers,
                Err(error) => {
                    if !self.retry(
                        &mut backoff,
                        batch,
                        "applying commands to the database",
                        &error,
                    ) {
                        return None;
                    }
                }
            }
        };

        let mut outbound = Vec::with_capacity(batch.len() * 2);
        let mut with_events = Vec::new();
        let mut tally = BatchTally::default();
        for (message, slot) in batch.iter().zip(slots) {
            let key = message.key().map(<[u8]>::to_vec);
            match slot {
                Slot::DeadLetter(reason) => {
                    warn!(
                        "{}/{}@{} command {}: dead-lettered: {reason}",
                        message.topic(),
                        message.partition(),
                        message.offset(),
                        printable_key(message.key()),
                    );
                    tally.dead_lettered += 1;
                    outbound.push(self.dead_letter(message, &reason));
                }
                Slot::Account(id) => {
                    let answer = account_answers.next().expect("one answer per command");
                    match answer {
                        AccountCreationOutcome::Confirmed { .. } => tally.confirmed += 1,
                        AccountCreationOutcome::Failed { .. } => tally.failed += 1,
                    }
                    debug!(
                        "{}/{}@{} command {id}: account creation: {answer:?}",
                        message.topic(),
                        message.partition(),
                        message.offset(),
                    );
                    outbound.push(Outbound {
                        topic: Arc::clone(&self.destinations.account_creation_feedback),
                        key,
                        body: OutboundBody::Record(account_record(id, answer)),
                    });
                }
                Slot::Transfer(id) => {
                    let answer = transfer_answers.next().expect("one answer per command");
                    match answer.failure {
                        None => tally.confirmed += 1,
                        Some(_) => tally.failed += 1,
                    }
                    debug!(
                        "{}/{}@{} command {id}: money transfer: {answer:?}",
                        message.topic(),
                        message.partition(),
                        message.offset(),
                    );
                    outbound.push(Outbound {
                        topic: Arc::clone(&self.destinations.money_transfer_feedback),
                        key,
                        body: OutboundBody::Record(transfer_record(id, answer.failure)),
                    });
                    if !answer.balance_changes.is_empty() {
                        with_events.push(id);
                    }
                    for change in answer.balance_changes {
                        outbound.push(Outbound {
                            topic: Arc::clone(&self.destinations.balance_changed),
                            key: Some(change.iban.clone().into_bytes()),
                            body: OutboundBody::Record(OutputRecord::BalanceChanged(change)),
                        });
                    }
                }
            }
        }
        Some(Applied {
            outbound,
            with_events,
            tally,
        })
    }

    /// Deletes the recorded events of a published batch. Best effort: if it fails, a
    /// later redelivery publishes them once more, which is allowed.
    fn forget_published(&self, transfers: &[Uuid]) {
        if transfers.is_empty() {
            return;
        }
        let result = self.database.connection().and_then(|mut conn| {
            storage::forget_published_balance_changes(&mut conn, transfers)
                .map_err(|e| e.to_string())
        });
        if let Err(error) = result {
            warn!(
                "could not forget the published events of {} transfers: {error}",
                transfers.len()
            );
        }
    }

    fn dead_letter(&self, message: &OwnedMessage, reason: &str) -> Outbound {
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "dead_letter.topic",
                value: Some(message.topic()),
            })
            .insert(Header {
                key: "dead_letter.partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "dead_letter.offset",
                value: Some(&offset),
            })
            .insert(Header {
                key: "dead_letter.reason",
                value: Some(reason),
            });
        Outbound {
            topic: Arc::clone(&self.destinations.dead_letter),
            key: message.key().map(<[u8]>::to_vec),
            body: OutboundBody::DeadLetter {
                value: message.payload().map(<[u8]>::to_vec),
                headers,
            },
        }
    }

    /// Publishes and waits for Kafka's acknowledgement of every record, retrying the
    /// batch on failure. Ok(false) when shutdown came before success.
    fn publish(&self, batch: &[OwnedMessage], outbound: Vec<Outbound>) -> Result<bool, Stopped> {
        let mut records = Arc::new(outbound);
        let mut backoff = Backoff::new();
        loop {
            let (done, acknowledged) = mpsc::sync_channel(1);
            self.publish
                .send(PublishRequest {
                    records: Arc::clone(&records),
                    done,
                })
                .map_err(|_| Stopped("the producer thread has stopped".into()))?;
            match self.wait_for_acknowledgement(&acknowledged) {
                Some(Ok(())) => return Ok(true),
                Some(Err(PublishError::Fatal(why))) => return Err(Stopped(why)),
                Some(Err(error @ PublishError::Retry { .. })) => {
                    if !self.retry(&mut backoff, batch, "publishing answers", &error) {
                        return Ok(false);
                    }
                    // Send again only what Kafka did not acknowledge, in the same order.
                    if let PublishError::Retry { unacknowledged, .. } = error {
                        records = Arc::new(
                            unacknowledged
                                .into_iter()
                                .map(|i| records[i].clone())
                                .collect(),
                        );
                    }
                }
                None => return Ok(false),
            }
        }
    }

    /// Waits for the batch's acknowledgement. After shutdown is requested it waits a
    /// bounded time more (the broker may be down) and then gives up: the batch's
    /// offsets are not stored, so it is redelivered on restart.
    fn wait_for_acknowledgement(
        &self,
        acknowledged: &mpsc::Receiver<Result<(), PublishError>>,
    ) -> Option<Result<(), PublishError>> {
        const GRACE: Duration = Duration::from_secs(15);
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
                        if since.elapsed() > GRACE {
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

    /// Stores, per partition, the offset after the batch's last record. Fails only for
    /// partitions revoked meanwhile, whose new owner redelivers those records.
    fn store_offsets(&self, batch: &[OwnedMessage]) {
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for message in batch {
            let offset = next.entry(message.partition()).or_default();
            *offset = (*offset).max(message.offset() + 1);
        }
        let mut offsets = TopicPartitionList::new();
        for (partition, offset) in next {
            if let Err(error) =
                offsets.add_partition_offset(self.topic(), partition, Offset::Offset(offset))
            {
                warn!(
                    "cannot store offset {offset} of {}/{partition}: {error}",
                    self.topic()
                );
            }
        }
        if let Err(error) = self.consumer.store_offsets(&offsets) {
            info!(
                "offsets of {} not stored (partition revoked?): {error}",
                describe_batch(batch)
            );
        }
    }
}

/// Where a batch's records are: `topic/partition@first-last` for each partition.
fn describe_batch(batch: &[OwnedMessage]) -> String {
    let mut ranges: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for message in batch {
        let range = ranges
            .entry(message.partition())
            .or_insert((message.offset(), message.offset()));
        range.0 = range.0.min(message.offset());
        range.1 = range.1.max(message.offset());
    }
    let topic = batch.first().map(|m| m.topic()).unwrap_or_default();
    let parts: Vec<String> = ranges
        .iter()
        .map(|(partition, (first, last))| format!("{topic}/{partition}@{first}-{last}"))
        .collect();
    parts.join(", ")
}

/// A record key (by contract the command id) fit for a log line: at most 64
/// characters, control characters escaped, so a hostile key cannot forge lines.
fn printable_key(key: Option<&[u8]>) -> String {
    match key {
        None | Some([]) => "(no key)".to_string(),
        Some(bytes) => {
            let text = String::from_utf8_lossy(bytes);
            let shortened: String = text.chars().take(64).collect();
            let escaped = shortened.escape_debug().to_string();
            if text.chars().count() > 64 {
                format!("{escaped}…")
            } else {
                escaped
            }
        }
    }
}

fn account_record(id: Uuid, answer: AccountCreationOutcome) -> OutputRecord {
    match answer {
        AccountCreationOutcome::Confirmed {
            iban,
            token,
            account_type,
        } => OutputRecord::AccountCreationConfirmed {
            id,
            iban,
            token,
            a_type: account_type,
        },
        AccountCreationOutcome::Failed { reason } => {
            OutputRecord::AccountCreationFailed { id, reason }
        }
    }
}

fn transfer_record(id: Uuid, failure: Option<String>) -> OutputRecord {
    match failure {
        None => OutputRecord::MoneyTransferConfirmed { id },
        Some(reason) => OutputRecord::MoneyTransferFailed { id, reason },
    }
}
