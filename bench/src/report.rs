//! The figures, written as JSON (every number), Markdown (tables, goals, ratios; see
//! `markdown` and `comparison`) and SVG plots (latency, CPU and memory against load).
//! Figures added since reports were first written are `#[serde(default)]`, so that older
//! report.json files still load.

use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::Variant;
use crate::client::Stack;
use crate::cpu::{CpuPerThousand, CpuPercent};
use crate::floor::Floor;
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
    /// Every process of the stack; `cpu_percent_*` above are the handler's.
    #[serde(default)]
    pub cpu: CpuPercent,
    #[serde(default)]
    pub cpu_ms_per_1000: CpuPerThousand,
    /// Per stage of the handler's loop, from its own histograms (variants serving
    /// HTTP only).
    #[serde(default)]
    pub stages: Vec<crate::stages::StageTime>,
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
    #[serde(default)]
    pub cpu: CpuPercent,
    #[serde(default)]
    pub cpu_ms_per_1000: CpuPerThousand,
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
    /// Every process of the stack while the handler idles.
    #[serde(default)]
    pub idle_cpu: CpuPercent,
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
            idle_cpu: CpuPercent::default(),
            idle_memory: MemoryBreakdown::default(),
            steps: Vec::new(),
            saturation: None,
            correctness: Correctness::default(),
        }
    }

    pub fn at(&self, rate: u32) -> Option<&Step> {
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

impl Machine {
    /// This machine, the stack's versions and the date now.
    pub fn read(stack: &Stack, step_seconds: u64) -> Machine {
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
        Machine {
            cpu,
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            memory_gib: memory_kib / 1024.0 / 1024.0,
            kafka_version: stack.vars.get("KAFKA_VERSION").cloned().unwrap_or_default(),
            postgres: command_output("psql", &["--version"]),
            step_seconds,
            date: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct Report {
    pub machine: Machine,
    /// Measured once at the start of the run; `None` in reports from before it was.
    #[serde(default)]
    pub floor: Option<Floor>,
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
        Report {
            machine: Machine::read(stack, step_seconds),
            floor: None,
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
