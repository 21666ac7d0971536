//! The comparisons at the end of report.md: this build against the baseline, the goals,
//! and the variants side by side.

use std::fmt::Write as _;

use crate::markdown::mib;
use crate::report::Report;

impl Report {
    pub(crate) fn goals(&self) -> String {
        let mut md = String::from("## Goals\n\n| goal | measured | verdict |\n|---|---|---|\n");
        let Some(default) = self.variants.iter().find(|v| v.name == "default") else {
            return md;
        };
        let mut row = |goal: &str, measured: String, met: bool, miss: String| {
            let verdict = if met {
                "met".to_string()
            } else {
                format!("missed: {miss}")
            };
            let _ = writeln!(md, "| {goal} | {measured} | {verdict} |");
        };
        if let Some(s) = default.at(1000) {
            row(
                "p99 under 25 ms at 1000 commands/s",
                format!("{:.1} ms", s.p99_ms),
                s.p99_ms < 25.0,
                format!("{:.1}× the goal", s.p99_ms / 25.0),
            );
        }
        let peak = default
            .steps
            .iter()
            .map(|s| s.rss_mib_peak)
            .fold(0.0, f64::max);
        let kept_up = default
            .steps
            .iter()
            .filter(|s| !s.broken())
            .map(|s| s.rss_mib_peak)
            .fold(0.0, f64::max);
        row(
            "RSS under 16 MiB at every step",
            format!("{peak:.1} MiB peak; {kept_up:.1} MiB over the steps it kept up with"),
            peak < 16.0,
            format!(
                "by {:.1} MiB ({:.1} MiB where it kept up)",
                peak - 16.0,
                kept_up - 16.0
            ),
        );
        row(
            "RSS under 8 MiB idle",
            format!("{:.1} MiB", default.idle.rss_mib_avg),
            default.idle.rss_mib_avg < 8.0,
            format!("by {:.1} MiB", default.idle.rss_mib_avg - 8.0),
        );
        if let Some(sat) = &default.saturation {
            row(
                "saturation above 5000 transfers/s",
                format!("{:.0}/s", sat.commands_per_second),
                sat.commands_per_second > 5000.0,
                format!(
                    "{:.0}% of the goal",
                    100.0 * sat.commands_per_second / 5000.0
                ),
            );
        }
        md.push('\n');
        md
    }

    /// This build's figures as ratios of the baseline's (`--baseline`), same run.
    pub(crate) fn against_baseline(&self) -> String {
        let find = |name: &str| self.variants.iter().find(|v| v.name == name);
        let (Some(new), Some(old)) = (find("default"), find("baseline")) else {
            return String::new();
        };
        let mut md = String::from(
            "## This build ÷ the baseline (same run; below 1 is better, except rates)\n\n\
             | figure | this build | baseline | ratio |\n|---|---:|---:|---:|\n",
        );
        let mut row = |figure: String, new: Option<f64>, old: Option<f64>, unit: &str| {
            if let (Some(new), Some(old)) = (new, old) {
                let _ = writeln!(
                    md,
                    "| {figure} | {new:.1} {unit} | {old:.1} {unit} | {:.2} |",
                    new / old
                );
            }
        };
        let (n, o) = (&new.idle_memory, &old.idle_memory);
        row(
            "idle RSS".into(),
            Some(new.idle.rss_mib_avg),
            Some(old.idle.rss_mib_avg),
            "MiB",
        );
        row("idle Pss".into(), mib(n.pss_kib), mib(o.pss_kib), "MiB");
        row(
            "idle Private".into(),
            mib(n.private_kib),
            mib(o.private_kib),
            "MiB",
        );
        row(
            "idle Anonymous".into(),
            mib(Some(n.anonymous_kib)),
            mib(Some(o.anonymous_kib)),
            "MiB",
        );
        for n in &new.steps {
            let Some(o) = old.at(n.target_per_second) else {
                continue;
            };
            let rate = n.target_per_second;
            row(
                format!("p50 at {rate}/s"),
                Some(n.p50_ms),
                Some(o.p50_ms),
                "ms",
            );
            row(
                format!("p99 at {rate}/s"),
                Some(n.p99_ms),
                Some(o.p99_ms),
                "ms",
            );
            row(
                format!("CPU at {rate}/s"),
                Some(n.cpu_percent_avg),
                Some(o.cpu_percent_avg),
                "%",
            );
            row(
                format!("stack CPU per 1,000 commands at {rate}/s"),
                n.cpu_ms_per_1000.stack,
                o.cpu_ms_per_1000.stack,
                "ms",
            );
            row(
                format!("RSS peak at {rate}/s"),
                Some(n.rss_mib_peak),
                Some(o.rss_mib_peak),
                "MiB",
            );
        }
        if let (Some(n), Some(o)) = (&new.saturation, &old.saturation) {
            row(
                "drain rate".into(),
                Some(n.commands_per_second),
                Some(o.commands_per_second),
                "/s",
            );
            row(
                "drain: stack CPU per 1,000 commands".into(),
                n.cpu_ms_per_1000.stack,
                o.cpu_ms_per_1000.stack,
                "ms",
            );
        }
        md.push('\n');
        md
    }

    pub(crate) fn ratios(&self) -> String {
        let mut md = String::from("## Side by side (ratios, same run)\n\n");
        let find = |name: &str| self.variants.iter().find(|v| v.name == name);
        let (Some(default), linger, single) = (
            find("default"),
            find("linger-100"),
            find("one-per-transaction"),
        ) else {
            return md;
        };
        for (other, label) in [(find("linger-5"), "linger 5 ms"), (linger, "linger 100 ms")] {
            for rate in [100, 1000] {
                if let (Some(d), Some(l)) = (default.at(rate), other.and_then(|l| l.at(rate))) {
                    let _ = writeln!(
                        md,
                        "- p99 at {rate}/s, {label} ÷ linger 0 ms: {:.1}× ({:.1} ms vs {:.1} ms)",
                        l.p99_ms / d.p99_ms,
                        l.p99_ms,
                        d.p99_ms
                    );
                }
            }
        }
        if let (Some(d), Some(s)) = (default.at(1000), single.and_then(|s| s.at(1000))) {
            let _ = writeln!(
                md,
                "- CPU at 1000/s, one command per transaction ÷ batched: {:.2}× ({:.0}% vs {:.0}%)",
                s.cpu_percent_avg / d.cpu_percent_avg,
                s.cpu_percent_avg,
                d.cpu_percent_avg
            );
            let _ = writeln!(
                md,
                "- p99 at 1000/s, one command per transaction ÷ batched: {:.1}× ({:.1} ms vs {:.1} ms)",
                s.p99_ms / d.p99_ms,
                s.p99_ms,
                d.p99_ms
            );
            if let (Some(sc), Some(dc)) = (s.cpu_ms_per_1000.stack, d.cpu_ms_per_1000.stack) {
                let _ = writeln!(
                    md,
                    "- stack CPU per 1,000 commands at 1000/s, one command per transaction ÷ batched: {:.2}× ({sc:.0} ms vs {dc:.0} ms)",
                    sc / dc
                );
            }
        }
        if let Some(http) = find("http-on") {
            let _ = writeln!(
                md,
                "- idle RSS, health and metrics served ÷ not: {:.2}× ({:.1} MiB vs {:.1} MiB)",
                http.idle.rss_mib_avg / default.idle.rss_mib_avg,
                http.idle.rss_mib_avg,
                default.idle.rss_mib_avg
            );
            if let (Some(d), Some(h)) = (default.at(1000), http.at(1000)) {
                let _ = writeln!(
                    md,
                    "- at 1000/s, health and metrics served ÷ not: CPU {:.2}× ({:.0}% vs {:.0}%), p99 {:.2}× ({:.1} ms vs {:.1} ms)",
                    h.cpu_percent_avg / d.cpu_percent_avg,
                    h.cpu_percent_avg,
                    d.cpu_percent_avg,
                    h.p99_ms / d.p99_ms,
                    h.p99_ms,
                    d.p99_ms
                );
            }
        }
        if let (Some(d), Some(s)) = (
            &default.saturation,
            single.and_then(|s| s.saturation.as_ref()),
        ) {
            let _ = writeln!(
                md,
                "- saturation, batched ÷ one command per transaction: {:.1}× ({:.0}/s vs {:.0}/s)",
                d.commands_per_second / s.commands_per_second,
                d.commands_per_second,
                s.commands_per_second
            );
        }
        md
    }
}
