//! Logging through `tracing`: human-readable by default, JSON with
//! `--log-format json`. `SEGD_LOG` (or `RUST_LOG`) sets the filter.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. A second call is a no-op.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("SEGD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        // With the call's span (method, request id, trace id, workspace)
        // on every line logged inside it.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
