//! The floor: what the stack itself costs a command, measured once at the start of a
//! run on the same stack. A command crosses Kafka twice (command in, answer out) and
//! takes one PostgreSQL transaction, so no handler can answer faster than two Kafka
//! round trips and one transaction; latencies are also reported as multiples of that.

use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::client::Stack;

/// Round trips measured, after `WARM_UP` that are not (connections, metadata).
const ROUND_TRIPS: usize = 300;
const WARM_UP: usize = 20;
const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Floor {
    /// Round trips measured for each figure.
    pub samples: usize,
    /// One record produced (acks=all, acknowledged) until consumed.
    pub kafka_round_trip_p50_ms: Option<f64>,
    pub kafka_round_trip_p99_ms: Option<f64>,
    /// BEGIN; UPDATE one row; INSERT one row; COMMIT.
    pub postgres_transaction_p50_ms: Option<f64>,
    pub postgres_transaction_p99_ms: Option<f64>,
    /// 2 × Kafka round trip + 1 × transaction, from the p50s.
    pub per_command_p50_ms: Option<f64>,
    /// The same from the p99s.
    pub per_command_p99_ms: Option<f64>,
}

impl Floor {
    pub fn measure(stack: &Stack) -> Floor {
        let kafka = kafka_round_trips(stack).unwrap_or_else(|e| {
            eprintln!("   floor: no Kafka round trips measured: {e}");
            Vec::new()
        });
        let postgres = postgres_transactions(stack).unwrap_or_else(|e| {
            eprintln!("   floor: no PostgreSQL transactions measured: {e}");
            Vec::new()
        });
        let per_command =
            |kafka: Option<f64>, postgres: Option<f64>| Some(2.0 * kafka? + postgres?);
        let (k50, k99) = (quantile(&kafka, 0.5), quantile(&kafka, 0.99));
        let (p50, p99) = (quantile(&postgres, 0.5), quantile(&postgres, 0.99));
        Floor {
            samples: ROUND_TRIPS,
            kafka_round_trip_p50_ms: k50,
            kafka_round_trip_p99_ms: k99,
            postgres_transaction_p50_ms: p50,
            postgres_transaction_p99_ms: p99,
            per_command_p50_ms: per_command(k50, p50),
            per_command_p99_ms: per_command(k99, p99),
        }
    }
}

/// Nearest-rank quantile of milliseconds; `None` when nothing was measured.
pub(crate) fn quantile(values: &[f64], q: f64) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted.get(rank - 1).copied()
}

pub(crate) fn short_id() -> String {
    Uuid::new_v4().simple().to_string()[..6].to_string()
}

/// On a fresh one-partition topic, deleted afterwards.
fn kafka_round_trips(stack: &Stack) -> Result<Vec<f64>, String> {
    let topic = format!("bench_floor_{}", short_id());
    stack.create_topics(std::slice::from_ref(&topic), 1);
    let result = round_trips_on(stack, &topic);
    stack.delete_topics(&[topic]);
    result
}

/// Hands each acknowledgement over a channel the moment the producer's polling thread
/// sees it (a producer's own `flush` or `poll` waits out its whole timeout slice).
pub(crate) struct Acknowledgements(pub(crate) Mutex<Sender<Result<(), String>>>);

impl ClientContext for Acknowledgements {}

impl ProducerContext for Acknowledgements {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let result = result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string());
        let _ = self.0.lock().unwrap().send(result);
    }
}

/// One record at a time: sent, acknowledged, read back; the time from send to read.
fn round_trips_on(stack: &Stack, topic: &str) -> Result<Vec<f64>, String> {
    let (acknowledged, acknowledgements): (_, Receiver<_>) = mpsc::channel();
    let producer: ThreadedProducer<Acknowledgements> = ClientConfig::new()
        .set("bootstrap.servers", stack.get("KAFKA_BROKERS"))
        .set("acks", "all")
        .set("linger.ms", "0")
        .create_with_context(Acknowledgements(Mutex::new(acknowledged)))
        .map_err(|e| e.to_string())?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", stack.get("KAFKA_BROKERS"))
        .set("group.id", format!("bench-floor-{}", short_id()))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| e.to_string())?;
    // Assigned at the end before the first send, so no record is missed or read twice.
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Offset(end_offset(&consumer, topic)?))
        .map_err(|e| e.to_string())?;
    consumer.assign(&assignment).map_err(|e| e.to_string())?;
    let mut latencies = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..WARM_UP + ROUND_TRIPS {
        let payload = format!("floor {i}");
        let sent = Instant::now();
        producer
            .send(BaseRecord::<(), _>::to(topic).payload(&payload))
            .map_err(|(e, _)| e.to_string())?;
        acknowledgements
            .recv_timeout(WAIT)
            .map_err(|_| format!("no acknowledgement within {WAIT:?}"))??;
        read_back(&consumer, payload.as_bytes())?;
        if i >= WARM_UP {
            latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(latencies)
}

/// The high watermark, once the new topic's leader is known.
fn end_offset(consumer: &BaseConsumer, topic: &str) -> Result<i64, String> {
    let deadline = Instant::now() + WAIT;
    loop {
        match consumer.fetch_watermarks(topic, 0, Duration::from_secs(2)) {
            Ok((_, high)) => return Ok(high),
            Err(e) if Instant::now() >= deadline => return Err(e.to_string()),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn read_back(consumer: &BaseConsumer, payload: &[u8]) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) if message.payload() == Some(payload) => return Ok(()),
            Some(Err(e)) => return Err(e.to_string()),
            _ => {}
        }
    }
    Err(format!("the record was not read back within {WAIT:?}"))
}

/// On a scratch table in a database of its own, dropped afterwards.
fn postgres_transactions(stack: &Stack) -> Result<Vec<f64>, String> {
    let database = format!("b_bench_floor_{}", short_id());
    let url = stack.create_database(&database);
    let result = transactions_on(&url).map_err(|e| e.to_string());
    stack.drop_database(&database);
    result
}

fn transactions_on(url: &str) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    let mut db = PgConnection::establish(url)?;
    for statement in [
        "CREATE TABLE floor_balance (id int PRIMARY KEY, amount bigint NOT NULL)",
        "CREATE TABLE floor_entry (id bigserial PRIMARY KEY, amount bigint NOT NULL)",
        "INSERT INTO floor_balance VALUES (1, 0)",
    ] {
        diesel::sql_query(statement).execute(&mut db)?;
    }
    let mut latencies = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..WARM_UP + ROUND_TRIPS {
        let started = Instant::now();
        db.transaction::<_, diesel::result::Error, _>(|db| {
            diesel::sql_query("UPDATE floor_balance SET amount = amount + 1 WHERE id = 1")
                .execute(db)?;
            diesel::sql_query("INSERT INTO floor_entry (amount) VALUES (1)").execute(db)?;
            Ok(())
        })?;
        if i >= WARM_UP {
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(latencies)
}
