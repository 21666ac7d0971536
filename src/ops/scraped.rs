//! The metrics read when scraped, from what already keeps them (the clients, the pool,
//! the stalls, the latest readiness report), so that nobody copies them into gauges.
//! Encoded through prometheus-client's [`Collector`] interface.

use std::fmt;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, MetricEncoder,
};
use prometheus_client::metrics::MetricType;
use rdkafka::consumer::Consumer;
use rdkafka::producer::Producer;

use crate::db::PoolUsage;
use crate::ops::dependencies::Dependencies;
use crate::ops::metrics::Describe;
use crate::ops::readiness::{self, Latest};

// The families read when scraped, with their names and help as the README lists them.
pub(crate) const ASSIGNED_PARTITIONS: Describe = (
    "assigned_partitions",
    "Partitions of the command topic assigned to this instance",
);
pub(crate) const PRODUCER_QUEUE_DEPTH: Describe = (
    "producer_queue_depth",
    "Messages and requests waiting in the producer (librdkafka's out-queue length)",
);
pub(crate) const DB_POOL_CONNECTIONS: Describe = (
    "db_pool_connections",
    "Database connections of the pool, by state",
);
pub(crate) const DB_POOL_MAX_CONNECTIONS: Describe = (
    "db_pool_max_connections",
    "Most connections the pool opens (DB_POOL_SIZE)",
);
pub(crate) const DEPENDENCY_UP: Describe = (
    "dependency_up",
    "1 when the latest readiness check of a dependency passed (HTTP_PORT set)",
);
pub(crate) const READY: Describe = (
    "ready",
    "1 when /health/ready answers 200 (the latest readiness report passed), else 0 (HTTP_PORT set)",
);
pub(crate) const RETRYING_SECONDS: Describe = (
    "retrying_seconds",
    "How long a partition has been retrying its batch (absent when it is not)",
);

/// One scrape's values.
#[derive(Debug)]
pub(crate) struct Scraped {
    /// Partitions assigned, by command topic (once the group has answered).
    pub assigned: Vec<(String, usize)>,
    pub producer_queue_depth: i32,
    pub pool: PoolUsage,
    /// Each dependency's latest readiness check: passed or not.
    pub dependencies: Vec<(String, bool)>,
    /// What `/health/ready` answers now: ready or not.
    pub ready: bool,
    /// How long each partition retrying its batch has been at it.
    pub retrying: Vec<((String, i32), Duration)>,
}

impl Scraped {
    pub fn read(dependencies: &Dependencies, latest: &Latest) -> Scraped {
        let clients = dependencies.clients.get();
        let assigned = clients.into_iter().flat_map(|clients| &clients.consumers);
        let assigned = assigned
            .filter_map(|consumer| {
                let events = consumer.context();
                let partitions = events.assignment()?;
                Some((events.topic().to_string(), partitions.len()))
            })
            .collect();
        Scraped {
            assigned,
            producer_queue_depth: clients.map_or(0, |c| c.producer.in_flight_count()),
            pool: dependencies.database.usage(),
            dependencies: latest
                .read(|report| report.map(|r| r.dependencies()).unwrap_or_default()),
            ready: readiness::answer(dependencies, latest).0,
            retrying: (dependencies.metrics.stalls.now().into_iter())
                .map(|(at, stall)| (at, stall.since.elapsed()))
                .collect(),
        }
    }
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let topic = |topic: &String| [("topic", topic.clone())];
        let assigned = self.assigned.iter().map(|(t, n)| (topic(t), *n as i64));
        gauges(&mut encoder, ASSIGNED_PARTITIONS, assigned)?;
        let depth = i64::from(self.producer_queue_depth);
        gauge(&mut encoder, PRODUCER_QUEUE_DEPTH, depth)?;
        let pool = [("idle", self.pool.idle), ("in_use", self.pool.in_use)];
        let pool = pool.map(|(state, n)| ([("state", state)], i64::from(n)));
        gauges(&mut encoder, DB_POOL_CONNECTIONS, pool)?;
        let max = i64::from(self.pool.max);
        gauge(&mut encoder, DB_POOL_MAX_CONNECTIONS, max)?;
        let up = self.dependencies.iter();
        let up = up.map(|(name, up)| ([("dependency", name.clone())], i64::from(*up)));
        gauges(&mut encoder, DEPENDENCY_UP, up)?;
        gauge(&mut encoder, READY, i64::from(self.ready))?;
        let retrying = self.retrying.iter().map(|((t, partition), since)| {
            ((topic(t), [("partition", *partition)]), since.as_secs_f64())
        });
        gauges(&mut encoder, RETRYING_SECONDS, retrying)
    }
}

/// A labelled gauge family; left out when it has no series, as the registry leaves out
/// an empty family.
fn gauges<L: EncodeLabelSet, V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    family: Describe,
    series: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result {
    let mut series = series.into_iter().peekable();
    if series.peek().is_none() {
        return Ok(());
    }
    let mut family = descriptor(encoder, family)?;
    for (labels, value) in series {
        family.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

fn gauge(encoder: &mut DescriptorEncoder, family: Describe, value: i64) -> fmt::Result {
    descriptor(encoder, family)?.encode_gauge(&value)
}

fn descriptor<'e>(
    encoder: &'e mut DescriptorEncoder,
    (name, help): Describe,
) -> Result<MetricEncoder<'e>, fmt::Error> {
    // The registry ends every help with a full stop; the same here.
    encoder.encode_descriptor(name, &format!("{help}."), None, MetricType::Gauge)
}
