//! SPEC §5 ConfirmMoneyTransfer: the checks, first matching row wins, and the balance
//! changes (BalanceChanged events) of a transfer that passes them.

use uuid::Uuid;

use super::RecordPosition;
use super::iban::Iban;

/// A ConfirmMoneyTransfer, with the position of the record that carried it (a
/// redelivery of that very record publishes the transfer's events again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferCommand {
    pub id: Uuid,
    pub read_at: RecordPosition,
    pub transfer: Transfer,
}

/// The answer to a transfer and the BalanceChanged events to publish with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferAnswer {
    /// `None` when confirmed.
    pub failure: Option<String>,
    pub balance_changes: Vec<BalanceChange>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub iban: Iban,
    pub token: String,
    pub amount: i64,
    pub lmt: i64,
}

/// The `from` of a transfer, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Cash,
    Iban(Iban),
}

impl Source {
    pub fn parse(from: &str) -> Option<Source> {
        if from == "cash" {
            Some(Source::Cash)
        } else {
            Iban::parse(from).map(Source::Iban)
        }
    }
}

/// Why a transfer was refused. The texts are part of the contract (SPEC §5), except
/// the two marked as improvements over the JVM handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferFailure {
    FromInvalid,
    SameFromAndTo,
    InvalidToken,
    /// Improvement: the JVM handler moved money the wrong way for amounts ≤ 0.
    AmountNotPositive,
    InsufficientFunds,
    /// Improvement: a credit that would overflow a 64-bit balance.
    AmountTooLarge,
    BothUnknown,
}

impl TransferFailure {
    pub fn reason(self) -> &'static str {
        match self {
            TransferFailure::FromInvalid => "from is invalid",
            TransferFailure::SameFromAndTo => "from and to can't be same for transfer",
            TransferFailure::InvalidToken => "invalid token",
            TransferFailure::AmountNotPositive => "amount should be greater than zero",
            TransferFailure::InsufficientFunds => "insufficient funds",
            TransferFailure::AmountTooLarge => "amount is too large",
            TransferFailure::BothUnknown => "both to and from not known at this bank",
        }
    }
}

/// The fields of ConfirmMoneyTransfer the rules look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub token: String,
    pub amount: i64,
    pub from: String,
    pub to: String,
    pub description: String,
}

/// A balance that changed: everything a BalanceChanged event carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalanceChange {
    pub iban: String,
    pub new_balance: i64,
    pub changed_by: i64,
    pub from_to: String,
    pub description: String,
}

/// Looks up an account by IBAN among those the caller loaded.
pub trait Accounts {
    fn get_mut(&mut self, iban: &Iban) -> Option<&mut Account>;
}

impl Accounts for std::collections::HashMap<Iban, Account> {
    fn get_mut(&mut self, iban: &Iban) -> Option<&mut Account> {
        std::collections::HashMap::get_mut(self, iban)
    }
}

/// Applies one transfer to the accounts (SPEC §5, first matching row wins) and returns
/// the balance changes, debit first. On failure nothing is changed.
pub fn settle_transfer(
    transfer: &Transfer,
    accounts: &mut impl Accounts,
) -> Result<Vec<BalanceChange>, TransferFailure> {
    let source = Source::parse(&transfer.from).ok_or(TransferFailure::FromInvalid)?;
    if transfer.from == transfer.to {
        return Err(TransferFailure::SameFromAndTo);
    }
    let destination = Iban::parse(&transfer.to);
    let debit = match &source {
        Source::Iban(iban) => match accounts.get_mut(iban) {
            Some(from) => {
                if from.token != transfer.token {
                    return Err(TransferFailure::InvalidToken);
                }
                if transfer.amount <= 0 {
                    return Err(TransferFailure::AmountNotPositive);
                }
                match from.amount.checked_sub(transfer.amount) {
                    Some(left) if left >= from.lmt => Some(left),
                    _ => return Err(TransferFailure::InsufficientFunds),
                }
            }
            None => None,
        },
        Source::Cash => None,
    };
    if debit.is_none() && transfer.amount <= 0 {
        return Err(TransferFailure::AmountNotPositive);
    }
    let credit = match &destination {
        Some(iban) => match accounts.get_mut(iban) {
            Some(to) => Some(
                to.amount
                    .checked_add(transfer.amount)
                    .ok_or(TransferFailure::AmountTooLarge)?,
            ),
            None => None,
        },
        None => None,
    };
    if debit.is_none() && credit.is_none() {
        return Err(TransferFailure::BothUnknown);
    }

    // Every check passed: only now change the accounts.
    let mut changes = Vec::with_capacity(2);
    if let (Some(new_balance), Source::Iban(iban)) = (debit, &source) {
        let from = accounts.get_mut(iban).expect("checked above");
        from.amount = new_balance;
        changes.push(BalanceChange {
            iban: iban.to_string(),
            new_balance,
            changed_by: -transfer.amount,
            from_to: transfer.to.clone(),
            description: transfer.description.clone(),
        });
    }
    if let (Some(new_balance), Some(iban)) = (credit, &destination) {
        let to = accounts.get_mut(iban).expect("checked above");
        to.amount = new_balance;
        changes.push(BalanceChange {
            iban: iban.to_string(),
            new_balance,
            changed_by: transfer.amount,
            from_to: transfer.from.clone(),
            description: transfer.description.clone(),
        });
    }
    Ok(changes)
}

/// The IBANs whose `balance` rows a transfer may read or change: the storage layer
/// locks exactly these (sorted) before calling [`settle_transfer`].
pub fn ibans_touched(transfer: &Transfer) -> impl Iterator<Item = Iban> {
    Iban::parse(&transfer.from)
        .into_iter()
        .chain(Iban::parse(&transfer.to))
}

#[cfg(test)]
mod tests {
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
                let result =
                    settle_transfer(&transfer(&from, bob().as_str(), amount), &mut accounts);
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
}
