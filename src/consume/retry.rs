//! How a stage that did not succeed ends: tried again after a backoff, or the loop
//! stops (for shutdown, or for good with a non-zero exit).

use std::fmt;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::backoff::{self, Backoff};
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
/// the fifth on), and the heartbeat kept beating while waiting.
pub(crate) struct Retries<'a> {
    pub shutdown: &'a AtomicBool,
    pub heartbeat: &'a Heartbeat,
    /// Each failed attempt is counted under this topic.
    pub metrics: &'a Metrics,
    pub topic: &'a str,
}

impl Retries<'_> {
    /// Runs `attempt` until it succeeds, is fatal, or shutdown is asked; `what` names
    /// the work in log lines (made only when an attempt fails).
    pub fn run<T, E: fmt::Display>(
        &self,
        what: impl Fn() -> String,
        mut attempt: impl FnMut() -> Result<T, Attempt<E>>,
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
            if !backoff::sleep_unless_shutdown(delay, self.shutdown, || self.heartbeat.beat()) {
                return Err(Interrupted::Shutdown);
            }
        }
    }
}
