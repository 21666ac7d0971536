//! ConfirmAccountCreation (SPEC §5) and the bank's own account.

use open_bank_command_handler::domain::Iban;
use uuid::Uuid;

use crate::harness::*;

#[test]
fn account_creation_confirms_a_fresh_valid_iban_and_token() {
    let mut env = TestEnv::new("accounts");
    env.start_handler(&[]);
    let (auto_id, manual_id) = (Uuid::new_v4(), Uuid::new_v4());
    env.send_account_creation(auto_id, "AUTO");
    env.send_account_creation(manual_id, "MANUAL");
    env.flush();
    let answers = env.await_answers(&[auto_id, manual_id]);

    for (answer, (id, a_type)) in answers
        .iter()
        .zip([(auto_id, "AUTO"), (manual_id, "MANUAL")])
    {
        assert_eq!(answer.topic, env.topics.acf);
        assert_eq!(
            answer.record_name(),
            "nl.openweb.data.AccountCreationConfirmed"
        );
        assert_eq!(
            answer.key_text(),
            id.to_string(),
            "answer keyed like the command"
        );
        assert_eq!(answer.id(), id);
        assert_eq!(answer.enum_symbol("a_type"), a_type);
        let iban = answer.string("iban");
        assert_eq!(iban.len(), 18);
        assert!(iban.starts_with("NL") && &iban[4..9] == "OPEN0", "{iban}");
        assert!(
            Iban::parse(&iban).is_some(),
            "{iban} has valid check digits"
        );
        let token = answer.string("token");
        assert_eq!(token.len(), 20);
        assert!(token.bytes().all(|b| b.is_ascii_digit()), "{token}");
        // The new account exists with amount 0 and the default limit.
        assert_eq!(env.amount(&iban), Some(0));
    }
    assert_ne!(answers[0].string("iban"), answers[1].string("iban"));
    assert_ne!(answers[0].string("token"), answers[1].string("token"));

    // A fresh account can be paid into and can go down to -500.00, not below.
    let (iban, token) = (answers[1].string("iban"), answers[1].string("token"));
    assert_eq!(
        env.transfer(&TransferCmd::new("", 100, "cash", &iban)),
        None
    );
    assert_eq!(
        env.transfer(&TransferCmd::new(&token, 50_101, &iban, "cash"))
            .as_deref(),
        Some("insufficient funds")
    );
    assert_eq!(
        env.transfer(&TransferCmd::new(&token, 50_100, &iban, "cash")),
        None
    );
    assert_eq!(env.amount(&iban), Some(-50_000));
}

#[test]
fn the_bank_account_exists_and_pays_salaries() {
    let mut env = TestEnv::new("bank");
    env.start_handler(&[]);
    let (iban, _) = env.open_account();
    let before = env
        .amount(BANK_IBAN)
        .expect("the bank's own account exists");
    assert_eq!(before, 100_000_000_000_000_000);

    let salary = TransferCmd::new(BANK_TOKEN, 250_000, BANK_IBAN, &iban);
    assert_eq!(env.transfer(&salary), None);
    assert_eq!(env.amount(BANK_IBAN), Some(before - 250_000));
    assert_eq!(env.amount(&iban), Some(250_000));

    let bc = env.topics.bc.clone();
    env.collect_until("two BalanceChanged events", |o| {
        o.iter().filter(|o| o.topic == bc).count() == 2
    });
    let bank_event = &env.balance_changes_for(BANK_IBAN)[0];
    assert_eq!(
        bank_event.key_text(),
        BANK_IBAN,
        "BalanceChanged keyed by IBAN"
    );
    assert_eq!(bank_event.long("new_balance"), before - 250_000);
    assert_eq!(bank_event.long("changed_by"), -250_000);
    assert_eq!(bank_event.string("from_to"), iban);
}
