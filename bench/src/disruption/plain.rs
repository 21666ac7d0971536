//! The floor of a broker scenario: the same broker action under a plain librdkafka
//! producer and consumer and no handler. The producer sends a small record per tick of
//! the scenario's rate, round-robin over the partitions of a topic of its own; the
//! consumer, in a group of its own, reads them; each record's latency runs from its
//! sending to its reading. librdkafka's defaults throughout, except what the handler's
//! producer sets too (acks=all, idempotence) and the consumer starting from the
//! beginning of the new topic (it is assigned before the first record is sent).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, ThreadedProducer};
use rdkafka::{ClientConfig, Message};

use super::timeline::Subject;
use crate::client::Stack;
use crate::floor::{Acknowledgements, short_id};
use crate::workload::PARTITIONS;

pub struct PlainPair {
    topic: String,
    producer: ThreadedProducer<Acknowledgements>,
    acknowledgements: Receiver<Result<(), String>>,
    reads: Receiver<(usize, Instant)>,
    stop: Arc<AtomicBool>,
    consumer: Option<JoinHandle<()>>,
    /// When record `k` was first read.
    first_read: Vec<Option<Instant>>,
    /// When each record was read, repeats too.
    pub read_at: Vec<Instant>,
    pub duplicates: usize,
    /// Records the producer gave up on.
    pub delivery_errors: Vec<String>,
}

impl PlainPair {
    /// A producer and a consumer on `topic`, once the consumer holds every partition.
    pub fn start(stack: &Stack, topic: &str) -> Result<PlainPair, String> {
        let (acknowledged, acknowledgements) = mpsc::channel();
        let producer: ThreadedProducer<Acknowledgements> = ClientConfig::new()
            .set("bootstrap.servers", stack.get("KAFKA_BROKERS"))
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .create_with_context(Acknowledgements(Mutex::new(acknowledged)))
            .map_err(|e| format!("plain producer: {e}"))?;
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", stack.get("KAFKA_BROKERS"))
            .set("group.id", format!("bench-plain-{}", short_id()))
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e| format!("plain consumer: {e}"))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| format!("subscribe to {topic}: {e}"))?;
        let (ready, assigned) = mpsc::channel();
        let (read, reads) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut ready = Some(ready);
            while !stopping.load(Ordering::Acquire) {
                let polled = consumer.poll(Duration::from_millis(50));
                let read_at = Instant::now();
                if ready.is_some()
                    && consumer
                        .assignment()
                        .is_ok_and(|a| a.count() == PARTITIONS as usize)
                {
                    let _ = ready.take().unwrap().send(());
                }
                // Errors are transient here (a broker gone), or the topic going away.
                let Some(Ok(message)) = polled else { continue };
                let k = message
                    .payload()
                    .and_then(|p| std::str::from_utf8(p).ok())
                    .and_then(|p| p.parse::<usize>().ok());
                if let Some(k) = k
                    && read.send((k, read_at)).is_err()
                {
                    return;
                }
            }
        });
        let pair = PlainPair {
            topic: topic.to_string(),
            producer,
            acknowledgements,
            reads,
            stop,
            consumer: Some(thread),
            first_read: Vec::new(),
            read_at: Vec::new(),
            duplicates: 0,
            delivery_errors: Vec::new(),
        };
        assigned
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| format!("the plain consumer was not assigned {topic} within 60 s"))?;
        Ok(pair)
    }

    /// Records sent and not read (so far).
    pub fn lost(&self) -> usize {
        self.first_read.iter().filter(|r| r.is_none()).count()
    }
}

impl Subject for PlainPair {
    fn send(&mut self, k: usize) {
        self.first_read.push(None);
        let payload = k.to_string();
        let record = BaseRecord::<(), _>::to(&self.topic)
            .payload(&payload)
            .partition((k % PARTITIONS as usize) as i32);
        if let Err((e, _)) = self.producer.send(record) {
            self.delivery_errors
                .push(format!("record {k} not queued: {e}"));
        }
    }

    fn take(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while let Ok((k, read_at)) = self
            .reads
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.read_at.push(read_at);
            match self.first_read.get_mut(k) {
                Some(first @ None) => *first = Some(read_at),
                Some(Some(_)) => self.duplicates += 1,
                None => {}
            }
        }
        while let Ok(acknowledgement) = self.acknowledgements.try_recv() {
            if let Err(e) = acknowledgement {
                self.delivery_errors.push(e);
            }
        }
    }

    fn first_answer(&self, k: usize) -> Option<Instant> {
        self.first_read.get(k).copied().flatten()
    }
}

impl Drop for PlainPair {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.consumer.take() {
            let _ = thread.join();
        }
    }
}
