//! The consumer loops' sign of life, which liveness reads.

use std::time::{Duration, Instant};

/// When a consumer loop last showed it is not stuck. It beats while polling, while
/// waiting out a backoff and while waiting for Kafka's acknowledgements, so only a call
/// that never returns (a statement blocked on a lock forever, a hung connection) lets
/// it go stale; liveness then fails and the orchestrator restarts the process.
pub struct Heartbeat {
    last: std::sync::Mutex<Instant>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            last: std::sync::Mutex::new(Instant::now()),
        }
    }
}

impl Heartbeat {
    pub fn beat(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    pub fn silent_for(&self) -> Duration {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }
}
