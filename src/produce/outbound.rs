//! What the consumer loops hand to the producer thread: answers and events still to be
//! encoded, and dead letters as they came, with where they came from.

use std::sync::Arc;

use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders};

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
    pub dead_letter: Arc<str>,
    /// The largest dead letter its topic takes ([`crate::kafka::topics::OutputTopics`]).
    pub dead_letter_limit: usize,
}

impl Destinations {
    pub fn new(topics: &Topics, dead_letter_limit: usize) -> Self {
        Destinations {
            dead_letter_limit,
            account_creation_feedback: topics.account_creation_feedback.as_str().into(),
            money_transfer_feedback: topics.money_transfer_feedback.as_str().into(),
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
    /// in headers; without its value when it would be larger than `limit` bytes.
    pub fn dead_letter(
        topic: &Arc<str>,
        limit: usize,
        message: &impl Message,
        reason: &str,
    ) -> Outbound {
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
        let letter = Outbound {
            topic: Arc::clone(topic),
            key: message.key().map(<[u8]>::to_vec),
            body: OutboundBody::DeadLetter {
                value: message.payload().map(<[u8]>::to_vec),
                headers,
            },
        };
        if letter.size() > limit {
            letter.without_value().unwrap_or(letter)
        } else {
            letter
        }
    }

    /// The size of a dead letter's value; None for other records and for a dead letter
    /// without a value.
    pub fn dead_letter_size(&self) -> Option<usize> {
        match &self.body {
            OutboundBody::DeadLetter {
                value: Some(value), ..
            } => Some(value.len()),
            _ => None,
        }
    }

    /// About the record's size in a produce request: key, value, headers and the
    /// record's own framing (generously).
    fn size(&self) -> usize {
        const FRAMING: usize = 128;
        let key = self.key.as_ref().map_or(0, Vec::len);
        match &self.body {
            OutboundBody::DeadLetter { value, headers } => {
                let headers: usize = headers
                    .iter()
                    .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len) + 8)
                    .sum();
                FRAMING + key + value.as_ref().map_or(0, Vec::len) + headers
            }
            OutboundBody::Record(_) => FRAMING + key,
        }
    }
}

impl Outbound {
    /// This dead letter without its value, for a dead-letter topic that refuses the
    /// value's size: where the record is (its topic keeps it), its size and the reason
    /// travel in headers. None when this is not a dead letter with a value.
    pub fn without_value(&self) -> Option<Outbound> {
        let OutboundBody::DeadLetter {
            value: Some(value),
            headers,
        } = &self.body
        else {
            return None;
        };
        let size = value.len().to_string();
        let mut stub = OwnedHeaders::new_with_capacity(headers.count() + 2);
        for header in headers.iter() {
            stub = stub.insert(header);
        }
        let stub = stub
            .insert(Header {
                key: "dead_letter.value_size",
                value: Some(&size),
            })
            .insert(Header {
                key: "dead_letter.value_dropped",
                value: Some("larger than the dead-letter topic accepts; read it at its topic, partition and offset"),
            });
        Some(Outbound {
            topic: Arc::clone(&self.topic),
            key: self.key.clone(),
            body: OutboundBody::DeadLetter {
                value: None,
                headers: stub,
            },
        })
    }
}
