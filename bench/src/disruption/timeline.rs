//! The open-loop load under a disruption: commands (or records) sent at a fixed rate
//! whatever happens, while the disruption's script runs on a thread of its own and marks
//! its moments on a [`Timeline`]; the load goes on after the script until answering has
//! caught up again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long each part of a scenario lasts.
#[derive(Clone, Debug)]
pub struct Pace {
    /// Load before the first disruption.
    pub warm_up: Duration,
    /// From one instance's restart to the next one's SIGTERM.
    pub between_restarts: Duration,
    /// How long a broker stays down.
    pub broker_down: Duration,
    /// Load after the script ended, at least.
    pub tail: Duration,
}

impl Pace {
    pub fn new(quick: bool) -> Pace {
        let seconds = Duration::from_secs;
        if quick {
            Pace {
                warm_up: seconds(4),
                between_restarts: seconds(4),
                broker_down: seconds(10),
                tail: seconds(5),
            }
        } else {
            Pace {
                warm_up: seconds(10),
                between_restarts: seconds(8),
                broker_down: seconds(10),
                tail: seconds(15),
            }
        }
    }
}

/// How long the load goes on at most once the tail is over and answering still lags.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(120);

/// A moment of the disruption, in seconds since the load began.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Mark {
    pub at_s: f64,
    pub what: String,
    /// A disruption itself (a signal, a broker stopped), not its consequence.
    pub action: bool,
}

/// How a handler instance exited after a signal.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Exit {
    pub instance: usize,
    pub signal: String,
    /// Seconds since the load began.
    pub signalled_at_s: f64,
    pub exited_at_s: f64,
    /// "code 0", "signal 9", or "unknown".
    pub status: String,
}

/// The moments of one run's disruption, written by its script's thread.
pub struct Timeline {
    start: Instant,
    marks: Mutex<Vec<Mark>>,
    exits: Mutex<Vec<Exit>>,
}

impl Timeline {
    fn new(start: Instant) -> Timeline {
        Timeline {
            start,
            marks: Mutex::new(Vec::new()),
            exits: Mutex::new(Vec::new()),
        }
    }

    /// Seconds since the load began.
    pub fn now_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// A disruption happens now; when, in seconds since the load began.
    pub fn action(&self, what: impl Into<String>) -> f64 {
        self.push(what.into(), true)
    }

    /// Something the disruption led to happens now.
    pub fn mark(&self, what: impl Into<String>) -> f64 {
        self.push(what.into(), false)
    }

    fn push(&self, what: String, action: bool) -> f64 {
        let at_s = self.now_s();
        eprintln!("   {at_s:>6.1} s  {what}");
        self.marks.lock().unwrap().push(Mark { at_s, what, action });
        at_s
    }

    /// Instance `instance`, signalled at `signalled_at_s`, has exited now.
    pub fn exited(
        &self,
        instance: usize,
        signal: &str,
        signalled_at_s: f64,
        status: Option<std::process::ExitStatus>,
    ) {
        use std::os::unix::process::ExitStatusExt;
        let status = match status {
            Some(s) => match (s.code(), s.signal()) {
                (Some(code), _) => format!("code {code}"),
                (None, Some(signal)) => format!("signal {signal}"),
                (None, None) => "unknown".to_string(),
            },
            None => "unknown".to_string(),
        };
        let exited_at_s = self.mark(format!(
            "i{instance} exited ({status}) {:.2} s after {signal}",
            self.now_s() - signalled_at_s
        ));
        self.exits.lock().unwrap().push(Exit {
            instance,
            signal: signal.to_string(),
            signalled_at_s,
            exited_at_s,
            status,
        });
    }
}

/// What the load is sent to: the handler (commands, answers) or a plain Kafka pair
/// (records, reads).
pub trait Subject {
    /// Sends command (record) number `k` of the load, now.
    fn send(&mut self, k: usize);
    /// Takes what was answered (read) within `wait`.
    fn take(&mut self, wait: Duration);
    /// When command `k` was first answered, if it was.
    fn first_answer(&self, k: usize) -> Option<Instant>;
}

/// What the open-loop load did.
pub struct Sent {
    pub start: Instant,
    /// When each command was sent, in order.
    pub at: Vec<Instant>,
    pub marks: Vec<Mark>,
    pub exits: Vec<Exit>,
    /// The script failed or panicked: why.
    pub script_error: Option<String>,
}

/// Sends `rate` commands a second to `subject`, each when due (open loop), while
/// `script` runs on a thread of its own; after it ends, for `pace.tail` and then until
/// the commands sent 2 to 3 s before were each answered within 1 s (at most
/// [`CATCH_UP_LIMIT`] more), so that the whole recovery shows. Then waits up to
/// `answer_limit` for the answers still missing.
pub fn open_loop<S, F>(
    subject: &mut S,
    rate: u32,
    pace: &Pace,
    answer_limit: Duration,
    script: F,
) -> Sent
where
    S: Subject,
    F: FnOnce(&Timeline) -> Result<(), String> + Send,
{
    let start = Instant::now();
    let timeline = Timeline::new(start);
    let mut at: Vec<Instant> = Vec::new();
    let script_result = std::thread::scope(|scope| {
        let script = scope.spawn(|| script(&timeline));
        let mut script_ended: Option<Instant> = None;
        let mut last_check = start;
        loop {
            let now = Instant::now();
            if script_ended.is_none() && script.is_finished() {
                script_ended = Some(now);
            }
            if let Some(ended) = script_ended
                && now >= ended + pace.tail
                && now.duration_since(last_check) >= Duration::from_millis(200)
            {
                last_check = now;
                if caught_up(subject, &at, now) || now >= ended + pace.tail + CATCH_UP_LIMIT {
                    break;
                }
            }
            let due_now = (start.elapsed().as_secs_f64() * rate as f64) as usize + 1;
            while at.len() < due_now {
                at.push(Instant::now());
                subject.send(at.len() - 1);
            }
            // Take answers meanwhile, so that their receive times are exact.
            subject.take(Duration::from_micros(500));
        }
        script
            .join()
            .unwrap_or_else(|_| Err("the disruption's script panicked".to_string()))
    });
    let deadline = Instant::now() + answer_limit;
    while (0..at.len()).any(|k| subject.first_answer(k).is_none()) && Instant::now() < deadline {
        subject.take(Duration::from_millis(100));
    }
    Sent {
        start,
        at,
        marks: timeline.marks.into_inner().unwrap(),
        exits: timeline.exits.into_inner().unwrap(),
        script_error: script_result.err(),
    }
}

/// Every command sent between 3 and 2 s before `now` was answered within 1 s.
fn caught_up(subject: &impl Subject, at: &[Instant], now: Instant) -> bool {
    let (from, to) = (now - Duration::from_secs(3), now - Duration::from_secs(2));
    let (first, end) = (
        at.partition_point(|t| *t < from),
        at.partition_point(|t| *t < to),
    );
    (first..end).all(|k| {
        subject
            .first_answer(k)
            .is_some_and(|answered| answered.duration_since(at[k]) <= Duration::from_secs(1))
    })
}
