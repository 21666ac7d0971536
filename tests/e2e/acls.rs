//! What the brokers' ACLs let the handler do. The local broker runs Kafka's
//! StandardAuthorizer and allows what no ACL names; these tests take the right to write
//! to one of the handler's output topics away from the SASL user it connects as.

use crate::harness::*;

/// The handler and `check` over the SASL_SSL listener, as the stack's SASL user.
fn over_sasl(stack: &Stack) -> [(&'static str, &str); 5] {
    stack.sasl_env("SCRAM-SHA-256")
}

/// A dead-letter topic the handler may not write to would stall the first poison
/// record's partition: start-up refuses instead, naming it, and `check` says so.
#[test]
fn an_output_topic_it_may_not_write_to_stops_start_up_and_check_names_it() {
    let mut env = TestEnv::new("acl_start");
    let stack: &'static Stack = env.stack;
    let dead_letters = env.topics.dlq.clone();
    stack.deny_sasl_user("Write", &dead_letters);

    let (status, report) = env.run_check(&over_sasl(stack));
    assert_eq!(status.code(), Some(1), "check did not fail:\n{report}");
    assert!(
        report.contains(&format!("may not write to {dead_letters}")),
        "{report}"
    );
    let log = env.start_expecting_refusal(&over_sasl(stack), 1);
    assert!(
        log.contains(&format!("this handler may not write to {dead_letters}")),
        "{log}"
    );

    // Given the right, it starts and works.
    stack.undeny_sasl_user("Write", &dead_letters);
    let handler = env.start_handler(&over_sasl(stack));
    let (iban, _) = env.open_account();
    assert_eq!(env.transfer(&TransferCmd::new("", 3, "cash", &iban)), None);
    env.handler(handler).stop_cleanly();
}

/// The right to write answers taken away while the handler runs: no retry gets past
/// that, so it stops with a non-zero exit naming the topic, leaving the batch's offsets
/// unstored; restarted once the right is back, it answers the command, applied once.
#[test]
fn a_right_taken_away_while_running_stops_it_and_the_batch_is_redelivered() {
    let mut env = TestEnv::new("acl_running");
    let stack: &'static Stack = env.stack;
    let answers = env.topics.mtf.clone();
    let handler = env.start_handler(&over_sasl(stack));
    let (iban, _) = env.open_account();
    assert_eq!(env.transfer(&TransferCmd::new("", 3, "cash", &iban)), None);

    stack.deny_sasl_user("Write", &answers);
    let command = TransferCmd::new("", 4, "cash", &iban);
    env.send_transfer(&command);
    env.flush();
    let status = env.handler(handler).wait_exit(WAIT);
    let log = env.handler(handler).log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("does not let this handler write to {answers}")),
        "{log}"
    );
    assert!(
        !log.contains(&stack.sasl.password),
        "the password in the log"
    );

    stack.undeny_sasl_user("Write", &answers);
    env.start_handler(&over_sasl(stack));
    env.await_answer(command.id);
    assert_eq!(env.amount(&iban), Some(7), "applied once");
}
