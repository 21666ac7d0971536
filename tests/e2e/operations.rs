//! Running it as operators do: health and metrics over HTTP, record lines in the log,
//! SASL over TLS, and Schema Registry basic authentication.

use crate::harness::*;

/// Serves HTTP on a free loopback port, with librdkafka statistics (the lag metric)
/// every half second.
const HTTP: [(&str, &str); 3] = [
    ("HTTP_PORT", "0"),
    ("HTTP_BIND_ADDRESS", "127.0.0.1"),
    ("RDKAFKA_CONSUMER_STATISTICS_INTERVAL_MS", "500"),
];

/// `RDKAFKA_*_DEBUG` brings librdkafka's debug lines to the log (with `librdkafka=debug`
/// in `RUST_LOG`), after the clients are made too: the group joining is one.
#[test]
fn rdkafka_debug_brings_librdkafka_debug_lines_to_the_log() {
    let mut env = TestEnv::with_partitions("rdkafka_debug", 1);
    let handler = env.start_handler(&[
        ("RDKAFKA_CONSUMER_DEBUG", "cgrp"),
        (
            "RUST_LOG",
            "warn,open_bank_command_handler=info,librdkafka=debug",
        ),
    ]);
    env.handler(handler).wait_for_log("changed join state");
}

#[test]
fn health_and_metrics_are_served_and_move_with_the_work() {
    let mut env = TestEnv::with_partitions("http", 1);
    let handler = env.start_handler(&HTTP);
    let base = format!("http://{}", env.handler(handler).http_address());

    let live = http("GET", &format!("{base}/health/live"));
    assert_eq!(
        (live.status, live.body.as_str()),
        (200, r#"{"status":"up"}"#)
    );
    let ready = http_until(&format!("{base}/health/ready"), "readiness", |r| {
        r.status == 200
    });
    let report: serde_json::Value = serde_json::from_str(&ready.body).unwrap();
    assert_eq!(report["status"], "ready", "{report}");
    let checks = &report["checks"];
    for check in [
        "database".to_string(),
        "schema_registry".to_string(),
        format!("kafka:{}", env.topics.cac),
        format!("kafka:{}", env.topics.cmt),
        format!("assignment:{}", env.topics.cac),
    ] {
        assert_eq!(checks[&check]["ok"], true, "{check} in {report}");
    }
    assert_eq!(
        checks[format!("assignment:{}", env.topics.cmt)]["detail"],
        "partitions [0]",
        "{report}"
    );

    // The work: an account, a confirmed and a refused transfer, a poison record.
    let (iban, token) = env.open_account();
    let confirmed = TransferCmd::new(&token, 1, &iban, BANK_IBAN);
    let refused = TransferCmd::new("wrong token", 1, &iban, BANK_IBAN);
    assert_eq!(env.transfer(&confirmed), None);
    assert_eq!(env.transfer(&refused).as_deref(), Some("invalid token"));
    let poison_key = env.dead_letter_a_poison_record();
    let cmt = env.topics.cmt.clone();

    let metrics_url = format!("{base}/metrics");
    let series = |name: &str, labels: &str| format!("command_handler_{name}{{{labels}}}");
    let expected = [
        (
            series(
                "commands_total",
                r#"command="account_creation",outcome="confirmed""#,
            ),
            1.0,
        ),
        (
            series(
                "commands_total",
                r#"command="money_transfer",outcome="confirmed""#,
            ),
            1.0,
        ),
        (
            series(
                "commands_total",
                r#"command="money_transfer",outcome="failed""#,
            ),
            1.0,
        ),
        (
            series("dead_letters_total", &format!(r#"topic="{cmt}""#)),
            1.0,
        ),
        // Two transfers and the poison record, each timed from poll to stored offset.
        (
            series("processing_seconds_count", r#"command="money_transfer""#),
            3.0,
        ),
        (
            series("assigned_partitions", &format!(r#"topic="{cmt}""#)),
            1.0,
        ),
        (
            series("consumer_lag", &format!(r#"topic="{cmt}",partition="0""#)),
            0.0,
        ),
        (series("dependency_up", r#"dependency="database""#), 1.0),
        ("command_handler_db_pool_max_connections".to_string(), 4.0),
        ("command_handler_producer_queue_depth".to_string(), 0.0),
    ];
    let scraped = http_until(&metrics_url, "the counters of the work done", |reply| {
        expected
            .iter()
            .all(|(series, value)| sample(&reply.body, series) == Some(*value))
    });
    assert!(
        scraped
            .content_type
            .starts_with("application/openmetrics-text"),
        "{}",
        scraped.content_type
    );
    assert!(scraped.body.ends_with("# EOF\n"), "a complete exposition");
    assert_eq!(
        sample(
            &scraped.body,
            r#"command_handler_dependency_up{dependency="kafka"}"#
        ),
        None,
        "the start-up check's series is gone once the clients exist"
    );
    let in_use = sample(
        &scraped.body,
        r#"command_handler_db_pool_connections{state="in_use"}"#,
    );
    assert!(in_use.is_some(), "pool usage exposed:\n{}", scraped.body);

    assert_eq!(http("GET", &format!("{base}/nowhere")).status, 404);
    assert_eq!(http("POST", &format!("{base}/health/live")).status, 405);

    // Every line about a record names its topic, partition, offset and command id.
    let log = env.handler(handler).log();
    for (id, what) in [
        (confirmed.id.to_string(), "money transfer"),
        (poison_key.clone(), "dead-lettered"),
    ] {
        let line = log
            .lines()
            .find(|line| line.contains(&format!("command {id}: {what}")))
            .unwrap_or_else(|| panic!("no line about {id} ({what}) in\n{log}"));
        assert!(line.contains(&format!("{cmt}/0@")), "{line}");
    }

    env.handler(handler).stop_cleanly();
}

/// `command-handler check`: whether every dependency was reached, and the report.
fn check(env: &TestEnv, overrides: &[(&str, &str)]) -> (bool, String) {
    let (status, report) = env.run_check(overrides);
    (status.success(), report)
}

/// The handler does its work over the SASL_SSL listener with `mechanism`.
fn works_over_sasl(mechanism: &str) {
    let mut env = TestEnv::new(&format!("sasl-{}", mechanism.to_lowercase()));
    let stack: &'static Stack = env.stack;
    let mut over_sasl = stack.sasl_env(mechanism).to_vec();
    over_sasl.push(("RUST_LOG", "debug"));
    let (reached, report) = check(&env, &over_sasl);
    assert!(reached, "check over SASL {mechanism}:\n{report}");
    assert!(
        report.contains(&format!("security SASL {mechanism} over TLS")),
        "{report}"
    );

    let handler = env.start_handler(&over_sasl);
    let (iban, token) = env.open_account();
    assert_eq!(
        env.transfer(&TransferCmd::new(&token, 5, &iban, BANK_IBAN)),
        None
    );
    assert_eq!(env.amount(&iban), Some(-5));
    env.handler(handler).stop_cleanly();
    let log = env.handler(handler).log();
    assert!(
        !log.contains(&stack.sasl.password),
        "the SASL password leaked into the log"
    );

    // A wrong password: the broker refuses, `check` says so, and shows no password.
    let wrong = "not-the-password";
    let mut refused = over_sasl.to_vec();
    refused.retain(|(k, _)| *k != "KAFKA_SASL_PASSWORD");
    refused.push(("KAFKA_SASL_PASSWORD", wrong));
    let (reached, report) = check(&env, &refused);
    assert!(!reached, "check must fail with a wrong password:\n{report}");
    assert!(report.contains("kafka: FAILED"), "{report}");
    assert!(!report.contains(wrong), "{report}");
}

#[test]
fn works_over_sasl_plain() {
    works_over_sasl("PLAIN");
}

#[test]
fn works_over_sasl_scram_sha_256() {
    works_over_sasl("SCRAM-SHA-256");
}

#[test]
fn works_over_sasl_scram_sha_512() {
    works_over_sasl("SCRAM-SHA-512");
}

#[test]
fn registry_basic_auth_and_a_wrong_secret_loses_nothing() {
    let mut env = TestEnv::new("registry-auth");
    let stack: &'static Stack = env.stack;
    let registry = &stack.auth_registry;
    let with_key = [
        ("SCHEMA_REGISTRY_URL", registry.url.as_str()),
        ("SCHEMA_REGISTRY_API_KEY", registry.key.as_str()),
        ("SCHEMA_REGISTRY_API_SECRET", registry.secret.as_str()),
    ];
    let wrong_secret = "wrong-registry-secret";
    let mut with_wrong_secret = with_key.to_vec();
    with_wrong_secret[2].1 = wrong_secret;
    // Credentials may also come in the URL.
    let in_url = |secret: &str| {
        registry
            .url
            .replacen("http://", &format!("http://{}:{secret}@", registry.key), 1)
    };
    let (reached, report) = check(&env, &[("SCHEMA_REGISTRY_URL", &in_url(&registry.secret))]);
    assert!(reached, "{report}");

    let (reached, report) = check(&env, &with_wrong_secret);
    assert!(!reached, "{report}");
    assert!(report.contains("schema registry: FAILED"), "{report}");
    assert!(!report.contains(wrong_secret), "{report}");
    let (reached, report) = check(&env, &with_key);
    assert!(reached, "{report}");

    // A handler with the wrong secret cannot read the commands' schemas: it retries and
    // neither answers nor dead-letters. Its readiness report says why, without the secret.
    let wrong_url = in_url(wrong_secret);
    let mut refused_vars = HTTP.to_vec();
    refused_vars.push(("SCHEMA_REGISTRY_URL", &wrong_url));
    let refused = env.start_handler(&refused_vars);
    let readiness = format!(
        "http://{}/health/ready",
        env.handler(refused).http_address()
    );
    let reply = http_until(&readiness, "the registry check failing", |r| {
        r.body.contains(r#""schema_registry":{"detail""#) && r.status == 503
    });
    assert!(reply.body.contains("401"), "{}", reply.body);
    assert!(!reply.body.contains(wrong_secret), "{}", reply.body);
    let command = TransferCmd::new("", 7, "cash", BANK_IBAN);
    env.send_transfer(&command);
    env.flush();
    // It waits at start-up, checking the output subjects it cannot read, and tries
    // again at least once more while the command is in its topic.
    const NOT_READY: &str = "waiting for the Schema Registry";
    env.handler(refused).wait_for_log(NOT_READY);
    let tried = env.handler(refused).log().matches(NOT_READY).count();
    env.handler(refused)
        .wait_for_log_where("one more attempt at the subjects", |log| {
            log.matches(NOT_READY).count() > tried
        });
    env.handler(refused).stop_cleanly();
    assert!(!env.handler(refused).log().contains(wrong_secret));
    // Stopped, it has written all it ever will: nothing, neither answer nor dead letter.
    for topic in env.output_topics() {
        assert_eq!(
            env.records_in(&topic),
            0,
            "{topic} written without the registry"
        );
    }

    // With the right secret the same group takes the command up and answers it.
    let handler = env.start_handler(&with_key);
    let answer = env.await_answer(command.id);
    assert_eq!(
        answer.record_name(),
        "nl.openweb.data.MoneyTransferConfirmed",
        "{}",
        answer.summary()
    );
    env.handler(handler).stop_cleanly();
    assert!(!env.handler(handler).log().contains(&registry.secret));
}

#[test]
fn liveness_answers_while_start_up_waits_for_the_database() {
    let mut env = TestEnv::new("http-start");
    let stack = env.stack;
    let unreachable = format!(
        "postgres://clojure_ch:wrong-password@{}:{}/{}",
        stack.db_host, stack.db_port, env.database
    );
    let mut vars = HTTP.to_vec();
    vars.push(("DATABASE_URL", &unreachable));
    let handler = env.start_handler(&vars);
    let base = format!("http://{}", env.handler(handler).http_address());
    env.handler(handler)
        .wait_for_log("waiting for the database");

    assert_eq!(http("GET", &format!("{base}/health/live")).status, 200);
    let reply = http_until(&format!("{base}/health/ready"), "a readiness report", |r| {
        r.body.contains("checks")
    });
    assert_eq!(reply.status, 503, "{}", reply.body);
    let report: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(report["checks"]["database"]["ok"], false, "{report}");
    assert_eq!(report["checks"]["kafka"]["ok"], false, "{report}");
    assert!(
        report["checks"]["kafka"]["detail"]
            .as_str()
            .unwrap()
            .starts_with("starting"),
        "{report}"
    );
    assert_eq!(http("GET", &format!("{base}/metrics")).status, 200);
    env.handler(handler).stop_cleanly();
}

#[test]
fn liveness_fails_while_a_loop_is_stuck_and_recovers() {
    let mut env = TestEnv::with_partitions("stall", 1);
    let mut vars = HTTP.to_vec();
    vars.push(("HTTP_LIVENESS_STALL_SECONDS", "2"));
    let handler = env.start_handler(&vars);
    let live = format!("http://{}/health/live", env.handler(handler).http_address());
    let (iban, _) = env.open_account();

    // A lock the handler's transaction waits on for as long as the test holds it.
    let mut blocker = env.db();
    diesel::connection::SimpleConnection::batch_execute(
        &mut blocker,
        "BEGIN; LOCK TABLE balance IN ACCESS EXCLUSIVE MODE",
    )
    .unwrap();
    let command = TransferCmd::new("", 3, "cash", &iban);
    env.send_transfer(&command);
    env.flush();
    let stuck = http_until(&live, "liveness failing", |r| r.status == 503);
    assert!(stuck.body.contains(&env.topics.cmt), "{}", stuck.body);

    // Released, the loop goes on: the command is answered and liveness recovers.
    diesel::connection::SimpleConnection::batch_execute(&mut blocker, "ROLLBACK").unwrap();
    let answer = env.await_answer(command.id);
    assert!(
        answer.record_name().ends_with("MoneyTransferConfirmed"),
        "{}",
        answer.summary()
    );
    http_until(&live, "liveness back", |r| r.status == 200);
    env.handler(handler).stop_cleanly();
}

/// A partition that cannot get past a failure is seen, not only counted: how long it
/// has been retrying is a metric, and readiness names it; once the failure passes,
/// both clear.
#[test]
fn a_stalled_partition_shows_in_metrics_and_readiness_until_it_passes() {
    let mut env = TestEnv::with_partitions("stalled", 1);
    let handler = env.start_handler(&HTTP);
    let base = format!("http://{}", env.handler(handler).http_address());
    let ready = format!("{base}/health/ready");
    let (iban, _) = env.open_account();
    http_until(&ready, "readiness", |r| r.status == 200);

    // The transfer answers' topic refuses every record for now.
    let mtf = env.topics.mtf.clone();
    env.stack
        .set_topic_config(&mtf, &[("max.message.bytes", "16")]);
    let command = TransferCmd::new("", 4, "cash", &iban);
    env.send_transfer(&command);
    env.flush();
    let check = format!("retrying:{}/0", env.topics.cmt);
    let stalled = http_until(&ready, "readiness naming the stalled partition", |r| {
        r.status == 503 && r.body.contains(&check)
    });
    assert!(
        stalled.body.contains("not acknowledged"),
        "{}",
        stalled.body
    );
    let series = format!(
        "command_handler_retrying_seconds{{topic=\"{}\",partition=\"0\"}}",
        env.topics.cmt
    );
    let metrics = http("GET", &format!("{base}/metrics"));
    assert!(
        metrics.body.contains(&series),
        "{series} not in\n{}",
        metrics.body
    );

    // The topic takes records again: the answer goes out, the stall clears.
    env.stack
        .set_topic_config(&mtf, &[("max.message.bytes", "1048588")]);
    env.await_answer(command.id);
    http_until(&ready, "readiness again", |r| r.status == 200);
    let metrics = http("GET", &format!("{base}/metrics"));
    assert!(
        !metrics.body.contains("command_handler_retrying_seconds{"),
        "{}",
        metrics.body
    );
    env.handler(handler).stop_cleanly();
}

/// The handler's own log filter when `RUST_LOG` is unset (`Settings::rust_log`).
const DEFAULT_LOG_FILTER: &str = "warn,open_bank_command_handler=info";

/// A healthy life at the default log level, on a broker fresh from its first start (where
/// librdkafka's start-up notices come): start, readiness, accounts opened, a transfer
/// confirmed and one refused, a second instance joining and leaving, a clean stop. No
/// line at WARN or ERROR, so that one in an operator's log always means trouble.
#[test]
fn a_healthy_run_logs_no_warning_or_error() {
    let private = PrivateStack::up("quietlog");
    let mut env = TestEnv::on(private.stack, "quietlog", 3);
    let quiet = [
        ("RUST_LOG", DEFAULT_LOG_FILTER),
        ("HTTP_PORT", "0"),
        ("HTTP_BIND_ADDRESS", "127.0.0.1"),
    ];
    let first = env.start_handler(&quiet);
    let ready = format!("http://{}/health/ready", env.handler(first).http_address());
    http_until(&ready, "ready", |r| r.status == 200);

    let (payer, token) = env.open_account();
    let (payee, _) = env.open_account();
    assert_eq!(env.transfer(&TransferCmd::new("", 7, "cash", &payer)), None);
    assert_eq!(
        env.transfer(&TransferCmd::new(&token, 3, &payer, &payee)),
        None
    );
    assert_eq!(
        env.transfer(&TransferCmd::new(&token, 60_000, &payer, &payee))
            .as_deref(),
        Some("insufficient funds")
    );
    let second = env.start_handler(&quiet);
    env.handler(second)
        .wait_for_log_where("both consumers assigned", |log| {
            log.matches("assigned ").count() >= 2
        });
    env.barrier();
    // A static member that stops keeps its partitions until its session times out; the
    // first instance's log to then is what this test reads.
    env.handler(second).stop_cleanly();
    env.handler(first).stop_cleanly();

    for handler in [first, second] {
        let log = env.handler(handler).log();
        assert!(log.contains("stopped cleanly"), "{log}");
        let troubled: Vec<&str> = log
            .lines()
            .filter(|line| {
                line.split_whitespace()
                    .nth(1)
                    .is_some_and(|level| level == "WARN" || level == "ERROR")
            })
            .collect();
        assert!(
            troubled.is_empty(),
            "a healthy run logged {} warnings or errors:\n{}\n---- whole log ----\n{log}",
            troubled.len(),
            troubled.join("\n")
        );
    }
}
