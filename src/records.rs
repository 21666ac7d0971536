//! Avro records of SPEC §3 and their Confluent wire format (SPEC §4).
//!
//! Decoding fetches the writer schema by the id in the value (through
//! `schema_registry_converter`, which caches it) and then resolves the datum against
//! the handler's own reader schema, so writer schemas that only add properties or
//! defaulted fields still decode. Encoding uses, as the JVM handler, the latest version
//! registered under each TopicRecordNameStrategy subject (the Open Bank stack's
//! synchronizer registers them); the handler registers nothing unless asked
//! (`SCHEMA_REGISTRY_AUTO_REGISTER=true`: register its own schema, or use the latest
//! version when the registry refuses registrations). The subjects are checked at
//! start-up ([`AnswerEncoder::check_subjects`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use apache_avro::Schema;
use apache_avro::types::Value;
use schema_registry_converter::avro_common::get_supplied_schema;
use schema_registry_converter::blocking::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::blocking::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{RawError, SubjectNameStrategy};
use serde::Deserialize;
use uuid::Uuid;

use crate::config::RegistryCredentials;
use crate::rules::{AccountType, BalanceChange, Transfer};

pub const NAMESPACE: &str = "nl.openweb.data";

// Named types are defined at their first use and referred to by name afterwards, as
// the JVM services' schemas do.
const UUID_TYPE: &str = r#"{"type":"fixed","name":"Uuid","size":16}"#;
const ATYPE_TYPE: &str = r#"{"type":"enum","name":"Atype","symbols":["AUTO","MANUAL"]}"#;

fn record_schema(name: &str, fields: &[(&str, &str)]) -> Schema {
    let fields: Vec<String> = fields
        .iter()
        .map(|(field, ty)| format!(r#"{{"name":"{field}","type":{ty}}}"#))
        .collect();
    let json = format!(
        r#"{{"type":"record","name":"{name}","namespace":"{NAMESPACE}","fields":[{}]}}"#,
        fields.join(",")
    );
    Schema::parse_str(&json).unwrap_or_else(|e| panic!("built-in schema {name} is invalid: {e}"))
}

/// The handler's schemas, parsed once.
pub struct Schemas {
    pub confirm_account_creation: Schema,
    pub account_creation_confirmed: Schema,
    pub account_creation_failed: Schema,
    pub confirm_money_transfer: Schema,
    pub money_transfer_confirmed: Schema,
    pub money_transfer_failed: Schema,
    pub balance_changed: Schema,
}

pub static SCHEMAS: LazyLock<Schemas> = LazyLock::new(|| {
    let string = r#""string""#;
    let long = r#""long""#;
    Schemas {
        confirm_account_creation: record_schema(
            "ConfirmAccountCreation",
            &[("id", UUID_TYPE), ("a_type", ATYPE_TYPE)],
        ),
        account_creation_confirmed: record_schema(
            "AccountCreationConfirmed",
            &[
                ("id", UUID_TYPE),
                ("iban", string),
                ("token", string),
                ("a_type", ATYPE_TYPE),
            ],
        ),
        account_creation_failed: record_schema(
            "AccountCreationFailed",
            &[("id", UUID_TYPE), ("reason", string)],
        ),
        confirm_money_transfer: record_schema(
            "ConfirmMoneyTransfer",
            &[
                ("id", UUID_TYPE),
                ("token", string),
                ("amount", long),
                ("from", string),
                ("to", string),
                ("description", string),
            ],
        ),
        money_transfer_confirmed: record_schema("MoneyTransferConfirmed", &[("id", UUID_TYPE)]),
        money_transfer_failed: record_schema(
            "MoneyTransferFailed",
            &[("id", UUID_TYPE), ("reason", string)],
        ),
        balance_changed: record_schema(
            "BalanceChanged",
            &[
                ("iban", string),
                ("new_balance", long),
                ("changed_by", long),
                ("from_to", string),
                ("description", string),
            ],
        ),
    }
});

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum Atype {
    #[serde(rename = "AUTO")]
    Auto,
    #[serde(rename = "MANUAL")]
    Manual,
}

impl From<Atype> for AccountType {
    fn from(value: Atype) -> Self {
        match value {
            Atype::Auto => AccountType::Auto,
            Atype::Manual => AccountType::Manual,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ConfirmAccountCreation {
    #[serde(with = "apache_avro::serde::fixed")]
    pub id: [u8; 16],
    pub a_type: Atype,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ConfirmMoneyTransfer {
    #[serde(with = "apache_avro::serde::fixed")]
    pub id: [u8; 16],
    pub token: String,
    pub amount: i64,
    pub from: String,
    pub to: String,
    pub description: String,
}

impl ConfirmMoneyTransfer {
    pub fn command_id(&self) -> Uuid {
        Uuid::from_bytes(self.id)
    }

    pub fn into_transfer(self) -> Transfer {
        Transfer {
            token: self.token,
            amount: self.amount,
            from: self.from,
            to: self.to,
            description: self.description,
        }
    }
}

impl ConfirmAccountCreation {
    pub fn command_id(&self) -> Uuid {
        Uuid::from_bytes(self.id)
    }
}

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

/// Why a value could not be turned into a command, and so what the loop does with it.
#[derive(Debug)]
pub enum DecodeError {
    /// The record itself is bad (not the wire format, unknown schema id, datum that
    /// does not match its schema, wrong record type): dead-letter it and move on.
    Malformed(String),
    /// The registry could not be asked (unreachable, 5xx, auth): retry the same record.
    RegistryUnavailable(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Malformed(why) => write!(f, "malformed record: {why}"),
            DecodeError::RegistryUnavailable(why) => {
                write!(f, "schema registry unavailable: {why}")
            }
        }
    }
}

/// Failure to encode an answer: the registry could not be asked or refused the schema.
#[derive(Debug)]
pub struct EncodeError(pub String);

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not encode answer: {}", self.0)
    }
}

/// The HTTP status behind a registry error body: Confluent's error codes are the
/// status followed by two digits (40403 = schema not found), plain statuses also occur.
fn registry_status(error: &SRCError) -> Option<u32> {
    let raw = std::error::Error::source(error)?.downcast_ref::<RawError>()?;
    Some(if raw.error_code >= 10_000 {
        raw.error_code / 100
    } else {
        raw.error_code
    })
}

/// Decides whether a decoding failure is the record's fault. Only positive evidence
/// makes a record malformed: bytes not in the wire format, a schema id the registry says
/// it does not have, or a datum that does not decode with its schema. Anything else (no
/// answer, a timeout, an unreadable or 5xx answer, 401/403/408/429) is the registry's
/// trouble, and the record is tried again rather than dead-lettered.
fn classify_decode_error(error: SRCError) -> DecodeError {
    if positive_evidence(&error) {
        DecodeError::Malformed(error.to_string())
    } else {
        DecodeError::RegistryUnavailable(error.to_string())
    }
}

/// True when the registry said no to what was asked (a 4xx other than auth, timeout or
/// throttling: an unknown schema id, a missing subject) or Avro found the datum and the
/// schema do not fit; false when the registry could not be asked properly at all.
fn positive_evidence(error: &SRCError) -> bool {
    let source = std::error::Error::source(error);
    match registry_status(error) {
        Some(status) => (400..500).contains(&status) && ![401, 403, 408, 429].contains(&status),
        None if error.retriable => false,
        None => source.is_none() || source.is_some_and(|s| s.is::<apache_avro::Error>()),
    }
}

/// True when the registry refused a request it understood (4xx), as opposed to not
/// answering properly at all.
fn registry_refused(error: &SRCError) -> bool {
    registry_status(error).is_some_and(|status| (400..500).contains(&status))
}

/// How long the handler waits for the registry before retrying.
pub const REGISTRY_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the registry client settings, with basic authentication when an API key is
/// configured. Neither the URL (which may carry credentials too) nor the secret is
/// logged.
pub fn registry_settings(
    url: &str,
    credentials: Option<&RegistryCredentials>,
    timeout: Duration,
) -> Result<SrSettings, String> {
    let mut builder = SrSettings::new_builder(url.to_string());
    builder.set_timeout(timeout);
    if let Some(credentials) = credentials {
        builder.set_basic_authorization(&credentials.key, Some(credentials.secret.expose()));
    }
    builder.build().map_err(|e| e.error)
}

/// The most a length prefix in a datum may make the decoder allocate. Kafka records
/// are a few MB at most (1 MB by default); without a limit apache-avro trusts a hostile
/// length prefix up to 512 MiB per string.
pub const MAX_DATUM_ALLOCATION: usize = 16 * 1024 * 1024;

/// Applies [`MAX_DATUM_ALLOCATION`] process-wide (apache-avro keeps one global limit).
pub fn limit_datum_allocations() {
    apache_avro::util::max_allocation_bytes(MAX_DATUM_ALLOCATION);
}

/// Decodes command values of one topic.
pub struct CommandDecoder {
    decoder: AvroDecoder,
}

impl CommandDecoder {
    pub fn new(settings: SrSettings) -> Self {
        CommandDecoder {
            decoder: AvroDecoder::new(settings),
        }
    }

    /// Decodes a value written with any schema the registry knows whose record is
    /// `reader`'s record, resolved to `reader`.
    fn decode_value(&self, payload: &[u8], reader: &Schema) -> Result<Value, DecodeError> {
        let decoded = self.decoder.decode(Some(payload)).map_err(|error| {
            // The decoder caches some errors per schema id; a cached registry hiccup
            // would fail every later record of that schema, so never keep one.
            self.decoder.remove_errors_from_cache();
            classify_decode_error(error)
        })?;
        let expected = match reader {
            Schema::Record(record) => &record.name,
            _ => unreachable!("command schemas are records"),
        };
        match decoded.name {
            Some(name) if name == *expected => {}
            Some(name) => {
                return Err(DecodeError::Malformed(format!(
                    "expected a {} record, got {}",
                    expected.fullname(None),
                    name.fullname(None)
                )));
            }
            None => {
                return Err(DecodeError::Malformed(format!(
                    "expected a {} record, got a value of a schema that is not a named record",
                    expected.fullname(None)
                )));
            }
        }
        decoded.value.resolve(reader).map_err(|e| {
            DecodeError::Malformed(format!("does not resolve to the reader schema: {e}"))
        })
    }

    pub fn decode_account_creation(
        &self,
        payload: &[u8],
    ) -> Result<ConfirmAccountCreation, DecodeError> {
        let value = self.decode_value(payload, &SCHEMAS.confirm_account_creation)?;
        apache_avro::from_value(&value).map_err(|e| DecodeError::Malformed(e.to_string()))
    }

    pub fn decode_money_transfer(
        &self,
        payload: &[u8],
    ) -> Result<ConfirmMoneyTransfer, DecodeError> {
        let value = self.decode_value(payload, &SCHEMAS.confirm_money_transfer)?;
        apache_avro::from_value(&value).map_err(|e| DecodeError::Malformed(e.to_string()))
    }
}

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
#[derive(Debug)]
pub enum SubjectError {
    /// The registry could not be asked: try again.
    RegistryUnavailable(String),
    /// The subject is missing, or its latest schema cannot encode the handler's record.
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
                             refused to register the handler's schema under it: {error}"
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
                             {} records: {error}",
                                record.full_name()
                            )
                        },
                    )
                } else {
                    SubjectError::RegistryUnavailable(format!("subject {subject}: {error}"))
                });
            }
        }
        Ok(())
    }

    pub fn encode(&self, topic: &str, record: &OutputRecord) -> Result<Vec<u8>, EncodeError> {
        self.try_encode(topic, record).map_err(|error| {
            self.encoder.remove_errors_from_cache();
            EncodeError(error.to_string())
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

    #[test]
    fn schemas_have_the_spec_fields_in_order() {
        let names = |schema: &Schema| match schema {
            Schema::Record(record) => (
                record.name.fullname(None),
                record
                    .fields
                    .iter()
                    .map(|f| f.name.clone())
                    .collect::<Vec<_>>(),
            ),
            _ => panic!("not a record"),
        };
        let s = &*SCHEMAS;
        assert_eq!(
            names(&s.confirm_money_transfer),
            (
                "nl.openweb.data.ConfirmMoneyTransfer".to_string(),
                ["id", "token", "amount", "from", "to", "description"]
                    .map(String::from)
                    .to_vec()
            )
        );
        assert_eq!(
            names(&s.balance_changed).1,
            [
                "iban",
                "new_balance",
                "changed_by",
                "from_to",
                "description"
            ]
        );
        assert_eq!(
            names(&s.account_creation_confirmed).1,
            ["id", "iban", "token", "a_type"]
        );
        assert_eq!(names(&s.confirm_account_creation).1, ["id", "a_type"]);
        assert_eq!(names(&s.account_creation_failed).1, ["id", "reason"]);
        assert_eq!(names(&s.money_transfer_confirmed).1, ["id"]);
        assert_eq!(names(&s.money_transfer_failed).1, ["id", "reason"]);
    }

    #[test]
    fn subjects_use_the_full_record_name() {
        let record = OutputRecord::MoneyTransferFailed {
            id: Uuid::nil(),
            reason: "x".into(),
        };
        assert_eq!(record.full_name(), "nl.openweb.data.MoneyTransferFailed");
    }

    #[test]
    fn output_fields_validate_against_their_schema() {
        let id = Uuid::new_v4();
        let records = [
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
        ];
        for record in records {
            let fields = record
                .fields()
                .into_iter()
                .map(|(name, value)| (name.to_string(), value))
                .collect();
            let value = Value::Record(fields);
            assert!(value.validate(record.schema()), "{record:?}");
        }
    }

    #[test]
    fn only_positive_evidence_makes_a_record_malformed() {
        let answered = |code: u32| {
            let body = format!(r#"{{"error_code":{code},"message":"x"}}"#);
            let raw: RawError = serde_json::from_str(&body).unwrap();
            SRCError::non_retryable_with_cause(raw, "HTTP request failed")
        };
        let malformed = |e: SRCError| matches!(classify_decode_error(e), DecodeError::Malformed(_));
        assert!(malformed(answered(40403)), "schema not found");
        assert!(malformed(answered(404)), "plain 404");
        assert!(malformed(answered(42201)), "invalid request");
        assert!(
            malformed(SRCError::new("Invalid bytes", None, false)),
            "not the wire format"
        );
        let avro = apache_avro::Schema::parse_str("{").unwrap_err();
        assert!(malformed(SRCError::non_retryable_with_cause(
            avro,
            "Could not transform bytes using schema"
        )));

        assert!(!malformed(answered(50001)), "registry backend down");
        assert!(!malformed(answered(0)), "unreadable error body");
        assert!(!malformed(answered(40101)), "unauthorized");
        assert!(!malformed(answered(403)), "forbidden");
        assert!(!malformed(answered(429)), "rate limited");
        assert!(
            !malformed(SRCError::new(
                "http call to schema registry failed",
                None,
                true
            )),
            "no answer"
        );
        let garbled = std::io::Error::other("body cut short");
        assert!(!malformed(SRCError::non_retryable_with_cause(
            garbled,
            "could not parse to RawRegisteredSchema"
        )));
    }

    /// A decoder whose registry is a closed loopback port: any lookup is refused.
    fn decoder_without_registry() -> CommandDecoder {
        CommandDecoder::new(
            registry_settings("http://127.0.0.1:9", None, REGISTRY_TIMEOUT).unwrap(),
        )
    }

    #[test]
    fn values_not_in_the_wire_format_are_malformed_without_asking_the_registry() {
        let decoder = decoder_without_registry();
        for bytes in [
            &[1u8, 0, 0, 0, 1, 2][..],
            &[0, 0, 0][..],
            &[][..],
            &[0xde, 0xad, 0xbe, 0xef, 0, 0][..],
        ] {
            match decoder.decode_money_transfer(bytes) {
                Err(DecodeError::Malformed(_)) => {}
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_unreachable_registry_is_transient_not_a_bad_record() {
        // Magic byte 0, schema id 7 big-endian, then a datum.
        let bytes = [0u8, 0, 0, 0, 7, 2, 4];
        match decoder_without_registry().decode_account_creation(&bytes) {
            Err(DecodeError::RegistryUnavailable(_)) => {}
            other => panic!("{other:?}"),
        }
    }

    /// The datum part of the wire format, decoded by hand-made bytes: the first field of a
    /// ConfirmMoneyTransfer is the 16 raw UUID bytes, then zig-zag varint strings/longs.
    #[test]
    #[allow(deprecated)] // from_avro_datum is the shortest way to decode one datum
    fn money_transfer_datum_decodes_into_the_typed_record() {
        let id = Uuid::parse_str("00112233-4455-6677-8899-aabbccddeeff").unwrap();
        let mut datum = id.as_bytes().to_vec();
        let string = |s: &str, out: &mut Vec<u8>| {
            out.push((s.len() as u8) << 1);
            out.extend_from_slice(s.as_bytes());
        };
        string("tok", &mut datum);
        datum.push(0x03); // zig-zag -2
        string("cash", &mut datum);
        string("NL66OPEN0000000000", &mut datum);
        string("", &mut datum);
        let schema = &SCHEMAS.confirm_money_transfer;
        let value = apache_avro::from_avro_datum(schema, &mut datum.as_slice(), None).unwrap();
        let command: ConfirmMoneyTransfer = apache_avro::from_value(&value).unwrap();
        assert_eq!(command.command_id(), id);
        assert_eq!(command.amount, -2);
        assert_eq!(command.from, "cash");
        assert_eq!(command.to, "NL66OPEN0000000000");
    }
}
