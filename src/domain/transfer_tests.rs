//! The transfer table of SPEC §5, row by row.

use std::collections::HashMap;

use super::*;
use crate::domain::account::NEW_ACCOUNT_LIMIT;

const ALICE_TOKEN: &str = "11111111111111111111";

fn alice() -> Iban {
    Iban::from_account_number(1)
}
fn bob() -> Iban {
    Iban::from_account_number(2)
}
fn stranger() -> Iban {
    Iban::from_account_number(3)
}

fn bank(alice_amount: i64, bob_amount: i64) -> HashMap<Iban, Account> {
    [
        (alice(), alice_amount, ALICE_TOKEN),
        (bob(), bob_amount, "22222222222222222222"),
    ]
    .into_iter()
    .map(|(iban, amount, token)| {
        let account = Account {
            iban: iban.clone(),
            token: token.to_string(),
            amount,
            lmt: NEW_ACCOUNT_LIMIT,
        };
        (iban, account)
    })
    .collect()
}

fn transfer(from: &str, to: &str, amount: i64) -> Transfer {
    Transfer {
        token: ALICE_TOKEN.to_string(),
        amount,
        from: from.to_string(),
        to: to.to_string(),
        description: "rent".to_string(),
    }
}

fn amounts(accounts: &HashMap<Iban, Account>) -> (i64, i64) {
    (accounts[&alice()].amount, accounts[&bob()].amount)
}

#[test]
fn from_must_be_cash_or_a_valid_open_iban() {
    let mut accounts = bank(100, 0);
    for from in ["", "NL83OPEN0104642752", "CASH", "bank"] {
        let result = settle_transfer(&transfer(from, bob().as_str(), 10), &mut accounts);
        assert_eq!(result, Err(TransferFailure::FromInvalid), "{from:?}");
    }
    assert_eq!(TransferFailure::FromInvalid.reason(), "from is invalid");
}

#[test]
fn from_equal_to_fails_even_for_cash() {
    let mut accounts = bank(100, 0);
    for party in [alice().to_string(), "cash".to_string()] {
        let result = settle_transfer(&transfer(&party, &party, 10), &mut accounts);
        assert_eq!(result, Err(TransferFailure::SameFromAndTo));
    }
    assert_eq!(
        TransferFailure::SameFromAndTo.reason(),
        "from and to can't be same for transfer"
    );
}

#[test]
fn wrong_token_fails_before_funds_are_checked() {
    let mut accounts = bank(0, 0);
    let mut command = transfer(alice().as_str(), bob().as_str(), 1_000_000);
    command.token = "99999999999999999999".to_string();
    let result = settle_transfer(&command, &mut accounts);
    assert_eq!(result, Err(TransferFailure::InvalidToken));
    assert_eq!(TransferFailure::InvalidToken.reason(), "invalid token");
    assert_eq!(amounts(&accounts), (0, 0));
}

#[test]
fn debit_may_reach_the_limit_but_not_pass_it() {
    let mut accounts = bank(0, 0);
    let over = settle_transfer(
        &transfer(alice().as_str(), bob().as_str(), 50_001),
        &mut accounts,
    );
    assert_eq!(over, Err(TransferFailure::InsufficientFunds));
    assert_eq!(
        TransferFailure::InsufficientFunds.reason(),
        "insufficient funds"
    );
    assert_eq!(amounts(&accounts), (0, 0));

    let exact = settle_transfer(
        &transfer(alice().as_str(), bob().as_str(), 50_000),
        &mut accounts,
    );
    assert!(exact.is_ok());
    assert_eq!(amounts(&accounts), (-50_000, 50_000));
}

#[test]
fn known_to_known_debits_and_credits_with_events() {
    let mut accounts = bank(1_000, 5);
    let changes = settle_transfer(
        &transfer(alice().as_str(), bob().as_str(), 300),
        &mut accounts,
    )
    .unwrap();
    assert_eq!(amounts(&accounts), (700, 305));
    assert_eq!(
        changes,
        vec![
            BalanceChange {
                iban: alice().to_string(),
                new_balance: 700,
                changed_by: -300,
                from_to: bob().to_string(),
                description: "rent".to_string(),
            },
            BalanceChange {
                iban: bob().to_string(),
                new_balance: 305,
                changed_by: 300,
                from_to: alice().to_string(),
                description: "rent".to_string(),
            },
        ]
    );
}

#[test]
fn known_to_elsewhere_only_debits() {
    let mut accounts = bank(1_000, 0);
    for to in [
        stranger().to_string(),
        "cash".to_string(),
        "NL12OTHER-BANK".to_string(),
    ] {
        let changes =
            settle_transfer(&transfer(alice().as_str(), &to, 100), &mut accounts).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].iban, alice().to_string());
        assert_eq!(changes[0].changed_by, -100);
        assert_eq!(changes[0].from_to, to);
    }
    assert_eq!(amounts(&accounts), (700, 0));
}

#[test]
fn cash_or_unknown_iban_into_known_only_credits() {
    let mut accounts = bank(0, 0);
    for from in ["cash".to_string(), stranger().to_string()] {
        let mut command = transfer(&from, bob().as_str(), 250);
        command.token = "whatever".to_string();
        let changes = settle_transfer(&command, &mut accounts).unwrap();
        assert_eq!(
            changes,
            vec![BalanceChange {
                iban: bob().to_string(),
                new_balance: accounts[&bob()].amount,
                changed_by: 250,
                from_to: from.clone(),
                description: "rent".to_string(),
            }]
        );
    }
    assert_eq!(amounts(&accounts), (0, 500));
}

#[test]
fn neither_side_known_fails() {
    let mut accounts = bank(0, 0);
    for (from, to) in [
        ("cash", stranger().to_string()),
        ("cash", "somewhere".to_string()),
        (
            stranger().as_str(),
            Iban::from_account_number(4).to_string(),
        ),
    ] {
        let result = settle_transfer(&transfer(from, &to, 10), &mut accounts);
        assert_eq!(result, Err(TransferFailure::BothUnknown));
    }
    assert_eq!(
        TransferFailure::BothUnknown.reason(),
        "both to and from not known at this bank"
    );
}

#[test]
fn amounts_of_zero_or_less_are_refused_without_change() {
    let mut accounts = bank(100, 100);
    for amount in [0, -1, i64::MIN] {
        for from in [alice().to_string(), "cash".to_string()] {
            let result = settle_transfer(&transfer(&from, bob().as_str(), amount), &mut accounts);
            assert_eq!(result, Err(TransferFailure::AmountNotPositive));
        }
    }
    assert_eq!(amounts(&accounts), (100, 100));
}

#[test]
fn overflowing_credit_is_refused_without_change() {
    let mut accounts = bank(100, i64::MAX - 10);
    let result = settle_transfer(&transfer("cash", bob().as_str(), 11), &mut accounts);
    assert_eq!(result, Err(TransferFailure::AmountTooLarge));
    let result = settle_transfer(
        &transfer(alice().as_str(), bob().as_str(), 11),
        &mut accounts,
    );
    assert_eq!(result, Err(TransferFailure::AmountTooLarge));
    assert_eq!(amounts(&accounts), (100, i64::MAX - 10));
}

#[test]
fn huge_debit_does_not_overflow() {
    let mut accounts = bank(-40_000, 0);
    let result = settle_transfer(
        &transfer(alice().as_str(), bob().as_str(), i64::MAX),
        &mut accounts,
    );
    assert_eq!(result, Err(TransferFailure::InsufficientFunds));
}

#[test]
fn touched_ibans_are_the_valid_ones() {
    let touched: Vec<_> = ibans_touched(&transfer("cash", bob().as_str(), 1)).collect();
    assert_eq!(touched, vec![bob()]);
    let touched: Vec<_> = ibans_touched(&transfer(alice().as_str(), "elsewhere", 1)).collect();
    assert_eq!(touched, vec![alice()]);
}
