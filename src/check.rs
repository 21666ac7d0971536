//! `command-handler check`: validates the configuration and reaches every dependency
//! (PostgreSQL, the Schema Registry, Kafka), prints one line per dependency, and exits
//! 0 when all are reachable. Nothing is changed: migrations are reported, not applied.

use std::time::Duration;

use diesel::prelude::*;
use diesel_migrations::MigrationHarness;
use rdkafka::producer::{BaseProducer, Producer};
use schema_registry_converter::blocking::schema_registry::get_all_subjects;

use crate::config::Config;
use crate::kafka;
use crate::records::{REGISTRY_TIMEOUT, registry_settings};
use crate::storage::{self, MIGRATIONS};

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
    let database = storage::Database::new(config.database_url.expose(), 1);
    let verdict = database.connection().and_then(|mut conn| {
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
            .get_result::<i32>(&mut conn)
            .map_err(|e| e.to_string())?;
        let pending = conn
            .pending_migrations(MIGRATIONS)
            .map_err(|e| e.to_string())?
            .len();
        Ok(match pending {
            0 => "reached; schema up to date".to_string(),
            n => format!("reached; {n} migrations to apply at start-up"),
        })
    });
    Line {
        what: "database",
        ok: verdict.is_ok(),
        detail: verdict.unwrap_or_else(|e| e),
    }
}

fn registry(config: &Config) -> Line {
    let verdict = registry_settings(
        config.schema_registry_url.expose(),
        config.registry_credentials.as_ref(),
        REGISTRY_TIMEOUT,
    )
    .and_then(|settings| get_all_subjects(&settings).map_err(|e| e.to_string()))
    .map(|subjects| format!("reached; {} subjects", subjects.len()));
    Line {
        what: "schema registry",
        ok: verdict.is_ok(),
        detail: verdict.unwrap_or_else(|e| e),
    }
}

fn kafka(config: &Config) -> Line {
    let verdict = kafka::client_config(config)
        .create::<BaseProducer>()
        .map_err(|e| e.to_string())
        .and_then(|client| {
            client
                .client()
                .fetch_metadata(None, Duration::from_secs(10))
                .map_err(|e| e.to_string())
        })
        .map(|metadata| {
            let missing: Vec<&str> = config
                .topics
                .all()
                .into_iter()
                .filter(|topic| {
                    !metadata
                        .topics()
                        .iter()
                        .any(|m| m.name() == topic.as_str() && m.error().is_none())
                })
                .map(String::as_str)
                .collect();
            let brokers = metadata.brokers().len();
            if missing.is_empty() {
                format!("reached; {brokers} brokers; all six topics exist")
            } else {
                format!(
                    "reached; {brokers} brokers; topics not there yet: {}",
                    missing.join(", ")
                )
            }
        });
    Line {
        what: "kafka",
        ok: verdict.is_ok(),
        detail: verdict.unwrap_or_else(|e| e),
    }
}
