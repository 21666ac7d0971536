//! Commands seen before are answered exactly as the first time and change nothing
//! (SPEC §5.1); a record delivered again (as after a crash) also gets its
//! BalanceChanged events again, identical.

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
    env.collect_for(Duration::from_secs(2));
    assert_eq!(env.balance_changes_for(&iban).len(), 1);
}

#[test]
fn a_redelivered_record_gets_its_answer_and_events_again() {
    let mut env = TestEnv::new("redelivery");
    let first = env.start_handler(&[]);
    let (iban, token) = env.open_account();
    let deposit = TransferCmd::new("", 5_000, "cash", &iban);
    let spend = TransferCmd::new(&token, 1_500, &iban, BANK_IBAN);
    let refused = TransferCmd::new("wrong", 1, &iban, BANK_IBAN);
    for command in [&deposit, &spend, &refused] {
        assert_eq!(env.transfer(command).is_none(), command.id != refused.id);
    }
    let bc = env.topics.bc.clone();
    env.collect_until("first events", |o| {
        o.iter().filter(|o| o.topic == bc).count() == 3
    });
    let mut first_events: Vec<String> = env.on_topic(&bc).map(Output::summary).collect();
    first_events.sort();
    let first_answers: Vec<String> = env
        .outputs()
        .iter()
        .filter(|o| o.topic != bc)
        .map(Output::summary)
        .collect();
    env.handler(first).signal("TERM");
    assert!(
        env.handler(first)
            .wait_exit(Duration::from_secs(30))
            .success()
    );

    // A handler that has not committed these offsets (as after a crash; here: another
    // consumer group) reads the same records again.
    env.start_handler(&[("KAFKA_CLIENT_ID", &format!("{}.again", env.group))]);
    let total = first_events.len() * 2;
    env.collect_until("events again", |o| {
        o.iter().filter(|o| o.topic == bc).count() == total
    });
    let answers_now = first_answers.len() * 2;
    env.collect_until("answers again", |o| {
        o.iter().filter(|o| o.topic != bc).count() == answers_now
    });
    // Partitions interleave in any order, so compare as sorted lists.
    let mut events: Vec<String> = env
        .on_topic(&bc)
        .skip(first_events.len())
        .map(Output::summary)
        .collect();
    events.sort();
    assert_eq!(
        events, first_events,
        "the same events, new_balance as first computed"
    );
    let answers: Vec<String> = env
        .outputs()
        .iter()
        .filter(|o| o.topic != bc)
        .map(Output::summary)
        .collect();
    let mut again = answers[first_answers.len()..].to_vec();
    let mut before = first_answers.clone();
    again.sort();
    before.sort();
    assert_eq!(again, before, "the same answers");
    assert_eq!(env.amount(&iban), Some(3_500), "nothing applied twice");
}
