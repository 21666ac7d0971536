//! Stage 2, apply: the commands of a batch in one database transaction, retried while
//! the failure is transient; when the database refuses the batch in a way that will
//! recur, each command in a transaction of its own, and the one refused is dead-lettered.
//! Ends with what to publish, in record order: the answers and dead letters; the
//! BalanceChanged events are in the outbox, committed with the batch.

use log::{debug, warn};
use rdkafka::Message;

use super::CommandLoop;
use super::batch::{Applied, At, Batch, Decoded, Intake, printable_key};
use super::kinds::CommandKind;
use super::retry::{Attempt, Interrupted, LoopError};
use crate::db::{DbError, DbFailure};
use crate::ops::metrics::BatchTally;
use crate::produce::Outbound;

/// What became of one record: its command and answer, or why it is dead-lettered.
type Outcome<'a, K> = Result<(&'a <K as CommandKind>::Command, <K as CommandKind>::Answer), String>;

impl<K: CommandKind> CommandLoop<K> {
    /// Stage 2: applies the commands in one transaction (retried while the failure is
    /// transient) and lists what to publish, in record order.
    pub(super) fn apply(
        &mut self,
        batch: &Batch,
        decoded: Decoded<K::Command>,
    ) -> Result<Applied, Interrupted> {
        // The commands go to the database together; the slots keep record order.
        let mut commands = Vec::with_capacity(batch.len());
        let mut dead_letters = Vec::new();
        for (index, intake) in decoded.intake.into_iter().enumerate() {
            match intake {
                Intake::Command(command) => commands.push((index, command)),
                Intake::DeadLetter(reason) => dead_letters.push((index, reason)),
            }
        }
        let (indices, commands): (Vec<usize>, Vec<K::Command>) = commands.into_iter().unzip();
        let what = || format!("applying commands to the database of {}", batch.describe());
        let answers = match self.apply_all(batch, &what, &commands)? {
            Ok(answers) => answers.into_iter().map(Ok).collect(),
            Err(permanent) => {
                warn!(
                    "{}: {permanent}; applying them one by one to find the one refused",
                    what()
                );
                self.apply_one_by_one(batch, &indices, &commands)?
            }
        };
        if answers.len() != commands.len() {
            return Err(LoopError::Internal(format!(
                "{} answers to {} commands of {}",
                answers.len(),
                commands.len(),
                batch.describe()
            ))
            .into());
        }

        // Every record's outcome, in record order.
        let mut outcomes: Vec<Option<Outcome<'_, K>>> = (0..batch.len()).map(|_| None).collect();
        for ((index, command), answer) in indices.iter().zip(&commands).zip(answers) {
            outcomes[*index] = Some(answer.map(|answer| (command, answer)));
        }
        for (index, reason) in dead_letters {
            outcomes[index] = Some(Err(reason));
        }
        let mut applied = Applied {
            outbound: Vec::with_capacity(batch.len()),
            tally: BatchTally::default(),
        };
        let mut wrote_events = false;
        for (record, outcome) in batch.records.iter().zip(outcomes) {
            let at = At(record);
            match outcome {
                Some(Ok((command, answer))) => {
                    let id = K::id(command);
                    debug!("{at} command {id}: {}: {answer:?}", K::NAME);
                    // Decoding checked that the key is there.
                    let key = record.key().unwrap_or_default();
                    wrote_events |= K::answer(
                        id,
                        key,
                        answer,
                        &self.destinations,
                        &mut applied.outbound,
                        &mut applied.tally,
                    );
                }
                Some(Err(reason)) => {
                    warn!(
                        "{at} command {}: dead-lettered: {reason}",
                        printable_key(record.key())
                    );
                    applied.tally.dead_lettered += 1;
                    applied.outbound.push(Outbound::dead_letter(
                        &self.destinations.dead_letter,
                        self.destinations.dead_letter_limit,
                        record,
                        &reason,
                    ));
                }
                None => {
                    return Err(LoopError::Internal(format!("no outcome for {at}")).into());
                }
            }
        }
        if wrote_events {
            self.outbox.committed();
        }
        Ok(applied)
    }

    /// The batch transaction, retried while it fails transiently; Ok(Err) when the
    /// database refuses it in a way that will recur.
    fn apply_all(
        &mut self,
        batch: &Batch,
        what: &dyn Fn() -> String,
        commands: &[K::Command],
    ) -> Result<Result<Vec<K::Answer>, DbError>, Interrupted> {
        if commands.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        self.context.retries(batch).run(what, || {
            let wake = self.outbox.wake();
            let attempt = self
                .database
                .connection()
                .and_then(|mut conn| Ok(K::apply(&mut conn, commands, wake)?));
            match attempt {
                Ok(answers) => Ok(Ok(answers)),
                Err(error) if error.failure() == DbFailure::Permanent => Ok(Err(error)),
                Err(error) => Err(Attempt::Transient(error)),
            }
        })
    }

    /// Each command in a transaction of its own: the answer, or why the database
    /// refuses it (the record is then dead-lettered with that reason).
    fn apply_one_by_one(
        &mut self,
        batch: &Batch,
        indices: &[usize],
        commands: &[K::Command],
    ) -> Result<Vec<Result<K::Answer, String>>, Interrupted> {
        let mut answers = Vec::with_capacity(commands.len());
        for (index, command) in indices.iter().zip(commands) {
            let record = &batch.records[*index];
            let what = format!("applying the command of {}", At(record));
            let single = std::slice::from_ref(command);
            answers.push(match self.apply_all(batch, &|| what.clone(), single)? {
                Ok(mut answer) if answer.len() == 1 => Ok(answer.remove(0)),
                Ok(answer) => {
                    return Err(
                        LoopError::Internal(format!("{} answers to {what}", answer.len())).into(),
                    );
                }
                Err(refused) => Err(format!(
                    "the database refuses this command: {}",
                    self.database.scrub(&refused.to_string())
                )),
            });
        }
        Ok(answers)
    }
}
