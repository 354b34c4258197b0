//! Observability: log set-up (text or JSON on stderr), the Prometheus metrics registry and
//! the engines' own metrics merged into its scrape ([`scrape`]).

pub mod metrics;
pub mod scrape;
pub mod sink;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

use crate::config::LogFormat;

/// Starts logging to stderr. `RUST_LOG` (e.g. `debug` or `info,hyper=warn`) picks levels;
/// the default is `info`. Calling it twice is harmless.
pub fn init(format: LogFormat) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(sink::BatchedStderr)
                    .with_target(false)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(sink::BatchedStderr),
            )
            .try_init(),
    };
    let _ = result;
}
