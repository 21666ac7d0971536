//! Logging to stderr, as `RUST_LOG` and `LOG_FORMAT` say (declared with the other
//! variables in `config`, so a bad value is a configuration error like any other).

use std::io::Write;

use crate::config::{LogFormat, Logging};

/// `logging.filter` filters (default: `warn`, and `info` for the handler);
/// `LogFormat::Json` writes one JSON object per line instead of text.
pub fn init(logging: &Logging) {
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(&logging.filter);
    // Milliseconds: what a restart or a failover costs is a matter of them.
    builder.format_timestamp_millis();
    if logging.format == LogFormat::Json {
        builder.format(|buf, record| {
            let line = serde_json::json!({
                "time": buf.timestamp_millis().to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "message": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    builder.init();
}
