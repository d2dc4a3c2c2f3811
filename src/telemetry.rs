//! Logging through `tracing`: human-readable by default, JSON with
//! `--log-format json`. `SEGD_LOG` (or `RUST_LOG`) sets the filter. With a
//! tracer (see [`crate::traces`]), the same spans are also exported as
//! OpenTelemetry traces.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Installs the global subscriber: logs in `format`, and with `tracer` the
/// spans as OpenTelemetry traces. A second call is a no-op.
pub fn init(format: LogFormat, tracer: Option<opentelemetry_sdk::trace::SdkTracer>) {
    let filter = EnvFilter::try_from_env("SEGD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_target(false);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        // With the call's span (method, request id, trace id, workspace)
        // on every line logged inside it.
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    let traces = tracer.map(|t| tracing_opentelemetry::layer().with_tracer(t));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(traces)
        .try_init();
}
