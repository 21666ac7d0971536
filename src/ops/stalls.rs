//! Partitions whose batch is being retried: since when and why. The consumer loops
//! report here; the metrics expose how long each has been retrying, and readiness
//! names those stalled for longer than [`STALLED_AFTER`], so that a partition stuck
//! behind a failure that does not pass is seen, not only counted.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A retry shorter than this is an outage being ridden out, not yet a stall.
pub(crate) const STALLED_AFTER: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(crate) struct Stalls {
    retrying: Mutex<BTreeMap<(String, i32), Stall>>,
}

/// A partition retrying its batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stall {
    pub since: Instant,
    /// The latest failure.
    pub why: String,
}

impl Stalls {
    /// These partitions of `topic` failed an attempt at their batch.
    pub fn retrying(&self, topic: &str, partitions: &[i32], why: &str) {
        let mut retrying = self.lock();
        for partition in partitions {
            retrying
                .entry((topic.to_string(), *partition))
                .and_modify(|stall| why.clone_into(&mut stall.why))
                .or_insert_with(|| Stall {
                    since: Instant::now(),
                    why: why.to_string(),
                });
        }
    }

    /// These partitions of `topic` got past their failure (or are no longer this
    /// instance's).
    pub fn resolved(&self, topic: &str, partitions: &[i32]) {
        let mut retrying = self.lock();
        for partition in partitions {
            retrying.remove(&(topic.to_string(), *partition));
        }
    }

    /// Every partition retrying now, with its stall.
    pub fn now(&self) -> Vec<((String, i32), Stall)> {
        self.lock()
            .iter()
            .map(|(at, stall)| (at.clone(), stall.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, i32), Stall>> {
        self.retrying
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_keeps_its_start_until_resolved() {
        let stalls = Stalls::default();
        stalls.retrying("t", &[0, 1], "down");
        let first = stalls.now();
        stalls.retrying("t", &[0], "still down");
        let second = stalls.now();
        assert_eq!(first[0].1.since, second[0].1.since);
        assert_eq!(second[0].1.why, "still down");
        stalls.resolved("t", &[0]);
        let left: Vec<(String, i32)> = stalls.now().into_iter().map(|(at, _)| at).collect();
        assert_eq!(left, [("t".to_string(), 1)]);
    }
}
