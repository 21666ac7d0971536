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
#[path = "transfer_tests.rs"]
mod tests;
