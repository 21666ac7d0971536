//! The pipeline on a fake producer thread whose acknowledgements the test scripts: the
//! order batches complete in, what is sent again after a partial failure, and what is
//! dropped when a batch cannot be completed.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Timestamp, TopicPartitionList};

use super::*;
use crate::consume::retry::{Membership, RetryPolicy};
use crate::ops::heartbeat::Heartbeat;
use crate::ops::metrics::Metrics;

/// A producer thread that answers each publish as scripted, and keeps what it was sent.
#[derive(Default)]
struct ScriptedProducer {
    /// Per publish, in order: the outcome to report, or None to never answer.
    script: Mutex<VecDeque<Option<Result<Acknowledged, PublishError>>>>,
    /// The keys of each publish's records.
    sent: Mutex<Vec<Vec<String>>>,
    /// Unanswered publishes stay unanswered, not disconnected.
    silent: Mutex<Vec<mpsc::SyncSender<Result<Acknowledged, PublishError>>>>,
}

impl ScriptedProducer {
    fn answering(script: Vec<Option<Result<Acknowledged, PublishError>>>) -> Self {
        ScriptedProducer {
            script: Mutex::new(script.into()),
            ..ScriptedProducer::default()
        }
    }

    fn sent(&self) -> Vec<Vec<String>> {
        self.sent.lock().unwrap().clone()
    }
}

impl Publish for &ScriptedProducer {
    fn publish(&self, records: Arc<Vec<Outbound>>) -> Result<Acknowledgement, LoopError> {
        let keys = records
            .iter()
            .map(|r| String::from_utf8(r.key.clone().unwrap()).unwrap())
            .collect();
        self.sent.lock().unwrap().push(keys);
        let (done, acknowledgement) = mpsc::sync_channel(1);
        match self.script.lock().unwrap().pop_front() {
            Some(Some(outcome)) => done.send(outcome).unwrap(),
            Some(None) => self.silent.lock().unwrap().push(done),
            None => panic!("published more often than scripted"),
        }
        Ok(acknowledgement)
    }
}

/// A consumer that has no group to stay in.
struct NoGroup;

impl Membership for NoGroup {
    fn pause_all(&self) -> Option<TopicPartitionList> {
        None
    }
    fn keep_alive(&self, timeout: Duration) -> Option<(i32, i64)> {
        std::thread::sleep(timeout);
        None
    }
    fn resume(&self, _paused: &TopicPartitionList) {}
    fn rewind(&self, _topic: &str, _partition: i32, _offset: i64) {}
}

fn context() -> LoopContext {
    LoopContext {
        member: Arc::new(NoGroup),
        shutdown: Arc::new(AtomicBool::new(false)),
        heartbeat: Arc::new(Heartbeat::default()),
        metrics: Arc::new(Metrics::new()),
        topic: "commands".into(),
        policy: RetryPolicy {
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            hold_acknowledgement_after: Duration::from_millis(1),
            acknowledgement_grace: Duration::from_millis(50),
            poll_slice: Duration::from_millis(1),
        },
    }
}

fn record(key: &str, offset: i64, value_size: usize) -> OwnedMessage {
    OwnedMessage::new(
        Some(vec![0xab; value_size]),
        Some(key.as_bytes().to_vec()),
        "commands".into(),
        Timestamp::NotAvailable,
        0,
        offset,
        None,
    )
}

/// A batch of records keyed `name0`, `name1`, ... at `first_offset` on, each answered by
/// one record with the same key (a dead letter: it needs no registry).
fn batch(name: &str, first_offset: i64, records: usize) -> (Batch, Applied) {
    let records: Vec<OwnedMessage> = (0..records)
        .map(|i| record(&format!("{name}{i}"), first_offset + i as i64, 8))
        .collect();
    let topic: Arc<str> = Arc::from("dead-letters");
    let outbound = records
        .iter()
        .map(|r| Outbound::dead_letter(&topic, usize::MAX, r, "test"))
        .collect();
    let applied = Applied {
        outbound,
        tally: BatchTally::default(),
    };
    let batch = Batch {
        records,
        polled_at: Instant::now(),
    };
    (batch, applied)
}

/// A pipeline on `producer` with `batches` (name, records) handed over in order, their
/// offsets following each other from 0.
fn handed_over<'p>(
    producer: &'p ScriptedProducer,
    batches: &[(&str, usize)],
) -> Pipeline<&'p ScriptedProducer> {
    let mut pipeline = Pipeline::new(producer);
    let mut offset = 0;
    for (name, records) in batches {
        let (batch, applied) = batch(name, offset, *records);
        pipeline.hand_over(batch, applied).unwrap();
        offset += *records as i64;
    }
    pipeline
}

fn keys(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn next_offsets(completed: Option<Completed>) -> Vec<(i32, i64)> {
    completed.expect("a batch completed").batch.next_offsets()
}

#[test]
fn batches_complete_in_the_order_they_were_handed_over() {
    let producer = ScriptedProducer::answering(vec![
        Some(Ok(Acknowledged::now())),
        Some(Ok(Acknowledged::now())),
    ]);
    let mut pipeline = handed_over(&producer, &[("a", 2), ("b", 1)]);
    let context = context();
    assert_eq!(pipeline.len(), 2);

    assert_eq!(
        next_offsets(pipeline.complete_oldest(&context).unwrap()),
        [(0, 2)]
    );
    assert_eq!(
        next_offsets(pipeline.complete_oldest(&context).unwrap()),
        [(0, 3)]
    );
    assert!(pipeline.complete_oldest(&context).unwrap().is_none());
    assert_eq!(producer.sent(), [keys(&["a0", "a1"]), keys(&["b0"])]);
}

#[test]
fn a_partial_failure_resends_from_the_first_unacknowledged_and_the_batch_behind_in_full() {
    let retry = PublishError::Retry {
        unacknowledged: vec![1, 2],
        too_large: Vec::new(),
        why: "broker away".into(),
    };
    // a: refused from its second record on; b: got through, but behind a's refusal;
    // then a's rest and all of b again.
    let producer = ScriptedProducer::answering(vec![
        Some(Err(retry)),
        Some(Ok(Acknowledged::now())),
        Some(Ok(Acknowledged::now())),
        Some(Ok(Acknowledged::now())),
    ]);
    let mut pipeline = handed_over(&producer, &[("a", 3), ("b", 2)]);
    let context = context();

    assert_eq!(
        next_offsets(pipeline.complete_oldest(&context).unwrap()),
        [(0, 3)]
    );
    assert_eq!(
        next_offsets(pipeline.complete_oldest(&context).unwrap()),
        [(0, 5)]
    );
    assert_eq!(
        producer.sent(),
        [
            keys(&["a0", "a1", "a2"]),
            keys(&["b0", "b1"]),
            keys(&["a1", "a2"]),
            keys(&["b0", "b1"]),
        ]
    );
    // The stall the retry reported is over.
    assert!(context.metrics.stalls.now().is_empty());
}

#[test]
fn a_fatal_acknowledgement_stops_and_nothing_behind_it_completes() {
    let producer = ScriptedProducer::answering(vec![
        Some(Err(PublishError::Fatal("fenced".into()))),
        Some(Ok(Acknowledged::now())),
    ]);
    let mut pipeline = handed_over(&producer, &[("a", 1), ("b", 1)]);
    let context = context();

    match pipeline.complete_oldest(&context) {
        Err(Interrupted::Fatal(LoopError::PublishFatal(why))) => assert_eq!(why, "fenced"),
        Err(other) => panic!("not fatal: {other:?}"),
        Ok(_) => panic!("completed"),
    }
    // b must not store its offsets past a's.
    assert_eq!(pipeline.len(), 0);
}

#[test]
fn shutdown_gives_up_on_an_acknowledgement_after_the_grace_and_completes_nothing() {
    let producer = ScriptedProducer::answering(vec![None, Some(Ok(Acknowledged::now()))]);
    let mut pipeline = handed_over(&producer, &[("a", 1), ("b", 1)]);
    let context = context();
    context.shutdown.store(true, Ordering::Release);

    assert!(matches!(
        pipeline.complete_oldest(&context),
        Err(Interrupted::Shutdown)
    ));
    assert_eq!(pipeline.len(), 0);
    assert_eq!(producer.sent().len(), 2, "nothing sent again");
}

#[test]
fn a_slow_acknowledgement_shows_the_partition_stalled_until_it_comes() {
    let producer = ScriptedProducer::answering(vec![None]);
    let mut pipeline = handed_over(&producer, &[("a", 1)]);
    let context = context();
    let answer = std::thread::scope(|scope| {
        let waiter = scope.spawn(|| pipeline.complete_oldest(&context).map(|c| c.is_some()));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut shown = false;
        while !shown && Instant::now() < deadline {
            shown = !context.metrics.stalls.now().is_empty();
            std::thread::sleep(Duration::from_millis(5));
        }
        // Acknowledged either way, so that a failure ends the test rather than hangs it.
        let done = producer.silent.lock().unwrap().pop().unwrap();
        done.send(Ok(Acknowledged::now())).unwrap();
        (shown, waiter.join().unwrap())
    });
    assert!(answer.0, "the wait was never shown");
    assert!(matches!(answer.1, Ok(true)));
    assert!(context.metrics.stalls.now().is_empty());
}

#[test]
fn a_resend_starts_at_the_first_unacknowledged_and_strips_only_the_largest_refused_dead_letter() {
    let topic: Arc<str> = Arc::from("dead-letters");
    let records: Vec<Outbound> = [5, 10, 65_536, 7]
        .iter()
        .enumerate()
        .map(|(offset, &size)| {
            Outbound::dead_letter(&topic, usize::MAX, &record("k", offset as i64, size), "x")
        })
        .collect();
    // Refused together for the size of one of them; the first was acknowledged.
    let again = resend_from_first(&records, &[1, 2, 3], &[1, 2]);
    let sizes: Vec<Option<usize>> = again.iter().map(Outbound::dead_letter_size).collect();
    assert_eq!(sizes, [Some(10), None, Some(7)]);
    assert_eq!(again[0].key.as_deref(), record("k", 1, 0).key());
}
