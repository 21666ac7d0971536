//! The publisher thread: stands by until this instance holds the outbox's lock, then
//! reads → hands to the producer thread → waits for Kafka's acknowledgement → deletes
//! what was acknowledged, batch after batch, in `seq` order (see the module above).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use diesel::pg::PgConnection;
use log::{debug, info, warn};

use crate::backoff::Backoff;
use crate::db::outbox;
use crate::db::{Database, DbError};
use crate::domain::BalanceChange;
use crate::ops::metrics::Metrics;
use crate::produce::{Outbound, PublishError, PublishRequest};
use crate::wire::OutputRecord;

/// Sizes and delays of the publisher.
#[derive(Clone, Debug)]
pub(crate) struct PublisherPolicy {
    /// The most events one read takes, and so one batch publishes.
    pub batch_size: i64,
    /// How often an instance standing by asks whether the publisher's lock is free: the
    /// longest a successor takes to start once the publisher's session ended.
    pub standby_poll: Duration,
    /// How often an idle publisher looks for notifications from other instances.
    pub notification_poll: Duration,
    /// How often an idle publisher reads the outbox anyway.
    pub idle_read: Duration,
    /// How long events Kafka acknowledged may wait for the next read to delete them.
    pub delete_published_within: Duration,
    /// The first and the longest delay before sending again what Kafka refused.
    pub retry_first: Duration,
    pub retry_max: Duration,
    /// How long a stopping publisher waits for Kafka to acknowledge its last batch.
    pub stopping_grace: Duration,
}

impl Default for PublisherPolicy {
    fn default() -> Self {
        PublisherPolicy {
            batch_size: 500,
            standby_poll: Duration::from_millis(100),
            notification_poll: Duration::from_millis(5),
            idle_read: Duration::from_secs(1),
            delete_published_within: Duration::from_millis(100),
            retry_first: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            stopping_grace: Duration::from_secs(15),
        }
    }
}

/// What the publisher is made of.
pub(crate) struct PublisherParts {
    pub database: Database,
    pub publish: mpsc::Sender<PublishRequest>,
    /// The `balance_changed` topic.
    pub topic: Arc<str>,
    pub shutdown: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
}

/// How a stopped publisher leaves its lock. When Kafka had not acknowledged its last
/// batch, the session (and so the lock) is held until the producer thread has flushed,
/// so that no successor publishes those events again before the producer delivered
/// them; otherwise there is nothing to hold.
pub(crate) struct Handover {
    /// Held only to be dropped later.
    _session: Option<PgConnection>,
}

/// Why the publisher stopped for good; the handler stops with it.
#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    #[error("publishing BalanceChanged events failed for good: {0}")]
    Fatal(String),
}

/// How a turn as the publisher ended.
enum Turn {
    /// The loops stopped and the outbox is published, or left to a successor.
    Stopped,
    /// The loops stopped while Kafka had not acknowledged the last batch.
    StoppedUnacknowledged,
    /// The session broke: this instance stands by again.
    Lost(String),
}

/// What became of one batch handed to the producer.
enum Delivery {
    Acknowledged,
    /// Kafka acknowledged the events before this position; not this one.
    AcknowledgedUpTo {
        first_refused: usize,
        /// Some were refused for their size.
        too_large: bool,
        why: String,
    },
    /// Stopping, and the acknowledgement did not come within the grace.
    GaveUp,
}

pub(crate) struct BalancePublisher {
    database: Database,
    publish: mpsc::Sender<PublishRequest>,
    topic: Arc<str>,
    shutdown: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    policy: PublisherPolicy,
    /// Shared with the loops' [`super::OutboxSignal`].
    leading: Arc<AtomicBool>,
    /// The loops' wake-ups; disconnected once every loop stopped.
    woken: mpsc::Receiver<()>,
    /// Since when the loops have stopped: the publisher publishes what is left for at
    /// most the grace, then leaves the rest to a successor.
    loops_stopped_at: Option<Instant>,
    /// When the handler began stopping, as the publisher first saw it.
    shutdown_seen_at: Option<Instant>,
}

impl BalancePublisher {
    pub(super) fn new(
        parts: PublisherParts,
        leading: Arc<AtomicBool>,
        woken: mpsc::Receiver<()>,
    ) -> Self {
        BalancePublisher {
            database: parts.database,
            publish: parts.publish,
            topic: parts.topic,
            shutdown: parts.shutdown,
            metrics: parts.metrics,
            policy: PublisherPolicy::default(),
            leading,
            woken,
            loops_stopped_at: None,
            shutdown_seen_at: None,
        }
    }

    /// Runs until the loops stopped (Ok) or publishing cannot go on (Err).
    pub fn run(mut self) -> Result<Handover, PublisherError> {
        // Across turns: a session that keeps breaking is not taken up again at once.
        let mut turns = Backoff::new(self.policy.retry_first, self.policy.retry_max);
        loop {
            let Some(mut session) = self.become_publisher() else {
                return Ok(Handover { _session: None });
            };
            self.set_leading(true);
            info!("publishing the outbox's BalanceChanged events (this instance holds its lock)");
            let began = Instant::now();
            let turn = self.publish_outbox(&mut session);
            self.set_leading(false);
            match turn? {
                Turn::Stopped => {
                    // Ending the session frees the lock too; this is only sooner.
                    if let Err(error) = outbox::resign(&mut session) {
                        debug!("releasing the outbox lock: {error}");
                    }
                    info!("stopped publishing BalanceChanged events");
                    return Ok(Handover { _session: None });
                }
                Turn::StoppedUnacknowledged => {
                    info!(
                        "stopped publishing BalanceChanged events; the outbox lock is held \
                         until the producer has flushed"
                    );
                    return Ok(Handover {
                        _session: Some(session),
                    });
                }
                Turn::Lost(why) => {
                    if began.elapsed() > Duration::from_secs(60) {
                        turns = Backoff::new(self.policy.retry_first, self.policy.retry_max);
                    }
                    let delay = turns.next_delay();
                    warn!(
                        "stopped publishing BalanceChanged events ({why}); whichever instance \
                         reaches PostgreSQL first takes over (this one in {delay:?} at the \
                         earliest)"
                    );
                    self.pause(delay);
                }
            }
        }
    }

    fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Release);
        self.metrics.balance_publisher(leading);
    }

    /// Waits until this instance holds the publisher's lock, on a session of its own;
    /// None when the loops stopped first.
    fn become_publisher(&mut self) -> Option<PgConnection> {
        let mut backoff = Backoff::new(self.policy.standby_poll, self.policy.retry_max);
        let mut session: Option<PgConnection> = None;
        let mut said_standing_by = false;
        while !self.loops_stopped() {
            let attempt = match session.as_mut() {
                Some(conn) => outbox::try_lead(conn).map_err(DbError::from),
                None => self.database.session().and_then(|conn| {
                    let conn = session.insert(conn);
                    Ok(outbox::try_lead(conn)?)
                }),
            };
            let wait = match attempt {
                Ok(true) => {
                    if let Some(conn) = session.as_mut()
                        && let Err(error) = outbox::detect_a_lost_client_soon(conn)
                    {
                        debug!("setting the publisher session's keepalives: {error}");
                    }
                    return session;
                }
                Ok(false) => {
                    if !said_standing_by {
                        info!("another instance publishes the BalanceChanged events; standing by");
                        said_standing_by = true;
                    }
                    self.policy.standby_poll
                }
                Err(error) => {
                    session = None;
                    let delay = backoff.next_delay();
                    warn!(
                        "cannot reach PostgreSQL to publish BalanceChanged events, retrying in \
                         {delay:?}: {error}"
                    );
                    delay
                }
            };
            self.pause(wait);
        }
        None
    }

    /// This instance's turn as the publisher: batch after batch until the loops stop
    /// and the outbox is empty, or the session breaks.
    fn publish_outbox(&mut self, session: &mut PgConnection) -> Result<Turn, PublisherError> {
        if let Err(error) = outbox::listen(session) {
            return Ok(self.lost(error));
        }
        // Acknowledged by Kafka, deleted by the next read.
        let mut published: Vec<i64> = Vec::new();
        let mut backoff = Backoff::new(self.policy.retry_first, self.policy.retry_max);
        loop {
            self.look_whether_the_loops_stopped();
            if self
                .loops_stopped_at
                .is_some_and(|at| at.elapsed() >= self.policy.stopping_grace)
            {
                // Forget what was acknowledged; the rest waits for a successor.
                return match outbox::take_published_and_read_next(session, &published, 0) {
                    Ok(_) => Ok(Turn::Stopped),
                    Err(error) => Ok(self.lost(error)),
                };
            }
            let (seqs, events): (Vec<i64>, Vec<BalanceChange>) =
                match outbox::take_published_and_read_next(
                    session,
                    &published,
                    self.policy.batch_size,
                ) {
                    Ok(rows) => rows.into_iter().map(|row| (row.seq, row.event)).unzip(),
                    Err(error) => return Ok(self.lost(error)),
                };
            published.clear();
            if events.is_empty() {
                if self.loops_stopped() {
                    return Ok(Turn::Stopped);
                }
                self.wait_for_events(session, self.policy.idle_read);
                continue;
            }
            let read_all = seqs.len() < self.policy.batch_size as usize;
            let acknowledged = match self.deliver(events)? {
                Delivery::Acknowledged => {
                    backoff = Backoff::new(self.policy.retry_first, self.policy.retry_max);
                    seqs.len()
                }
                Delivery::AcknowledgedUpTo {
                    first_refused,
                    too_large,
                    why,
                } => {
                    let delay = backoff.next_delay();
                    let size = if too_large {
                        " (one is larger than the topic accepts: raise its max.message.bytes; \
                         until then no later event is published)"
                    } else {
                        ""
                    };
                    warn!(
                        "Kafka did not acknowledge {} BalanceChanged events{size}, sending them \
                         again in order in {delay:?}: {why}",
                        seqs.len() - first_refused
                    );
                    self.pause(delay);
                    first_refused
                }
                // Unknown which were acknowledged: all stay for the next publisher, which
                // must not send them before the producer has flushed.
                Delivery::GaveUp => return Ok(Turn::StoppedUnacknowledged),
            };
            self.metrics.balance_events_published(acknowledged);
            published.extend_from_slice(&seqs[..acknowledged]);
            if read_all && acknowledged == seqs.len() && !self.loops_stopped() {
                // The read took all there was: wait a little for more before reading
                // again, and delete these with that read (under load, one query per
                // wake-up, not two; after a crash meanwhile the next publisher sends
                // them again, in order).
                self.wait_for_events(session, self.policy.delete_published_within);
            }
            if self.loops_stopped() && acknowledged < seqs.len() {
                // Stopping: forget what was acknowledged; the rest waits for a successor.
                return match outbox::take_published_and_read_next(session, &published, 0) {
                    Ok(_) => Ok(Turn::Stopped),
                    Err(error) => Ok(self.lost(error)),
                };
            }
        }
    }

    fn lost(&self, error: diesel::result::Error) -> Turn {
        Turn::Lost(self.database.scrub(&error.to_string()))
    }

    /// Hands the events, in `seq` order, to the producer thread and waits for Kafka:
    /// without limit while running (the producer reports every record within its
    /// message timeout), at most the grace once the handler is stopping.
    fn deliver(&mut self, events: Vec<BalanceChange>) -> Result<Delivery, PublisherError> {
        let count = events.len();
        let records = events
            .into_iter()
            .map(|event| {
                // Keyed by IBAN, as the JVM handler does: one account, one partition.
                let key = event.iban.clone().into_bytes();
                Outbound::record(&self.topic, key, OutputRecord::BalanceChanged(event))
            })
            .collect();
        let (done, report) = mpsc::sync_channel(1);
        let producer_gone = || PublisherError::Fatal("the producer thread stopped".into());
        self.publish
            .send(PublishRequest {
                records: Arc::new(records),
                done,
            })
            .map_err(|_| producer_gone())?;
        loop {
            match report.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(_)) => return Ok(Delivery::Acknowledged),
                Ok(Err(PublishError::Retry {
                    unacknowledged,
                    too_large,
                    why,
                })) => {
                    return Ok(Delivery::AcknowledgedUpTo {
                        first_refused: unacknowledged.first().copied().unwrap_or(0),
                        too_large: !too_large.is_empty(),
                        why,
                    });
                }
                Ok(Err(PublishError::Fatal(why))) => return Err(PublisherError::Fatal(why)),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.shutdown.load(Ordering::Acquire) {
                        // One grace for the whole shutdown, not one per batch.
                        let since = *self.shutdown_seen_at.get_or_insert_with(Instant::now);
                        if since.elapsed() >= self.policy.stopping_grace {
                            warn!(
                                "stopping without Kafka's acknowledgement of {} BalanceChanged \
                                 events; the next publisher sends them again",
                                count
                            );
                            return Ok(Delivery::GaveUp);
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(producer_gone()),
            }
        }
    }

    /// Idle and publishing: returns when a loop of this instance committed events,
    /// another instance's transaction notified this session, or `at_most` has passed.
    fn wait_for_events(&mut self, session: &mut PgConnection, at_most: Duration) {
        let read_anyway_at = Instant::now() + at_most;
        while !self.idle(self.policy.notification_poll) {
            // A broken session shows at the next read.
            if outbox::woken(session).unwrap_or(true) || Instant::now() >= read_anyway_at {
                return;
            }
        }
    }

    /// Waits `duration` (a retry's delay), unless the loops stop.
    fn pause(&mut self, duration: Duration) {
        let until = Instant::now() + duration;
        while !self.loops_stopped() {
            let now = Instant::now();
            if now >= until {
                return;
            }
            self.idle(until - now);
        }
    }

    /// Waits up to `duration` for a wake-up from a loop of this instance; true when one
    /// came or the loops stopped (noted).
    fn idle(&mut self, duration: Duration) -> bool {
        match self.woken.recv_timeout(duration) {
            Ok(()) => true,
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.note_loops_stopped();
                true
            }
        }
    }

    /// Without waiting: notes whether every loop stopped.
    fn look_whether_the_loops_stopped(&mut self) {
        if let Err(mpsc::TryRecvError::Disconnected) = self.woken.try_recv() {
            self.note_loops_stopped();
        }
    }

    fn note_loops_stopped(&mut self) {
        self.loops_stopped_at.get_or_insert_with(Instant::now);
    }

    fn loops_stopped(&self) -> bool {
        self.loops_stopped_at.is_some()
    }
}
