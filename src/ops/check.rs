//! `command-handler check`: validates the configuration and reaches every dependency
//! (PostgreSQL, the Schema Registry, Kafka), prints one line per dependency, and exits
//! 0 when all are reachable. Nothing is changed: migrations are reported, not applied.

use std::time::Duration;

use crate::config::{Config, KafkaTls};
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

/// Prints the report; true when every dependency was reached. The JVM handler's TLS
/// stores, when they are the TLS in use, are opened here (`Config::load_tls`) and
/// reported as a line of their own; Kafka is not tried without them.
pub fn check(mut config: Config) -> bool {
    let stores = tls_stores(&mut config);
    let kafka = match &stores {
        Some(Line { ok: false, .. }) => {
            Line::new("kafka", Err("not tried without the TLS stores".into()))
        }
        _ => kafka(&config),
    };
    let lines: Vec<Line> = [
        Some(database(&config)),
        Some(registry(&config)),
        stores,
        Some(kafka),
    ]
    .into_iter()
    .flatten()
    .collect();
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

/// The stores' line, when the JVM handler's stores are the TLS in use.
fn tls_stores(config: &mut Config) -> Option<Line> {
    let Some(KafkaTls::JvmStores(stores)) = &config.tls else {
        return None;
    };
    let opened = format!(
        "opened {} and {}",
        stores.keystore.display(),
        stores.truststore.display()
    );
    let verdict = config
        .load_tls()
        .map(|()| opened)
        .map_err(|e| format!("{}: {}", e.variable, e.problem));
    Some(Line::new("kafka tls stores", verdict))
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
    .and_then(|settings| probe::registry(&settings).into_result());
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
            let detail = probe::kafka(admin.client(), &topics, TIMEOUT).into_result()?;
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
    fn new(what: &'static str, verdict: impl Into<probe::Verdict>) -> Line {
        let probe::Verdict { ok, detail } = verdict.into();
        Line { what, ok, detail }
    }
}
