//! Start-up's stages, one function each, in the order [`super::App::start`] runs them.
//! A stage that waits for a dependency retries until it answers or a signal comes
//! ([`retry_until_shutdown`]); a dependency that answers "no" stops start-up with a
//! [`StartupError`] that names what the operator must fix.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{Level, info, log};
use rdkafka::error::KafkaError;
use schema_registry_converter::blocking::schema_registry::SrSettings;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::backoff::{Backoff, sleep_unless_shutdown};
use crate::config::{ClientScope, Config, GroupMembership};
use crate::consume::consumer::{self, CommandConsumer};
use crate::consume::kinds::CommandKind;
use crate::consume::{CommandLoop, LoopError, LoopParts};
use crate::db::{self, Database};
use crate::kafka::topics::{self, TopicError};
use crate::ops::heartbeat::Heartbeat;
use crate::ops::http;
use crate::ops::metrics::Metrics;
use crate::outbox::{self, Handover, OutboxSignal, PublisherError, PublisherParts};
use crate::produce::{self, AnswerProducer, PublishRequest, run_producer};
use crate::wire::{AnswerEncoder, InvalidRegistryUrl, SubjectError, registry_settings};

/// Why start-up stopped: each needs the operator (or a fixed environment), so retrying
/// would not help.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot install the signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    RegistryUrl(#[from] InvalidRegistryUrl),
    /// The HTTP port is in use or cannot be bound.
    #[error("{0}")]
    Http(String),
    /// A migration failed on a reachable database (for example duplicate IBANs in
    /// `balance`); the message is scrubbed of the connection's secrets.
    #[error("{0}")]
    Migration(String),
    /// The brokers refused the dead-letter topic or a right to write an output topic.
    #[error("{0}")]
    Topics(TopicError),
    /// A subject the handler writes with is missing or cannot encode its records.
    #[error("{0}")]
    Subjects(SubjectError),
    #[error("cannot create Kafka producer: {0}")]
    Producer(KafkaError),
    #[error("cannot create Kafka consumer of {topic}: {error}")]
    Consumer { topic: String, error: KafkaError },
    #[error("cannot start the {name} thread: {error}")]
    Thread { name: String, error: std::io::Error },
}

/// The flag a first SIGTERM or SIGINT raises: the loops stop after their batch in
/// flight. A second signal while stopping exits at once with status 1.
pub(super) fn signals() -> Result<Arc<AtomicBool>, StartupError> {
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [SIGTERM, SIGINT] {
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&shutdown))
            .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&shutdown)))
            .map_err(StartupError::Signals)?;
    }
    Ok(shutdown)
}

/// What start-up is about to do, for the log.
pub(super) fn announce(config: &Config) {
    info!(
        "starting: brokers {}, group {}, security {}, batch size {}; topics: {}",
        config.kafka_brokers,
        config.client_id,
        config.kafka_security(),
        config.batch_size,
        config.topics
    );
    match &config.membership {
        GroupMembership::Static { name } => info!(
            "static group member {name} (KAFKA_GROUP_INSTANCE_ID): a restart within the \
             session timeout keeps this instance's partitions"
        ),
        GroupMembership::Dynamic => info!("dynamic group member (KAFKA_GROUP_INSTANCE_ID=none)"),
    }
    if !config.kafka_properties.is_empty() {
        let names: Vec<String> = config
            .kafka_properties
            .iter()
            .map(|p| match p.scope {
                ClientScope::All => p.name.clone(),
                ClientScope::Consumers => format!("{} (consumers)", p.name),
                ClientScope::Producer => format!("{} (producer)", p.name),
            })
            .collect();
        info!(
            "librdkafka properties from RDKAFKA_* variables: {}",
            names.join(", ")
        );
    }
}

/// The registry client settings with `timeout`.
pub(super) fn registry(config: &Config, timeout: Duration) -> Result<SrSettings, StartupError> {
    Ok(registry_settings(
        config.schema_registry_url.expose(),
        config.registry_credentials.as_ref(),
        timeout,
    )?)
}

/// Health and metrics, served from the start so that liveness answers while start-up
/// waits for the database; a port in use stops start-up. The Kafka clients are handed
/// to it once they exist ([`http::Dependencies::clients`]).
pub(super) fn serve_http(
    config: &Config,
    database: &Database,
    metrics: &Arc<Metrics>,
    shutdown: &Arc<AtomicBool>,
) -> Result<Option<HttpThread>, StartupError> {
    let Some(address) = config.http_address else {
        return Ok(None);
    };
    let server = http::bind(address).map_err(StartupError::Http)?;
    let dependencies = Arc::new(http::Dependencies {
        database: database.clone(),
        liveness_stall: config.liveness_stall,
        registry: registry(config, http::PROBE_TIMEOUT)?,
        metrics: Arc::clone(metrics),
        shutdown: Arc::clone(shutdown),
        bootstrap_servers: config.kafka_brokers.clone(),
        clients: std::sync::OnceLock::new(),
    });
    let serving = Arc::clone(&dependencies);
    let thread = spawn("http", move || http::serve(server, serving))?;
    Ok(Some(HttpThread {
        dependencies,
        thread,
    }))
}

/// The HTTP thread, and what it serves from (which holds the Kafka clients once they
/// exist).
pub(super) struct HttpThread {
    pub dependencies: Arc<http::Dependencies>,
    pub thread: JoinHandle<()>,
}

/// The producer thread, the producer it drives (also read by the metrics), and the
/// sender the loops hand their batches to.
pub(super) struct ProducerThread {
    pub producer: Arc<AnswerProducer>,
    pub publish: mpsc::Sender<PublishRequest>,
    pub thread: JoinHandle<()>,
}

/// Runs the migrations, waiting for the database. A migration that fails on a
/// reachable database stops start-up: retrying would not help, and the operator must
/// see why.
pub(super) fn migrate(database: &Database, shutdown: &AtomicBool) -> Stage<()> {
    let migrated = retry_until_shutdown(shutdown, "the database", || {
        let mut conn = database.connection().map_err(|e| e.to_string())?;
        Ok(db::migrations::run_migrations(&mut conn))
    });
    let Some(outcome) = migrated else {
        return Ok(None);
    };
    let applied = outcome.map_err(|e| StartupError::Migration(database.scrub(&e.to_string())))?;
    if applied.is_empty() {
        info!("database schema is up to date");
    } else {
        info!("applied migrations: {}", applied.join(", "));
    }
    Ok(Some(()))
}

/// The dead-letter topic, before the first poison record needs it, and the right to
/// write to every output topic; the largest dead letter its topic takes.
pub(super) fn output_topics(config: &Config, shutdown: &AtomicBool) -> Stage<usize> {
    let ready =
        retry_until_shutdown(
            shutdown,
            "the output topics",
            || match topics::prepare_output_topics(config) {
                Ok(prepared) => Ok(Ok(prepared)),
                Err(error @ TopicError::Unreachable(_)) => Err(error.to_string()),
                Err(error @ TopicError::Refused(_)) => Ok(Err(error)),
            },
        );
    let Some(outcome) = ready else {
        return Ok(None);
    };
    Ok(Some(
        outcome.map_err(StartupError::Topics)?.dead_letter_limit,
    ))
}

/// Every subject the handler writes with, before the first command is taken.
pub(super) fn output_subjects(
    config: &Config,
    registry: &SrSettings,
    shutdown: &AtomicBool,
) -> Stage<AnswerEncoder> {
    let encoder = AnswerEncoder::new(registry.clone(), config.register_schemas);
    let ready = retry_until_shutdown(shutdown, "the Schema Registry", || {
        match encoder.check_subjects(&config.topics) {
            Ok(()) => Ok(Ok(())),
            Err(error @ SubjectError::RegistryUnavailable(_)) => Err(error.to_string()),
            Err(error @ SubjectError::Unusable(_)) => Ok(Err(error)),
        }
    });
    let Some(outcome) = ready else {
        return Ok(None);
    };
    outcome.map_err(StartupError::Subjects)?;
    if config.register_schemas {
        info!("output schemas: the handler's own, registered (SCHEMA_REGISTRY_AUTO_REGISTER=true)");
    } else {
        info!("output schemas: each subject's latest registered version");
    }
    Ok(Some(encoder))
}

/// The producer and its thread, fed by the returned sender.
pub(super) fn start_producer(
    config: &Config,
    encoder: AnswerEncoder,
) -> Result<ProducerThread, StartupError> {
    let producer = Arc::new(produce::answer_producer(config).map_err(StartupError::Producer)?);
    let (publish, requests) = mpsc::channel();
    let thread = spawn("producer", {
        let producer = Arc::clone(&producer);
        move || run_producer(producer, encoder, requests)
    })?;
    Ok(ProducerThread {
        producer,
        publish,
        thread,
    })
}

/// The outbox publisher started on its thread.
pub(super) struct PublisherThread {
    /// For the loops; dropped by all of them, it tells the publisher they stopped.
    pub signal: OutboxSignal,
    pub thread: JoinHandle<Result<Handover, PublisherError>>,
}

/// The publisher of the outbox's BalanceChanged events (it stands by while another
/// instance publishes). When it fails for good the loops are stopped too.
pub(super) fn start_publisher(
    config: &Config,
    database: &Database,
    publish: &mpsc::Sender<PublishRequest>,
    shutdown: &Arc<AtomicBool>,
    metrics: &Arc<Metrics>,
) -> Result<PublisherThread, StartupError> {
    let (signal, publisher) = outbox::outbox(PublisherParts {
        database: database.clone(),
        publish: publish.clone(),
        topic: config.topics.balance_changed.as_str().into(),
        shutdown: Arc::clone(shutdown),
        metrics: Arc::clone(metrics),
    });
    let shutdown = Arc::clone(shutdown);
    let thread = spawn("publisher", move || {
        let outcome = publisher.run();
        if outcome.is_err() {
            shutdown.store(true, std::sync::atomic::Ordering::Release);
        }
        outcome
    })?;
    Ok(PublisherThread { signal, thread })
}

/// A consumer loop started on its thread.
pub(super) struct StartedLoop {
    /// Also read by the readiness probe.
    pub consumer: Arc<CommandConsumer>,
    /// The topic it consumes, and the heartbeat liveness reads.
    pub heartbeat: (String, Arc<Heartbeat>),
    pub thread: JoinHandle<Result<(), LoopError>>,
}

/// What both consumer loops are made from.
pub(super) struct LoopInputs<'a> {
    pub config: &'a Config,
    pub registry: &'a SrSettings,
    pub database: &'a Database,
    pub publish: &'a mpsc::Sender<PublishRequest>,
    pub outbox: &'a OutboxSignal,
    pub shutdown: &'a Arc<AtomicBool>,
    pub metrics: &'a Arc<Metrics>,
    pub dead_letter_limit: usize,
}

/// Subscribes a consumer to `K`'s topic and runs its loop on a thread of its own. One
/// loop failing stops the other: the process exits and restarts whole.
pub(super) fn start_loop<K: CommandKind + 'static>(
    inputs: &LoopInputs<'_>,
) -> Result<StartedLoop, StartupError> {
    let topic = inputs.config.topics.commands(K::TOPIC).clone();
    let consumer = consumer::command_consumer(inputs.config, K::TOPIC, Arc::clone(inputs.metrics))
        .map_err(|error| StartupError::Consumer {
            topic: topic.clone(),
            error,
        })?;
    let consumer = Arc::new(consumer);
    let heartbeat = Arc::new(Heartbeat::default());
    let command_loop = CommandLoop::<K>::new(LoopParts {
        consumer: Arc::clone(&consumer),
        heartbeat: Arc::clone(&heartbeat),
        registry: inputs.registry,
        database: inputs.database,
        topics: &inputs.config.topics,
        dead_letter_limit: inputs.dead_letter_limit,
        publish: inputs.publish.clone(),
        outbox: inputs.outbox.clone(),
        shutdown: inputs.shutdown,
        metrics: inputs.metrics,
        batch_size: inputs.config.batch_size,
    });
    let shutdown = Arc::clone(inputs.shutdown);
    let thread = spawn(K::TOPIC.label(), move || {
        let outcome = command_loop.run();
        shutdown.store(true, std::sync::atomic::Ordering::Release);
        outcome
    })?;
    Ok(StartedLoop {
        consumer,
        heartbeat: (topic, heartbeat),
        thread,
    })
}

/// A stage's result: Ok(None) when a signal came before the stage was done.
pub(super) type Stage<T> = Result<Option<T>, StartupError>;

fn spawn<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, StartupError> {
    thread::Builder::new()
        .name(name.to_string())
        .spawn(work)
        .map_err(|error| StartupError::Thread {
            name: name.to_string(),
            error,
        })
}

/// How long start-up waits for a dependency before its log says so as a warning: a
/// stack started all at once has the handler up before Kafka or the database, and that
/// is no trouble yet.
const WAITING_IS_NORMAL_FOR: Duration = Duration::from_secs(30);

/// Start-up's wait for a dependency: `attempt` gives Err(why) while `what` cannot be
/// reached (logged, and tried again with a backoff from 0.2 s doubling to 10 s), and
/// Ok(outcome) once it answered, for better or worse. None when a signal came first.
fn retry_until_shutdown<T>(
    shutdown: &AtomicBool,
    what: &str,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> Option<T> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let waiting_since = Instant::now();
    loop {
        let why = match attempt() {
            Ok(outcome) => return Some(outcome),
            Err(why) => why,
        };
        let delay = backoff.next_delay();
        let waited = waiting_since.elapsed();
        let level = if waited < WAITING_IS_NORMAL_FOR {
            Level::Info
        } else {
            Level::Warn
        };
        log!(
            level,
            "waiting for {what} ({} s so far), trying again in {:.1} s: {why}",
            waited.as_secs(),
            delay.as_secs_f64()
        );
        if !sleep_unless_shutdown(delay, shutdown, || {}) {
            return None;
        }
    }
}
