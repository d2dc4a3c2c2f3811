//! A database restart in the middle of a stream: the stream ends with
//! UNAVAILABLE, and once the database is back the client resumes from its
//! last token with no duplicates and no gaps. This test owns its own
//! PostgreSQL, since it restarts it.

use std::collections::BTreeSet;

use futures::StreamExt;
use segd::api::{AppState, Limits};
use segd::cluster::{ClusterOptions, LocalCluster};
use segd::proto::{self as pb, query_service_client::QueryServiceClient};
use tonic::Code;

use crate::helpers::{conninfo, inline, req};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_ends_the_stream_and_the_client_resumes() {
    let dir = tempfile::Builder::new()
        .prefix("segd-restart-")
        .tempdir_in("/tmp")
        .unwrap();
    let cluster = tokio::task::spawn_blocking({
        let p = dir.path().to_path_buf();
        move || LocalCluster::start(&p, ClusterOptions::default()).unwrap()
    })
    .await
    .unwrap();
    segd::startup::create_database(&conninfo(&cluster.url("postgres")), "restart")
        .await
        .unwrap();
    let url = cluster.url("restart");
    segd::startup::migrate(&conninfo(&url)).await.unwrap();
    let pool = segd::db::pool(&conninfo(&url), 4, std::time::Duration::from_secs(30)).unwrap();
    let stream_db = conninfo(&url).session(std::time::Duration::from_secs(30));
    let state = AppState::new(pool, stream_db, Limits::default());
    let ws = state.workspaces.resolve("w").await.unwrap();
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    db.execute(
        "INSERT INTO contacts (workspace_id, external_id, country) SELECT $1, 'r' || i, 'US' FROM generate_series(1, 200000) i",
        &[&ws.0],
    )
    .await
    .unwrap();
    let everyone: Vec<i64> = db
        .query("SELECT id FROM contacts ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    drop(db);

    let (addr, stop) = crate::helpers::serve(state).await;
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut q = QueryServiceClient::new(ch);
    let request = || {
        let mut r = pb::StreamMembersRequest {
            selector: inline("country = \"US\""),
            ..Default::default()
        };
        r.read_mask = Some(prost_types::FieldMask {
            paths: vec!["external_id".into()],
        });
        r
    };
    let mut s = q
        .stream_members(req("w", request()))
        .await
        .unwrap()
        .into_inner();
    let mut got: Vec<i64> = Vec::new();
    let first = s.next().await.unwrap().unwrap();
    got.extend(first.contacts.iter().map(|c| c.id));
    let mut token = first.resume_token;

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.restart().unwrap();
        cluster
    })
    .await
    .unwrap();
    let code = loop_until_error(&mut s, &mut got, &mut token).await;
    assert_eq!(
        code,
        Some(Code::Unavailable),
        "a lost connection ends the stream with UNAVAILABLE"
    );

    // The database is back: resume after the last delivered id.
    let mut r = request();
    r.resume_token = token;
    let mut s = q
        .stream_members(req("w", r))
        .await
        .expect("resume after the restart")
        .into_inner();
    while let Some(m) = s.next().await {
        got.extend(m.unwrap().contacts.iter().map(|c| c.id));
    }
    let unique: BTreeSet<i64> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "no duplicates");
    assert_eq!(got, everyone, "no gaps");
    let _ = stop.send(());
    drop(cluster);
}

/// Reads until the stream fails, collecting ids and the last token; returns
/// the failure's code, or None if the stream ended cleanly.
async fn loop_until_error(
    s: &mut tonic::Streaming<pb::StreamMembersResponse>,
    got: &mut Vec<i64>,
    token: &mut String,
) -> Option<Code> {
    while let Some(m) = s.next().await {
        match m {
            Ok(m) => {
                got.extend(m.contacts.iter().map(|c| c.id));
                if !m.resume_token.is_empty() {
                    *token = m.resume_token;
                }
            }
            Err(e) => return Some(e.code()),
        }
    }
    None
}
