//! What the HTTP endpoints, the readiness prober and the scrape look at: the
//! dependencies, and the Kafka clients once they exist.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use schema_registry_converter::blocking::schema_registry::SrSettings;

use crate::consume::consumer::CommandConsumer;
use crate::db::Database;
use crate::ops::heartbeat::Heartbeat;
use crate::ops::metrics::Metrics;
use crate::produce::AnswerProducer;

/// How long one check may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the prober and the endpoints look at.
pub struct Dependencies {
    pub database: Database,
    /// A loop silent for longer than this fails liveness.
    pub liveness_stall: Duration,
    /// With a short timeout, unlike the decoders' settings.
    pub registry: SrSettings,
    pub metrics: Arc<Metrics>,
    pub shutdown: Arc<AtomicBool>,
    /// `KAFKA_BROKERS`, to bootstrap a client again that has forgotten every broker
    /// ([`crate::kafka::rebootstrap`]).
    pub bootstrap_servers: String,
    /// Set once the Kafka clients exist: the server runs from the start (liveness must
    /// answer while start-up waits for the database), the clients come after migrations.
    pub clients: OnceLock<KafkaClients>,
}

pub struct KafkaClients {
    pub consumers: Vec<Arc<CommandConsumer>>,
    pub producer: Arc<AnswerProducer>,
    /// Each consumer loop's heartbeat, by the topic it consumes.
    pub heartbeats: Vec<(String, Arc<Heartbeat>)>,
}
