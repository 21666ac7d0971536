//! Bringing back a client that has forgotten every broker.
//!
//! librdkafka 2.12 drops every broker it knows when a Metadata response lists none
//! (confluentinc/librdkafka#5301). A single KRaft broker answers so in the moment the
//! controller fences it, for instance just after it was frozen longer than its session
//! timeout; the client then never connects again, and its consumer leaves the group
//! for good once its session times out. The readiness prober asks each client for
//! metadata every few seconds: a client that has found no broker to ask several times
//! in a row gets the bootstrap servers added again, as librdkafka's own rebootstrap
//! would have done. Should the brokers merely be down, the servers added are extra
//! connections to the same brokers, which librdkafka drops again at its next metadata.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use log::info;
use rdkafka::client::{Client, ClientContext};

use crate::kafka::native;

/// Probes in a row that found no broker before the servers are added (the prober runs
/// every 5 s: about 15 s, well past a broker restart's reconnection).
const AFTER_PROBES: u32 = 3;
/// Between two additions to the same client while it still finds no broker.
const AGAIN_AFTER: Duration = Duration::from_secs(30);

/// What the prober knows of each client's reach, by the client's name.
pub(crate) struct Rebootstrap {
    bootstrap_servers: String,
    clients: HashMap<String, Unreachable>,
}

#[derive(Default)]
struct Unreachable {
    probes: u32,
    added_at: Option<Instant>,
}

impl Rebootstrap {
    pub fn new(bootstrap_servers: &str) -> Rebootstrap {
        Rebootstrap {
            bootstrap_servers: bootstrap_servers.to_string(),
            clients: HashMap::new(),
        }
    }

    /// After a probe of `client`: `no_broker` when it found no broker to ask.
    pub fn observe<C: ClientContext>(&mut self, name: &str, client: &Client<C>, no_broker: bool) {
        if !no_broker {
            self.clients.remove(name);
            return;
        }
        let unreachable = self.clients.entry(name.to_string()).or_default();
        unreachable.probes += 1;
        if due(unreachable, Instant::now()) {
            unreachable.added_at = Some(Instant::now());
            let added = native::add_brokers(client, &self.bootstrap_servers);
            info!(
                "the Kafka client of {name} has reached no broker in {} checks; \
                 bootstrapping it again ({added} servers of KAFKA_BROKERS added)",
                unreachable.probes
            );
        }
    }
}

fn due(unreachable: &Unreachable, now: Instant) -> bool {
    unreachable.probes >= AFTER_PROBES
        && unreachable
            .added_at
            .is_none_or(|at| now.duration_since(at) >= AGAIN_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_after_a_few_probes_and_then_not_too_often() {
        let now = Instant::now();
        let mut unreachable = Unreachable {
            probes: AFTER_PROBES - 1,
            added_at: None,
        };
        assert!(!due(&unreachable, now));
        unreachable.probes += 1;
        assert!(due(&unreachable, now));
        unreachable.added_at = Some(now);
        assert!(!due(&unreachable, now + AGAIN_AFTER / 2));
        assert!(due(&unreachable, now + AGAIN_AFTER));
    }
}
