//! The dependency probes, shared by `command-handler check` and the readiness prober:
//! each asks one dependency a cheap question and gives a verdict with a detail.

use std::time::Duration;

use diesel::prelude::*;
use diesel_migrations::MigrationHarness;
use rdkafka::client::{Client, ClientContext};
use rdkafka::error::RDKafkaErrorCode;
use schema_registry_converter::blocking::schema_registry::{SrSettings, get_all_subjects};
use serde::Serialize;

use crate::db::Database;
use crate::db::migrations::MIGRATIONS;

/// One check's verdict: passed or not, with what was found or why it failed. Serialised
/// as the `{"ok", "detail"}` of a readiness check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Verdict {
    pub ok: bool,
    pub detail: String,
}

impl Verdict {
    pub fn passed(detail: impl Into<String>) -> Verdict {
        Verdict {
            ok: true,
            detail: detail.into(),
        }
    }

    pub fn failed(reason: impl Into<String>) -> Verdict {
        Verdict {
            ok: false,
            detail: reason.into(),
        }
    }

    /// As a Result, for a caller that goes on from a passed probe with `?` (`check`
    /// adds Kafka's write rights to the Kafka probe).
    pub fn into_result(self) -> Result<String, String> {
        if self.ok {
            Ok(self.detail)
        } else {
            Err(self.detail)
        }
    }
}

/// The probes are written with `?`; this is their last step.
impl From<Result<String, String>> for Verdict {
    fn from(result: Result<String, String>) -> Verdict {
        match result {
            Ok(detail) => Verdict::passed(detail),
            Err(reason) => Verdict::failed(reason),
        }
    }
}

/// PostgreSQL answers a query within `timeout`.
pub(crate) fn database(database: &Database, timeout: Duration) -> Verdict {
    answer_one(database, timeout)
        .map(|_| "answered".to_string())
        .into()
}

/// As [`database`], and the detail counts the migrations that start-up will apply.
/// Only for `check`: counting may create diesel's bookkeeping table, which must not
/// race with a start-up that is migrating (the readiness prober runs during it).
pub(crate) fn database_and_migrations(database: &Database, timeout: Duration) -> Verdict {
    let pending = answer_one(database, timeout).and_then(|mut conn| {
        conn.pending_migrations(MIGRATIONS)
            .map(|pending| pending.len())
            .map_err(|e| database.scrub(&e.to_string()))
    });
    pending
        .map(|pending| match pending {
            0 => "reached; schema up to date".to_string(),
            n => format!("reached; {n} migrations to apply at start-up"),
        })
        .into()
}

/// The Schema Registry lists its subjects.
pub(crate) fn registry(settings: &SrSettings) -> Verdict {
    get_all_subjects(settings)
        .map(|subjects| format!("reached; {} subjects", subjects.len()))
        .map_err(|e| crate::wire::registry::Brief(&e).to_string())
        .into()
}

/// The brokers answer a metadata request for `topics` (None: all topics, which never
/// makes a broker that creates topics on first use create one); the detail names those
/// that are not there.
pub(crate) fn kafka<C: ClientContext>(
    client: &Client<C>,
    topics: &[&str],
    timeout: Duration,
) -> Verdict {
    kafka_reach(client, topics, timeout).0
}

/// [`kafka`], and whether the client found no broker at all to ask (librdkafka's
/// transport failure: every broker it knows is down, or it knows none).
pub(crate) fn kafka_reach<C: ClientContext>(
    client: &Client<C>,
    topics: &[&str],
    timeout: Duration,
) -> (Verdict, bool) {
    let only = match topics {
        [one] => Some(*one),
        _ => None,
    };
    let metadata = match client.fetch_metadata(only, timeout) {
        Ok(metadata) => metadata,
        Err(error) => {
            let no_broker =
                error.rdkafka_error_code() == Some(RDKafkaErrorCode::BrokerTransportFailure);
            return (Verdict::failed(error.to_string()), no_broker);
        }
    };
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
    let verdict = if missing.is_empty() {
        Verdict::passed(format!("reached; {brokers} brokers"))
    } else {
        Verdict::passed(format!(
            "reached; {brokers} brokers; topics not there yet: {}",
            missing.join(", ")
        ))
    };
    (verdict, false)
}

/// A connection that answered `SELECT 1` within `timeout`.
fn answer_one(database: &Database, timeout: Duration) -> Result<crate::db::Connection, String> {
    let mut conn = database
        .connection_within(timeout)
        .map_err(|e| e.to_string())?;
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1"))
        .get_result::<i32>(&mut conn)
        .map_err(|e| database.scrub(&e.to_string()))?;
    Ok(conn)
}
