//! The JVM handler's TLS stores (SPEC §8): a keytool keystore with the client's key and
//! certificate, and a truststore with the CA, both opened by one password.
//!
//! PKCS#12, keytool's default since Java 9, is used directly: librdkafka reads the
//! keystore itself (`ssl.keystore.location`), and the truststore's certificates are
//! handed to it as PEM (`ssl.ca.pem`), since librdkafka takes no PKCS#12 truststore.
//! Legacy JKS (and JCEKS) stores are refused at start-up with the way out: convert them,
//! or use the `KAFKA_SSL_*` PEM variables.

use std::fmt;
use std::path::{Path, PathBuf};

use openssl::pkcs12::Pkcs12;

use crate::config::Secret;

/// The JVM handler's TLS settings: where its stores are and their one password, as
/// the variables name them. Parsing records them; [`JvmStores::open`] (start-up and
/// `check`, through `Config::load_tls`) opens both, so that a store that cannot be
/// used is reported as such rather than as a configuration that cannot be parsed.
#[derive(Clone, PartialEq, Eq)]
pub struct JvmStores {
    pub keystore: PathBuf,
    pub truststore: PathBuf,
    pub password: Secret,
    /// The truststore's certificates, PEM-encoded, for `ssl.ca.pem`; None until the
    /// stores are opened.
    pub trusted_pem: Option<String>,
}

impl fmt::Debug for JvmStores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JvmStores")
            .field("keystore", &self.keystore)
            .field("truststore", &self.truststore)
            .field("password", &self.password)
            .field("opened", &self.trusted_pem.is_some())
            .finish()
    }
}

/// What is wrong with a store, and which variable to look at.
#[derive(Debug, PartialEq, Eq)]
pub struct StoreError {
    pub variable: &'static str,
    pub problem: String,
}

/// `name` as the JVM handler resolves it: an absolute path as given, anything else
/// under `directory`.
pub fn resolve(name: &str, directory: &Path) -> PathBuf {
    let path = Path::new(name);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        directory.join(path)
    }
}

impl JvmStores {
    pub(super) fn declared(keystore: PathBuf, truststore: PathBuf, password: Secret) -> Self {
        JvmStores {
            keystore,
            truststore,
            password,
            trusted_pem: None,
        }
    }

    /// Opens both stores (see [`open`]) and keeps the truststore's certificates.
    pub fn open(&mut self) -> Result<(), StoreError> {
        for (variable, path) in [
            ("SSL_KEYSTORE_LOCATION", &self.keystore),
            ("SSL_TRUSTSTORE_LOCATION", &self.truststore),
        ] {
            if !path.is_file() {
                return Err(StoreError {
                    variable,
                    problem: format!("{} is not a readable file", path.display()),
                });
            }
        }
        self.trusted_pem = Some(open(&self.keystore, &self.truststore, &self.password)?);
        Ok(())
    }
}

/// Opens both stores with `password`: the keystore must hold a private key and its
/// certificate, the truststore at least one certificate, which come back as PEM.
fn open(keystore: &Path, truststore: &Path, password: &Secret) -> Result<String, StoreError> {
    let key_store = read_pkcs12("SSL_KEYSTORE_LOCATION", keystore, password)?;
    if key_store.pkey.is_none() || key_store.cert.is_none() {
        return Err(StoreError {
            variable: "SSL_KEYSTORE_LOCATION",
            problem: format!(
                "{} holds no private key with its certificate: is it the truststore?",
                keystore.display()
            ),
        });
    }
    let trust_store = read_pkcs12("SSL_TRUSTSTORE_LOCATION", truststore, password)?;
    // keytool's trusted-certificate entries come out as the "other" certificates.
    let mut trusted_pem = String::new();
    let certificates = trust_store
        .cert
        .iter()
        .map(|c| &**c)
        .chain(trust_store.ca.iter().flatten());
    for certificate in certificates {
        let pem = certificate.to_pem().map_err(|e| StoreError {
            variable: "SSL_TRUSTSTORE_LOCATION",
            problem: format!(
                "{}: a certificate cannot be re-encoded: {e}",
                truststore.display()
            ),
        })?;
        trusted_pem.push_str(&String::from_utf8_lossy(&pem));
    }
    if trusted_pem.is_empty() {
        return Err(StoreError {
            variable: "SSL_TRUSTSTORE_LOCATION",
            problem: format!("{} holds no certificate", truststore.display()),
        });
    }
    Ok(trusted_pem)
}

fn read_pkcs12(
    variable: &'static str,
    path: &Path,
    password: &Secret,
) -> Result<openssl::pkcs12::ParsedPkcs12_2, StoreError> {
    let error = |problem: String| StoreError { variable, problem };
    let bytes = std::fs::read(path)
        .map_err(|e| error(format!("{} cannot be read: {e}", path.display())))?;
    if let Some(kind) = legacy_java_store(&bytes) {
        return Err(error(format!(
            "{} is a legacy {kind} store, which this handler cannot read. Convert it to \
             PKCS#12 (keytool's default since Java 9) with the same password: keytool \
             -importkeystore -srckeystore {0} -srcstoretype {kind} -destkeystore {0}.p12 \
             -deststoretype PKCS12, and name the new file in {variable}; or use the \
             KAFKA_SSL_* variables with PEM files instead",
            path.display()
        )));
    }
    let store = Pkcs12::from_der(&bytes).map_err(|_| {
        error(format!(
            "{} is neither a PKCS#12 nor a JKS store",
            path.display()
        ))
    })?;
    // OpenSSL's reasons ("mac verify failure", "unsupported") name no secret.
    store.parse2(password.expose()).map_err(|e| {
        let reasons: Vec<&str> = e.errors().iter().filter_map(|e| e.reason()).collect();
        let reason = reasons.first().copied().unwrap_or("cannot be opened");
        if reasons.iter().any(|r| r.contains("unsupported")) {
            // keytool of Java 9 to 11.0.11 encrypts PKCS#12 with RC2, which OpenSSL 3
            // reads only with its legacy provider.
            error(format!(
                "{} is encrypted with an algorithm OpenSSL 3 no longer reads by default \
                 (RC2 or 3DES, as keytool before Java 11.0.12 wrote) ({reason}). Convert it \
                 with a current keytool: keytool -importkeystore -srckeystore {0} \
                 -destkeystore {0}.p12 -deststoretype PKCS12, and name the new file in \
                 {variable}; or use the KAFKA_SSL_* variables with PEM files instead",
                path.display()
            ))
        } else {
            error(format!(
                "{} cannot be opened with SSL_PASSWORD ({reason}): a wrong password?",
                path.display()
            ))
        }
    })
}

/// Java's own store formats, by their magic number.
fn legacy_java_store(bytes: &[u8]) -> Option<&'static str> {
    match bytes.get(..4)? {
        [0xFE, 0xED, 0xFE, 0xED] => Some("JKS"),
        [0xCE, 0xCE, 0xCE, 0xCE] => Some("JCEKS"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_names_are_looked_up_in_the_stores_directory() {
        let dir = Path::new("/etc/kafka/secrets");
        assert_eq!(
            resolve("kafka.command-handler.keystore.jks", dir),
            Path::new("/etc/kafka/secrets/kafka.command-handler.keystore.jks")
        );
        assert_eq!(resolve("/srv/ks.p12", dir), Path::new("/srv/ks.p12"));
    }

    #[test]
    fn java_store_formats_are_told_by_their_magic_number() {
        assert_eq!(
            legacy_java_store(&[0xFE, 0xED, 0xFE, 0xED, 0, 0, 0, 2]),
            Some("JKS")
        );
        assert_eq!(legacy_java_store(&[0xCE, 0xCE, 0xCE, 0xCE]), Some("JCEKS"));
        assert_eq!(legacy_java_store(&[0x30, 0x82, 0x0A, 0x1B]), None); // DER: PKCS#12
        assert_eq!(legacy_java_store(&[0xFE]), None);
    }
}
