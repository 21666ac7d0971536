//! What the consumer loops hand to the producer thread: answers and events still to be
//! encoded, and dead letters as they came, with where they came from.

use std::sync::Arc;

use rdkafka::Message;
use rdkafka::message::{Header, OwnedHeaders};

use crate::config::Topics;
use crate::wire::OutputRecord;

/// A record for the producer thread to publish.
#[derive(Clone, Debug)]
pub struct Outbound {
    /// Shared: the same few topic names go on every record.
    pub topic: Arc<str>,
    /// None only for a dead letter of a record that had no key.
    pub key: Option<Vec<u8>>,
    pub body: OutboundBody,
}

#[derive(Clone, Debug)]
pub enum OutboundBody {
    /// An answer or event, encoded by the producer thread.
    Record(OutputRecord),
    /// A record that could not be handled, published as it came with where it came from.
    DeadLetter {
        value: Option<Vec<u8>>,
        headers: OwnedHeaders,
    },
}

/// Where a loop's records go, named once rather than copied into every record.
pub struct Destinations {
    pub account_creation_feedback: Arc<str>,
    pub money_transfer_feedback: Arc<str>,
    pub balance_changed: Arc<str>,
    pub dead_letter: Arc<str>,
}

impl From<&Topics> for Destinations {
    fn from(topics: &Topics) -> Self {
        Destinations {
            account_creation_feedback: topics.account_creation_feedback.as_str().into(),
            money_transfer_feedback: topics.money_transfer_feedback.as_str().into(),
            balance_changed: topics.balance_changed.as_str().into(),
            dead_letter: topics.dead_letter.as_str().into(),
        }
    }
}

impl Outbound {
    /// An answer or event, keyed by `key`.
    pub fn record(topic: &Arc<str>, key: Vec<u8>, record: OutputRecord) -> Outbound {
        Outbound {
            topic: Arc::clone(topic),
            key: Some(key),
            body: OutboundBody::Record(record),
        }
    }

    /// A record that could not be handled, as it came, with its origin and the reason
    /// in headers.
    pub fn dead_letter(topic: &Arc<str>, message: &impl Message, reason: &str) -> Outbound {
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "dead_letter.topic",
                value: Some(message.topic()),
            })
            .insert(Header {
                key: "dead_letter.partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "dead_letter.offset",
                value: Some(&offset),
            })
            .insert(Header {
                key: "dead_letter.reason",
                value: Some(reason),
            });
        Outbound {
            topic: Arc::clone(topic),
            key: message.key().map(<[u8]>::to_vec),
            body: OutboundBody::DeadLetter {
                value: message.payload().map(<[u8]>::to_vec),
                headers,
            },
        }
    }
}
