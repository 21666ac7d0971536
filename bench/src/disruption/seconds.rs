//! The latency of a load under disruption, overall and per second of sending (the
//! commands sent in that second: how many, p50, p99, max of their first answers), the
//! longest silence (no answer at all), and what followed each disruption.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::timeline::{Mark, Sent};
use crate::floor::quantile;

/// Above this a command counts as answered late.
const LATE: Duration = Duration::from_secs(1);

/// One second of sending.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since the load began: the commands sent in [second, second + 1).
    pub second: u64,
    pub sent: usize,
    /// Of those, never answered.
    pub unanswered: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// A time in which nothing was answered, in seconds since the load began.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Gap {
    pub from_s: f64,
    pub to_s: f64,
}

impl Gap {
    pub fn seconds(&self) -> f64 {
        self.to_s - self.from_s
    }
}

/// What followed one disruption (until the next one).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AfterAction {
    pub what: String,
    pub at_s: f64,
    /// The longest time without any answer overlapping the span after it.
    pub longest_gap: Option<Gap>,
    /// The last command sent after it (before the next) that was answered after more
    /// than 1 s, or never: seconds after the disruption. None: all were prompt.
    pub late_until_s: Option<f64>,
}

/// The latency of one load, from each command's sending to its first answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Latency {
    pub sent: usize,
    pub answered: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Commands answered after more than 1 s.
    pub over_1s: usize,
    /// The longest time without any answer, from the first command sent to the last
    /// answer.
    pub longest_gap: Option<Gap>,
    pub seconds: Vec<Second>,
    pub after_actions: Vec<AfterAction>,
}

impl Latency {
    /// `first_answers[k]`: when command `k` of `sent` was first answered; `answers`:
    /// when each answer came (repeats too), for the gaps.
    pub fn of(sent: &Sent, first_answers: &[Option<Instant>], answers: &[Instant]) -> Latency {
        let since_start = |t: Instant| t.saturating_duration_since(sent.start).as_secs_f64();
        // Per command: the second it was sent in, and its latency in ms if answered.
        let commands: Vec<(f64, Option<f64>)> = sent
            .at
            .iter()
            .zip(first_answers)
            .map(|(at, answer)| {
                let latency = answer.map(|a| a.saturating_duration_since(*at).as_secs_f64() * 1e3);
                (since_start(*at), latency)
            })
            .collect();
        let answered_ms: Vec<f64> = commands.iter().filter_map(|c| c.1).collect();
        let gaps = silences(sent.start, answers);
        let mut latency = Latency {
            sent: commands.len(),
            answered: answered_ms.len(),
            p50_ms: quantile(&answered_ms, 0.5),
            p99_ms: quantile(&answered_ms, 0.99),
            max_ms: answered_ms.iter().copied().reduce(f64::max),
            over_1s: answered_ms
                .iter()
                .filter(|ms| **ms > LATE.as_secs_f64() * 1e3)
                .count(),
            longest_gap: longest(gaps.iter().copied()),
            seconds: per_second(&commands),
            after_actions: Vec::new(),
        };
        latency.after_actions = after_actions(&sent.marks, &commands, &gaps);
        latency
    }
}

fn per_second(commands: &[(f64, Option<f64>)]) -> Vec<Second> {
    let last = commands.last().map_or(0, |c| c.0 as u64);
    (0..=last)
        .map(|second| {
            let in_second = commands.iter().filter(|c| c.0 as u64 == second);
            let ms: Vec<f64> = in_second.clone().filter_map(|c| c.1).collect();
            let sent = in_second.count();
            Second {
                second,
                sent,
                unanswered: sent - ms.len(),
                p50_ms: quantile(&ms, 0.5),
                p99_ms: quantile(&ms, 0.99),
                max_ms: ms.iter().copied().reduce(f64::max),
            }
        })
        .collect()
}

/// The times between one answer and the next (the first from the load's start), in
/// seconds since the start.
fn silences(start: Instant, answers: &[Instant]) -> Vec<Gap> {
    let mut times: Vec<f64> = answers
        .iter()
        .map(|a| a.saturating_duration_since(start).as_secs_f64())
        .collect();
    times.sort_by(f64::total_cmp);
    times.insert(0, 0.0);
    times
        .windows(2)
        .map(|w| Gap {
            from_s: w[0],
            to_s: w[1],
        })
        .collect()
}

fn longest(gaps: impl Iterator<Item = Gap>) -> Option<Gap> {
    gaps.max_by(|a, b| a.seconds().total_cmp(&b.seconds()))
}

/// For each disruption, what followed until the next one.
fn after_actions(
    marks: &[Mark],
    commands: &[(f64, Option<f64>)],
    gaps: &[Gap],
) -> Vec<AfterAction> {
    let actions: Vec<&Mark> = marks.iter().filter(|m| m.action).collect();
    actions
        .iter()
        .enumerate()
        .map(|(i, action)| {
            let until = actions.get(i + 1).map_or(f64::INFINITY, |next| next.at_s);
            let late_sent_at = commands
                .iter()
                .filter(|(at, ms)| {
                    (action.at_s..until).contains(at)
                        && ms.is_none_or(|ms| ms > LATE.as_secs_f64() * 1e3)
                })
                .map(|(at, _)| *at)
                .reduce(f64::max);
            AfterAction {
                what: action.what.clone(),
                at_s: action.at_s,
                longest_gap: longest(
                    gaps.iter()
                        .copied()
                        .filter(|g| g.to_s > action.at_s && g.from_s < until),
                ),
                late_until_s: late_sent_at.map(|at| at - action.at_s),
            }
        })
        .collect()
}
