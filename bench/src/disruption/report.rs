//! disruptions.json and disruptions.md: a summary table of every run, then per
//! scenario each run's facts and its per-second table (a broker scenario's handler run
//! and floor side by side), the disruption's moments in the rows they fell in.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Scenario;
use super::seconds::{Gap, Latency, Second};
use super::timeline::{Exit, Mark};
use crate::group::EventCheck;
use crate::markdown::shown;
use crate::report::{Correctness, Machine};

/// What a run's load went to.
pub const HANDLER: &str = "handler";
pub const PLAIN: &str = "plain pair";

#[derive(Serialize, Deserialize)]
pub struct DisruptionReport {
    pub machine: Machine,
    /// What produced the report.
    pub command: String,
    /// The handler binary measured: path, when built, whether it reads
    /// `KAFKA_GROUP_INSTANCE_ID`.
    #[serde(default)]
    pub handler: String,
    pub runs: Vec<ScenarioRun>,
    /// Scenarios asked for and not run: why.
    #[serde(default)]
    pub skipped: Vec<String>,
}

#[derive(Default, Serialize, Deserialize)]
pub struct ScenarioRun {
    pub scenario: String,
    /// [`HANDLER`], or [`PLAIN`]: the floor, a librdkafka producer and consumer.
    pub subject: String,
    /// "as shipped", or what was added to the handler's environment.
    pub settings: String,
    pub brokers: usize,
    /// Handler instances (0 for the floor).
    pub instances: usize,
    pub per_second: u32,
    /// Every instance held partitions of the transfer topic, together all of them
    /// once, and a round of deposits saw no assignment change, before the load.
    pub settled: bool,
    /// Transfer topic partitions each instance held when the load began.
    pub partitions_held: Vec<usize>,
    /// Which broker led which partitions when the load began, and after it (topic
    /// role: leaders); on a one-broker stack none.
    pub leaders: Vec<(String, String)>,
    pub leaders_after: Vec<(String, String)>,
    /// The machine's one-minute load average as the load began and ended.
    pub load_average: Vec<f64>,
    pub marks: Vec<Mark>,
    pub exits: Vec<Exit>,
    pub latency: Latency,
    /// Assignments and revocations logged during the load (all instances).
    pub membership_changes_during: usize,
    /// The instances that said they publish the outbox.
    pub publishers: Vec<usize>,
    /// Rows left in the outbox when its deadline passed: 0 when it drained.
    pub outbox_left: Option<i64>,
    /// Every transfer of the run (funding and settling ones too): handler runs only.
    pub correctness: Option<Correctness>,
    pub events: Option<EventCheck>,
    /// Commands (records) never answered (read), of the whole run.
    pub lost: usize,
    /// Answers (reads) beyond each command's first.
    pub duplicates: usize,
    /// The floor's producer: records it gave up on.
    pub delivery_errors: usize,
    pub handler_warnings: usize,
    pub frequent_warnings: Vec<(String, usize)>,
    /// Why the run stopped short or its disruption failed, if it did.
    pub error: Option<String>,
}

impl ScenarioRun {
    /// One line for the console.
    pub fn summary(&self) -> String {
        let l = &self.latency;
        let mut line = format!(
            "{}/{} answered, p50 {} ms p99 {} ms max {} ms, {} over 1 s, longest gap {} s; \
             {} lost, {} duplicates",
            l.answered,
            l.sent,
            shown(l.p50_ms, 1),
            shown(l.p99_ms, 1),
            shown(l.max_ms, 0),
            l.over_1s,
            shown(l.longest_gap.map(|g| g.seconds()), 2),
            self.lost,
            self.duplicates
        );
        if let Some(c) = &self.correctness {
            let _ = write!(
                line,
                ", {} disagreeing, {} balances wrong",
                c.answers_disagreeing, c.balances_wrong
            );
        }
        if let Some(e) = &self.events {
            let _ = write!(
                line,
                "; {} events, {} out of order, {} last ≠ balance",
                e.events, e.out_of_order, e.last_event_differs
            );
        }
        if let Some(error) = &self.error {
            let _ = write!(line, "; ERROR: {error}");
        }
        line
    }

    fn title(&self) -> String {
        match self.subject.as_str() {
            PLAIN => format!("floor: {}", self.settings),
            _ => format!("handler, {} instance(s), {}", self.instances, self.settings),
        }
    }
}

impl DisruptionReport {
    pub fn new(machine: Machine, command: String, handler: String) -> DisruptionReport {
        DisruptionReport {
            machine,
            command,
            handler,
            runs: Vec::new(),
            skipped: Vec::new(),
        }
    }

    pub fn read(out: &Path) -> Option<DisruptionReport> {
        let json = std::fs::read_to_string(out.join("disruptions.json")).ok()?;
        serde_json::from_str(&json).ok()
    }

    pub fn write(&self, out: &Path) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(out.join("disruptions.json"), json)?;
        std::fs::write(out.join("disruptions.md"), self.markdown())
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Command handler under disruption\n");
        let _ = writeln!(
            md,
            "{} {}. Produced by `{}`; every figure in [disruptions.json](disruptions.json).\n",
            self.machine.note(),
            self.machine.date,
            self.command
        );
        let _ = writeln!(md, "Handler: {}.\n", self.handler);
        md.push_str(METHOD);
        md.push_str(&self.summary_table());
        for scenario in Scenario::ALL {
            let runs: Vec<&ScenarioRun> = self
                .runs
                .iter()
                .filter(|r| r.scenario == scenario.name())
                .collect();
            if runs.is_empty() {
                continue;
            }
            let _ = writeln!(md, "## {}\n\n{}\n", scenario.name(), scenario.description());
            let handler_runs = runs.iter().filter(|r| r.subject == HANDLER);
            let floor = runs.iter().find(|r| r.subject == PLAIN);
            for run in handler_runs {
                let _ = writeln!(md, "### {}\n", run.title());
                md.push_str(&facts(run));
                if let Some(floor) = floor {
                    let _ = writeln!(md, "Floor, the same broker action with no handler:\n");
                    md.push_str(&facts(floor));
                }
                md.push_str(&per_second_table(run, floor.copied()));
            }
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(md, "## Not run\n");
            for skipped in &self.skipped {
                let _ = writeln!(md, "- {skipped}");
            }
            md.push('\n');
        }
        md
    }

    fn summary_table(&self) -> String {
        let mut md = String::from(
            "## Summary\n\n\
             | scenario | subject | settings | rate /s | p50 ms | p99 ms | max ms | answers > 1 s | longest gap s \
             | lost | disagreeing | duplicates | out-of-order events | balances ≠ answers | last event ≠ balance |\n\
             |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in &self.runs {
            let l = &r.latency;
            let count = |n: Option<usize>| n.map_or("—".to_string(), |n| n.to_string());
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.scenario,
                match r.subject.as_str() {
                    HANDLER => format!("handler ×{}", r.instances),
                    other => other.to_string(),
                },
                r.settings,
                r.per_second,
                shown(l.p50_ms, 1),
                shown(l.p99_ms, 1),
                shown(l.max_ms, 0),
                l.over_1s,
                shown(l.longest_gap.map(|g| g.seconds()), 2),
                r.lost,
                count(r.correctness.as_ref().map(|c| c.answers_disagreeing)),
                r.duplicates,
                count(r.events.as_ref().map(|e| e.out_of_order)),
                count(r.correctness.as_ref().map(|c| c.balances_wrong)),
                count(r.events.as_ref().map(|e| e.last_event_differs)),
            );
        }
        md.push('\n');
        let errors: Vec<String> = self
            .runs
            .iter()
            .filter_map(|r| {
                let error = r.error.as_ref()?.replace('\n', " ");
                Some(format!("- {} ({}): {error}", r.scenario, r.title()))
            })
            .collect();
        if !errors.is_empty() {
            let _ = writeln!(md, "Errors:\n\n{}\n", errors.join("\n"));
        }
        md
    }
}

const METHOD: &str = "A short run on one instance, not reported, comes first on each stack (a \
broker just started is slow for a while). Each run: topics of its own (9 partitions, replicated to every broker of the \
stack), a consumer group and a database of its own; the handler instances start together, 50 \
accounts are opened and funded from cash, and the load begins once every instance holds \
partitions of the transfer topic and a round of deposits saw no assignment change. Every instance \
has `KAFKA_GROUP_INSTANCE_ID` set to a name of its own, kept across its restarts (static group \
membership, for a handler that reads it). The load: transfers between two random accounts of the \
run (100 to 5,000 each), one in five a cash deposit instead, at a fixed rate whatever happens (open \
loop), from before the disruption to at least the tail after it and until the commands sent 2 to 3 s \
earlier were each answered within 1 s (at most 2 min more). Latency: from a command's sending to its \
first answer; per second of sending, the commands sent in that second. *Longest gap*: the longest \
time in which no command of the run was answered at all. *Late until*: the last command sent after \
a disruption (before the next) that waited over 1 s for its answer. Correctness, over every transfer \
of the run: *lost*, never answered; *disagreeing*, answered with two kinds of answer; *duplicates*, \
answers beyond the first (allowed); *balances ≠ answers*, accounts whose balance in PostgreSQL is \
not what the confirmed transfers imply; *out-of-order events*, BalanceChanged events (read once the \
outbox drained) that neither follow their IBAN's previous one nor repeat, in order, a run already \
published; *last event ≠ balance*, IBANs whose last event does not carry their balance. The \
floor of a broker scenario: the same broker action under a plain librdkafka producer (acks=all, \
idempotence, as the handler's; otherwise defaults) sending a small record per tick of the rate \
round-robin over the 9 partitions of a topic of its own, and a consumer in a group of its own \
reading them; latency from sending to reading. Pauses are reported, not asserted. The load \
generator's command producer is idempotent here, so that a broker failover makes it send no \
command twice.\n\n";

/// The facts of one run above its table: instances, exits, leaders, checks.
fn facts(run: &ScenarioRun) -> String {
    let mut lines: Vec<String> = Vec::new();
    let l = &run.latency;
    lines.push(format!(
        "{} /s on {} broker(s): {}/{} answered, p50 {} ms, p99 {} ms, max {} ms, {} over 1 s",
        run.per_second,
        run.brokers,
        l.answered,
        l.sent,
        shown(l.p50_ms, 1),
        shown(l.p99_ms, 1),
        shown(l.max_ms, 0),
        l.over_1s
    ));
    if let Some(gap) = l.longest_gap {
        lines.push(format!("longest gap: {}", gap_text(gap, None)));
    }
    if let [began, ended] = run.load_average[..] {
        lines.push(format!(
            "the machine's load average: {began:.1} as the load began, {ended:.1} as it ended"
        ));
    }
    if run.subject == HANDLER {
        lines.push(format!(
            "group {} before the load, transfer topic partitions held: {:?}; {} assignment changes \
             during the load; outbox published by instance(s) {:?}",
            if run.settled {
                "settled"
            } else {
                "NOT settled"
            },
            run.partitions_held,
            run.membership_changes_during,
            run.publishers
        ));
    }
    for exit in &run.exits {
        lines.push(format!(
            "i{}: {} at {:.2} s, exited at {:.2} s ({:.2} s later), {}",
            exit.instance,
            exit.signal,
            exit.signalled_at_s,
            exit.exited_at_s,
            exit.exited_at_s - exit.signalled_at_s,
            exit.status
        ));
    }
    for after in &l.after_actions {
        let gap = after
            .longest_gap
            .map_or("no answer missing".to_string(), |g| {
                gap_text(g, Some(after.at_s))
            });
        let late = after.late_until_s.map_or(
            "every command sent after it answered within 1 s".to_string(),
            |s| format!("commands sent up to +{s:.1} s after it waited over 1 s"),
        );
        lines.push(format!(
            "after {} ({:.2} s): longest gap {gap}; {late}",
            after.what, after.at_s
        ));
    }
    for (role, leaders) in &run.leaders {
        lines.push(format!(
            "leaders of the {role} topic at the start: {leaders}"
        ));
    }
    for (role, leaders) in &run.leaders_after {
        lines.push(format!("leaders of the {role} topic at the end: {leaders}"));
    }
    if let Some(c) = &run.correctness {
        lines.push(format!("answers: {}", c.summary()));
    }
    if let Some(outbox_left) = run.outbox_left.filter(|n| *n > 0) {
        lines.push(format!("{outbox_left} events left in the outbox"));
    }
    if let Some(e) = &run.events {
        lines.push(format!(
            "events: {} for {} IBANs, {} out of order, {} repeats, {} last ≠ balance{}",
            e.events,
            e.ibans,
            e.out_of_order,
            e.repeats,
            e.last_event_differs,
            e.error.as_ref().map_or(String::new(), |error| format!(
                " (not all checked: {error})"
            ))
        ));
    }
    if run.subject == PLAIN {
        lines.push(format!(
            "{} records never read, {} read twice, {} the producer gave up on",
            run.lost, run.duplicates, run.delivery_errors
        ));
    }
    if run.handler_warnings > 0 {
        let frequent: Vec<String> = run
            .frequent_warnings
            .iter()
            .map(|(shape, n)| format!("{n}× `{}`", shape.replace('`', "'")))
            .collect();
        lines.push(format!(
            "{} handler warnings, most frequent: {}",
            run.handler_warnings,
            frequent.join("; ")
        ));
    }
    if let Some(error) = &run.error {
        lines.push(format!("**error**: {}", error.replace('\n', " ")));
    }
    let mut md: String = lines.iter().map(|l| format!("- {l}\n")).collect();
    md.push('\n');
    md
}

/// "2.71 s, from 10.40 s to 13.11 s" (with `after`: "+0.40 s to +3.11 s after it").
fn gap_text(gap: Gap, after: Option<f64>) -> String {
    match after {
        Some(at) => format!(
            "{:.2} s, from {:+.2} s to {:+.2} s after it",
            gap.seconds(),
            gap.from_s - at,
            gap.to_s - at
        ),
        None => format!(
            "{:.2} s, from {:.2} s to {:.2} s",
            gap.seconds(),
            gap.from_s,
            gap.to_s
        ),
    }
}

/// Per second of sending: the handler run's figures, the floor's beside them if given,
/// and each run's marks in the second they fell in (disruptions in bold).
fn per_second_table(run: &ScenarioRun, floor: Option<&ScenarioRun>) -> String {
    let mut md = String::new();
    let cells = |s: Option<&Second>| match s {
        Some(s) => format!(
            "{} | {} | {} | {} | {}",
            s.sent,
            s.unanswered,
            shown(s.p50_ms, 1),
            shown(s.p99_ms, 1),
            shown(s.max_ms, 0)
        ),
        None => " |  |  |  | ".to_string(),
    };
    match floor {
        Some(_) => md.push_str(
            "| s | sent | unanswered | p50 ms | p99 ms | max ms | what happened \
             | floor: sent | unanswered | p50 ms | p99 ms | max ms | what happened |\n\
             |---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|\n",
        ),
        None => md.push_str(
            "| s | sent | unanswered | p50 ms | p99 ms | max ms | what happened |\n\
             |---:|---:|---:|---:|---:|---:|---|\n",
        ),
    }
    let rows = run
        .latency
        .seconds
        .len()
        .max(floor.map_or(0, |f| f.latency.seconds.len()));
    for second in 0..rows {
        let _ = write!(
            md,
            "| {second} | {} | {} |",
            cells(run.latency.seconds.get(second)),
            marks_in(&run.marks, second)
        );
        if let Some(floor) = floor {
            let _ = write!(
                md,
                " {} | {} |",
                cells(floor.latency.seconds.get(second)),
                marks_in(&floor.marks, second)
            );
        }
        md.push('\n');
    }
    md.push('\n');
    md
}

fn marks_in(marks: &[Mark], second: usize) -> String {
    marks
        .iter()
        .filter(|m| m.at_s as usize == second)
        .map(|m| match m.action {
            true => format!("**{}** ({:.2} s)", m.what, m.at_s),
            false => format!("{} ({:.2} s)", m.what, m.at_s),
        })
        .collect::<Vec<String>>()
        .join("; ")
}
