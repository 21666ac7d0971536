//! Every variable the handler reads, declared once: its name, type, range, default and
//! one-line help. The help text (`command-handler --help`), the parsing with its range
//! checks and the README's configuration table (held to this by a test) all come from
//! here. What needs more than one variable is in `rules`; the `RDKAFKA_*` pass-through,
//! which no declaration can list, is in `kafka`.
//!
//! The long flags are only how [`super::source`] hands clap the variables' values: the
//! handler is configured by its environment alone (SPEC §6).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{RangedU64ValueParser, TypedValueParser};
use clap::value_parser;

use super::parsers;
use super::{SaslMechanism, Secret};

/// How log lines are written (`LOG_FORMAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    /// One JSON object per line: `time`, `level`, `target`, `message`.
    Json,
}

/// The raw declaration, parsed by `Settings::from_vars` (in `source`) and turned into
/// a [`super::Config`] by `Settings::into_config` (in `rules`). Secrets are [`Secret`]s
/// and `hide_env_values`, so that neither `Debug` nor an error shows them.
#[derive(Debug, clap::Parser)]
#[command(name = "command-handler", disable_help_flag = true)]
pub(crate) struct Settings {
    /// Bootstrap servers
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    #[arg(value_parser = parsers::text)]
    pub(super) kafka_brokers: String,
    /// Client id, and the consumer group id
    #[arg(long, env = "KAFKA_CLIENT_ID", default_value = "command-handler")]
    #[arg(value_parser = parsers::text)]
    pub(super) kafka_client_id: String,
    /// Static group membership: this instance's name, kept across its restarts (unset: the host name; none: dynamic membership)
    #[arg(long, env = "KAFKA_GROUP_INSTANCE_ID")]
    #[arg(value_parser = parsers::group_instance_name)]
    pub(super) kafka_group_instance_id: Option<String>,
    /// Account creation commands
    #[arg(
        long,
        env = "KAFKA_CAC_TOPIC",
        default_value = "confirm_account_creation"
    )]
    #[arg(value_parser = parsers::topic)]
    pub(super) kafka_cac_topic: String,
    /// Account creation answers
    #[arg(
        long,
        env = "KAFKA_ACF_TOPIC",
        default_value = "account_creation_feedback"
    )]
    #[arg(value_parser = parsers::topic)]
    pub(super) kafka_acf_topic: String,
    /// Money transfer commands (not the account creation ones)
    #[arg(
        long,
        env = "KAFKA_CMT_TOPIC",
        default_value = "confirm_money_transfer"
    )]
    #[arg(value_parser = parsers::topic)]
    pub(super) kafka_cmt_topic: String,
    /// Money transfer answers
    #[arg(
        long,
        env = "KAFKA_MTF_TOPIC",
        default_value = "money_transfer_feedback"
    )]
    #[arg(value_parser = parsers::topic)]
    pub(super) kafka_mtf_topic: String,
    /// Balance changed events
    #[arg(long, env = "KAFKA_BC_TOPIC", default_value = "balance_changed")]
    #[arg(value_parser = parsers::topic)]
    pub(super) kafka_bc_topic: String,
    /// Records that cannot be commands; created at start-up when missing
    #[arg(
        long,
        env = "KAFKA_DEAD_LETTER_TOPIC",
        default_value = "command_handler_dead_letter"
    )]
    #[arg(value_parser = parsers::topic)]
    pub(super) kafka_dead_letter_topic: String,
    /// Partitions of a dead-letter topic the handler creates (unset: as the command topic)
    #[arg(long, env = "KAFKA_DEAD_LETTER_PARTITIONS")]
    #[arg(value_parser = value_parser!(i32).range(1..=10_000))]
    pub(super) kafka_dead_letter_partitions: Option<i32>,
    /// Replicas of a dead-letter topic the handler creates (unset: 3, or one per broker)
    #[arg(long, env = "KAFKA_DEAD_LETTER_REPLICATION")]
    #[arg(value_parser = value_parser!(i32).range(1..=32))]
    pub(super) kafka_dead_letter_replication: Option<i32>,
    /// Producer linger in milliseconds
    #[arg(long, env = "KAFKA_LINGER_MS", default_value = "0")]
    #[arg(value_parser = value_parser!(u32).range(0..=60_000))]
    pub(super) kafka_linger_ms: u32,

    /// CA of the brokers' certificates (PEM; unset: the system's trust store)
    #[arg(long, env = "KAFKA_SSL_CA_LOCATION", value_parser = parsers::readable_file)]
    pub(super) kafka_ssl_ca_location: Option<PathBuf>,
    /// Client certificate (PEM), with KAFKA_SSL_KEY_LOCATION: mutual TLS
    #[arg(long, env = "KAFKA_SSL_CERT_LOCATION", value_parser = parsers::readable_file)]
    pub(super) kafka_ssl_cert_location: Option<PathBuf>,
    /// Client key (PEM), with KAFKA_SSL_CERT_LOCATION
    #[arg(long, env = "KAFKA_SSL_KEY_LOCATION", value_parser = parsers::readable_file)]
    pub(super) kafka_ssl_key_location: Option<PathBuf>,
    /// Password of an encrypted client key
    #[arg(long, env = "KAFKA_SSL_KEY_PASSWORD", hide_env_values = true)]
    #[arg(value_parser = parsers::secret)]
    pub(super) kafka_ssl_key_password: Option<Secret>,
    /// The JVM handler's PKCS#12 keystore (all three SSL_* or none; PEM files win)
    #[arg(long, env = "SSL_KEYSTORE_LOCATION")]
    pub(super) ssl_keystore_location: Option<String>,
    /// The JVM handler's PKCS#12 truststore
    #[arg(long, env = "SSL_TRUSTSTORE_LOCATION")]
    pub(super) ssl_truststore_location: Option<String>,
    /// The one password of both stores and the key
    #[arg(long, env = "SSL_PASSWORD", hide_env_values = true, value_parser = parsers::secret)]
    pub(super) ssl_password: Option<Secret>,
    /// Where relative store names are looked up
    #[arg(
        long,
        env = "SSL_STORES_DIRECTORY",
        default_value = "/etc/kafka/secrets"
    )]
    #[arg(value_parser = parsers::text.map(PathBuf::from))]
    pub(super) ssl_stores_directory: PathBuf,
    /// SASL over TLS: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512
    #[arg(long, env = "KAFKA_SASL_MECHANISM", value_parser = parsers::sasl_mechanism)]
    pub(super) kafka_sasl_mechanism: Option<SaslMechanism>,
    /// SASL user
    #[arg(long, env = "KAFKA_SASL_USERNAME")]
    pub(super) kafka_sasl_username: Option<String>,
    /// SASL password
    #[arg(long, env = "KAFKA_SASL_PASSWORD", hide_env_values = true)]
    #[arg(value_parser = parsers::secret)]
    pub(super) kafka_sasl_password: Option<Secret>,

    /// Registry base URL (http:// or https://, may carry user:secret@)
    #[arg(
        long,
        env = "SCHEMA_REGISTRY_URL",
        default_value = "http://localhost:8081"
    )]
    #[arg(hide_env_values = true, value_parser = parsers::registry_url)]
    pub(super) schema_registry_url: Secret,
    /// Registry basic authentication: the key (with the secret)
    #[arg(long, env = "SCHEMA_REGISTRY_API_KEY")]
    pub(super) schema_registry_api_key: Option<String>,
    /// Registry basic authentication: the secret (with the key)
    #[arg(long, env = "SCHEMA_REGISTRY_API_SECRET", hide_env_values = true)]
    #[arg(value_parser = parsers::secret)]
    pub(super) schema_registry_api_secret: Option<Secret>,
    /// true: register the handler's schemas; false: write with the latest registered
    #[arg(long, env = "SCHEMA_REGISTRY_AUTO_REGISTER", default_value = "false")]
    #[arg(action = clap::ArgAction::Set, value_parser = parsers::true_or_false)]
    pub(super) schema_registry_auto_register: bool,

    /// PostgreSQL URL (postgres:// or postgresql://); wins over the DB_* variables
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = parsers::database_url)]
    pub(super) database_url: Option<Secret>,
    /// Database host, without DATABASE_URL
    #[arg(long, env = "DB_HOSTNAME", default_value = "localhost", value_parser = parsers::text)]
    pub(super) db_hostname: String,
    /// Database port, without DATABASE_URL
    #[arg(long, env = "DB_PORT", default_value = "5432")]
    #[arg(value_parser = value_parser!(u16).range(1..))]
    pub(super) db_port: u16,
    /// Database user, without DATABASE_URL
    #[arg(long, env = "DB_USER", default_value = "clojure_ch", value_parser = parsers::text)]
    pub(super) db_user: String,
    /// Database password, without DATABASE_URL
    #[arg(
        long,
        env = "DB_PASSWORD",
        hide_env_values = true,
        default_value = "open-bank"
    )]
    #[arg(value_parser = parsers::secret)]
    pub(super) db_password: Secret,
    /// PostgreSQL connections
    #[arg(long, env = "DB_POOL_SIZE", default_value = "4")]
    #[arg(value_parser = value_parser!(u32).range(2..=100))]
    pub(super) db_pool_size: u32,
    /// Most commands applied in one database transaction
    #[arg(long, env = "COMMAND_BATCH_SIZE", default_value = "100")]
    #[arg(value_parser = RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub(super) command_batch_size: usize,

    /// Serve health and metrics on this port (0: any free port; unset: not served)
    #[arg(long, env = "HTTP_PORT", value_parser = value_parser!(u16))]
    pub(super) http_port: Option<u16>,
    /// Address to serve on, with HTTP_PORT
    #[arg(long, env = "HTTP_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub(super) http_bind_address: IpAddr,
    /// Liveness fails after a consumer loop shows no progress this long
    #[arg(long, env = "HTTP_LIVENESS_STALL_SECONDS", default_value = "120")]
    #[arg(value_parser = value_parser!(u64).range(1..=3600).map(Duration::from_secs))]
    pub(super) http_liveness_stall_seconds: Duration,

    /// Log filter (replaces the default, not added to it)
    #[arg(
        long,
        env = "RUST_LOG",
        default_value = "warn,open_bank_command_handler=info"
    )]
    pub(super) rust_log: String,
    /// text, or json for one JSON object per line
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_enum)]
    pub(super) log_format: LogFormat,
}
