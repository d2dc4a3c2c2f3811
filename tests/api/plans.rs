//! Plans on fresh data: write-path lookups keep their unique indexes when
//! a workspace is newer than the table's statistics (or there are none),
//! and segd analyzes what it writes, one replica at a time.

use std::collections::BTreeSet;
use std::time::Duration;

use segd::db::keys::{Lock, PROBE_SQL, lock_sql};
use segd::service::stats::{Statistics, Table, Thresholds};

use crate::helpers::{TestApp, import_all};

/// Index names anywhere in an EXPLAIN (FORMAT JSON) plan.
fn indexes(plan: &serde_json::Value, out: &mut BTreeSet<String>) {
    match plan {
        serde_json::Value::Object(m) => {
            if let Some(serde_json::Value::String(i)) = m.get("Index Name") {
                out.insert(i.clone());
            }
            m.values().for_each(|v| indexes(v, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| indexes(v, out)),
        _ => {}
    }
}

/// Workspace `ws` with `n` contacts (external ids `x<i>`, emails
/// `e<i>@<ws>.co`), written straight to the database.
async fn contacts(app: &TestApp, ws: &str, n: i64) -> i64 {
    let id = app.state.workspaces.resolve(ws).await.unwrap().0;
    app.db()
        .await
        .execute(
            "INSERT INTO contacts (workspace_id, external_id, email)
             SELECT $1, 'x' || i, 'e' || i || '@' || $3 || '.co' FROM generate_series(1, $2::bigint) i",
            &[&id, &n, &ws],
        )
        .await
        .unwrap();
    id
}

async fn probe_indexes(app: &TestApp, ws: i64) -> (BTreeSet<String>, BTreeSet<String>) {
    let db = app.db().await;
    let row = db
        .query_one(
            &format!("EXPLAIN (FORMAT JSON) {PROBE_SQL}"),
            &[
                &ws,
                &Vec::<i64>::new(),
                &vec!["x1".to_string(), "x2".to_string()],
                &vec!["e1@b.co".to_string()],
            ],
        )
        .await
        .unwrap();
    let mut probe = BTreeSet::new();
    indexes(&row.get(0), &mut probe);
    let row = db
        .query_one(
            &format!("EXPLAIN (FORMAT JSON) {}", lock_sql(Lock::Update)),
            &[&ws, &vec![1i64, 2, 3]],
        )
        .await
        .unwrap();
    let mut lock = BTreeSet::new();
    indexes(&row.get(0), &mut lock);
    (probe, lock)
}

fn names(xs: &[&str]) -> BTreeSet<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn write_path_lookups_keep_unique_indexes_whatever_the_statistics() {
    let app = TestApp::with()
        .limits(segd::api::Limits {
            statistics: Thresholds {
                min_rows: 0,
                ..Default::default()
            },
            ..Default::default()
        })
        .spawn()
        .await;
    let db = app.db().await;
    db.batch_execute("ALTER TABLE contacts SET (autovacuum_enabled = false)")
        .await
        .unwrap();
    // No statistics at all.
    let b = contacts(&app, "b", 5_000).await;
    let (probe, lock) = probe_indexes(&app, b).await;
    assert_eq!(
        probe,
        names(&["contacts_email", "contacts_external_id", "contacts_pkey"])
    );
    assert_eq!(lock, names(&["contacts_pkey"]));
    // Statistics from before workspace c existed: c looks like one row.
    contacts(&app, "a", 20_000).await;
    db.batch_execute("ANALYZE contacts").await.unwrap();
    let c = contacts(&app, "c", 5_000).await;
    let (probe, lock) = probe_indexes(&app, c).await;
    assert_eq!(
        probe,
        names(&["contacts_email", "contacts_external_id", "contacts_pkey"])
    );
    assert_eq!(lock, names(&["contacts_pkey"]));
}

async fn analyses(app: &TestApp) -> i64 {
    app.db()
        .await
        .query_one(
            "SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'contacts'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn estimate(app: &TestApp, ws: i64) -> f64 {
    let row = app
        .db()
        .await
        .query_one(
            &format!("EXPLAIN (FORMAT JSON) SELECT 1 FROM contacts WHERE workspace_id = {ws}"),
            &[],
        )
        .await
        .unwrap();
    let plan: serde_json::Value = row.get(0);
    plan[0]["Plan"]["Plan Rows"].as_f64().unwrap()
}

/// An import into a workspace newer than the statistics leads segd to
/// analyze the table, and the planner then knows the workspace's size.
#[tokio::test]
async fn segd_analyzes_a_table_a_new_workspace_outgrew() {
    let app = TestApp::spawn().await;
    let db = app.db().await;
    db.batch_execute("ALTER TABLE contacts SET (autovacuum_enabled = false)")
        .await
        .unwrap();
    contacts(&app, "a", 20_000).await;
    db.batch_execute("ANALYZE contacts").await.unwrap();
    let before = analyses(&app).await;
    let mut c = app.contacts().await;
    let people: Vec<Vec<segd::proto::Contact>> = (0..3)
        .map(|b| {
            (0..1_000)
                .map(|i| segd::proto::Contact {
                    external_id: format!("n{b}-{i}"),
                    ..Default::default()
                })
                .collect()
        })
        .collect();
    import_all(&mut c, "new", people).await.unwrap();
    let new = app.state.workspaces.resolve("new").await.unwrap().0;
    for _ in 0..600 {
        if analyses(&app).await > before && estimate(&app, new).await >= 1_000.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "not analyzed within a minute: {} analyses, estimate {}",
        analyses(&app).await - before,
        estimate(&app, new).await
    );
}

/// Replicas coordinate through an advisory lock: while another holds the
/// table's lock, a keeper does not analyze it; once it is free, it does.
/// A workspace the statistics already know is left alone.
#[tokio::test]
async fn one_replica_analyzes_a_table_at_a_time() {
    let app = TestApp::with()
        .limits(segd::api::Limits {
            statistics: Thresholds {
                min_rows: 0,
                ..Default::default()
            },
            ..Default::default()
        })
        .spawn()
        .await;
    let db = app.db().await;
    db.batch_execute("ALTER TABLE contacts SET (autovacuum_enabled = false)")
        .await
        .unwrap();
    let known = contacts(&app, "a", 20_000).await;
    db.batch_execute("ANALYZE contacts").await.unwrap();
    let fresh = contacts(&app, "b", 3_000).await;
    let keeper = Statistics::new(Thresholds {
        min_rows: 500,
        ..Default::default()
    });
    let ws = |id| segd::model::WorkspaceId(id);
    // 600 rows more in a workspace of 20,000: statistics are good enough.
    keeper.inserted(Table::Contacts, ws(known), 600);
    assert!(keeper.pass(&app.state.pool).await.unwrap().is_empty());
    let other = app.db().await;
    other
        .query_one(
            "SELECT pg_advisory_lock($1)",
            &[&Table::Contacts.lock_key()],
        )
        .await
        .unwrap();
    let before = analyses(&app).await;
    keeper.inserted(Table::Contacts, ws(fresh), 3_000);
    assert!(keeper.pass(&app.state.pool).await.unwrap().is_empty());
    assert_eq!(analyses(&app).await, before, "the lock holder analyzes");
    other
        .query_one(
            "SELECT pg_advisory_unlock($1)",
            &[&Table::Contacts.lock_key()],
        )
        .await
        .unwrap();
    keeper.inserted(Table::Contacts, ws(fresh), 3_000);
    assert_eq!(
        keeper.pass(&app.state.pool).await.unwrap(),
        vec![Table::Contacts]
    );
    assert!(estimate(&app, fresh).await >= 1_000.0);
}
