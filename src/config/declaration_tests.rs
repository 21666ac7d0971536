//! The declaration: its defaults, ranges and help, and the refusals naming the
//! variable (from sets of variables, as in `tests`).

use super::tests::parse;
use super::*;

/// Every default, as literal values (SPEC §6 and the README): an empty environment,
/// and one whose variables are all set but empty, which is the same.
#[test]
fn an_empty_environment_gives_the_defaults_of_spec_6() {
    let declared = super::source::declared();
    let empty: Vec<(&str, &str)> = declared
        .iter()
        .map(|(_, name)| (name.as_str(), ""))
        .collect();
    for config in [parse(&[]).unwrap(), parse(&empty).unwrap()] {
        assert_eq!(config.kafka_brokers, "127.0.0.1:9092");
        assert_eq!(config.schema_registry_url.expose(), "http://localhost:8081");
        assert_eq!(config.client_id, "command-handler");
        assert_eq!(
            config.topics.all(),
            [
                "confirm_account_creation",
                "account_creation_feedback",
                "confirm_money_transfer",
                "money_transfer_feedback",
                "balance_changed",
                "command_handler_dead_letter",
            ]
        );
        assert_eq!(
            config.database_url.expose(),
            "host='localhost' port=5432 dbname=balancedb user='clojure_ch' password='open-bank'"
        );
        assert_eq!((config.tls, config.jvm_stores_ignored), (None, false));
        assert_eq!((config.sasl, config.registry_credentials), (None, None));
        assert_eq!(config.http_address, None);
        assert_eq!(config.liveness_stall, std::time::Duration::from_secs(120));
        assert_eq!(config.kafka_properties, []);
        assert_eq!(config.batch_size, 100);
        assert_eq!(config.dead_letter_partitions, None);
        assert_eq!(config.dead_letter_replication, None);
        assert!(!config.register_schemas);
        assert_eq!(config.producer_linger_ms, 0);
        assert_eq!(config.db_pool_size, 4);
        assert_eq!(
            config.logging,
            Logging {
                filter: "warn,open_bank_command_handler=info".into(),
                format: LogFormat::Text,
            }
        );
    }
}

#[test]
fn numbers_are_range_checked_without_casts() {
    let config = parse(&[
        ("COMMAND_BATCH_SIZE", "1000"),
        ("DB_POOL_SIZE", "2"),
        ("DB_PORT", "65535"),
        ("KAFKA_LINGER_MS", "60000"),
        ("HTTP_LIVENESS_STALL_SECONDS", "3600"),
        ("KAFKA_DEAD_LETTER_PARTITIONS", "10000"),
        ("KAFKA_DEAD_LETTER_REPLICATION", "32"),
    ])
    .unwrap();
    assert_eq!(config.batch_size, 1000);
    assert_eq!(config.db_pool_size, 2);
    assert!(config.database_url.expose().contains("port=65535"));
    assert_eq!(config.producer_linger_ms, 60_000);
    assert_eq!(config.liveness_stall, std::time::Duration::from_secs(3600));
    assert_eq!(config.dead_letter_partitions, Some(10_000));
    assert_eq!(config.dead_letter_replication, Some(32));
    for (variable, refused) in [
        ("COMMAND_BATCH_SIZE", "1001"),
        ("COMMAND_BATCH_SIZE", "-1"),
        ("DB_POOL_SIZE", "1"),
        ("DB_POOL_SIZE", "101"),
        ("DB_PORT", "0"),
        ("KAFKA_LINGER_MS", "60001"),
        ("HTTP_LIVENESS_STALL_SECONDS", "0"),
        ("HTTP_LIVENESS_STALL_SECONDS", "3601"),
        ("KAFKA_DEAD_LETTER_PARTITIONS", "0"),
        ("KAFKA_DEAD_LETTER_PARTITIONS", "4294967297"),
        ("KAFKA_DEAD_LETTER_REPLICATION", "33"),
        ("HTTP_PORT", "65536"),
        ("SCHEMA_REGISTRY_AUTO_REGISTER", "yes"),
        ("LOG_FORMAT", "xml"),
        ("LOG_FORMAT", "JSON"),
        ("KAFKA_BROKERS", " kafka:9092"),
    ] {
        let error = parse(&[(variable, refused)]).unwrap_err();
        assert_eq!(error.variable, variable, "{refused}: {error}");
        assert!(error.problem.contains(&format!("{refused:?}")), "{error}");
    }
    let flag = |value| parse(&[("SCHEMA_REGISTRY_AUTO_REGISTER", value)]).unwrap();
    assert!(flag("TRUE").register_schemas && !flag("False").register_schemas);
    let json = parse(&[("LOG_FORMAT", "json"), ("RUST_LOG", "debug")]).unwrap();
    assert_eq!(json.logging.format, LogFormat::Json);
    assert_eq!(json.logging.filter, "debug");
}

#[test]
fn refused_secrets_are_not_repeated() {
    let url = "mysql://root:hunter2@db";
    let error = parse(&[("DATABASE_URL", url)]).unwrap_err();
    assert_eq!(error.variable, "DATABASE_URL");
    assert!(!error.to_string().contains("hunter2"), "{error}");
    let error = parse(&[("SCHEMA_REGISTRY_URL", "ftp://key:s3cret@registry")]).unwrap_err();
    assert!(!error.to_string().contains("s3cret"), "{error}");
}

/// The `health` command reads two variables, whatever the others say.
#[test]
fn the_http_address_alone_ignores_unrelated_variables() {
    let vars = [
        ("DB_PORT", "five"),
        ("SSL_PASSWORD", "half of the JVM stores"),
        ("HTTP_PORT", "8080"),
    ];
    let address =
        super::http_address_from(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    assert_eq!(address, Ok(Some("0.0.0.0:8080".parse().unwrap())));
    let bind_only = [("HTTP_BIND_ADDRESS".to_string(), "127.0.0.1".to_string())];
    assert_eq!(
        super::http_address_from(bind_only.into_iter())
            .unwrap_err()
            .variable,
        "HTTP_PORT"
    );
}

/// clap's own checks of the declaration (names, defaults against their parsers).
#[test]
fn the_declaration_is_sound_and_the_help_lists_every_variable() {
    use clap::CommandFactory;
    super::settings::Settings::command().debug_assert();
    let help = variables_help();
    for (_, name) in super::source::declared() {
        assert!(
            help.contains(&format!("  {name} ")),
            "{name} not in:\n{help}"
        );
    }
    assert!(help.contains("[default: 127.0.0.1:9092]"), "{help}");
}
