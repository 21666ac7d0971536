//! Commands from their Confluent wire format (SPEC §4): the writer schema is fetched by
//! the id in the value (and cached by `schema_registry_converter`), and the datum is
//! resolved against the handler's own reader schema, so writer schemas that only add
//! properties or defaulted fields still decode.

use apache_avro::Schema;
use apache_avro::types::Value;
use schema_registry_converter::blocking::avro::AvroDecoder;
use schema_registry_converter::blocking::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use serde::Deserialize;
use uuid::Uuid;

use super::registry::{Brief, positive_evidence};
use super::schemas::SCHEMAS;
use crate::domain::{AccountType, Transfer};

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ConfirmAccountCreation {
    #[serde(with = "apache_avro::serde::fixed")]
    pub id: [u8; 16],
    pub a_type: AccountType,
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

/// Why a value could not be turned into a command, and so what the loop does with it.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The record itself is bad (not the wire format, unknown schema id, datum that
    /// does not match its schema, wrong record type): dead-letter it and move on.
    #[error("malformed record: {0}")]
    Malformed(String),
    /// The registry could not be asked (unreachable, 5xx, auth): retry the same record.
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
}

/// Decides whether a decoding failure is the record's fault. Only positive evidence
/// makes a record malformed: bytes not in the wire format, a schema id the registry says
/// it does not have, or a datum that does not decode with its schema. Anything else (no
/// answer, a timeout, an unreadable or 5xx answer, 401/403/408/429) is the registry's
/// trouble, and the record is tried again rather than dead-lettered.
fn classify_decode_error(error: SRCError) -> DecodeError {
    if positive_evidence(&error) {
        DecodeError::Malformed(Brief(&error).to_string())
    } else {
        DecodeError::RegistryUnavailable(Brief(&error).to_string())
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{REGISTRY_TIMEOUT, registry_settings};

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
