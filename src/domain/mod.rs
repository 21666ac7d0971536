//! The business rules of SPEC §5, as pure functions over typed commands.
//!
//! Nothing here touches Kafka or PostgreSQL: the database layer ([`crate::db`]) loads
//! and locks what a batch needs, hands it to these functions, and writes back what they
//! decided. Where each rule is:
//!
//! | SPEC §5 | here |
//! |---|---|
//! | a valid open IBAN, the bank's account | [`iban::Iban::parse`], [`iban::BANK_IBAN`] |
//! | a new account's IBAN and token, drawn again when taken | [`account::draw_new_accounts`] |
//! | a new account's answer, amount and limit | [`account::AccountCreationOutcome::decide`], [`account::NEW_ACCOUNT_AMOUNT`], [`account::NEW_ACCOUNT_LIMIT`] |
//! | a command seen before is answered as the first time | [`account::AccountCreationOutcome::recorded`], [`crate::db::apply`] |
//! | a transfer's checks, first matching row wins, its balance changes | [`transfer::settle_transfer`] |

pub mod account;
pub mod iban;
pub mod transfer;

pub use account::{AccountCreationCommand, AccountCreationOutcome, AccountType};
pub use iban::Iban;
pub use transfer::{BalanceChange, Transfer, TransferAnswer, TransferCommand};

/// Where in Kafka a command was read: the partition and offset of its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordPosition {
    pub partition: i32,
    pub offset: i64,
}
