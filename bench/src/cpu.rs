//! CPU time of each process of the stack and of the whole machine, read from /proc:
//! the handler, the Kafka broker, PostgreSQL (the postmaster and its backends), the
//! load generator (this process) and all cores together. A file that cannot be read
//! leaves its figure out (`None`, printed "—") rather than failing the run.

use serde::{Deserialize, Serialize};

use crate::client::Stack;

/// The processes whose CPU is read; `None` when the stack's env file does not name one.
#[derive(Clone, Copy, Debug)]
pub struct Processes {
    pub handler: u32,
    pub broker: Option<u32>,
    pub postgres: Option<u32>,
    pub load_generator: u32,
}

impl Processes {
    pub fn of(stack: &Stack, handler: u32) -> Processes {
        let pid = |name: &str| stack.vars.get(name).and_then(|v| v.parse().ok());
        Processes {
            handler,
            broker: pid("KAFKA_PID"),
            postgres: pid("POSTGRES_PID"),
            load_generator: std::process::id(),
        }
    }
}

/// One figure for each process of the stack and for the whole machine.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct PerProcess {
    pub handler: Option<f64>,
    pub broker: Option<f64>,
    pub postgres: Option<f64>,
    pub load_generator: Option<f64>,
    /// For counters, the busy time of all cores together: everything but idle and I/O
    /// wait.
    pub machine: Option<f64>,
}

/// CPU seconds used so far (user + system) by each, at one moment.
pub type Counters = PerProcess;

/// Average CPU over a window, in % of one core: 100 is one core busy, and for the
/// machine 200 is both cores of a two-core machine busy.
pub type CpuPercent = PerProcess;

impl PerProcess {
    pub fn read(processes: &Processes, ticks_per_second: f64) -> Counters {
        let seconds = |ticks: Option<u64>| ticks.map(|t| t as f64 / ticks_per_second);
        let own = |pid: u32| seconds(stat(pid).map(|s| s.own_ticks));
        Counters {
            handler: own(processes.handler),
            broker: processes.broker.and_then(own),
            postgres: seconds(processes.postgres.and_then(postgres_ticks)),
            load_generator: own(processes.load_generator),
            machine: seconds(machine_busy_ticks()),
        }
    }

    /// Each counter `fraction` of the way from `self` to `later`.
    pub fn towards(&self, later: &Counters, fraction: f64) -> Counters {
        self.combine(later, |a, b| a + (b - a) * fraction)
    }

    fn combine(&self, other: &PerProcess, f: impl Fn(f64, f64) -> f64) -> PerProcess {
        let both = |a: Option<f64>, b: Option<f64>| Some(f(a?, b?));
        PerProcess {
            handler: both(self.handler, other.handler),
            broker: both(self.broker, other.broker),
            postgres: both(self.postgres, other.postgres),
            load_generator: both(self.load_generator, other.load_generator),
            machine: both(self.machine, other.machine),
        }
    }

    /// The CPU used between two readings of the counters, `seconds` apart.
    pub fn between(start: &Counters, end: &Counters, seconds: f64) -> CpuPercent {
        if seconds <= 0.0 {
            return CpuPercent::default();
        }
        end.combine(start, |e, s| 100.0 * (e - s).max(0.0) / seconds)
    }

    /// What serves the commands: handler, broker and PostgreSQL together.
    pub fn stack(&self) -> Option<f64> {
        Some(self.handler? + self.broker? + self.postgres?)
    }
}

/// CPU-milliseconds used per 1,000 commands answered in a window.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct CpuPerThousand {
    pub handler: Option<f64>,
    pub broker: Option<f64>,
    pub postgres: Option<f64>,
    /// Handler, broker and PostgreSQL together.
    pub stack: Option<f64>,
    pub machine: Option<f64>,
}

impl CpuPerThousand {
    pub fn of(cpu: &CpuPercent, seconds: f64, answered: usize) -> CpuPerThousand {
        // CPU seconds × 1000 ms, over thousands of commands.
        let per = |percent: Option<f64>| {
            let thousands = answered as f64 / 1000.0;
            percent
                .filter(|_| answered > 0 && seconds > 0.0)
                .map(|p| p / 100.0 * seconds * 1000.0 / thousands)
        };
        CpuPerThousand {
            handler: per(cpu.handler),
            broker: per(cpu.broker),
            postgres: per(cpu.postgres),
            stack: per(cpu.stack()),
            machine: per(cpu.machine),
        }
    }
}

/// CPU seconds (user + system) one process used so far.
pub fn process_seconds(pid: u32, ticks_per_second: f64) -> Option<f64> {
    stat(pid).map(|s| s.own_ticks as f64 / ticks_per_second)
}

/// The figures of /proc/PID/stat used here.
struct Stat {
    parent: u32,
    /// utime + stime.
    own_ticks: u64,
    /// cutime + cstime: the children that exited and were waited for.
    exited_children_ticks: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3, state.
    let after_name = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let number = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    Some(Stat {
        parent: number(4)? as u32,
        own_ticks: number(14)? + number(15)?,
        exited_children_ticks: number(16)? + number(17)?,
    })
}

/// The postmaster's own time, its exited backends' and its live backends'.
fn postgres_ticks(postmaster: u32) -> Option<u64> {
    let own = stat(postmaster)?;
    let live_children: u64 = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .filter(|s| s.parent == postmaster)
        .map(|s| s.own_ticks)
        .sum();
    Some(own.own_ticks + own.exited_children_ticks + live_children)
}

/// From /proc/stat's first line: user nice system idle iowait irq softirq steal (guest
/// time is counted in user and nice already).
fn machine_busy_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let (idle, iowait) = (*ticks.get(3)?, *ticks.get(4)?);
    Some(ticks.iter().sum::<u64>() - idle - iowait)
}
