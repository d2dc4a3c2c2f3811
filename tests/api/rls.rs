//! Row-level security as a second wall (migration 0008): every table of a
//! workspace's data has a policy reading the call's workspace from the
//! `segd.workspace` setting, and segd's calls run as `segd_app`, which does
//! not bypass it. An unscoped query through segd's connection sees only its
//! workspace; every read and write path, the raw-socket id stream included,
//! runs under the policy.

use std::collections::BTreeSet;

use segd::proto as pb;
use tonic::Code;

use crate::helpers::{TestApp, inline, req};

#[tokio::test]
async fn every_table_with_a_workspace_has_a_policy() {
    let app = TestApp::spawn().await;
    let unguarded: Vec<String> = app
        .db()
        .await
        .query(
            "SELECT c.relname::text FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
             WHERE c.relkind IN ('r', 'p')
               AND EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid
                           AND a.attname = 'workspace_id' AND NOT a.attisdropped)
               AND NOT (c.relrowsecurity
                        AND EXISTS (SELECT FROM pg_policy p WHERE p.polrelid = c.oid))
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        unguarded.is_empty(),
        "tables without a policy: {unguarded:?}"
    );
    let bypasses: bool = app
        .db()
        .await
        .query_one(
            "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = 'segd_app'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!bypasses, "segd_app must not bypass row-level security");
}

#[tokio::test]
async fn an_unscoped_query_through_segds_connection_sees_only_its_workspace() {
    let app = TestApp::spawn().await;
    let a_ids = app.bulk_contacts("a", 30).await;
    app.bulk_contacts("b", 50).await;
    let a = app.state.workspaces.resolve("a").await.unwrap();
    let b = app.state.workspaces.resolve("b").await.unwrap();

    // Deliberately no workspace condition, in a transaction of a call's
    // connection (the only way it runs statements).
    let mut scoped = app.state.conn_in(a).await.unwrap();
    scoped
        .run(async |conn| {
            let seen: Vec<i64> = conn
                .query("SELECT id FROM contacts ORDER BY id", &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert_eq!(seen, a_ids, "only workspace a's contacts");
            let workspaces: i64 = conn
                .query_one("SELECT count(*) FROM workspaces", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(workspaces, 1, "only its own workspace row");
            let moved = conn
                .execute("UPDATE contacts SET country = 'FR'", &[])
                .await
                .unwrap();
            assert_eq!(moved, 30, "an unscoped update reaches only workspace a");
            Ok(())
        })
        .await
        .unwrap();
    // A write into another workspace is refused outright.
    let err = scoped
        .run(async |conn| {
            conn.execute(
                "INSERT INTO contacts (workspace_id, external_id) VALUES ($1, 'smuggled')",
                &[&b.0],
            )
            .await?;
            Ok(())
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("SQLSTATE 42501"), "{err}");

    // The owner sees that a was updated and b untouched.
    let owner = app.db().await;
    let french = async |ws: segd::model::WorkspaceId| -> i64 {
        owner
            .query_one(
                "SELECT count(*) FROM contacts WHERE workspace_id = $1 AND country = 'FR'",
                &[&ws.0],
            )
            .await
            .unwrap()
            .get(0)
    };
    assert_eq!((french(a).await, french(b).await), (30, 0));

    // The scope ended with the transaction: the role and workspace do not
    // leak into the session, which the pool (or a transaction pooler)
    // hands to the next caller.
    drop(scoped);
    let next = segd::db::conn(&app.state.pool).await.unwrap();
    let row = next
        .query_one(
            "SELECT current_user::text, coalesce(current_setting('segd.workspace', true), '')",
            &[],
        )
        .await
        .unwrap();
    assert_ne!(row.get::<_, String>(0), "segd_app");
    assert_eq!(row.get::<_, String>(1), "");

    // As segd_app with no workspace set, a query fails instead of seeing
    // anything.
    next.batch_execute("SET ROLE segd_app").await.unwrap();
    assert!(next.query("SELECT id FROM contacts", &[]).await.is_err());
}

#[tokio::test]
async fn every_call_path_reads_and_writes_under_the_policy() {
    let app = TestApp::spawn().await;
    let ids = app.bulk_contacts("w", 60).await;
    // Narrow the policy to even ids and visible external ids: what segd
    // returns and writes shows it ran under the policy.
    app.db()
        .await
        .batch_execute(
            "ALTER POLICY workspace_scope ON contacts USING (
                 workspace_id = current_setting('segd.workspace')::bigint
                 AND (id % 2 = 0 OR external_id LIKE 'shown%')
                 AND external_id NOT LIKE 'hidden%')",
        )
        .await
        .unwrap();
    let even: Vec<i64> = ids.iter().copied().filter(|i| i % 2 == 0).collect();
    let mut q = app.query().await;
    let everyone = || inline("country IS SET");

    let n = q
        .count_members(req(
            "w",
            pb::CountMembersRequest {
                selector: everyone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(n, even.len() as i64, "counts");

    // The id stream reads COPY straight off the socket; contacts come
    // through tokio-postgres. Both under the policy.
    for read_mask in [None, Some(vec!["external_id".to_string()])] {
        let s = q
            .stream_members(req(
                "w",
                pb::StreamMembersRequest {
                    selector: everyone(),
                    read_mask: read_mask.map(|paths| prost_types::FieldMask { paths }),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let got = crate::helpers::members(s).await;
        assert_eq!(got, even, "streams");
    }

    let odd = ids.iter().copied().find(|i| i % 2 == 1).unwrap();
    let mut contacts = app.contacts().await;
    let get = contacts
        .get_contact(req(
            "w",
            pb::GetContactRequest {
                contact: Some(pb::ContactRef {
                    key: Some(pb::contact_ref::Key::Id(odd)),
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(get.code(), Code::NotFound, "reads by id");

    // A write the policy does not allow is refused, and nothing is written.
    let refused = contacts
        .create_contact(req(
            "w",
            pb::CreateContactRequest {
                contact: Some(pb::Contact {
                    external_id: "hidden-1".into(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_ne!(refused.code(), Code::Ok);
    let written: BTreeSet<String> = app
        .db()
        .await
        .query(
            "SELECT external_id FROM contacts WHERE external_id LIKE 'hidden%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(written.is_empty(), "{written:?}");
    contacts
        .create_contact(req(
            "w",
            pb::CreateContactRequest {
                contact: Some(pb::Contact {
                    external_id: "shown-1".into(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .expect("a write the policy allows");
}

#[tokio::test]
async fn tag_and_label_tests_keep_their_gin_indexes_under_the_policy() {
    let app = TestApp::spawn().await;
    let ws = app.state.workspaces.resolve("w").await.unwrap();
    let owner = app.db().await;
    owner
        .execute(
            "INSERT INTO contacts (workspace_id, external_id, tags, labels)
             SELECT $1, 'g' || i,
                    CASE WHEN i % 100 = 0 THEN ARRAY['vip'] ELSE ARRAY['t' || i % 50] END,
                    CASE WHEN i % 100 = 1 THEN ARRAY['donor'] ELSE ARRAY['lead'] END
             FROM generate_series(1, 20000) i",
            &[&ws.0],
        )
        .await
        .unwrap();
    owner.batch_execute("ANALYZE contacts").await.unwrap();
    let superuser: bool = owner
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let explain = |test: &str| {
        format!(
            "EXPLAIN (FORMAT JSON) SELECT c.id FROM contacts c WHERE c.workspace_id = $1 AND {test}"
        )
    };
    let uses_gin = |plan: serde_json::Value| {
        let text = plan.to_string();
        text.contains("contacts_tags") || text.contains("contacts_labels")
    };
    let mut scoped = app.state.conn_in(ws).await.unwrap();
    scoped
        .run(async |conn| {
            // With sequential scans off, an index is the cheap way in: the GIN index
            // if the planner may use it, else the workspace's btree.
            owner
                .batch_execute("SET enable_seqscan = off")
                .await
                .unwrap();
            conn.batch_execute("SET LOCAL enable_seqscan = off")
                .await
                .unwrap();
            for test in ["c.tags && ARRAY['vip']", "c.labels @> ARRAY['donor']"] {
                let as_owner = owner.query_one(&explain(test), &[&ws.0]).await.unwrap();
                let p: serde_json::Value = as_owner.get(0);
                assert!(
                    uses_gin(p.clone()),
                    "{test}: the owner's plan reads the GIN index: {p}"
                );
                let scoped = conn.query_one(&explain(test), &[&ws.0]).await.unwrap();
                // Migrating as a superuser marks the array tests LEAKPROOF; without
                // the mark PostgreSQL must not use the index under a policy.
                assert_eq!(uses_gin(scoped.get(0)), superuser, "{test}");
            }
            Ok(())
        })
        .await
        .unwrap();
}
