//! Reading variables: each value parsed, checked, and named in the error when invalid.

use std::path::PathBuf;

use super::kafka::{ClientCertificate, JVM_TLS_VARIABLES, SaslLogin, SaslMechanism, TlsFiles};
use super::{
    ConfigError, DATABASE_NAME, DEFAULT_DB_PASSWORD, DEFAULT_DB_USER, RegistryCredentials, Secret,
};
use crate::config::tls_stores::{self, JvmStores};

pub(super) struct Vars<'a, F: Fn(&str) -> Option<String>>(pub(super) &'a F);

impl<F: Fn(&str) -> Option<String>> Vars<'_, F> {
    /// The variable's value; unset and empty both mean "not given".
    pub(super) fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|value| !value.is_empty())
    }

    pub(super) fn text(&self, name: &'static str, default: &str) -> Result<String, ConfigError> {
        let value = self.get(name).unwrap_or_else(|| default.to_string());
        if value.trim() != value {
            return Err(ConfigError {
                variable: name.into(),
                problem: "has leading or trailing white space".into(),
            });
        }
        Ok(value)
    }

    pub(super) fn number(
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

    pub(super) fn optional_number(
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

    pub(super) fn flag(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
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

    pub(super) fn topic(&self, name: &'static str, default: &str) -> Result<String, ConfigError> {
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

    pub(super) fn database_url(&self) -> Result<Secret, ConfigError> {
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
            .unwrap_or_else(|| DEFAULT_DB_PASSWORD.to_string());
        Ok(Secret::new(connection_string(
            &host, port, &user, &password,
        )))
    }

    /// `KAFKA_SSL_CA_LOCATION` alone: TLS with the brokers' certificate checked; with
    /// `KAFKA_SSL_CERT_LOCATION` and `KAFKA_SSL_KEY_LOCATION` too: mutual TLS, the key
    /// decrypted with `KAFKA_SSL_KEY_PASSWORD` (set-but-empty, or unset, when it is not
    /// encrypted). A certificate without its key, or the reverse, is an error.
    pub(super) fn tls(&self) -> Result<Option<TlsFiles>, ConfigError> {
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
    pub(super) fn jvm_stores(&self) -> Result<Option<JvmStores>, ConfigError> {
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

    pub(super) fn sasl(&self) -> Result<Option<SaslLogin>, ConfigError> {
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

    pub(super) fn registry_credentials(&self) -> Result<Option<RegistryCredentials>, ConfigError> {
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
    pub(super) fn http_address(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
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
pub(super) fn missing(variable: &str, because: &str) -> ConfigError {
    ConfigError {
        variable: variable.into(),
        problem: format!("must be set too, since {because} is set"),
    }
}

/// A libpq key=value connection string: no URL-escaping pitfalls for passwords.
pub(super) fn connection_string(host: &str, port: u64, user: &str, password: &str) -> String {
    format!(
        "host={} port={port} dbname={DATABASE_NAME} user={} password={}",
        conninfo_value(host),
        conninfo_value(user),
        conninfo_value(password)
    )
}

/// Quotes a libpq connection-string value.
fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}
