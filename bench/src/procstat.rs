//! The handler's resident memory and every process's CPU (see `cpu`), read from /proc
//! about once a second and at the edges of each measured window.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cpu::{Counters, CpuPerThousand, CpuPercent, Processes};

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    cpu: Counters,
    rss_kib: Option<u64>,
    /// Taken by the clock, not at a window's edge: only these make the CPU peak, whose
    /// spans must be long enough for the tick counts to mean something.
    periodic: bool,
}

impl Sample {
    fn take(processes: &Processes, ticks_per_second: f64, periodic: bool) -> Sample {
        Sample {
            at: Instant::now(),
            cpu: Counters::read(processes, ticks_per_second),
            rss_kib: rss_kib(processes.handler),
            periodic,
        }
    }
}

/// The handler's CPU share (100 = one core) and memory over a window of time.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub cpu_percent_avg: f64,
    pub cpu_percent_peak: f64,
    pub rss_mib_avg: f64,
    pub rss_mib_peak: f64,
}

/// What the samples show over a window: the handler's usage, every process's CPU,
/// and the window's length.
pub struct Window {
    pub usage: Usage,
    pub cpu: CpuPercent,
    pub seconds: f64,
}

impl Window {
    /// CPU-milliseconds per 1,000 of the commands answered in the window.
    pub fn per_thousand(&self, answered: usize) -> CpuPerThousand {
        CpuPerThousand::of(&self.cpu, self.seconds, answered)
    }
}

pub struct Sampler {
    processes: Processes,
    ticks_per_second: f64,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    pub fn start(processes: Processes) -> Sampler {
        let ticks_per_second = clock_ticks();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (samples_w, stop_r) = (Arc::clone(&samples), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !stop_r.load(Ordering::Acquire) {
                // Read under the lock, so that samples stay in the order of their times.
                let mut samples = samples_w.lock().unwrap();
                samples.push(Sample::take(&processes, ticks_per_second, true));
                drop(samples);
                std::thread::sleep(Duration::from_millis(1000));
            }
        });
        Sampler {
            processes,
            ticks_per_second,
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// A sample now, at a window's edge, so that the window's figures need not be
    /// interpolated over a whole sampling period.
    pub fn sample_now(&self) {
        let mut samples = self.samples.lock().unwrap();
        samples.push(Sample::take(&self.processes, self.ticks_per_second, false));
    }

    /// The figures between two moments. CPU counters are interpolated to the moments
    /// themselves, so that a window shorter than the sampling period still has its
    /// figures; memory is read from the samples spanning the window.
    pub fn window(&self, from: Instant, to: Instant) -> Window {
        let samples = self.samples.lock().unwrap();
        let (Some((start_at, start)), Some((end_at, end))) =
            (counters_at(&samples, from), counters_at(&samples, to))
        else {
            return Window {
                usage: Usage::default(),
                cpu: CpuPercent::default(),
                seconds: 0.0,
            };
        };
        let cpu = CpuPercent::between(&start, &end, end_at.duration_since(start_at).as_secs_f64());
        let spanning = spanning(&samples, from, to);
        let cpu_percent_avg = cpu.handler.unwrap_or(0.0);
        let rss: Vec<f64> = spanning
            .iter()
            .filter_map(|s| s.rss_kib)
            .map(|kib| kib as f64 / 1024.0)
            .collect();
        let usage = Usage {
            cpu_percent_avg,
            cpu_percent_peak: handler_peak(spanning).unwrap_or(cpu_percent_avg),
            rss_mib_avg: rss.iter().sum::<f64>() / rss.len().max(1) as f64,
            rss_mib_peak: rss.iter().copied().fold(0.0, f64::max),
        };
        Window {
            usage,
            cpu,
            seconds: to.saturating_duration_since(from).as_secs_f64(),
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The counters at `at`, interpolated between the samples either side; before the
/// first sample or after the last, that sample's (and its time).
fn counters_at(samples: &[Sample], at: Instant) -> Option<(Instant, Counters)> {
    let after = samples.iter().position(|s| s.at >= at);
    match after {
        Some(0) => samples.first().map(|s| (s.at, s.cpu)),
        Some(i) => {
            let (a, b) = (&samples[i - 1], &samples[i]);
            let span = b.at.duration_since(a.at).as_secs_f64();
            let fraction = if span > 0.0 {
                at.duration_since(a.at).as_secs_f64() / span
            } else {
                0.0
            };
            Some((at, a.cpu.towards(&b.cpu, fraction)))
        }
        None => samples.last().map(|s| (s.at, s.cpu)),
    }
}

/// The samples inside the window and the nearest one either side of it.
fn spanning(samples: &[Sample], from: Instant, to: Instant) -> &[Sample] {
    let first = samples.iter().rposition(|s| s.at <= from).unwrap_or(0);
    let last = samples
        .iter()
        .position(|s| s.at >= to)
        .unwrap_or(samples.len().saturating_sub(1));
    samples.get(first..=last).unwrap_or_default()
}

/// The handler's highest CPU share between two periodic samples in a row.
fn handler_peak(samples: &[Sample]) -> Option<f64> {
    let periodic: Vec<&Sample> = samples.iter().filter(|s| s.periodic).collect();
    periodic
        .windows(2)
        .filter_map(|w| {
            let seconds = w[1].at.duration_since(w[0].at).as_secs_f64();
            Some(100.0 * (w[1].cpu.handler? - w[0].cpu.handler?) / seconds)
        })
        .reduce(f64::max)
}

pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A `Name:   1234 kB` line of a /proc file, in kB.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_field(&status, "VmRSS")
}

/// Where a process's resident memory is: kB per mapping (file, `[heap]`, or anonymous
/// for thread stacks and allocator arenas), largest first, and its totals.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct MemoryBreakdown {
    pub rss_kib: u64,
    pub anonymous_kib: u64,
    /// Proportional set size: shared pages divided among the processes that map them.
    #[serde(default)]
    pub pss_kib: Option<u64>,
    /// Pages no other process maps: Private_Clean + Private_Dirty.
    #[serde(default)]
    pub private_kib: Option<u64>,
    pub mappings: Vec<(String, u64)>,
}

pub fn memory_breakdown(pid: u32) -> MemoryBreakdown {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut by_name: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut current = String::new();
    let (mut rss_kib, mut anonymous_kib) = (0, 0);
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        let kib = || {
            line.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if first.contains('-') && !first.ends_with(':') {
            current = words
                .nth(4)
                .unwrap_or("anonymous (stacks, allocator arenas)")
                .to_string();
        } else if first == "Rss:" {
            *by_name.entry(current.clone()).or_default() += kib();
            rss_kib += kib();
        } else if first == "Anonymous:" {
            anonymous_kib += kib();
        }
    }
    let mut mappings: Vec<(String, u64)> =
        by_name.into_iter().filter(|(_, kib)| *kib >= 100).collect();
    mappings.sort_by_key(|(_, kib)| std::cmp::Reverse(*kib));
    // The totals from smaps_rollup where it can be read: the kernel sums them unrounded.
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let private = kib_field(&rollup, "Private_Clean")
        .and_then(|clean| Some(clean + kib_field(&rollup, "Private_Dirty")?));
    MemoryBreakdown {
        rss_kib: kib_field(&rollup, "Rss").unwrap_or(rss_kib),
        anonymous_kib: kib_field(&rollup, "Anonymous").unwrap_or(anonymous_kib),
        pss_kib: kib_field(&rollup, "Pss"),
        private_kib: private,
        mappings,
    }
}
