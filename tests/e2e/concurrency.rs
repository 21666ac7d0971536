//! Many transfers out of one account at once, over several partitions and two handler
//! processes: no overdraft past the limit, no lost update, each id applied once.

use std::collections::HashSet;

use rand::{RngExt, SeedableRng};
use uuid::Uuid;

use crate::harness::*;

#[test]
fn concurrent_transfers_from_one_account_never_pass_the_limit() {
    let partitions = 6;
    let mut env = TestEnv::with_partitions("concurrency", partitions);
    env.start_handler(&[]);
    env.start_handler(&[("COMMAND_BATCH_SIZE", "7")]);
    let (payer, payer_token) = env.open_account();
    let (payee, _) = env.open_account();
    assert_eq!(
        env.transfer(&TransferCmd::new("", 20_000, "cash", &payer)),
        None
    );

    // 240 payments of 1.00 .. 9.99 asked of an account that can give 700.00: some must
    // be refused. Spread over every partition, so both handlers work on the account at
    // once; every tenth also goes to the bank, and a few ids are sent twice on
    // different partitions.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut commands = Vec::new();
    for i in 0..240 {
        let to = if i % 10 == 0 {
            BANK_IBAN
        } else {
            payee.as_str()
        };
        commands.push(TransferCmd::new(
            &payer_token,
            rng.random_range(100..1_000),
            &payer,
            to,
        ));
    }
    let twice: Vec<TransferCmd> = commands.iter().step_by(40).cloned().collect();
    for (i, command) in commands.iter().chain(&twice).enumerate() {
        env.send_transfer_to_partition(command, Some(i as i32 % partitions));
    }
    env.flush();
    let ids: Vec<Uuid> = commands.iter().map(|c| c.id).collect();
    env.await_answers(&ids);
    // An id sent twice is answered twice, the same way (SPEC §5.1).
    env.barrier();
    for command in &twice {
        assert!(
            env.answers_to(command.id).len() >= 2,
            "{} was sent twice and answered {} times",
            command.id,
            env.answers_to(command.id).len()
        );
    }

    let mut confirmed_total = 0;
    let mut confirmed = HashSet::new();
    for command in &commands {
        let answers = env.answers_to(command.id);
        let kinds: HashSet<String> = answers.iter().map(|a| a.summary()).collect();
        assert_eq!(kinds.len(), 1, "one kind of answer per id: {kinds:?}");
        match answers[0].record_name() {
            "nl.openweb.data.MoneyTransferConfirmed" => {
                confirmed_total += command.amount;
                confirmed.insert(command.id);
            }
            _ => assert_eq!(answers[0].string("reason"), "insufficient funds"),
        }
    }
    let payer_amount = env.amount(&payer).unwrap();
    assert_eq!(
        payer_amount,
        20_000 - confirmed_total,
        "balance is what the confirmed transfers imply"
    );
    assert!(
        payer_amount >= -50_000,
        "never past the limit: {payer_amount}"
    );
    assert!(confirmed.len() < commands.len(), "some were refused");
    let to_payee: i64 = commands
        .iter()
        .filter(|c| confirmed.contains(&c.id) && c.to == payee)
        .map(|c| c.amount)
        .sum();
    assert_eq!(env.amount(&payee), Some(to_payee));

    // One debit event per confirmed transfer, whose new balances step down without gaps.
    let bc = env.topics.bc.clone();
    let wanted = 1 + confirmed.len();
    env.collect_until("a debit event per confirmed transfer", |o| {
        o.iter()
            .filter(|o| o.topic == bc && o.key.as_deref() == Some(payer.as_bytes()))
            .count()
            >= wanted
    });
    let mut debits: Vec<(i64, i64)> = env
        .balance_changes_for(&payer)
        .iter()
        .filter(|e| e.long("changed_by") < 0)
        .map(|e| (e.long("new_balance"), e.long("changed_by")))
        .collect();
    assert_eq!(debits.len(), confirmed.len());
    debits.sort_by_key(|(new_balance, _)| -new_balance);
    let mut balance = 20_000;
    for (new_balance, changed_by) in debits {
        assert_eq!(new_balance, balance + changed_by, "no lost update");
        balance = new_balance;
    }
    assert_eq!(balance, payer_amount);
}
