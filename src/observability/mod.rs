//! Observability: log set-up (text or JSON on stderr), the Prometheus metrics registry, the
//! engines' own metrics merged into its scrape ([`scrape`]), and a fast writer for lines
//! that tracing's formatter would make too costly on the request path (the access log).

pub mod lines;
pub mod metrics;
pub mod scrape;
pub mod sink;

use std::sync::OnceLock;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

use crate::config::LogFormat;

/// The format lines may be written in without tracing's formatter: set once logging
/// writes plain text or JSON to stderr (not coloured text for a terminal).
static PLAIN: OnceLock<LogFormat> = OnceLock::new();

/// The log format, when lines can be written directly in it (see [`lines`]).
pub fn plain_format() -> Option<LogFormat> {
    PLAIN.get().copied()
}

/// The text layer: `TIMESTAMP  LEVEL fields`, no target.
pub fn text_layer<S, W>(writer: W, ansi: bool) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_target(false)
        .with_ansi(ansi)
}

/// The JSON layer: one object per line, fields flattened.
pub fn json_layer<S, W>(writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_writer(writer)
}

/// Starts logging to stderr. `RUST_LOG` (e.g. `debug` or `info,hyper=warn`) picks levels;
/// the default is `info`. Calling it twice is harmless.
pub fn init(format: LogFormat) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    let registry = tracing_subscriber::registry().with(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let result = match format {
        LogFormat::Text => registry
            .with(text_layer(sink::BatchedStderr, ansi))
            .try_init(),
        LogFormat::Json => registry.with(json_layer(sink::BatchedStderr)).try_init(),
    };
    if result.is_ok() && !(format == LogFormat::Text && ansi) {
        let _ = PLAIN.set(format);
    }
}
