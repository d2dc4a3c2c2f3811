//! Prometheus metrics: a process-wide recorder (the `metrics` crate, its
//! Prometheus exporter rendering), a tower layer timing every RPC by
//! method and code, and `/metrics` served on its own port. The series:
//!
//! - `segd_rpc_requests_total{method,code}` and
//!   `segd_rpc_duration_seconds{method,code}` (histogram): every call, its
//!   gRPC code, and for streams the time to their end;
//! - `segd_stream_rows_total`, `segd_stream_bytes_total`: members streamed
//!   and the encoded bytes of their messages;
//! - `segd_pool_connections{state="max|open|idle|in_use"}` and
//!   `segd_pool_waiting`: the PostgreSQL pool at scrape time;
//! - `segd_live_lag_seconds`: age of the oldest write a maintenance pass
//!   applied; `segd_live_refresh_seconds{segment}` (histogram): time
//!   refreshing each live segment;
//! - `segd_feed_delivery_lag_seconds` (histogram): from a membership change
//!   to its delivery to a watcher;
//! - `segd_analyze_runs_total{table}`: statistics refreshes.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Histogram buckets, in seconds: 1 ms to 60 s.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0,
];

/// The process's recorder, installed on first use (once per process: tests
/// start many servers in one).
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&BUCKETS)
                .expect("static buckets")
                .install_recorder()
                .expect("the only metrics recorder")
        })
        .clone()
}

/// Serves `/metrics` on `listener` until `shutdown`: plain HTTP/1.1, one
/// response per connection. Pool figures are read at each scrape.
pub async fn serve(listener: TcpListener, pool: crate::db::Pool, shutdown: CancellationToken) {
    let handle = handle();
    loop {
        let conn = tokio::select! {
            () = shutdown.cancelled() => return,
            c = listener.accept() => c,
        };
        let Ok((mut socket, _)) = conn else { continue };
        let handle = handle.clone();
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = socket.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let ok = request.starts_with("GET /metrics ") || request.starts_with("GET /metrics?");
            let (status, body) = if ok {
                pool_gauges(&pool);
                handle.run_upkeep();
                ("200 OK", handle.render())
            } else {
                ("404 Not Found", "segd serves /metrics only\n".to_string())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(body.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

fn pool_gauges(pool: &crate::db::Pool) {
    let s = pool.status();
    let g = |state: &'static str, v: usize| {
        metrics::gauge!("segd_pool_connections", "state" => state).set(v as f64);
    };
    g("max", s.max_size);
    g("open", s.size);
    g("idle", s.available);
    g("in_use", s.size.saturating_sub(s.available));
    metrics::gauge!("segd_pool_waiting").set(s.waiting as f64);
}

/// Members streamed: `rows` in messages of `bytes` encoded.
pub fn streamed(rows: usize, bytes: usize) {
    metrics::counter!("segd_stream_rows_total").increment(rows as u64);
    metrics::counter!("segd_stream_bytes_total").increment(bytes as u64);
}

/// A statistics refresh of `table`.
pub fn analyzed(table: &'static str) {
    metrics::counter!("segd_analyze_runs_total", "table" => table).increment(1);
}

/// A maintenance pass applied writes the oldest of which waited `lag`
/// seconds.
pub fn live_lag(lag: f64) {
    metrics::gauge!("segd_live_lag_seconds").set(lag);
}

/// Live segment `segment` was refreshed in `seconds`.
pub fn refreshed(segment: i64, seconds: f64) {
    metrics::histogram!("segd_live_refresh_seconds", "segment" => segment.to_string())
        .record(seconds);
}

/// How stale read replica `name` may be (`None`: never found caught up,
/// reported as infinity).
pub fn replica_staleness(name: &str, staleness: Option<std::time::Duration>) {
    let v = staleness.map_or(f64::INFINITY, |d| d.as_secs_f64());
    metrics::gauge!("segd_replica_staleness_seconds", "replica" => name.to_string()).set(v);
}

/// A read went to a replica (`true`) or the primary.
pub fn read_routed(replica: bool) {
    let to = if replica { "replica" } else { "primary" };
    metrics::counter!("segd_reads_total", "served_by" => to).increment(1);
}

/// A membership change reached a watcher `seconds` after it was applied.
pub fn delivered(seconds: f64) {
    metrics::histogram!("segd_feed_delivery_lag_seconds").record(seconds);
}

/// Times every call by method and gRPC code (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = Timed<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Timed { inner }
    }
}

/// See [`MetricsLayer`].
#[derive(Debug, Clone)]
pub struct Timed<S> {
    inner: S,
}

/// The response future of segd's tower layers.
pub type Respond<E> =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send + 'static>>;

impl<S, B> tower::Service<http::Request<B>> for Timed<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Respond<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_string();
        let started = Instant::now();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (span, request_id) = call_span(&method, req.headers());
        let deadline = crate::api::shed::deadline(req.headers()).map(|d| started + d);
        let call = span.clone();
        let fut = async move {
            let mut resp = inner.call(req).await?;
            if let Ok(v) = http::HeaderValue::from_str(&request_id) {
                resp.headers_mut().insert(REQUEST_ID, v);
            }
            // An error before any message is a trailers-only response: its
            // code is in the headers.
            if let Some(code) = resp.headers().get("grpc-status") {
                let code = code.to_str().unwrap_or("?");
                crate::traces::finish_call(&call, code);
                record(&method, code, started);
                return Ok(resp);
            }
            let (parts, body) = resp.into_parts();
            // The body keeps the span open until the call ends.
            let body = tonic::body::Body::new(Observed {
                inner: body,
                method,
                started,
                span: call,
                done: false,
                deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d.into()))),
            });
            Ok(http::Response::from_parts(parts, body))
        };
        Box::pin(tracing::Instrument::instrument(fut, span))
    }
}

/// The request id header: the caller's, or one segd makes; echoed in the
/// response and logged with every line of the call.
pub const REQUEST_ID: &str = "x-request-id";

/// The span every log line of a call carries: method, request id, the W3C
/// `traceparent` trace id if given, and the workspace once known (see
/// `api::auth`). Returns it with the request id. With traces on, it is the
/// call's server span (see [`crate::traces`]), and its trace id (the
/// caller's, or a new trace's) is the one logged.
fn call_span(method: &str, headers: &http::HeaderMap) -> (tracing::Span, String) {
    let request_id = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(|| format!("{:016x}", rand::random::<u64>()), str::to_string);
    let span = tracing::info_span!(
        "rpc",
        method,
        request_id = %request_id,
        trace_id = tracing::field::Empty,
        workspace = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
        otel.name = tracing::field::Empty,
    );
    let trace = crate::traces::start_call(&span, method, headers).or_else(|| {
        // traceparent: version-traceid-parentid-flags.
        headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split('-').nth(1))
            .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_string)
    });
    if let Some(t) = trace {
        span.record("trace_id", t);
    }
    (span, request_id)
}

/// gRPC status codes by number, as labels.
fn code_name(code: &str) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    code.parse::<usize>()
        .ok()
        .and_then(|i| NAMES.get(i).copied())
        .unwrap_or("UNKNOWN")
}

fn record(method: &str, code: &str, started: Instant) {
    let code = code_name(code);
    let labels = [("method", method.to_string()), ("code", code.to_string())];
    metrics::counter!("segd_rpc_requests_total", &labels).increment(1);
    metrics::histogram!("segd_rpc_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
}

/// A response body that records its call (metrics, and the code on its
/// span, which it holds open) when its trailers pass (the call's code), or
/// as CANCELLED when it is dropped before them (the
/// client went away). With a deadline (`grpc-timeout`), a call still
/// streaming when it passes ends there with DEADLINE_EXCEEDED: tonic's own
/// timeout bounds only the response headers, so a stream could otherwise
/// answer past its caller's deadline.
struct Observed {
    inner: tonic::body::Body,
    method: String,
    started: Instant,
    span: tracing::Span,
    done: bool,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for Observed {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if polled.is_pending()
            && let Some(d) = self.deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            // The call's own trailers never come: these end it.
            self.done = true;
            self.finish("4");
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("4"));
            trailers.insert(
                "grpc-message",
                http::HeaderValue::from_static("the call's deadline passed"),
            );
            return Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))));
        }
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(trailers) = frame.trailers_ref()
            && !self.done
        {
            let code = trailers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("0")
                .to_string();
            self.done = true;
            self.finish(&code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Observed {
    fn finish(&self, code: &str) {
        crate::traces::finish_call(&self.span, code);
        record(&self.method, code, self.started);
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if !self.done {
            self.finish("1");
        }
    }
}
