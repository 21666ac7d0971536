//! The handler in the JVM handler's slot of the Open Bank stack (SPEC §8): the JVM
//! handler's TLS variables and keytool stores, the PEM files of the earlier Rust port,
//! output schemas registered beforehand (as the stack's synchronizer does) and never by
//! the handler, and a dead-letter topic the handler creates itself. The broker's
//! `OPENBANK` listener and the certificates are made the stack's way by dev/stack.

use crate::barrier::wait_until;
use crate::harness::*;

/// JVM-style writer schemas of the five output subjects (Java string properties), as
/// the stack's synchronizer registers them.
const JVM_OUTPUT_SCHEMAS: [(&str, &str); 5] = [
    (
        "AccountCreationConfirmed",
        include_str!("../fixtures/jvm-schemas/AccountCreationConfirmed.avsc"),
    ),
    (
        "AccountCreationFailed",
        include_str!("../fixtures/jvm-schemas/AccountCreationFailed.avsc"),
    ),
    (
        "MoneyTransferConfirmed",
        include_str!("../fixtures/jvm-schemas/MoneyTransferConfirmed.avsc"),
    ),
    (
        "MoneyTransferFailed",
        include_str!("../fixtures/jvm-schemas/MoneyTransferFailed.avsc"),
    ),
    (
        "BalanceChanged",
        include_str!("../fixtures/jvm-schemas/BalanceChanged.avsc"),
    ),
];

/// The output topic each record of [`JVM_OUTPUT_SCHEMAS`] goes to.
fn output_topic<'a>(env: &'a TestEnv, record: &str) -> &'a str {
    match record {
        "AccountCreationConfirmed" | "AccountCreationFailed" => &env.topics.acf,
        "MoneyTransferConfirmed" | "MoneyTransferFailed" => &env.topics.mtf,
        _ => &env.topics.bc,
    }
}

/// Registers the JVM schemas of `records` as the synchronizer does; their ids by record.
fn register_jvm_outputs(env: &TestEnv, records: &[&str]) -> Vec<(String, u32)> {
    JVM_OUTPUT_SCHEMAS
        .iter()
        .filter(|(record, _)| records.contains(record))
        .map(|(record, schema)| {
            let id = env.register(output_topic(env, record), record, schema);
            (record.to_string(), id)
        })
        .collect()
}

/// The versions registered under a subject.
fn versions(env: &TestEnv, subject: &str) -> Vec<u32> {
    let url = format!("{}/subjects/{subject}/versions", env.stack.registry_url);
    let reply = http("GET", &url);
    assert_eq!(reply.status, 200, "{url}: {}", reply.body);
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{url}: {e}: {}", reply.body))
}

/// The JVM handler's three TLS variables, exactly as in its compose service, with the
/// stores looked up in the stack's certificate folder instead of /etc/kafka/secrets.
fn jvm_tls(open_bank: &OpenBankTls, password: &str) -> Vec<(String, String)> {
    [
        ("KAFKA_BROKERS", open_bank.brokers.as_str()),
        (
            "SSL_KEYSTORE_LOCATION",
            "kafka.command-handler.keystore.jks",
        ),
        (
            "SSL_TRUSTSTORE_LOCATION",
            "kafka.command-handler.truststore.jks",
        ),
        ("SSL_PASSWORD", password),
        ("SSL_STORES_DIRECTORY", open_bank.certs.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn as_overrides(vars: &[(String, String)]) -> Vec<(&str, &str)> {
    vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// An account opened, a deposit and a refused transfer, checked.
fn play(env: &mut TestEnv) {
    let (iban, token) = env.open_account();
    assert_eq!(
        env.transfer(&TransferCmd::new("", 2_500, "cash", &iban)),
        None
    );
    assert_eq!(
        env.transfer(&TransferCmd::new(&token, 1_000_000, &iban, BANK_IBAN))
            .as_deref(),
        Some("insufficient funds")
    );
    assert_eq!(env.amount(&iban), Some(2_500));
}

#[test]
fn the_jvm_handlers_environment_and_stores_work_unchanged() {
    let mut env = TestEnv::new("jvm_slot");
    let open_bank = &env.stack.open_bank;
    let registered = register_jvm_outputs(&env, &JVM_OUTPUT_SCHEMAS.map(|(r, _)| r));
    // A dead-letter topic the cluster does not have: the handler makes it.
    let dead_letters = format!("{}.dead-letters", env.name);
    let mut vars = jvm_tls(open_bank, &open_bank.password);
    vars.extend([
        ("SCHEMA_REGISTRY_AUTO_REGISTER".to_string(), String::new()),
        ("KAFKA_DEAD_LETTER_TOPIC".to_string(), dead_letters.clone()),
    ]);
    let handler = env.start_handler(&as_overrides(&vars));
    play(&mut env);

    // Answers and events are written with the schemas registered beforehand; the
    // handler registered no version of its own.
    let answers: Vec<Output> = env.outputs().to_vec();
    for output in answers.iter().filter(|o| o.topic != env.topics.dlq) {
        let record = output.record_name().trim_start_matches("nl.openweb.data.");
        let (_, id) = registered
            .iter()
            .find(|(name, _)| name == record)
            .unwrap_or_else(|| panic!("no registered schema for {record}"));
        assert_eq!(
            output.schema_id,
            Some(*id),
            "{record} written with its registered schema"
        );
    }
    for (record, _) in JVM_OUTPUT_SCHEMAS {
        let subject = format!("{}-nl.openweb.data.{record}", output_topic(&env, record));
        assert_eq!(versions(&env, &subject), vec![1], "{subject}");
    }

    // The dead-letter topic now exists, shaped like the command topic, and is used.
    let partitions = env.partitions_of(&dead_letters);
    assert_eq!(
        partitions,
        Some(env.partitions),
        "partitions of {dead_letters}"
    );
    env.send_raw(&env.topics.cmt.clone(), Some(b"poison"), Some(b"not avro"));
    env.flush();
    wait_until(&format!("a dead letter in {dead_letters}"), WAIT, || {
        env.records_in(&dead_letters) >= 1
    });

    env.handler(handler).stop_cleanly();
    let log = env.handler(handler).log();
    assert!(
        log.contains("security mutual TLS (the JVM handler's keytool stores)"),
        "{log}"
    );
    assert!(
        log.contains(&format!("created the dead-letter topic {dead_letters}")),
        "{log}"
    );
    assert!(
        log.contains("each subject's latest registered version"),
        "{log}"
    );
    assert!(
        !log.contains(&open_bank.password),
        "the store password leaked into the log"
    );
}

#[test]
fn the_earlier_ports_pem_files_work_and_win_over_the_jvm_stores() {
    let mut env = TestEnv::new("pem_slot");
    let open_bank = &env.stack.open_bank;
    // The JVM variables too, with a password that opens nothing: the PEM files win and
    // the stores are not even opened.
    let mut vars = jvm_tls(open_bank, "not-the-store-password-7731");
    vars.extend(
        [
            ("KAFKA_SSL_CA_LOCATION", open_bank.file("ca-root.crt")),
            (
                "KAFKA_SSL_CERT_LOCATION",
                open_bank.file("command-handler-signed.pem"),
            ),
            (
                "KAFKA_SSL_KEY_LOCATION",
                open_bank.file("command-handler.key"),
            ),
            ("KAFKA_SSL_KEY_PASSWORD", open_bank.password.clone()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    let handler = env.start_handler(&as_overrides(&vars));
    play(&mut env);
    env.handler(handler).stop_cleanly();
    let log = env.handler(handler).log();
    assert!(
        log.contains("security mutual TLS (from the KAFKA_SSL_* PEM files"),
        "{log}"
    );
    assert!(log.contains("SSL_* keytool stores are ignored"), "{log}");
    assert!(!log.contains(&open_bank.password) && !log.contains("not-the-store-password-7731"));
}

#[test]
fn a_wrong_password_or_a_legacy_store_stops_start_up_with_a_clear_message() {
    let mut env = TestEnv::new("bad_stores");
    let open_bank = &env.stack.open_bank;
    let wrong = jvm_tls(open_bank, "not-the-store-password-5519");
    let (status, text) = env.run_check(&as_overrides(&wrong));
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("SSL_KEYSTORE_LOCATION"), "{text}");
    assert!(
        text.contains("cannot be opened with SSL_PASSWORD"),
        "{text}"
    );
    assert!(text.contains("wrong password"), "{text}");
    assert!(!text.contains("not-the-store-password-5519"), "{text}");

    let mut legacy = jvm_tls(open_bank, &open_bank.password);
    legacy[1].1 = "legacy.command-handler.keystore.jks".to_string();
    let log = env.start_expecting_refusal(&as_overrides(&legacy), 78);
    assert!(log.contains("is a legacy JKS store"), "{log}");
    assert!(log.contains("keytool -importkeystore"), "{log}");
    assert!(log.contains("KAFKA_SSL_*"), "{log}");
}

#[test]
fn a_missing_or_unusable_subject_stops_start_up_naming_it() {
    let mut env = TestEnv::new("subjects");
    // The synchronizer registered all but BalanceChanged.
    register_jvm_outputs(
        &env,
        &[
            "AccountCreationConfirmed",
            "AccountCreationFailed",
            "MoneyTransferConfirmed",
            "MoneyTransferFailed",
        ],
    );
    let log = env.start_expecting_refusal(&[("SCHEMA_REGISTRY_AUTO_REGISTER", "")], 1);
    let subject = format!("{}-nl.openweb.data.BalanceChanged", env.topics.bc);
    assert!(
        log.contains(&format!("subject {subject} is not registered")),
        "{log}"
    );
    assert!(log.contains("SCHEMA_REGISTRY_AUTO_REGISTER=true"), "{log}");

    // Registered now, but with a field the handler has no value for.
    let schema = r#"{"type":"record","name":"BalanceChanged","namespace":"nl.openweb.data","fields":[{"name":"iban","type":"string"},{"name":"new_balance","type":"long"},{"name":"changed_by","type":"long"},{"name":"from_to","type":"string"},{"name":"description","type":"string"},{"name":"branch","type":"string"}]}"#;
    env.register(&env.topics.bc.clone(), "BalanceChanged", schema);
    let log = env.start_expecting_refusal(&[("SCHEMA_REGISTRY_AUTO_REGISTER", "")], 1);
    assert!(
        log.contains(&format!(
            "the latest schema of subject {subject} cannot encode"
        )),
        "{log}"
    );
    // Nothing was registered by the handler meanwhile.
    assert_eq!(versions(&env, &subject), vec![1]);
}

#[test]
fn a_dead_letter_topic_the_brokers_refuse_to_create_stops_start_up() {
    let mut env = TestEnv::new("dlq_refused");
    let dead_letters = format!("{}.dead-letters", env.name);
    // Three replicas on a one-broker cluster: the broker says no.
    let log = env.start_expecting_refusal(
        &[
            ("KAFKA_DEAD_LETTER_TOPIC", dead_letters.as_str()),
            ("KAFKA_DEAD_LETTER_REPLICATION", "3"),
        ],
        1,
    );
    assert!(
        log.contains(&format!(
            "the dead-letter topic {dead_letters} does not exist and the brokers refused to create it"
        )),
        "{log}"
    );
    assert_eq!(env.partitions_of(&dead_letters), None);
}
