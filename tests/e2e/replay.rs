//! Commands seen before are answered exactly as the first time and change nothing
//! (SPEC §5.1); a record delivered again (as after a crash) also gets its
//! BalanceChanged events again, identical.

use std::time::Duration;

use uuid::Uuid;

use crate::barrier::wait_until;
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
fn a_record_redelivered_after_a_crash_gets_its_answer_and_events_again() {
    let mut env = TestEnv::with_partitions("redelivery", 1);
    // The first handler's BalanceChanged topic refuses every record, so its batch is
    // applied and answered but never fully acknowledged: then it crashes (SIGKILL).
    let refusing = format!("{}.refusing", env.name);
    env.stack
        .create_topics(&[&refusing], 1, &[("max.message.bytes", "10")]);
    let crashing = env.start_handler(&[("KAFKA_BC_TOPIC", &refusing)]);
    let (iban, _) = env.open_account();
    let deposit = TransferCmd::new("", 5_000, "cash", &iban);
    assert_eq!(env.transfer(&deposit), None);
    assert_eq!(env.amount(&iban), Some(5_000));
    env.handler(crashing).wait_for_log("publishing answers of");
    env.handler(crashing).signal("KILL");
    env.handler(crashing).wait_exit(Duration::from_secs(10));

    // Its successor in the group reads the record again and publishes the answer and the
    // event as first computed, without applying anything twice.
    env.start_handler(&[]);
    let bc = env.topics.bc.clone();
    env.collect_until("the event of the redelivered transfer", |o| {
        o.iter().any(|o| o.topic == bc)
    });
    let mtf = env.topics.mtf.clone();
    env.collect_until("the answer again", |o| {
        o.iter()
            .filter(|o| o.topic == mtf && o.id() == deposit.id)
            .count()
            >= 2
    });
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
    // (here: a new consumer group) answers the command again but replays no event.
    let answered = env.answers_to(deposit.id).len();
    let rereading = format!("{}.rereading", env.group);
    env.start_handler(&[("KAFKA_CLIENT_ID", &rereading)]);
    env.collect_until("the answer a third time", |o| {
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

/// Event rows whose cleanup failed (here written by hand for an acknowledged transfer)
/// are swept once the offset after their record is stored; the events of records not
/// yet acknowledged stay, as a replay needs them.
#[test]
fn leftover_event_rows_are_swept_once_their_offsets_are_stored() {
    use diesel::prelude::*;

    let mut env = TestEnv::with_partitions("sweep", 1);
    let first = env.start_handler(&[]);
    let (iban, _) = env.open_account();
    let early = TransferCmd::new("", 3, "cash", &iban);
    assert_eq!(env.transfer(&early), None);
    env.handler(first).stop_cleanly();

    let leftover = format!(
        "INSERT INTO cmt_balance_changed \
         (cmt_uuid, position, iban, new_balance, changed_by, from_to, description) \
         VALUES ('{}', 0, '{iban}', 3, 3, 'cash'::bytea, 'leftover'::bytea)",
        early.id
    );
    diesel::sql_query(leftover)
        .execute(&mut env.admin_db())
        .unwrap();
    let rows_of = |env: &TestEnv, id: Uuid| -> i64 {
        diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!(
            "SELECT count(*) FROM cmt_balance_changed WHERE cmt_uuid = '{id}'"
        ))
        .get_result(&mut env.admin_db())
        .unwrap()
    };
    assert_eq!(rows_of(&env, early.id), 1);

    env.start_handler(&[]);
    let late = TransferCmd::new("", 4, "cash", &iban);
    assert_eq!(env.transfer(&late), None);
    // The sweep runs at most every 30 s.
    wait_until(
        &format!("the leftover row of {} to be swept", early.id),
        Duration::from_secs(40),
        || rows_of(&env, early.id) == 0,
    );
    assert_eq!(env.amount(&iban), Some(3 + 4));
}
