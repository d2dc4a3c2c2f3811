//! Prometheus metrics at `/metrics`: every listed series shows up, and
//! counters move with the calls that feed them. (The recorder is
//! process-wide and tests run side by side: assertions are about series
//! present and counters growing, never exact totals.)

use std::time::Duration;

use segd::proto as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// GETs `path` from `addr`; returns the status line and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: segd\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of the series line starting with `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

#[tokio::test]
async fn metrics_show_every_listed_series_and_move_with_calls() {
    let app = TestApp::spawn().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(segd::observe::serve(
        listener,
        app.state.pool.clone(),
        app.state.shutdown.clone(),
    ));
    let ws = "observed";
    let mut q = app.query().await;
    let count = |text: &str| pb::CountMembersRequest {
        selector: inline(text),
        ..Default::default()
    };
    q.count_members(req(ws, count("country = \"US\"")))
        .await
        .unwrap();
    let ok = r#"segd_rpc_requests_total{method="/segd.v1.QueryService/CountMembers",code="OK"}"#;
    let before = value(&get(addr, "/metrics").await.1, ok).expect("the count is counted");

    // A watcher, then writes: contacts for a stream, leads for the feed,
    // enough rows for a statistics refresh.
    let mut watch = q
        .watch_membership(req(
            ws,
            pb::WatchMembershipRequest {
                segment_ids: vec![1],
                start: Some(pb::watch_membership_request::Start::Now(true)),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let people: Vec<Vec<pb::Contact>> = (0..2)
        .map(|b| {
            (0..1_000)
                .map(|i| pb::Contact {
                    external_id: format!("p{b}-{i}"),
                    country: "US".into(),
                    labels: vec!["lead".into()],
                    ..Default::default()
                })
                .collect()
        })
        .collect();
    import_all(&mut app.contacts().await, ws, people)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), watch.message())
        .await
        .expect("a change is delivered")
        .unwrap()
        .unwrap();
    for _ in 0..2 {
        q.count_members(req(ws, count("country = \"US\"")))
            .await
            .unwrap();
    }
    let bad = q
        .count_members(req(ws, count("country = ")))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let mut s = q
        .stream_members(req(
            ws,
            pb::StreamMembersRequest {
                selector: inline("country = \"US\""),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut streamed = 0;
    while let Some(m) = s.message().await.unwrap() {
        streamed += m.ids.len();
    }
    assert_eq!(streamed, 2_000);

    // The statistics refresh and the maintainer's lag run in the
    // background (the lag is set after the pass commits, which the watcher
    // may hear first): wait for their series.
    let mut text = String::new();
    for _ in 0..600 {
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        text = body;
        if text.contains("segd_analyze_runs_total{table=\"contacts\"}")
            && text.contains("segd_live_lag_seconds")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = value(&text, ok).unwrap();
    assert!(after >= before + 2.0, "{before} then {after}");
    for series in [
        r#"segd_rpc_requests_total{method="/segd.v1.QueryService/CountMembers",code="INVALID_ARGUMENT"}"#,
        r#"segd_rpc_duration_seconds_bucket{method="/segd.v1.QueryService/CountMembers",code="OK",le="0.1"}"#,
        r#"segd_rpc_requests_total{method="/segd.v1.ContactService/BatchUpsertContacts",code="OK"}"#,
        r#"segd_rpc_requests_total{method="/segd.v1.QueryService/StreamMembers",code="OK"}"#,
        "segd_stream_rows_total",
        "segd_stream_bytes_total",
        r#"segd_pool_connections{state="max"}"#,
        r#"segd_pool_connections{state="in_use"}"#,
        "segd_pool_waiting",
        "segd_live_lag_seconds",
        r#"segd_live_refresh_seconds_count{segment="1"}"#,
        "segd_feed_delivery_lag_seconds_count",
        r#"segd_analyze_runs_total{table="contacts"}"#,
    ] {
        assert!(
            value(&text, series).is_some(),
            "{series} missing from:\n{text}"
        );
    }
    assert!(value(&text, "segd_stream_rows_total").unwrap() >= 2_000.0);
    assert_eq!(
        value(&text, r#"segd_pool_connections{state="max"}"#),
        Some(8.0)
    );
    // Anything but /metrics is not found.
    assert_eq!(get(addr, "/").await.0, "HTTP/1.1 404 Not Found");
}

/// A saturated class answers at once with RESOURCE_EXHAUSTED and a retry
/// delay; other classes and the held call carry on.
#[tokio::test]
async fn a_full_class_sheds_with_a_retry_delay_and_the_others_carry_on() {
    use tonic_types::StatusExt;
    let app = TestApp::spawn_with(segd::api::Limits {
        max_queries: 1,
        // Longer than any deadline here: the caller's deadline bounds the
        // wait.
        shed_wait: Duration::from_secs(600),
        ..Default::default()
    })
    .await;
    let ws = "shed";
    app.bulk_contacts(ws, 10).await;
    // Hold the only query slot: a count waits on a lock a test session
    // holds on contacts.
    let mut db = app.db().await;
    let lock = db.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE contacts IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let count = |text: &str| pb::CountMembersRequest {
        selector: inline(text),
        ..Default::default()
    };
    let mut q1 = app.query().await;
    let held = tokio::spawn(async move {
        q1.count_members(req("shed", count("country = \"US\"")))
            .await
    });
    // Until it waits on the lock (it then holds the slot).
    let watcher = app.db().await;
    for _ in 0..600 {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND query LIKE '%count(%' AND query LIKE '%country%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The next query waits for a slot at most half its deadline, then is
    // refused: RESOURCE_EXHAUSTED, not the deadline's code.
    let mut q = app.query().await;
    let mut r = req(ws, count("country = \"CA\""));
    r.set_timeout(Duration::from_secs(10));
    let shed = q.count_members(r).await.unwrap_err();
    assert_eq!(shed.code(), tonic::Code::ResourceExhausted, "{shed:?}");
    let retry = shed.get_details_retry_info().expect("a RetryInfo detail");
    assert!(retry.retry_delay.is_some_and(|d| d > Duration::ZERO));
    // A write is another class: it runs.
    q.update_metrics_settings(req(
        ws,
        pb::UpdateMetricsSettingsRequest {
            settings: Some(pb::MetricsSettings {
                open_types: vec!["email_open".into()],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["open_types".into()],
            }),
        },
    ))
    .await
    .unwrap();
    // Released, the held count answers, and the slot is free again.
    lock.commit().await.unwrap();
    let n = held.await.unwrap().unwrap().into_inner().count;
    assert!(n > 0);
    q.count_members(req(ws, count("country = \"CA\"")))
        .await
        .unwrap();
}

/// JSON logs carry each call's method, request id, trace id and workspace,
/// and the response echoes the request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_call_and_its_workspace() {
    let app = TestApp::spawn().await;
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_segd"))
        .env("DATABASE_URL", &app.db_url)
        .env("SEGD_LISTEN", addr.to_string())
        .env("SEGD_LOG_FORMAT", "json")
        .env("SEGD_INSECURE_DEV_AUTH", "true")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut channel = None;
    for _ in 0..300 {
        if let Ok(c) = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            channel = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut q = pb::query_service_client::QueryServiceClient::new(channel.expect("segd serves"));
    let mut r = req("logged", pb::GetMetricsSettingsRequest {});
    r.metadata_mut()
        .insert("x-request-id", "req-123".parse().unwrap());
    r.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    let resp = q.get_metrics_settings(r).await.unwrap();
    assert_eq!(resp.metadata().get("x-request-id").unwrap(), "req-123");
    child.start_kill().unwrap();
    let out = child.wait_with_output().await.unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let call = lines
        .iter()
        .find(|l| l["span"]["request_id"] == "req-123")
        .unwrap_or_else(|| panic!("no line of the call in {lines:#?}"));
    let span = &call["span"];
    assert_eq!(span["method"], "/segd.v1.QueryService/GetMetricsSettings");
    assert_eq!(span["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(span["workspace"], "logged");
    // The start-up warning says the server is in dev mode.
    assert!(lines.iter().any(|l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("--insecure-dev-auth"))
    }));
}

/// A streaming call still open at its deadline is ended there by the
/// server with DEADLINE_EXCEEDED (tonic bounds only the response headers by
/// the deadline; the client sets no timer of its own for a stream).
#[tokio::test]
async fn a_stream_open_at_its_deadline_ends_there() {
    let app = TestApp::spawn().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::BatchUpsertContactsRequest>(1);
    let mut c = app.contacts().await;
    let mut r = req("deadline", tokio_stream::wrappers::ReceiverStream::new(rx));
    r.set_timeout(Duration::from_secs(3));
    let mut acks = c.batch_upsert_contacts(r).await.unwrap().into_inner();
    let end = tokio::time::timeout(Duration::from_secs(120), acks.message())
        .await
        .expect("the server ends the call");
    assert_eq!(end.unwrap_err().code(), tonic::Code::DeadlineExceeded);
    drop(tx);
}
