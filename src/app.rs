//! Wiring: start-up, the three threads, and shutdown on SIGTERM / SIGINT.
//!
//! Two consumer threads (one per command topic) and one producer thread, joined by an
//! `mpsc` channel. A signal stops the consumers after the batch in flight; the producer
//! thread then flushes and the consumers' last offsets are committed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::thread;
use std::time::Duration;

use log::{error, info, warn};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::backoff::{Backoff, sleep_unless_shutdown};
use crate::config::{CommandTopic, Config};
use crate::heartbeat::Heartbeat;
use crate::http;
use crate::kafka;
use crate::metrics::Metrics;
use crate::pipeline::{CommandLoop, Destinations};
use crate::produce::{self, run_producer};
use crate::records::{
    AnswerEncoder, CommandDecoder, REGISTRY_TIMEOUT, SubjectError, limit_datum_allocations,
    registry_settings,
};
use crate::storage;
use crate::topics::{self, TopicError};

/// Runs the handler until a signal (Ok) or a failure it cannot recover from (Err).
pub fn run(config: Config) -> Result<(), String> {
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [SIGTERM, SIGINT] {
        // A second signal while shutting down exits at once.
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&shutdown))
            .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&shutdown)))
            .map_err(|e| format!("cannot install signal handler: {e}"))?;
    }
    info!(
        "starting: brokers {}, topics {:?}, group {}, security {}, batch size {}",
        config.kafka_brokers,
        config.topics,
        config.client_id,
        config.kafka_security(),
        config.batch_size
    );

    if !config.kafka_properties.is_empty() {
        let names: Vec<String> = config
            .kafka_properties
            .iter()
            .map(|p| format!("{} ({:?})", p.name, p.scope))
            .collect();
        info!(
            "librdkafka properties from RDKAFKA_* variables: {}",
            names.join(", ")
        );
    }
    let database = storage::Database::new(config.database_url.expose(), config.db_pool_size);
    let registry_with_timeout = |timeout| {
        registry_settings(
            config.schema_registry_url.expose(),
            config.registry_credentials.as_ref(),
            timeout,
        )
        .map_err(|e| format!("invalid configuration: SCHEMA_REGISTRY_URL: {e}"))
    };
    let registry = registry_with_timeout(REGISTRY_TIMEOUT)?;
    let metrics = Arc::new(Metrics::new());

    // Served from the start, so that liveness answers while start-up waits for the
    // database; a port in use stops start-up.
    let mut http_thread = None;
    let mut http_dependencies = None;
    if let Some(address) = config.http_address {
        let server = http::bind(address)?;
        let dependencies = Arc::new(http::Dependencies {
            database: database.clone(),
            liveness_stall: config.liveness_stall,
            registry: registry_with_timeout(http::PROBE_TIMEOUT)?,
            metrics: Arc::clone(&metrics),
            shutdown: Arc::clone(&shutdown),
            clients: OnceLock::new(),
        });
        http_dependencies = Some(Arc::clone(&dependencies));
        let thread = thread::Builder::new()
            .name("http".into())
            .spawn(move || http::serve(server, dependencies))
            .map_err(|e| e.to_string())?;
        http_thread = Some(thread);
    }

    if !migrate(&database, &shutdown)? {
        info!("stopped before the database was ready");
        return Ok(());
    }
    // The dead-letter topic, before the first poison record needs it.
    let topic_ready = retry_until_shutdown(&shutdown, "the dead-letter topic", || {
        match topics::ensure_dead_letter_topic(&config) {
            Ok(_) => Ok(Ok(())),
            Err(TopicError::Unreachable(why)) => Err(why),
            Err(TopicError::Refused(why)) => Ok(Err(why)),
        }
    });
    match topic_ready {
        None => return Ok(()),
        Some(outcome) => outcome?,
    }
    // Every subject the handler writes with, before the first command is taken.
    let encoder = AnswerEncoder::new(registry.clone(), config.register_schemas);
    let subjects_ready = retry_until_shutdown(&shutdown, "the Schema Registry", || {
        match encoder.check_subjects(&config.topics) {
            Ok(()) => Ok(Ok(())),
            Err(SubjectError::RegistryUnavailable(why)) => Err(why),
            Err(SubjectError::Unusable(why)) => Ok(Err(why)),
        }
    });
    match subjects_ready {
        None => return Ok(()),
        Some(outcome) => outcome?,
    }
    if config.register_schemas {
        info!("output schemas: the handler's own, registered (SCHEMA_REGISTRY_AUTO_REGISTER=true)");
    } else {
        info!("output schemas: each subject's latest registered version");
    }

    limit_datum_allocations();
    let producer = Arc::new(
        produce::answer_producer(&config)
            .map_err(|e| format!("cannot create Kafka producer: {e}"))?,
    );
    let (publish, requests) = mpsc::channel();
    let producer_thread = thread::Builder::new()
        .name("producer".into())
        .spawn({
            let producer = Arc::clone(&producer);
            move || run_producer(producer, encoder, requests)
        })
        .map_err(|e| e.to_string())?;

    let mut consumer_threads = Vec::new();
    let mut consumers = Vec::new();
    let mut heartbeats = Vec::new();
    for kind in CommandTopic::BOTH {
        let topic = config.topics.commands(kind);
        let consumer = Arc::new(
            kafka::command_consumer(&config, topic, Arc::clone(&metrics))
                .map_err(|e| format!("cannot create Kafka consumer of {topic}: {e}"))?,
        );
        consumers.push(Arc::clone(&consumer));
        let heartbeat = Arc::new(Heartbeat::default());
        heartbeats.push((topic.clone(), Arc::clone(&heartbeat)));
        let command_loop = CommandLoop {
            kind,
            consumer,
            decoder: CommandDecoder::new(registry.clone()),
            database: database.clone(),
            topics: config.topics.clone(),
            destinations: Destinations::from(&config.topics),
            publish: publish.clone(),
            shutdown: Arc::clone(&shutdown),
            batch_size: config.batch_size,
            metrics: Arc::clone(&metrics),
            heartbeat,
        };
        let shutdown = Arc::clone(&shutdown);
        let name = format!("{kind:?}").to_lowercase();
        let handle = thread::Builder::new()
            .name(name)
            .spawn(move || {
                let outcome = command_loop.run();
                // One loop failing stops the other: the process exits and restarts whole.
                shutdown.store(true, Ordering::Release);
                outcome
            })
            .map_err(|e| e.to_string())?;
        consumer_threads.push(handle);
    }
    drop(publish);
    if let Some(dependencies) = &http_dependencies {
        let clients = http::KafkaClients {
            consumers,
            producer: Arc::clone(&producer),
            heartbeats,
        };
        // Set once, here; a second set cannot happen.
        let _ = dependencies.clients.set(clients);
    }
    info!("running");

    let mut failure = None;
    for handle in consumer_threads {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(stopped)) => failure = Some(stopped.to_string()),
            Err(_) => failure = Some("a consumer thread panicked".to_string()),
        }
    }
    if producer_thread.join().is_err() {
        failure.get_or_insert_with(|| "the producer thread panicked".to_string());
    }
    // The consumers are done, so the shutdown flag is up and the server stops too.
    shutdown.store(true, Ordering::Release);
    if let Some(thread) = http_thread {
        let _ = thread.join();
    }
    // The last holder of the consumers: dropped, they leave their group.
    drop(http_dependencies);
    match failure {
        None => {
            info!("stopped cleanly");
            Ok(())
        }
        Some(why) => Err(why),
    }
}

/// Runs the migrations, waiting for the database with backoff; Ok(false) on shutdown.
/// A migration that fails on a reachable database stops start-up: retrying would not
/// help, and the operator must see why (for example duplicate IBANs in `balance`).
fn migrate(database: &storage::Database, shutdown: &AtomicBool) -> Result<bool, String> {
    let migrated = retry_until_shutdown(shutdown, "the database", || {
        let mut conn = database.connection()?;
        Ok(storage::run_migrations(&mut conn).map(|applied| {
            if applied.is_empty() {
                info!("database schema is up to date");
            } else {
                info!("applied migrations: {}", applied.join(", "));
            }
        }))
    });
    match migrated {
        None => Ok(false),
        Some(outcome) => outcome.map(|()| true),
    }
}

/// Start-up's wait for a dependency: `attempt` gives Err(why) while `what` cannot be
/// reached (logged, and tried again with a backoff from 0.2 s doubling to 10 s), and
/// Ok(outcome) once it answered, for better or worse. None when a signal came first.
fn retry_until_shutdown<T>(
    shutdown: &AtomicBool,
    what: &str,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> Option<T> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        let why = match attempt() {
            Ok(outcome) => return Some(outcome),
            Err(why) => why,
        };
        let delay = backoff.next_delay();
        warn!("{what} not ready, retrying in {delay:?}: {why}");
        if !sleep_unless_shutdown(delay, shutdown, || {}) {
            return None;
        }
    }
}

/// Logging to stderr: `RUST_LOG` filters (default: `warn`, and `info` for the
/// handler); `LOG_FORMAT=json` writes one JSON object per line instead of text.
pub fn init_logging() {
    use std::io::Write;

    // RUST_LOG replaces the default rather than adding to it: merged, the default's
    // `open_bank_command_handler=info` would outrank a plain `RUST_LOG=debug`.
    let filters = std::env::var("RUST_LOG")
        .unwrap_or_else(|_| "warn,open_bank_command_handler=info".to_string());
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(&filters);
    match std::env::var("LOG_FORMAT").as_deref() {
        Ok("json") => {
            builder.format(|buf, record| {
                let line = serde_json::json!({
                    "time": buf.timestamp_millis().to_string(),
                    "level": record.level().as_str(),
                    "target": record.target(),
                    "message": record.args().to_string(),
                });
                writeln!(buf, "{line}")
            });
        }
        Ok("text") | Err(_) => {}
        Ok(other) => {
            eprintln!(
                "command-handler: invalid configuration: LOG_FORMAT: must be text or json, not {other:?}"
            );
            std::process::exit(1);
        }
    }
    builder.init();
}

/// Logs a failure to start and exits non-zero; used by `main`.
pub fn exit_with(message: &str) -> ! {
    error!("{message}");
    eprintln!("command-handler: {message}");
    std::process::exit(1)
}
