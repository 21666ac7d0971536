use clap::Parser;
use open_bank_command_handler::config::{self, Config};
use open_bank_command_handler::ops::check;
use open_bank_command_handler::ops::health_check::{self, Probe};
use open_bank_command_handler::{app, logging, memory};

/// Exit codes, as the README lists them.
mod exit {
    /// Stopped by a failure: start-up refused by a dependency, or a loop that cannot go on.
    pub const FAILURE: i32 = 1;
    // Wrong arguments: 2, clap's own.
    /// Invalid configuration (`EX_CONFIG` of sysexits.h).
    pub const CONFIG: i32 = 78;
}

/// The command line: which command, nothing else. The configuration is the
/// environment's, listed in the help from its declaration (`config::variables_help`).
#[derive(Parser)]
#[command(
    name = "command-handler",
    version,
    about = "The Open Bank command handler: ConfirmAccountCreation and ConfirmMoneyTransfer\n\
             commands from Kafka, applied exactly once in PostgreSQL, answered on Kafka.",
    override_usage = "command-handler [run]\n       command-handler check\n       \
                      command-handler health [live|ready]",
    disable_help_subcommand = true,
    after_help = config::variables_help(),
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Run until SIGTERM or SIGINT (the default)
    Run,
    /// Validate the configuration and reach every dependency; exit 0 when all answer
    Check,
    /// Ask the running handler's health on HTTP_PORT; exit 0 on 200 (image health check)
    Health {
        #[arg(value_enum, default_value = "live")]
        probe: Probe,
    },
}

fn main() {
    memory::cap_malloc_arenas();
    // --help, --version and wrong arguments (exit 2) are clap's.
    let command = Cli::parse().command.unwrap_or(Command::Run);
    if let Command::Health { probe } = command {
        let probed = config::http_address_from_env()
            .map_err(|e| e.to_string())
            .and_then(|address| health_check::probe(address, probe));
        if let Err(why) = probed {
            eprintln!("command-handler health: {why}");
            std::process::exit(exit::FAILURE);
        }
        return;
    }
    let mut config = Config::from_env().unwrap_or_else(|e| app::exit_with(&e, exit::CONFIG));
    logging::init(&config.logging);
    if let Command::Check = command {
        std::process::exit(if check::check(config) {
            0
        } else {
            exit::FAILURE
        });
    }
    if let Err(why) = config.load_tls() {
        app::exit_with(&why, exit::CONFIG);
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_sound_and_run_is_the_default() {
        Cli::command().debug_assert();
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|cli| cli.command);
        assert!(matches!(parse(&["command-handler"]), Ok(None)));
        assert!(matches!(
            parse(&["command-handler", "run"]),
            Ok(Some(Command::Run))
        ));
        assert!(matches!(
            parse(&["command-handler", "health"]),
            Ok(Some(Command::Health { probe: Probe::Live }))
        ));
        assert!(matches!(
            parse(&["command-handler", "health", "ready"]),
            Ok(Some(Command::Health {
                probe: Probe::Ready
            }))
        ));
        for wrong in [
            &["command-handler", "bogus"][..],
            &["command-handler", "health", "up"],
        ] {
            let error = parse(wrong).err().unwrap();
            assert_eq!(error.exit_code(), 2, "{wrong:?}");
        }
    }
}
