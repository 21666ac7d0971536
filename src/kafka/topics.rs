//! The handler's own topic. The dead-letter topic is the handler's, not the Open Bank
//! stack's: its brokers do not create topics on first use, and its synchronizer deletes
//! every topic outside its topology. So the handler creates the dead-letter topic at
//! start-up when it is missing, and refuses to start when it may not.
//!
//! The start-up checks of the output topics share one admin client ([`StartupAdmin`]),
//! made for them and dropped when they are done.

use std::time::Duration;

use log::{info, warn};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::Client;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::metadata::Metadata;

use crate::config::Config;
use crate::kafka::rights::{self, WriteRight};
use crate::kafka::{AdminContext, client_config, native};

const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Short, so that the reason a cluster cannot be read reaches the log soon; start-up
/// tries again with a backoff.
const METADATA_TIMEOUT: Duration = Duration::from_secs(3);
/// What the producer sends at most (`message.max.bytes`, librdkafka's default).
const PRODUCER_MAX_BYTES: usize = 1_000_000;

/// Why the output topics are not ready.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The brokers did not answer, or the command topic is not there yet: try again.
    #[error("{0}")]
    Unreachable(String),
    /// The brokers refused to create the dead-letter topic, or deny writing to an output
    /// topic: the operator must act.
    #[error("{0}")]
    Refused(String),
}

/// What a missing dead-letter topic is created with.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TopicShape {
    pub(crate) partitions: i32,
    pub(crate) replication: i32,
}

/// The default shape: as many partitions as the money transfer command topic (dead
/// letters keep their record's partition), and three replicas, or one per broker on a
/// smaller cluster (the Open Bank stack has three brokers and min.insync.replicas=2).
/// `KAFKA_DEAD_LETTER_PARTITIONS` and `KAFKA_DEAD_LETTER_REPLICATION` override.
pub(crate) fn default_shape(
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

/// What start-up learnt about its output topics.
#[derive(Debug)]
pub(crate) struct OutputTopics {
    /// The largest dead letter its topic takes (see [`StartupAdmin::dead_letter_record_limit`]).
    pub(crate) dead_letter_limit: usize,
}

/// Start-up's checks of the output topics, on one admin client dropped when they are
/// done: the dead-letter topic made when missing, the right to write to every output
/// topic, and the dead-letter topic's record limit. Unreachable is for retrying.
pub(crate) fn prepare_output_topics(config: &Config) -> Result<OutputTopics, TopicError> {
    let admin = StartupAdmin::new(config)?;
    admin.ensure_dead_letter_topic()?;
    admin.check_write_rights()?;
    Ok(OutputTopics {
        dead_letter_limit: admin.dead_letter_record_limit(),
    })
}

/// One short-lived admin client for the questions asked before the handler starts (and
/// by `check`); what librdkafka logged meanwhile is forwarded to the log when it goes.
pub(crate) struct StartupAdmin<'a> {
    config: &'a Config,
    admin: AdminClient<AdminContext>,
}

impl<'a> StartupAdmin<'a> {
    pub(crate) fn new(config: &'a Config) -> Result<StartupAdmin<'a>, TopicError> {
        let admin = client_config(config)
            .create_with_context(AdminContext)
            .map_err(|e| {
                TopicError::Unreachable(format!("cannot create a Kafka admin client: {e}"))
            })?;
        Ok(StartupAdmin { config, admin })
    }

    /// The client underneath, for the probes of `check`.
    pub(crate) fn client(&self) -> &Client<AdminContext> {
        self.admin.inner()
    }

    /// Creates the dead-letter topic when the cluster does not have it (Ok too when
    /// another instance made it first).
    fn ensure_dead_letter_topic(&self) -> Result<(), TopicError> {
        let config = self.config;
        // All topics: asking for one by name could make a broker that auto-creates
        // topics create it with its own defaults.
        let metadata = self.client().fetch_metadata(None, METADATA_TIMEOUT);
        // Connection errors (a refused certificate) reach the log only from its queue.
        native::forward_logs(self.client());
        let metadata = metadata.map_err(|e| {
            TopicError::Unreachable(format!("cannot read the cluster's topics: {e}"))
        })?;
        let topic = &config.topics.dead_letter;
        if partitions_of(&metadata, topic).is_some() {
            return Ok(());
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
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let results = futures_executor::block_on(self.admin.create_topics([&new_topic], &options))
            .map_err(|e| TopicError::Unreachable(format!("cannot create topic {topic}: {e}")))?;
        match results.into_iter().next() {
            Some(Ok(_)) => {
                info!(
                    "created the dead-letter topic {topic}: {} partitions, replication {}",
                    shape.partitions, shape.replication
                );
                Ok(())
            }
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(()),
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
                "the dead-letter topic {topic} does not exist and the brokers refused to create \
                 it ({} partitions, replication {}): {code}. Create it (and add it to the \
                 topology of whatever manages the cluster's topics), or allow this handler to \
                 create it; KAFKA_DEAD_LETTER_PARTITIONS and KAFKA_DEAD_LETTER_REPLICATION set \
                 its shape",
                shape.partitions, shape.replication
            ))),
            None => Err(TopicError::Unreachable(format!(
                "no answer about creating topic {topic}"
            ))),
        }
    }

    /// Refuses when the brokers say this handler may not write to one of its output
    /// topics (answers, events, dead letters): every batch needing it would stall on its
    /// first record. A broker that does not say, a topic not there yet, or a question
    /// that goes unanswered (the brokers answered the metadata and topic requests just
    /// before) is no reason to refuse or to wait: a write refused later stops the handler
    /// naming the topic. `check` asks strictly ([`StartupAdmin::forbidden_outputs`]).
    fn check_write_rights(&self) -> Result<(), TopicError> {
        let forbidden = match self.forbidden_outputs(ADMIN_TIMEOUT) {
            Ok(forbidden) => forbidden,
            Err(why) => {
                info!("{why}; starting without knowing");
                return Ok(());
            }
        };
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

    /// The output topics the brokers say this handler may not write to, from one
    /// request; Err when it went unanswered.
    pub(crate) fn forbidden_outputs(&self, timeout: Duration) -> Result<Vec<String>, String> {
        let outputs: Vec<&str> = self.config.topics.outputs().map(String::as_str).to_vec();
        let rights = rights::write_rights(self.client(), &outputs, timeout).map_err(|why| {
            format!("cannot ask the brokers what this handler may write to: {why}")
        })?;
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
        Ok(forbidden)
    }

    /// The largest dead letter the dead-letter topic takes: its `max.message.bytes`,
    /// capped by what the producer sends; the producer's cap when the topic's cannot be
    /// read (no DescribeConfigs permission). A larger dead letter goes without its value.
    fn dead_letter_record_limit(&self) -> usize {
        let topic = &self.config.topics.dead_letter;
        let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
        let described = futures_executor::block_on(
            self.admin
                .describe_configs([&ResourceSpecifier::Topic(topic)], &options),
        );
        let topic_limit = described.ok().and_then(|described| {
            let resource = described.into_iter().next()?.ok()?;
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
}

impl Drop for StartupAdmin<'_> {
    fn drop(&mut self) {
        native::forward_logs(self.client());
    }
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
