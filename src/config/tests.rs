//! The rules across variables, from sets of variables (the process environment is
//! never touched; see `source` for how).

use super::*;

pub(super) fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
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
    // Unused, the trio is not even checked: a stale value does not stop start-up.
    let config = parse(&[
        ("DATABASE_URL", "postgres://u:p@db/x"),
        ("DB_PORT", "not-a-port"),
    ])
    .unwrap();
    assert_eq!(config.database_url.expose(), "postgres://u:p@db/x");
    assert_eq!(
        parse(&[("DB_PORT", "not-a-port")]).unwrap_err().variable,
        "DB_PORT"
    );
}

#[test]
fn the_stores_directory_is_checked_only_when_the_stores_are_used() {
    assert!(parse(&[("SSL_STORES_DIRECTORY", " /etc/secrets ")]).is_ok());
    let stores = [
        ("SSL_KEYSTORE_LOCATION", "k.p12"),
        ("SSL_TRUSTSTORE_LOCATION", "t.p12"),
        ("SSL_PASSWORD", "pw"),
        ("SSL_STORES_DIRECTORY", " /etc/secrets "),
    ];
    assert_eq!(parse(&stores).unwrap_err().variable, "SSL_STORES_DIRECTORY");
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
            &[("KAFKA_GROUP_INSTANCE_ID", "bank 2")],
            "KAFKA_GROUP_INSTANCE_ID",
        ),
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
    let mut config = parse(&vars).unwrap();
    assert!(
        matches!(config.tls, Some(KafkaTls::Pem(_))),
        "{:?}",
        config.tls
    );
    assert_eq!(config.load_tls(), Ok(()));
    assert!(config.jvm_stores_ignored);
    assert!(
        config
            .kafka_security()
            .contains("SSL_* keytool stores are ignored")
    );
    assert!(!parse(&vars[3..]).unwrap().jvm_stores_ignored);
}

#[test]
fn jvm_store_names_resolve_under_the_stores_directory_and_open_only_when_loaded() {
    let mut vars = JVM_STORES.to_vec();
    vars.push(("SSL_STORES_DIRECTORY", "/nonexistent/secrets"));
    // Parsing records where the stores are; it opens nothing.
    let mut config = parse(&vars).unwrap();
    let Some(KafkaTls::JvmStores(stores)) = &config.tls else {
        panic!("the JVM stores expected: {:?}", config.tls)
    };
    assert_eq!(
        stores.keystore,
        std::path::Path::new("/nonexistent/secrets/kafka.command-handler.keystore.jks")
    );
    assert_eq!(stores.trusted_pem, None);
    let error = config.load_tls().unwrap_err();
    assert_eq!(error.variable, "SSL_KEYSTORE_LOCATION");
    assert!(
        error
            .problem
            .contains("/nonexistent/secrets/kafka.command-handler.keystore.jks"),
        "{error}"
    );
    // Without the override: where the JVM handler's image mounts them.
    let error = parse(&JVM_STORES).unwrap().load_tls().unwrap_err();
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
fn the_group_instance_name_is_given_or_the_host_name_and_none_is_dynamic() {
    let named = parse(&[("KAFKA_GROUP_INSTANCE_ID", "bank-2"), ("HOSTNAME", "h")]).unwrap();
    assert_eq!(
        named.membership,
        GroupMembership::Static {
            name: "bank-2".into()
        }
    );
    // Containers set HOSTNAME; what Kafka refuses in an instance id becomes '_'.
    let host = parse(&[("HOSTNAME", "a1b2c3 d4")]).unwrap();
    assert_eq!(
        host.membership,
        GroupMembership::Static {
            name: "a1b2c3_d4".into()
        }
    );
    // Without HOSTNAME, the kernel's host name.
    assert!(matches!(
        parse(&[]).unwrap().membership,
        GroupMembership::Static { .. }
    ));
    let dynamic = parse(&[("KAFKA_GROUP_INSTANCE_ID", "none")]).unwrap();
    assert_eq!(dynamic.membership, GroupMembership::Dynamic);
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
fn a_property_librdkafka_refuses_stops_start_up_without_its_value() {
    for (variable, value, reason) in [
        // Misspelt (librdkafka's is log_level, which no variable can spell).
        (
            "RDKAFKA_LOG_LEVEL",
            "Hidden-31337",
            "No such configuration property",
        ),
        (
            "RDKAFKA_CONSUMER_SESSION_TIMEOUT_MS",
            "Hidden-31337",
            "Invalid value",
        ),
        // librdkafka's reason quotes a value it does not take from a list.
        (
            "RDKAFKA_PRODUCER_COMPRESSION_TYPE",
            "Hidden-31337",
            "Invalid value",
        ),
    ] {
        let error = parse(&[(variable, value)]).unwrap_err();
        assert_eq!(error.variable, variable);
        assert!(error.problem.contains(reason), "{}", error.problem);
        assert!(!error.problem.contains(value), "{}", error.problem);
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
