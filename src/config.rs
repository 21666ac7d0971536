//! Configuration from environment variables (SPEC §6), parsed once at start-up.
//!
//! Every variable of the JVM handler keeps its name and default. Invalid values stop
//! start-up with one message naming the variable. Secrets live in [`Secret`], whose
//! `Debug`/`Display` never show the value, so a logged `Config` cannot leak them.

use std::fmt;
use std::path::PathBuf;

use crate::tls_stores::{self, JvmStores};

pub use crate::secret::Secret;

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

/// TLS to the brokers, from one of two kinds of variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KafkaTls {
    /// `KAFKA_SSL_*`: PEM files (as the earlier Rust port).
    Pem(TlsFiles),
    /// `SSL_KEYSTORE_LOCATION`, `SSL_TRUSTSTORE_LOCATION`, `SSL_PASSWORD`: the JVM
    /// handler's keytool stores, with its hostname check off (as the JVM clients).
    JvmStores(JvmStores),
}

/// TLS to the brokers (PEM files): the brokers' certificate is checked against
/// `ca_location` (the system's trust store when unset), and a client certificate is
/// shown when one is configured (mutual TLS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_location: Option<PathBuf>,
    pub client_certificate: Option<ClientCertificate>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertificate {
    pub certificate_location: PathBuf,
    pub key_location: PathBuf,
    /// Empty for an unencrypted key.
    pub key_password: Secret,
}

/// The SASL mechanisms of managed Kafka services; all of them go over TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    /// The name librdkafka and the brokers use.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A SASL login to the brokers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaslLogin {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: Secret,
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
}

/// Which clients a passed-through librdkafka property is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientScope {
    All,
    Consumers,
    Producer,
}

/// A librdkafka property set through the environment:
/// `RDKAFKA_SOCKET_KEEPALIVE_ENABLE=true` sets `socket.keepalive.enable` on every client,
/// `RDKAFKA_CONSUMER_SESSION_TIMEOUT_MS=10000` only on the consumers,
/// `RDKAFKA_PRODUCER_COMPRESSION_TYPE=lz4` only on the producer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaProperty {
    pub scope: ClientScope,
    pub name: String,
    pub value: Secret,
}

/// Properties the delivery guarantee depends on, or that have variables of their own
/// (and must not be turned around: `security.protocol=sasl_plaintext` would send the
/// SASL password in clear).
const RESERVED_PROPERTIES: [&str; 10] = [
    "enable.auto.offset.store",
    "enable.auto.commit",
    "group.id",
    "bootstrap.servers",
    "enable.idempotence",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
];

#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration: {}: {}",
            self.variable, self.problem
        )
    }
}

impl std::error::Error for ConfigError {}

/// The JVM handler's TLS variables (SPEC §8): keystore, truststore, their one password.
const JVM_TLS_VARIABLES: [&str; 3] = [
    "SSL_KEYSTORE_LOCATION",
    "SSL_TRUSTSTORE_LOCATION",
    "SSL_PASSWORD",
];

/// Database name and user of the JVM deployments, reached through the DB_* trio.
pub const DATABASE_NAME: &str = "balancedb";
pub const DEFAULT_DB_USER: &str = "clojure_ch";

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
        let topics = Topics {
            account_creation_commands: vars.topic("KAFKA_CAC_TOPIC", "confirm_account_creation")?,
            account_creation_feedback: vars
                .topic("KAFKA_ACF_TOPIC", "account_creation_feedback")?,
            money_transfer_commands: vars.topic("KAFKA_CMT_TOPIC", "confirm_money_transfer")?,
            money_transfer_feedback: vars.topic("KAFKA_MTF_TOPIC", "money_transfer_feedback")?,
            balance_changed: vars.topic("KAFKA_BC_TOPIC", "balance_changed")?,
            dead_letter: vars.topic("KAFKA_DEAD_LETTER_TOPIC", "command_handler_dead_letter")?,
        };
        if topics.account_creation_commands == topics.money_transfer_commands {
            return Err(ConfigError {
                variable: "KAFKA_CMT_TOPIC".into(),
                problem: "must differ from KAFKA_CAC_TOPIC".into(),
            });
        }

        let schema_registry_url = vars.text("SCHEMA_REGISTRY_URL", "http://localhost:8081")?;
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
            kafka_brokers: vars.text("KAFKA_BROKERS", "127.0.0.1:9092")?,
            schema_registry_url: Secret::new(schema_registry_url),
            database_url: vars.database_url()?,
            topics,
            client_id: vars.text("KAFKA_CLIENT_ID", "command-handler")?,
            tls,
            jvm_stores_ignored,
            sasl: vars.sasl()?,
            registry_credentials: vars.registry_credentials()?,
            http_address: vars.http_address()?,
            liveness_stall: std::time::Duration::from_secs(vars.number(
                "HTTP_LIVENESS_STALL_SECONDS",
                120,
                1,
                3600,
            )?),
            kafka_properties: kafka_properties(&all)?,
            batch_size: vars.number("COMMAND_BATCH_SIZE", 100, 1, 1000)? as usize,
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
            register_schemas: vars.flag("SCHEMA_REGISTRY_AUTO_REGISTER", false)?,
            // 0: a batch's records are handed to the producer together and the consumer waits
            // for their acknowledgement, so lingering only adds latency (see dev/bench).
            producer_linger_ms: vars.number("KAFKA_LINGER_MS", 0, 0, 60_000)? as u32,
            db_pool_size: vars.number("DB_POOL_SIZE", 4, 2, 100)? as u32,
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

struct Vars<'a, F: Fn(&str) -> Option<String>>(&'a F);

impl<F: Fn(&str) -> Option<String>> Vars<'_, F> {
    /// The variable's value; unset and empty both mean "not given".
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|value| !value.is_empty())
    }

    fn text(&self, name: &'static str, default: &str) -> Result<String, ConfigError> {
        let value = self.get(name).unwrap_or_else(|| default.to_string());
        if value.trim() != value {
            return Err(ConfigError {
                variable: name.into(),
                problem: "has leading or trailing white space".into(),
            });
        }
        Ok(value)
    }

    fn number(
        &self,
        name: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        let Some(text) = self.get(name) else {
            return Ok(default);
        };
        match text.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ConfigError {
                variable: name.into(),
                problem: format!("must be a whole number from {min} to {max}"),
            }),
        }
    }

    fn optional_number(
        &self,
        name: &'static str,
        min: u64,
        max: u64,
    ) -> Result<Option<i32>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(_) => Ok(Some(self.number(name, min, min, max)? as i32)),
        }
    }

    fn flag(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self
            .get(name)
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(_) => Err(ConfigError {
                variable: name.into(),
                problem: "must be true or false".into(),
            }),
        }
    }

    fn topic(&self, name: &'static str, default: &str) -> Result<String, ConfigError> {
        let topic = self.text(name, default)?;
        let legal = topic.len() <= 249
            && topic != "."
            && topic != ".."
            && topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
        if !legal {
            return Err(ConfigError {
                variable: name.into(),
                problem:
                    "is not a legal Kafka topic name (letters, digits, '.', '_', '-'; at most 249)"
                        .into(),
            });
        }
        Ok(topic)
    }

    fn database_url(&self) -> Result<Secret, ConfigError> {
        if let Some(url) = self.get("DATABASE_URL") {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError {
                    variable: "DATABASE_URL".into(),
                    problem: "must start with postgres:// or postgresql://".into(),
                });
            }
            return Ok(Secret::new(url));
        }
        let host = self.text("DB_HOSTNAME", "localhost")?;
        let port = self.number("DB_PORT", 5432, 1, 65_535)?;
        let user = self.text("DB_USER", DEFAULT_DB_USER)?;
        let password = self
            .get("DB_PASSWORD")
            .unwrap_or_else(|| "open-bank".to_string());
        // A libpq key=value string: no URL-escaping pitfalls for passwords.
        Ok(Secret::new(format!(
            "host={} port={port} dbname={DATABASE_NAME} user={} password={}",
            conninfo_value(&host),
            conninfo_value(&user),
            conninfo_value(&password)
        )))
    }

    /// `KAFKA_SSL_CA_LOCATION` alone: TLS with the brokers' certificate checked; with
    /// `KAFKA_SSL_CERT_LOCATION` and `KAFKA_SSL_KEY_LOCATION` too: mutual TLS, the key
    /// decrypted with `KAFKA_SSL_KEY_PASSWORD` (set-but-empty, or unset, when it is not
    /// encrypted). A certificate without its key, or the reverse, is an error.
    fn tls(&self) -> Result<Option<TlsFiles>, ConfigError> {
        let file = |name: &'static str| -> Result<Option<PathBuf>, ConfigError> {
            let Some(value) = self.get(name) else {
                return Ok(None);
            };
            let path = PathBuf::from(value);
            if !path.is_file() {
                return Err(ConfigError {
                    variable: name.into(),
                    problem: format!("{} is not a readable file", path.display()),
                });
            }
            Ok(Some(path))
        };
        let ca_location = file("KAFKA_SSL_CA_LOCATION")?;
        let certificate = file("KAFKA_SSL_CERT_LOCATION")?;
        let key = file("KAFKA_SSL_KEY_LOCATION")?;
        let key_password = self.get("KAFKA_SSL_KEY_PASSWORD");
        let client_certificate = match (certificate, key) {
            (Some(certificate_location), Some(key_location)) => Some(ClientCertificate {
                certificate_location,
                key_location,
                key_password: Secret::new(key_password.unwrap_or_default()),
            }),
            (Some(_), None) => {
                return Err(missing("KAFKA_SSL_KEY_LOCATION", "KAFKA_SSL_CERT_LOCATION"));
            }
            (None, Some(_)) => {
                return Err(missing("KAFKA_SSL_CERT_LOCATION", "KAFKA_SSL_KEY_LOCATION"));
            }
            (None, None) if key_password.is_some() => {
                return Err(missing("KAFKA_SSL_KEY_LOCATION", "KAFKA_SSL_KEY_PASSWORD"));
            }
            (None, None) => None,
        };
        if ca_location.is_none() && client_certificate.is_none() {
            return Ok(None);
        }
        Ok(Some(TlsFiles {
            ca_location,
            client_certificate,
        }))
    }

    /// The JVM handler's three TLS variables: all or none. Store names are resolved
    /// as the JVM handler does, under `/etc/kafka/secrets/` (`SSL_STORES_DIRECTORY`
    /// overrides the folder), and both stores are opened now, so that a wrong password
    /// or a store of the wrong kind stops start-up with a clear message.
    fn jvm_stores(&self) -> Result<Option<JvmStores>, ConfigError> {
        let [keystore, truststore, password] = JVM_TLS_VARIABLES.map(|name| self.get(name));
        let (keystore, truststore, password) = match (keystore, truststore, password) {
            (None, None, None) => return Ok(None),
            (Some(k), Some(t), Some(p)) => (k, t, Secret::new(p)),
            _ => {
                let set = |name: &str| self.get(name).is_some();
                let given = JVM_TLS_VARIABLES.into_iter().find(|name| set(name));
                let absent = JVM_TLS_VARIABLES.into_iter().find(|name| !set(name));
                return Err(missing(
                    absent.unwrap_or_default(),
                    given.unwrap_or_default(),
                ));
            }
        };
        let directory =
            PathBuf::from(self.text("SSL_STORES_DIRECTORY", tls_stores::DEFAULT_STORES_DIRECTORY)?);
        let keystore = tls_stores::resolve(&keystore, &directory);
        let truststore = tls_stores::resolve(&truststore, &directory);
        for (variable, path) in [
            ("SSL_KEYSTORE_LOCATION", &keystore),
            ("SSL_TRUSTSTORE_LOCATION", &truststore),
        ] {
            if !path.is_file() {
                return Err(ConfigError {
                    variable: variable.into(),
                    problem: format!("{} is not a readable file", path.display()),
                });
            }
        }
        tls_stores::open(keystore, truststore, password)
            .map(Some)
            .map_err(|e| ConfigError {
                variable: e.variable.into(),
                problem: e.problem,
            })
    }

    fn sasl(&self) -> Result<Option<SaslLogin>, ConfigError> {
        let username = self.get("KAFKA_SASL_USERNAME");
        let password = self.get("KAFKA_SASL_PASSWORD");
        let Some(mechanism) = self.get("KAFKA_SASL_MECHANISM") else {
            return match (&username, &password) {
                (None, None) => Ok(None),
                (Some(_), _) => Err(missing("KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME")),
                (None, Some(_)) => Err(missing("KAFKA_SASL_MECHANISM", "KAFKA_SASL_PASSWORD")),
            };
        };
        let mechanism = match mechanism.to_ascii_uppercase().as_str() {
            "PLAIN" => SaslMechanism::Plain,
            "SCRAM-SHA-256" => SaslMechanism::ScramSha256,
            "SCRAM-SHA-512" => SaslMechanism::ScramSha512,
            _ => {
                return Err(ConfigError {
                    variable: "KAFKA_SASL_MECHANISM".into(),
                    problem: "must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512".into(),
                });
            }
        };
        Ok(Some(SaslLogin {
            mechanism,
            username: username
                .ok_or_else(|| missing("KAFKA_SASL_USERNAME", "KAFKA_SASL_MECHANISM"))?,
            password: Secret::new(
                password.ok_or_else(|| missing("KAFKA_SASL_PASSWORD", "KAFKA_SASL_MECHANISM"))?,
            ),
        }))
    }

    fn registry_credentials(&self) -> Result<Option<RegistryCredentials>, ConfigError> {
        match (
            self.get("SCHEMA_REGISTRY_API_KEY"),
            self.get("SCHEMA_REGISTRY_API_SECRET"),
        ) {
            (None, None) => Ok(None),
            (Some(key), Some(secret)) => Ok(Some(RegistryCredentials {
                key,
                secret: Secret::new(secret),
            })),
            (Some(_), None) => Err(missing(
                "SCHEMA_REGISTRY_API_SECRET",
                "SCHEMA_REGISTRY_API_KEY",
            )),
            (None, Some(_)) => Err(missing(
                "SCHEMA_REGISTRY_API_KEY",
                "SCHEMA_REGISTRY_API_SECRET",
            )),
        }
    }

    /// `HTTP_PORT` turns the health and metrics endpoints on (0: any free port, logged
    /// at start); `HTTP_BIND_ADDRESS` (default 0.0.0.0, as containers need) narrows it.
    fn http_address(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        let bind = self.get("HTTP_BIND_ADDRESS");
        if self.get("HTTP_PORT").is_none() {
            return match bind {
                None => Ok(None),
                Some(_) => Err(missing("HTTP_PORT", "HTTP_BIND_ADDRESS")),
            };
        }
        let port = self.number("HTTP_PORT", 0, 0, 65_535)? as u16;
        let ip: std::net::IpAddr =
            bind.as_deref()
                .unwrap_or("0.0.0.0")
                .parse()
                .map_err(|_| ConfigError {
                    variable: "HTTP_BIND_ADDRESS".into(),
                    problem: "must be an IP address, such as 0.0.0.0 or 127.0.0.1".into(),
                })?;
        Ok(Some(std::net::SocketAddr::new(ip, port)))
    }
}

/// `variable` is needed because `because` is set.
fn missing(variable: &str, because: &str) -> ConfigError {
    ConfigError {
        variable: variable.into(),
        problem: format!("must be set too, since {because} is set"),
    }
}

fn kafka_properties(
    all: &std::collections::HashMap<String, String>,
) -> Result<Vec<KafkaProperty>, ConfigError> {
    let mut properties: Vec<KafkaProperty> = Vec::new();
    for (variable, value) in all {
        let Some(rest) = variable.strip_prefix("RDKAFKA_") else {
            continue;
        };
        let (scope, rest) = if let Some(rest) = rest.strip_prefix("CONSUMER_") {
            (ClientScope::Consumers, rest)
        } else if let Some(rest) = rest.strip_prefix("PRODUCER_") {
            (ClientScope::Producer, rest)
        } else {
            (ClientScope::All, rest)
        };
        let name = rest.to_ascii_lowercase().replace('_', ".");
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.')
        {
            return Err(ConfigError {
                variable: variable.clone(),
                problem: "is not a librdkafka property name".into(),
            });
        }
        if RESERVED_PROPERTIES.contains(&name.as_str()) {
            return Err(ConfigError {
                variable: variable.clone(),
                problem: format!(
                    "{name} cannot be overridden: the handler's delivery guarantee or another variable sets it"
                ),
            });
        }
        properties.push(KafkaProperty {
            scope,
            name,
            value: Secret::new(value.clone()),
        });
    }
    properties.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(properties)
}

/// Quotes a libpq connection-string value.
fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_are_those_of_the_jvm_handler() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.kafka_brokers, "127.0.0.1:9092");
        assert_eq!(config.schema_registry_url.expose(), "http://localhost:8081");
        assert_eq!(config.client_id, "command-handler");
        assert_eq!(
            config.database_url.expose(),
            "host='localhost' port=5432 dbname=balancedb user='clojure_ch' password='open-bank'"
        );
        assert_eq!(
            config.topics.account_creation_commands,
            "confirm_account_creation"
        );
        assert_eq!(
            config.topics.account_creation_feedback,
            "account_creation_feedback"
        );
        assert_eq!(
            config.topics.money_transfer_commands,
            "confirm_money_transfer"
        );
        assert_eq!(
            config.topics.money_transfer_feedback,
            "money_transfer_feedback"
        );
        assert_eq!(config.topics.balance_changed, "balance_changed");
        assert_eq!(config.tls, None);
        assert_eq!(config.batch_size, 100);
    }

    #[test]
    fn database_url_wins_over_the_trio() {
        let config = parse(&[
            ("DATABASE_URL", "postgres://u:p@db/x"),
            ("DB_HOSTNAME", "elsewhere"),
        ])
        .unwrap();
        assert_eq!(config.database_url.expose(), "postgres://u:p@db/x");
    }

    #[test]
    fn trio_builds_a_quoted_connection_string() {
        let config = parse(&[
            ("DB_HOSTNAME", "db.internal"),
            ("DB_PORT", "6543"),
            ("DB_PASSWORD", "it's\\x"),
        ])
        .unwrap();
        assert_eq!(
            config.database_url.expose(),
            r"host='db.internal' port=6543 dbname=balancedb user='clojure_ch' password='it\'s\\x'"
        );
    }

    #[test]
    fn invalid_values_name_their_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("DB_PORT", "five")], "DB_PORT"),
            (&[("DB_PORT", "70000")], "DB_PORT"),
            (&[("KAFKA_BC_TOPIC", "balance changed")], "KAFKA_BC_TOPIC"),
            (
                &[("SCHEMA_REGISTRY_URL", "localhost:8081")],
                "SCHEMA_REGISTRY_URL",
            ),
            (&[("DATABASE_URL", "mysql://x")], "DATABASE_URL"),
            (
                &[("KAFKA_SSL_CERT_LOCATION", "/etc/hostname")],
                "KAFKA_SSL_KEY_LOCATION",
            ),
            (
                &[("KAFKA_SSL_KEY_PASSWORD", "pw")],
                "KAFKA_SSL_KEY_LOCATION",
            ),
            (
                &[("KAFKA_SASL_MECHANISM", "GSSAPI")],
                "KAFKA_SASL_MECHANISM",
            ),
            (&[("KAFKA_SASL_MECHANISM", "PLAIN")], "KAFKA_SASL_USERNAME"),
            (&[("KAFKA_SASL_USERNAME", "me")], "KAFKA_SASL_MECHANISM"),
            (
                &[("SCHEMA_REGISTRY_API_KEY", "key")],
                "SCHEMA_REGISTRY_API_SECRET",
            ),
            (&[("HTTP_PORT", "http")], "HTTP_PORT"),
            (&[("HTTP_BIND_ADDRESS", "127.0.0.1")], "HTTP_PORT"),
            (
                &[("HTTP_PORT", "8080"), ("HTTP_BIND_ADDRESS", "localhost")],
                "HTTP_BIND_ADDRESS",
            ),
            (&[("COMMAND_BATCH_SIZE", "0")], "COMMAND_BATCH_SIZE"),
            (
                &[("KAFKA_CMT_TOPIC", "confirm_account_creation")],
                "KAFKA_CMT_TOPIC",
            ),
        ];
        for (vars, variable) in cases {
            let error = parse(vars).unwrap_err();
            assert_eq!(error.variable, *variable, "{vars:?}");
            assert!(error.to_string().contains(variable));
        }
    }

    #[test]
    fn tls_files_must_exist() {
        let error = parse(&[
            ("KAFKA_SSL_CA_LOCATION", "/nonexistent/ca.pem"),
            ("KAFKA_SSL_CERT_LOCATION", "/nonexistent/cert.pem"),
            ("KAFKA_SSL_KEY_LOCATION", "/nonexistent/key.pem"),
            ("KAFKA_SSL_KEY_PASSWORD", "hunter2"),
        ])
        .unwrap_err();
        assert_eq!(error.variable, "KAFKA_SSL_CA_LOCATION");
        assert!(!error.to_string().contains("hunter2"));
    }

    #[test]
    fn tls_is_mutual_with_a_client_certificate_and_key() {
        let file = "/etc/hostname";
        let config = parse(&[
            ("KAFKA_SSL_CA_LOCATION", file),
            ("KAFKA_SSL_CERT_LOCATION", file),
            ("KAFKA_SSL_KEY_LOCATION", file),
            ("KAFKA_SSL_KEY_PASSWORD", ""),
        ])
        .unwrap();
        let Some(KafkaTls::Pem(tls)) = config.tls else {
            panic!("PEM files expected: {:?}", config.tls)
        };
        assert_eq!(tls.ca_location.as_deref(), Some(std::path::Path::new(file)));
        assert_eq!(tls.client_certificate.unwrap().key_password.expose(), "");
        assert_eq!(parse(&[("KAFKA_SSL_KEY_PASSWORD", "")]).unwrap().tls, None);
        let server_only = parse(&[("KAFKA_SSL_CA_LOCATION", file)]).unwrap().tls;
        let Some(KafkaTls::Pem(server_only)) = server_only else {
            panic!("PEM files expected: {server_only:?}")
        };
        assert_eq!(server_only.client_certificate, None);
    }

    const JVM_STORES: [(&str, &str); 3] = [
        (
            "SSL_KEYSTORE_LOCATION",
            "kafka.command-handler.keystore.jks",
        ),
        (
            "SSL_TRUSTSTORE_LOCATION",
            "kafka.command-handler.truststore.jks",
        ),
        ("SSL_PASSWORD", "openbanksafe"),
    ];

    #[test]
    fn pem_files_win_over_the_jvm_stores_which_are_not_even_opened() {
        let file = "/etc/hostname";
        let mut vars = JVM_STORES.to_vec();
        vars.extend([
            ("SSL_STORES_DIRECTORY", "/nonexistent"),
            ("KAFKA_SSL_CA_LOCATION", file),
            ("KAFKA_SSL_CERT_LOCATION", file),
            ("KAFKA_SSL_KEY_LOCATION", file),
        ]);
        let config = parse(&vars).unwrap();
        assert!(
            matches!(config.tls, Some(KafkaTls::Pem(_))),
            "{:?}",
            config.tls
        );
        assert!(config.jvm_stores_ignored);
        assert!(
            config
                .kafka_security()
                .contains("SSL_* keytool stores are ignored")
        );
        assert!(!parse(&vars[3..]).unwrap().jvm_stores_ignored);
    }

    #[test]
    fn jvm_store_names_resolve_under_the_stores_directory() {
        let mut vars = JVM_STORES.to_vec();
        vars.push(("SSL_STORES_DIRECTORY", "/nonexistent/secrets"));
        let error = parse(&vars).unwrap_err();
        assert_eq!(error.variable, "SSL_KEYSTORE_LOCATION");
        assert!(
            error
                .problem
                .contains("/nonexistent/secrets/kafka.command-handler.keystore.jks"),
            "{error}"
        );
        // Without the override: where the JVM handler's image mounts them.
        let error = parse(&JVM_STORES).unwrap_err();
        assert!(
            error
                .problem
                .contains("/etc/kafka/secrets/kafka.command-handler.keystore.jks")
        );
        assert!(!error.to_string().contains("openbanksafe"));
    }

    #[test]
    fn jvm_tls_variables_come_all_three_or_none() {
        for (absent, (name, _)) in JVM_STORES.iter().enumerate() {
            let vars: Vec<(&str, &str)> = JVM_STORES
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != absent)
                .map(|(_, v)| *v)
                .collect();
            let error = parse(&vars).unwrap_err();
            assert_eq!(error.variable, *name, "{error}");
            assert!(!error.to_string().contains("openbanksafe"));
        }
    }

    #[test]
    fn sasl_and_registry_credentials() {
        let config = parse(&[
            ("KAFKA_SASL_MECHANISM", "scram-sha-512"),
            ("KAFKA_SASL_USERNAME", "handler"),
            ("KAFKA_SASL_PASSWORD", "hunter2"),
            ("SCHEMA_REGISTRY_API_KEY", "key"),
            ("SCHEMA_REGISTRY_API_SECRET", "s3cret"),
        ])
        .unwrap();
        let sasl = config.sasl.clone().unwrap();
        assert_eq!(sasl.mechanism.name(), "SCRAM-SHA-512");
        assert_eq!(sasl.username, "handler");
        assert_eq!(sasl.password.expose(), "hunter2");
        let credentials = config.registry_credentials.clone().unwrap();
        assert_eq!(
            (credentials.key.as_str(), credentials.secret.expose()),
            ("key", "s3cret")
        );
        let printed = format!("{config:?}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("s3cret"),
            "{printed}"
        );
    }

    #[test]
    fn http_is_off_unless_a_port_is_given() {
        assert_eq!(parse(&[]).unwrap().http_address, None);
        let everywhere = parse(&[("HTTP_PORT", "8080")]).unwrap().http_address;
        assert_eq!(everywhere, Some("0.0.0.0:8080".parse().unwrap()));
        let loopback = parse(&[("HTTP_PORT", "0"), ("HTTP_BIND_ADDRESS", "127.0.0.1")])
            .unwrap()
            .http_address;
        assert_eq!(loopback, Some("127.0.0.1:0".parse().unwrap()));
    }

    #[test]
    fn librdkafka_properties_pass_through_by_scope() {
        let config = parse(&[
            ("RDKAFKA_SOCKET_KEEPALIVE_ENABLE", "true"),
            ("RDKAFKA_CONSUMER_SESSION_TIMEOUT_MS", "6000"),
            ("RDKAFKA_PRODUCER_COMPRESSION_TYPE", "lz4"),
        ])
        .unwrap();
        let got: Vec<(ClientScope, &str, &str)> = config
            .kafka_properties
            .iter()
            .map(|p| (p.scope, p.name.as_str(), p.value.expose()))
            .collect();
        assert_eq!(
            got,
            [
                (ClientScope::Producer, "compression.type", "lz4"),
                (ClientScope::Consumers, "session.timeout.ms", "6000"),
                (ClientScope::All, "socket.keepalive.enable", "true"),
            ]
        );
        for reserved in [
            "RDKAFKA_CONSUMER_ENABLE_AUTO_OFFSET_STORE",
            "RDKAFKA_SECURITY_PROTOCOL",
            "RDKAFKA_SASL_PASSWORD",
        ] {
            let error = parse(&[(reserved, "x")]).unwrap_err();
            assert_eq!(error.variable, reserved);
        }
    }

    #[test]
    fn secrets_never_print() {
        let config = parse(&[
            ("DB_PASSWORD", "hunter2"),
            ("SCHEMA_REGISTRY_URL", "https://key:s3cret@registry"),
        ])
        .unwrap();
        let printed = format!("{config:?} {}", config.database_url);
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("s3cret"), "{printed}");
    }
}
