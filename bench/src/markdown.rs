//! report.md: the machine, the floor, per variant a latency table and a CPU table (every
//! process of the stack, CPU per 1,000 commands), the memory at idle, then the
//! comparisons (see `comparison`). A figure missing (not measured, a /proc file unread,
//! an older report.json) shows as "—".

use std::fmt::Write as _;

use crate::cpu::{CpuPerThousand, CpuPercent};
use crate::procstat::MemoryBreakdown;
use crate::report::{Machine, Report, VariantResult};

/// A figure with `decimals` decimals, or "—".
pub(crate) fn shown(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "—".to_string(),
    }
}

pub(crate) fn mib(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| k as f64 / 1024.0)
}

/// A latency as a multiple of the floor.
fn over(ms: f64, floor: Option<f64>) -> String {
    shown(floor.filter(|f| *f > 0.0).map(|f| ms / f), 1)
}

/// What one row of the CPU table shows.
struct CpuRow<'a> {
    label: String,
    handler: [Option<f64>; 2],
    cpu: &'a CpuPercent,
    per_thousand: &'a CpuPerThousand,
    rss_mib: [Option<f64>; 2],
}

impl CpuRow<'_> {
    fn write(&self, md: &mut String) {
        let (c, p) = (self.cpu, self.per_thousand);
        let cells = [
            shown(self.handler[0], 1),
            shown(self.handler[1], 1),
            shown(c.broker, 1),
            shown(c.postgres, 1),
            shown(c.load_generator, 1),
            shown(c.machine, 1),
            shown(p.handler, 0),
            shown(p.stack, 0),
            shown(p.machine, 0),
            shown(self.rss_mib[0], 1),
            shown(self.rss_mib[1], 1),
        ];
        let _ = writeln!(md, "| {} | {} |", self.label, cells.join(" | "));
    }
}

impl Machine {
    /// The machine and the stack, as a report opens.
    pub(crate) fn note(&self) -> String {
        format!(
            "Machine: {} ({} cores, {:.0} GiB), Apache Kafka {}, {}, with Kafka, PostgreSQL, the registry \
             stand-in and the load generator on the same machine.",
            self.cpu, self.cores, self.memory_gib, self.kafka_version, self.postgres
        )
    }
}

impl Report {
    pub(crate) fn markdown(&self) -> String {
        let m = &self.machine;
        let mut md = String::new();
        let _ = writeln!(md, "# Command handler benchmark\n");
        let _ = writeln!(
            md,
            "{} {} s per load step, after an unmeasured warm-up of {} s at {}/s per variant (idle memory is read before it). {}.\n",
            m.note(),
            m.step_seconds,
            crate::WARM_UP.as_secs(),
            crate::WARM_UP_RATE,
            m.date
        );
        let _ = writeln!(
            md,
            "Plots: [latency](latency.svg), [CPU](cpu.svg), [memory](memory.svg); every figure in [report.json](report.json).\n"
        );
        md.push_str(&self.floor_section());
        for v in &self.variants {
            let _ = writeln!(md, "## {}: {}\n", v.name, v.description);
            md.push_str(&self.latency_table(v));
            md.push_str(&cpu_table(v));
            md.push_str(&stage_table(v));
            if let Some(sat) = &v.saturation {
                let _ = writeln!(
                    md,
                    "Saturation: {} preloaded transfers drained at **{:.0} commands/s** ({}/{} answered, {:.1} s from start, CPU {:.0}%, RSS peak {:.1} MiB).\n",
                    sat.commands,
                    sat.commands_per_second,
                    sat.answered,
                    sat.commands,
                    sat.seconds_from_start,
                    sat.cpu_percent_avg,
                    sat.rss_mib_peak
                );
            }
            let _ = writeln!(md, "Correctness: {}\n", v.correctness.summary());
        }
        md.push_str(&self.idle_memory());
        md.push_str(&self.against_baseline());
        md.push_str(&self.goals());
        md.push_str(&self.ratios());
        md
    }

    fn floor_section(&self) -> String {
        let Some(f) = &self.floor else {
            return String::new();
        };
        let mut md = format!(
            "## Floor\n\nWhat the stack itself costs a command, measured at the start of the run on the same \
             stack: {} round trips of each kind, one at a time, after 20 not counted. A command crosses Kafka \
             twice (command in, answer out) and takes one PostgreSQL transaction, so no handler answers \
             faster than the floor per command. The latency tables give latencies as multiples of it too \
             (p99 over the floor from the p99s).\n\n\
             | round trip | p50 ms | p99 ms |\n|---|---:|---:|\n",
            f.samples
        );
        let mut row = |what: &str, p50: Option<f64>, p99: Option<f64>| {
            let _ = writeln!(md, "| {what} | {} | {} |", shown(p50, 2), shown(p99, 2));
        };
        row(
            "Kafka: one record produced (acks=all), acknowledged and consumed",
            f.kafka_round_trip_p50_ms,
            f.kafka_round_trip_p99_ms,
        );
        row(
            "PostgreSQL: BEGIN; UPDATE one row; INSERT one row; COMMIT",
            f.postgres_transaction_p50_ms,
            f.postgres_transaction_p99_ms,
        );
        row(
            "**floor per command**: 2 × Kafka + 1 × PostgreSQL",
            f.per_command_p50_ms,
            f.per_command_p99_ms,
        );
        md.push('\n');
        md
    }

    fn latency_table(&self, v: &VariantResult) -> String {
        let floor = self.floor.as_ref();
        let (floor_p50, floor_p99) = (
            floor.and_then(|f| f.per_command_p50_ms),
            floor.and_then(|f| f.per_command_p99_ms),
        );
        let mut md = String::from(
            "| load /s | achieved /s | answered | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | p50 ÷ floor | p99 ÷ floor |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for s in &v.steps {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {}/{} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
                s.target_per_second,
                s.achieved_per_second,
                s.answered,
                s.commands,
                s.p50_ms,
                s.p90_ms,
                s.p99_ms,
                s.p999_ms,
                s.max_ms,
                over(s.p50_ms, floor_p50),
                over(s.p99_ms, floor_p99)
            );
        }
        md.push('\n');
        md
    }

    /// The handler's memory at idle, one row per variant.
    fn idle_memory(&self) -> String {
        let mut md = String::from(
            "## Memory at idle (handler)\n\nRss: resident pages; Pss: the same with each shared page divided \
             among the processes mapping it; Private: pages no other process maps; Anonymous: pages backed by \
             no file (heap, stacks, allocator arenas).\n\n\
             | variant | Rss MiB | Pss MiB | Private MiB | Anonymous MiB |\n|---|---:|---:|---:|---:|\n",
        );
        for v in &self.variants {
            let m = &v.idle_memory;
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                v.name,
                shown(mib(Some(m.rss_kib)), 1),
                shown(mib(m.pss_kib), 1),
                shown(mib(m.private_kib), 1),
                shown(mib(Some(m.anonymous_kib)), 1)
            );
        }
        md.push('\n');
        if let Some(default) = self.variants.first() {
            md.push_str(&where_memory_goes(&default.name, &default.idle_memory));
        }
        md
    }
}

/// Per step, and idle and drain: every process's CPU and the CPU per 1,000 commands.
fn cpu_table(v: &VariantResult) -> String {
    let mut md = String::from(
        "CPU in % of one core (the machine's: all cores together, so 200 is two cores busy); CPU per \
         1,000 commands in CPU-ms over the commands answered (stack: handler + broker + PostgreSQL); \
         RSS the handler's.\n\n\
         | load /s | handler % | handler % peak | broker % | PostgreSQL % | load generator % | machine % \
         | handler ms/1000 | stack ms/1000 | machine ms/1000 | RSS MiB avg | RSS MiB peak |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let nothing = CpuPerThousand::default();
    CpuRow {
        label: "idle".into(),
        handler: [Some(v.idle.cpu_percent_avg), Some(v.idle.cpu_percent_peak)],
        cpu: &v.idle_cpu,
        per_thousand: &nothing,
        rss_mib: [Some(v.idle.rss_mib_avg), Some(v.idle.rss_mib_peak)],
    }
    .write(&mut md);
    for s in &v.steps {
        CpuRow {
            label: s.target_per_second.to_string(),
            handler: [Some(s.cpu_percent_avg), Some(s.cpu_percent_peak)],
            cpu: &s.cpu,
            per_thousand: &s.cpu_ms_per_1000,
            rss_mib: [Some(s.rss_mib_avg), Some(s.rss_mib_peak)],
        }
        .write(&mut md);
    }
    if let Some(sat) = &v.saturation {
        CpuRow {
            label: "drain".into(),
            handler: [Some(sat.cpu_percent_avg), None],
            cpu: &sat.cpu,
            per_thousand: &sat.cpu_ms_per_1000,
            rss_mib: [None, Some(sat.rss_mib_peak)],
        }
        .write(&mut md);
    }
    md.push('\n');
    md
}

/// Per step, where a money-transfer batch's time goes, from the handler's own
/// histograms (variants serving HTTP only).
fn stage_table(v: &VariantResult) -> String {
    if v.steps.iter().all(|s| s.stages.is_empty()) {
        return String::new();
    }
    let mut md = String::from(
        "Where a batch's time goes, from the handler's `command_handler_stage_seconds`: mean / p99 \
         (the upper bound of the 99th percentile's histogram bucket) in ms per batch of money \
         transfers. `acknowledge` runs from hand-over to Kafka's last acknowledgement while the \
         next batch is applied; `poll` includes waiting for the first record.\n\n| load /s | batches |",
    );
    for stage in crate::stages::STAGES {
        let _ = write!(md, " {stage} |");
    }
    md.push_str("\n|---|---:|");
    md.push_str(&"---:|".repeat(crate::stages::STAGES.len()));
    md.push('\n');
    for s in &v.steps {
        let batches = s.stages.iter().map(|t| t.batches).fold(0.0, f64::max);
        let _ = write!(md, "| {} | {batches:.0} |", s.target_per_second);
        for stage in crate::stages::STAGES {
            match s.stages.iter().find(|t| t.stage == stage) {
                Some(t) => {
                    let _ = write!(md, " {:.2} / {:.2} |", t.mean_ms, t.p99_ms);
                }
                None => md.push_str(" – |"),
            }
        }
        md.push('\n');
    }
    md.push('\n');
    md
}

/// The per-mapping breakdown of one variant's idle memory.
fn where_memory_goes(name: &str, m: &MemoryBreakdown) -> String {
    // Private counts file pages that no other process maps too, such as the binary's.
    let private = mib(m.private_kib).map_or(String::new(), |p| {
        format!(" {p:.1} MiB of it is mapped by the handler alone (private), the binary's pages included.")
    });
    let mut md = format!(
        "### Where the idle memory goes ({name})\n\nRSS {:.1} MiB, of which {:.1} MiB anonymous; the rest is \
         pages of the binary and shared libraries, which any other process mapping the same files \
         shares.{private}\n\n| mapping | RSS kB |\n|---|---:|\n",
        m.rss_kib as f64 / 1024.0,
        m.anonymous_kib as f64 / 1024.0,
    );
    for (mapping, kib) in &m.mappings {
        let _ = writeln!(md, "| `{mapping}` | {kib} |");
    }
    md.push('\n');
    md
}
