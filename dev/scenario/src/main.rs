//! A short Open Bank scenario played through Kafka against a running handler, for
//! `dev/run-local`: it writes commands as the graphql-endpoint does and prints the
//! answers and BalanceChanged events the handler sends back.
//!
//!   scenario create-topics   create the default topics (9 partitions) if missing
//!   scenario play            open two accounts, pay a salary, move money, get refused
//!
//! Reads KAFKA_BROKERS, SCHEMA_REGISTRY_URL and the KAFKA_*_TOPIC variables.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use open_bank_command_handler::config::Config;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};
use schema_registry_converter::blocking::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::blocking::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use uuid::Uuid;

const BANK: (&str, &str) = ("NL66OPEN0000000000", "00000000000000000000");

struct Client {
    config: Config,
    producer: ThreadedProducer<DefaultProducerContext>,
    answers: BaseConsumer,
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    events: Vec<(String, HashMap<String, Value>)>,
}

fn main() {
    let config = Config::from_env().unwrap_or_else(|e| panic!("{e}"));
    match std::env::args().nth(1).as_deref() {
        Some("create-topics") => create_topics(&config),
        Some("play") => play(config),
        _ => eprintln!("usage: scenario create-topics|play"),
    }
}

fn create_topics(config: &Config) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka_brokers)
        .create()
        .expect("admin client");
    let names = config.topics.all();
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, 9, TopicReplication::Fixed(1)))
        .collect();
    for result in futures_executor::block_on(admin.create_topics(&topics, &AdminOptions::new()))
        .expect("create topics")
    {
        match result {
            Ok(topic) => println!("created topic {topic}"),
            Err((topic, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                println!("topic {topic} exists")
            }
            Err((topic, e)) => panic!("cannot create {topic}: {e}"),
        }
    }
}

fn play(config: Config) {
    let registry = SrSettings::new(config.schema_registry_url.expose().to_string());
    let producer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka_brokers)
        .create()
        .expect("producer");
    // The reader must see the answers to the commands it is about to send. A group
    // subscription with `auto.offset.reset=latest` resolves "latest" only after the
    // assignment, asynchronously: on a broker still loading its coordinator an answer
    // can land before that and be skipped. So the positions are fixed first: the end
    // offset of every partition, read now and assigned explicitly.
    let answers: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka_brokers)
        .set("group.id", format!("scenario-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let t = &config.topics;
    let positions = end_offsets(
        &answers,
        &[
            &t.account_creation_feedback,
            &t.money_transfer_feedback,
            &t.balance_changed,
        ],
    );
    answers.assign(&positions).expect("assign answer topics");
    let mut client = Client {
        producer,
        answers,
        encoder: AvroEncoder::new(registry.clone()),
        decoder: AvroDecoder::new(registry),
        events: Vec::new(),
        config,
    };

    println!("\n== opening two accounts");
    let (alice, alice_token) = client.open_account("Alice");
    let (bob, _) = client.open_account("Bob");
    println!("\n== the bank pays Alice a salary of 2500.00");
    client.transfer("salary", BANK.1, 250_000, BANK.0, &alice);
    println!("\n== Alice pays Bob 120.50 and withdraws 50.00 in cash");
    client.transfer("dinner", &alice_token, 12_050, &alice, &bob);
    client.transfer("atm", &alice_token, 5_000, &alice, "cash");
    println!("\n== Alice tries to pay more than she has, then with a wrong token");
    client.transfer("car", &alice_token, 1_000_000, &alice, &bob);
    client.transfer("theft", "11111111111111111111", 100, &alice, &bob);
    client.drain(Duration::from_secs(2));
    println!("\n== BalanceChanged events");
    for (_, event) in &client.events {
        println!(
            "  {} {:>+10} -> {:>10}  ({}, {})",
            text(&event["iban"]),
            cents(&event["changed_by"]),
            cents(&event["new_balance"]),
            text(&event["from_to"]),
            text(&event["description"])
        );
    }
    println!("\nscenario done: accounts opened, money moved, refusals answered");
}

impl Client {
    fn send(&self, topic: &str, record: &str, schema: &str, id: Uuid, fields: Vec<(&str, Value)>) {
        let strategy = SubjectNameStrategy::TopicRecordNameStrategyWithSchema(
            topic.to_string(),
            SuppliedSchema::new(
                Some(format!("nl.openweb.data.{record}")),
                SchemaType::Avro,
                schema.to_string(),
            ),
        );
        let bytes = self
            .encoder
            .encode(fields, &strategy)
            .expect("encode command");
        let key = id.to_string();
        self.producer
            .send(BaseRecord::to(topic).key(&key).payload(&bytes))
            .map_err(|(e, _)| e)
            .expect("send");
        self.producer.flush(Duration::from_secs(10)).expect("flush");
    }

    /// Waits for the answer to `id`, keeping BalanceChanged events seen meanwhile.
    fn answer(&mut self, id: Uuid) -> (String, HashMap<String, Value>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                Instant::now() < deadline,
                "no answer to {id} within a minute: is the handler running?"
            );
            let Some(record) = self.next_record(Duration::from_millis(200)) else {
                continue;
            };
            if record.0.ends_with("BalanceChanged") {
                self.events.push(record);
            } else if record.1.get("id") == Some(&Value::Fixed(16, id.as_bytes().to_vec())) {
                return record;
            }
        }
    }

    fn next_record(&self, timeout: Duration) -> Option<(String, HashMap<String, Value>)> {
        let message = self.answers.poll(timeout)?.expect("read answers");
        let decoded = self
            .decoder
            .decode(message.payload())
            .expect("decode answer");
        let name = decoded.name.map(|n| n.fullname(None)).unwrap_or_default();
        let Value::Record(fields) = decoded.value else {
            return None;
        };
        Some((name, fields.into_iter().collect()))
    }

    fn drain(&mut self, quiet: Duration) {
        let until = Instant::now() + quiet;
        while Instant::now() < until {
            if let Some(record) = self.next_record(Duration::from_millis(100))
                && record.0.ends_with("BalanceChanged")
            {
                self.events.push(record);
            }
        }
    }

    fn open_account(&mut self, who: &str) -> (String, String) {
        let id = Uuid::new_v4();
        let topic = self.config.topics.account_creation_commands.clone();
        let fields = vec![
            ("id", Value::Fixed(16, id.as_bytes().to_vec())),
            ("a_type", Value::Enum(1, "MANUAL".into())),
        ];
        self.send(&topic, "ConfirmAccountCreation", CAC_SCHEMA, id, fields);
        let (name, answer) = self.answer(id);
        let (iban, token) = (text(&answer["iban"]), text(&answer["token"]));
        println!("  {who}: {name} iban {iban} token {token}");
        (iban, token)
    }

    fn transfer(&mut self, description: &str, token: &str, amount: i64, from: &str, to: &str) {
        let id = Uuid::new_v4();
        let topic = self.config.topics.money_transfer_commands.clone();
        let fields = vec![
            ("id", Value::Fixed(16, id.as_bytes().to_vec())),
            ("token", Value::String(token.into())),
            ("amount", Value::Long(amount)),
            ("from", Value::String(from.into())),
            ("to", Value::String(to.into())),
            ("description", Value::String(description.into())),
        ];
        self.send(&topic, "ConfirmMoneyTransfer", CMT_SCHEMA, id, fields);
        let (name, answer) = self.answer(id);
        let outcome = answer
            .get("reason")
            .map(text)
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        println!(
            "  {description:<7} {:>10} {from} -> {to}: {name}{outcome}",
            cents(&Value::Long(amount))
        );
    }
}

/// Every partition of `topics` at its current end offset (its high watermark). Just
/// after the topics were made, a partition may have no leader yet: asked again until
/// it answers, within a minute.
fn end_offsets(consumer: &BaseConsumer, topics: &[&String]) -> TopicPartitionList {
    let deadline = Instant::now() + Duration::from_secs(60);
    let retry = |what: &str, error: rdkafka::error::KafkaError| {
        assert!(Instant::now() < deadline, "{what}: {error}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut positions = TopicPartitionList::new();
    for topic in topics {
        let partitions = loop {
            match consumer.fetch_metadata(Some(topic.as_str()), Duration::from_secs(5)) {
                Ok(metadata) if !metadata.topics()[0].partitions().is_empty() => {
                    break metadata.topics()[0].partitions().len() as i32;
                }
                Ok(_) => retry(
                    &format!("partitions of {topic}"),
                    rdkafka::error::KafkaError::NoMessageReceived,
                ),
                Err(error) => retry(&format!("metadata of {topic}"), error),
            }
        };
        for partition in 0..partitions {
            let high = loop {
                match consumer.fetch_watermarks(topic, partition, Duration::from_secs(5)) {
                    Ok((_, high)) => break high,
                    Err(error) => retry(&format!("end offset of {topic}/{partition}"), error),
                }
            };
            positions
                .add_partition_offset(topic, partition, Offset::Offset(high))
                .expect("add partition");
        }
    }
    positions
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

fn cents(value: &Value) -> String {
    match value {
        Value::Long(n) => format!(
            "{}{}.{:02}",
            if *n < 0 { "-" } else { "" },
            n.abs() / 100,
            n.abs() % 100
        ),
        other => format!("{other:?}"),
    }
}

const CAC_SCHEMA: &str = r#"{"type":"record","name":"ConfirmAccountCreation","namespace":"nl.openweb.data","fields":[{"name":"id","type":{"type":"fixed","name":"Uuid","size":16}},{"name":"a_type","type":{"type":"enum","name":"Atype","symbols":["AUTO","MANUAL"]}}]}"#;
const CMT_SCHEMA: &str = r#"{"type":"record","name":"ConfirmMoneyTransfer","namespace":"nl.openweb.data","fields":[{"name":"id","type":{"type":"fixed","name":"Uuid","size":16}},{"name":"token","type":"string"},{"name":"amount","type":"long"},{"name":"from","type":"string"},{"name":"to","type":"string"},{"name":"description","type":"string"}]}"#;
