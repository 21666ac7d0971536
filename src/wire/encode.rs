//! Answers and events in the Confluent wire format: as the JVM handler, with the latest
//! version registered under each TopicRecordNameStrategy subject (the Open Bank stack's
//! synchronizer registers them); the handler registers nothing unless asked
//! (`SCHEMA_REGISTRY_AUTO_REGISTER=true`: register its own schema, or use the latest
//! version when the registry refuses registrations). The subjects are checked at
//! start-up ([`AnswerEncoder::check_subjects`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::types::Value;
use schema_registry_converter::avro_common::get_supplied_schema;
use schema_registry_converter::blocking::avro::AvroEncoder;
use schema_registry_converter::blocking::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::SubjectNameStrategy;
use uuid::Uuid;

use super::registry::{Brief, positive_evidence, registry_refused, registry_status};
use super::schemas::SCHEMAS;
use crate::domain::{AccountType, BalanceChange};

/// The records the handler writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputRecord {
    AccountCreationConfirmed {
        id: Uuid,
        iban: String,
        token: String,
        a_type: AccountType,
    },
    AccountCreationFailed {
        id: Uuid,
        reason: String,
    },
    MoneyTransferConfirmed {
        id: Uuid,
    },
    MoneyTransferFailed {
        id: Uuid,
        reason: String,
    },
    BalanceChanged(BalanceChange),
}

impl OutputRecord {
    fn schema(&self) -> &'static Schema {
        let schemas = &*SCHEMAS;
        match self {
            OutputRecord::AccountCreationConfirmed { .. } => &schemas.account_creation_confirmed,
            OutputRecord::AccountCreationFailed { .. } => &schemas.account_creation_failed,
            OutputRecord::MoneyTransferConfirmed { .. } => &schemas.money_transfer_confirmed,
            OutputRecord::MoneyTransferFailed { .. } => &schemas.money_transfer_failed,
            OutputRecord::BalanceChanged(_) => &schemas.balance_changed,
        }
    }

    /// Full record name, the second half of the TopicRecordNameStrategy subject.
    pub fn full_name(&self) -> &'static str {
        match self {
            OutputRecord::AccountCreationConfirmed { .. } => {
                "nl.openweb.data.AccountCreationConfirmed"
            }
            OutputRecord::AccountCreationFailed { .. } => "nl.openweb.data.AccountCreationFailed",
            OutputRecord::MoneyTransferConfirmed { .. } => "nl.openweb.data.MoneyTransferConfirmed",
            OutputRecord::MoneyTransferFailed { .. } => "nl.openweb.data.MoneyTransferFailed",
            OutputRecord::BalanceChanged(_) => "nl.openweb.data.BalanceChanged",
        }
    }

    fn fields(&self) -> Vec<(&'static str, Value)> {
        let uuid = |id: &Uuid| Value::Fixed(16, id.as_bytes().to_vec());
        match self {
            OutputRecord::AccountCreationConfirmed {
                id,
                iban,
                token,
                a_type,
            } => vec![
                ("id", uuid(id)),
                ("iban", Value::String(iban.clone())),
                ("token", Value::String(token.clone())),
                ("a_type", atype_value(*a_type)),
            ],
            OutputRecord::AccountCreationFailed { id, reason }
            | OutputRecord::MoneyTransferFailed { id, reason } => {
                vec![("id", uuid(id)), ("reason", Value::String(reason.clone()))]
            }
            OutputRecord::MoneyTransferConfirmed { id } => vec![("id", uuid(id))],
            OutputRecord::BalanceChanged(change) => vec![
                ("iban", Value::String(change.iban.clone())),
                ("new_balance", Value::Long(change.new_balance)),
                ("changed_by", Value::Long(change.changed_by)),
                ("from_to", Value::String(change.from_to.clone())),
                ("description", Value::String(change.description.clone())),
            ],
        }
    }
}

fn atype_value(a_type: AccountType) -> Value {
    match a_type {
        AccountType::Auto => Value::Enum(0, "AUTO".to_string()),
        AccountType::Manual => Value::Enum(1, "MANUAL".to_string()),
    }
}

/// Failure to encode an answer: the registry could not be asked or refused the schema.
#[derive(Debug, thiserror::Error)]
#[error("could not encode answer: {0}")]
pub struct EncodeError(String);

/// Encodes answers and events under `<topic>-<full record name>` subjects.
pub struct AnswerEncoder {
    encoder: AvroEncoder,
    register: bool,
    /// The subject strategies of each (record, topic), made once: the encoder's cache is
    /// keyed by them, and making one per record would format a subject (and, to
    /// register, serialise a whole schema to JSON) for every record sent.
    strategies: RefCell<HashMap<&'static str, HashMap<String, Arc<Strategies>>>>,
}

/// How one (topic, record) is written: with the subject's latest version, and, when
/// registering, with the handler's own schema first.
struct Strategies {
    latest: SubjectNameStrategy,
    register: Option<SubjectNameStrategy>,
}

/// Why a subject cannot be written with, found at start-up.
#[derive(Debug, thiserror::Error)]
pub enum SubjectError {
    /// The registry could not be asked: try again.
    #[error("the Schema Registry cannot be asked: {0}")]
    RegistryUnavailable(String),
    /// The subject is missing, or its latest schema cannot encode the handler's record.
    #[error("{0}")]
    Unusable(String),
}

impl AnswerEncoder {
    /// `register`: register the handler's own schemas (`SCHEMA_REGISTRY_AUTO_REGISTER`);
    /// otherwise write with each subject's latest version.
    pub fn new(settings: SrSettings, register: bool) -> Self {
        AnswerEncoder {
            encoder: AvroEncoder::new(settings),
            register,
            strategies: RefCell::new(HashMap::new()),
        }
    }

    /// Encodes one record of each kind the handler writes, to find a missing subject,
    /// or a latest schema that cannot encode the handler's records, before any command
    /// is taken rather than at the first answer. The schemas found are cached.
    pub fn check_subjects(&self, topics: &crate::config::Topics) -> Result<(), SubjectError> {
        let id = Uuid::nil();
        let samples = [
            (
                &topics.account_creation_feedback,
                OutputRecord::AccountCreationConfirmed {
                    id,
                    iban: String::new(),
                    token: String::new(),
                    a_type: AccountType::Auto,
                },
            ),
            // Both symbols: a registered enum must know each (in the same order).
            (
                &topics.account_creation_feedback,
                OutputRecord::AccountCreationConfirmed {
                    id,
                    iban: String::new(),
                    token: String::new(),
                    a_type: AccountType::Manual,
                },
            ),
            (
                &topics.account_creation_feedback,
                OutputRecord::AccountCreationFailed {
                    id,
                    reason: String::new(),
                },
            ),
            (
                &topics.money_transfer_feedback,
                OutputRecord::MoneyTransferConfirmed { id },
            ),
            (
                &topics.money_transfer_feedback,
                OutputRecord::MoneyTransferFailed {
                    id,
                    reason: String::new(),
                },
            ),
            (
                &topics.balance_changed,
                OutputRecord::BalanceChanged(BalanceChange {
                    iban: String::new(),
                    new_balance: 0,
                    changed_by: 0,
                    from_to: String::new(),
                    description: String::new(),
                }),
            ),
        ];
        for (topic, record) in &samples {
            let subject = format!("{topic}-{}", record.full_name());
            if let Err(error) = self.try_encode(topic, record) {
                self.encoder.remove_errors_from_cache();
                return Err(if positive_evidence(&error) {
                    SubjectError::Unusable(
                        if registry_status(&error) == Some(404) && self.register {
                            format!(
                                "subject {subject} is not registered and the Schema Registry \
                             refused to register the handler's schema under it: {}",
                                Brief(&error)
                            )
                        } else if registry_status(&error) == Some(404) {
                            format!(
                                "subject {subject} is not registered in the Schema Registry. The \
                             handler writes with each subject's latest registered version, as \
                             the JVM handler does: register the schema (the Open Bank stack's \
                             synchronizer does), or set SCHEMA_REGISTRY_AUTO_REGISTER=true to let \
                             the handler register its own"
                            )
                        } else {
                            format!(
                                "the latest schema of subject {subject} cannot encode the handler's \
                             {} records: {}",
                                record.full_name(),
                                Brief(&error)
                            )
                        },
                    )
                } else {
                    SubjectError::RegistryUnavailable(format!(
                        "subject {subject}: {}",
                        Brief(&error)
                    ))
                });
            }
        }
        Ok(())
    }

    pub fn encode(&self, topic: &str, record: &OutputRecord) -> Result<Vec<u8>, EncodeError> {
        self.try_encode(topic, record).map_err(|error| {
            self.encoder.remove_errors_from_cache();
            EncodeError(Brief(&error).to_string())
        })
    }

    fn strategies(&self, topic: &str, record: &OutputRecord) -> Arc<Strategies> {
        let mut by_record = self.strategies.borrow_mut();
        let by_topic = by_record.entry(record.full_name()).or_default();
        if let Some(strategies) = by_topic.get(topic) {
            return Arc::clone(strategies);
        }
        let strategies = Arc::new(Strategies {
            latest: SubjectNameStrategy::TopicRecordNameStrategy(
                topic.to_string(),
                record.full_name().to_string(),
            ),
            register: self.register.then(|| {
                SubjectNameStrategy::TopicRecordNameStrategyWithSchema(
                    topic.to_string(),
                    get_supplied_schema(record.schema()),
                )
            }),
        });
        by_topic.insert(topic.to_string(), Arc::clone(&strategies));
        strategies
    }

    fn try_encode(&self, topic: &str, record: &OutputRecord) -> Result<Vec<u8>, SRCError> {
        let strategies = self.strategies(topic, record);
        let latest = &strategies.latest;
        let Some(register) = &strategies.register else {
            return self.encoder.encode(record.fields(), latest);
        };
        match self.encoder.encode(record.fields(), register) {
            Ok(bytes) => Ok(bytes),
            // 401/403 (not allowed), 405 (read-only mode), 409 (incompatible with the
            // locked-down subject): fall back to the subject's latest version.
            Err(error) if registry_refused(&error) => {
                self.encoder.remove_errors_from_cache();
                self.encoder.encode(record.fields(), latest)
            }
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One record of each kind.
    fn every_record() -> [OutputRecord; 5] {
        let id = Uuid::new_v4();
        [
            OutputRecord::AccountCreationConfirmed {
                id,
                iban: "NL66OPEN0000000000".into(),
                token: "00000000000000000000".into(),
                a_type: AccountType::Manual,
            },
            OutputRecord::AccountCreationFailed {
                id,
                reason: "r".into(),
            },
            OutputRecord::MoneyTransferConfirmed { id },
            OutputRecord::MoneyTransferFailed {
                id,
                reason: "r".into(),
            },
            OutputRecord::BalanceChanged(BalanceChange {
                iban: "NL66OPEN0000000000".into(),
                new_balance: 1,
                changed_by: -1,
                from_to: "cash".into(),
                description: "d".into(),
            }),
        ]
    }

    #[test]
    fn subjects_use_the_full_name_of_the_record_the_schema_declares() {
        for record in every_record() {
            let Schema::Record(declared) = record.schema() else {
                panic!("{record:?}: not a record schema");
            };
            assert_eq!(
                record.full_name(),
                declared.name.fullname(None),
                "{record:?}"
            );
            assert_eq!(declared.name.namespace(), Some("nl.openweb.data"));
        }
    }

    #[test]
    fn output_fields_validate_against_their_schema() {
        for record in every_record() {
            let fields = record
                .fields()
                .into_iter()
                .map(|(name, value)| (name.to_string(), value))
                .collect();
            let value = Value::Record(fields);
            assert!(value.validate(record.schema()), "{record:?}");
        }
    }
}
