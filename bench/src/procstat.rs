//! The handler process's CPU and resident memory, read from /proc about once a second.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    /// User + system CPU time used so far.
    cpu_seconds: f64,
    rss_kib: u64,
}

/// CPU share (100 = one core) and memory over a window of time.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub cpu_percent_avg: f64,
    pub cpu_percent_peak: f64,
    pub rss_mib_avg: f64,
    pub rss_mib_peak: f64,
}

pub struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let ticks_per_second = clock_ticks();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (samples_w, stop_r) = (Arc::clone(&samples), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !stop_r.load(Ordering::Acquire) {
                if let Some(sample) = read(pid, ticks_per_second) {
                    samples_w.lock().unwrap().push(sample);
                }
                std::thread::sleep(Duration::from_millis(1000));
            }
        });
        Sampler {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// Usage between two moments, from the samples taken then.
    pub fn usage(&self, from: Instant, to: Instant) -> Usage {
        let samples: Vec<Sample> = self
            .samples
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|s| s.at >= from && s.at <= to)
            .collect();
        if samples.len() < 2 {
            return Usage::default();
        }
        let (first, last) = (samples[0], samples[samples.len() - 1]);
        let span = last.at.duration_since(first.at).as_secs_f64();
        let cpu_percent_peak = samples
            .windows(2)
            .map(|w| {
                100.0 * (w[1].cpu_seconds - w[0].cpu_seconds)
                    / w[1].at.duration_since(w[0].at).as_secs_f64()
            })
            .fold(0.0, f64::max);
        let mib = |kib: u64| kib as f64 / 1024.0;
        Usage {
            cpu_percent_avg: 100.0 * (last.cpu_seconds - first.cpu_seconds) / span,
            cpu_percent_peak,
            rss_mib_avg: samples.iter().map(|s| mib(s.rss_kib)).sum::<f64>() / samples.len() as f64,
            rss_mib_peak: samples.iter().map(|s| mib(s.rss_kib)).fold(0.0, f64::max),
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

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn read(pid: u32, ticks_per_second: f64) -> Option<Sample> {
    let at = Instant::now();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some(Sample {
        at,
        cpu_seconds: ticks / ticks_per_second,
        rss_kib,
    })
}

/// Where a process's resident memory is: kB per mapping (file, `[heap]`, or anonymous
/// for thread stacks and allocator arenas), largest first, and its private total.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct MemoryBreakdown {
    pub rss_kib: u64,
    pub anonymous_kib: u64,
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
    MemoryBreakdown {
        rss_kib,
        anonymous_kib,
        mappings,
    }
}
