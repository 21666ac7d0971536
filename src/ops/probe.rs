//! The dependency probes, shared by `command-handler check` and the readiness prober:
//! each asks one dependency a cheap question and gives a verdict with a detail.

use std::time::Duration;

use diesel::prelude::*;
use diesel_migrations::MigrationHarness;
use rdkafka::client::{Client, ClientContext};
use schema_registry_converter::blocking::schema_registry::{SrSettings, get_all_subjects};

use crate::db::Database;
use crate::db::migrations::MIGRATIONS;

/// One check's verdict: Ok with a detail, or Err with the reason.
pub(crate) type Verdict = Result<String, String>;

/// PostgreSQL answers a query within `timeout`.
pub(crate) fn database(database: &Database, timeout: Duration) -> Verdict {
    let mut conn = database
        .connection_within(timeout)
        .map_err(|e| e.to_string())?;
    answer_one(database, &mut conn).map(|()| "answered".to_string())
}

/// As [`database`], and the detail counts the migrations that start-up will apply.
/// Only for `check`: counting may create diesel's bookkeeping table, which must not
/// race with a start-up that is migrating (the readiness prober runs during it).
pub(crate) fn database_and_migrations(database: &Database, timeout: Duration) -> Verdict {
    let mut conn = database
        .connection_within(timeout)
        .map_err(|e| e.to_string())?;
    answer_one(database, &mut conn)?;
    let pending = conn
        .pending_migrations(MIGRATIONS)
        .map_err(|e| database.scrub(&e.to_string()))?
        .len();
    Ok(match pending {
        0 => "reached; schema up to date".to_string(),
        n => format!("reached; {n} migrations to apply at start-up"),
    })
}

/// The Schema Registry lists its subjects.
pub(crate) fn registry(settings: &SrSettings) -> Verdict {
    get_all_subjects(settings)
        .map(|subjects| format!("reached; {} subjects", subjects.len()))
        .map_err(|e| e.to_string())
}

/// The brokers answer a metadata request for `topics` (None: all topics, which never
/// makes a broker that creates topics on first use create one); the detail names those
/// that are not there.
pub(crate) fn kafka<C: ClientContext>(
    client: &Client<C>,
    topics: &[&str],
    timeout: Duration,
) -> Verdict {
    let only = match topics {
        [one] => Some(*one),
        _ => None,
    };
    let metadata = client
        .fetch_metadata(only, timeout)
        .map_err(|e| e.to_string())?;
    let missing: Vec<&str> = topics
        .iter()
        .copied()
        .filter(|topic| {
            !metadata
                .topics()
                .iter()
                .any(|m| m.name() == *topic && m.error().is_none())
        })
        .collect();
    let brokers = metadata.brokers().len();
    if missing.is_empty() {
        Ok(format!("reached; {brokers} brokers"))
    } else {
        Ok(format!(
            "reached; {brokers} brokers; topics not there yet: {}",
            missing.join(", ")
        ))
    }
}

fn answer_one(database: &Database, conn: &mut diesel::pg::PgConnection) -> Result<(), String> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
        .get_result::<i32>(conn)
        .map(drop)
        .map_err(|e| database.scrub(&e.to_string()))
}
