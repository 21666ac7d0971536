//! What the declaration alone cannot say: the rules that span several variables, and
//! the parsed declaration turned into the [`Config`] the handler reads.

use std::net::SocketAddr;

use super::kafka::{JVM_TLS_VARIABLES, kafka_properties};
use super::settings::Settings;
use super::source::Vars;
use super::tls_stores::{self, JvmStores};
use super::{
    ClientCertificate, Config, ConfigError, ConsumerTuning, DATABASE_NAME, GroupMembership,
    KafkaTls, Logging, RegistryCredentials, SaslLogin, Secret, TlsFiles, Topics,
};

/// `KAFKA_GROUP_INSTANCE_ID`, else the host name (`HOSTNAME`, as containers set it, or
/// the kernel's): stable across a container's restarts, distinct between containers.
/// Characters Kafka refuses in an instance id become `_`.
fn group_membership(given: Option<&str>, vars: &Vars) -> GroupMembership {
    let name = match given {
        Some("none") => return GroupMembership::Dynamic,
        Some(name) => name.to_string(),
        None => match vars
            .all()
            .get("HOSTNAME")
            .cloned()
            .or_else(kernel_host_name)
        {
            Some(host) if !host.trim().is_empty() => host
                .trim()
                .chars()
                .take(200)
                .map(|c| match c {
                    'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
                    _ => '_',
                })
                .collect(),
            _ => return GroupMembership::Dynamic,
        },
    };
    GroupMembership::Static { name }
}

fn kernel_host_name() -> Option<String> {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let status = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if status != 0 {
        return None;
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8(buffer[..end].to_vec()).ok()
}

impl Settings {
    /// `vars` are those the settings were parsed from: some rules ask whether a
    /// variable was given rather than defaulted, and `RDKAFKA_*` are none of clap's.
    pub(super) fn into_config(self, vars: &Vars) -> Result<Config, ConfigError> {
        let topics = self.topics()?;
        let (tls, jvm_stores_ignored) = self.tls(vars)?;
        Ok(Config {
            database_url: self.database_url(),
            topics,
            tls,
            jvm_stores_ignored,
            sasl: self.sasl()?,
            registry_credentials: self.registry_credentials()?,
            http_address: self.http_address(vars)?,
            kafka_properties: kafka_properties(vars.all())?,
            kafka_brokers: self.kafka_brokers,
            schema_registry_url: self.schema_registry_url,
            membership: group_membership(self.kafka_group_instance_id.as_deref(), vars),
            client_id: self.kafka_client_id,
            liveness_stall: self.http_liveness_stall_seconds,
            batch_size: self.command_batch_size,
            dead_letter_partitions: self.kafka_dead_letter_partitions,
            dead_letter_replication: self.kafka_dead_letter_replication,
            register_schemas: self.schema_registry_auto_register,
            producer_linger_ms: self.kafka_linger_ms,
            db_pool_size: self.db_pool_size,
            consumer: ConsumerTuning::default(),
            logging: Logging {
                filter: self.rust_log,
                format: self.log_format,
            },
        })
    }

    fn topics(&self) -> Result<Topics, ConfigError> {
        if self.kafka_cac_topic == self.kafka_cmt_topic {
            return Err(ConfigError {
                variable: "KAFKA_CMT_TOPIC".into(),
                problem: "must differ from KAFKA_CAC_TOPIC".into(),
            });
        }
        Ok(Topics {
            account_creation_commands: self.kafka_cac_topic.clone(),
            account_creation_feedback: self.kafka_acf_topic.clone(),
            money_transfer_commands: self.kafka_cmt_topic.clone(),
            money_transfer_feedback: self.kafka_mtf_topic.clone(),
            balance_changed: self.kafka_bc_topic.clone(),
            dead_letter: self.kafka_dead_letter_topic.clone(),
        })
    }

    /// `DATABASE_URL`, or else the JVM handler's DB_* variables.
    fn database_url(&self) -> Secret {
        self.database_url.clone().unwrap_or_else(|| {
            Secret::new(connection_string(
                &self.db_hostname,
                self.db_port,
                &self.db_user,
                self.db_password.expose(),
            ))
        })
    }

    /// PEM files win over the JVM stores when both are given: whoever added the
    /// KAFKA_SSL_* variables to the JVM handler's environment meant them. The ignored
    /// stores are not even opened. The flag: stores were given and ignored.
    fn tls(&self, vars: &Vars) -> Result<(Option<KafkaTls>, bool), ConfigError> {
        if let Some(files) = self.tls_files()? {
            let ignored = JVM_TLS_VARIABLES
                .iter()
                .any(|name| vars.get(name).is_some());
            return Ok((Some(KafkaTls::Pem(files)), ignored));
        }
        Ok((self.jvm_stores()?.map(KafkaTls::JvmStores), false))
    }

    /// `KAFKA_SSL_CA_LOCATION` alone: TLS with the brokers' certificate checked; with
    /// `KAFKA_SSL_CERT_LOCATION` and `KAFKA_SSL_KEY_LOCATION` too: mutual TLS, the key
    /// decrypted with `KAFKA_SSL_KEY_PASSWORD` (unset when it is not encrypted). A
    /// certificate without its key, or the reverse, is an error.
    fn tls_files(&self) -> Result<Option<TlsFiles>, ConfigError> {
        let key_password = &self.kafka_ssl_key_password;
        let client_certificate = match (&self.kafka_ssl_cert_location, &self.kafka_ssl_key_location)
        {
            (Some(certificate), Some(key)) => Some(ClientCertificate {
                certificate_location: certificate.clone(),
                key_location: key.clone(),
                key_password: key_password.clone().unwrap_or_else(|| Secret::new("")),
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
        let ca_location = self.kafka_ssl_ca_location.clone();
        if ca_location.is_none() && client_certificate.is_none() {
            return Ok(None);
        }
        Ok(Some(TlsFiles {
            ca_location,
            client_certificate,
        }))
    }

    /// The JVM handler's three TLS variables: all or none. Store names are resolved as
    /// the JVM handler does, under `SSL_STORES_DIRECTORY`; the stores are opened later,
    /// by [`Config::load_tls`].
    fn jvm_stores(&self) -> Result<Option<JvmStores>, ConfigError> {
        let given = (
            &self.ssl_keystore_location,
            &self.ssl_truststore_location,
            &self.ssl_password,
        );
        let (keystore, truststore, password) = match given {
            (None, None, None) => return Ok(None),
            (Some(keystore), Some(truststore), Some(password)) => (keystore, truststore, password),
            (keystore, truststore, password) => {
                let set = [keystore.is_some(), truststore.is_some(), password.is_some()];
                let first = |wanted: bool| {
                    let position = set.iter().position(|&is_set| is_set == wanted);
                    position.map_or("", |i| JVM_TLS_VARIABLES[i])
                };
                return Err(missing(first(false), first(true)));
            }
        };
        let directory = &self.ssl_stores_directory;
        Ok(Some(JvmStores::declared(
            tls_stores::resolve(keystore, directory),
            tls_stores::resolve(truststore, directory),
            password.clone(),
        )))
    }

    fn sasl(&self) -> Result<Option<SaslLogin>, ConfigError> {
        let (username, password) = (&self.kafka_sasl_username, &self.kafka_sasl_password);
        let Some(mechanism) = self.kafka_sasl_mechanism else {
            return match (username, password) {
                (None, None) => Ok(None),
                (Some(_), _) => Err(missing("KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME")),
                (None, Some(_)) => Err(missing("KAFKA_SASL_MECHANISM", "KAFKA_SASL_PASSWORD")),
            };
        };
        Ok(Some(SaslLogin {
            mechanism,
            username: username
                .clone()
                .ok_or_else(|| missing("KAFKA_SASL_USERNAME", "KAFKA_SASL_MECHANISM"))?,
            password: password
                .clone()
                .ok_or_else(|| missing("KAFKA_SASL_PASSWORD", "KAFKA_SASL_MECHANISM"))?,
        }))
    }

    fn registry_credentials(&self) -> Result<Option<RegistryCredentials>, ConfigError> {
        match (
            &self.schema_registry_api_key,
            &self.schema_registry_api_secret,
        ) {
            (None, None) => Ok(None),
            (Some(key), Some(secret)) => Ok(Some(RegistryCredentials {
                key: key.clone(),
                secret: secret.clone(),
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
    /// at start); `HTTP_BIND_ADDRESS` narrows it, and means nothing without a port.
    pub(super) fn http_address(&self, vars: &Vars) -> Result<Option<SocketAddr>, ConfigError> {
        match self.http_port {
            Some(port) => Ok(Some(SocketAddr::new(self.http_bind_address, port))),
            None if vars.get("HTTP_BIND_ADDRESS").is_some() => {
                Err(missing("HTTP_PORT", "HTTP_BIND_ADDRESS"))
            }
            None => Ok(None),
        }
    }
}

/// `variable` is needed because `because` is set.
fn missing(variable: &str, because: &str) -> ConfigError {
    ConfigError {
        variable: variable.into(),
        problem: format!("must be set too, since {because} is set"),
    }
}

/// A libpq key=value connection string: no URL-escaping pitfalls for passwords.
fn connection_string(host: &str, port: u16, user: &str, password: &str) -> String {
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
