//! The figures, written as JSON (every number), Markdown (tables, goals, ratios) and
//! SVG plots (latency, CPU and memory against load).

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::Variant;
use crate::client::Stack;
use crate::procstat::{MemoryBreakdown, Usage};

/// A plotted line: label, variant index, series index, points (load, value).
type PlotLine = (String, usize, usize, Vec<(f64, f64)>);

#[derive(Serialize, Deserialize)]
pub struct Step {
    pub target_per_second: u32,
    pub commands: usize,
    pub answered: usize,
    pub achieved_per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub cpu_percent_avg: f64,
    pub cpu_percent_peak: f64,
    pub rss_mib_avg: f64,
    pub rss_mib_peak: f64,
}

impl Step {
    /// Latency broke down: answers missing, or p99 past a second.
    pub fn broken(&self) -> bool {
        self.answered < self.commands || self.p99_ms > 1000.0
    }
}

#[derive(Serialize, Deserialize)]
pub struct Saturation {
    pub commands: usize,
    pub answered: usize,
    pub seconds_from_start: f64,
    pub commands_per_second: f64,
    pub cpu_percent_avg: f64,
    pub rss_mib_peak: f64,
}

#[derive(Default, Serialize, Deserialize)]
pub struct Correctness {
    pub commands: usize,
    pub confirmed: usize,
    pub failed: usize,
    pub unanswered: usize,
    pub answers_disagreeing: usize,
    pub duplicate_answers: usize,
    pub accounts_checked: usize,
    pub balances_wrong: usize,
}

impl Correctness {
    pub fn ok(&self) -> bool {
        self.unanswered == 0 && self.answers_disagreeing == 0 && self.balances_wrong == 0
    }

    pub fn summary(&self) -> String {
        format!(
            "{} ({} commands: {} confirmed, {} failed, {} unanswered, {} disagreeing, {} duplicate answers; \
             {} balances checked, {} wrong)",
            if self.ok() { "OK" } else { "FAILED" },
            self.commands,
            self.confirmed,
            self.failed,
            self.unanswered,
            self.answers_disagreeing,
            self.duplicate_answers,
            self.accounts_checked,
            self.balances_wrong
        )
    }
}

#[derive(Serialize, Deserialize)]
pub struct VariantResult {
    pub name: String,
    pub description: String,
    pub idle: Usage,
    pub idle_memory: MemoryBreakdown,
    pub steps: Vec<Step>,
    pub saturation: Option<Saturation>,
    pub correctness: Correctness,
}

impl VariantResult {
    pub fn new(variant: &Variant) -> Self {
        VariantResult {
            name: variant.name.to_string(),
            description: variant.description.to_string(),
            idle: Usage::default(),
            idle_memory: MemoryBreakdown::default(),
            steps: Vec::new(),
            saturation: None,
            correctness: Correctness::default(),
        }
    }

    fn at(&self, rate: u32) -> Option<&Step> {
        self.steps.iter().find(|s| s.target_per_second == rate)
    }
}

#[derive(Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kafka_version: String,
    pub postgres: String,
    pub step_seconds: u64,
    pub date: String,
}

#[derive(Serialize, Deserialize)]
pub struct Report {
    pub machine: Machine,
    pub variants: Vec<VariantResult>,
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

impl Report {
    pub fn new(stack: &Stack, step_seconds: u64) -> Report {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Report {
            machine: Machine {
                cpu,
                cores: std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(0),
                memory_gib: memory_kib / 1024.0 / 1024.0,
                kafka_version: stack.vars.get("KAFKA_VERSION").cloned().unwrap_or_default(),
                postgres: command_output("psql", &["--version"]),
                step_seconds,
                date: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            },
            variants: Vec::new(),
        }
    }

    pub fn write(&self, out: &Path) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(out.join("report.json"), json)?;
        self.write_readable(out)
    }

    /// The Markdown report and the plots, from the figures alone.
    pub fn write_readable(&self, out: &Path) -> std::io::Result<()> {
        std::fs::write(out.join("report.md"), self.markdown())?;
        self.plot(
            &out.join("latency.svg"),
            "End-to-end latency (ms) against load",
            "ms",
            true,
            |s| vec![("p50", s.p50_ms), ("p99", s.p99_ms), ("p99.9", s.p999_ms)],
        )?;
        self.plot(
            &out.join("cpu.svg"),
            "Handler CPU (% of one core) against load",
            "% of a core",
            false,
            |s| vec![("cpu", s.cpu_percent_avg)],
        )?;
        self.plot(
            &out.join("memory.svg"),
            "Handler resident memory (MiB) against load",
            "MiB",
            false,
            |s| vec![("rss peak", s.rss_mib_peak)],
        )?;
        Ok(())
    }

    fn markdown(&self) -> String {
        let m = &self.machine;
        let mut md = String::new();
        let _ = writeln!(md, "# Command handler benchmark\n");
        let _ = writeln!(
            md,
            "Machine: {} ({} cores, {:.0} GiB), Apache Kafka {}, {}, with Kafka, PostgreSQL, the registry \
             stand-in and the load generator on the same machine. {} s per load step. {}.\n",
            m.cpu, m.cores, m.memory_gib, m.kafka_version, m.postgres, m.step_seconds, m.date
        );
        let _ = writeln!(
            md,
            "Plots: [latency](latency.svg), [CPU](cpu.svg), [memory](memory.svg); every figure in [report.json](report.json).\n"
        );
        for v in &self.variants {
            let _ = writeln!(md, "## {}: {}\n", v.name, v.description);
            let _ = writeln!(
                md,
                "Idle: RSS {:.1} MiB, CPU {:.1}%.\n",
                v.idle.rss_mib_avg, v.idle.cpu_percent_avg
            );
            let _ = writeln!(
                md,
                "| load /s | achieved /s | answered | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | CPU % avg | CPU % peak | RSS MiB avg | RSS MiB peak |"
            );
            let _ = writeln!(
                md,
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for s in &v.steps {
                let _ = writeln!(
                    md,
                    "| {} | {:.0} | {}/{} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.1} | {:.1} |",
                    s.target_per_second,
                    s.achieved_per_second,
                    s.answered,
                    s.commands,
                    s.p50_ms,
                    s.p90_ms,
                    s.p99_ms,
                    s.p999_ms,
                    s.max_ms,
                    s.cpu_percent_avg,
                    s.cpu_percent_peak,
                    s.rss_mib_avg,
                    s.rss_mib_peak
                );
            }
            if let Some(sat) = &v.saturation {
                let _ = writeln!(
                    md,
                    "\nSaturation: {} preloaded transfers drained at **{:.0} commands/s** ({}/{} answered, {:.1} s from start, CPU {:.0}%, RSS peak {:.1} MiB).",
                    sat.commands,
                    sat.commands_per_second,
                    sat.answered,
                    sat.commands,
                    sat.seconds_from_start,
                    sat.cpu_percent_avg,
                    sat.rss_mib_peak
                );
            }
            let _ = writeln!(md, "\nCorrectness: {}\n", v.correctness.summary());
        }
        if let Some(default) = self.variants.first() {
            let m = &default.idle_memory;
            let _ = writeln!(
                md,
                "## Where the idle memory goes ({})\n\nRSS {:.1} MiB, of which {:.1} MiB private (anonymous); the rest \
                 is pages of the binary and shared libraries, shared with every process that maps them.\n\n| mapping | RSS kB |\n|---|---:|",
                default.name,
                m.rss_kib as f64 / 1024.0,
                m.anonymous_kib as f64 / 1024.0
            );
            for (name, kib) in &m.mappings {
                let _ = writeln!(md, "| `{name}` | {kib} |");
            }
            md.push('\n');
        }
        md.push_str(&self.against_baseline());
        md.push_str(&self.goals());
        md.push_str(&self.ratios());
        md
    }

    fn goals(&self) -> String {
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
    fn against_baseline(&self) -> String {
        let find = |name: &str| self.variants.iter().find(|v| v.name == name);
        let (Some(new), Some(old)) = (find("default"), find("baseline")) else {
            return String::new();
        };
        let mut md = String::from(
            "## This build ÷ the baseline (same run; below 1 is better, except rates)\n\n\
             | figure | this build | baseline | ratio |\n|---|---:|---:|---:|\n",
        );
        let mut row = |figure: String, new: f64, old: f64, unit: &str| {
            let _ = writeln!(
                md,
                "| {figure} | {new:.1} {unit} | {old:.1} {unit} | {:.2} |",
                new / old
            );
        };
        row(
            "idle RSS".into(),
            new.idle.rss_mib_avg,
            old.idle.rss_mib_avg,
            "MiB",
        );
        for n in &new.steps {
            let Some(o) = old.at(n.target_per_second) else {
                continue;
            };
            let rate = n.target_per_second;
            row(format!("p50 at {rate}/s"), n.p50_ms, o.p50_ms, "ms");
            row(format!("p99 at {rate}/s"), n.p99_ms, o.p99_ms, "ms");
            row(
                format!("CPU at {rate}/s"),
                n.cpu_percent_avg,
                o.cpu_percent_avg,
                "%",
            );
            row(
                format!("RSS peak at {rate}/s"),
                n.rss_mib_peak,
                o.rss_mib_peak,
                "MiB",
            );
        }
        if let (Some(n), Some(o)) = (&new.saturation, &old.saturation) {
            row(
                "drain rate".into(),
                n.commands_per_second,
                o.commands_per_second,
                "/s",
            );
        }
        md.push('\n');
        md
    }

    fn ratios(&self) -> String {
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

    /// One line per variant and series, x = load (log scale).
    fn plot(
        &self,
        path: &Path,
        title: &str,
        unit: &str,
        log_y: bool,
        series: impl Fn(&Step) -> Vec<(&'static str, f64)>,
    ) -> std::io::Result<()> {
        let lines: Vec<PlotLine> = self
            .variants
            .iter()
            .enumerate()
            .flat_map(|(vi, v)| {
                let names: Vec<&str> = v
                    .steps
                    .first()
                    .map(|s| series(s).iter().map(|(n, _)| *n).collect())
                    .unwrap_or_default();
                names
                    .into_iter()
                    .enumerate()
                    .map(|(i, name)| {
                        let points = v
                            .steps
                            .iter()
                            .map(|s| (s.target_per_second as f64, series(s)[i].1.max(0.01)))
                            .collect();
                        (format!("{} {name}", v.name), vi, i, points)
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let (x_max, y_max) = lines
            .iter()
            .flat_map(|(_, _, _, p)| p.iter())
            .fold((100.0f64, 1.0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
        let draw = || -> Result<(), Box<dyn std::error::Error>> {
            let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root);
            chart
                .caption(title, ("sans-serif", 22))
                .margin(16)
                .x_label_area_size(44)
                .y_label_area_size(64);
            let x = (50f64..x_max * 1.5).log_scale();
            // One colour per variant; thicker lines for higher percentiles.
            let palette = [
                RGBColor(31, 119, 180),
                RGBColor(214, 39, 40),
                RGBColor(44, 160, 44),
                RGBColor(148, 103, 189),
                RGBColor(255, 127, 14),
            ];
            macro_rules! finish {
                ($chart:expr) => {{
                    let mut chart = $chart;
                    chart
                        .configure_mesh()
                        .x_desc("commands per second (log)")
                        .y_desc(unit)
                        .draw()?;
                    for (name, variant, series_index, points) in &lines {
                        let style = palette[variant % palette.len()]
                            .stroke_width(1 + 2 * *series_index as u32);
                        chart
                            .draw_series(LineSeries::new(points.clone(), style))?
                            .label(name.clone())
                            .legend(move |(x, y)| {
                                PathElement::new(vec![(x, y), (x + 18, y)], style)
                            });
                    }
                    chart
                        .configure_series_labels()
                        .background_style(WHITE.mix(0.85))
                        .border_style(BLACK)
                        .position(SeriesLabelPosition::UpperLeft)
                        .draw()?;
                }};
            }
            if log_y {
                finish!(chart.build_cartesian_2d(x, (0.1f64..y_max * 2.0).log_scale())?);
            } else {
                finish!(chart.build_cartesian_2d(x, 0f64..y_max * 1.2)?);
            }
            root.present()?;
            Ok(())
        };
        draw().map_err(|e| std::io::Error::other(e.to_string()))
    }
}
