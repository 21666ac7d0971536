//! Waiting without missing a shutdown: the one helper for the consumer loops' retries,
//! start-up's waits for its dependencies and the readiness prober's pauses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How often a wait looks at the shutdown flag (and calls its `between`).
const SLICE: Duration = Duration::from_millis(50);

/// Sleeps for `duration` in short slices, calling `between` before each (a heartbeat,
/// say); false as soon as `shutdown` is raised, true once the time is up.
pub fn sleep_unless_shutdown(
    duration: Duration,
    shutdown: &AtomicBool,
    mut between: impl FnMut(),
) -> bool {
    let until = Instant::now() + duration;
    loop {
        if shutdown.load(Ordering::Acquire) {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        between();
        thread::sleep((until - now).min(SLICE));
    }
}

/// Delays between attempts at the same work: from `first`, doubling, capped at `max`.
pub struct Backoff {
    delay: Duration,
    max: Duration,
    attempts: u32,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            delay: first,
            max,
            attempts: 0,
        }
    }

    /// Counts a failed attempt; the delay to wait before the next one.
    pub fn next_delay(&mut self) -> Duration {
        self.attempts += 1;
        let delay = self.delay;
        self.delay = (self.delay * 2).min(self.max);
        delay
    }

    /// Failed attempts so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<u128> = (0..4).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        assert_eq!(backoff.attempts(), 4);
    }

    #[test]
    fn a_raised_shutdown_ends_the_wait_at_once() {
        let shutdown = AtomicBool::new(true);
        let started = Instant::now();
        assert!(!sleep_unless_shutdown(
            Duration::from_secs(60),
            &shutdown,
            || {}
        ));
        assert!(started.elapsed() < Duration::from_secs(1));
        let calm = AtomicBool::new(false);
        let mut beats = 0;
        assert!(sleep_unless_shutdown(
            Duration::from_millis(120),
            &calm,
            || beats += 1
        ));
        assert!(beats >= 2, "{beats}");
    }
}
