//! Golden tests: the exact SQL and parameters for each construct.

use chrono::{DateTime, TimeZone, Utc};

use super::check::{Catalog, SegmentInfo, check};
use super::lower::{Param, lower};
use super::parse::parse;
use super::render::{Query, Select};
use crate::model::WorkspaceId;
use crate::model::contact::CustomFieldType;
use crate::model::schema::Schema;
use crate::model::segment::SegmentKind;

pub(crate) fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 15, 12, 0, 0).unwrap()
}

pub(crate) fn schema() -> Schema {
    let mut s = Schema::default();
    s.labels
        .extend(["lead", "customer", "donor", "subscriber"].map(String::from));
    for (k, t) in [
        ("plan", CustomFieldType::String),
        ("seats", CustomFieldType::Number),
        ("trial", CustomFieldType::Boolean),
        ("renewal", CustomFieldType::Date),
        ("pets", CustomFieldType::StringList),
    ] {
        s.custom.insert(k.into(), t);
    }
    s
}

/// Compiles `src` against the fixture workspace (id 7).
pub(crate) fn compile(src: &str) -> (String, Vec<Param>) {
    let r =
        lower(&checked(src), WorkspaceId(7), now()).render(&Query::of(Select::Contacts("c.id")));
    (r.sql, r.params)
}

/// Checks `src` against the fixture workspace (see [`segments`]).
pub(crate) fn checked(src: &str) -> crate::segment::ir::Pred {
    let s = schema();
    let segs = segments();
    check(
        &parse(src).unwrap(),
        &Catalog {
            schema: &s,
            segments: &segs,
            current: None,
        },
    )
    .unwrap_or_else(|e| panic!("{src}: {e:?}"))
    .pred
}

/// The fixture workspace's segments: 40 is dynamic (`tags:vip`), 41 static.
pub(crate) fn segments() -> Vec<SegmentInfo> {
    vec![
        SegmentInfo {
            id: 40,
            name: "engaged".into(),
            kind: SegmentKind::Dynamic,
            rule: Some(parse("tags:vip").unwrap()),
            enabled: true,
            stored: false,
        },
        SegmentInfo {
            id: 41,
            name: "vip list".into(),
            kind: SegmentKind::Static,
            rule: None,
            enabled: true,
            stored: false,
        },
    ]
}

/// The plan of `src` in the fixture workspace, without segments.
fn plan(src: &str) -> crate::segment::plan::Plan {
    let s = schema();
    let checked = check(
        &parse(src).unwrap(),
        &Catalog {
            schema: &s,
            segments: &[],
            current: None,
        },
    )
    .unwrap_or_else(|e| panic!("{src}: {e:?}"));
    lower(&checked.pred, WorkspaceId(7), now())
}

/// Every statement rendered from `src` follows the routing rules (see
/// [`routing`](super::routing)), the golden ones among them.
fn assert_routes(src: &str) {
    let plan = lower(&checked(src), WorkspaceId(7), now());
    super::routing_tests::assert_routes(src, &plan);
}

/// The ids-only body of `src`, if it has one.
fn ids_body(src: &str) -> Option<String> {
    assert_routes(src);
    let plan = plan(src);
    plan.driver?;
    let ids = plan.render(&Query::of(Select::Ids)).sql;
    Some(
        ids.strip_prefix("SELECT c.id ")
            .expect("an ids query")
            .to_string(),
    )
}

fn t(s: &str) -> Param {
    Param::Text(s.into())
}

fn ts(y: i32, m: u32, d: u32, h: u32) -> Param {
    Param::Time(Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap())
}

fn date(y: i32, m: u32, d: u32) -> Param {
    Param::Date(chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap())
}

const BASE: &str = "SELECT c.id FROM contacts c";

fn assert_golden(src: &str, joins: &str, cond: &str, params: Vec<Param>) {
    assert_routes(src);
    let (sql, got) = compile(src);
    assert_eq!(
        sql,
        format!("{BASE}{joins} WHERE c.workspace_id = $1 AND ({cond})"),
        "{src}"
    );
    let mut want = vec![Param::Int8(7)];
    want.extend(params);
    assert_eq!(got, want, "{src}");
}

#[test]
fn boolean_structure() {
    assert_golden(
        r#"(country = "us" OR country IN ("CA", "mx")) AND NOT city = "Oslo""#,
        "",
        "((c.country = $2) OR (c.country = ANY($3))) AND (NOT coalesce(c.city = $4, false))",
        vec![
            t("US"),
            Param::TextArray(vec!["CA".into(), "MX".into()]),
            t("Oslo"),
        ],
    );
    assert_golden("all()", "", "TRUE", vec![]);
    assert_golden("any()", "", "FALSE", vec![]);
    assert_golden(
        "NOT tags:vip",
        "",
        "NOT (c.tags && $2)",
        vec![Param::TextArray(vec!["vip".into()])],
    );
}

#[test]
fn text_operators() {
    assert_golden(
        r#"email != "A@B.co""#,
        "",
        "c.email <> $2",
        vec![t("a@b.co")],
    );
    assert_golden(
        r#"status NOT IN ("Rejected", "poor")"#,
        "",
        "c.status <> ALL($2)",
        vec![Param::TextArray(vec!["rejected".into(), "poor".into()])],
    );
    assert_golden(
        r#"company CONTAINS "50%_off""#,
        "",
        "c.company ILIKE $2",
        vec![t("%50\\%\\_off%")],
    );
    assert_golden(
        r#"city STARTS_WITH "New""#,
        "",
        "c.city ILIKE $2",
        vec![t("New%")],
    );
    assert_golden(
        r#"email ENDS_WITH "@gmail.com""#,
        "",
        "c.email ILIKE $2",
        vec![t("%@gmail.com")],
    );
    assert_golden(
        "phone IS SET AND owner IS NOT SET",
        "",
        "(c.phone IS NOT NULL) AND (c.owner IS NULL)",
        vec![],
    );
    assert_golden(
        r#"source_channel = "PAID""#,
        "",
        "c.source_channel = $2",
        vec![t("paid")],
    );
}

#[test]
fn numbers_dates_and_times() {
    assert_golden(
        "lead_score BETWEEN 10 AND 20.5",
        "",
        "c.lead_score BETWEEN $2 AND $3",
        vec![Param::Float8(10.0), Param::Float8(20.5)],
    );
    assert_golden(
        "id IN (3, 4)",
        "",
        "c.id = ANY($2)",
        vec![Param::Int8Array(vec![3, 4])],
    );
    assert_golden(
        "birth_date < 1990-01-01",
        "",
        "c.birth_date < $2",
        vec![date(1990, 1, 1)],
    );
    assert_golden(
        "created_at >= 2026-01-01",
        "",
        "c.created_at >= $2",
        vec![ts(2026, 1, 1, 0)],
    );
    assert_golden(
        "converted_at WITHIN_LAST 30d",
        "",
        "c.converted_at BETWEEN $2 AND $3",
        vec![ts(2026, 2, 13, 12), ts(2026, 3, 15, 12)],
    );
    assert_golden(
        "created_at OLDER_THAN 2w",
        "",
        "c.created_at < $2",
        vec![ts(2026, 3, 1, 12)],
    );
    assert_golden(
        "custom.renewal WITHIN_NEXT 1mo",
        "",
        "(c.attrs ->> $2)::date BETWEEN $3 AND $4",
        vec![t("renewal"), date(2026, 3, 15), date(2026, 4, 15)],
    );
    assert_golden(
        "birth_date ANNIVERSARY_WITHIN 2d",
        "",
        "(extract(month FROM c.birth_date) * 100 + extract(day FROM c.birth_date))::int = ANY($2)",
        vec![Param::Int4Array(vec![315, 316, 317])],
    );
}

#[test]
fn age_becomes_birth_date_ranges() {
    assert_golden(
        "age >= 25",
        "",
        "c.birth_date <= $2",
        vec![date(2001, 3, 15)],
    );
    assert_golden(
        "age > 25",
        "",
        "c.birth_date <= $2",
        vec![date(2000, 3, 15)],
    );
    assert_golden("age < 18", "", "c.birth_date > $2", vec![date(2008, 3, 15)]);
    assert_golden(
        "age = 30",
        "",
        "c.birth_date <= $2 AND c.birth_date > $3",
        vec![date(1996, 3, 15), date(1995, 3, 15)],
    );
    assert_golden(
        "age BETWEEN 20 AND 29",
        "",
        "c.birth_date <= $2 AND c.birth_date > $3",
        vec![date(2006, 3, 15), date(1996, 3, 15)],
    );
}

#[test]
fn custom_fields_bind_their_keys() {
    assert_golden(
        r#"custom.plan = "pro""#,
        "",
        "(c.attrs ->> $2) = $3",
        vec![t("plan"), t("pro")],
    );
    assert_golden(
        "custom.seats > 10",
        "",
        "(c.attrs -> $2)::float8 > $3",
        vec![t("seats"), Param::Float8(10.0)],
    );
    assert_golden(
        "custom.trial = true",
        "",
        "(c.attrs -> $2)::boolean = $3",
        vec![t("trial"), Param::Bool(true)],
    );
    assert_golden(
        "custom.plan IS NOT SET",
        "",
        "NOT (c.attrs ? $2)",
        vec![t("plan")],
    );
    assert_golden(
        r#"custom.pets HAS_ALL ("cat", "dog")"#,
        "",
        "(c.attrs -> $3) ?& $2",
        vec![
            Param::TextArray(vec!["cat".into(), "dog".into()]),
            t("pets"),
        ],
    );
    assert_golden(
        r#"custom.pets HAS_NONE ("cat")"#,
        "",
        "NOT coalesce((c.attrs -> $3) ?| $2, false)",
        vec![Param::TextArray(vec!["cat".into()]), t("pets")],
    );
}

#[test]
fn sets_and_subscriptions() {
    assert_golden(
        r#"label:lead AND labels HAS_ALL ("lead", "donor")"#,
        "",
        "(c.labels && $2) AND (c.labels @> $3)",
        vec![
            Param::TextArray(vec!["lead".into()]),
            Param::TextArray(vec!["lead".into(), "donor".into()]),
        ],
    );
    assert_golden(
        "subscription(sms, pending)",
        "",
        "c.sms_status = $2",
        vec![t("pending")],
    );
}

#[test]
fn events_group_once_per_condition() {
    let ev = |n: usize, value: &str, conds: &str| {
        format!(
            " LEFT JOIN (SELECT e.contact_id, e.workspace_id, {value} AS v FROM events e WHERE e.workspace_id = $1 AND {conds} GROUP BY e.contact_id, e.workspace_id) ev{n} ON ev{n}.contact_id = c.id AND ev{n}.workspace_id = c.workspace_id"
        )
    };
    assert_golden(
        "event(purchase, last 90d).count >= 2",
        &ev(1, "count(*)", "e.type = $2 AND e.occurred_at >= $3"),
        "ev1.v >= $4",
        vec![t("purchase"), ts(2025, 12, 15, 12), Param::Float8(2.0)],
    );
    // "Did not", at the top: an anti-join.
    assert_golden(
        "NOT event(purchase)",
        "",
        "NOT EXISTS (SELECT 1 FROM events e WHERE e.workspace_id = $1 AND e.contact_id = c.id AND e.workspace_id = c.workspace_id AND e.type = $2)",
        vec![t("purchase")],
    );
    // Anywhere else, the grouped join.
    assert_golden(
        "tags:vip OR NOT event(purchase)",
        &ev(1, "count(*)", "e.type = $3"),
        "(c.tags && $2) OR (NOT coalesce(ev1.v >= $4, false))",
        vec![
            Param::TextArray(vec!["vip".into()]),
            t("purchase"),
            Param::Float8(1.0),
        ],
    );
    assert_golden(
        r#"event(page_view, between 2026-01-01 and 2026-02-01, url STARTS_WITH "/pricing", properties.n > 2).distinct(url) >= 3"#,
        &ev(
            1,
            "count(DISTINCT e.properties ->> $9)",
            "e.type = $2 AND e.occurred_at >= $3 AND e.occurred_at < $4 AND ((e.properties ->> $5) ILIKE $6) AND ((CASE WHEN jsonb_typeof(e.properties -> $7) = 'number' THEN (e.properties -> $7)::float8 END) > $8)",
        ),
        "ev1.v >= $10",
        vec![
            t("page_view"),
            ts(2026, 1, 1, 0),
            ts(2026, 2, 1, 0),
            t("url"),
            t("/pricing%"),
            t("n"),
            Param::Float8(2.0),
            t("url"),
            Param::Float8(3.0),
        ],
    );
    assert_golden(
        "event(purchase).last OLDER_THAN 60d",
        &ev(1, "max(e.occurred_at)", "e.type = $2"),
        "ev1.v < $3",
        vec![t("purchase"), ts(2026, 1, 14, 12)],
    );
    assert_golden(
        r#"event(donation, older_than 1w, currency = "usd").sum(value) > 100"#,
        &ev(
            1,
            "sum(e.value)",
            "e.type = $2 AND e.occurred_at < $3 AND (e.currency = $4)",
        ),
        "ev1.v > $5",
        vec![
            t("donation"),
            ts(2026, 3, 8, 12),
            t("USD"),
            Param::Float8(100.0),
        ],
    );
    assert_golden(
        "event(purchase, since cart_abandoned).count = 0",
        "",
        "NOT EXISTS (SELECT 1 FROM events e WHERE e.workspace_id = $1 AND e.contact_id = c.id AND e.workspace_id = c.workspace_id AND e.type = $2 AND e.occurred_at > coalesce((SELECT max(s.occurred_at) FROM events s WHERE s.workspace_id = $1 AND s.contact_id = c.id AND s.workspace_id = c.workspace_id AND s.type = $3), '-infinity'))",
        vec![t("purchase"), t("cart_abandoned")],
    );
    assert_golden(
        "event(purchase, since cart_abandoned).count >= 2",
        " LEFT JOIN (SELECT e.contact_id, e.workspace_id, count(*) AS v FROM events e LEFT JOIN (SELECT s.contact_id, s.workspace_id, max(s.occurred_at) AS t FROM events s WHERE s.workspace_id = $1 AND s.type = $3 GROUP BY s.contact_id, s.workspace_id) s ON s.contact_id = e.contact_id AND s.workspace_id = e.workspace_id WHERE e.workspace_id = $1 AND e.type = $2 AND (s.t IS NULL OR e.occurred_at > s.t) GROUP BY e.contact_id, e.workspace_id) ev1 ON ev1.contact_id = c.id AND ev1.workspace_id = c.workspace_id",
        "ev1.v >= $4",
        vec![t("purchase"), t("cart_abandoned"), Param::Float8(2.0)],
    );
    assert_golden(
        "event(purchase, before 2026-01-01).avg(properties.qty) <= 2",
        &ev(
            1,
            "avg((CASE WHEN jsonb_typeof(e.properties -> $4) = 'number' THEN (e.properties -> $4)::float8 END))",
            "e.type = $2 AND e.occurred_at < $3",
        ),
        "ev1.v <= $5",
        vec![
            t("purchase"),
            ts(2026, 1, 1, 0),
            t("qty"),
            Param::Float8(2.0),
        ],
    );
    assert_golden(
        "event(purchase).min(value) < 5 AND event(purchase, last 12h).max(value) >= 100",
        &(ev(1, "min(e.value)", "e.type = $2")
            + &ev(2, "max(e.value)", "e.type = $4 AND e.occurred_at >= $5")),
        "(ev1.v < $3) AND (ev2.v >= $6)",
        vec![
            t("purchase"),
            Param::Float8(5.0),
            t("purchase"),
            ts(2026, 3, 15, 0),
            Param::Float8(100.0),
        ],
    );
    assert_golden(
        "event(login, after 2026-03-01).first IS SET",
        &ev(
            1,
            "min(e.occurred_at)",
            "e.type = $2 AND e.occurred_at >= $3",
        ),
        "ev1.v IS NOT NULL",
        vec![t("login"), ts(2026, 3, 1, 0)],
    );
}

#[test]
fn any_event_type_and_type_lists() {
    // "No activity in 90 days": one anti-join over events of every type.
    assert_golden(
        "NOT event(*, last 90d)",
        "",
        "NOT EXISTS (SELECT 1 FROM events e WHERE e.workspace_id = $1 AND e.contact_id = c.id AND e.workspace_id = c.workspace_id AND e.occurred_at >= $2)",
        vec![ts(2025, 12, 15, 12)],
    );
    // Several types are one source, bound as one array, sorted.
    assert_golden(
        "event(email_open|email_click, last 30d).count >= 3",
        " LEFT JOIN (SELECT e.contact_id, e.workspace_id, count(*) AS v FROM events e WHERE e.workspace_id = $1 AND e.type = ANY($2) AND e.occurred_at >= $3 GROUP BY e.contact_id, e.workspace_id) ev1 ON ev1.contact_id = c.id AND ev1.workspace_id = c.workspace_id",
        "ev1.v >= $4",
        vec![
            Param::TextArray(vec!["email_click".into(), "email_open".into()]),
            ts(2026, 2, 13, 12),
            Param::Float8(3.0),
        ],
    );
    assert_eq!(
        ids_body("event(email_open|email_click, last 30d)").as_deref(),
        Some(
            "FROM (SELECT DISTINCT e.contact_id AS id, e.workspace_id FROM events e WHERE e.workspace_id = $1 AND e.type = ANY($2) AND e.occurred_at >= $3) c WHERE TRUE"
        )
    );
    // Any type, with filters and an aggregate.
    assert_golden(
        "event(*, value > 10).sum(value) > 100",
        " LEFT JOIN (SELECT e.contact_id, e.workspace_id, sum(e.value) AS v FROM events e WHERE e.workspace_id = $1 AND (e.value > $2) GROUP BY e.contact_id, e.workspace_id) ev1 ON ev1.contact_id = c.id AND ev1.workspace_id = c.workspace_id",
        "ev1.v > $3",
        vec![Param::Float8(10.0), Param::Float8(100.0)],
    );
}

#[test]
fn conditions_on_the_same_events_share_one_source() {
    // Two aggregates of purchases in one window: one grouped pass with two
    // values, not two joins.
    let src = "event(purchase, last 30d).count >= 2 AND event(purchase, last 30d).sum(value) > 300";
    assert_golden(
        src,
        " LEFT JOIN (SELECT e.contact_id, e.workspace_id, count(*) AS v1, sum(e.value) AS v2 FROM events e WHERE e.workspace_id = $1 AND e.type = $2 AND e.occurred_at >= $3 GROUP BY e.contact_id, e.workspace_id) ev1 ON ev1.contact_id = c.id AND ev1.workspace_id = c.workspace_id",
        "(ev1.v1 >= $4) AND (ev1.v2 > $5)",
        vec![
            t("purchase"),
            ts(2026, 2, 13, 12),
            Param::Float8(2.0),
            Param::Float8(300.0),
        ],
    );
    // Its members: one HAVING with both tests.
    assert_eq!(
        ids_body(src).as_deref(),
        Some(
            "FROM (SELECT e.contact_id AS id, e.workspace_id FROM events e WHERE e.workspace_id = $1 AND e.type = $2 AND e.occurred_at >= $3 GROUP BY e.contact_id, e.workspace_id HAVING (count(*) >= $4) AND (sum(e.value) > $5)) c WHERE TRUE"
        )
    );
}

#[test]
fn a_shared_source_keeps_tests_contacts_without_rows_pass() {
    // The second test holds for contacts without purchases: it still reads
    // the shared source, which therefore stays joined (no semi-join) and, as
    // a driver, tests both in its HAVING.
    let src = "event(purchase, last 30d).count >= 1 AND event(purchase, last 30d).count <= 5";
    assert_golden(
        src,
        " LEFT JOIN (SELECT e.contact_id, e.workspace_id, count(*) AS v1, count(*) AS v2 FROM events e WHERE e.workspace_id = $1 AND e.type = $2 AND e.occurred_at >= $3 GROUP BY e.contact_id, e.workspace_id) ev1 ON ev1.contact_id = c.id AND ev1.workspace_id = c.workspace_id",
        "(ev1.v1 >= $4) AND (coalesce(ev1.v2, 0) <= $5)",
        vec![
            t("purchase"),
            ts(2026, 2, 13, 12),
            Param::Float8(1.0),
            Param::Float8(5.0),
        ],
    );
    assert_eq!(
        ids_body(src).as_deref(),
        Some(
            "FROM (SELECT e.contact_id AS id, e.workspace_id FROM events e WHERE e.workspace_id = $1 AND e.type = $2 AND e.occurred_at >= $3 GROUP BY e.contact_id, e.workspace_id HAVING (count(*) >= $4) AND (coalesce(count(*), 0) <= $5)) c WHERE TRUE"
        )
    );
}

#[test]
fn counting_a_bare_driver_counts_its_distinct_contacts() {
    let count = |src: &str| {
        assert_routes(src);
        plan(src).render(&Query::of(Select::Count)).sql
    };
    assert_eq!(
        count("event(email_open|email_click, last 30d)"),
        "SELECT count(DISTINCT e.contact_id) FROM events e WHERE e.workspace_id = $1 AND e.type = ANY($2) AND e.occurred_at >= $3"
    );
    // With anything else to test, the ids-only body is counted.
    assert!(
        count("event(email_open, last 30d) AND NOT event(purchase)").starts_with(
            "SELECT count(*) FROM (SELECT DISTINCT e.contact_id AS id, e.workspace_id FROM events e"
        )
    );
}

#[test]
fn deals_and_segments() {
    assert_golden(
        r#"deal(status = "open", stage = "Negotiation", value > 10000)"#,
        // "At least one" alone at the top: a semi-join where contacts are read.
        "",
        "EXISTS (SELECT 1 FROM deals d WHERE d.workspace_id = $1 AND (d.status = $2) AND (d.stage = $3) AND (d.value > $4) AND d.contact_id = c.id AND d.workspace_id = c.workspace_id)",
        vec![
            t("open"),
            t("negotiation"),
            Param::Float8(10000.0),
            Param::Float8(1.0),
        ],
    );
    assert_golden(
        "deal(status = won).count >= 2 OR deal().max(value) > 5",
        " LEFT JOIN (SELECT d.contact_id, d.workspace_id, count(*) AS v FROM deals d WHERE d.workspace_id = $1 AND (d.status = $2) GROUP BY d.contact_id, d.workspace_id) dl1 ON dl1.contact_id = c.id AND dl1.workspace_id = c.workspace_id LEFT JOIN (SELECT d.contact_id, d.workspace_id, max(d.value) AS v FROM deals d WHERE d.workspace_id = $1 GROUP BY d.contact_id, d.workspace_id) dl2 ON dl2.contact_id = c.id AND dl2.workspace_id = c.workspace_id",
        "(dl1.v >= $3) OR (dl2.v > $4)",
        vec![t("won"), Param::Float8(2.0), Param::Float8(5.0)],
    );
    assert_golden(
        r#"segment("engaged") AND segment("vip list")"#,
        " LEFT JOIN (SELECT m.contact_id, m.workspace_id FROM segment_members m WHERE m.workspace_id = $1 AND m.segment_id = $3) sm1 ON sm1.contact_id = c.id AND sm1.workspace_id = c.workspace_id",
        "(c.tags && $2) AND (sm1.contact_id IS NOT NULL)",
        vec![Param::TextArray(vec!["vip".into()]), Param::Int8(41)],
    );
}

#[test]
fn text_properties_compare_as_json_strings() {
    // No JSON number, boolean, null, object or array has the text "a" or
    // "b": comparing the `->>` text is exact.
    assert_golden(
        r#"event(purchase, properties.sku IN ("a", "b")).count >= 2"#,
        &ev_join(
            "count(*)",
            "e.type = $2 AND ((e.properties ->> $3) = ANY($4))",
        ),
        "ev1.v >= $5",
        vec![
            t("purchase"),
            t("sku"),
            Param::TextArray(vec!["a".into(), "b".into()]),
            Param::Float8(2.0),
        ],
    );
    // "1" is also the text of the number 1: containment checks the type.
    assert_golden(
        r#"event(purchase, properties.sku IN ("a", "1")).count >= 2"#,
        &ev_join("count(*)", "e.type = $2 AND (e.properties @> ANY($3))"),
        "ev1.v >= $4",
        vec![
            t("purchase"),
            Param::JsonArray(vec![
                serde_json::json!({"sku": "a"}),
                serde_json::json!({"sku": "1"}),
            ]),
            Param::Float8(2.0),
        ],
    );
    // A prefix only strings can have needs no type check; one a number's
    // text could start with does.
    assert_golden(
        r#"event(page_view, url STARTS_WITH "1").count >= 2"#,
        &ev_join(
            "count(*)",
            "e.type = $2 AND ((e.properties ->> $3) ILIKE $4) AND jsonb_typeof(e.properties -> $3) = 'string'",
        ),
        "ev1.v >= $5",
        vec![t("page_view"), t("url"), t("1%"), Param::Float8(2.0)],
    );
}

fn ev_join(value: &str, conds: &str) -> String {
    format!(
        " LEFT JOIN (SELECT e.contact_id, e.workspace_id, {value} AS v FROM events e WHERE e.workspace_id = $1 AND {conds} GROUP BY e.contact_id, e.workspace_id) ev1 ON ev1.contact_id = c.id AND ev1.workspace_id = c.workspace_id"
    )
}

#[test]
fn ids_bodies_skip_the_contacts_table() {
    // One grouped condition that contacts without events fail drives the
    // ids-only body; the contacts table is not read.
    assert_eq!(
        ids_body("event(purchase, last 90d).count >= 2").as_deref(),
        Some(
            "FROM (SELECT e.contact_id AS id, e.workspace_id FROM events e WHERE e.workspace_id = $1 AND e.type = $2 AND e.occurred_at >= $3 GROUP BY e.contact_id, e.workspace_id HAVING count(*) >= $4) c WHERE TRUE"
        )
    );
    // Other conditions stay, over the driver's ids; "since the last X"
    // reads the driver's latest X when the driver has every recent X.
    assert_eq!(
        ids_body("event(cart_abandoned, last 7d) AND NOT event(purchase, since cart_abandoned)")
            .as_deref(),
        Some(
            "FROM (SELECT e.contact_id AS id, e.workspace_id, max(e.occurred_at) AS t FROM events e WHERE e.workspace_id = $1 AND e.type = $2 AND e.occurred_at >= $3 GROUP BY e.contact_id, e.workspace_id HAVING count(*) >= $4) c WHERE (NOT EXISTS (SELECT 1 FROM events e WHERE e.workspace_id = $1 AND e.contact_id = c.id AND e.workspace_id = c.workspace_id AND e.type = $5 AND e.occurred_at > c.t))"
        )
    );
    assert_eq!(
        ids_body("deal(status = won).count >= 2").as_deref(),
        Some(
            "FROM (SELECT d.contact_id AS id, d.workspace_id FROM deals d WHERE d.workspace_id = $1 AND (d.status = $2) GROUP BY d.contact_id, d.workspace_id HAVING count(*) >= $3) c WHERE TRUE"
        )
    );
    // "At least one" needs no count.
    assert_eq!(
        ids_body("deal(status = open)").as_deref(),
        Some(
            "FROM (SELECT DISTINCT d.contact_id AS id, d.workspace_id FROM deals d WHERE d.workspace_id = $1 AND (d.status = $2)) c WHERE TRUE"
        )
    );
    // A contact column, a test contacts without events pass, or OR at the
    // top: the full body serves.
    assert_eq!(ids_body("event(purchase) AND tags:vip"), None);
    assert_eq!(ids_body("event(purchase).count < 3"), None);
    assert_eq!(ids_body("event(purchase) OR deal()"), None);
    assert_eq!(ids_body("NOT event(purchase)"), None);
}
