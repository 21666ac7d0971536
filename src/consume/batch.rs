//! A batch as it moves through the stages: the records polled, what each became
//! ([`Decoded`]), and what to publish once applied ([`Applied`]). Each stage takes the
//! previous one's value and gives the next. A batch owns its records (copied out of
//! the consumer's buffers), so it can wait for its acknowledgement in the
//! [`super::pipeline`] while the loop polls and applies the next one.

use std::collections::BTreeMap;
use std::time::Instant;

use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use crate::ops::metrics::BatchTally;
use crate::produce::Outbound;

/// A poll's worth of records of one topic.
pub(crate) struct Batch {
    pub records: Vec<OwnedMessage>,
    pub polled_at: Instant,
}

/// What one record became before the database.
pub(crate) enum Intake<C> {
    Command(C),
    /// Not a command: dead-lettered with this reason.
    DeadLetter(String),
}

/// Stage 1's result: one intake per record, in record order.
pub(crate) struct Decoded<C> {
    pub intake: Vec<Intake<C>>,
}

/// Stage 2's result: what to publish, in record order; what the batch came to.
pub(crate) struct Applied {
    pub outbound: Vec<Outbound>,
    pub tally: BatchTally,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The partitions the batch's records are from, in order.
    pub fn partitions(&self) -> Vec<i32> {
        let mut partitions: Vec<i32> = self.records.iter().map(|r| r.partition()).collect();
        partitions.sort_unstable();
        partitions.dedup();
        partitions
    }

    /// The offsets to store once the batch is acknowledged: per partition, the one
    /// after its last record.
    pub fn next_offsets(&self) -> Vec<(i32, i64)> {
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for record in &self.records {
            let offset = next.entry(record.partition()).or_default();
            *offset = (*offset).max(record.offset() + 1);
        }
        next.into_iter().collect()
    }

    /// [`Batch::next_offsets`] as the consumer takes them.
    pub fn offsets_to_store(&self, topic: &str) -> TopicPartitionList {
        let next = self.next_offsets();
        let mut offsets = TopicPartitionList::with_capacity(next.len());
        for (partition, offset) in next {
            // Cannot fail: the offset is a plain position.
            let _ = offsets.add_partition_offset(topic, partition, Offset::Offset(offset));
        }
        offsets
    }

    /// Where the batch's records are: `topic/partition@first-last` for each partition.
    pub fn describe(&self) -> String {
        let mut ranges: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
        for record in &self.records {
            let range = ranges
                .entry(record.partition())
                .or_insert((record.offset(), record.offset()));
            range.0 = range.0.min(record.offset());
            range.1 = range.1.max(record.offset());
        }
        let topic = self.records.first().map(|m| m.topic()).unwrap_or_default();
        let parts: Vec<String> = ranges
            .iter()
            .map(|(partition, (first, last))| format!("{topic}/{partition}@{first}-{last}"))
            .collect();
        parts.join(", ")
    }
}

/// Where a record is, `topic/partition@offset`, written only when a line is logged.
pub(crate) struct At<'a, M>(pub &'a M);

impl<M: Message> std::fmt::Display for At<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let record = self.0;
        write!(
            f,
            "{}/{}@{}",
            record.topic(),
            record.partition(),
            record.offset()
        )
    }
}

/// A record key (by contract the command id) fit for a log line: at most 64
/// characters, control characters escaped, so a hostile key cannot forge lines.
pub(crate) fn printable_key(key: Option<&[u8]>) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_log_lines_are_short_and_cannot_forge_lines() {
        assert_eq!(printable_key(None), "(no key)");
        assert_eq!(printable_key(Some(b"abc")), "abc");
        assert_eq!(printable_key(Some(b"a\nb")), "a\\nb");
        let long = "x".repeat(100);
        assert_eq!(
            printable_key(Some(long.as_bytes())),
            format!("{}…", "x".repeat(64))
        );
    }
}
