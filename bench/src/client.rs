//! The benchmark's side of Kafka, the registry and PostgreSQL: what Open Bank's
//! command generator and graphql-endpoint do, plus starting the handler process.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use diesel::prelude::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use schema_registry_converter::blocking::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::blocking::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use uuid::Uuid;

/// Where the local stack is: the env file `dev/stack up` writes.
pub struct Stack {
    pub vars: HashMap<String, String>,
}

impl Stack {
    pub fn read(path: &Path) -> Stack {
        let text = fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read the stack's env file {}: {e}", path.display()));
        let vars = text
            .lines()
            .map(|line| line.trim().trim_start_matches("export "))
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.trim_matches(|c| c == '"' || c == '\'').to_string(),
                )
            })
            .collect();
        Stack { vars }
    }

    pub fn get(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("the stack's env file has no {name}"))
    }

    pub fn admin_db(&self) -> PgConnection {
        PgConnection::establish(self.get("TEST_ADMIN_DATABASE_URL"))
            .expect("connect to PostgreSQL as admin")
    }

    /// A new database owned by the handler's role; its URL for that role.
    pub fn create_database(&self, name: &str) -> String {
        diesel::sql_query(format!("CREATE DATABASE \"{name}\" OWNER clojure_ch"))
            .execute(&mut self.admin_db())
            .unwrap_or_else(|e| panic!("cannot create the database {name}: {e}"));
        format!(
            "postgres://clojure_ch:{}@{}:{}/{name}",
            self.get("DB_PASSWORD"),
            self.get("DB_HOSTNAME"),
            self.get("DB_PORT")
        )
    }

    pub fn drop_database(&self, name: &str) {
        let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut self.admin_db());
    }

    pub fn registry(&self) -> SrSettings {
        SrSettings::new(self.get("SCHEMA_REGISTRY_URL").to_string())
    }

    pub fn admin(&self) -> AdminClient<DefaultClientContext> {
        ClientConfig::new()
            .set("bootstrap.servers", self.get("KAFKA_BROKERS"))
            .create()
            .expect("admin client")
    }

    /// How many brokers the stack has (`KAFKA_NODES`, 1 when the env file names none).
    pub fn brokers(&self) -> usize {
        self.vars
            .get("KAFKA_NODES")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1)
    }

    /// Topics of `partitions` partitions, replicated as the stack says
    /// (`KAFKA_REPLICATION`: 3 on a three-broker stack, 1 when the env file names none).
    pub fn create_topics(&self, names: &[String], partitions: i32) {
        let replication = self
            .vars
            .get("KAFKA_REPLICATION")
            .and_then(|r| r.parse().ok())
            .unwrap_or(1);
        let topics: Vec<NewTopic> = names
            .iter()
            .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(replication)))
            .collect();
        let results =
            futures_executor::block_on(self.admin().create_topics(&topics, &AdminOptions::new()))
                .expect("create topics");
        for result in results {
            result.unwrap_or_else(|(topic, e)| panic!("cannot create {topic}: {e}"));
        }
    }

    pub fn delete_topics(&self, names: &[String]) {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let _ =
            futures_executor::block_on(self.admin().delete_topics(&names, &AdminOptions::new()));
    }
}

/// The handler process under measurement.
pub struct HandlerProcess {
    child: Child,
}

impl HandlerProcess {
    pub fn start(binary: &Path, vars: &[(String, String)], log: PathBuf) -> HandlerProcess {
        let file = fs::File::create(&log).expect("handler log file");
        let child = Command::new(binary)
            .env_clear()
            // The stack's registry starts empty (no synchronizer): the handler registers.
            .env("SCHEMA_REGISTRY_AUTO_REGISTER", "true")
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        HandlerProcess { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait for the clean exit (SIGKILL after 60 s): how it exited.
    pub fn stop(mut self) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            // Fine-grained: the disruption scenarios report when the exit came.
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill()
    }

    /// SIGKILL, as a crash: how it exited.
    pub fn kill(mut self) -> Option<ExitStatus> {
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

pub const CAC_SCHEMA: &str =
    include_str!("../../tests/fixtures/jvm-schemas/ConfirmAccountCreation.avsc");
pub const CMT_SCHEMA: &str =
    include_str!("../../tests/fixtures/jvm-schemas/ConfirmMoneyTransfer.avsc");

/// A transfer the benchmark sends.
#[derive(Clone, Debug)]
pub struct Transfer {
    pub id: Uuid,
    pub token: String,
    pub amount: i64,
    pub from: String,
    pub to: String,
    pub description: String,
}

/// Writes commands as the graphql-endpoint does (registered JVM-style schemas).
pub struct CommandWriter {
    producer: ThreadedProducer<DefaultProducerContext>,
    encoder: AvroEncoder,
    cac_topic: String,
    cmt_topic: String,
}

impl CommandWriter {
    pub fn new(stack: &Stack, cac_topic: &str, cmt_topic: &str) -> CommandWriter {
        Self::configured(stack, cac_topic, cmt_topic, false)
    }

    /// `idempotent`: a broker failing over makes the producer send no command twice (a
    /// duplicate answer then is the handler's doing, not the load generator's).
    pub fn configured(
        stack: &Stack,
        cac_topic: &str,
        cmt_topic: &str,
        idempotent: bool,
    ) -> CommandWriter {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", stack.get("KAFKA_BROKERS"))
            // As the floor's producer and the JVM clients before Kafka 4.0: each command
            // goes at once (linger 1 ms added up to a millisecond to every command).
            .set("linger.ms", "0")
            .set("queue.buffering.max.messages", "1000000")
            .set("enable.idempotence", idempotent.to_string())
            .create()
            .expect("command producer");
        CommandWriter {
            producer,
            encoder: AvroEncoder::new(stack.registry()),
            cac_topic: cac_topic.to_string(),
            cmt_topic: cmt_topic.to_string(),
        }
    }

    fn send(&self, topic: &str, record: &str, schema: &str, id: Uuid, fields: Vec<(&str, Value)>) {
        let name = Some(format!("nl.openweb.data.{record}"));
        let strategy = SubjectNameStrategy::TopicRecordNameStrategyWithSchema(
            topic.to_string(),
            SuppliedSchema::new(name, SchemaType::Avro, schema.to_string()),
        );
        let bytes = self
            .encoder
            .encode(fields, &strategy)
            .expect("encode a command");
        let key = id.to_string();
        let mut record = BaseRecord::to(topic).key(&key).payload(&bytes);
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => panic!("cannot send a command: {e}"),
            }
        }
    }

    pub fn open_account(&self, id: Uuid) {
        let fields = vec![
            ("id", Value::Fixed(16, id.as_bytes().to_vec())),
            ("a_type", Value::Enum(1, "MANUAL".into())),
        ];
        self.send(
            &self.cac_topic,
            "ConfirmAccountCreation",
            CAC_SCHEMA,
            id,
            fields,
        );
    }

    pub fn transfer(&self, t: &Transfer) {
        let fields = vec![
            ("id", Value::Fixed(16, t.id.as_bytes().to_vec())),
            ("token", Value::String(t.token.clone())),
            ("amount", Value::Long(t.amount)),
            ("from", Value::String(t.from.clone())),
            ("to", Value::String(t.to.clone())),
            ("description", Value::String(t.description.clone())),
        ];
        self.send(
            &self.cmt_topic,
            "ConfirmMoneyTransfer",
            CMT_SCHEMA,
            t.id,
            fields,
        );
    }

    pub fn flush(&self) {
        self.producer
            .flush(Duration::from_secs(60))
            .expect("flush commands");
    }
}

/// An answer as read from a feedback topic.
#[derive(Clone, Debug)]
pub struct Answer {
    pub id: Uuid,
    pub received: Instant,
    /// Record name without namespace, e.g. `MoneyTransferConfirmed`.
    pub kind: String,
    pub reason: Option<String>,
    pub iban: Option<String>,
    pub token: Option<String>,
}

/// Reads both feedback topics on a thread of its own, from the beginning, and hands
/// every answer over a channel.
pub struct AnswerReader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AnswerReader {
    pub fn start(
        stack: &Stack,
        topics: &[String],
        partitions: i32,
    ) -> (AnswerReader, mpsc::Receiver<Answer>) {
        // librdkafka's fetch.wait.max.ms (500 ms): the broker answers a waiting fetch as
        // soon as a record comes, so a shorter wait only costs the broker an empty fetch
        // every few milliseconds, on the cores the handler is measured on.
        let consumer: BaseConsumer = reader_config(stack, "reader")
            .create()
            .expect("answer consumer");
        let mut assignment = TopicPartitionList::new();
        for topic in topics {
            for partition in 0..partitions {
                assignment
                    .add_partition_offset(topic, partition, Offset::Beginning)
                    .unwrap();
            }
        }
        consumer
            .assign(&assignment)
            .expect("assign feedback topics");
        let decoder = AvroDecoder::new(stack.registry());
        let (sender, receiver) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Acquire) {
                let Some(result) = consumer.poll(Duration::from_millis(50)) else {
                    continue;
                };
                let received = Instant::now();
                // Errors are transient here, or the topics going away at teardown.
                let Ok(message) = result else { continue };
                let decoded = decoder.decode(message.payload()).expect("decode an answer");
                let kind = decoded
                    .name
                    .map(|n| n.name().to_string())
                    .unwrap_or_default();
                let Value::Record(fields) = decoded.value else {
                    continue;
                };
                let fields: HashMap<String, Value> = fields.into_iter().collect();
                let text = |name: &str| match fields.get(name) {
                    Some(Value::String(s)) => Some(s.clone()),
                    _ => None,
                };
                let Some(Value::Fixed(16, id)) = fields.get("id") else {
                    continue;
                };
                let answer = Answer {
                    id: Uuid::from_slice(id).unwrap(),
                    received,
                    kind,
                    reason: text("reason"),
                    iban: text("iban"),
                    token: text("token"),
                };
                if sender.send(answer).is_err() {
                    return;
                }
            }
        });
        (
            AnswerReader {
                stop,
                thread: Some(thread),
            },
            receiver,
        )
    }
}

impl Drop for AnswerReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A BalanceChanged event as read from its topic.
#[derive(Clone, Debug)]
pub struct BalanceEvent {
    pub partition: i32,
    pub offset: i64,
    pub iban: String,
    pub new_balance: i64,
    pub changed_by: i64,
    pub from_to: String,
    pub description: String,
}

/// A consumer of the stack's broker in a group of its own that commits nothing: it
/// assigns itself partitions and reads them from where it is told.
fn reader_config(stack: &Stack, purpose: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", stack.get("KAFKA_BROKERS"))
        .set("group.id", format!("bench-{purpose}-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false");
    config
}

/// Every record of a BalanceChanged topic up to its partitions' ends now, in partition
/// and offset order; Err when the ends were not reached within `limit`.
pub fn read_balance_changed(
    stack: &Stack,
    topic: &str,
    partitions: i32,
    limit: Duration,
) -> Result<Vec<BalanceEvent>, String> {
    let consumer: BaseConsumer = reader_config(stack, "events")
        .set("enable.partition.eof", "false")
        .create()
        .expect("event consumer");
    let mut assignment = TopicPartitionList::new();
    // Per partition, the offset after its last record now.
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for partition in 0..partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .map_err(|e| format!("watermarks of {topic}/{partition}: {e}"))?;
        ends.insert(partition, high);
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer
        .assign(&assignment)
        .expect("assign the event topic");
    let decoder = AvroDecoder::new(stack.registry());
    let mut next: HashMap<i32, i64> = HashMap::new();
    let mut events = Vec::new();
    let deadline = Instant::now() + limit;
    let behind = |next: &HashMap<i32, i64>| {
        ends.iter()
            .filter(|(p, end)| next.get(p).copied().unwrap_or(0) < **end)
            .count()
    };
    while behind(&next) > 0 {
        if Instant::now() >= deadline {
            return Err(format!(
                "{} partitions of {topic} not read to their end",
                behind(&next)
            ));
        }
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = result.map_err(|e| format!("reading {topic}: {e}"))?;
        next.insert(message.partition(), message.offset() + 1);
        let decoded = decoder
            .decode(message.payload())
            .map_err(|e| format!("decoding an event of {topic}: {e}"))?;
        let Value::Record(fields) = decoded.value else {
            return Err(format!("an event of {topic} is not a record"));
        };
        let fields: HashMap<String, Value> = fields.into_iter().collect();
        let text = |name: &str| match fields.get(name) {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let long = |name: &str| match fields.get(name) {
            Some(Value::Long(v)) => *v,
            _ => i64::MIN,
        };
        events.push(BalanceEvent {
            partition: message.partition(),
            offset: message.offset(),
            iban: text("iban"),
            new_balance: long("new_balance"),
            changed_by: long("changed_by"),
            from_to: text("from_to"),
            description: text("description"),
        });
    }
    events.sort_by_key(|e| (e.partition, e.offset));
    Ok(events)
}

/// Every IBAN's balance in a run's database.
pub fn balances(database_url: &str) -> Result<HashMap<String, i64>, String> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        iban: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        amount: i64,
    }
    let mut db = PgConnection::establish(database_url)
        .map_err(|e| format!("cannot connect to the run's database: {e}"))?;
    let rows = diesel::sql_query("SELECT iban, amount FROM balance")
        .load::<Row>(&mut db)
        .map_err(|e| format!("cannot read balances: {e}"))?;
    Ok(rows.into_iter().map(|r| (r.iban, r.amount)).collect())
}
