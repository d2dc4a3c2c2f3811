//! Calls that end early or wait: a call abandoned by its client or its
//! deadline stops its query, a small pool is enough for every call, and
//! CPU-heavy work does not hold up other calls.

use std::time::{Duration, Instant};

use segd::proto as pb;
use tonic::Code;

use crate::helpers::{TestApp, create_segment, inline, named, req};

/// Pool sessions of this test's database waiting for a lock.
async fn waiting_on_locks(app: &TestApp) -> i64 {
    app.db()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
               AND application_name = 'segd' AND wait_event_type = 'Lock'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn eventually_locks(app: &TestApp, n: i64, what: &str) {
    within_locks(app, n, what, Duration::from_secs(60)).await;
}

async fn within_locks(app: &TestApp, n: i64, what: &str, limit: Duration) {
    let started = Instant::now();
    while started.elapsed() < limit {
        if waiting_on_locks(app).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: still not {n} queries waiting on the lock after {limit:?}");
}

/// A query blocked on a lock outlives neither its caller's deadline nor its
/// caller: the statement is cancelled on the server, for queries, and for
/// calls on a scoped connection.
#[tokio::test]
async fn abandoned_calls_cancel_their_queries() {
    let app = TestApp::spawn().await;
    app.bulk_contacts("w", 100).await;
    let mut q = app.query().await;
    let breakdown = || {
        req(
            "w",
            pb::BreakdownSegmentRequest {
                selector: named("Leads"),
                group_by: vec!["country".into()],
                ..Default::default()
            },
        )
    };
    q.breakdown_segment(breakdown()).await.unwrap();
    // Hold the contacts table so every query on it waits.
    let mut locker = app.db().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE contacts IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let mut r = breakdown();
    r.set_timeout(Duration::from_secs(2));
    let err = q.breakdown_segment(r).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    eventually_locks(&app, 0, "after the deadline").await;

    // A caller that goes away without a deadline.
    let mut q2 = app.query().await;
    let call = tokio::spawn(async move {
        q2.count_members(req(
            "w",
            pb::CountMembersRequest {
                selector: inline("country = \"US\""),
                ..Default::default()
            },
        ))
        .await
    });
    eventually_locks(&app, 1, "while the count waits").await;
    call.abort();
    eventually_locks(&app, 0, "after the caller left").await;

    // A call on a scoped connection (ListContacts) too: dropped mid-
    // statement, the connection cancels it and leaves the pool.
    let mut c = app.contacts().await;
    let mut r = req(
        "w",
        pb::ListContactsRequest {
            page_size: 10,
            ..Default::default()
        },
    );
    r.set_timeout(Duration::from_secs(2));
    let err = c.list_contacts(r).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    // Well before the pool's 30 s statement timeout would end it anyway.
    within_locks(
        &app,
        0,
        "after the contacts call's deadline",
        Duration::from_secs(20),
    )
    .await;
    lock.rollback().await.unwrap();
    // The pool still serves.
    q.breakdown_segment(breakdown()).await.unwrap();
}

/// Every SegmentService call works on a pool of one connection: no handler
/// holds one connection while waiting for another.
#[tokio::test]
async fn segment_calls_need_one_connection() {
    let app = TestApp::with().pool_size(1).spawn().await;
    let mut s = app.segments().await;
    let created = create_segment(&mut s, "w", "us", "country = \"US\"")
        .await
        .unwrap();
    let reference = |id| {
        Some(pb::SegmentReference {
            r#ref: Some(pb::segment_reference::Ref::Id(id)),
        })
    };
    s.get_segment(req(
        "w",
        pb::GetSegmentRequest {
            segment: reference(created.id),
        },
    ))
    .await
    .unwrap();
    s.list_segments(req("w", pb::ListSegmentsRequest::default()))
        .await
        .unwrap();
    s.update_segment(req(
        "w",
        pb::UpdateSegmentRequest {
            segment: Some(pb::Segment {
                id: created.id,
                description: "US contacts".into(),
                ..Default::default()
            }),
            update_mask: None,
        },
    ))
    .await
    .unwrap();
    s.snapshot_segment(req(
        "w",
        pb::SnapshotSegmentRequest {
            source: reference(created.id),
            name: "us-now".into(),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
}

/// Explaining a contact with many events against many segments is CPU
/// work; other calls go on meanwhile. A ListLabels issued while the
/// explanation runs comes back long before it does (with the evaluator on
/// the async runtime, every call waited for the whole explanation).
#[tokio::test]
async fn explaining_memberships_does_not_hold_up_other_calls() {
    let app = TestApp::spawn().await;
    let ids = app.bulk_contacts("w", 1).await;
    let ws = app.state.workspaces.resolve("w").await.unwrap();
    app.db()
        .await
        .execute(
            "INSERT INTO events (workspace_id, contact_id, type, occurred_at, value, properties)
             SELECT $1, $2, 'view', now() - i * interval '1 minute', i, jsonb_build_object('url', '/p/' || i % 50)
             FROM generate_series(1, 50000) AS i",
            &[&ws.0, &ids[0]],
        )
        .await
        .unwrap();
    let mut s = app.segments().await;
    for i in 0..40 {
        create_segment(
            &mut s,
            "w",
            &format!("viewers {i}"),
            &format!(
                "(event(view, last {}d, properties.url = \"/p/{i}\").count >= 3 \
                          OR event(view, properties.url IN (\"/p/1\", \"/p/2\")).sum(value) > {i}) \
                         AND NOT (event(view).distinct(properties.url) > 100 \
                          OR event(view, properties.url STARTS_WITH \"/p/4\").avg(value) < {i})",
                i + 1
            ),
        )
        .await
        .unwrap();
    }
    let mut q = app.query().await;
    let started = Instant::now();
    let check = tokio::spawn(async move {
        q.check_membership(req(
            "w",
            pb::CheckMembershipRequest {
                contact: Some(pb::ContactRef {
                    key: Some(pb::contact_ref::Key::Id(ids[0])),
                }),
                explain: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
        started.elapsed()
    });
    // The prober runs on its own thread and runtime: the server shares
    // this test's runtime, and a stall of it would stall a prober here too,
    // unseen.
    let addr = app.addr;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probing = done.clone();
    let prober = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut c = segd::proto::contact_service_client::ContactServiceClient::connect(
                format!("http://{addr}"),
            )
            .await
            .unwrap();
            let mut slowest = Duration::ZERO;
            while !probing.load(std::sync::atomic::Ordering::SeqCst) {
                let t = Instant::now();
                c.list_labels(req("w", pb::ListLabelsRequest {}))
                    .await
                    .unwrap();
                slowest = slowest.max(t.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            slowest
        })
    });
    let whole = check.await.unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    // Joined off the runtime: the prober's last call needs this runtime's server.
    let slowest = tokio::task::spawn_blocking(move || prober.join().unwrap())
        .await
        .unwrap();
    assert!(
        slowest * 4 < whole,
        "a ListLabels call waited {slowest:?} while the explanation took {whole:?}"
    );
}
