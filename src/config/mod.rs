//! Configuration from environment variables (SPEC §6), parsed once at start-up.
//!
//! Every variable is declared once, in [`settings`]: name, type, range, default and
//! help, parsed by clap. [`rules`] adds what spans several variables and builds the
//! [`Config`] the handler reads. Every variable of the JVM handler keeps its name and
//! default. Invalid values stop start-up with one message naming the variable. Secrets
//! live in [`Secret`], whose `Debug`/`Display` never show the value, so a logged
//! `Config` cannot leak them. The JVM handler's TLS stores are opened in a step of
//! their own, [`Config::load_tls`], which `check` reports on.

mod kafka;
mod parsers;
mod rules;
pub mod secret;
mod settings;
mod source;
pub(crate) mod tls_stores;

pub use self::kafka::{
    ClientCertificate, ClientScope, KafkaProperty, KafkaTls, SaslLogin, SaslMechanism, TlsFiles,
};
pub use self::secret::Secret;
pub use self::settings::LogFormat;
use self::settings::Settings;
use self::source::Vars;
pub use self::source::variables_help;
pub use self::tls_stores::JvmStores;

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

/// For people: `reads a, b; answers on c, d; events on e; dead letters to f`.
impl std::fmt::Display for Topics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reads {}, {}; answers on {}, {}; events on {}; dead letters to {}",
            self.account_creation_commands,
            self.money_transfer_commands,
            self.account_creation_feedback,
            self.money_transfer_feedback,
            self.balance_changed,
            self.dead_letter
        )
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

/// What the handler reads of its configuration, every value parsed and checked.
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
    /// Whether this instance's consumers are static members of the group.
    pub membership: GroupMembership,
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
    pub logging: Logging,
}

/// How the command consumers belong to their group (`KAFKA_GROUP_INSTANCE_ID`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupMembership {
    /// Static membership (KIP-345): each consumer joins as `<name>-<command kind>`, and
    /// the group keeps its partitions for it while it is away, up to the session
    /// timeout. A restart within that time (a deploy, a crash with `restart: always`)
    /// moves no partition and starts no rebalance.
    Static { name: String },
    /// Every start joins as a new member (`KAFKA_GROUP_INSTANCE_ID=none`, or no host
    /// name to default to).
    Dynamic,
}

impl GroupMembership {
    /// The `group.instance.id` of the consumer of one kind of command.
    pub fn instance_id(&self, kind: CommandTopic) -> Option<String> {
        match self {
            GroupMembership::Static { name } => Some(format!("{name}-{}", kind.label())),
            GroupMembership::Dynamic => None,
        }
    }
}

/// How the handler logs (`RUST_LOG`, `LOG_FORMAT`), for `crate::logging::init`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logging {
    /// An `env_logger` filter. `RUST_LOG` replaces the default rather than adding to
    /// it: merged, the default's `open_bank_command_handler=info` would outrank a plain
    /// `RUST_LOG=debug`.
    pub filter: String,
    pub format: LogFormat,
}

/// An invalid variable: start-up stops with this message.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {variable}: {problem}")]
pub struct ConfigError {
    pub variable: String,
    pub problem: String,
}

/// The database of the JVM deployments, reached through the DB_* variables.
pub const DATABASE_NAME: &str = "balancedb";

/// How the command consumers fetch: a few batches ahead is all a loop that waits on
/// the database can use, and the memory stays bounded when the handler falls behind
/// (see dev/bench). No variable of its own sets these: they are the handler's defaults
/// of librdkafka properties, and `RDKAFKA_CONSUMER_*` overrides each (set after them),
/// as the README says.
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
    /// `partition.assignment.strategy` of the classic group protocol: cooperative, so
    /// that a member joining or leaving moves only the partitions that change owner and
    /// the others keep flowing (librdkafka's default revokes every partition first).
    pub assignment_strategy: &'static str,
    /// `fetch.error.backoff.ms`: how long a partition waits to fetch again after an
    /// error, such as its leader moving to another broker (the default: 500 ms, which a
    /// broker's controlled shutdown adds to every answer of the partitions it led).
    pub fetch_error_backoff_ms: u32,
    /// `coordinator.query.interval.ms`: how often the group coordinator is looked up,
    /// a tenth of it while the one known is unreachable (the default, 10 minutes, left
    /// a consumer without its coordinator for up to a minute after a broker came back,
    /// until its session ran out).
    pub coordinator_query_interval_ms: u32,
    /// `heartbeat.interval.ms` of the classic protocol: members learn of a rebalance
    /// with a heartbeat's answer, and a cooperative rebalance takes two rounds (the
    /// default: 3 s).
    pub heartbeat_interval_ms: u32,
}

impl Default for ConsumerTuning {
    fn default() -> Self {
        ConsumerTuning {
            queued_max_kbytes: 4096,
            queued_min_messages: 1000,
            fetch_queue_backoff_ms: 10,
            auto_commit_interval_ms: 1000,
            statistics_interval_ms: 5000,
            fetch_error_backoff_ms: 100,
            coordinator_query_interval_ms: 10_000,
            assignment_strategy: "cooperative-sticky",
            heartbeat_interval_ms: 1000,
        }
    }
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(unicode_env())
    }

    /// Parses the configuration from any set of variables (tests pass their own, so no
    /// test touches the process environment). The TLS stores are not opened yet.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let vars = Vars::new(vars);
        Settings::from_vars(&vars)?.into_config(&vars)
    }

    /// Opens the JVM handler's keytool stores when they are the TLS in use: a wrong
    /// password, a legacy JKS store or a truststore in the keystore's place is an error
    /// naming the variable. Start-up calls it before any Kafka client is made (and
    /// exits 78 on an error); `check` reports it as a line of its own.
    pub fn load_tls(&mut self) -> Result<(), ConfigError> {
        match &mut self.tls {
            Some(KafkaTls::JvmStores(stores)) => stores.open().map_err(|e| ConfigError {
                variable: e.variable.into(),
                problem: e.problem,
            }),
            _ => Ok(()),
        }
    }

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

/// Where the handler serves health and metrics, from `HTTP_PORT` and `HTTP_BIND_ADDRESS`
/// alone: the `health` command must not fail because of an unrelated variable (or a TLS
/// store being rotated). The other declared variables take their defaults.
pub fn http_address_from_env() -> Result<Option<std::net::SocketAddr>, ConfigError> {
    http_address_from(unicode_env())
}

fn http_address_from(
    vars: impl Iterator<Item = (String, String)>,
) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    let http = ["HTTP_PORT", "HTTP_BIND_ADDRESS"];
    let vars = Vars::new(vars.filter(|(name, _)| http.contains(&name.as_str())));
    Settings::from_vars(&vars)?.http_address(&vars)
}

/// The process environment; variables whose name or value is not Unicode are none of
/// ours.
fn unicode_env() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
}

#[cfg(test)]
mod declaration_tests;
#[cfg(test)]
mod readme_tests;
#[cfg(test)]
mod tests;
