//! The wire: the Avro records of SPEC §3 in the Confluent wire format of SPEC §4,
//! through the Schema Registry. [`decode`] turns command values into typed commands;
//! [`encode`] turns answers and events into values.

pub mod decode;
pub mod encode;
pub mod registry;
pub mod schemas;

pub use decode::{CommandDecoder, DecodeError};
pub use encode::{AnswerEncoder, EncodeError, OutputRecord, SubjectError};
pub use registry::{
    InvalidRegistryUrl, REGISTRY_TIMEOUT, limit_datum_allocations, registry_settings,
};
