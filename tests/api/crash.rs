//! segd killed with SIGKILL in the middle of a burst of writes: every write
//! it acknowledged is there, the next segd drains what the dead one left
//! queued, live segments equal their from-scratch evaluation, and the
//! change feed has no gap.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use segd::proto::{self as pb, contact_service_client::ContactServiceClient};
use tokio::process::{Child, Command};
use tokio_stream::wrappers::ReceiverStream;

use crate::helpers::{TestApp, import_all, req};
use crate::live::{assert_exact, create_live};

/// A segd process over the test's database, serving on `addr`.
async fn start_segd(
    app: &TestApp,
    addr: std::net::SocketAddr,
) -> (Child, ContactServiceClient<tonic::transport::Channel>) {
    let child = Command::new(env!("CARGO_BIN_EXE_segd"))
        .env("DATABASE_URL", &app.db_url)
        .env("SEGD_LISTEN", addr.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("segd starts");
    for _ in 0..300 {
        if let Ok(ch) = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            return (child, ContactServiceClient::new(ch));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("segd did not start serving on {addr}");
}

/// A free local port.
async fn free_addr() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

const TYPES: [&str; 3] = ["purchase", "email_open", "page_view"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_segd_loses_no_acknowledged_write_and_the_next_one_catches_up() {
    // The in-test server only answers the checks: its own maintainer waits
    // an hour between passes, so catching up is the restarted process's job.
    let mut limits = segd::api::Limits::default();
    limits.live.poll = Duration::from_secs(3600);
    let app = TestApp::spawn_with(limits).await;
    let ws = "crash";
    let segments = [
        ("buyers", "event(purchase)"),
        ("openers", "event(email_open, last 30d)"),
        ("german", r#"country = "DE""#),
        (
            "german buyers",
            r#"segment("german") AND segment("buyers")"#,
        ),
        ("idle", "NOT event(*, last 30d)"),
    ];
    for (name, text) in segments {
        create_live(&app, ws, name, text).await;
    }
    let mut c = app.contacts().await;
    let people: Vec<pb::Contact> = (0..300)
        .map(|i| pb::Contact {
            external_id: format!("p{i}"),
            country: if i % 3 == 0 { "DE" } else { "FR" }.into(),
            ..Default::default()
        })
        .collect();
    let imported = import_all(&mut c, ws, vec![people]).await.unwrap();
    let ids: Vec<i64> = imported.results.iter().map(|r| r.contact_id).collect();
    app.drained().await;

    let addr = free_addr().await;
    let (mut first, mut client) = start_segd(&app, addr).await;
    // A burst of events, 50 per batch, each batch acknowledged when it
    // commits; segd is killed once some are.
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::RecordEventsRequest>(4);
    let sender = {
        let ids = ids.clone();
        tokio::spawn(async move {
            for b in 0..1000usize {
                let events = (0..50)
                    .map(|k| {
                        let n = b * 50 + k;
                        pb::Event {
                            event_id: format!("e{n}"),
                            contact: Some(pb::ContactRef {
                                key: Some(pb::contact_ref::Key::Id(ids[n * 7 % ids.len()])),
                            }),
                            r#type: TYPES[n % TYPES.len()].into(),
                            ..Default::default()
                        }
                    })
                    .collect();
                if tx.send(pb::RecordEventsRequest { events }).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut acks = client
        .record_events(req(ws, ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    let mut acked: Vec<i32> = Vec::new();
    while let Ok(Some(a)) = acks.message().await {
        acked.push(a.batch_index);
        if acked.len() == 20 {
            first.start_kill().expect("SIGKILL");
            break;
        }
    }
    first.wait().await.unwrap();
    while let Ok(Some(a)) = acks.message().await {
        acked.push(a.batch_index);
    }
    sender.abort();
    assert!(acked.len() >= 20, "the burst was under way when segd died");

    // Every acknowledged write is there.
    let db = app.db().await;
    let keys: BTreeSet<String> = db
        .query("SELECT event_key FROM events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for b in &acked {
        for k in 0..50 {
            let key = format!("e{}", *b as usize * 50 + k);
            assert!(keys.contains(&key), "acknowledged event {key} was lost");
        }
    }

    // The next segd drains the queue the dead one left.
    let (mut second, _client) = start_segd(&app, addr).await;
    let mut left: i64 = -1;
    for _ in 0..600 {
        left = db
            .query_one("SELECT count(*) FROM change_queue", &[])
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the restarted segd drained the queue");
    let names: Vec<&str> = segments.iter().map(|(n, _)| *n).collect();
    assert_exact(&app, ws, &names).await;
    second.start_kill().unwrap();
    second.wait().await.unwrap();
}
