//! Breaking things under load: handlers killed with SIGKILL at random moments and
//! restarted, handlers joining and leaving a consumer group of three, two and three
//! instances sharing four hot accounts. Afterwards no command is lost, none is applied
//! twice, every confirmed transfer's events exist, and each account's events are in the
//! order its balance changed, its last one carrying its balance.

use std::collections::HashSet;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::barrier::wait_until;
use crate::harness::*;
use crate::invariants::*;

/// Fail over in seconds rather than the default 45 s when an instance dies.
const FAST_FAILOVER: [(&str, &str); 2] = [
    ("RDKAFKA_CONSUMER_SESSION_TIMEOUT_MS", "6000"),
    ("RDKAFKA_CONSUMER_HEARTBEAT_INTERVAL_MS", "500"),
];

#[test]
fn sigkill_at_random_moments_under_load_loses_nothing() {
    let mut env = TestEnv::with_partitions("sigkill", 6);
    let mut current = env.start_handler(&FAST_FAILOVER);
    let accounts: Vec<(String, String)> = (0..8).map(|_| env.open_account()).collect();
    let mut rng = StdRng::seed_from_u64(9);
    let commands = load(&mut rng, &accounts, 2_400 * scale());

    // Rounds of 100 commands; a SIGKILL at a random moment in every fifth, the
    // replacement started at once.
    let mut kills = 0;
    for (round, chunk) in commands.chunks(100).enumerate() {
        for command in chunk {
            env.send_transfer(command);
        }
        env.flush();
        std::thread::sleep(Duration::from_millis(rng.random_range(50..400)));
        if round % 5 == 2 {
            env.handler(current).signal("KILL");
            env.handler(current).wait_exit(Duration::from_secs(10));
            kills += 1;
            current = env.start_handler(&FAST_FAILOVER);
        }
    }
    let findings = check_invariants(&mut env, &commands, &accounts);
    assert_nothing_lost(
        &format!("{kills} SIGKILLs under load"),
        &findings,
        commands.len(),
    );
}

#[test]
fn three_instances_joining_and_leaving_under_load_lose_nothing() {
    let mut env = TestEnv::with_partitions("rebalance", 9);
    let mut running: Vec<usize> = (0..3).map(|_| env.start_handler(&[])).collect();
    let accounts: Vec<(String, String)> = (0..6).map(|_| env.open_account()).collect();
    let mut rng = StdRng::seed_from_u64(11);
    let commands = load(&mut rng, &accounts, 2_000 * scale());

    let (mut left, mut joined) = (0, 0);
    for (round, chunk) in commands.chunks(100).enumerate() {
        for command in chunk {
            env.send_transfer(command);
        }
        env.flush();
        std::thread::sleep(Duration::from_millis(200));
        match round % 20 {
            // SIGTERM under load: the instance finishes its batch and exits 0 promptly.
            4 | 12 => {
                let leaving = running.remove(0);
                env.handler(leaving).stop_cleanly();
                left += 1;
            }
            8 | 16 => {
                running.push(env.start_handler(&[]));
                joined += 1;
            }
            _ => {}
        }
    }
    let findings = check_invariants(&mut env, &commands, &accounts);
    let what =
        format!("3 instances, {left} leaving (SIGTERM, exit 0) and {joined} joining under load");
    assert_nothing_lost(&what, &findings, commands.len());
}

#[test]
fn kafka_postgres_and_registry_outages_under_load_lose_nothing() {
    let private = PrivateStack::up("outages");
    let mut env = TestEnv::on(private.stack, "outages", 3);
    let handler = env.start_handler(&[("HTTP_PORT", "0"), ("HTTP_BIND_ADDRESS", "127.0.0.1")]);
    let readiness = format!(
        "http://{}/health/ready",
        env.handler(handler).http_address()
    );
    // Readiness follows each outage: 503 naming the failing checks (those whose names
    // start with `check`, and only those), then 200 again. The report never shows the
    // database password.
    let failing_checks = |body: &str| -> Vec<String> {
        let report: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        report["checks"]
            .as_object()
            .map(|checks| {
                checks
                    .iter()
                    .filter(|(_, verdict)| verdict["ok"] == false)
                    .map(|(name, _)| name.clone())
                    .collect()
            })
            .unwrap_or_default()
    };
    let not_ready_because = |check: &str| {
        let reply = http_until(&readiness, &format!("not ready: {check}"), |r| {
            let failing = failing_checks(&r.body);
            r.status == 503 && !failing.is_empty() && failing.iter().all(|n| n.starts_with(check))
        });
        assert!(!reply.body.contains("open-bank"), "{}", reply.body);
    };
    http_until(&readiness, "ready", |r| r.status == 200);
    let accounts: Vec<(String, String)> = (0..4).map(|_| env.open_account()).collect();
    let mut rng = StdRng::seed_from_u64(13);
    let commands = load(&mut rng, &accounts, 800);
    let chunks: Vec<&[TransferCmd]> = commands.chunks(100).collect();
    let send =
        |env: &TestEnv, chunk: &[TransferCmd]| chunk.iter().for_each(|c| env.send_transfer(c));

    // The broker stops while commands are being handled, and comes back.
    send(&env, chunks[0]);
    env.flush();
    private.stop("kafka");
    send(&env, chunks[1]);
    // Until readiness says so, the handler has not noticed yet: the outage lasts that long.
    not_ready_because("kafka:");
    private.start("kafka");
    http_until(&readiness, "ready again", |r| r.status == 200);
    send(&env, chunks[2]);
    env.flush();

    // PostgreSQL stops (connections cut mid-transaction), and comes back.
    send(&env, chunks[3]);
    env.flush();
    // Stopped once the handler is at work on these commands (an answer to one of them
    // read), so that connections are cut while it works.
    let mtf = env.topics.mtf.clone();
    let fourth: HashSet<uuid::Uuid> = chunks[3].iter().map(|c| c.id).collect();
    env.collect_counting("the handler at work on the fourth chunk", |_, new| {
        new.iter()
            .any(|o| o.topic == mtf && fourth.contains(&o.id()))
    });
    private.stop("postgres");
    send(&env, chunks[4]);
    env.flush();
    not_ready_because("database");
    private.start("postgres");
    http_until(&readiness, "ready again", |r| r.status == 200);

    // The registry is away when the handler meets a schema id it has not seen: those
    // commands wait (no dead letter), and are handled once it is back.
    let evolved = CONFIRM_MONEY_TRANSFER_SCHEMA.replace(
        r#"{"name":"description""#,
        r#"{"name":"note","type":"string","default":""},{"name":"description""#,
    );
    let evolved_id = env.register(&env.topics.cmt.clone(), "ConfirmMoneyTransfer", &evolved);
    send(&env, chunks[5]);
    env.flush();
    private.stop("registry");
    for command in chunks[6] {
        let mut fields = command.fields();
        fields.insert(
            5,
            (
                "note".into(),
                apache_avro::types::Value::String("evolved".into()),
            ),
        );
        let bytes = TestEnv::wire_bytes(evolved_id, &evolved, fields);
        env.send_raw(
            &env.topics.cmt.clone(),
            Some(command.id.to_string().as_bytes()),
            Some(&bytes),
        );
    }
    env.flush();
    // The handler met the new schema id while the registry is away, and waits.
    env.handler(handler)
        .wait_for_log("schema registry unavailable");
    private.start("registry");
    send(&env, chunks[7]);
    env.flush();

    let findings = check_invariants(&mut env, &commands, &accounts);
    assert_nothing_lost(
        "Kafka, PostgreSQL and registry outages under load",
        &findings,
        commands.len(),
    );
    assert_eq!(
        env.on_topic(&env.topics.dlq.clone()).count(),
        0,
        "nothing dead-lettered during the outages"
    );
    assert!(
        env.handler(handler).is_running(),
        "the handler rode out every outage"
    );
}

/// Of the running instances, the one that publishes the BalanceChanged events now (the
/// first when none says so).
fn publishing(env: &mut TestEnv, running: &[usize]) -> usize {
    running
        .iter()
        .position(|&instance| {
            let log = std::fs::read_to_string(&env.handler(instance).log_path).unwrap_or_default();
            let began = log.rfind("publishing the outbox's BalanceChanged events");
            began.is_some() && began > log.rfind("stopped publishing BalanceChanged events")
        })
        .unwrap_or(0)
}

/// `instances` handlers of one group share four hot accounts (every transfer is
/// between two of them or a deposit to one) at about 250 commands a second over nine
/// partitions. A third of the way in, the instance that publishes the events is
/// SIGKILLed and started again at once; two thirds in, another one. Each account's
/// events must stay in the order its balance changed.
fn hot_accounts_shared_by(instances: usize) {
    let mut env = TestEnv::with_partitions(&format!("hot{instances}"), 9);
    let mut running: Vec<usize> = (0..instances)
        .map(|_| env.start_handler(&FAST_FAILOVER))
        .collect();
    let accounts: Vec<(String, String)> = (0..4).map(|_| env.open_account()).collect();
    let mut rng = StdRng::seed_from_u64(20 + instances as u64);
    let commands = load(&mut rng, &accounts, 1_500 * scale());
    let rounds = commands.len().div_ceil(25);
    let mut kills = 0;
    for (round, chunk) in commands.chunks(25).enumerate() {
        for command in chunk {
            env.send_transfer(command);
        }
        env.flush();
        std::thread::sleep(Duration::from_millis(100));
        if round == rounds / 3 || round == 2 * rounds / 3 {
            let publisher = publishing(&mut env, &running);
            // The publisher first, then one that only consumes.
            let victim = if round == rounds / 3 {
                publisher
            } else {
                (publisher + 1) % running.len()
            };
            let victim = running.remove(victim);
            env.handler(victim).signal("KILL");
            env.handler(victim).wait_exit(Duration::from_secs(10));
            kills += 1;
            running.push(env.start_handler(&FAST_FAILOVER));
        }
    }
    let findings = check_invariants(&mut env, &commands, &accounts);
    let what = format!("{instances} instances on 4 hot accounts, {kills} SIGKILLed and restarted");
    assert_nothing_lost(&what, &findings, commands.len());
}

#[test]
fn two_instances_on_hot_accounts_keep_each_accounts_events_in_order() {
    hot_accounts_shared_by(2);
}

#[test]
fn three_instances_on_hot_accounts_keep_each_accounts_events_in_order() {
    hot_accounts_shared_by(3);
}

/// While a batch waits out an outage, its instance stays in the group: its partitions
/// are paused and it keeps polling. An outage longer than `max.poll.interval.ms` sets
/// off no rebalance, and every command is answered once.
#[test]
fn an_outage_longer_than_the_poll_interval_sets_off_no_rebalance() {
    let mut env = TestEnv::with_partitions("membership", 4);
    // The broker's smallest session timeout, and a poll interval just above it.
    let group = [
        ("RDKAFKA_CONSUMER_SESSION_TIMEOUT_MS", "6000"),
        ("RDKAFKA_CONSUMER_MAX_POLL_INTERVAL_MS", "7000"),
    ];
    let instances = [env.start_handler(&group), env.start_handler(&group)];
    let rebalances = |env: &mut TestEnv| -> usize {
        instances.iter().map(|i| membership_changes(env, *i)).sum()
    };
    let (iban, _) = env.open_account();
    let warm_up = settle_group_with(&mut env, &instances, &iban);
    let rebalances_before = rebalances(&mut env);

    // The outage: the transfers' table is gone for longer than the poll interval.
    let mut admin = env.admin_db();
    diesel::connection::SimpleConnection::batch_execute(
        &mut admin,
        "ALTER TABLE cmt RENAME TO cmt_away",
    )
    .unwrap();
    let during: Vec<TransferCmd> = (0..8)
        .map(|_| TransferCmd::new("", 2, "cash", &iban))
        .collect();
    for command in &during {
        env.send_transfer(command);
    }
    env.flush();
    // The eighth failed attempt comes 12.7 s after the first: well past the interval.
    wait_until(
        "an instance to retry eight times",
        Duration::from_secs(60),
        || {
            instances
                .iter()
                .any(|i| env.handler(*i).log().contains("(attempt 8)"))
        },
    );
    diesel::connection::SimpleConnection::batch_execute(
        &mut admin,
        "ALTER TABLE cmt_away RENAME TO cmt",
    )
    .unwrap();

    env.await_answers(&during.iter().map(|c| c.id).collect::<Vec<_>>());
    env.barrier();
    for command in warm_up.iter().chain(&during) {
        assert_eq!(
            env.answers_to(command.id).len(),
            1,
            "{} answered once",
            command.id
        );
    }
    assert_eq!(
        rebalances(&mut env),
        rebalances_before,
        "no rebalance during the outage"
    );
    assert_eq!(env.amount(&iban), Some(warm_up.len() as i64 + 16));
}

/// A broker that stops answering (frozen, its connections open) while a batch's answer
/// is on its way: the handler waits for the acknowledgement with its consumer kept in
/// the group, readiness names the waiting partition, and once the broker answers again
/// the command is answered once and applied once.
#[test]
fn an_acknowledgement_that_does_not_come_shows_and_loses_nothing() {
    use diesel::connection::SimpleConnection;

    let private = PrivateStack::up("slowack");
    let mut env = TestEnv::on(private.stack, "slowack", 1);
    let handler = env.start_handler(&[("HTTP_PORT", "0"), ("HTTP_BIND_ADDRESS", "127.0.0.1")]);
    let ready = format!(
        "http://{}/health/ready",
        env.handler(handler).http_address()
    );
    let (iban, _) = env.open_account();
    http_until(&ready, "ready", |r| r.status == 200);
    // Both consumers in the group (the second one's join is a rebalance of its own).
    wait_for_both_topics(&mut env, handler);
    let changes_before = membership_changes(&mut env, handler);

    // The account's row locked, the handler's transaction waits for it once the command
    // is read: the broker is frozen then, and the answer sent after it.
    let mut lock = env.admin_db();
    lock.batch_execute(&format!(
        "BEGIN; SELECT 1 FROM balance WHERE iban = '{iban}' FOR UPDATE"
    ))
    .unwrap();
    let command = TransferCmd::new("", 2, "cash", &iban);
    env.send_transfer(&command);
    env.flush();
    wait_until("the handler to wait for the locked account", WAIT, || {
        count(
            &mut env.admin_db(),
            "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        ) > 0
    });
    private.freeze("kafka");
    lock.batch_execute("COMMIT").unwrap();

    let waiting = format!("retrying:{}/0", env.topics.cmt);
    let stalled = http_until(&ready, "readiness naming the waiting partition", |r| {
        r.status == 503 && r.body.contains(&waiting)
    });
    private.thaw("kafka");
    assert!(
        stalled.body.contains("waiting for Kafka to acknowledge"),
        "{}",
        stalled.body
    );

    env.await_answer(command.id);
    http_until(&ready, "ready again", |r| r.status == 200);
    env.barrier();
    assert_eq!(env.answers_to(command.id).len(), 1, "answered once");
    assert_eq!(env.amount(&iban), Some(2));
    let log = env.handler(handler).log();
    assert_eq!(
        membership_changes(&mut env, handler),
        changes_before,
        "the instance's membership changed while it waited:\n{log}"
    );
    env.handler(handler).stop_cleanly();
}
