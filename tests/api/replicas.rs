//! Reads from a real hot standby: a primary of this test's own, a standby
//! made from it with `pg_basebackup -R`, and segd reading from it. Counts,
//! previews, breakdowns, overlaps and streams from the replica equal the
//! primary's; a paused replica grows stale and reads that ask for less
//! staleness go to the primary; a stream that replication cancels ends with
//! UNAVAILABLE and a resume token, and resumes without loss.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use segd::api::{AppState, Limits};
use segd::cluster::{ClusterOptions, LocalCluster};
use segd::proto::{self as pb, query_service_client::QueryServiceClient};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{conninfo, create_segment, inline, named, req};

type Query = QueryServiceClient<tonic::transport::Channel>;

fn staleness(secs: i64, nanos: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: secs,
        nanos,
    })
}

fn primary_only() -> Option<prost_types::Duration> {
    staleness(0, 0)
}

/// Where a response says it was read.
fn read_from<T>(r: &tonic::Response<T>) -> String {
    r.metadata()
        .get("segd-read-from")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

async fn sql(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

async fn count(q: &mut Query, rule: &str, max: Option<prost_types::Duration>) -> (i64, String) {
    let r = q
        .count_members(req(
            "w",
            pb::CountMembersRequest {
                selector: inline(rule),
                max_staleness: max,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let from = read_from(&r);
    (r.into_inner().count, from)
}

/// Every id of a stream, and where it was read.
async fn stream_ids(
    q: &mut Query,
    rule: &str,
    max: Option<prost_types::Duration>,
) -> (Vec<i64>, String) {
    let r = q
        .stream_members(req(
            "w",
            pb::StreamMembersRequest {
                selector: inline(rule),
                max_staleness: max,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let from = read_from(&r);
    let mut s = r.into_inner();
    let mut ids = Vec::new();
    while let Some(m) = s.next().await {
        ids.extend(m.unwrap().ids);
    }
    (ids, from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_from_a_hot_standby_match_the_primary_and_respect_staleness() {
    let dir = tempfile::Builder::new()
        .prefix("segd-replica-")
        .tempdir_in("/tmp")
        .unwrap();
    let (primary, standby) = tokio::task::spawn_blocking({
        let p = dir.path().to_path_buf();
        move || {
            let primary =
                LocalCluster::start(&p.join("primary"), ClusterOptions::default()).unwrap();
            // Replication conflicts cancel standby queries at once.
            let standby = primary
                .start_standby(&p.join("standby"), "max_standby_streaming_delay = 0")
                .unwrap();
            (primary, standby)
        }
    })
    .await
    .unwrap();
    // Only this test's own lock may conflict with the standby's reads.
    let admin = sql(&primary.url("postgres")).await;
    for stmt in [
        "ALTER SYSTEM SET autovacuum = off",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(stmt).await.unwrap();
    }
    segd::startup::create_database(&conninfo(&primary.url("postgres")), "replica")
        .await
        .unwrap();
    let url = primary.url("replica");
    let standby_url = standby.url("replica");
    segd::startup::migrate(&conninfo(&url)).await.unwrap();

    let limits = Limits {
        replica_check_interval: Duration::from_millis(100),
        ..Limits::default()
    };
    let pool = segd::db::pool(&conninfo(&url), 4, Duration::from_secs(30)).unwrap();
    let stream_db = conninfo(&url).session(Duration::from_secs(30));
    let mut state = AppState::new(pool, stream_db, limits.clone());
    state.replicas = Arc::new(
        segd::db::replicas::Replicas::connect(
            &[standby_url.as_str()],
            None,
            4,
            Duration::from_secs(30),
            limits.stream_socket_buffer,
        )
        .unwrap(),
    );
    let replica = state.replicas.all()[0].clone();
    let ws = state.workspaces.resolve("w").await.unwrap();
    let db = sql(&url).await;
    db.execute(
        "INSERT INTO contacts (workspace_id, external_id, country, labels) \
         SELECT $1, 'r' || i, (ARRAY['US','CA','DE'])[1 + i % 3], \
                CASE WHEN i % 4 = 0 THEN ARRAY['lead'] ELSE ARRAY[]::text[] END \
         FROM generate_series(1, 200000) i",
        &[&ws.0],
    )
    .await
    .unwrap();
    let us: Vec<i64> = db
        .query(
            "SELECT id FROM contacts WHERE country = 'US' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();

    let (addr, stop) = crate::helpers::serve(state).await;
    let ch = crate::helpers::wide_channel(addr).await;
    let mut q = QueryServiceClient::new(ch.clone());
    let mut segs = pb::segment_service_client::SegmentServiceClient::new(ch);
    create_segment(&mut segs, "w", "us", "country = \"US\"")
        .await
        .unwrap();
    create_segment(&mut segs, "w", "leads", "label:lead")
        .await
        .unwrap();
    caught_up(&replica).await;

    // The same answers from the replica as from the primary.
    let (n, from) = count(&mut q, "country = \"US\"", None).await;
    assert_eq!((n, from.as_str()), (us.len() as i64, "replica"));
    let (n, from) = count(&mut q, "country = \"US\"", primary_only()).await;
    assert_eq!((n, from.as_str()), (us.len() as i64, "primary"));
    let (ids, from) = stream_ids(&mut q, "country = \"US\"", None).await;
    assert_eq!(from, "replica");
    assert_eq!(ids, us, "the replica streams the primary's members");
    let (ids, from) = stream_ids(&mut q, "country = \"US\"", primary_only()).await;
    assert_eq!((ids == us, from.as_str()), (true, "primary"));
    let breakdown = |max| pb::BreakdownSegmentRequest {
        selector: inline("label:lead"),
        group_by: vec!["country".into()],
        max_staleness: max,
        ..Default::default()
    };
    let on_replica = q
        .breakdown_segment(req("w", breakdown(None)))
        .await
        .unwrap();
    let on_primary = q
        .breakdown_segment(req("w", breakdown(primary_only())))
        .await
        .unwrap();
    assert_eq!(read_from(&on_replica), "replica");
    assert_eq!(on_replica.into_inner(), on_primary.into_inner());
    let overlap = |max| pb::OverlapSegmentsRequest {
        segment_ids: vec![],
        max_staleness: max,
    };
    let ids = segment_ids(&mut segs).await;
    let on_replica = q
        .overlap_segments(req(
            "w",
            pb::OverlapSegmentsRequest {
                segment_ids: ids.clone(),
                ..overlap(None)
            },
        ))
        .await
        .unwrap();
    assert_eq!(read_from(&on_replica), "replica");
    let on_replica = on_replica.into_inner();
    let on_primary = q
        .overlap_segments(req(
            "w",
            pb::OverlapSegmentsRequest {
                segment_ids: ids,
                ..overlap(primary_only())
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(on_replica, on_primary);
    assert_eq!(on_replica.intersections[0].count, 200000 / 12, "US leads");
    let preview = q
        .preview_segment(req(
            "w",
            pb::PreviewSegmentRequest {
                selector: named("us"),
                sample_size: 5,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    assert_eq!(read_from(&preview), "replica");
    assert_eq!(preview.into_inner().count, us.len() as i64);

    // A paused replica grows stale: a read that allows little staleness goes
    // to the primary and sees a new contact; one that allows more reads the
    // replica, which has not got it.
    let replica_db = sql(&standby_url).await;
    replica_db
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    db.execute(
        "INSERT INTO contacts (workspace_id, external_id, country) VALUES ($1, 'late', 'US')",
        &[&ws.0],
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stale = replica.staleness().expect("checked");
    assert!(
        stale >= Duration::from_secs(1),
        "staleness grows: {stale:?}"
    );
    let (n, from) = count(&mut q, "country = \"US\"", staleness(0, 500_000_000)).await;
    assert_eq!((n, from.as_str()), (us.len() as i64 + 1, "primary"));
    let r = q
        .count_members(req(
            "w",
            pb::CountMembersRequest {
                selector: inline("country = \"US\""),
                max_staleness: staleness(60, 0),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    assert_eq!(read_from(&r), "replica");
    let reported: u64 = r
        .metadata()
        .get("segd-replica-staleness-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        reported >= 1000,
        "the response reports the staleness: {reported} ms"
    );
    assert_eq!(
        r.into_inner().count,
        us.len() as i64,
        "the replica has not replayed the new contact"
    );
    replica_db
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    caught_up(&replica).await;
    let (n, from) = count(&mut q, "country = \"US\"", None).await;
    assert_eq!((n, from.as_str()), (us.len() as i64 + 1, "replica"));
    let bad = q
        .count_members(req(
            "w",
            pb::CountMembersRequest {
                selector: inline("country = \"US\""),
                max_staleness: staleness(-1, 0),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(crate::helpers::violations(&bad), vec!["max_staleness"]);

    // Replication cancels a replica stream: UNAVAILABLE with a resume token,
    // and resuming loses and repeats nothing.
    let everyone: Vec<i64> = db
        .query("SELECT id FROM contacts ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let request = || pb::StreamMembersRequest {
        selector: inline("country IS SET"),
        read_mask: Some(prost_types::FieldMask {
            paths: vec!["external_id".into()],
        }),
        ..Default::default()
    };
    let r = q.stream_members(req("w", request())).await.unwrap();
    assert_eq!(read_from(&r), "replica");
    let mut s = r.into_inner();
    let first = s.next().await.unwrap().unwrap();
    let mut got: Vec<i64> = first.contacts.iter().map(|c| c.id).collect();
    let mut token = first.resume_token;
    // An exclusive lock on the primary, replayed on the standby, where the
    // stream's transaction holds the table.
    db.batch_execute("BEGIN; LOCK TABLE contacts IN ACCESS EXCLUSIVE MODE; COMMIT")
        .await
        .unwrap();
    conflicts(&replica_db).await;
    let mut ended = None;
    while let Some(m) = s.next().await {
        match m {
            Ok(m) => {
                got.extend(m.contacts.iter().map(|c| c.id));
                if !m.resume_token.is_empty() {
                    token = m.resume_token;
                }
            }
            Err(e) => {
                ended = Some(e);
                break;
            }
        }
    }
    let e = ended.expect("replication cancels the stream before it ends");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("replica cancelled the query"),
        "the caller is told why: {}",
        e.message()
    );
    let info = e.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.metadata.get("resume_token"), Some(&token));
    assert!(got.len() < everyone.len());
    let mut r = request();
    r.resume_token = token;
    let mut s = q.stream_members(req("w", r)).await.unwrap().into_inner();
    while let Some(m) = s.next().await {
        got.extend(m.unwrap().contacts.iter().map(|c| c.id));
    }
    let unique: BTreeSet<i64> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "no duplicates");
    assert_eq!(got, everyone, "no gaps");

    let _ = stop.send(());
    drop(standby);
    drop(primary);
}

/// Waits until a check finds the replica caught up, and recently.
async fn caught_up(replica: &segd::db::replicas::Replica) {
    for _ in 0..600 {
        if replica
            .staleness()
            .is_some_and(|s| s < Duration::from_millis(500))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the replica never caught up");
}

/// Waits until the standby has cancelled a query for a replication conflict.
async fn conflicts(replica_db: &tokio_postgres::Client) {
    for _ in 0..600 {
        let n: i64 = replica_db
            .query_one(
                "SELECT confl_lock FROM pg_stat_database_conflicts WHERE datname = 'replica'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the standby never cancelled the stream's query");
}

/// The ids of the saved segments, ascending.
async fn segment_ids(
    segs: &mut pb::segment_service_client::SegmentServiceClient<tonic::transport::Channel>,
) -> Vec<i64> {
    let mut ids: Vec<i64> = segs
        .list_segments(req("w", pb::ListSegmentsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .segments
        .iter()
        .filter(|s| s.name == "us" || s.name == "leads")
        .map(|s| s.id)
        .collect();
    ids.sort_unstable();
    ids
}
