//! The answers the load generator reads back, by command id, each measured command's
//! first answer timed from the moment the command was due: what the variants' steps,
//! the scaling runs and the disruption scenarios wait on, and the check that each
//! transfer got one kind of answer and the balances are what the confirmed ones imply.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use uuid::Uuid;

use crate::client::{Answer, CommandWriter, Transfer};
use crate::mix::BANK;
use crate::report::Correctness;

/// The bank account's balance before any command (the handler's seed).
const BANK_OPENING_BALANCE: i64 = 100_000_000_000_000_000;

pub struct Answers {
    incoming: mpsc::Receiver<Answer>,
    /// Every answer read, by command id, in the order read.
    by_id: HashMap<Uuid, Vec<Answer>>,
    /// When each measured command was due.
    due: HashMap<Uuid, Instant>,
}

impl Answers {
    pub fn new(incoming: mpsc::Receiver<Answer>) -> Answers {
        Answers {
            incoming,
            by_id: HashMap::new(),
            due: HashMap::new(),
        }
    }

    /// The command `id` is measured from `at`.
    pub fn due(&mut self, id: Uuid, at: Instant) {
        self.due.insert(id, at);
    }

    /// Every answer to `id` so far.
    pub fn to(&self, id: &Uuid) -> &[Answer] {
        self.by_id.get(id).map(Vec::as_slice).unwrap_or_default()
    }

    pub fn first(&self, id: &Uuid) -> Option<&Answer> {
        self.to(id).first()
    }

    /// How many of `ids` have an answer.
    pub fn answered(&self, ids: &[Uuid]) -> usize {
        ids.iter().filter(|id| self.by_id.contains_key(id)).count()
    }

    /// Takes the answers read for `wait`; the latency of each measured command's first
    /// answer goes to `histogram`. How many were read.
    pub fn take(&mut self, mut histogram: Option<&mut Histogram<u64>>, wait: Duration) -> usize {
        let mut count = 0;
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(answer) = self
                .incoming
                .recv_timeout(left.min(Duration::from_millis(20)))
            else {
                if Instant::now() >= deadline {
                    return count;
                }
                continue;
            };
            let earlier = self.by_id.entry(answer.id).or_default();
            if earlier.is_empty()
                && let (Some(h), Some(due)) = (histogram.as_deref_mut(), self.due.get(&answer.id))
            {
                let micros = answer.received.saturating_duration_since(*due).as_micros() as u64;
                h.record(micros.max(1))
                    .expect("latency within the histogram's range");
            }
            earlier.push(answer);
            count += 1;
        }
    }

    /// Takes answers until each of `ids` has one, or `limit` has passed.
    pub fn wait_for(
        &mut self,
        ids: &[Uuid],
        limit: Duration,
        mut histogram: Option<&mut Histogram<u64>>,
    ) {
        let deadline = Instant::now() + limit;
        while self.answered(ids) < ids.len() && Instant::now() < deadline {
            self.take(histogram.as_deref_mut(), Duration::from_millis(100));
        }
    }

    /// Opens `count` accounts through the handler: their IBANs and tokens.
    pub fn open_accounts(
        &mut self,
        writer: &CommandWriter,
        count: usize,
    ) -> Result<Vec<(String, String)>, String> {
        let ids: Vec<Uuid> = (0..count).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            writer.open_account(*id);
        }
        writer.flush();
        self.wait_for(&ids, Duration::from_secs(120), None);
        ids.iter()
            .map(|id| {
                let answer = self
                    .first(id)
                    .ok_or("an account was not opened within 120 s")?;
                match (&answer.iban, &answer.token) {
                    (Some(iban), Some(token)) => Ok((iban.clone(), token.clone())),
                    _ => Err(format!("account creation answered {}", answer.kind)),
                }
            })
            .collect()
    }

    /// Every transfer of `sent` got exactly one kind of answer (repeats of it counted),
    /// and every balance of `balances` (the database's) equals what the confirmed
    /// transfers imply for the run's `accounts` and the bank.
    pub fn correctness<'t>(
        &self,
        sent: impl IntoIterator<Item = &'t Transfer>,
        accounts: &[(String, String)],
        balances: &HashMap<String, i64>,
    ) -> Correctness {
        let mut correctness = Correctness::default();
        let mut expected: HashMap<&str, i64> = accounts
            .iter()
            .map(|(iban, _)| (iban.as_str(), 0))
            .collect();
        let mut bank_delta = 0i64;
        for transfer in sent {
            correctness.commands += 1;
            let answers = self.to(&transfer.id);
            if answers.is_empty() {
                correctness.unanswered += 1;
                continue;
            }
            let kinds: HashSet<(&str, Option<&str>)> = answers
                .iter()
                .map(|a| (a.kind.as_str(), a.reason.as_deref()))
                .collect();
            if kinds.len() > 1 {
                correctness.answers_disagreeing += 1;
            }
            correctness.duplicate_answers += answers.len() - 1;
            if answers[0].kind == "MoneyTransferConfirmed" {
                correctness.confirmed += 1;
                for (party, sign) in [(&transfer.from, -1), (&transfer.to, 1)] {
                    if party == BANK.0 {
                        bank_delta += sign * transfer.amount;
                    } else if let Some(balance) = expected.get_mut(party.as_str()) {
                        *balance += sign * transfer.amount;
                    }
                }
            } else {
                correctness.failed += 1;
            }
        }
        for (iban, amount) in balances {
            let want = if iban == BANK.0 {
                BANK_OPENING_BALANCE + bank_delta
            } else {
                match expected.get(iban.as_str()) {
                    Some(want) => *want,
                    None => continue,
                }
            };
            correctness.accounts_checked += 1;
            if want != *amount {
                correctness.balances_wrong += 1;
            }
        }
        correctness
    }
}
