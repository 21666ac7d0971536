//! The business rules of SPEC §5 as plain functions over typed values.
//!
//! Nothing here touches Kafka or PostgreSQL: the storage layer loads (and locks) the
//! accounts a batch needs, hands them to these functions, and writes back what changed.
//! That keeps every rule row testable with a few lines of Rust.

use std::fmt;

use rand::{Rng, RngExt};

/// Credit limit of every new account: an account may go down to -500.00.
pub const NEW_ACCOUNT_LIMIT: i64 = -50_000;
/// The bank's own account, which always exists (created by the migrations).
pub const BANK_IBAN: &str = "NL66OPEN0000000000";
pub const BANK_TOKEN: &str = "00000000000000000000";
pub const BANK_STARTING_AMOUNT: i64 = 100_000_000_000_000_000;
/// How often account creation draws a new IBAN when the drawn one is taken, before it
/// answers `generated iban already exists, try again` (SPEC §5 allows a few tries).
pub const IBAN_ATTEMPTS: usize = 3;

/// A valid Open Bank IBAN: `NL` + 2 check digits + `OPEN` + 10 digits.
///
/// The only way to get one is [`Iban::parse`] (which checks the check digits) or
/// [`Iban::from_account_number`], so holding an `Iban` means it is valid.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Iban(String);

impl Iban {
    /// Builds the IBAN of a 10-digit account number (0 ..= 9_999_999_999).
    pub fn from_account_number(number: u64) -> Iban {
        debug_assert!(number < 10_000_000_000);
        let digits = format!("{number:010}");
        Iban(format!("NL{:02}OPEN{digits}", check_digits(&digits)))
    }

    /// A valid open IBAN is 18 characters long and equals the IBAN rebuilt from its
    /// last 10 digits (SPEC §5).
    pub fn parse(candidate: &str) -> Option<Iban> {
        if candidate.len() != 18 || !candidate.is_ascii() {
            return None;
        }
        let digits = &candidate[8..];
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let rebuilt = Iban::from_account_number(digits.parse().ok()?);
        (rebuilt.0 == candidate).then_some(rebuilt)
    }

    /// A fresh IBAN for a new account: `0` followed by 9 random digits.
    pub fn generate(rng: &mut impl Rng) -> Iban {
        Iban::from_account_number(rng.random_range(0..1_000_000_000))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Iban {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Iban {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Iban({})", self.0)
    }
}

/// Check digits = 98 − (N mod 97), where N is `24251423` + the 10 digits + `232100`
/// (`OPEN` and `NL00` written as numbers, as ISO 13616 does).
fn check_digits(ten_digits: &str) -> u32 {
    let remainder = "24251423"
        .bytes()
        .chain(ten_digits.bytes())
        .chain("232100".bytes())
        .fold(0u32, |acc, digit| (acc * 10 + u32::from(digit - b'0')) % 97);
    98 - remainder
}

/// A new account's secret: 20 random decimal digits.
pub fn generate_token(rng: &mut impl Rng) -> String {
    (0..20)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

/// `a_type` of SPEC §3, stored as `AUTO` / `MANUAL` in the `type` columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountType {
    Auto,
    Manual,
}

impl AccountType {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountType::Auto => "AUTO",
            AccountType::Manual => "MANUAL",
        }
    }

    pub fn parse(text: &str) -> Option<AccountType> {
        match text {
            "AUTO" => Some(AccountType::Auto),
            "MANUAL" => Some(AccountType::Manual),
            _ => None,
        }
    }
}

/// What became of a ConfirmAccountCreation: the answer given, and given again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountCreationOutcome {
    Confirmed {
        iban: String,
        token: String,
        account_type: AccountType,
    },
    Failed {
        reason: String,
    },
}

/// The answer when every IBAN drawn for a new account was taken (SPEC §5).
pub const IBAN_TAKEN: &str = "generated iban already exists, try again";
/// The answer, given again, to a recorded account creation that lacks its IBAN, token or
/// type: a row the JVM handler could not have written, answered as failed rather than
/// by inventing an account.
pub const INCOMPLETE_ACCOUNT_CREATION: &str = "account creation record is incomplete";
/// A new account's starting amount (SPEC §5); its limit is [`NEW_ACCOUNT_LIMIT`].
pub const NEW_ACCOUNT_AMOUNT: i64 = 0;

impl AccountCreationOutcome {
    /// SPEC §5 ConfirmAccountCreation, step 2: the IBAN and token drawn for the command,
    /// and whether that IBAN is taken (after the draws allowed, [`IBAN_ATTEMPTS`]).
    pub fn decide(iban: &Iban, token: &str, account_type: AccountType, taken: bool) -> Self {
        if taken {
            AccountCreationOutcome::Failed {
                reason: IBAN_TAKEN.to_string(),
            }
        } else {
            AccountCreationOutcome::Confirmed {
                iban: iban.to_string(),
                token: token.to_string(),
                account_type,
            }
        }
    }

    /// SPEC §5 ConfirmAccountCreation, step 1: the answer a recorded outcome gives again.
    pub fn recorded(
        reason: Option<String>,
        iban: Option<String>,
        token: Option<String>,
        account_type: Option<AccountType>,
    ) -> Self {
        match (reason, iban, token, account_type) {
            (None, Some(iban), Some(token), Some(account_type)) => {
                AccountCreationOutcome::Confirmed {
                    iban,
                    token,
                    account_type,
                }
            }
            (Some(reason), ..) => AccountCreationOutcome::Failed { reason },
            _ => AccountCreationOutcome::Failed {
                reason: INCOMPLETE_ACCOUNT_CREATION.to_string(),
            },
        }
    }
}

/// One `balance` row as the rules need it.
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

    #[test]
    fn bank_iban_is_valid_and_rebuilt_from_its_digits() {
        let bank = Iban::parse(BANK_IBAN).expect("the bank's IBAN is valid");
        assert_eq!(bank.as_str(), BANK_IBAN);
        assert_eq!(Iban::from_account_number(0).as_str(), BANK_IBAN);
    }

    #[test]
    fn wrong_check_digits_are_invalid() {
        assert_eq!(Iban::parse("NL83OPEN0104642752"), None);
        // The same account number with its right check digits is valid.
        let right = Iban::from_account_number(104_642_752);
        assert_ne!(right.as_str(), "NL83OPEN0104642752");
        assert_eq!(Iban::parse(right.as_str()), Some(right.clone()));
    }

    #[test]
    fn malformed_ibans_are_invalid() {
        for candidate in [
            "",
            "cash",
            "NL66OPEN000000000",
            "NL66OPEN00000000000",
            "NL66OPEN00000000x0",
            "NL66BANK0000000000",
            "DE66OPEN0000000000",
            "nl66open0000000000",
            "NL66OPEN000000000é",
            "NL-6OPEN0000000000",
        ] {
            assert_eq!(Iban::parse(candidate), None, "{candidate:?}");
        }
    }

    #[test]
    fn check_digits_match_iso_mod_97() {
        // ISO 13616: moving the first four characters to the end and writing letters as
        // numbers (N=23, L=21, O=24, P=25, E=14) gives a number that is 1 mod 97.
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let iban = Iban::generate(&mut rng);
            let rearranged = format!("{}{}", &iban.as_str()[4..], &iban.as_str()[..4]);
            let numeric: String = rearranged
                .chars()
                .map(|c| match c {
                    '0'..='9' => c.to_string(),
                    letter => (letter as u32 - 'A' as u32 + 10).to_string(),
                })
                .collect();
            let remainder = numeric
                .bytes()
                .fold(0u32, |acc, d| (acc * 10 + u32::from(d - b'0')) % 97);
            assert_eq!(remainder, 1, "{iban}");
        }
    }

    #[test]
    fn generated_ibans_are_valid_and_start_with_zero() {
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let iban = Iban::generate(&mut rng);
            assert_eq!(iban.as_str().len(), 18);
            assert!(iban.as_str().starts_with("NL"));
            assert_eq!(&iban.as_str()[4..9], "OPEN0");
            assert_eq!(Iban::parse(iban.as_str()), Some(iban));
        }
    }

    #[test]
    fn tokens_are_twenty_decimal_digits_and_differ() {
        let mut rng = rand::rng();
        let first = generate_token(&mut rng);
        let second = generate_token(&mut rng);
        for token in [&first, &second] {
            assert_eq!(token.len(), 20);
            assert!(token.bytes().all(|b| b.is_ascii_digit()), "{token}");
        }
        assert_ne!(first, second);
    }

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

    #[test]
    fn a_new_account_is_confirmed_unless_its_drawn_iban_is_taken() {
        let iban = Iban::from_account_number(123_456_789);
        assert_eq!(
            AccountCreationOutcome::decide(
                &iban,
                "12345678901234567890",
                AccountType::Manual,
                false
            ),
            AccountCreationOutcome::Confirmed {
                iban: iban.to_string(),
                token: "12345678901234567890".into(),
                account_type: AccountType::Manual,
            }
        );
        assert_eq!(
            AccountCreationOutcome::decide(&iban, "12345678901234567890", AccountType::Auto, true),
            AccountCreationOutcome::Failed {
                reason: "generated iban already exists, try again".into()
            }
        );
    }

    #[test]
    fn a_recorded_account_creation_is_answered_as_recorded_or_as_incomplete() {
        let confirmed = AccountCreationOutcome::recorded(
            None,
            Some("NL66OPEN0000000000".into()),
            Some("t".into()),
            Some(AccountType::Auto),
        );
        assert!(matches!(
            confirmed,
            AccountCreationOutcome::Confirmed { .. }
        ));
        let failed =
            AccountCreationOutcome::recorded(Some("why".into()), Some("x".into()), None, None);
        assert_eq!(
            failed,
            AccountCreationOutcome::Failed {
                reason: "why".into()
            }
        );
        let incomplete = AccountCreationOutcome::recorded(
            None,
            Some("NL66OPEN0000000000".into()),
            None,
            Some(AccountType::Auto),
        );
        assert_eq!(
            incomplete,
            AccountCreationOutcome::Failed {
                reason: "account creation record is incomplete".into()
            }
        );
    }
}
