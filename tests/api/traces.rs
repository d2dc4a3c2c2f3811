//! OpenTelemetry traces over OTLP: a real OTLP/gRPC receiver (the
//! collector's `TraceService/Export`) on a free port, and the segd binary
//! exporting to it. The binary runs as a child process because the
//! `tracing` subscriber that carries the exporter is process-global: in
//! this test process it would see every other test's calls, and the
//! flag-off case could not be shown at all. A child also proves the flag,
//! the environment variables and the flush on SIGTERM.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use segd::proto as pb;
use tokio_stream::StreamExt;

use crate::helpers::*;

/// A received span with its resource's `service.name`.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

/// An OTLP trace receiver: what it was sent, and how many connections it
/// accepted.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
    connections: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let attrs = rs.resource.map(|r| r.attributes).unwrap_or_default();
            let service = string(&attrs, "service.name").unwrap_or_default();
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|span| Received {
                    service: service.clone(),
                    span,
                }));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    /// Serves on a free port until the test ends; returns its address.
    async fn start(&self) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = self.connections.clone();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(move |c| {
            connections.fetch_add(1, Ordering::SeqCst);
            c
        });
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        addr
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }
}

fn value<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn string(attrs: &[KeyValue], key: &str) -> Option<String> {
    match value(attrs, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match value(attrs, key)? {
        any_value::Value::IntValue(i) => Some(*i),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The segd binary serving `app`'s database on a free port with `env`;
/// JSON logs on its stdout.
async fn segd(
    app: &TestApp,
    env: &[(&str, String)],
) -> (tokio::process::Child, tonic::transport::Channel) {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_segd"));
    cmd.env("DATABASE_URL", &app.db_url)
        .env("SEGD_LISTEN", addr.to_string())
        .env("SEGD_LOG_FORMAT", "json")
        .env("SEGD_INSECURE_DEV_AUTH", "true")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().unwrap();
    for _ in 0..300 {
        if let Ok(c) = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            return (child, c);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("segd did not serve");
}

/// Stops `child` with SIGTERM (a clean shutdown) and returns its JSON log
/// lines.
async fn terminate(child: tokio::process::Child) -> Vec<serde_json::Value> {
    let pid = child.id().unwrap() as libc::pid_t;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("segd stops on SIGTERM")
        .unwrap();
    assert!(
        out.status.success(),
        "segd exited with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// A request in workspace `ws` with request id `id`, and `traceparent`
/// when given.
fn call<T>(ws: &str, id: &str, traceparent: Option<&str>, msg: T) -> tonic::Request<T> {
    let mut r = req(ws, msg);
    r.metadata_mut().insert("x-request-id", id.parse().unwrap());
    if let Some(tp) = traceparent {
        r.metadata_mut().insert("traceparent", tp.parse().unwrap());
    }
    r
}

/// The server span of the call with request id `id`.
fn server_span<'a>(spans: &'a [Received], id: &str) -> &'a Received {
    spans
        .iter()
        .find(|r| string(&r.span.attributes, "request_id").as_deref() == Some(id))
        .unwrap_or_else(|| panic!("no span of call {id} in {spans:#?}"))
}

/// Calls are server spans under the caller's `traceparent` (or new traces
/// without one) with gRPC attributes, database work their children, and
/// they reach the receiver by the time segd has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_exported_as_spans_of_the_callers_trace() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::default();
    let at = receiver.start().await;
    let (child, channel) = segd(
        &app,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{at}")),
            ("OTEL_SERVICE_NAME", "segd-traced".into()),
        ],
    )
    .await;
    let mut contacts = pb::contact_service_client::ContactServiceClient::new(channel);
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let create = pb::CreateContactRequest {
        contact: Some(pb::Contact {
            external_id: "ada".into(),
            ..Default::default()
        }),
    };
    contacts
        .create_contact(call("traced", "t-create", Some(&traceparent), create))
        .await
        .unwrap();
    let missing = pb::GetContactRequest {
        contact: Some(pb::ContactRef {
            key: Some(pb::contact_ref::Key::ExternalId("nobody".into())),
        }),
    };
    let err = contacts
        .get_contact(call("traced", "t-missing", None, missing))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // Nothing is sent before the batch is due (5 s); SIGTERM flushes it.
    let logs = terminate(child).await;
    let spans = receiver.spans();

    // The propagated call: the caller's trace, the caller's span as parent.
    let created = server_span(&spans, "t-create");
    let s = &created.span;
    assert_eq!(created.service, "segd-traced");
    assert_eq!(hex(&s.trace_id), TRACE);
    assert_eq!(hex(&s.parent_span_id), PARENT);
    assert_eq!(s.kind, SpanKind::Server as i32);
    assert_eq!(s.name, "segd.v1.ContactService/CreateContact");
    let a = &s.attributes;
    assert_eq!(string(a, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        string(a, "rpc.service").as_deref(),
        Some("segd.v1.ContactService")
    );
    assert_eq!(string(a, "rpc.method").as_deref(), Some("CreateContact"));
    assert_eq!(int(a, "rpc.grpc.status_code"), Some(0));
    assert_eq!(string(a, "segd.workspace").as_deref(), Some("traced"));
    // Its database work is a child span.
    assert!(
        spans
            .iter()
            .any(|r| r.span.trace_id == s.trace_id && r.span.parent_span_id == s.span_id),
        "no child of the call's span in {spans:#?}"
    );

    // The call without traceparent: a trace of its own, and the trace id
    // its log lines carry.
    let missed = server_span(&spans, "t-missing");
    let m = &missed.span;
    assert_eq!(m.name, "segd.v1.ContactService/GetContact");
    assert!(m.parent_span_id.is_empty(), "a root span: {m:#?}");
    assert_eq!(m.trace_id.len(), 16);
    assert_ne!(hex(&m.trace_id), TRACE);
    assert_ne!(m.trace_id, vec![0; 16]);
    assert_eq!(int(&m.attributes, "rpc.grpc.status_code"), Some(5));
    let logged = |id: &str| {
        logs.iter()
            .find(|l| l["span"]["request_id"] == id)
            .map(|l| l["span"]["trace_id"].clone())
            .unwrap_or_else(|| panic!("no log line of {id} in {logs:#?}"))
    };
    assert_eq!(logged("t-missing"), hex(&m.trace_id));
    assert_eq!(logged("t-create"), TRACE);
}

/// Without `OTEL_EXPORTER_OTLP_ENDPOINT` nothing is exported: the receiver,
/// named by the traces-only variable the exporter library itself would
/// read had segd built an exporter, never hears from segd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_no_traces_are_sent() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::default();
    let at = receiver.start().await;
    let (child, channel) = segd(
        &app,
        &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", format!("http://{at}"))],
    )
    .await;
    let mut contacts = pb::contact_service_client::ContactServiceClient::new(channel);
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    let create = pb::CreateContactRequest {
        contact: Some(pb::Contact {
            external_id: "ada".into(),
            ..Default::default()
        }),
    };
    contacts
        .create_contact(call("untraced", "u-create", Some(&traceparent), create))
        .await
        .unwrap();
    let logs = terminate(child).await;
    assert!(receiver.spans().is_empty());
    assert_eq!(receiver.connections.load(Ordering::SeqCst), 0);
    // The logs still carry the caller's trace id.
    assert!(
        logs.iter()
            .any(|l| l["span"]["request_id"] == "u-create" && l["span"]["trace_id"] == TRACE),
        "no log line of the call with its trace id in {logs:#?}"
    );
}
