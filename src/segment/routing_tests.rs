//! Tests of [`routing`](super::routing): the checker refuses what breaks
//! its rules, and every statement the renderer writes (each `Select`, with
//! and without restrictions, in all three parameter styles) follows them,
//! for the golden definitions and for generated trees.

use proptest::prelude::*;

use super::check::{Catalog, check};
use super::plan::Plan;

use super::routing::{tenants, violations};
use crate::model::WorkspaceId;

fn check_sql(sql: &str, ws: &str) -> Vec<String> {
    violations(sql, ws, tenants()).unwrap_or_else(|e| panic!("unparsable: {e}"))
}

/// Every statement the renderer writes for `plan` (workspace 7), with the
/// way each writes the workspace.
pub(crate) fn every_statement(plan: &Plan) -> Vec<(String, String)> {
    plan.every_statement(7, super::golden::now())
}

/// Panics naming each statement of `plan` that breaks a routing rule.
pub(crate) fn assert_routes(what: &str, plan: &Plan) {
    for (sql, ws) in every_statement(plan) {
        let v = check_sql(&sql, &ws);
        assert!(v.is_empty(), "{what}: {v:#?}\n{sql}");
    }
}

#[test]
fn the_tenant_tables_are_those_with_a_workspace_id() {
    let t = tenants();
    for name in [
        "contacts",
        "events",
        "deals",
        "segment_members",
        "live_members",
        "membership_changes",
        "workspaces",
    ] {
        assert!(t.contains(name), "{name} in {t:?}");
    }
}

#[test]
fn compliant_sql_passes() {
    let ok = [
        "SELECT c.id FROM contacts c LEFT JOIN (SELECT e.contact_id, e.workspace_id, count(*) AS v FROM events e \
         WHERE e.workspace_id = $1 GROUP BY e.contact_id, e.workspace_id) ev1 \
         ON ev1.contact_id = c.id AND ev1.workspace_id = c.workspace_id WHERE c.workspace_id = $1",
        "SELECT c.id FROM contacts c WHERE c.workspace_id = $1 AND NOT EXISTS (SELECT 1 FROM events e \
         WHERE e.workspace_id = $1 AND e.contact_id = c.id AND e.workspace_id = c.workspace_id)",
        "SELECT count(DISTINCT e.contact_id) FROM unnest($2::bigint[]) oi(id), events e \
         WHERE e.workspace_id = $1 AND e.contact_id = oi.id",
        "WITH n AS (SELECT c.id, c.workspace_id FROM contacts c WHERE c.workspace_id = $1), \
         ins AS (INSERT INTO live_members (workspace_id, segment_id, contact_id) SELECT $1, 4, id FROM n) \
         DELETE FROM live_members m WHERE m.workspace_id = $1 AND m.ctid = ANY(ARRAY(SELECT 1))",
    ];
    for sql in ok {
        assert_eq!(check_sql(sql, "$1"), Vec::<String>::new(), "{sql}");
    }
}

#[test]
fn sql_that_breaks_a_rule_is_refused() {
    let bad = [
        // A table without its workspace.
        (
            "SELECT c.id FROM contacts c WHERE c.id = $2",
            "c is not restricted",
        ),
        // The workspace of another parameter.
        (
            "SELECT c.id FROM contacts c WHERE c.workspace_id = $2",
            "c is not restricted",
        ),
        // Only under OR.
        (
            "SELECT c.id FROM contacts c WHERE c.workspace_id = $1 OR c.id = 3",
            "c is not restricted",
        ),
        // A table on the nullable side, restricted only in the WHERE.
        (
            "SELECT c.id FROM contacts c LEFT JOIN events e ON e.contact_id = c.id AND e.workspace_id = c.workspace_id \
             WHERE c.workspace_id = $1 AND e.workspace_id = $1",
            "e is not restricted",
        ),
        // A subquery's table left open.
        (
            "SELECT c.id FROM contacts c WHERE c.workspace_id = $1 AND c.id IN (SELECT 3)",
            "",
        ),
        // A join on the contact alone.
        (
            "SELECT c.id FROM contacts c LEFT JOIN (SELECT e.contact_id, count(*) AS v FROM events e \
             WHERE e.workspace_id = $1 GROUP BY e.contact_id) ev1 ON ev1.contact_id = c.id WHERE c.workspace_id = $1",
            "ev1 is joined without matching workspace_id to c",
        ),
        // A comma join on the contact alone.
        (
            "SELECT c.id FROM contacts c, deals d WHERE c.workspace_id = $1 AND d.workspace_id = $1 AND d.contact_id = c.id",
            "d is joined (by a comma) without matching workspace_id to c",
        ),
        // A correlated EXISTS on the contact alone.
        (
            "SELECT c.id FROM contacts c WHERE c.workspace_id = $1 AND EXISTS (SELECT 1 FROM events e \
             WHERE e.workspace_id = $1 AND e.contact_id = c.id)",
            "correlated with c without matching workspace_id",
        ),
        // ... two levels down.
        (
            "SELECT c.id FROM contacts c WHERE c.workspace_id = $1 AND NOT EXISTS (SELECT 1 FROM events e \
             WHERE e.workspace_id = $1 AND e.contact_id = c.id AND e.workspace_id = c.workspace_id \
             AND e.occurred_at > (SELECT max(s.occurred_at) FROM events s WHERE s.workspace_id = $1 AND s.contact_id = c.id))",
            "a subquery over s is correlated with c",
        ),
        // A semi-join by IN.
        (
            "WITH m AS (SELECT c.id, c.workspace_id FROM contacts c WHERE c.workspace_id = $1) \
             SELECT e.contact_id FROM events e WHERE e.workspace_id = $1 AND e.contact_id IN (SELECT id FROM m)",
            "IN (SELECT ...) semi-joins tenant rows",
        ),
        // A FULL JOIN of CTEs on the id alone.
        (
            "WITH n AS (SELECT c.id, c.workspace_id FROM contacts c WHERE c.workspace_id = $1), \
             o AS (SELECT m.contact_id AS id, m.workspace_id FROM live_members m WHERE m.workspace_id = $1) \
             SELECT coalesce(n.id, o.id) FROM n FULL JOIN o ON o.id = n.id",
            "o is joined without matching workspace_id to n",
        ),
        // A write that forgets the workspace.
        (
            "DELETE FROM live_members m WHERE m.ctid = ANY(ARRAY(SELECT 1))",
            "m is not restricted",
        ),
        (
            "INSERT INTO segment_members (workspace_id, segment_id, contact_id) SELECT $2, 4, c.id FROM contacts c \
             WHERE c.workspace_id = $1",
            "does not write $1 into workspace_id",
        ),
    ];
    for (sql, want) in bad {
        let v = check_sql(sql, "$1");
        if want.is_empty() {
            assert!(v.is_empty(), "{sql}: {v:?}");
            continue;
        }
        assert!(
            v.iter().any(|m| m.contains(want)),
            "{sql}: want {want:?}, got {v:?}"
        );
    }
}

#[test]
fn the_workspace_is_the_one_each_style_writes() {
    let sql = "SELECT c.id FROM contacts c WHERE c.workspace_id = 7::bigint";
    assert!(check_sql(sql, "7::bigint").is_empty());
    assert!(!check_sql(sql, "8::bigint").is_empty());
    assert!(!check_sql(sql, "$1").is_empty());
}

/// Catalog of the golden fixture.
fn lowered(rule: &super::ast::Rule) -> Option<Plan> {
    let schema = super::golden::schema();
    let segments = super::golden::segments();
    let checked = check(
        rule,
        &Catalog {
            schema: &schema,
            segments: &segments,
            current: None,
        },
    )
    .ok()?;
    Some(super::lower::lower(
        &checked.pred,
        WorkspaceId(7),
        super::golden::now(),
    ))
}

#[test]
fn combined_columns_route_too() {
    let preds: Vec<_> = [
        "event(purchase, last 30d).count >= 2",
        "NOT event(purchase, since cart_abandoned)",
        "deal(status = won) OR segment(\"vip list\")",
    ]
    .iter()
    .map(|s| super::golden::checked(s))
    .collect();
    let cols = super::lower::lower_columns(
        &preds.iter().collect::<Vec<_>>(),
        WorkspaceId(7),
        super::golden::now(),
    );
    for sql in [cols.render_for(3).sql, cols.render_combinations().sql] {
        let v = check_sql(&sql, "$1");
        assert!(v.is_empty(), "{v:#?}\n{sql}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Generated trees (those the fixture accepts) route in every
    /// statement.
    #[test]
    fn every_statement_of_generated_trees_routes(r in super::proptests::valid_rule()) {
        let plan = lowered(&r).expect("a valid tree");
        for (sql, ws) in every_statement(&plan) {
            let v = check_sql(&sql, &ws);
            prop_assert!(v.is_empty(), "{}: {:#?}\n{}", super::print::print(&r), v, sql);
        }
    }
}
