//! Waiting with a deadline, and proving that nothing more comes.
//!
//! "Nothing more comes" is never a quiet window: [`TestEnv::barrier`] sends a command
//! last on every partition of the money transfer topic, waits for its answers and for
//! the handlers' group to have stored the offsets past it (so every earlier record was
//! applied and its answers acknowledged by Kafka), then for the outbox to be empty (so
//! every BalanceChanged event was acknowledged too), and then reads each output
//! partition up to its end. What the test has read then is everything the handler will
//! ever write for those commands.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use uuid::Uuid;

use crate::harness::{TestEnv, TransferCmd, WAIT};

/// The one deadline loop of the tests: calls `attempt` every `interval` until it gives
/// its value, failing the test after `limit` with `what` and what the last attempt
/// said it saw instead.
pub fn poll_until<T>(
    what: &str,
    limit: Duration,
    interval: Duration,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let seen = match attempt() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; last seen:\n{seen}"
        );
        std::thread::sleep(interval);
    }
}

/// Polls `done` every 50 ms until it holds, failing the test with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    poll_until(what, limit, Duration::from_millis(50), || {
        if done() {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
}

/// An IBAN no account has: a transfer from it is refused and changes nothing.
const NOBODY: &str = "NL00BARR0000000000";

impl TestEnv {
    /// Sends a barrier command to every partition of the money transfer topic and
    /// returns once the handlers of this test's group acknowledged everything before
    /// it and every output written meanwhile has been read (see the module doc). The
    /// barrier commands are refused transfers: no balance, event or account changes.
    pub fn barrier(&mut self) {
        let group = self.group.clone();
        self.barrier_for(&group);
    }

    /// [`TestEnv::barrier`] for the handlers of consumer group `group`.
    pub fn barrier_for(&mut self, group: &str) {
        let topic = self.topics.cmt.clone();
        let barriers: Vec<TransferCmd> = (0..self.partitions)
            .map(|partition| {
                let command = TransferCmd::new("", 1, NOBODY, NOBODY);
                self.send_transfer_to_partition(&command, Some(partition));
                command
            })
            .collect();
        self.flush();
        // The barriers are the last records: the end of each partition is past them.
        let ends = self.ends_of(&topic);
        self.await_answers(&barriers.iter().map(|c| c.id).collect::<Vec<Uuid>>());
        let stored = ClientConfig::new()
            .set("bootstrap.servers", &self.stack.brokers)
            .set("group.id", group)
            .create::<BaseConsumer>()
            .expect("a client to read the group's offsets");
        let mut positions = TopicPartitionList::new();
        for (partition, _) in &ends {
            positions
                .add_partition(&topic, *partition)
                .set_offset(Offset::Stored)
                .unwrap();
        }
        wait_until(
            &format!("group {group} to store the offsets past the barriers"),
            WAIT,
            || {
                let Ok(committed) =
                    stored.committed_offsets(positions.clone(), Duration::from_secs(10))
                else {
                    return false;
                };
                ends.iter().all(|(partition, end)| {
                    matches!(
                        committed.find_partition(&topic, *partition).map(|e| e.offset()),
                        Some(Offset::Offset(at)) if at >= *end
                    )
                })
            },
        );
        self.await_empty_outbox();
        self.read_to_the_end();
    }

    /// Waits until the publisher has had Kafka acknowledge every event committed.
    pub fn await_empty_outbox(&self) {
        use diesel::prelude::*;
        let mut db = self.admin_db();
        poll_until(
            "the outbox to be published",
            WAIT,
            Duration::from_millis(20),
            || {
                let left: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>(
                    "SELECT count(*) FROM cmt_balance_changed",
                )
                .get_result(&mut db)
                .map_err(|e| e.to_string())?;
                if left == 0 {
                    Ok(())
                } else {
                    Err(format!("{left} events unpublished"))
                }
            },
        );
    }

    /// Per partition of `topic`, the offset after its last record.
    fn ends_of(&self, topic: &str) -> Vec<(i32, i64)> {
        (0..self.partitions)
            .map(|partition| (partition, self.high_watermark(topic, partition)))
            .collect()
    }

    /// Reads every output partition up to the end it has now.
    fn read_to_the_end(&mut self) {
        let mut ends: HashMap<(String, i32), i64> = HashMap::new();
        for topic in self.output_topics() {
            for (partition, end) in self.ends_of(&topic) {
                ends.insert((topic.clone(), partition), end);
            }
        }
        self.collect_until("every output up to its end", |outputs| {
            let mut read: HashMap<(&str, i32), i64> = HashMap::new();
            for output in outputs {
                let next = read.entry((&output.topic, output.partition)).or_default();
                *next = (*next).max(output.offset + 1);
            }
            ends.iter().all(|((topic, partition), end)| {
                *end == 0
                    || read
                        .get(&(topic.as_str(), *partition))
                        .copied()
                        .unwrap_or(0)
                        >= *end
            })
        });
    }
}
