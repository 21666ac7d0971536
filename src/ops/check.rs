//! `command-handler check`: validates the configuration and reaches every dependency
//! (PostgreSQL, the Schema Registry, Kafka), prints one line per dependency, and exits
//! 0 when all are reachable. Nothing is changed: migrations are reported, not applied.

use std::time::Duration;

use crate::config::Config;
use crate::db::Database;
use crate::kafka::topics::StartupAdmin;
use crate::ops::probe;
use crate::wire::{REGISTRY_TIMEOUT, registry_settings};

/// How long the database and Kafka may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One dependency's verdict.
struct Line {
    what: &'static str,
    ok: bool,
    detail: String,
}

/// Prints the report; true when every dependency was reached.
pub fn check(config: &Config) -> bool {
    let lines = [database(config), registry(config), kafka(config)];
    println!(
        "configuration: ok (group {}, security {})",
        config.client_id,
        config.kafka_security()
    );
    for line in &lines {
        println!(
            "{}: {} ({})",
            line.what,
            if line.ok { "ok" } else { "FAILED" },
            line.detail
        );
    }
    lines.iter().all(|line| line.ok)
}

fn database(config: &Config) -> Line {
    let database = Database::new(config.database_url.expose(), 1);
    Line::new(
        "database",
        probe::database_and_migrations(&database, TIMEOUT),
    )
}

fn registry(config: &Config) -> Line {
    let verdict = registry_settings(
        config.schema_registry_url.expose(),
        config.registry_credentials.as_ref(),
        REGISTRY_TIMEOUT,
    )
    .map_err(|e| e.to_string())
    .and_then(|settings| probe::registry(&settings));
    Line::new("schema registry", verdict)
}

fn kafka(config: &Config) -> Line {
    let topics: Vec<&str> = config
        .topics
        .all()
        .into_iter()
        .map(String::as_str)
        .collect();
    let verdict = StartupAdmin::new(config)
        .map_err(|e| e.to_string())
        .and_then(|admin| {
            let detail = probe::kafka(admin.client(), &topics, TIMEOUT)?;
            let forbidden = admin
                .forbidden_outputs(TIMEOUT)
                .map_err(|why| format!("{detail}; {why}"))?;
            match forbidden.as_slice() {
                [] => Ok(detail),
                _ => Err(format!(
                    "{detail}; may not write to {}",
                    forbidden.join(", ")
                )),
            }
        })
        .map(|detail| {
            if detail.contains("not there yet") {
                detail
            } else {
                format!("{detail}; all six topics exist")
            }
        });
    Line::new("kafka", verdict)
}

impl Line {
    fn new(what: &'static str, verdict: probe::Verdict) -> Line {
        Line {
            what,
            ok: verdict.is_ok(),
            detail: verdict.unwrap_or_else(|e| e),
        }
    }
}
