//! The checks of one value that clap's own parsers do not make. Each error says what
//! is wrong without repeating the value: the caller shows it, unless it is a secret.

use std::convert::Infallible;
use std::path::PathBuf;

use super::{SaslMechanism, Secret};

/// Text without white space around it (a pasted value's stray space or newline).
pub(super) fn text(value: &str) -> Result<String, String> {
    if value.trim() != value {
        return Err("has leading or trailing white space".into());
    }
    Ok(value.to_string())
}

/// A name Kafka accepts for a topic.
pub(super) fn topic(value: &str) -> Result<String, String> {
    let topic = text(value)?;
    let legal = topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if !legal {
        return Err(
            "is not a legal Kafka topic name (letters, digits, '.', '_', '-'; at most 249)".into(),
        );
    }
    Ok(topic)
}

pub(super) fn secret(value: &str) -> Result<Secret, Infallible> {
    Ok(Secret::new(value))
}

/// The registry's base URL, which may carry credentials.
pub(super) fn registry_url(value: &str) -> Result<Secret, String> {
    let url = text(value)?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("must start with http:// or https://".into());
    }
    Ok(Secret::new(url))
}

pub(super) fn database_url(value: &str) -> Result<Secret, String> {
    if !(value.starts_with("postgres://") || value.starts_with("postgresql://")) {
        return Err("must start with postgres:// or postgresql://".into());
    }
    Ok(Secret::new(value))
}

/// A file that is there to be read, checked now rather than by the first client.
pub(super) fn readable_file(value: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    if !path.is_file() {
        return Err("is not a readable file".into());
    }
    Ok(path)
}

/// A name Kafka accepts in a `group.instance.id` (letters, digits, '.', '_', '-'),
/// short enough for the consumers' suffixes; `none` turns static membership off.
pub(super) fn group_instance_name(value: &str) -> Result<String, String> {
    let name = text(value)?;
    let legal = !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if !legal {
        return Err("must be 1 to 200 letters, digits, '.', '_' or '-' (or none)".into());
    }
    Ok(name)
}

/// `true` or `false` in any case, and nothing else (no `1`, `yes` or `on`).
pub(super) fn true_or_false(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("must be true or false".into()),
    }
}

pub(super) fn sasl_mechanism(value: &str) -> Result<SaslMechanism, String> {
    match value.to_ascii_uppercase().as_str() {
        "PLAIN" => Ok(SaslMechanism::Plain),
        "SCRAM-SHA-256" => Ok(SaslMechanism::ScramSha256),
        "SCRAM-SHA-512" => Ok(SaslMechanism::ScramSha512),
        _ => Err("must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512".into()),
    }
}
