//! Wiring: start-up, the three threads, and shutdown on SIGTERM / SIGINT.
//!
//! Two consumer threads (one per command topic) and one producer thread, joined by an
//! `mpsc` channel. A signal stops the consumers after the batch in flight; the producer
//! thread then flushes and the consumers' last offsets are committed.

use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use log::{error, info, warn};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::backoff::{Backoff, sleep_unless_shutdown};
use crate::config::Config;
use crate::consume::consumer::{self, CommandConsumer};
use crate::consume::kinds::{AccountCreations, CommandKind, MoneyTransfers};
use crate::consume::{CommandLoop, LoopError};
use crate::db::{self, Database};
use crate::kafka::topics::{self, TopicError};
use crate::ops::heartbeat::Heartbeat;
use crate::ops::http;
use crate::ops::metrics::Metrics;
use crate::produce::{self, Destinations, PublishRequest, run_producer};
use crate::wire::{
    AnswerEncoder, CommandDecoder, REGISTRY_TIMEOUT, SubjectError, limit_datum_allocations,
    registry_settings,
};

/// Why the handler stopped other than by a signal; `main` turns it into an exit code.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Start-up cannot go on: the operator must act (a refused migration, a missing
    /// subject, a dead-letter topic that cannot be made, a port in use).
    #[error("{0}")]
    Startup(String),
    /// A consumer loop stopped for good.
    #[error(transparent)]
    Loop(#[from] LoopError),
    #[error("the {0} thread panicked")]
    Panicked(String),
}

/// Runs the handler until a signal (Ok) or a failure it cannot recover from (Err).
pub fn run(config: Config) -> Result<(), RunError> {
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [SIGTERM, SIGINT] {
        // A second signal while shutting down exits at once.
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&shutdown))
            .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&shutdown)))
            .map_err(|e| RunError::Startup(format!("cannot install signal handler: {e}")))?;
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
    let database = Database::new(config.database_url.expose(), config.db_pool_size);
    let registry_with_timeout = |timeout| {
        registry_settings(
            config.schema_registry_url.expose(),
            config.registry_credentials.as_ref(),
            timeout,
        )
        .map_err(|e| RunError::Startup(e.to_string()))
    };
    let registry = registry_with_timeout(REGISTRY_TIMEOUT)?;
    let metrics = Arc::new(Metrics::new());

    // Served from the start, so that liveness answers while start-up waits for the
    // database; a port in use stops start-up.
    let mut http_thread = None;
    let mut http_dependencies = None;
    if let Some(address) = config.http_address {
        let server = http::bind(address).map_err(RunError::Startup)?;
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
            .map_err(|e| RunError::Startup(format!("cannot start the http thread: {e}")))?;
        http_thread = Some(thread);
    }

    if !migrate(&database, &shutdown)? {
        info!("stopped before the database was ready");
        return Ok(());
    }
    // The dead-letter topic, before the first poison record needs it, and the right to
    // write to every output topic.
    let topic_ready = retry_until_shutdown(&shutdown, "the output topics", || {
        match topics::ensure_dead_letter_topic(&config)
            .and_then(|_| topics::check_write_rights(&config))
        {
            Ok(_) => Ok(Ok(())),
            Err(error @ TopicError::Unreachable(_)) => Err(error.to_string()),
            Err(error @ TopicError::Refused(_)) => Ok(Err(error.to_string())),
        }
    });
    match topic_ready {
        None => return Ok(()),
        Some(outcome) => outcome.map_err(RunError::Startup)?,
    }
    let dead_letter_limit = topics::dead_letter_record_limit(&config);
    // Every subject the handler writes with, before the first command is taken.
    let encoder = AnswerEncoder::new(registry.clone(), config.register_schemas);
    let subjects_ready = retry_until_shutdown(&shutdown, "the Schema Registry", || {
        match encoder.check_subjects(&config.topics) {
            Ok(()) => Ok(Ok(())),
            Err(error @ SubjectError::RegistryUnavailable(_)) => Err(error.to_string()),
            Err(error @ SubjectError::Unusable(_)) => Ok(Err(error.to_string())),
        }
    });
    match subjects_ready {
        None => return Ok(()),
        Some(outcome) => outcome.map_err(RunError::Startup)?,
    }
    if config.register_schemas {
        info!("output schemas: the handler's own, registered (SCHEMA_REGISTRY_AUTO_REGISTER=true)");
    } else {
        info!("output schemas: each subject's latest registered version");
    }

    limit_datum_allocations();
    let producer = Arc::new(
        produce::answer_producer(&config)
            .map_err(|e| RunError::Startup(format!("cannot create Kafka producer: {e}")))?,
    );
    let (publish, requests) = mpsc::channel();
    let producer_thread = thread::Builder::new()
        .name("producer".into())
        .spawn({
            let producer = Arc::clone(&producer);
            move || run_producer(producer, encoder, requests)
        })
        .map_err(|e| RunError::Startup(format!("cannot start the producer thread: {e}")))?;

    let shared = LoopParts {
        config: &config,
        registry: &registry,
        database: &database,
        publish: &publish,
        shutdown: &shutdown,
        metrics: &metrics,
        dead_letter_limit,
    };
    let accounts = shared.spawn::<AccountCreations>()?;
    let transfers = shared.spawn::<MoneyTransfers>()?;
    drop(publish);
    let mut consumers = Vec::new();
    let mut heartbeats = Vec::new();
    let mut consumer_threads = Vec::new();
    for running in [accounts, transfers] {
        consumers.push(running.consumer);
        heartbeats.push(running.heartbeat);
        consumer_threads.push(running.thread);
    }
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
    for (name, handle) in consumer_threads {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(stopped)) => failure = Some(RunError::Loop(stopped)),
            Err(_) => failure = Some(RunError::Panicked(name)),
        }
    }
    if producer_thread.join().is_err() {
        failure.get_or_insert_with(|| RunError::Panicked("producer".into()));
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
fn migrate(database: &Database, shutdown: &AtomicBool) -> Result<bool, RunError> {
    let migrated = retry_until_shutdown(shutdown, "the database", || {
        let mut conn = database.connection().map_err(|e| e.to_string())?;
        Ok(db::migrations::run_migrations(&mut conn).map(|applied| {
            if applied.is_empty() {
                info!("database schema is up to date");
            } else {
                info!("applied migrations: {}", applied.join(", "));
            }
        }))
    });
    match migrated {
        None => Ok(false),
        Some(outcome) => outcome
            .map(|()| true)
            .map_err(|e| RunError::Startup(database.scrub(&e.to_string()))),
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

/// Caps glibc's malloc arenas at two, unless `MALLOC_ARENA_MAX` says otherwise. By
/// default glibc gives each of the ~20 threads (librdkafka's among them) that allocate
/// at once an arena of its own; two cut the idle anonymous memory by about 0.7 MiB
/// (one: 1 MiB) on a handler whose threads mostly wait (see the README's benchmark).
pub fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any thread.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Logs why the handler stops and exits with `code`; used by `main`.
pub fn exit_with(message: &dyn std::fmt::Display, code: i32) -> ! {
    error!("{message}");
    eprintln!("command-handler: {message}");
    std::process::exit(code)
}

/// What the consumer loops share, to start one per kind of command.
struct LoopParts<'a> {
    config: &'a Config,
    registry: &'a schema_registry_converter::blocking::schema_registry::SrSettings,
    database: &'a Database,
    publish: &'a mpsc::Sender<PublishRequest>,
    shutdown: &'a Arc<AtomicBool>,
    metrics: &'a Arc<Metrics>,
    dead_letter_limit: usize,
}

/// A started consumer loop: its consumer and heartbeat (for the probes) and thread.
struct RunningLoop {
    consumer: Arc<CommandConsumer>,
    heartbeat: (String, Arc<Heartbeat>),
    thread: (String, JoinHandle<Result<(), LoopError>>),
}

impl LoopParts<'_> {
    fn spawn<K: CommandKind + 'static>(&self) -> Result<RunningLoop, RunError> {
        let topic = self.config.topics.commands(K::TOPIC);
        let consumer = Arc::new(
            consumer::command_consumer(self.config, topic, Arc::clone(self.metrics)).map_err(
                |e| RunError::Startup(format!("cannot create Kafka consumer of {topic}: {e}")),
            )?,
        );
        let heartbeat = Arc::new(Heartbeat::default());
        let command_loop = CommandLoop::<K> {
            consumer: Arc::clone(&consumer),
            decoder: CommandDecoder::new(self.registry.clone()),
            database: self.database.clone(),
            topics: self.config.topics.clone(),
            destinations: Destinations::new(&self.config.topics, self.dead_letter_limit),
            publish: self.publish.clone(),
            shutdown: Arc::clone(self.shutdown),
            batch_size: self.config.batch_size,
            metrics: Arc::clone(self.metrics),
            heartbeat: Arc::clone(&heartbeat),
            acknowledged_events: RefCell::new(Vec::new()),
            last_sweep: Cell::new(None),
            kind: PhantomData,
        };
        let shutdown = Arc::clone(self.shutdown);
        let name = K::TOPIC.label().replace(' ', "-");
        let thread = thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let outcome = command_loop.run();
                // One loop failing stops the other: the process exits and restarts whole.
                shutdown.store(true, Ordering::Release);
                outcome
            })
            .map_err(|e| RunError::Startup(format!("cannot start the {name} thread: {e}")))?;
        Ok(RunningLoop {
            consumer,
            heartbeat: (topic.clone(), heartbeat),
            thread: (name, thread),
        })
    }
}
