//! Configuration from environment variables (SPEC §6), parsed once at start-up.
//!
//! Every variable of the JVM handler keeps its name and default. Invalid values stop
//! start-up with one message naming the variable. Secrets live in [`Secret`], whose
//! `Debug`/`Display` never show the value, so a logged `Config` cannot leak them.

mod kafka;
pub mod secret;
pub(crate) mod tls_stores;
mod vars;

pub use self::kafka::{
    ClientCertificate, ClientScope, KafkaProperty, KafkaTls, SaslLogin, SaslMechanism, TlsFiles,
};
use self::kafka::{JVM_TLS_VARIABLES, kafka_properties};
pub use self::secret::Secret;
use self::vars::Vars;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    pub account_creation_commands: String,
    pub account_creation_feedback: String,
    pub money_transfer_commands: String,
    pub money_transfer_feedback: String,
    pub balance_changed: String,
    pub dead_letter: String,
}

/// Which of the two command topics a consumer loop reads, and so which kind of
/// command it handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandTopic {
    AccountCreation,
    MoneyTransfer,
}

impl CommandTopic {
    pub const BOTH: [CommandTopic; 2] =
        [CommandTopic::AccountCreation, CommandTopic::MoneyTransfer];

    /// The name metrics and logs use for this kind of command.
    pub fn label(self) -> &'static str {
        match self {
            CommandTopic::AccountCreation => "account_creation",
            CommandTopic::MoneyTransfer => "money_transfer",
        }
    }
}

impl Topics {
    /// The topic commands of this kind come from.
    pub fn commands(&self, kind: CommandTopic) -> &String {
        match kind {
            CommandTopic::AccountCreation => &self.account_creation_commands,
            CommandTopic::MoneyTransfer => &self.money_transfer_commands,
        }
    }

    /// The topics the handler writes to: the answers, the events and the dead letters.
    pub fn outputs(&self) -> [&String; 4] {
        [
            &self.account_creation_feedback,
            &self.money_transfer_feedback,
            &self.balance_changed,
            &self.dead_letter,
        ]
    }

    /// Every topic the handler reads or writes.
    pub fn all(&self) -> [&String; 6] {
        [
            &self.account_creation_commands,
            &self.account_creation_feedback,
            &self.money_transfer_commands,
            &self.money_transfer_feedback,
            &self.balance_changed,
            &self.dead_letter,
        ]
    }
}

/// HTTP basic authentication to the Schema Registry (an API key and its secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryCredentials {
    pub key: String,
    pub secret: Secret,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub kafka_brokers: String,
    /// May carry credentials (`https://key:secret@host`), hence a secret.
    pub schema_registry_url: Secret,
    /// A PostgreSQL URL or libpq connection string, with the password in it.
    pub database_url: Secret,
    pub topics: Topics,
    /// Client id, and also the consumer group id (as the JVM handler did).
    pub client_id: String,
    pub tls: Option<KafkaTls>,
    /// Both kinds of TLS variables were set: the PEM files won, the stores are unused.
    pub jvm_stores_ignored: bool,
    /// SASL over TLS; with it the clients always encrypt.
    pub sasl: Option<SaslLogin>,
    pub registry_credentials: Option<RegistryCredentials>,
    /// Where health and metrics are served over HTTP; None: not served.
    pub http_address: Option<std::net::SocketAddr>,
    /// How long a consumer loop may show no progress before liveness fails.
    pub liveness_stall: std::time::Duration,
    /// Any other librdkafka property, from `RDKAFKA_*` variables (values may be secrets).
    pub kafka_properties: Vec<KafkaProperty>,
    /// Most commands applied in one database transaction.
    pub batch_size: usize,
    /// The shape of the dead-letter topic when the handler creates it; None: chosen
    /// from the cluster (see `topics::default_shape`).
    pub dead_letter_partitions: Option<i32>,
    pub dead_letter_replication: Option<i32>,
    /// Register the handler's schemas under their subjects (`SCHEMA_REGISTRY_AUTO_REGISTER`);
    /// off: write with each subject's latest registered version, as the JVM handler.
    pub register_schemas: bool,
    pub producer_linger_ms: u32,
    pub db_pool_size: u32,
    /// How the command consumers fetch.
    pub consumer: ConsumerTuning,
}

/// An invalid variable: start-up stops with this message.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {variable}: {problem}")]
pub struct ConfigError {
    pub variable: String,
    pub problem: String,
}

/// Database name and user of the JVM deployments, reached through the DB_* trio.
pub const DATABASE_NAME: &str = "balancedb";
pub const DEFAULT_DB_USER: &str = "clojure_ch";
/// The JVM deployments' default database password (`DB_PASSWORD`).
const DEFAULT_DB_PASSWORD: &str = "open-bank";

impl Default for Topics {
    /// The JVM handler's topic names (SPEC §6), and the dead-letter topic's.
    fn default() -> Self {
        Topics {
            account_creation_commands: "confirm_account_creation".into(),
            account_creation_feedback: "account_creation_feedback".into(),
            money_transfer_commands: "confirm_money_transfer".into(),
            money_transfer_feedback: "money_transfer_feedback".into(),
            balance_changed: "balance_changed".into(),
            dead_letter: "command_handler_dead_letter".into(),
        }
    }
}

/// How the command consumers fetch: a few batches ahead is all a loop that waits on
/// the database can use, and the memory stays bounded when the handler falls behind
/// (see dev/bench). `RDKAFKA_CONSUMER_*` variables override each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerTuning {
    /// `queued.max.messages.kbytes` (librdkafka's default: 64 MB per partition).
    pub queued_max_kbytes: u32,
    /// `queued.min.messages` (librdkafka's default: 100,000).
    pub queued_min_messages: u32,
    /// `fetch.queue.backoff.ms`: short, or every full queue stalls its partition (the
    /// default is a second).
    pub fetch_queue_backoff_ms: u32,
    /// `auto.commit.interval.ms`: how often stored offsets are committed.
    pub auto_commit_interval_ms: u32,
    /// `statistics.interval.ms`: the statistics feed the consumer lag metric, so they
    /// are on only while HTTP serves the metrics.
    pub statistics_interval_ms: u32,
}

impl Default for ConsumerTuning {
    fn default() -> Self {
        ConsumerTuning {
            queued_max_kbytes: 4096,
            queued_min_messages: 1000,
            fetch_queue_backoff_ms: 10,
            auto_commit_interval_ms: 1000,
            statistics_interval_ms: 5000,
        }
    }
}

impl Default for Config {
    /// What an empty environment gives: the JVM handler's defaults (SPEC §6), and this
    /// handler's own for what it added.
    fn default() -> Self {
        Config {
            kafka_brokers: "127.0.0.1:9092".into(),
            schema_registry_url: Secret::new("http://localhost:8081"),
            database_url: Secret::new(vars::connection_string(
                "localhost",
                5432,
                DEFAULT_DB_USER,
                DEFAULT_DB_PASSWORD,
            )),
            topics: Topics::default(),
            client_id: "command-handler".into(),
            tls: None,
            jvm_stores_ignored: false,
            sasl: None,
            registry_credentials: None,
            http_address: None,
            liveness_stall: std::time::Duration::from_secs(120),
            kafka_properties: Vec::new(),
            batch_size: 100,
            dead_letter_partitions: None,
            dead_letter_replication: None,
            register_schemas: false,
            // 0: a batch's records are handed to the producer together and the consumer
            // waits for their acknowledgement, so lingering only adds latency (dev/bench).
            producer_linger_ms: 0,
            db_pool_size: 4,
            consumer: ConsumerTuning::default(),
        }
    }
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        // Variables whose name or value is not Unicode are none of ours.
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        Config::from_vars(vars)
    }

    /// Parses the configuration from any set of variables (tests pass their own, so no
    /// test touches the process environment).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let all: std::collections::HashMap<String, String> = vars.into_iter().collect();
        let lookup = |name: &str| all.get(name).cloned();
        let vars = Vars(&lookup);
        let d = Config::default();
        let topics = Topics {
            account_creation_commands: vars
                .topic("KAFKA_CAC_TOPIC", &d.topics.account_creation_commands)?,
            account_creation_feedback: vars
                .topic("KAFKA_ACF_TOPIC", &d.topics.account_creation_feedback)?,
            money_transfer_commands: vars
                .topic("KAFKA_CMT_TOPIC", &d.topics.money_transfer_commands)?,
            money_transfer_feedback: vars
                .topic("KAFKA_MTF_TOPIC", &d.topics.money_transfer_feedback)?,
            balance_changed: vars.topic("KAFKA_BC_TOPIC", &d.topics.balance_changed)?,
            dead_letter: vars.topic("KAFKA_DEAD_LETTER_TOPIC", &d.topics.dead_letter)?,
        };
        if topics.account_creation_commands == topics.money_transfer_commands {
            return Err(ConfigError {
                variable: "KAFKA_CMT_TOPIC".into(),
                problem: "must differ from KAFKA_CAC_TOPIC".into(),
            });
        }

        let schema_registry_url =
            vars.text("SCHEMA_REGISTRY_URL", d.schema_registry_url.expose())?;
        if !(schema_registry_url.starts_with("http://")
            || schema_registry_url.starts_with("https://"))
        {
            return Err(ConfigError {
                variable: "SCHEMA_REGISTRY_URL".into(),
                problem: "must start with http:// or https://".into(),
            });
        }

        // PEM files win over the JVM stores when both are given: whoever added the
        // KAFKA_SSL_* variables to the JVM handler's environment meant them.
        // The ignored stores are not even opened.
        let mut jvm_stores_ignored = false;
        let tls = match vars.tls()? {
            Some(files) => {
                jvm_stores_ignored = JVM_TLS_VARIABLES
                    .iter()
                    .any(|name| vars.get(name).is_some());
                Some(KafkaTls::Pem(files))
            }
            None => vars.jvm_stores()?.map(KafkaTls::JvmStores),
        };

        Ok(Config {
            kafka_brokers: vars.text("KAFKA_BROKERS", &d.kafka_brokers)?,
            schema_registry_url: Secret::new(schema_registry_url),
            database_url: vars.database_url()?,
            topics,
            client_id: vars.text("KAFKA_CLIENT_ID", &d.client_id)?,
            tls,
            jvm_stores_ignored,
            sasl: vars.sasl()?,
            registry_credentials: vars.registry_credentials()?,
            http_address: vars.http_address()?,
            liveness_stall: std::time::Duration::from_secs(vars.number(
                "HTTP_LIVENESS_STALL_SECONDS",
                d.liveness_stall.as_secs(),
                1,
                3600,
            )?),
            kafka_properties: kafka_properties(&all)?,
            batch_size: vars.number("COMMAND_BATCH_SIZE", d.batch_size as u64, 1, 1000)? as usize,
            dead_letter_partitions: vars.optional_number(
                "KAFKA_DEAD_LETTER_PARTITIONS",
                1,
                10_000,
            )?,
            dead_letter_replication: vars.optional_number(
                "KAFKA_DEAD_LETTER_REPLICATION",
                1,
                32,
            )?,
            register_schemas: vars.flag("SCHEMA_REGISTRY_AUTO_REGISTER", d.register_schemas)?,
            producer_linger_ms: vars.number(
                "KAFKA_LINGER_MS",
                d.producer_linger_ms.into(),
                0,
                60_000,
            )? as u32,
            db_pool_size: vars.number("DB_POOL_SIZE", d.db_pool_size.into(), 2, 100)? as u32,
            consumer: d.consumer,
        })
    }
}

/// Where the handler serves health and metrics, from `HTTP_PORT` and `HTTP_BIND_ADDRESS`
/// alone: the `health` command must not fail because of an unrelated variable (or a TLS
/// store being rotated).
pub fn http_address_from_env() -> Result<Option<std::net::SocketAddr>, ConfigError> {
    let lookup = |name: &str| std::env::var(name).ok();
    Vars(&lookup).http_address()
}

impl Config {
    /// How the clients reach the brokers, for logs and the `check` report.
    pub fn kafka_security(&self) -> String {
        let tls = match &self.tls {
            Some(KafkaTls::Pem(TlsFiles {
                client_certificate: Some(_),
                ..
            })) => "mutual TLS",
            Some(KafkaTls::JvmStores(_)) => "mutual TLS (the JVM handler's keytool stores)",
            _ if self.sasl.is_some() || self.tls.is_some() => "TLS",
            _ => "plaintext",
        };
        let ignored = if self.jvm_stores_ignored {
            " (from the KAFKA_SSL_* PEM files, which win: the SSL_* keytool stores are ignored)"
        } else {
            ""
        };
        match &self.sasl {
            Some(login) => format!("SASL {} over {tls}{ignored}", login.mechanism.name()),
            None => format!("{tls}{ignored}"),
        }
    }
}

#[cfg(test)]
mod tests;
