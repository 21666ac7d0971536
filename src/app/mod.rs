//! Wiring: start-up in stages, the three threads, and shutdown on SIGTERM / SIGINT.
//!
//! [`App::start`] runs the stages of [`startup`] in order and gives a [`Running`]
//! handler: two consumer threads (one per command topic), the publisher of the
//! outbox's BalanceChanged events, and one producer thread that all three feed over an
//! `mpsc` channel, and the HTTP thread. [`Running::wait`] owns the shutdown order: a
//! signal stops the consumers after their batches in flight and they commit their last
//! offsets; the publisher publishes what they committed and lets go of its lock; the
//! producer thread then flushes; the HTTP thread stops; last, the consumers are dropped
//! and leave their group.

mod startup;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use log::{error, info};

pub use self::startup::StartupError;
use self::startup::{HttpThread, LoopInputs, StartedLoop};
use crate::config::Config;
use crate::consume::LoopError;
use crate::consume::kinds::{AccountCreations, MoneyTransfers};
use crate::db::Database;
use crate::ops::http;
use crate::ops::metrics::Metrics;
use crate::outbox::{Handover, PublisherError};
use crate::wire::{REGISTRY_TIMEOUT, limit_datum_allocations};

/// Why the handler stopped other than by a signal; `main` turns it into an exit code.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// A consumer loop stopped for good.
    #[error(transparent)]
    Loop(#[from] LoopError),
    /// The publisher of the BalanceChanged events stopped for good.
    #[error(transparent)]
    Publisher(#[from] PublisherError),
}

/// The handler before it runs.
pub struct App;

/// A started handler: its threads, and what must outlive them.
pub struct Running {
    shutdown: Arc<AtomicBool>,
    loops: Vec<StartedLoop>,
    publisher: JoinHandle<Result<Handover, PublisherError>>,
    producer: JoinHandle<()>,
    http: Option<HttpThread>,
}

impl App {
    /// Runs start-up's stages. None when a signal came before the handler was running.
    pub fn start(config: &Config) -> Result<Option<Running>, StartupError> {
        let shutdown = startup::signals()?;
        startup::announce(config);
        let database = Database::new(config.database_url.expose(), config.db_pool_size);
        let registry = startup::registry(config, REGISTRY_TIMEOUT)?;
        let metrics = Arc::new(Metrics::new());
        let http = startup::serve_http(config, &database, &metrics, &shutdown)?;
        let stopped_early = |http| {
            info!("stopped before the handler was running");
            stop_http(http);
            Ok(None)
        };

        // Three checks of three services, side by side: a restart (every deploy) waits
        // for the slowest of them rather than for their sum. One failing for good stops
        // the others, as the process is about to exit with its error.
        let (migrated, topics, subjects) = std::thread::scope(|scope| {
            let migrated = scope
                .spawn(|| stop_others_on_error(&shutdown, startup::migrate(&database, &shutdown)));
            let topics = scope.spawn(|| {
                stop_others_on_error(&shutdown, startup::output_topics(config, &shutdown))
            });
            let subjects = stop_others_on_error(
                &shutdown,
                startup::output_subjects(config, &registry, &shutdown),
            );
            (joined(migrated), joined(topics), subjects)
        });
        let (Some(()), Some(dead_letter_limit), Some(encoder)) = (migrated?, topics?, subjects?)
        else {
            return stopped_early(http);
        };

        limit_datum_allocations();
        let producer = startup::start_producer(config, encoder)?;
        let publisher =
            startup::start_publisher(config, &database, &producer.publish, &shutdown, &metrics)?;
        let inputs = LoopInputs {
            config,
            registry: &registry,
            database: &database,
            publish: &producer.publish,
            outbox: &publisher.signal,
            shutdown: &shutdown,
            metrics: &metrics,
            dead_letter_limit,
        };
        let loops = vec![
            startup::start_loop::<AccountCreations>(&inputs)?,
            startup::start_loop::<MoneyTransfers>(&inputs)?,
        ];
        // The loops hold the only signals now: once they stop, the publisher ends; then
        // the publisher and the loops hold the only senders: the producer thread ends.
        drop(publisher.signal);
        drop(producer.publish);
        if let Some(http) = &http {
            let clients = http::KafkaClients {
                consumers: loops.iter().map(|l| Arc::clone(&l.consumer)).collect(),
                producer: producer.producer,
                heartbeats: loops.iter().map(|l| l.heartbeat.clone()).collect(),
            };
            // Set once, here; a second set cannot happen.
            let _ = http.dependencies.clients.set(clients);
        }
        info!("running");
        crate::memory::give_back_free_memory();
        Ok(Some(Running {
            shutdown,
            loops,
            publisher: publisher.thread,
            producer: producer.thread,
            http,
        }))
    }
}

/// A start-up stage's outcome; on an error, the other stages are asked to stop.
fn stop_others_on_error<T>(shutdown: &AtomicBool, stage: startup::Stage<T>) -> startup::Stage<T> {
    if stage.is_err() {
        shutdown.store(true, std::sync::atomic::Ordering::Release);
    }
    stage
}

/// A scoped thread's result; its panic goes on in this thread.
fn joined<T>(thread: std::thread::ScopedJoinHandle<'_, T>) -> T {
    thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

impl Running {
    /// Waits until the handler stops: Ok after a signal, Err when a loop stopped for
    /// good (the other loop is stopped too).
    pub fn wait(self) -> Result<(), RunError> {
        let Running {
            shutdown,
            loops,
            publisher,
            producer,
            http,
        } = self;
        let mut failure = None;
        let mut consumers = Vec::with_capacity(loops.len());
        for started in loops {
            match join(started.thread) {
                Ok(()) => {}
                Err(stopped) => failure = Some(RunError::Loop(stopped)),
            }
            consumers.push(started.consumer);
        }
        // The loops stopped: the publisher publishes what they committed last and ends.
        let handover = match join(publisher) {
            Ok(handover) => Some(handover),
            Err(stopped) => {
                failure.get_or_insert(RunError::Publisher(stopped));
                None
            }
        };
        // The loops and the publisher dropped their senders: the producer flushes, ends.
        join(producer);
        // Only now may another instance publish what the producer had not delivered.
        drop(handover);
        // The consumers are done, so the shutdown flag is up and the server stops too.
        shutdown.store(true, Ordering::Release);
        stop_http(http);
        // The last holders of the consumers: dropped, they close (a static member does
        // not leave its group: a successor under its name takes its place). Each close
        // takes about 0.1 s, side by side the process ends, and its successor starts,
        // that much sooner.
        std::thread::scope(|scope| {
            for consumer in consumers {
                scope.spawn(move || drop(consumer));
            }
        });
        match failure {
            None => {
                info!("stopped cleanly");
                Ok(())
            }
            Some(why) => Err(why),
        }
    }
}

/// Stops the HTTP thread (the shutdown flag is up) and lets go of what it served from.
fn stop_http(http: Option<HttpThread>) {
    if let Some(HttpThread {
        dependencies,
        thread,
    }) = http
    {
        dependencies.shutdown.store(true, Ordering::Release);
        join(thread);
        drop(dependencies);
    }
}

/// A thread's result; a panic in it goes on on this thread (a bug: with the release
/// profile's `panic = "abort"` the process has ended already).
fn join<T>(thread: JoinHandle<T>) -> T {
    thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Logs why the handler stops and exits with `code`; used by `main`.
pub fn exit_with(message: &dyn std::fmt::Display, code: i32) -> ! {
    error!("{message}");
    eprintln!("command-handler: {message}");
    std::process::exit(code)
}
