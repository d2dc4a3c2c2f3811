//! Member streams when things go wrong on the server's side: a query
//! cancelled or failing mid-stream, a reader that stalls, a database that
//! does not answer. A stream never ends OK without everything; an
//! interrupted one carries the token to resume from.

use std::time::Duration;

use futures::StreamExt;
use segd::api::Limits;
use segd::proto::{self as pb, query_service_client::QueryServiceClient};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{TestApp, define_field, inline, req};

/// Contacts cover three countries, so this definition selects everyone.
const EVERYONE: &str = "country IN (\"US\", \"CA\", \"DE\")";

fn members(selector: &str, contacts: bool) -> pb::StreamMembersRequest {
    pb::StreamMembersRequest {
        selector: inline(selector),
        read_mask: contacts.then(|| prost_types::FieldMask {
            paths: vec!["external_id".into()],
        }),
        ..Default::default()
    }
}

/// Stream sockets with a small receive buffer, so that a reader that stops
/// holds the query back after a few hundred kilobytes rather than many
/// megabytes.
fn small_buffers() -> Limits {
    Limits {
        stream_socket_buffer: 64 << 10,
        ..Limits::default()
    }
}

/// The resume token an interrupted stream's status carries.
fn token_of(status: &tonic::Status) -> String {
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo on {status:?}"));
    assert_eq!(info.reason, "STREAM_INTERRUPTED");
    info.metadata
        .get("resume_token")
        .cloned()
        .expect("a resume_token")
}

fn ids_of(m: &pb::StreamMembersResponse) -> impl Iterator<Item = i64> + '_ {
    m.ids.iter().copied().chain(m.contacts.iter().map(|c| c.id))
}

/// Reads a stream to its end: the ids and the final status.
async fn drain(
    s: &mut tonic::Streaming<pb::StreamMembersResponse>,
    ids: &mut Vec<i64>,
) -> Result<pb::StreamSummary, tonic::Status> {
    let mut summary = None;
    while let Some(m) = s.next().await {
        let m = m?;
        ids.extend(ids_of(&m));
        summary = m.summary.or(summary);
    }
    Ok(summary.expect("an OK stream ends with a summary"))
}

/// PIDs of this test database's stream sessions whose query waits for
/// segd to take its output.
async fn busy_stream_backends(app: &TestApp) -> Vec<i32> {
    app.db()
        .await
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'segd-stream'
               AND datname = current_database() AND state = 'active' AND wait_event = 'ClientWrite'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn stream_sessions(app: &TestApp) -> i64 {
    app.db()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'segd-stream'
               AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Polls `check` every 100 ms for up to a minute.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within a minute");
}

/// Starts a stream over a client with 64 KB HTTP/2 windows (hyper's client
/// default is 2 MB) and reads its first message; the rest waits, so the
/// query is held back by backpressure mid-stream.
async fn held_stream(
    app: &TestApp,
    r: pb::StreamMembersRequest,
) -> (tonic::Streaming<pb::StreamMembersResponse>, Vec<i64>) {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .initial_stream_window_size(Some(64 << 10))
        .initial_connection_window_size(Some(64 << 10))
        .connect()
        .await
        .unwrap();
    let mut q = QueryServiceClient::new(ch);
    let mut s = q.stream_members(req("w", r)).await.unwrap().into_inner();
    let first = s.next().await.unwrap().unwrap();
    let ids: Vec<i64> = ids_of(&first).collect();
    assert!(!ids.is_empty());
    (s, ids)
}

/// An administrator (or anything but the client) cancels or terminates the
/// stream's query mid-way: the stream fails with a retryable code and the
/// last token, and resuming from it delivers exactly the rest.
async fn cancelled_mid_stream(contacts: bool, n: i64, how: &str) {
    let app = TestApp::spawn_with(small_buffers()).await;
    let all = app.bulk_contacts("w", n).await;
    // PostgreSQL only notices a cancel while it produces rows: read them in
    // id order off the primary key, not from a finished sort.
    app.db()
        .await
        .batch_execute(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET enable_sort = off', current_database()); END $$",
        )
        .await
        .unwrap();
    let (mut s, mut got) = held_stream(&app, members(EVERYONE, contacts)).await;
    let mut pids = Vec::new();
    eventually("the stream's query blocked on its reader", async || {
        pids = busy_stream_backends(&app).await;
        !pids.is_empty()
    })
    .await;
    for pid in pids {
        let signalled: bool = app
            .db()
            .await
            .query_one(&format!("SELECT {how}($1)"), &[&pid])
            .await
            .unwrap()
            .get(0);
        assert!(signalled);
    }
    let err = drain(&mut s, &mut got)
        .await
        .expect_err("a cancelled query must not end the stream OK");
    assert!(
        matches!(err.code(), Code::Unavailable | Code::Aborted),
        "a cancel by someone else is retryable, got {err:?}"
    );
    assert!(got.len() < all.len(), "the stream was cut short");
    let mut r = members(EVERYONE, contacts);
    r.resume_token = token_of(&err);
    let before = got.len();
    let mut q = app.query().await;
    let mut rest = q.stream_members(req("w", r)).await.unwrap().into_inner();
    let summary = drain(&mut rest, &mut got).await.unwrap();
    assert_eq!(got, all, "no gap and no duplicate across the resume");
    assert_eq!(summary.total_rows as usize, all.len() - before);
}

#[tokio::test]
async fn a_cancelled_id_stream_fails_with_its_last_token() {
    // More ids than the channel, HTTP/2 and socket buffers hold together.
    cancelled_mid_stream(false, 1_000_000, "pg_cancel_backend").await;
}

#[tokio::test]
async fn a_cancelled_contact_stream_fails_with_its_last_token() {
    cancelled_mid_stream(true, 100_000, "pg_cancel_backend").await;
}

#[tokio::test]
async fn a_terminated_contact_stream_fails_with_its_last_token() {
    cancelled_mid_stream(true, 100_000, "pg_terminate_backend").await;
}

/// A definition that fails at run time (a stored custom date PostgreSQL
/// cannot read, written behind segd's back) fails both stream forms, as
/// it fails CountMembers.
#[tokio::test]
async fn a_definition_failing_at_run_time_fails_the_stream() {
    let app = TestApp::spawn().await;
    let mut c = app.contacts().await;
    define_field(&mut c, "w", "day", pb::CustomFieldType::Date).await;
    let ids = app.bulk_contacts("w", 20_000).await;
    let db = app.db().await;
    db.execute(
        "UPDATE contacts SET attrs = jsonb_build_object('day', to_char(now(), 'YYYY-MM-DD'))",
        &[],
    )
    .await
    .unwrap();
    db.execute(
        "UPDATE contacts SET attrs = '{\"day\": \"2024-02-30\"}' WHERE id = $1",
        &[ids.last().unwrap()],
    )
    .await
    .unwrap();
    let definition = "custom.day WITHIN_LAST 30d";
    let mut q = app.query().await;
    let count = q
        .count_members(req(
            "w",
            pb::CountMembersRequest {
                selector: inline(definition),
                ..Default::default()
            },
        ))
        .await
        .expect_err("the count fails");
    for contacts in [false, true] {
        let mut s = q
            .stream_members(req("w", members(definition, contacts)))
            .await
            .unwrap()
            .into_inner();
        let err = drain(&mut s, &mut Vec::new())
            .await
            .expect_err("the stream must fail as the count does");
        assert_eq!(err.code(), count.code(), "contacts: {contacts}");
    }
}

/// The summary carries a token too; resuming from it delivers nothing more.
/// A limit holds across resumes.
#[tokio::test]
async fn the_summary_carries_a_token_and_limits_hold_across_resumes() {
    let app = TestApp::spawn().await;
    app.bulk_contacts("w", 9_000).await;
    let mut q = app.query().await;
    let mut s = q
        .stream_members(req("w", members(EVERYONE, false)))
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(m) = s.next().await {
        last = Some(m.unwrap());
    }
    let last = last.unwrap();
    assert!(last.summary.is_some() && !last.resume_token.is_empty());
    let mut r = members(EVERYONE, false);
    r.resume_token = last.resume_token;
    let mut s = q.stream_members(req("w", r)).await.unwrap().into_inner();
    let mut more = Vec::new();
    assert_eq!(drain(&mut s, &mut more).await.unwrap().total_rows, 0);
    assert!(more.is_empty());

    // limit 5000: stop after the first message, resume, and get 5000 in all.
    let mut r = members(EVERYONE, false);
    r.limit = 5_000;
    let mut s = q
        .stream_members(req("w", r.clone()))
        .await
        .unwrap()
        .into_inner();
    let first = s.next().await.unwrap().unwrap();
    drop(s);
    let mut got: Vec<i64> = first.ids.clone();
    assert!(got.len() < 5_000);
    r.resume_token = first.resume_token;
    let mut s = q.stream_members(req("w", r)).await.unwrap().into_inner();
    drain(&mut s, &mut got).await.unwrap();
    assert_eq!(got.len(), 5_000, "the limit counts the resumed part too");
}

/// A reader that stops reading loses its stream after the stall timeout: the
/// PostgreSQL session goes, and the reader, when it comes back, gets the
/// batches already queued and then ABORTED with a token to resume from.
#[tokio::test]
async fn a_stalled_reader_loses_its_session_and_gets_a_token() {
    let app = TestApp::spawn_with(Limits {
        stream_stall_timeout: Duration::from_secs(2),
        ..small_buffers()
    })
    .await;
    let all = app.bulk_contacts("w", 100_000).await;
    let (mut s, mut got) = held_stream(&app, members(EVERYONE, true)).await;
    eventually("the stalled stream's session closing", async || {
        stream_sessions(&app).await == 0
    })
    .await;
    let err = drain(&mut s, &mut got).await.expect_err("cut short");
    assert_eq!(err.code(), Code::Aborted);
    let mut r = members(EVERYONE, true);
    r.resume_token = token_of(&err);
    let mut q = app.query().await;
    let mut rest = q.stream_members(req("w", r)).await.unwrap().into_inner();
    drain(&mut rest, &mut got).await.unwrap();
    assert_eq!(got, all);
}

/// A "database" that accepts connections and never says a word: its URL,
/// and the task holding the connections open.
async fn silent_database() -> (String, tokio::task::JoinHandle<()>) {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("postgres://segd@{}/segd", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    (url, held)
}

/// A database that accepts connections but never answers: streams give up
/// after the connect timeout and free their slot for the next one.
#[tokio::test]
async fn a_database_that_does_not_answer_does_not_hold_stream_slots() {
    let (url, held) = silent_database().await;
    let app = TestApp::with()
        .limits(Limits {
            max_streams: 1,
            stream_connect_timeout: Duration::from_secs(1),
            ..Limits::default()
        })
        .stream_url(url)
        .spawn()
        .await;
    app.bulk_contacts("w", 10).await;
    let mut q = app.query().await;
    for _ in 0..3 {
        let mut s = q
            .stream_members(req("w", members(EVERYONE, false)))
            .await
            .unwrap()
            .into_inner();
        let err = drain(&mut s, &mut Vec::new()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    }
    assert_eq!(app.state.stream_slots.available_permits(), 1);
    held.abort();
}

/// The same database, and a caller's deadline shorter than the connect
/// timeout: the stream gives up at the deadline and frees its slot.
#[tokio::test]
async fn a_deadline_frees_a_stream_stuck_connecting() {
    let (url, held) = silent_database().await;
    let app = TestApp::with()
        .limits(Limits {
            max_streams: 1,
            stream_connect_timeout: Duration::from_secs(3600),
            ..Limits::default()
        })
        .stream_url(url)
        .spawn()
        .await;
    app.bulk_contacts("w", 10).await;
    let mut q = app.query().await;
    let mut r = req("w", members(EVERYONE, false));
    r.set_timeout(Duration::from_secs(2));
    let out = match q.stream_members(r).await {
        Ok(s) => drain(&mut s.into_inner(), &mut Vec::new())
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    assert_eq!(out.unwrap_err().code(), Code::DeadlineExceeded);
    eventually("the stream's slot coming back", async || {
        app.state.stream_slots.available_permits() == 1
    })
    .await;
    held.abort();
}
