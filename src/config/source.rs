//! Where the declared variables' values come from, and how clap is handed them.
//!
//! clap's `env` reads the process environment itself, and takes a variable that is set
//! but empty as the value "". The handler instead reads the variables into [`Vars`]
//! (unset and empty both mean "not given", as the handler always took them),
//! removes clap's own lookups from the command, and passes each given variable as its
//! declared long flag. So production, the `health` command (two variables only) and the
//! tests all go through the same parse, and no test reads or changes the process
//! environment: building the command has clap read each declared variable once, a value
//! dropped at once with the lookup.

use std::collections::HashMap;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Arg, CommandFactory, FromArgMatches};

use super::ConfigError;
use super::settings::Settings;

/// A set of variables: the process environment, or a test's own.
pub(super) struct Vars(HashMap<String, String>);

impl Vars {
    pub(super) fn new(vars: impl IntoIterator<Item = (String, String)>) -> Vars {
        Vars(vars.into_iter().collect())
    }

    /// The variable's value; unset and empty both mean "not given".
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Every variable as it is, empty ones too (for the `RDKAFKA_*` pass-through).
    pub(super) fn all(&self) -> &HashMap<String, String> {
        &self.0
    }
}

impl Settings {
    /// Parses the declared variables from `vars`: types, ranges and defaults by clap,
    /// an invalid value refused with the variable's name.
    pub(super) fn from_vars(vars: &Vars) -> Result<Settings, ConfigError> {
        let command = Settings::command().mut_args(|arg| arg.env(None));
        let mut argv = vec!["command-handler".to_string()];
        for (arg, name) in declared() {
            if unused_here(&name, vars) {
                continue;
            }
            if let (Some(long), Some(value)) = (arg.get_long(), vars.get(&name)) {
                argv.push(format!("--{long}={value}"));
            }
        }
        command
            .try_get_matches_from(argv)
            .and_then(|matches| Settings::from_arg_matches(&matches))
            .map_err(|error| config_error(&error))
    }
}

/// Variables that another one makes unused, and so are not even checked (as the JVM
/// handler never read them): the DB_* trio next to `DATABASE_URL`, which wins (SPEC
/// §6), and `SSL_STORES_DIRECTORY` without the JVM stores or with PEM files, which win.
fn unused_here(name: &str, vars: &Vars) -> bool {
    let given = |names: &[&str]| names.iter().any(|name| vars.get(name).is_some());
    match name {
        "DB_HOSTNAME" | "DB_PORT" | "DB_USER" | "DB_PASSWORD" => given(&["DATABASE_URL"]),
        "SSL_STORES_DIRECTORY" => {
            !given(&super::kafka::JVM_TLS_VARIABLES)
                || given(&[
                    "KAFKA_SSL_CA_LOCATION",
                    "KAFKA_SSL_CERT_LOCATION",
                    "KAFKA_SSL_KEY_LOCATION",
                ])
        }
        _ => false,
    }
}

/// Every declared argument with its variable's name, in declaration order.
pub(super) fn declared() -> Vec<(Arg, String)> {
    let mut command = Settings::command();
    // Built, an argument knows how it shows (`--db-port <DB_PORT>`), as clap's errors.
    command.build();
    command
        .get_arguments()
        .filter_map(|arg| {
            let name = arg.get_env()?.to_string_lossy().into_owned();
            Some((arg.clone(), name))
        })
        .collect()
}

/// The declared default, if there is one.
pub(super) fn default_of(arg: &Arg) -> Option<String> {
    let values: Vec<_> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// clap's refusal of a value, as the variable's name and what is wrong; the value is
/// shown unless it is a secret.
fn config_error(error: &clap::Error) -> ConfigError {
    let text = |kind| match error.get(kind) {
        Some(ContextValue::String(text)) => Some(text.clone()),
        _ => None,
    };
    let refused = text(ContextKind::InvalidArg).and_then(|shown| {
        declared()
            .into_iter()
            .find(|(arg, _)| arg.to_string() == shown)
    });
    let Some((arg, variable)) = refused else {
        return ConfigError {
            variable: "configuration".into(),
            problem: error.kind().to_string(),
        };
    };
    let reason = match (error.kind(), error.get(ContextKind::ValidValue)) {
        (ErrorKind::InvalidValue, Some(ContextValue::Strings(valid))) => {
            format!("must be one of {}", valid.join(", "))
        }
        _ => std::error::Error::source(error)
            .map_or_else(|| error.kind().to_string(), ToString::to_string),
    };
    let problem = match text(ContextKind::InvalidValue) {
        Some(value) if !arg.is_hide_env_values_set() => format!("{value:?}: {reason}"),
        _ => reason,
    };
    ConfigError { variable, problem }
}

/// The `RDKAFKA_*` pass-through, which no declaration lists (see `kafka_properties`).
const PASS_THROUGH: [(&str, &str); 3] = [
    (
        "RDKAFKA_<PROPERTY>",
        "Any other librdkafka property, for every client (RDKAFKA_SOCKET_KEEPALIVE_ENABLE=true)",
    ),
    (
        "RDKAFKA_CONSUMER_<PROPERTY>",
        "The same, for the consumers only",
    ),
    (
        "RDKAFKA_PRODUCER_<PROPERTY>",
        "The same, for the producer only",
    ),
];

/// The variables for `--help`, from the declaration: name, help and default.
pub fn variables_help() -> String {
    use std::fmt::Write;

    let mut rows: Vec<(String, String)> = declared()
        .into_iter()
        .map(|(arg, name)| {
            let mut about = arg.get_help().map(ToString::to_string).unwrap_or_default();
            if let Some(default) = default_of(&arg) {
                let _ = write!(about, " [default: {default}]");
            }
            (name, about)
        })
        .collect();
    rows.extend(PASS_THROUGH.map(|(name, about)| (name.to_string(), about.to_string())));
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    let mut help = String::from("Environment variables (none required; see README.md):\n");
    for (name, about) in rows {
        let _ = writeln!(help, "  {name:width$}  {about}");
    }
    help
}
