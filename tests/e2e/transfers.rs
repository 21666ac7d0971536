//! Every row of the ConfirmMoneyTransfer table of SPEC §5, with its exact reason and
//! the BalanceChanged events of the confirmed ones.

use open_bank_command_handler::domain::Iban;

use crate::harness::*;

#[test]
fn every_rule_row_with_exact_reasons() {
    let mut env = TestEnv::new("rules");
    env.start_handler(&[]);
    let (alice, alice_token) = env.open_account();
    let (bob, _) = env.open_account();
    let stranger = Iban::from_account_number(987_654_321).to_string(); // valid, unknown
    assert_eq!(
        env.transfer(&TransferCmd::new("", 10_000, "cash", &alice)),
        None
    );

    let failures = [
        (
            TransferCmd::new(&alice_token, 1, "NL83OPEN0104642752", &bob),
            "from is invalid",
        ),
        (
            TransferCmd::new(&alice_token, 1, "CASH", &bob),
            "from is invalid",
        ),
        (
            TransferCmd::new(&alice_token, 1, &alice, &alice),
            "from and to can't be same for transfer",
        ),
        (
            TransferCmd::new("", 1, "cash", "cash"),
            "from and to can't be same for transfer",
        ),
        (
            TransferCmd::new("99999999999999999999", 1, &alice, &bob),
            "invalid token",
        ),
        (
            TransferCmd::new(&alice_token, 60_001, &alice, &bob),
            "insufficient funds",
        ),
        (
            TransferCmd::new("", 1, "cash", &stranger),
            "both to and from not known at this bank",
        ),
        (
            TransferCmd::new("", 1, &stranger, "somewhere"),
            "both to and from not known at this bank",
        ),
        // Improvement over the JVM handler: no money moved the wrong way.
        (
            TransferCmd::new(&alice_token, 0, &alice, &bob),
            "amount should be greater than zero",
        ),
        (
            TransferCmd::new("", -5, "cash", &bob),
            "amount should be greater than zero",
        ),
    ];
    for (command, reason) in &failures {
        assert_eq!(
            env.transfer(command).as_deref(),
            Some(*reason),
            "{command:?}"
        );
    }
    assert_eq!(
        (env.amount(&alice), env.amount(&bob)),
        (Some(10_000), Some(0)),
        "failures change nothing"
    );

    // Known to known: debit and credit.
    let rent = TransferCmd {
        description: "rent €".into(),
        ..TransferCmd::new(&alice_token, 3_000, &alice, &bob)
    };
    assert_eq!(env.transfer(&rent), None);
    // Known to an unknown IBAN or anything else: debit only.
    assert_eq!(
        env.transfer(&TransferCmd::new(&alice_token, 1_000, &alice, &stranger)),
        None
    );
    assert_eq!(
        env.transfer(&TransferCmd::new(&alice_token, 500, &alice, "cash")),
        None
    );
    // Cash or an unknown valid IBAN into a known account: credit only.
    assert_eq!(
        env.transfer(&TransferCmd::new("", 200, &stranger, &bob)),
        None
    );
    // Down to exactly the limit is allowed.
    assert_eq!(
        env.transfer(&TransferCmd::new(&alice_token, 55_500, &alice, "cash")),
        None
    );
    assert_eq!(env.amount(&alice), Some(-50_000));
    assert_eq!(env.amount(&bob), Some(3_200));

    let bc = env.topics.bc.clone();
    // 1 deposit + 2 (rent) + 1 + 1 + 1 + 1 events.
    env.collect_until("all BalanceChanged events", |o| {
        o.iter().filter(|o| o.topic == bc).count() == 7
    });
    let summary: Vec<(String, i64, i64, String, String)> = env
        .on_topic(&bc)
        .map(|o| {
            (
                o.string("iban"),
                o.long("new_balance"),
                o.long("changed_by"),
                o.string("from_to"),
                o.string("description"),
            )
        })
        .collect();
    let d = |amount: i64| format!("test transfer of {amount}");
    let expected = [
        (alice.clone(), 10_000, 10_000, "cash".to_string(), d(10_000)),
        (
            alice.clone(),
            7_000,
            -3_000,
            bob.clone(),
            "rent €".to_string(),
        ),
        (
            bob.clone(),
            3_000,
            3_000,
            alice.clone(),
            "rent €".to_string(),
        ),
        (alice.clone(), 6_000, -1_000, stranger.clone(), d(1_000)),
        (alice.clone(), 5_500, -500, "cash".to_string(), d(500)),
        (bob.clone(), 3_200, 200, stranger.clone(), d(200)),
        (
            alice.clone(),
            -50_000,
            -55_500,
            "cash".to_string(),
            d(55_500),
        ),
    ];
    // Per IBAN the events keep their order (same key, same partition).
    for iban in [&alice, &bob] {
        let got: Vec<_> = summary.iter().filter(|e| &e.0 == iban).collect();
        let want: Vec<_> = expected.iter().filter(|e| &e.0 == iban).collect();
        assert_eq!(got, want, "events of {iban}");
    }
}

#[test]
fn answers_use_topic_record_name_subjects() {
    use schema_registry_converter::blocking::schema_registry::get_schema_by_subject;
    use schema_registry_converter::schema_registry_common::SubjectNameStrategy;

    let mut env = TestEnv::new("subjects");
    env.start_handler(&[]);
    let ok = TransferCmd::new("", 1, "cash", BANK_IBAN);
    let failed = TransferCmd::new("", 1, "cash", "cash");
    assert_eq!(env.transfer(&ok), None);
    assert!(env.transfer(&failed).is_some());
    let bc = env.topics.bc.clone();
    env.collect_until("BalanceChanged", |o| o.iter().any(|o| o.topic == bc));

    let registry = Stack::get().registry();
    let outputs: Vec<Output> = env.outputs().to_vec();
    for output in &outputs {
        // Value = 0x00, big-endian id of the schema under <topic>-<full record name>.
        let subject = SubjectNameStrategy::TopicRecordNameStrategy(
            output.topic.clone(),
            output.record_name().to_string(),
        );
        let registered = get_schema_by_subject(&registry, &subject).unwrap_or_else(|e| {
            panic!(
                "no subject for {} on {}: {e}",
                output.record_name(),
                output.topic
            )
        });
        assert_eq!(output.value.as_ref().unwrap()[0], 0);
        assert_eq!(
            output.schema_id,
            Some(registered.id),
            "{}",
            output.record_name()
        );
    }
    let names: std::collections::BTreeSet<&str> = outputs.iter().map(Output::record_name).collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "nl.openweb.data.BalanceChanged",
            "nl.openweb.data.MoneyTransferConfirmed",
            "nl.openweb.data.MoneyTransferFailed"
        ]
    );
}
