//! The Schema Registry client's settings, and how its errors are read: whether the
//! registry said no (the record's or the subject's fault) or could not be asked.

use std::time::Duration;

use schema_registry_converter::blocking::schema_registry::SrSettings;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::RawError;

use crate::config::RegistryCredentials;

/// `SCHEMA_REGISTRY_URL` is not a URL the registry client can use.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: SCHEMA_REGISTRY_URL: {0}")]
pub struct InvalidRegistryUrl(String);

/// The HTTP status behind a registry error body: Confluent's error codes are the
/// status followed by two digits (40403 = schema not found), plain statuses also occur.
pub(crate) fn registry_status(error: &SRCError) -> Option<u32> {
    let raw = std::error::Error::source(error)?.downcast_ref::<RawError>()?;
    Some(if raw.error_code >= 10_000 {
        raw.error_code / 100
    } else {
        raw.error_code
    })
}

/// True when the registry said no to what was asked (a 4xx other than auth, timeout or
/// throttling: an unknown schema id, a missing subject) or Avro found the datum and the
/// schema do not fit; false when the registry could not be asked properly at all.
pub(crate) fn positive_evidence(error: &SRCError) -> bool {
    let source = std::error::Error::source(error);
    match registry_status(error) {
        Some(status) => (400..500).contains(&status) && ![401, 403, 408, 429].contains(&status),
        None if error.retriable => false,
        None => source.is_none() || source.is_some_and(|s| s.is::<apache_avro::Error>()),
    }
}

/// True when the registry refused a request it understood (4xx), as opposed to not
/// answering properly at all.
pub(crate) fn registry_refused(error: &SRCError) -> bool {
    registry_status(error).is_some_and(|status| (400..500).contains(&status))
}

/// A registry client error in a few words for the log: what failed and why, without
/// the client's bookkeeping (whether it would retry, whether it cached the error).
pub(crate) struct Brief<'a>(pub &'a SRCError);

impl std::fmt::Display for Brief<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let SRCError { error, cause, .. } = self.0;
        match cause {
            Some(cause) if !error.contains(cause.as_str()) => write!(f, "{error}: {cause}"),
            _ => write!(f, "{error}"),
        }
    }
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
) -> Result<SrSettings, InvalidRegistryUrl> {
    let mut builder = SrSettings::new_builder(url.to_string());
    builder.set_timeout(timeout);
    if let Some(credentials) = credentials {
        builder.set_basic_authorization(&credentials.key, Some(credentials.secret.expose()));
    }
    let client = reqwest::blocking::Client::builder();
    // Plain HTTP verifies no certificate: no need for the system's CA bundle, which
    // would stay parsed in memory (about 0.6 MiB) for the life of the process.
    let client = if url.trim_start().to_ascii_lowercase().starts_with("http://") {
        client.tls_certs_only([])
    } else {
        client
    };
    builder
        .build_with(client)
        .map_err(|e| InvalidRegistryUrl(e.error))
}

/// The most a length prefix in a datum may make the decoder allocate. Kafka records
/// are a few MB at most (1 MB by default); without a limit apache-avro trusts a hostile
/// length prefix up to 512 MiB per string.
pub const MAX_DATUM_ALLOCATION: usize = 16 * 1024 * 1024;

/// Applies [`MAX_DATUM_ALLOCATION`] process-wide (apache-avro keeps one global limit).
pub fn limit_datum_allocations() {
    apache_avro::util::max_allocation_bytes(MAX_DATUM_ALLOCATION);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_positive_evidence_makes_a_record_malformed() {
        let answered = |code: u32| {
            let body = format!(r#"{{"error_code":{code},"message":"x"}}"#);
            let raw: RawError = serde_json::from_str(&body).unwrap();
            SRCError::non_retryable_with_cause(raw, "HTTP request failed")
        };
        let malformed = |e: SRCError| positive_evidence(&e);
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
}
