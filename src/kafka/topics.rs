//! The handler's own topic. The dead-letter topic is the handler's, not the Open Bank
//! stack's: its brokers do not create topics on first use, and its synchronizer deletes
//! every topic outside its topology. So the handler creates the dead-letter topic at
//! start-up when it is missing, and refuses to start when it may not.

use std::time::Duration;

use log::{info, warn};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::metadata::Metadata;
use rdkafka::producer::{BaseProducer, Producer};

use crate::config::Config;
use crate::kafka::client_config;
use crate::kafka::rights::{self, WriteRight};

const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Short, so that the reason a cluster cannot be read reaches the log soon; start-up
/// tries again with a backoff.
const METADATA_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the dead-letter topic is not there.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The brokers did not answer, or the command topic is not there yet: try again.
    #[error("{0}")]
    Unreachable(String),
    /// The brokers refused to create it: the operator must act.
    #[error("{0}")]
    Refused(String),
}

/// What a missing dead-letter topic is created with.
#[derive(Debug, PartialEq, Eq)]
pub struct TopicShape {
    pub partitions: i32,
    pub replication: i32,
}

/// The default shape: as many partitions as the money transfer command topic (dead
/// letters keep their record's partition), and three replicas, or one per broker on a
/// smaller cluster (the Open Bank stack has three brokers and min.insync.replicas=2).
/// `KAFKA_DEAD_LETTER_PARTITIONS` and `KAFKA_DEAD_LETTER_REPLICATION` override.
pub fn default_shape(
    config: &Config,
    command_partitions: Option<i32>,
    brokers: usize,
) -> TopicShape {
    TopicShape {
        partitions: config
            .dead_letter_partitions
            .unwrap_or_else(|| command_partitions.unwrap_or(1).max(1)),
        replication: config
            .dead_letter_replication
            .unwrap_or_else(|| (brokers as i32).clamp(1, 3)),
    }
}

/// Creates the dead-letter topic when the cluster does not have it. Ok(Some(shape))
/// when it was created, Ok(None) when it was there (or another instance made it first).
pub fn ensure_dead_letter_topic(config: &Config) -> Result<Option<TopicShape>, TopicError> {
    // All topics: asking for one by name could make a broker that auto-creates topics
    // create it with its own defaults. Read through a producer, which can be polled:
    // connection errors (a refused certificate) reach the log only through a poll.
    let reader: BaseProducer = client_config(config)
        .create()
        .map_err(|e| TopicError::Unreachable(format!("cannot create a Kafka client: {e}")))?;
    let metadata = reader.client().fetch_metadata(None, METADATA_TIMEOUT);
    reader.poll(Duration::from_millis(100));
    let metadata = metadata
        .map_err(|e| TopicError::Unreachable(format!("cannot read the cluster's topics: {e}")))?;
    let topic = &config.topics.dead_letter;
    if partitions_of(&metadata, topic).is_some() {
        return Ok(None);
    }
    let command_partitions = partitions_of(&metadata, &config.topics.money_transfer_commands);
    if command_partitions.is_none() && config.dead_letter_partitions.is_none() {
        // The topics are made by whatever manages the cluster, perhaps just after this
        // handler starts: wait rather than guess a partition count.
        return Err(TopicError::Unreachable(format!(
            "waiting for the command topic {}, whose partition count the dead-letter topic \
             {topic} takes (or set KAFKA_DEAD_LETTER_PARTITIONS)",
            config.topics.money_transfer_commands
        )));
    }
    let shape = default_shape(config, command_partitions, metadata.brokers().len());
    let new_topic = NewTopic::new(
        topic,
        shape.partitions,
        TopicReplication::Fixed(shape.replication),
    );
    let admin: AdminClient<DefaultClientContext> = client_config(config)
        .create()
        .map_err(|e| TopicError::Unreachable(format!("cannot create a Kafka admin client: {e}")))?;
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let results = futures_executor::block_on(admin.create_topics([&new_topic], &options))
        .map_err(|e| TopicError::Unreachable(format!("cannot create topic {topic}: {e}")))?;
    match results.into_iter().next() {
        Some(Ok(_)) => {
            info!(
                "created the dead-letter topic {topic}: {} partitions, replication {}",
                shape.partitions, shape.replication
            );
            Ok(Some(shape))
        }
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(None),
        // The cluster is busy or still electing: ask again.
        Some(Err((
            _,
            code @ (RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::NotController
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NetworkException),
        ))) => Err(TopicError::Unreachable(format!(
            "creating topic {topic}: {code}"
        ))),
        Some(Err((_, code))) => Err(TopicError::Refused(format!(
            "the dead-letter topic {topic} does not exist and the brokers refused to create it \
             ({} partitions, replication {}): {code}. Create it (and add it to the topology \
             of whatever manages the cluster's topics), or allow this handler to create it; \
             KAFKA_DEAD_LETTER_PARTITIONS and KAFKA_DEAD_LETTER_REPLICATION set its shape",
            shape.partitions, shape.replication
        ))),
        None => Err(TopicError::Unreachable(format!(
            "no answer about creating topic {topic}"
        ))),
    }
}

/// Refuses when the brokers say this handler may not write to one of its output topics
/// (answers, events, dead letters): every batch needing it would stall on its first
/// record. A broker that does not say, or a topic not there yet, is no reason to refuse.
pub fn check_write_rights(config: &Config) -> Result<(), TopicError> {
    let reader: BaseProducer = client_config(config)
        .create()
        .map_err(|e| TopicError::Unreachable(format!("cannot create a Kafka client: {e}")))?;
    let forbidden = forbidden_outputs(reader.client(), config, ADMIN_TIMEOUT);
    if forbidden.is_empty() {
        return Ok(());
    }
    Err(TopicError::Refused(format!(
        "this handler may not write to {}: the brokers' ACLs do not grant its principal \
         WRITE there. Grant it (for example kafka-acls --add --allow-principal User:<the \
         handler's user> --operation Write --topic <topic>)",
        forbidden.join(", ")
    )))
}

/// The output topics the brokers say this client may not write to.
pub(crate) fn forbidden_outputs<C: ClientContext>(
    client: &Client<C>,
    config: &Config,
    timeout: Duration,
) -> Vec<String> {
    let outputs: Vec<&str> = config.topics.outputs().map(String::as_str).to_vec();
    let rights = match rights::write_rights(client, &outputs, timeout) {
        Ok(rights) => rights,
        Err(why) => {
            info!("cannot tell whether this handler may write to its output topics: {why}");
            return Vec::new();
        }
    };
    let mut forbidden = Vec::new();
    for (topic, right) in rights {
        match right {
            WriteRight::Granted => {}
            WriteRight::Denied => forbidden.push(topic),
            WriteRight::Unknown(why) => {
                info!("cannot tell whether this handler may write to {topic}: {why}");
            }
        }
    }
    forbidden
}

/// What the producer sends at most (`message.max.bytes`, librdkafka's default).
const PRODUCER_MAX_BYTES: usize = 1_000_000;

/// The largest dead letter the dead-letter topic takes: its `max.message.bytes`, capped
/// by what the producer sends; the producer's cap when the topic's cannot be read (no
/// DescribeConfigs permission). A larger dead letter goes without its value.
pub fn dead_letter_record_limit(config: &Config) -> usize {
    let topic = &config.topics.dead_letter;
    let topic_limit = client_config(config)
        .create::<AdminClient<DefaultClientContext>>()
        .ok()
        .and_then(|admin| {
            let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
            let described = futures_executor::block_on(
                admin.describe_configs([&ResourceSpecifier::Topic(topic)], &options),
            );
            let resource = described.ok()?.into_iter().next()?.ok()?;
            resource
                .get("max.message.bytes")?
                .value
                .as_ref()?
                .parse::<usize>()
                .ok()
        });
    let limit = match topic_limit {
        Some(limit) => limit.min(PRODUCER_MAX_BYTES),
        None => {
            warn!("cannot read max.message.bytes of {topic}; taking {PRODUCER_MAX_BYTES}");
            PRODUCER_MAX_BYTES
        }
    };
    info!("dead letters larger than {limit} bytes go to {topic} without their value");
    limit
}

fn partitions_of(metadata: &Metadata, topic: &str) -> Option<i32> {
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Config {
        Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
    }

    #[test]
    fn shaped_like_the_command_topic_with_up_to_three_replicas() {
        let defaults = config(&[]);
        assert_eq!(
            default_shape(&defaults, Some(9), 3),
            TopicShape {
                partitions: 9,
                replication: 3
            }
        );
        assert_eq!(
            default_shape(&defaults, Some(9), 5),
            TopicShape {
                partitions: 9,
                replication: 3
            }
        );
        assert_eq!(
            default_shape(&defaults, None, 1),
            TopicShape {
                partitions: 1,
                replication: 1
            }
        );
        let chosen = config(&[
            ("KAFKA_DEAD_LETTER_PARTITIONS", "2"),
            ("KAFKA_DEAD_LETTER_REPLICATION", "2"),
        ]);
        assert_eq!(
            default_shape(&chosen, Some(9), 3),
            TopicShape {
                partitions: 2,
                replication: 2
            }
        );
    }
}
