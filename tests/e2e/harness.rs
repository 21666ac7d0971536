//! Integration-test harness: the real handler binary against the real local stack
//! (Kafka, PostgreSQL and the registry started by `dev/stack up`; `dev/test` does it).
//!
//! Each test gets its own topics, consumer group and database, created here and
//! removed on drop. The tests talk to the handler only as other Open Bank services do:
//! commands in over Kafka with JVM-style writer schemas, answers read back from Kafka
//! and decoded by hand from the Confluent wire format (magic byte, big-endian schema
//! id, Avro datum), so a codec bug in the handler cannot hide behind the same codec in
//! the test.
#![allow(dead_code)] // not every test uses every helper
#![allow(deprecated)] // {to,from}_avro_datum: the plainest one-datum codec, fine for a test client

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use apache_avro::Schema;
use apache_avro::types::Value;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use schema_registry_converter::blocking::schema_registry::{
    SrSettings, get_schema_by_id, post_schema,
};
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use uuid::Uuid;

/// How long a test waits for something the handler should do. Generous: CI machines
/// are shared; the wait ends as soon as the condition holds.
pub const WAIT: Duration = Duration::from_secs(90);

pub const BANK_IBAN: &str = "NL66OPEN0000000000";
pub const BANK_TOKEN: &str = "00000000000000000000";

/// Where the local stack is, read from the env file `dev/stack up` writes.
pub struct Stack {
    pub brokers: String,
    pub registry_url: String,
    pub db_host: String,
    pub db_port: String,
    pub admin_database_url: String,
    pub kafka_version: String,
    /// Replicas of each topic a test creates: 1, or 3 on a three-broker stack.
    pub replication: i32,
    /// The broker's mutual-TLS listener and the certificates made for it.
    pub tls: TlsStack,
    pub open_bank: OpenBankTls,
    /// The broker's SASL_SSL listener (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512; its CA is
    /// `tls.ca`) and its one user.
    pub sasl: SaslStack,
    /// The registry's port that requires HTTP basic authentication (same schemas).
    pub auth_registry: AuthRegistry,
    /// A PostgreSQL role that may connect over TLS only (the server's certificate is
    /// signed by `tls.ca` and names localhost), and its password.
    pub db_tls_role: String,
    pub db_tls_password: String,
    /// Where `dev/stack` keeps this stack's state.
    pub state_dir: PathBuf,
}

pub struct SaslStack {
    pub brokers: String,
    pub username: String,
    pub password: String,
}

pub struct AuthRegistry {
    pub url: String,
    pub key: String,
    pub secret: String,
}

/// The Open Bank stack's mutual-TLS listener and its certificate files, made the
/// stack's way (keytool stores, PEM key and certificate; see dev/stack).
pub struct OpenBankTls {
    /// `localhost:PORT`: the name the broker's CN-only certificate carries.
    pub brokers: String,
    /// The folder the stack mounts at /etc/kafka/secrets.
    pub certs: String,
    pub password: String,
}

impl OpenBankTls {
    pub fn file(&self, name: &str) -> String {
        format!("{}/{name}", self.certs)
    }
}

pub struct TlsStack {
    pub brokers: String,
    pub ca: String,
    pub cert: String,
    pub key: String,
    pub key_password: String,
    pub rogue_cert: String,
    pub rogue_key: String,
}

impl Stack {
    /// The stack the tests share (started by `dev/test`).
    pub fn get() -> &'static Stack {
        static STACK: OnceLock<Stack> = OnceLock::new();
        STACK.get_or_init(|| {
            let path = std::env::var_os("OPEN_BANK_STACK_ENV")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/stack/env"));
            Stack::read(&path)
        })
    }

    /// A stack from the env file `dev/stack up` wrote.
    pub fn read(path: &Path) -> Stack {
        let text = fs::read_to_string(path).unwrap_or_else(|e| {
            panic!(
                "the local stack is not running ({}: {e}). Run the tests with `dev/test`, \
                 or start the stack with `dev/stack up` first.",
                path.display()
            )
        });
        let vars: HashMap<String, String> = text
            .lines()
            .filter_map(|line| line.trim().strip_prefix("export ").or(Some(line.trim())))
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.trim_matches(|c| c == '"' || c == '\'').to_string(),
                )
            })
            .collect();
        let get = |name: &str| {
            vars.get(name)
                .cloned()
                .unwrap_or_else(|| panic!("{} has no {name}", path.display()))
        };
        Stack {
            brokers: get("KAFKA_BROKERS"),
            registry_url: get("SCHEMA_REGISTRY_URL"),
            db_host: get("DB_HOSTNAME"),
            db_port: get("DB_PORT"),
            admin_database_url: get("TEST_ADMIN_DATABASE_URL"),
            kafka_version: vars.get("KAFKA_VERSION").cloned().unwrap_or_default(),
            replication: vars
                .get("KAFKA_REPLICATION")
                .and_then(|r| r.parse().ok())
                .unwrap_or(1),
            tls: TlsStack {
                brokers: get("KAFKA_TLS_BROKERS"),
                ca: get("TLS_CA_LOCATION"),
                cert: get("TLS_CLIENT_CERT_LOCATION"),
                key: get("TLS_CLIENT_KEY_LOCATION"),
                key_password: get("TLS_CLIENT_KEY_PASSWORD"),
                rogue_cert: get("TLS_ROGUE_CERT_LOCATION"),
                rogue_key: get("TLS_ROGUE_KEY_LOCATION"),
            },
            open_bank: OpenBankTls {
                brokers: get("OPENBANK_BROKERS"),
                certs: get("OPENBANK_CERTS"),
                password: get("OPENBANK_STORE_PASSWORD"),
            },
            sasl: SaslStack {
                brokers: get("SASL_BROKERS"),
                username: get("SASL_USERNAME"),
                password: get("SASL_PASSWORD"),
            },
            auth_registry: AuthRegistry {
                url: get("AUTH_REGISTRY_URL"),
                key: get("AUTH_REGISTRY_KEY"),
                secret: get("AUTH_REGISTRY_SECRET"),
            },
            db_tls_role: get("PG_TLS_ROLE"),
            db_tls_password: get("PG_TLS_PASSWORD"),
            state_dir: path.parent().expect("the env file's folder").to_path_buf(),
        }
    }

    /// The handler's variables to work over the SASL_SSL listener as the SASL user,
    /// with `mechanism` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512).
    pub fn sasl_env<'a>(&'a self, mechanism: &'a str) -> [(&'static str, &'a str); 5] {
        [
            ("KAFKA_BROKERS", self.sasl.brokers.as_str()),
            ("KAFKA_SSL_CA_LOCATION", self.tls.ca.as_str()),
            ("KAFKA_SASL_MECHANISM", mechanism),
            ("KAFKA_SASL_USERNAME", self.sasl.username.as_str()),
            ("KAFKA_SASL_PASSWORD", self.sasl.password.as_str()),
        ]
    }

    /// Takes a right on `topic` (`Write`, `Read`, …) away from the SASL user, by a DENY
    /// ACL (the broker allows what no ACL names); `undeny` gives it back.
    pub fn deny_sasl_user(&self, operation: &str, topic: &str) {
        self.kafka_acl("deny", operation, topic);
    }

    pub fn undeny_sasl_user(&self, operation: &str, topic: &str) {
        self.kafka_acl("undeny", operation, topic);
    }

    fn kafka_acl(&self, action: &str, operation: &str, topic: &str) {
        let principal = format!("User:{}", self.sasl.username);
        let state = self.state_dir.to_str().unwrap();
        let output = dev_stack(&["kafka-acl", action, topic, &principal, operation, state]);
        assert!(
            output.status.success(),
            "dev/stack kafka-acl {action} {topic} {operation} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn registry(&self) -> SrSettings {
        SrSettings::new(self.registry_url.clone())
    }

    pub fn admin_connection(&self) -> PgConnection {
        PgConnection::establish(&self.admin_database_url)
            .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL: {e}"))
    }

    fn admin(&self) -> AdminClient<DefaultClientContext> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .expect("admin client")
    }

    pub fn create_topics(&self, names: &[&String], partitions: i32, config: &[(&str, &str)]) {
        let topics: Vec<NewTopic> = names
            .iter()
            .map(|name| {
                let topic =
                    NewTopic::new(name, partitions, TopicReplication::Fixed(self.replication));
                config
                    .iter()
                    .fold(topic, |topic, (key, value)| topic.set(key, value))
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = futures_executor::block_on(self.admin().create_topics(&topics, &options))
            .unwrap_or_else(|e| {
                panic!(
                    "cannot reach Kafka at {} to create topics: {e}",
                    self.brokers
                )
            });
        for result in results {
            if let Err((topic, error)) = result {
                panic!("cannot create topic {topic}: {error}");
            }
        }
        self.wait_for_leaders(names, partitions);
    }

    /// The controller answers before every broker's metadata has the new topics: wait
    /// until each partition has a leader, so that a handler started next sees them.
    fn wait_for_leaders(&self, names: &[&String], partitions: i32) {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .expect("metadata reader");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let metadata = reader
                .fetch_metadata(None, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("cannot read metadata from {}: {e}", self.brokers));
            let missing: Vec<&String> = names
                .iter()
                .copied()
                .filter(|name| {
                    !metadata.topics().iter().any(|t| {
                        t.name() == name.as_str()
                            && t.error().is_none()
                            && t.partitions().len() as i32 == partitions
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    })
                })
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "topics created but without leaders after 30 s: {missing:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sets topic-level configuration (for example a small `max.message.bytes`).
    pub fn set_topic_config(&self, topic: &str, entries: &[(&str, &str)]) {
        let alter = entries.iter().fold(
            AlterConfig::new(ResourceSpecifier::Topic(topic)),
            |alter, (key, value)| alter.set(key, value),
        );
        let results = futures_executor::block_on(self.admin().alter_configs(
            [&alter],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))
        .unwrap_or_else(|e| panic!("cannot reach Kafka to configure {topic}: {e}"));
        for result in results {
            if let Err((resource, error)) = result {
                panic!("cannot configure {resource:?}: {error}");
            }
        }
        // The brokers take the change a moment after the controller: wait until it shows.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let described = futures_executor::block_on(
                self.admin()
                    .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new()),
            );
            let applied = described.ok().and_then(|results| {
                let resource = results.into_iter().next()?.ok()?;
                Some(entries.iter().all(|(key, value)| {
                    resource.get(key).and_then(|entry| entry.value.as_deref()) == Some(*value)
                }))
            });
            if applied == Some(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{topic} did not take {entries:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn delete_topics(&self, names: &[&String]) {
        let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let _ =
            futures_executor::block_on(self.admin().delete_topics(&names, &AdminOptions::new()));
    }
}

/// A stack of its own, for a test that stops and starts services under load; stopped
/// and removed on drop.
pub struct PrivateStack {
    dir: PathBuf,
    pub stack: &'static Stack,
    /// One private stack at a time: each is a broker (or three) more on the machine's
    /// two cores, and the tests that use one stop and start services under load.
    _alone: std::sync::MutexGuard<'static, ()>,
}

impl PrivateStack {
    pub fn up(name: &str) -> PrivateStack {
        PrivateStack::with_brokers(name, 1)
    }

    /// A stack of `brokers` Kafka nodes (1 or 3; with 3, shaped as the Open Bank
    /// stack's: replication 3, `min.insync.replicas=2`). Its nodes are `kafka-1` …
    pub fn with_brokers(name: &str, brokers: usize) -> PrivateStack {
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        // A test that failed while holding it poisons it; the next one may go all the same.
        let alone = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "stack-{name}-{}",
            &Uuid::new_v4().simple().to_string()[..6]
        ));
        // The same Kafka version as the shared stack.
        let output = dev_stack(&[
            "up",
            "--brokers",
            &brokers.to_string(),
            dir.to_str().unwrap(),
        ]);
        assert!(
            output.status.success(),
            "dev/stack up failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stack: &'static Stack = Box::leak(Box::new(Stack::read(&dir.join("env"))));
        PrivateStack {
            dir,
            stack,
            _alone: alone,
        }
    }

    /// Stops a service (kafka, postgres, registry; a Kafka node kafka-N) with SIGTERM
    /// and waits for it to end (a broker's controlled shutdown); `start` brings it back
    /// on its port.
    pub fn stop(&self, service: &str) {
        self.service("stop", service);
    }

    /// SIGKILL (PostgreSQL: an immediate shutdown).
    pub fn kill(&self, service: &str) {
        self.service("kill", service);
    }

    pub fn start(&self, service: &str) {
        self.service("start", service);
    }

    /// Stops a service's process (SIGSTOP) without closing its connections: requests
    /// wait unanswered until `thaw` (kafka, registry).
    pub fn freeze(&self, service: &str) {
        self.service("freeze", service);
    }

    pub fn thaw(&self, service: &str) {
        self.service("thaw", service);
    }

    fn service(&self, action: &str, service: &str) {
        let command = format!("{action}-service");
        let output = dev_stack(&[&command, service, self.dir.to_str().unwrap()]);
        assert!(
            output.status.success(),
            "dev/stack {command} {service} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn dev_stack(args: &[&str]) -> std::process::Output {
    Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("dev/stack"))
        .args(args)
        .env("KAFKA_VERSION", &Stack::get().kafka_version)
        .output()
        .expect("run dev/stack")
}

impl Drop for PrivateStack {
    fn drop(&mut self) {
        // A test that failed with a service frozen: a frozen process stops only by SIGKILL.
        for service in ["kafka", "registry"] {
            let _ = dev_stack(&["thaw-service", service, self.dir.to_str().unwrap()]);
        }
        if std::thread::panicking() {
            keep_logs(&self.dir);
        }
        let _ = dev_stack(&["down", self.dir.to_str().unwrap()]);
    }
}

/// A failed test's private stack goes down with its directory: its services' logs are
/// kept beside the handlers' (`target/tmp/stack-logs/<stack>/`), for the failure's story.
fn keep_logs(dir: &Path) {
    let Some(name) = dir.file_name() else { return };
    let kept = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("stack-logs")
        .join(name);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    if std::fs::create_dir_all(&kept).is_err() {
        return;
    }
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|extension| extension == "log") {
            let _ = std::fs::copy(&path, kept.join(entry.file_name()));
        }
    }
    eprintln!(
        "---- the private stack's logs are kept in {} ----",
        kept.display()
    );
}

/// JVM-style writer schemas for the commands (string types carry Java properties),
/// written here independently of the handler's own schemas.
pub const CONFIRM_ACCOUNT_CREATION_SCHEMA: &str =
    include_str!("../fixtures/jvm-schemas/ConfirmAccountCreation.avsc");
pub const CONFIRM_MONEY_TRANSFER_SCHEMA: &str =
    include_str!("../fixtures/jvm-schemas/ConfirmMoneyTransfer.avsc");

/// A transfer command as a test writes it.
#[derive(Clone, Debug)]
pub struct TransferCmd {
    pub id: Uuid,
    pub token: String,
    pub amount: i64,
    pub from: String,
    pub to: String,
    pub description: String,
}

impl TransferCmd {
    pub fn new(token: &str, amount: i64, from: &str, to: &str) -> Self {
        TransferCmd {
            id: Uuid::new_v4(),
            token: token.to_string(),
            amount,
            from: from.to_string(),
            to: to.to_string(),
            description: format!("test transfer of {amount}"),
        }
    }

    pub fn fields(&self) -> Vec<(String, Value)> {
        vec![
            ("id".into(), Value::Fixed(16, self.id.as_bytes().to_vec())),
            ("token".into(), Value::String(self.token.clone())),
            ("amount".into(), Value::Long(self.amount)),
            ("from".into(), Value::String(self.from.clone())),
            ("to".into(), Value::String(self.to.clone())),
            (
                "description".into(),
                Value::String(self.description.clone()),
            ),
        ]
    }
}

/// A record the handler wrote, decoded by hand from the wire format.
#[derive(Clone, Debug)]
pub struct Output {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Full record name and fields, for values in the Confluent wire format.
    pub record: Option<(String, BTreeMap<String, Value>)>,
    pub schema_id: Option<u32>,
}

impl Output {
    pub fn key_text(&self) -> String {
        String::from_utf8_lossy(self.key.as_deref().unwrap_or_default()).into_owned()
    }
    pub fn record_name(&self) -> &str {
        self.record
            .as_ref()
            .map(|(name, _)| name.as_str())
            .unwrap_or("")
    }
    pub fn field(&self, name: &str) -> &Value {
        let (record, fields) = self.record.as_ref().expect("a decoded record");
        fields
            .get(name)
            .unwrap_or_else(|| panic!("{record} has no field {name}"))
    }
    pub fn string(&self, name: &str) -> String {
        match self.field(name) {
            Value::String(s) => s.clone(),
            other => panic!("{name} is not a string: {other:?}"),
        }
    }
    pub fn long(&self, name: &str) -> i64 {
        match self.field(name) {
            Value::Long(n) => *n,
            other => panic!("{name} is not a long: {other:?}"),
        }
    }
    pub fn id(&self) -> Uuid {
        match self.field("id") {
            Value::Fixed(16, bytes) => Uuid::from_slice(bytes).unwrap(),
            other => panic!("id is not a 16-byte fixed: {other:?}"),
        }
    }
    pub fn enum_symbol(&self, name: &str) -> String {
        match self.field(name) {
            Value::Enum(_, symbol) => symbol.clone(),
            other => panic!("{name} is not an enum: {other:?}"),
        }
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
    /// A short form of the answer for equality checks.
    pub fn summary(&self) -> String {
        match &self.record {
            Some((name, fields)) => format!("{name} {fields:?}"),
            None => format!("raw {:?}", self.value),
        }
    }
}

pub struct Topics {
    pub cac: String,
    pub acf: String,
    pub cmt: String,
    pub mtf: String,
    pub bc: String,
    pub dlq: String,
}

impl Topics {
    fn outputs(&self) -> [&String; 4] {
        [&self.acf, &self.mtf, &self.bc, &self.dlq]
    }

    pub fn all(&self) -> [&String; 6] {
        [
            &self.cac, &self.acf, &self.cmt, &self.mtf, &self.bc, &self.dlq,
        ]
    }
}

/// Everything one test owns: topics, a database, a consumer group, handler processes,
/// and a client that writes commands and reads the handler's output.
pub struct TestEnv {
    pub stack: &'static Stack,
    pub name: String,
    pub topics: Topics,
    pub partitions: i32,
    pub database: String,
    pub group: String,
    handlers: Vec<Handler>,
    producer: ThreadedProducer<DefaultProducerContext>,
    collector: BaseConsumer,
    schema_cache: HashMap<u32, Schema>,
    outputs: Vec<Output>,
    /// Positions in `outputs` of the feedback records answering each command id, kept
    /// as records are read so that looking an answer up never scans what was read.
    answer_positions: HashMap<Uuid, Vec<usize>>,
    last_read_error: Option<String>,
    read_errors: usize,
    /// A read failed and none succeeded since.
    reading_fails: bool,
    /// When the test's clients were last given the brokers again.
    rebootstrapped_at: Option<Instant>,
    command_schema_ids: HashMap<&'static str, u32>,
}

impl TestEnv {
    pub fn new(test: &str) -> TestEnv {
        TestEnv::with_partitions(test, 3)
    }

    pub fn with_partitions(test: &str, partitions: i32) -> TestEnv {
        TestEnv::on(Stack::get(), test, partitions)
    }

    /// A test environment on a given stack (a private one, for tests that stop services).
    pub fn on(stack: &'static Stack, test: &str, partitions: i32) -> TestEnv {
        let name = format!("{test}_{}", &Uuid::new_v4().simple().to_string()[..8]);
        let topics = Topics {
            cac: format!("{name}.cac"),
            acf: format!("{name}.acf"),
            cmt: format!("{name}.cmt"),
            mtf: format!("{name}.mtf"),
            bc: format!("{name}.bc"),
            dlq: format!("{name}.dlq"),
        };
        stack.create_topics(
            &[
                &topics.cac,
                &topics.acf,
                &topics.cmt,
                &topics.mtf,
                &topics.bc,
                &topics.dlq,
            ],
            partitions,
            &[],
        );
        let database = format!("t_{name}");
        diesel::sql_query(format!("CREATE DATABASE \"{database}\" OWNER clojure_ch"))
            .execute(&mut stack.admin_connection())
            .unwrap_or_else(|e| panic!("cannot create database {database}: {e}"));

        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &stack.brokers)
            .set("acks", "all")
            .set("linger.ms", "0")
            .create()
            .expect("test producer");
        let collector: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &stack.brokers)
            .set("group.id", format!("{name}.collector"))
            .set("enable.auto.commit", "false")
            // If a broker restart resets its position, read again rather than skip.
            .set("auto.offset.reset", "earliest")
            // A fetch left hanging by a frozen or restarted broker is given up and sent
            // again within seconds, not a minute (librdkafka's defaults: 60 s, and up
            // to 10 s between reconnections).
            .set("socket.timeout.ms", "10000")
            .set("reconnect.backoff.max.ms", "1000")
            // A broker just restarted may answer for a while that it has no such topic;
            // librdkafka then drops the topics and learns them again only at its next
            // full refresh (5 minutes by default), reading nothing meanwhile.
            .set("topic.metadata.refresh.interval.ms", "1000")
            .create()
            .expect("test consumer");
        let mut assignment = TopicPartitionList::new();
        for topic in topics.outputs() {
            for partition in 0..partitions {
                assignment
                    .add_partition_offset(topic, partition, Offset::Beginning)
                    .unwrap();
            }
        }
        collector.assign(&assignment).expect("assign output topics");

        let mut env = TestEnv {
            stack,
            group: format!("{name}.handler"),
            name,
            topics,
            partitions,
            database,
            handlers: Vec::new(),
            producer,
            collector,
            schema_cache: HashMap::new(),
            outputs: Vec::new(),
            answer_positions: HashMap::new(),
            last_read_error: None,
            read_errors: 0,
            reading_fails: false,
            rebootstrapped_at: None,
            command_schema_ids: HashMap::new(),
        };
        env.command_schema_ids.insert(
            "cac",
            env.register(
                &env.topics.cac.clone(),
                "ConfirmAccountCreation",
                CONFIRM_ACCOUNT_CREATION_SCHEMA,
            ),
        );
        env.command_schema_ids.insert(
            "cmt",
            env.register(
                &env.topics.cmt.clone(),
                "ConfirmMoneyTransfer",
                CONFIRM_MONEY_TRANSFER_SCHEMA,
            ),
        );
        env
    }

    /// Registers a writer schema under `<topic>-nl.openweb.data.<record>`; its id.
    pub fn register(&self, topic: &str, record: &str, schema: &str) -> u32 {
        let subject = format!("{topic}-nl.openweb.data.{record}");
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.to_string());
        post_schema(&self.stack.registry(), subject.clone(), supplied)
            .unwrap_or_else(|e| panic!("cannot register {subject}: {e}"))
            .id
    }

    pub fn database_url(&self) -> String {
        let stack = self.stack;
        format!(
            "postgres://clojure_ch:open-bank@{}:{}/{}",
            stack.db_host, stack.db_port, self.database
        )
    }

    /// The handler's environment for this test, as a deployment would set it.
    pub fn handler_env(&self) -> Vec<(String, String)> {
        let stack = self.stack;
        [
            ("KAFKA_BROKERS", stack.brokers.clone()),
            ("SCHEMA_REGISTRY_URL", stack.registry_url.clone()),
            ("DATABASE_URL", self.database_url()),
            ("KAFKA_CAC_TOPIC", self.topics.cac.clone()),
            ("KAFKA_ACF_TOPIC", self.topics.acf.clone()),
            ("KAFKA_CMT_TOPIC", self.topics.cmt.clone()),
            ("KAFKA_MTF_TOPIC", self.topics.mtf.clone()),
            ("KAFKA_BC_TOPIC", self.topics.bc.clone()),
            ("KAFKA_DEAD_LETTER_TOPIC", self.topics.dlq.clone()),
            ("KAFKA_CLIENT_ID", self.group.clone()),
            // The registry stand-in starts empty, with no synchronizer to register the
            // output schemas: the handler registers its own. The drop-in tests turn this
            // off (an empty value) after registering JVM schemas as the stack does.
            ("SCHEMA_REGISTRY_AUTO_REGISTER", "true".to_string()),
            (
                "RUST_LOG",
                "warn,open_bank_command_handler=debug".to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// This test's handler environment with `overrides` replacing or adding variables.
    pub fn handler_env_with(&self, overrides: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut vars = self.handler_env();
        for (key, value) in overrides {
            vars.retain(|(k, _)| k != key);
            vars.push((key.to_string(), value.to_string()));
        }
        vars
    }

    /// Starts a handler process with this test's environment plus `overrides`.
    ///
    /// Unless `overrides` name one, the handler gets the `KAFKA_GROUP_INSTANCE_ID` of
    /// the lowest instance slot no running handler of this test holds: handlers running
    /// together are distinct static members (all of them share this host's name, the
    /// default), and one started after another stopped takes its place in the group, as
    /// a container restarted under the same host name does.
    pub fn start_handler(&mut self, overrides: &[(&str, &str)]) -> usize {
        let mut vars = self.handler_env_with(overrides);
        let mut slot = None;
        if !overrides
            .iter()
            .any(|(k, _)| *k == "KAFKA_GROUP_INSTANCE_ID")
        {
            let held: Vec<usize> = self
                .handlers
                .iter_mut()
                .filter_map(|handler| handler.slot.filter(|_| handler.is_running()))
                .collect();
            let free = (0..).find(|s| !held.contains(s)).unwrap();
            vars.push((
                "KAFKA_GROUP_INSTANCE_ID".to_string(),
                format!("{}-slot{free}", self.group),
            ));
            slot = Some(free);
        }
        let index = self.handlers.len();
        let mut handler = Handler::start(&format!("{}-{index}", self.name), &vars);
        handler.slot = slot;
        self.handlers.push(handler);
        index
    }

    /// Starts a handler that must refuse to start: waits for it to exit, fails the test
    /// unless it exits with `code` (1: a dependency refused, 78: invalid configuration),
    /// and returns its log.
    pub fn start_expecting_refusal(&mut self, overrides: &[(&str, &str)], code: i32) -> String {
        let index = self.start_handler(overrides);
        let status = self.handler(index).wait_exit(WAIT);
        let log = self.handler(index).log();
        assert_eq!(
            status.code(),
            Some(code),
            "the handler was to refuse to start with exit code {code}:\n{log}"
        );
        log
    }

    /// Runs `command-handler check` with this test's environment plus `overrides`:
    /// its exit status, and its stdout and stderr together.
    pub fn run_check(&self, overrides: &[(&str, &str)]) -> (ExitStatus, String) {
        let output = Command::new(Handler::binary())
            .arg("check")
            .env_clear()
            .envs(self.handler_env_with(overrides))
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} check: {e}", Handler::binary()));
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status, text)
    }

    pub fn handler(&mut self, index: usize) -> &mut Handler {
        &mut self.handlers[index]
    }

    // ------------------------------------------------------------------ commands

    fn produce(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        partition: Option<i32>,
    ) {
        let mut record: BaseRecord<[u8], [u8]> = BaseRecord::to(topic);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        self.producer
            .send(record)
            .map_err(|(e, _)| e)
            .expect("queue a command");
    }

    /// Waits until every partition of this test's topics has all its replicas in sync
    /// again (after a broker came back), as an operator waits before the next broker.
    pub fn wait_until_fully_replicated(&self) {
        let names = self.topics.all();
        crate::barrier::poll_until(
            "every partition's replicas in sync",
            WAIT,
            Duration::from_millis(200),
            || {
                let metadata = self
                    .collector
                    .fetch_metadata(None, Duration::from_secs(5))
                    .map_err(|e| e.to_string())?;
                let lagging: Vec<String> = metadata
                    .topics()
                    .iter()
                    .filter(|topic| names.iter().any(|name| *name == topic.name()))
                    .flat_map(|topic| {
                        topic
                            .partitions()
                            .iter()
                            .filter(|p| p.isr().len() < p.replicas().len())
                            .map(move |p| format!("{}/{}", topic.name(), p.id()))
                    })
                    .collect();
                if lagging.is_empty() {
                    Ok(())
                } else {
                    Err(format!("out of sync: {}", lagging.join(", ")))
                }
            },
        );
    }

    /// Waits until every command sent so far is in Kafka.
    pub fn flush(&self) {
        self.producer
            .flush(Duration::from_secs(30))
            .expect("commands reach Kafka");
    }

    /// Wire-format bytes made by hand: magic byte 0, schema id big-endian, datum.
    pub fn wire_bytes(schema_id: u32, schema: &str, fields: Vec<(String, Value)>) -> Vec<u8> {
        let schema = Schema::parse_str(schema).expect("test schema");
        let datum = apache_avro::to_avro_datum(&schema, Value::Record(fields))
            .expect("encode test command");
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(&schema_id.to_be_bytes());
        bytes.extend_from_slice(&datum);
        bytes
    }

    pub fn send_account_creation(&self, id: Uuid, a_type: &str) {
        let index = if a_type == "AUTO" { 0 } else { 1 };
        let fields = vec![
            ("id".to_string(), Value::Fixed(16, id.as_bytes().to_vec())),
            ("a_type".to_string(), Value::Enum(index, a_type.to_string())),
        ];
        let bytes = TestEnv::wire_bytes(
            self.command_schema_ids["cac"],
            CONFIRM_ACCOUNT_CREATION_SCHEMA,
            fields,
        );
        self.produce(
            &self.topics.cac,
            Some(id.to_string().as_bytes()),
            Some(&bytes),
            None,
        );
    }

    pub fn send_transfer(&self, command: &TransferCmd) {
        self.send_transfer_to_partition(command, None);
    }

    pub fn send_transfer_to_partition(&self, command: &TransferCmd, partition: Option<i32>) {
        let bytes = TestEnv::wire_bytes(
            self.command_schema_ids["cmt"],
            CONFIRM_MONEY_TRANSFER_SCHEMA,
            command.fields(),
        );
        self.produce(
            &self.topics.cmt,
            Some(command.id.to_string().as_bytes()),
            Some(&bytes),
            partition,
        );
    }

    /// Sends a transfer record that is not Avro under a fresh key and waits until it
    /// is dead-lettered; its key.
    pub fn dead_letter_a_poison_record(&mut self) -> String {
        let poison_key = Uuid::new_v4().to_string();
        let cmt = self.topics.cmt.clone();
        self.send_raw(&cmt, Some(poison_key.as_bytes()), Some(b"not avro"));
        self.flush();
        self.collect_until("the dead letter", |outputs| {
            outputs.iter().any(|o| o.key_text() == poison_key)
        });
        poison_key
    }

    /// Sends anything to a command topic, for poison-record tests.
    pub fn send_raw(&self, topic: &str, key: Option<&[u8]>, value: Option<&[u8]>) {
        self.produce(topic, key, value, None);
    }

    // ------------------------------------------------------------------ answers

    /// Reads output until `done` holds for everything read so far, or fails the test
    /// at the deadline showing what was read. `done` runs once per round of reading
    /// (everything available is read first), not once per record; waits over many
    /// records use [`TestEnv::collect_counting`], which looks at each record once.
    pub fn collect_until(&mut self, what: &str, done: impl Fn(&[Output]) -> bool) -> &[Output] {
        self.collect_counting(what, |all, _new| done(all));
        &self.outputs
    }

    /// Reads output until `done` holds, or fails the test at the deadline showing what
    /// was read. `done` gets everything read so far and, separately, only what this
    /// round read, so a wait can keep its own count and stay linear in the records.
    pub fn collect_counting(
        &mut self,
        what: &str,
        mut done: impl FnMut(&[Output], &[Output]) -> bool,
    ) {
        let deadline = Instant::now() + WAIT;
        let mut checked = 0;
        loop {
            let (all, new) = (&self.outputs[..], &self.outputs[checked..]);
            if done(all, new) {
                return;
            }
            checked = self.outputs.len();
            if Instant::now() > deadline {
                let seen: Vec<String> = self
                    .outputs
                    .iter()
                    .map(|o| format!("{}: {}", o.topic, o.summary()))
                    .collect();
                panic!(
                    "timed out waiting for {what}; read {} records:\n{}\n{}",
                    seen.len(),
                    seen.join("\n"),
                    self.read_positions()
                );
            }
            self.read_available(Duration::from_millis(100));
        }
    }

    /// Waits up to `timeout` for one record, then reads, without waiting, whatever else
    /// is there (up to a bound, so that the caller's checks and deadline still run).
    fn read_available(&mut self, timeout: Duration) {
        self.rebootstrap_while_reading_fails();
        if !self.poll_outputs(timeout) {
            return;
        }
        for _ in 0..10_000 {
            if !self.poll_outputs(Duration::ZERO) {
                return;
            }
        }
    }

    /// Per output partition: the last offset read and the broker's high watermark.
    fn read_positions(&self) -> String {
        let mut lines = vec![format!(
            "{} read errors, the last: {:?}\nread positions (last offset read / high watermark):",
            self.read_errors, self.last_read_error
        )];
        let mut last_read: HashMap<(&str, i32), i64> = HashMap::new();
        for output in &self.outputs {
            let last = last_read
                .entry((&output.topic, output.partition))
                .or_default();
            *last = (*last).max(output.offset);
        }
        for topic in self.topics.outputs() {
            for partition in 0..self.partitions {
                let read = last_read.get(&(topic.as_str(), partition));
                let high = self
                    .collector
                    .fetch_watermarks(topic, partition, Duration::from_secs(5))
                    .map(|(_, h)| h);
                lines.push(format!("  {topic}/{partition}: {read:?} / {high:?}"));
            }
        }
        lines.join("\n")
    }

    /// Reads one record, if one comes within `timeout`; false if none came.
    /// While reading fails, gives the test's own clients the brokers again every 5 s:
    /// librdkafka 2.12 forgets every broker it knows on a Metadata response listing
    /// none, which a broker thawed after a freeze gives while it is fenced
    /// (librdkafka#5301), and then never connects again (seen once in CI: the handler,
    /// whose prober does the same, answered; the test's reader never read it).
    fn rebootstrap_while_reading_fails(&mut self) {
        if !self.reading_fails
            || self
                .rebootstrapped_at
                .is_some_and(|at| at.elapsed() < Duration::from_secs(5))
        {
            return;
        }
        self.rebootstrapped_at = Some(Instant::now());
        let brokers = std::ffi::CString::new(self.stack.brokers.as_str()).unwrap();
        // SAFETY: live clients and a NUL-terminated list that lives for the calls,
        // which copy it.
        unsafe {
            rdkafka::bindings::rd_kafka_brokers_add(
                self.collector.client().native_ptr(),
                brokers.as_ptr(),
            );
            rdkafka::bindings::rd_kafka_brokers_add(
                self.producer.client().native_ptr(),
                brokers.as_ptr(),
            );
        }
    }

    fn poll_outputs(&mut self, timeout: Duration) -> bool {
        let Some(result) = self.collector.poll(timeout) else {
            return false;
        };
        // The broker may be away (outage tests): try again on the next poll.
        let message = match result {
            Ok(message) => message,
            Err(error) => {
                self.read_errors += 1;
                self.last_read_error = Some(error.to_string());
                self.reading_fails = true;
                return false;
            }
        };
        self.reading_fails = false;
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        let value = message.payload().map(<[u8]>::to_vec);
        let mut output = Output {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: value.clone(),
            headers,
            record: None,
            schema_id: None,
        };
        if output.topic != self.topics.dlq {
            let bytes = value.unwrap_or_else(|| panic!("{} record without value", output.topic));
            let (schema_id, record) = self.decode_wire(&bytes);
            output.schema_id = Some(schema_id);
            output.record = Some(record);
        }
        if output.topic == self.topics.acf || output.topic == self.topics.mtf {
            self.answer_positions
                .entry(output.id())
                .or_default()
                .push(self.outputs.len());
        }
        self.outputs.push(output);
        true
    }

    /// Decodes the Confluent wire format by hand.
    fn decode_wire(&mut self, bytes: &[u8]) -> (u32, (String, BTreeMap<String, Value>)) {
        assert!(
            bytes.len() >= 5,
            "value shorter than the wire header: {bytes:?}"
        );
        assert_eq!(bytes[0], 0, "magic byte");
        let schema_id = u32::from_be_bytes(bytes[1..5].try_into().unwrap());
        let stack = self.stack;
        let schema = self.schema_cache.entry(schema_id).or_insert_with(|| {
            let registered = get_schema_by_id(schema_id, &stack.registry()).unwrap_or_else(|e| {
                panic!("schema id {schema_id} of an output is unknown to the registry: {e}")
            });
            Schema::parse_str(&registered.schema).expect("registered schema parses")
        });
        let name = match &*schema {
            Schema::Record(record) => record.name.fullname(None),
            other => panic!("output schema is not a record: {other:?}"),
        };
        let value = apache_avro::from_avro_datum(schema, &mut &bytes[5..], None)
            .expect("datum matches its schema");
        let Value::Record(fields) = value else {
            panic!("not a record")
        };
        (schema_id, (name, fields.into_iter().collect()))
    }

    /// The partition count of `topic`, None when the cluster does not have it.
    pub fn partitions_of(&self, topic: &str) -> Option<i32> {
        let metadata = self
            .collector
            .fetch_metadata(None, Duration::from_secs(10))
            .expect("cluster metadata");
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
    }

    /// How many records `topic` holds (the sum of its partitions' high watermarks).
    pub fn records_in(&self, topic: &str) -> i64 {
        (0..self.partitions_of(topic).unwrap_or(0))
            .map(|partition| self.high_watermark(topic, partition))
            .sum()
    }

    /// The offset after the last record of `topic`'s `partition`.
    /// Asked again until `WAIT` passes: just after a broker failover the partition's
    /// leader may not be known yet. The reader of the outputs knows only their topics'
    /// partitions once brokers failed over (it answers "unknown partition" for a
    /// command topic then); the producer of the commands knows those.
    pub fn high_watermark(&self, topic: &str, partition: i32) -> i64 {
        let what = format!("the watermarks of {topic}/{partition}");
        crate::barrier::poll_until(&what, WAIT, Duration::from_millis(200), || {
            let timeout = Duration::from_secs(10);
            self.collector
                .fetch_watermarks(topic, partition, timeout)
                .or_else(|_| {
                    self.producer
                        .client()
                        .fetch_watermarks(topic, partition, timeout)
                })
                .map(|(_, high)| high)
                .map_err(|e| e.to_string())
        })
    }

    /// The topics the handler writes to.
    pub fn output_topics(&self) -> Vec<String> {
        self.topics.outputs().into_iter().cloned().collect()
    }

    pub fn outputs(&self) -> &[Output] {
        &self.outputs
    }

    pub fn on_topic<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a Output> + 'a {
        self.outputs.iter().filter(move |o| o.topic == topic)
    }

    /// Feedback records (on either feedback topic) answering this command id.
    pub fn answers_to(&self, id: Uuid) -> Vec<&Output> {
        self.answer_positions
            .get(&id)
            .map(|positions| positions.iter().map(|&i| &self.outputs[i]).collect())
            .unwrap_or_default()
    }

    /// Waits for at least one answer to each id; the first answer of each.
    pub fn await_answers(&mut self, ids: &[Uuid]) -> Vec<Output> {
        let (acf, mtf) = (self.topics.acf.clone(), self.topics.mtf.clone());
        // Ids still waiting for an answer; each record read is looked at once.
        let mut waiting: std::collections::HashSet<Uuid> = ids.iter().copied().collect();
        self.collect_counting(&format!("answers to {} commands", ids.len()), |_, new| {
            for output in new.iter().filter(|o| o.topic == acf || o.topic == mtf) {
                waiting.remove(&output.id());
            }
            waiting.is_empty()
        });
        ids.iter()
            .map(|id| self.answers_to(*id)[0].clone())
            .collect()
    }

    pub fn await_answer(&mut self, id: Uuid) -> Output {
        self.await_answers(&[id]).remove(0)
    }

    /// Opens an account through the handler; its IBAN and token.
    pub fn open_account(&mut self) -> (String, String) {
        let id = Uuid::new_v4();
        self.send_account_creation(id, "MANUAL");
        self.flush();
        let answer = self.await_answer(id);
        assert_eq!(
            answer.record_name(),
            "nl.openweb.data.AccountCreationConfirmed",
            "{}",
            answer.summary()
        );
        (answer.string("iban"), answer.string("token"))
    }

    /// Sends a transfer and returns its answer: None if confirmed, else the reason.
    pub fn transfer(&mut self, command: &TransferCmd) -> Option<String> {
        self.send_transfer(command);
        self.flush();
        let answer = self.await_answer(command.id);
        match answer.record_name() {
            "nl.openweb.data.MoneyTransferConfirmed" => None,
            "nl.openweb.data.MoneyTransferFailed" => Some(answer.string("reason")),
            other => panic!("unexpected answer {other}"),
        }
    }

    pub fn balance_changes_for(&self, iban: &str) -> Vec<&Output> {
        self.on_topic(&self.topics.bc)
            .filter(|o| o.string("iban") == iban)
            .collect()
    }

    // ------------------------------------------------------------------ database

    pub fn db(&self) -> PgConnection {
        PgConnection::establish(&self.database_url()).expect("connect to the test database")
    }

    /// The test database as the superuser: reads whoever owns the tables.
    pub fn admin_db(&self) -> PgConnection {
        let server = self
            .stack
            .admin_database_url
            .rsplit_once('/')
            .expect("a database URL")
            .0
            .to_string();
        PgConnection::establish(&format!("{server}/{}", self.database))
            .expect("connect to the test database as admin")
    }

    /// The amount of an account, straight from the `balance` table.
    pub fn amount(&self, iban: &str) -> Option<i64> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = BigInt)]
            amount: i64,
        }
        diesel::sql_query("SELECT amount FROM balance WHERE iban = $1")
            .bind::<Text, _>(iban)
            .get_result::<Row>(&mut self.admin_db())
            .optional()
            .expect("query balance")
            .map(|row| row.amount)
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        for handler in &mut self.handlers {
            handler.kill();
            if failed {
                handler.print_log_tail(60);
            }
        }
        let stack = self.stack;
        let _ = diesel::sql_query(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.database
        ))
        .execute(&mut stack.admin_connection());
        let topics = [
            &self.topics.cac,
            &self.topics.acf,
            &self.topics.cmt,
            &self.topics.mtf,
            &self.topics.bc,
            &self.topics.dlq,
        ];
        stack.delete_topics(&topics);
    }
}

/// A handler process, its output captured to `target/test-logs/`.
pub struct Handler {
    child: Child,
    pub log_path: PathBuf,
    exit: Option<ExitStatus>,
    /// The instance slot whose group membership it holds (see `TestEnv::start_handler`).
    pub slot: Option<usize>,
}

impl Handler {
    /// The handler built with the tests, or the build `E2E_HANDLER_BINARY` names (to
    /// see a test fail against a deliberately broken or older build).
    pub fn binary() -> &'static str {
        static BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        BINARY.get_or_init(|| {
            std::env::var("E2E_HANDLER_BINARY")
                .unwrap_or_else(|_| env!("CARGO_BIN_EXE_command-handler").to_string())
        })
    }

    pub fn start(name: &str, vars: &[(String, String)]) -> Handler {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("handler-logs");
        fs::create_dir_all(&dir).unwrap();
        let log_path = dir.join(format!("{name}.log"));
        let log = fs::File::create(&log_path).unwrap();
        let child = Command::new(Handler::binary())
            .env_clear()
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", Handler::binary()));
        Handler {
            child,
            log_path,
            exit: None,
            slot: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn print_log_tail(&self, lines: usize) {
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        eprintln!("---- last lines of {} ----", self.log_path.display());
        for line in tail.into_iter().rev() {
            eprintln!("{line}");
        }
    }

    /// Sends a signal by name (TERM, INT, KILL).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Waits for the process to exit, failing the test after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let waiting = format!("handler {} to exit", self.pid());
        let status = crate::barrier::poll_until(&waiting, limit, Duration::from_millis(50), || {
            self.child.try_wait().unwrap().ok_or_else(|| {
                let log = self.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            })
        });
        self.exit = Some(status);
        status
    }

    /// SIGTERM, then fails the test unless the handler exits 0 within 30 s.
    pub fn stop_cleanly(&mut self) {
        self.signal("TERM");
        let status = self.wait_exit(Duration::from_secs(30));
        assert!(status.success(), "SIGTERM: exit status {status}");
    }

    /// Waits until the handler logged `text`, or fails the test.
    pub fn wait_for_log(&mut self, text: &str) {
        self.wait_for_log_where(&format!("{text:?}"), |log| log.contains(text));
    }

    /// Waits until the log satisfies `done`, failing the test at the deadline or if the
    /// handler exits first.
    pub fn wait_for_log_where(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        let waiting = format!("the handler to log {what}");
        crate::barrier::poll_until(&waiting, WAIT, Duration::from_millis(50), || {
            let log = self.log();
            if done(&log) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                self.print_log_tail(40);
                panic!("handler exited ({status}) before logging {what}");
            }
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            Err(tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
        })
    }

    /// Where the handler serves HTTP, from its start-up line (waits for it).
    pub fn http_address(&mut self) -> String {
        const LINE: &str = "serving health and metrics on http://";
        self.wait_for_log(LINE);
        let log = self.log();
        let rest = &log[log.find(LINE).unwrap() + LINE.len()..];
        rest[..rest.find('/').unwrap()].to_string()
    }

    pub fn is_running(&mut self) -> bool {
        self.exit.is_none() && self.child.try_wait().unwrap().is_none()
    }

    pub fn kill(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }
}

/// A handler the test did not stop (it failed first) does not outlive it.
impl Drop for Handler {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP response as a test sees it.
pub struct HttpReply {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// One HTTP request; fails the test if the server does not answer at all.
pub fn http(method: &str, url: &str) -> HttpReply {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let response = client
        .request(method, url)
        .send()
        .unwrap_or_else(|e| panic!("no HTTP answer from {url}: {e}"));
    HttpReply {
        status: response.status().as_u16(),
        content_type: response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body: response.text().unwrap_or_default(),
    }
}

/// The number a `SELECT count(*) AS n …` query answers.
pub fn count(conn: &mut PgConnection, query: &str) -> i64 {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    diesel::sql_query(query)
        .get_result::<Count>(conn)
        .unwrap_or_else(|e| panic!("{query}: {e}"))
        .n
}

/// Polls `url` until `done` holds for a reply, or fails the test with the last one.
pub fn http_until(url: &str, what: &str, done: impl Fn(&HttpReply) -> bool) -> HttpReply {
    let waiting = format!("{what} at {url}");
    crate::barrier::poll_until(&waiting, WAIT, Duration::from_millis(200), || {
        let reply = http("GET", url);
        if done(&reply) {
            Ok(reply)
        } else {
            Err(format!("{} {}", reply.status, reply.body))
        }
    })
}

/// The value of the sample `name{labels}` (labels as exposed, in order) in a Prometheus
/// exposition, if present.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}
