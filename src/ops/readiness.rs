//! Readiness: the checks a prober thread runs every few seconds, and the report that
//! `/health/ready` answers from (so a probe never waits on a dependency).

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use log::info;
use rdkafka::consumer::Consumer;
use rdkafka::producer::Producer;
use serde_json::json;

use crate::kafka::rebootstrap::Rebootstrap;
use crate::ops::dependencies::{Dependencies, PROBE_TIMEOUT};
use crate::ops::probe::{self, Verdict};
use crate::ops::stalls::STALLED_AFTER;

/// How often the prober checks the dependencies.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// Results older than this (a hung prober) count as not ready.
const STALE_AFTER: Duration = Duration::from_secs(30);

/// What one readiness check looks at. Its name (`Display`) is the key of the report's
/// `checks` and, for a dependency, the `dependency` label of `dependency_up`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    Database,
    SchemaRegistry,
    /// Kafka before its clients exist: they are made once the database is migrated.
    KafkaStarting,
    /// The brokers, asked about a consumer's own topic.
    Kafka {
        topic: String,
    },
    /// The consumer of `topic` has its partitions from the group.
    Assignment {
        topic: String,
    },
    /// A partition stuck behind a failure that does not pass.
    Retrying {
        topic: String,
        partition: i32,
    },
}

impl Check {
    /// A dependency is something outside the handler; assignments and stalls are its
    /// own state.
    pub fn is_dependency(&self) -> bool {
        matches!(
            self,
            Check::Database | Check::SchemaRegistry | Check::KafkaStarting | Check::Kafka { .. }
        )
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Database => f.write_str("database"),
            Check::SchemaRegistry => f.write_str("schema_registry"),
            Check::KafkaStarting => f.write_str("kafka"),
            Check::Kafka { topic } => write!(f, "kafka:{topic}"),
            Check::Assignment { topic } => write!(f, "assignment:{topic}"),
            Check::Retrying { topic, partition } => write!(f, "retrying:{topic}/{partition}"),
        }
    }
}

/// One round of checks.
pub(crate) struct Report {
    at: Instant,
    checks: Vec<(Check, Verdict)>,
}

impl Report {
    fn passed(&self) -> bool {
        self.checks.iter().all(|(_, verdict)| verdict.ok)
    }

    /// Each dependency's name and whether its check passed.
    pub fn dependencies(&self) -> Vec<(String, bool)> {
        self.checks
            .iter()
            .filter(|(check, _)| check.is_dependency())
            .map(|(check, verdict)| (check.to_string(), verdict.ok))
            .collect()
    }

    /// Ready only if recent and every check passed; the body names every check.
    fn answer(&self) -> (bool, serde_json::Value) {
        let ready = self.at.elapsed() <= STALE_AFTER && self.passed();
        let checks: serde_json::Map<String, serde_json::Value> = self
            .checks
            .iter()
            .map(|(check, verdict)| (check.to_string(), json!(verdict)))
            .collect();
        let body = json!({
            "status": if ready { "ready" } else { "not ready" },
            "checked_seconds_ago": self.at.elapsed().as_secs(),
            "checks": checks,
        });
        (ready, body)
    }

    fn failing(&self) -> String {
        let failing: Vec<String> = self
            .checks
            .iter()
            .filter(|(_, verdict)| !verdict.ok)
            .map(|(check, verdict)| format!("{check}: {}", verdict.detail))
            .collect();
        failing.join("; ")
    }
}

/// The latest report, written by the prober and read by the endpoint and the scrape.
#[derive(Default)]
pub(crate) struct Latest(Mutex<Option<Report>>);

impl Latest {
    pub fn read<T>(&self, read: impl FnOnce(Option<&Report>) -> T) -> T {
        read(self.0.lock().unwrap_or_else(|p| p.into_inner()).as_ref())
    }

    fn set(&self, report: Report) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
    }
}

/// `/health/ready`: whether the handler is ready, and the report's body.
pub(crate) fn answer(dependencies: &Dependencies, latest: &Latest) -> (bool, serde_json::Value) {
    if dependencies.shutdown.load(Ordering::Acquire) {
        return (false, json!({"status": "stopping"}));
    }
    latest.read(|report| match report {
        Some(report) => report.answer(),
        None => (
            false,
            json!({"status": "starting", "detail": "no probe yet"}),
        ),
    })
}

/// Checks every [`PROBE_INTERVAL`] until shutdown, logging each change between ready
/// and not ready.
pub(crate) fn probe_until_shutdown(dependencies: &Dependencies, latest: &Latest) {
    let mut was_ready: Option<bool> = None;
    let mut rebootstrap = Rebootstrap::new(&dependencies.bootstrap_servers);
    while !dependencies.shutdown.load(Ordering::Acquire) {
        let report = Report {
            at: Instant::now(),
            checks: run_checks(dependencies, &mut rebootstrap),
        };
        let ready = report.passed();
        if was_ready != Some(ready) {
            if ready {
                info!("ready");
            } else {
                info!("not ready: {}", report.failing());
            }
            was_ready = Some(ready);
        }
        latest.set(report);
        crate::backoff::sleep_unless_shutdown(PROBE_INTERVAL, &dependencies.shutdown, || {});
    }
}

fn run_checks(dependencies: &Dependencies, rebootstrap: &mut Rebootstrap) -> Vec<(Check, Verdict)> {
    let mut checks = vec![
        (
            Check::Database,
            probe::database(&dependencies.database, PROBE_TIMEOUT),
        ),
        (
            Check::SchemaRegistry,
            probe::registry(&dependencies.registry),
        ),
    ];
    let Some(clients) = dependencies.clients.get() else {
        checks.push((
            Check::KafkaStarting,
            Verdict::failed("starting: the Kafka clients are made once the database is migrated"),
        ));
        return checks;
    };
    for consumer in &clients.consumers {
        let events = consumer.context();
        let topic = events.topic().to_string();
        // The consumer's own topic: a consumer never asks the brokers to create it.
        let (kafka, no_broker) = probe::kafka_reach(consumer.client(), &[&topic], PROBE_TIMEOUT);
        rebootstrap.observe(
            &format!("the consumer of {topic}"),
            consumer.client(),
            no_broker,
        );
        let assignment = match events.assignment() {
            Some(partitions) => Verdict::passed(format!("partitions {partitions:?}")),
            None => Verdict::failed("waiting for the consumer group to assign partitions"),
        };
        checks.push((
            Check::Kafka {
                topic: topic.clone(),
            },
            kafka,
        ));
        checks.push((Check::Assignment { topic }, assignment));
    }
    // The producer is no readiness check of its own (a batch waiting for it is one),
    // but it may forget its brokers too.
    let producer = clients.producer.client();
    let (_, no_broker) = probe::kafka_reach(producer, &[], PROBE_TIMEOUT);
    rebootstrap.observe("the producer", producer, no_broker);
    for ((topic, partition), stall) in dependencies.metrics.stalls.now() {
        let retrying = stall.since.elapsed();
        if retrying > STALLED_AFTER {
            let why = format!(
                "retrying its batch for {} s: {}",
                retrying.as_secs(),
                stall.why
            );
            checks.push((Check::Retrying { topic, partition }, Verdict::failed(why)));
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(checks: Vec<(Check, Verdict)>) -> Report {
        Report {
            at: Instant::now(),
            checks,
        }
    }

    #[test]
    fn the_body_keeps_its_keys_and_shape() {
        let topic = "confirm_money_transfer".to_string();
        let (ready, body) = report(vec![
            (Check::Database, Verdict::passed("answered")),
            (
                Check::Kafka {
                    topic: topic.clone(),
                },
                Verdict::passed("reached; 1 brokers"),
            ),
            (
                Check::Assignment {
                    topic: topic.clone(),
                },
                Verdict::passed("partitions [0]"),
            ),
            (
                Check::Retrying {
                    topic,
                    partition: 3,
                },
                Verdict::failed("retrying its batch for 11 s: down"),
            ),
        ])
        .answer();
        assert!(!ready);
        assert_eq!(
            body,
            json!({
                "status": "not ready",
                "checked_seconds_ago": 0,
                "checks": {
                    "database": {"ok": true, "detail": "answered"},
                    "kafka:confirm_money_transfer": {"ok": true, "detail": "reached; 1 brokers"},
                    "assignment:confirm_money_transfer": {"ok": true, "detail": "partitions [0]"},
                    "retrying:confirm_money_transfer/3":
                        {"ok": false, "detail": "retrying its batch for 11 s: down"},
                },
            })
        );
        // Operators and tests match on the serialised text.
        assert!(
            body.to_string()
                .contains(r#""database":{"detail":"answered","ok":true}"#)
        );
    }

    #[test]
    fn only_dependencies_have_an_up_series() {
        let starting = report(vec![
            (Check::Database, Verdict::failed("refused")),
            (
                Check::SchemaRegistry,
                Verdict::passed("reached; 6 subjects"),
            ),
            (Check::KafkaStarting, Verdict::failed("starting")),
        ]);
        assert_eq!(
            starting.dependencies(),
            [
                ("database".to_string(), false),
                ("schema_registry".to_string(), true),
                ("kafka".to_string(), false),
            ]
        );
        let running = report(vec![
            (
                Check::Kafka { topic: "t".into() },
                Verdict::passed("reached"),
            ),
            (
                Check::Assignment { topic: "t".into() },
                Verdict::passed("partitions []"),
            ),
            (
                Check::Retrying {
                    topic: "t".into(),
                    partition: 0,
                },
                Verdict::failed("down"),
            ),
        ]);
        assert_eq!(running.dependencies(), [("kafka:t".to_string(), true)]);
        assert_eq!(running.failing(), "retrying:t/0: down");
    }
}
