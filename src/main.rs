use open_bank_command_handler::app;
use open_bank_command_handler::config::{self, Config};
use open_bank_command_handler::ops::{check, health_check};

/// Exit codes, as the README lists them.
mod exit {
    /// Stopped by a failure: start-up refused by a dependency, or a loop that cannot go on.
    pub const FAILURE: i32 = 1;
    /// Wrong arguments.
    pub const USAGE: i32 = 2;
    /// Invalid configuration (`EX_CONFIG` of sysexits.h).
    pub const CONFIG: i32 = 78;
}

const USAGE: &str = "\
command-handler: the Open Bank command handler. Reads ConfirmAccountCreation and
ConfirmMoneyTransfer commands from Kafka, applies them exactly once in PostgreSQL,
and answers on Kafka. Configured by environment variables (see README.md):
KAFKA_BROKERS, SCHEMA_REGISTRY_URL, DATABASE_URL or DB_HOSTNAME/DB_PORT/DB_PASSWORD,
KAFKA_*_TOPIC, KAFKA_CLIENT_ID, KAFKA_SSL_*, KAFKA_SASL_*, SCHEMA_REGISTRY_API_KEY/SECRET,
RDKAFKA_*, HTTP_PORT (health and metrics), RUST_LOG, LOG_FORMAT, ...

usage:
  command-handler             run until SIGTERM or SIGINT
  command-handler check       validate the configuration, reach every dependency,
                              print a report; exit 0 when all were reached
  command-handler health [live|ready]
                              ask the running handler's /health/live (default) or
                              /health/ready on HTTP_PORT; exit 0 when it answers 200
                              (the container image's health check)
  command-handler --help      this text
  command-handler --version   the version
";

fn main() {
    app::cap_malloc_arenas();
    let argument = std::env::args().nth(1);
    match argument.as_deref() {
        Some("--help" | "-h") => {
            print!("{USAGE}");
            return;
        }
        Some("--version" | "-V") => {
            println!("command-handler {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        Some("health") => {
            let Some(probe) = health_check::Probe::parse(std::env::args().nth(2).as_deref()) else {
                eprint!("command-handler: health takes live or ready\n\n{USAGE}");
                std::process::exit(exit::USAGE);
            };
            let address = config::http_address_from_env().unwrap_or_else(|e| {
                eprintln!("command-handler health: {e}");
                std::process::exit(1)
            });
            match health_check::probe(address, probe) {
                Ok(()) => return,
                Err(why) => {
                    eprintln!("command-handler health: {why}");
                    std::process::exit(1);
                }
            }
        }
        None | Some("check") => {}
        Some(other) => {
            eprint!("command-handler: unknown argument {other}\n\n{USAGE}");
            std::process::exit(exit::USAGE);
        }
    }
    app::init_logging();
    let config = Config::from_env().unwrap_or_else(|e| app::exit_with(&e, exit::CONFIG));
    if argument.is_some() {
        std::process::exit(if check::check(&config) {
            0
        } else {
            exit::FAILURE
        });
    }
    let outcome = match app::App::start(&config) {
        Ok(Some(running)) => running.wait(),
        Ok(None) => Ok(()),
        Err(startup) => Err(startup.into()),
    };
    if let Err(why) = outcome {
        app::exit_with(&why, exit::FAILURE);
    }
}
