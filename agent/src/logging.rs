//! Logging setup: `tracing` to stderr, human-readable or JSON, filtered by `FERRY_LOG` (or
//! `RUST_LOG`), `info` by default.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

pub fn init(format: LogFormat) {
    let filter = std::env::var("FERRY_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_current_span(false).init(),
        LogFormat::Auto | LogFormat::Human => builder
            .with_ansi(format == LogFormat::Auto && std::io::stderr().is_terminal())
            .init(),
    }
}
