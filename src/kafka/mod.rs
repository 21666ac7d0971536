//! Kafka: the settings every client shares (brokers, TLS, SASL, `RDKAFKA_*`), and the
//! dead-letter topic the handler makes. The command consumers are in
//! [`crate::consume`], the producer in [`crate::produce`].

pub(crate) mod native;
pub(crate) mod rebootstrap;
pub(crate) mod rights;
pub(crate) mod topics;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};

use crate::config::{ClientScope, Config, KafkaTls};

/// Sets the `RDKAFKA_*` properties of this scope, after the handler's own settings so
/// that they win.
pub(crate) fn pass_through(client: &mut ClientConfig, config: &Config, scope: ClientScope) {
    for property in config.kafka_properties.iter().filter(|p| p.scope == scope) {
        client.set(&property.name, property.value.expose());
    }
}

/// Settings shared by the consumers and the producer: brokers, client id, TLS and SASL.
pub fn client_config(config: &Config) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.kafka_brokers)
        .set("client.id", &config.client_id)
        // No client telemetry pushed to the brokers (KIP-714; the JVM clients of the
        // Open Bank stack push none): librdkafka otherwise keeps latency histograms for
        // it in every client, about 0.5 MiB in all.
        .set("enable.metrics.push", "false")
        // A partition whose leader is gone is looked up again after 100 ms, doubling up
        // to this (the default: 1 s): once a broker failed over, clients find the new
        // leader within a quarter of a second rather than a second.
        .set("retry.backoff.max.ms", "250")
        .set_log_level(librdkafka_log_level(config));
    // SASL always goes over TLS: passwords and balances never cross the network in clear.
    let protocol = match (&config.sasl, &config.tls) {
        (Some(_), _) => "sasl_ssl",
        (None, Some(_)) => "ssl",
        (None, None) => "plaintext",
    };
    client.set("security.protocol", protocol);
    if let Some(KafkaTls::JvmStores(stores)) = &config.tls {
        // Without the truststore's certificates the brokers' could not be checked.
        let trusted = stores
            .trusted_pem
            .as_deref()
            .expect("start-up opens the stores (Config::load_tls) before any Kafka client");
        // As the JVM clients of the Open Bank stack: the stores' one password, and no
        // hostname check (its brokers' certificates name no host to check against).
        client
            .set("ssl.keystore.location", stores.keystore.to_string_lossy())
            .set("ssl.keystore.password", stores.password.expose())
            .set("ssl.ca.pem", trusted)
            .set("ssl.endpoint.identification.algorithm", "none");
    }
    if let Some(KafkaTls::Pem(tls)) = &config.tls {
        if let Some(ca) = &tls.ca_location {
            client.set("ssl.ca.location", ca.to_string_lossy());
        }
        if let Some(certificate) = &tls.client_certificate {
            client
                .set(
                    "ssl.certificate.location",
                    certificate.certificate_location.to_string_lossy(),
                )
                .set(
                    "ssl.key.location",
                    certificate.key_location.to_string_lossy(),
                );
            if !certificate.key_password.expose().is_empty() {
                client.set("ssl.key.password", certificate.key_password.expose());
            }
        }
    }
    if let Some(login) = &config.sasl {
        client
            .set("sasl.mechanism", login.mechanism.name())
            .set("sasl.username", &login.username)
            .set("sasl.password", login.password.expose());
    }
    pass_through(&mut client, config, ClientScope::All);
    client
}

/// librdkafka's notices that a healthy start brings and that it retries by itself: a
/// producer asking for its idempotence id while the transaction coordinator still loads
/// (every fresh cluster, every restarted broker). Shown at debug, so that a warning in
/// the log always means trouble; were they not transient, the sends they hold up would
/// fail and say so.
const TRANSIENT_NOTICES: &[(&str, &str)] = &[
    ("GETPID", "Coordinator load in progress"),
    ("GETPID", "Coordinator not available"),
    ("GETPID", "Not coordinator"),
];

fn transient(facility: &str, message: &str) -> bool {
    TRANSIENT_NOTICES
        .iter()
        .any(|(fac, words)| facility == *fac && message.contains(words))
}

/// The level librdkafka filters its own lines by: warnings, unless `RDKAFKA_DEBUG`
/// (or its consumer or producer form) asks for its debug lines, which would otherwise
/// be dropped before they reach the log (at debug, target `librdkafka`).
fn librdkafka_log_level(config: &Config) -> RDKafkaLogLevel {
    match config.kafka_properties.iter().any(|p| p.name == "debug") {
        true => RDKafkaLogLevel::Debug,
        false => RDKafkaLogLevel::Warning,
    }
}

/// What every client context does with librdkafka's log lines: its own level, except
/// for [`TRANSIENT_NOTICES`], at debug.
pub(crate) fn log_librdkafka(level: RDKafkaLogLevel, facility: &str, message: &str) {
    let level = match level {
        _ if transient(facility, message) => log::Level::Debug,
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => log::Level::Error,
        RDKafkaLogLevel::Warning => log::Level::Warn,
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => log::Level::Info,
        RDKafkaLogLevel::Debug => log::Level::Debug,
    };
    log::log!(target: "librdkafka", level, "librdkafka: {facility} {message}");
}

/// The context of the short-lived admin clients: librdkafka's lines as
/// [`log_librdkafka`] rates them, its errors in the handler's words.
pub(crate) struct AdminContext;

impl rdkafka::ClientContext for AdminContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_librdkafka(level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        log::warn!("kafka admin client: {error}: {reason}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_notices_are_transient() {
        assert!(transient(
            "GETPID",
            "Failed to acquire idempotence PID from broker 127.0.0.1:9092/1: Coordinator load in progress: retrying"
        ));
        assert!(!transient(
            "GETPID",
            "Failed to acquire idempotence PID: Broker: Cluster authorization failed"
        ));
        assert!(!transient("FAIL", "Coordinator load in progress"));
    }
}
