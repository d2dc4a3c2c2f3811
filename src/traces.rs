//! OpenTelemetry traces over OTLP/gRPC, off unless `--otlp-endpoint`
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`) is set.
//!
//! segd's `tracing` spans are the trace: [`crate::telemetry::init`] adds a
//! `tracing-opentelemetry` layer over the [`provider`] built here, so each
//! call's `rpc` span (see `observe`) becomes a server span and the spans
//! opened inside it (database work) its children. [`start_call`] makes the
//! caller's W3C `traceparent` the parent of the call's span; [`finish_call`]
//! adds the call's gRPC code. Without the layer, both do nothing.

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The exporting provider: spans batched and sent to `endpoint` (an
/// `http://host:port` OTLP/gRPC receiver, such as a collector's 4317) as
/// service `service_name`. Shut it down to send what is still batched.
///
/// Must run inside a Tokio runtime (the gRPC channel lives on it).
///
/// # Errors
/// The endpoint is not a valid URI.
pub fn provider(endpoint: &str, service_name: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(10))
        .build()
        .with_context(|| format!("the OTLP endpoint {endpoint}"))?;
    let resource = Resource::builder()
        .with_service_name(service_name.to_string())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Makes `span` the server span of call `method` (`/package.Service/Method`):
/// its parent is the caller's `traceparent` when the headers carry a valid
/// one, else it starts a trace. Returns the span's trace id (hex), or
/// `None` when traces are off.
pub fn start_call(span: &tracing::Span, method: &str, headers: &http::HeaderMap) -> Option<String> {
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    // Fails only without the OpenTelemetry layer: traces are off.
    span.set_parent(parent).ok()?;
    let name = method.trim_start_matches('/');
    let (service, rpc) = name.split_once('/').unwrap_or((name, ""));
    span.record("otel.kind", "server");
    span.record("otel.name", name);
    span.set_attribute("rpc.system", "grpc");
    span.set_attribute("rpc.service", service.to_string());
    span.set_attribute("rpc.method", rpc.to_string());
    let trace_id = span.context().span().span_context().trace_id();
    Some(trace_id.to_string())
}

/// Records the call's gRPC `code` (its number) on its span; server-side
/// failures mark the span as an error, as OpenTelemetry's gRPC conventions
/// say.
pub fn finish_call(span: &tracing::Span, code: &str) {
    let Ok(n) = code.parse::<i64>() else { return };
    span.set_attribute("rpc.grpc.status_code", n);
    // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
    // DATA_LOSS.
    if matches!(n, 2 | 4 | 12 | 13 | 14 | 15) {
        span.set_status(Status::error(format!("gRPC code {n}")));
    }
}

/// Records the call's workspace on its span (`segd.workspace`).
pub fn workspace(span: &tracing::Span, workspace: &str) {
    span.set_attribute("segd.workspace", workspace.to_string());
}

/// Request headers as a propagation carrier.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}
