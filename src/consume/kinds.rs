//! The two kinds of command, each a small handler the consumer loop is generic over:
//! how a record becomes its command, which batch transaction applies it, and which
//! records answer it. No function here or in the loop handles both kinds.

use std::fmt;

use diesel::pg::PgConnection;
use diesel::result::QueryResult;
use rdkafka::Message;
use uuid::Uuid;

use crate::config::CommandTopic;
use crate::db::apply::{self, Wake};
use crate::domain::{
    AccountCreationCommand, AccountCreationOutcome, RecordPosition, TransferAnswer, TransferCommand,
};
use crate::ops::metrics::BatchTally;
use crate::produce::{Destinations, Outbound};
use crate::wire::{CommandDecoder, DecodeError, OutputRecord};

/// One kind of command, from record to answer.
pub(crate) trait CommandKind {
    type Command: fmt::Debug;
    type Answer: fmt::Debug;
    /// The topic it is read from.
    const TOPIC: CommandTopic;
    /// What log lines call it.
    const NAME: &'static str;

    fn id(command: &Self::Command) -> Uuid;

    /// The command in a record's value (the key is checked by the loop).
    fn decode(
        decoder: &CommandDecoder,
        record: &impl Message,
        value: &[u8],
    ) -> Result<Self::Command, DecodeError>;

    /// The batch transaction: one answer per command, in command order. Events it
    /// writes to the outbox wake the publisher as `wake` says.
    fn apply(
        conn: &mut PgConnection,
        commands: &[Self::Command],
        wake: Wake,
    ) -> QueryResult<Vec<Self::Answer>>;

    /// The record that answers `answer`, counted in `tally`; true when the command
    /// wrote events to the outbox (the publisher sends them).
    fn answer(
        id: Uuid,
        key: &[u8],
        answer: Self::Answer,
        to: &Destinations,
        outbound: &mut Vec<Outbound>,
        tally: &mut BatchTally,
    ) -> bool;
}

pub(crate) struct AccountCreations;

impl CommandKind for AccountCreations {
    type Command = AccountCreationCommand;
    type Answer = AccountCreationOutcome;
    const TOPIC: CommandTopic = CommandTopic::AccountCreation;
    const NAME: &'static str = "account creation";

    fn id(command: &AccountCreationCommand) -> Uuid {
        command.id
    }

    fn decode(
        decoder: &CommandDecoder,
        _record: &impl Message,
        value: &[u8],
    ) -> Result<AccountCreationCommand, DecodeError> {
        let command = decoder.decode_account_creation(value)?;
        Ok(AccountCreationCommand {
            id: command.command_id(),
            account_type: command.a_type,
        })
    }

    fn apply(
        conn: &mut PgConnection,
        commands: &[AccountCreationCommand],
        _wake: Wake,
    ) -> QueryResult<Vec<AccountCreationOutcome>> {
        apply::apply_account_creations(conn, commands)
    }

    fn answer(
        id: Uuid,
        key: &[u8],
        answer: AccountCreationOutcome,
        to: &Destinations,
        outbound: &mut Vec<Outbound>,
        tally: &mut BatchTally,
    ) -> bool {
        let record = match answer {
            AccountCreationOutcome::Confirmed {
                iban,
                token,
                account_type,
            } => {
                tally.confirmed += 1;
                OutputRecord::AccountCreationConfirmed {
                    id,
                    iban,
                    token,
                    a_type: account_type,
                }
            }
            AccountCreationOutcome::Failed { reason } => {
                tally.failed += 1;
                OutputRecord::AccountCreationFailed { id, reason }
            }
        };
        outbound.push(Outbound::record(
            &to.account_creation_feedback,
            key.to_vec(),
            record,
        ));
        false
    }
}

pub(crate) struct MoneyTransfers;

impl CommandKind for MoneyTransfers {
    type Command = TransferCommand;
    type Answer = TransferAnswer;
    const TOPIC: CommandTopic = CommandTopic::MoneyTransfer;
    const NAME: &'static str = "money transfer";

    fn id(command: &TransferCommand) -> Uuid {
        command.id
    }

    fn decode(
        decoder: &CommandDecoder,
        record: &impl Message,
        value: &[u8],
    ) -> Result<TransferCommand, DecodeError> {
        let command = decoder.decode_money_transfer(value)?;
        Ok(TransferCommand {
            id: command.command_id(),
            read_at: RecordPosition {
                partition: record.partition(),
                offset: record.offset(),
            },
            transfer: command.into_transfer(),
        })
    }

    fn apply(
        conn: &mut PgConnection,
        commands: &[TransferCommand],
        wake: Wake,
    ) -> QueryResult<Vec<TransferAnswer>> {
        apply::apply_transfers(conn, commands, wake)
    }

    fn answer(
        id: Uuid,
        key: &[u8],
        answer: TransferAnswer,
        to: &Destinations,
        outbound: &mut Vec<Outbound>,
        tally: &mut BatchTally,
    ) -> bool {
        let record = match answer.failure {
            None => {
                tally.confirmed += 1;
                OutputRecord::MoneyTransferConfirmed { id }
            }
            Some(reason) => {
                tally.failed += 1;
                OutputRecord::MoneyTransferFailed { id, reason }
            }
        };
        outbound.push(Outbound::record(
            &to.money_transfer_feedback,
            key.to_vec(),
            record,
        ));
        !answer.balance_changes.is_empty()
    }
}
