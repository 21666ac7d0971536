//! The Kafka clients' settings from the environment: TLS (PEM files, or the JVM
//! handler's keytool stores), SASL, and librdkafka properties passed through.

use std::path::PathBuf;

use super::{ConfigError, Secret};
use crate::config::tls_stores::JvmStores;

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
pub(super) const RESERVED_PROPERTIES: [&str; 10] = [
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

/// The JVM handler's TLS variables (SPEC §8): keystore, truststore, their one password.
pub(super) const JVM_TLS_VARIABLES: [&str; 3] = [
    "SSL_KEYSTORE_LOCATION",
    "SSL_TRUSTSTORE_LOCATION",
    "SSL_PASSWORD",
];

pub(super) fn kafka_properties(
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
        let refused = |problem: String| ConfigError {
            variable: variable.clone(),
            problem,
        };
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.')
        {
            return Err(refused("is not a librdkafka property name".into()));
        }
        if RESERVED_PROPERTIES.contains(&name.as_str()) {
            return Err(refused(format!(
                "{name} cannot be overridden: the handler's delivery guarantee or another variable sets it"
            )));
        }
        librdkafka_accepts(&name, value).map_err(refused)?;
        properties.push(KafkaProperty {
            scope,
            name,
            value: Secret::new(value.clone()),
        });
    }
    properties.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(properties)
}

/// Whether librdkafka knows the property and takes the value, asked of a configuration
/// of its own: a misspelt variable stops start-up at once rather than every client's
/// creation failing later. The value is kept out of the reason (it may be a password).
fn librdkafka_accepts(name: &str, value: &str) -> Result<(), String> {
    let mut config = rdkafka::ClientConfig::new();
    config.set(name, value);
    match config.create_native_config() {
        Ok(_) => Ok(()),
        Err(rdkafka::error::KafkaError::ClientConfig(_, why, _, _)) => Err(format!(
            "librdkafka refuses it: {}",
            why.replace(&format!("\"{value}\""), "(the value given)")
        )),
        Err(other) => Err(format!("librdkafka refuses it: {other}")),
    }
}
