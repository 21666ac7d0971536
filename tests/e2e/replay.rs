//! Commands seen before are answered exactly as the first time and change nothing
//! (SPEC §5.1); the BalanceChanged events a crash left unpublished are published by the
//! next instance, as first computed.

use std::time::Duration;

use uuid::Uuid;

use crate::harness::*;

#[test]
fn a_repeated_command_gets_the_same_answer_and_changes_nothing() {
    let mut env = TestEnv::new("duplicates");
    env.start_handler(&[]);
    let (iban, token) = env.open_account();

    // Account creation sent twice: the same IBAN and token, one account.
    let creation = Uuid::new_v4();
    env.send_account_creation(creation, "AUTO");
    env.send_account_creation(creation, "MANUAL");
    env.flush();
    let acf = env.topics.acf.clone();
    env.collect_until("two answers to the creation", |o| {
        o.iter()
            .filter(|o| o.topic == acf && o.id() == creation)
            .count()
            == 2
    });
    let answers = env.answers_to(creation);
    assert_eq!(
        answers[0].summary(),
        answers[1].summary(),
        "answered exactly as the first time"
    );
    assert_eq!(answers[1].enum_symbol("a_type"), "AUTO");
    let created = answers[0].string("iban");
    assert_eq!(env.amount(&created), Some(0));

    // A confirmed and a failed transfer, each sent twice (the second a new record).
    let deposit = TransferCmd::new("", 700, "cash", &iban);
    let refused = TransferCmd::new(&token, 1_000_000, &iban, "cash");
    for command in [&deposit, &refused, &deposit, &refused] {
        env.send_transfer(command);
    }
    env.flush();
    let mtf = env.topics.mtf.clone();
    let ids = [deposit.id, refused.id];
    env.collect_until("two answers each", |o| {
        ids.iter()
            .all(|id| o.iter().filter(|o| o.topic == mtf && o.id() == *id).count() == 2)
    });
    for id in ids {
        let answers = env.answers_to(id);
        assert_eq!(answers[0].summary(), answers[1].summary());
    }
    assert_eq!(
        env.answers_to(refused.id)[0].string("reason"),
        "insufficient funds"
    );
    assert_eq!(env.amount(&iban), Some(700), "applied once");
    // A duplicate command is not a redelivery: no second BalanceChanged.
    env.barrier();
    assert_eq!(env.balance_changes_for(&iban).len(), 1);
}

#[test]
fn events_committed_before_a_crash_are_published_by_the_next_instance() {
    let mut env = TestEnv::with_partitions("redelivery", 1);
    // The first handler's BalanceChanged topic refuses every record, so the event of its
    // transfer stays in the outbox while the answer goes out: then it crashes (SIGKILL).
    let refusing = format!("{}.refusing", env.name);
    env.stack
        .create_topics(&[&refusing], 1, &[("max.message.bytes", "10")]);
    let crashing = env.start_handler(&[("KAFKA_BC_TOPIC", &refusing)]);
    let (iban, _) = env.open_account();
    let deposit = TransferCmd::new("", 5_000, "cash", &iban);
    assert_eq!(env.transfer(&deposit), None);
    assert_eq!(env.amount(&iban), Some(5_000));
    env.handler(crashing)
        .wait_for_log("Kafka did not acknowledge 1 BalanceChanged events");
    env.handler(crashing).signal("KILL");
    env.handler(crashing).wait_exit(Duration::from_secs(10));

    // Its successor takes over the outbox and publishes the event as first computed;
    // the command, redelivered or not, is applied once.
    env.start_handler(&[]);
    env.barrier();
    let answers = env.answers_to(deposit.id);
    assert!(
        answers.iter().all(|a| a.summary() == answers[0].summary()),
        "the same answer"
    );
    let events = env.balance_changes_for(&iban);
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].long("new_balance"), events[0].long("changed_by")),
        (5_000, 5_000)
    );
    assert_eq!(env.amount(&iban), Some(5_000), "nothing applied twice");

    // Once published, the events are history: reading the topic again from the start
    // (here: a new consumer group) answers the command again but publishes no event.
    let answered = env.answers_to(deposit.id).len();
    let rereading = format!("{}.rereading", env.group);
    env.start_handler(&[("KAFKA_CLIENT_ID", &rereading)]);
    let mtf = env.topics.mtf.clone();
    env.collect_until("the answer again", |o| {
        o.iter()
            .filter(|o| o.topic == mtf && o.id() == deposit.id)
            .count()
            > answered
    });
    env.barrier_for(&rereading);
    assert_eq!(
        env.balance_changes_for(&iban).len(),
        1,
        "no history replayed"
    );
    assert_eq!(env.amount(&iban), Some(5_000));
}
