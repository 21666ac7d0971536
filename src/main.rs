use open_bank_command_handler::{app, config::Config};

fn main() {
    env_logger::Builder::new()
        .parse_filters("warn,open_bank_command_handler=info")
        .parse_default_env()
        .init();
    let config = Config::from_env().unwrap_or_else(|e| app::exit_with(&e.to_string()));
    if let Err(why) = app::run(config) {
        app::exit_with(&why);
    }
}
