//! The differential test: random rule trees over random contacts, events,
//! deals and memberships. PostgreSQL's answer to the compiled SQL must equal
//! the reference evaluator's, contact for contact. A failure shrinks to a
//! minimal tree and prints it as text with the SQL and the contacts that
//! disagree. Every statement compiled for each tree (each `Select`, not
//! only those run here) must also route to one shard of a cluster
//! distributed by workspace (see `routing`).

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use segd::model::WorkspaceId;
use segd::model::contact::{Channel, Contact, SubscriptionStatus};
use segd::model::deal::Deal;
use segd::model::event::StoredEvent;
use segd::proto as pb;
use segd::segment::ast::*;
use segd::segment::check::{Catalog, check};
use segd::segment::eval::{ContactData, eval, explain};
use segd::segment::lower::lower;
use segd::segment::plan::Plan;
use segd::segment::print::print;
use segd::segment::render::{Query, Select};

use crate::helpers::{TestApp, req};

const WS: &str = "diff";
const CITIES: &[&str] = &["Oslo", "Lima", "New York", "newark", "Berlin"];
const COUNTRIES: &[&str] = &["US", "CA", "NO", "PE", "DE"];
const STATUSES: &[&str] = &["in_progress", "rejected", "regular", "one_time"];
const REASONS: &[&str] = &["too_expensive", "competitor"];
const CHANNELS: &[&str] = &["organic", "paid", "social", "referral"];
const TAGS: &[&str] = &["vip", "trial", "webinar", "partner"];
const LABELS: &[&str] = &["lead", "customer", "donor", "subscriber", "attendee"];
const PLANS: &[&str] = &["free", "pro", "team"];
const PETS: &[&str] = &["cat", "dog", "fish"];
const TYPES: &[&str] = &["purchase", "page_view", "email_open", "cart_abandoned"];
const URLS: &[&str] = &["/pricing", "/pricing/team", "/blog", "/docs"];
/// "7" and "true" are also the texts of a JSON number and boolean, which
/// some events hold under `sku`: only strings may match a text literal.
const SKUS: &[&str] = &["A-1", "B-2", "C-3", "7", "true"];
const STAGES: &[&str] = &["qualification", "negotiation", "closing"];
const OWNERS: &[&str] = &["ana", "bo"];

/// The fixed "now" of every comparison (whole seconds, as stored).
fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, 20, 12, 0, 0).unwrap()
}

struct World {
    ws: WorkspaceId,
    app: TestApp,
    contacts: Vec<Contact>,
    events: HashMap<i64, Vec<StoredEvent>>,
    deals: HashMap<i64, Vec<Deal>>,
    members: HashMap<i64, HashSet<i64>>,
}

/// Segments as definitions, live ones included: the reference evaluator
/// knows definitions, not stored memberships.
fn from_scratch(
    mut infos: Vec<segd::segment::check::SegmentInfo>,
) -> Vec<segd::segment::check::SegmentInfo> {
    for s in &mut infos {
        s.stored = false;
    }
    infos
}

fn pick<'a>(rng: &mut StdRng, xs: &[&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

fn custom(kind: pb::custom_value::Kind) -> pb::CustomValue {
    pb::CustomValue { kind: Some(kind) }
}

fn at(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    })
}

impl World {
    async fn build() -> World {
        let app = TestApp::spawn().await;
        let mut rng = StdRng::seed_from_u64(20_260_520);
        let mut c = app.contacts().await;
        for (key, t) in [
            ("plan", pb::CustomFieldType::String),
            ("seats", pb::CustomFieldType::Number),
            ("trial", pb::CustomFieldType::Boolean),
            ("renewal", pb::CustomFieldType::Date),
            ("pets", pb::CustomFieldType::StringList),
        ] {
            let f = pb::CustomField {
                key: key.into(),
                r#type: t as i32,
                ..Default::default()
            };
            c.define_custom_field(req(WS, pb::DefineCustomFieldRequest { field: Some(f) }))
                .await
                .unwrap();
        }
        let some = |rng: &mut StdRng| rng.random_bool(0.7);
        let contacts: Vec<pb::Contact> = (0..70)
            .map(|i| {
                let mut p = pb::Contact {
                    external_id: format!("d{i}"),
                    ..Default::default()
                };
                if some(&mut rng) {
                    p.email = format!("c{i}@{}.co", pick(&mut rng, &["x", "gmail", "acme"]));
                }
                if some(&mut rng) {
                    p.city = pick(&mut rng, CITIES).into();
                }
                if some(&mut rng) {
                    p.country = pick(&mut rng, COUNTRIES).into();
                }
                if some(&mut rng) {
                    p.status = pick(&mut rng, STATUSES).into();
                }
                if some(&mut rng) {
                    p.status_reason = pick(&mut rng, REASONS).into();
                }
                if some(&mut rng) {
                    p.source_channel = 1 + rng.random_range(0..4);
                }
                if some(&mut rng) {
                    p.lead_score = Some(f64::from(rng.random_range(0..100)));
                }
                if some(&mut rng) {
                    let d = NaiveDate::from_ymd_opt(1950, 1, 1).unwrap()
                        + Duration::days(rng.random_range(0..27_000));
                    p.birth_date = d.to_string();
                }
                if rng.random_bool(0.1) {
                    p.birth_date = format!("{}-02-29", [1992, 2000, 2004][i % 3]);
                }
                if rng.random_bool(0.1) {
                    p.birth_date = format!("{}-05-{}", 1980 + i % 30, 18 + i % 10);
                }
                p.created_at = at(now() - Duration::hours(rng.random_range(0..24 * 400)));
                if some(&mut rng) {
                    p.converted_at = at(now() - Duration::hours(rng.random_range(-48..24 * 200)));
                }
                p.tags = TAGS
                    .iter()
                    .filter(|_| rng.random_bool(0.35))
                    .map(|s| s.to_string())
                    .collect();
                p.labels = LABELS
                    .iter()
                    .filter(|_| rng.random_bool(0.3))
                    .map(|s| s.to_string())
                    .collect();
                if some(&mut rng) {
                    p.custom_fields.insert(
                        "plan".into(),
                        custom(pb::custom_value::Kind::StringValue(
                            pick(&mut rng, PLANS).into(),
                        )),
                    );
                }
                if some(&mut rng) {
                    p.custom_fields.insert(
                        "seats".into(),
                        custom(pb::custom_value::Kind::NumberValue(f64::from(
                            rng.random_range(1..50),
                        ))),
                    );
                }
                if some(&mut rng) {
                    p.custom_fields.insert(
                        "trial".into(),
                        custom(pb::custom_value::Kind::BoolValue(rng.random_bool(0.5))),
                    );
                }
                if some(&mut rng) {
                    let d = now().date_naive() + Duration::days(rng.random_range(-200..200));
                    p.custom_fields.insert(
                        "renewal".into(),
                        custom(pb::custom_value::Kind::DateValue(d.to_string())),
                    );
                }
                if some(&mut rng) {
                    let pets = PETS
                        .iter()
                        .filter(|_| rng.random_bool(0.5))
                        .map(|s| s.to_string())
                        .collect();
                    p.custom_fields.insert(
                        "pets".into(),
                        custom(pb::custom_value::Kind::StringListValue(pb::StringList {
                            values: pets,
                        })),
                    );
                }
                for ch in [pb::SubscriptionChannel::Email, pb::SubscriptionChannel::Sms] {
                    if rng.random_bool(0.5) {
                        p.subscriptions.push(pb::Subscription {
                            channel: ch as i32,
                            status: 1 + rng.random_range(0..3),
                            changed_at: None,
                        });
                    }
                }
                p
            })
            .collect();
        let r = crate::helpers::import_all(&mut c, WS, vec![contacts])
            .await
            .unwrap();
        assert_eq!(r.failed, 0, "{r:?}");
        let ids: Vec<i64> = r.results.iter().map(|x| x.contact_id).collect();

        let events: Vec<pb::Event> = (0..500)
            .map(|i| {
                let mut props = prost_types::Struct::default();
                let mut put = |k: &str, v: prost_types::value::Kind| {
                    props
                        .fields
                        .insert(k.into(), prost_types::Value { kind: Some(v) });
                };
                if rng.random_bool(0.6) {
                    put(
                        "url",
                        prost_types::value::Kind::StringValue(pick(&mut rng, URLS).into()),
                    );
                }
                match rng.random_range(0..10) {
                    0..5 => put(
                        "sku",
                        prost_types::value::Kind::StringValue(pick(&mut rng, SKUS).into()),
                    ),
                    5 => put("sku", prost_types::value::Kind::NumberValue(7.0)),
                    6 => put("sku", prost_types::value::Kind::BoolValue(true)),
                    _ => {}
                }
                if rng.random_bool(0.4) {
                    put(
                        "qty",
                        prost_types::value::Kind::NumberValue(f64::from(rng.random_range(1..5))),
                    );
                }
                if rng.random_bool(0.1) {
                    put("qty", prost_types::value::Kind::StringValue("many".into()));
                }
                pb::Event {
                    event_id: format!("ev{i}"),
                    contact: Some(pb::ContactRef {
                        key: Some(pb::contact_ref::Key::Id(
                            ids[rng.random_range(0..ids.len())],
                        )),
                    }),
                    r#type: pick(&mut rng, TYPES).into(),
                    occurred_at: at(now() - Duration::hours(rng.random_range(-24..24 * 150))),
                    value: rng
                        .random_bool(0.6)
                        .then(|| f64::from(rng.random_range(0..200))),
                    currency: if rng.random_bool(0.5) {
                        pick(&mut rng, &["USD", "EUR"]).into()
                    } else {
                        String::new()
                    },
                    properties: Some(props),
                    contact_id: 0,
                }
            })
            .collect();
        let r = crate::helpers::record_all(&mut c, WS, vec![events])
            .await
            .unwrap();
        assert_eq!(r.failed, 0);
        for _ in 0..80 {
            let status = 1 + rng.random_range(0..3);
            let d = pb::Deal {
                contact_id: ids[rng.random_range(0..ids.len())],
                name: "deal".into(),
                status,
                stage: pick(&mut rng, STAGES).into(),
                value: f64::from(rng.random_range(0..20_000)),
                currency: "USD".into(),
                owner: if rng.random_bool(0.7) {
                    pick(&mut rng, OWNERS).into()
                } else {
                    String::new()
                },
                created_at: at(now() - Duration::days(rng.random_range(0..300))),
                closed_at: (status != 1)
                    .then(|| at(now() - Duration::days(rng.random_range(0..30))))
                    .flatten(),
                ..Default::default()
            };
            c.upsert_deal(req(WS, pb::UpsertDealRequest { deal: Some(d) }))
                .await
                .unwrap();
        }

        let mut s =
            segd::proto::segment_service_client::SegmentServiceClient::new(app.channel().await);
        let create =
            |name: &str, kind: pb::SegmentKind, filter: Option<&str>| pb::CreateSegmentRequest {
                segment: Some(pb::Segment {
                    name: name.into(),
                    kind: kind as i32,
                    definition: filter.map(|f| pb::Definition {
                        kind: Some(pb::definition::Kind::Filter(f.into())),
                    }),
                    ..Default::default()
                }),
            };
        s.create_segment(req(
            WS,
            create(
                "engaged",
                pb::SegmentKind::Dynamic,
                Some("tags:vip OR event(email_open, last 30d).count >= 2"),
            ),
        ))
        .await
        .unwrap();
        let list = s
            .create_segment(req(WS, create("vip list", pb::SegmentKind::Static, None)))
            .await
            .unwrap()
            .into_inner()
            .segment
            .unwrap();
        let picked: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|_| rng.random_bool(0.3))
            .collect();
        s.add_segment_members(req(
            WS,
            pb::AddSegmentMembersRequest {
                segment_id: list.id,
                contact_ids: picked,
            },
        ))
        .await
        .unwrap();
        s.snapshot_segment(req(
            WS,
            pb::SnapshotSegmentRequest {
                source: Some(pb::SegmentReference {
                    r#ref: Some(pb::segment_reference::Ref::Name("Leads".into())),
                }),
                name: "snap".into(),
                description: String::new(),
            },
        ))
        .await
        .unwrap();

        // Load everything back as stored, so both sides see the same data.
        let ws = app.state.workspaces.resolve(WS).await.unwrap();
        let client = app.state.pool.get().await.unwrap();
        let (contacts, _) = segd::db::contacts::list(
            &**client,
            ws,
            "",
            (segd::db::contacts::Order::Id, false),
            None,
            1000,
        )
        .await
        .unwrap();
        let mut events = HashMap::new();
        for c in &contacts {
            let key = segd::model::contact::ContactKey::Id(c.id);
            events.insert(
                c.id,
                segd::db::events::list(&**client, ws, &key, None, None, 10_000)
                    .await
                    .unwrap(),
            );
        }
        let mut deals: HashMap<i64, Vec<Deal>> = HashMap::new();
        for d in segd::db::deals::list(&**client, ws, None, 0, 10_000)
            .await
            .unwrap()
        {
            deals.entry(d.contact_id).or_default().push(d);
        }
        let mut members: HashMap<i64, HashSet<i64>> = HashMap::new();
        for r in client
            .query(
                "SELECT contact_id, segment_id FROM segment_members WHERE workspace_id = $1",
                &[&ws.0],
            )
            .await
            .unwrap()
        {
            members.entry(r.get(0)).or_default().insert(r.get(1));
        }
        drop(client);
        World {
            ws,
            app,
            contacts,
            events,
            deals,
            members,
        }
    }

    async fn compare(&self, rule: &Rule) -> Result<(), TestCaseError> {
        let client = self.app.state.pool.get().await.unwrap();
        let schema = segd::db::definitions::schema(&**client, self.ws)
            .await
            .unwrap();
        let segments = from_scratch(segd::service::segments::infos(
            &segd::db::segments::all(&**client, self.ws).await.unwrap(),
        ));
        let text = print(rule);
        let checked = check(
            rule,
            &Catalog {
                schema: &schema,
                segments: &segments,
                current: None,
            },
        )
        .map_err(|e| TestCaseError::fail(format!("generated an invalid tree: {text}\n{e:?}")))?;
        let plan = lower(&checked.pred, self.ws, now());
        routes(&text, &plan, self.ws)?;
        let ids = plan.render(&Query::of(Select::Ids));
        let sql = ids.sql.clone();
        let rows = client
            .query_typed(&sql, &ids.typed())
            .await
            .map_err(|e| TestCaseError::fail(format!("{text}\nSQL failed: {e:?}\n{sql}")))?;
        let got: BTreeSet<i64> = rows.iter().map(|r| r.get(0)).collect();
        // The full body (read by projections and breakdowns) selects the
        // same contacts as the ids-only body counts and streams use.
        let full = plan.render(&Query::of(Select::Contacts("c.id")));
        let rows = client
            .query_typed(&full.sql, &full.typed())
            .await
            .map_err(|e| TestCaseError::fail(format!("{text}\nSQL failed: {e:?}\n{}", full.sql)))?;
        let by_full: BTreeSet<i64> = rows.iter().map(|r| r.get(0)).collect();
        if by_full != got {
            return Err(TestCaseError::fail(format!(
                "definition: {text}\nthe ids-only body disagrees with the full body\n{sql}\n{}",
                full.sql
            )));
        }
        // Counting agrees too (it may count straight off a driver).
        let count = plan.render(&Query::of(Select::Count));
        let n: i64 = client
            .query_typed(&count.sql, &count.typed())
            .await
            .map_err(|e| {
                TestCaseError::fail(format!("{text}\nSQL failed: {e:?}\n{}", count.sql))
            })?[0]
            .get(0);
        if n as usize != got.len() {
            return Err(TestCaseError::fail(format!(
                "definition: {text}\ncount {n} but {} members\n{}",
                got.len(),
                count.sql
            )));
        }
        // The stream's delivery path (parameters through settings, COPY)
        // returns the same set.
        let mut client = client;
        let txn = client.transaction().await.unwrap();
        let via = plan.render_with_settings(&Query::of(Select::Ids));
        txn.query_typed(&via.set.sql, &via.set.typed())
            .await
            .unwrap();
        let copy = txn
            .copy_out(&format!("COPY ({}) TO STDOUT", via.query))
            .await
            .unwrap();
        futures::pin_mut!(copy);
        let mut out = Vec::new();
        while let Some(chunk) = futures::StreamExt::next(&mut copy).await {
            out.extend_from_slice(&chunk.unwrap());
        }
        txn.commit().await.unwrap();
        let streamed: BTreeSet<i64> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        if streamed != got {
            return Err(TestCaseError::fail(format!(
                "definition: {text}\nthe streaming form disagrees with the query\n{}",
                via.query
            )));
        }
        let empty = HashSet::new();
        let want: BTreeSet<i64> = self
            .contacts
            .iter()
            .filter(|c| {
                let d = ContactData {
                    contact: c,
                    events: self.events.get(&c.id).map_or(&[][..], Vec::as_slice),
                    deals: self.deals.get(&c.id).map_or(&[][..], Vec::as_slice),
                    member_of: self.members.get(&c.id).unwrap_or(&empty),
                };
                let held = eval(&checked.pred, &d, now());
                // Explanations derive each node's answer from its
                // children's; the root must agree with evaluation.
                assert_eq!(
                    explain(rule, &checked.pred, &d, now())[0].held,
                    held,
                    "explain disagrees with eval for {text}"
                );
                held
            })
            .map(|c| c.id)
            .collect();
        if got != want {
            let only_sql: Vec<&i64> = got.difference(&want).collect();
            let only_ref: Vec<&i64> = want.difference(&got).collect();
            let example = only_sql
                .first()
                .or(only_ref.first())
                .and_then(|id| self.contacts.iter().find(|c| c.id == **id));
            return Err(TestCaseError::fail(format!(
                "definition: {text}\nSQL: {sql}\nparams: {:?}\nonly in SQL: {only_sql:?}\nonly in reference: {only_ref:?}\nexample contact: {example:#?}\nits events: {:#?}\nits deals: {:#?}",
                ids.params,
                example.and_then(|c| self.events.get(&c.id)),
                example.and_then(|c| self.deals.get(&c.id)),
            )));
        }
        Ok(())
    }
}

/// Every statement segd compiles for `plan` (each `Select`, plain and
/// restricted, in each parameter style) routes to one shard of a cluster
/// distributed by workspace: see `routing`.
fn routes(text: &str, plan: &Plan, ws: WorkspaceId) -> Result<(), TestCaseError> {
    for (sql, ws) in plan.every_statement(ws.0, now()) {
        let v = crate::routing::violations(&sql, &ws, crate::routing::tenants())
            .map_err(TestCaseError::fail)?;
        if !v.is_empty() {
            return Err(TestCaseError::fail(format!(
                "definition: {text}\nnot routable to one shard: {v:#?}\n{sql}"
            )));
        }
    }
    Ok(())
}

// ---- Strategies for valid trees over the fixture schema. ----

fn s(xs: &'static [&'static str]) -> impl Strategy<Value = String> + Clone {
    prop::sample::select(xs).prop_map(String::from)
}

fn cmp(op: Op, values: Vec<Value>) -> Cmp {
    Cmp {
        op,
        values,
        span: None,
    }
}

fn rel(op: Op, amount: i64, unit: Unit) -> Cmp {
    Cmp {
        op,
        values: vec![],
        span: Some(Span { amount, unit }),
    }
}

fn text_cmp(
    pool: &'static [&'static str],
    fragments: &'static [&'static str],
) -> impl Strategy<Value = Cmp> + Clone {
    let one = s(pool).prop_map(Value::String);
    prop_oneof![
        (prop::sample::select(vec![Op::Eq, Op::Neq]), one.clone())
            .prop_map(|(op, v)| cmp(op, vec![v])),
        (
            prop::sample::select(vec![Op::In, Op::NotIn]),
            prop::collection::vec(one, 1..3)
        )
            .prop_map(|(op, v)| cmp(op, v)),
        (
            prop::sample::select(vec![Op::Contains, Op::StartsWith, Op::EndsWith]),
            s(fragments)
        )
            .prop_map(|(op, f)| cmp(op, vec![Value::String(f)])),
        prop::sample::select(vec![Op::IsSet, Op::IsNotSet]).prop_map(|op| cmp(op, vec![])),
    ]
}

fn num_cmp(lo: i32, hi: i32) -> impl Strategy<Value = Cmp> + Clone {
    let n = (lo..hi).prop_map(|x| Value::Number(f64::from(x)));
    prop_oneof![
        (
            prop::sample::select(vec![Op::Eq, Op::Neq, Op::Gt, Op::Gte, Op::Lt, Op::Lte]),
            n.clone()
        )
            .prop_map(|(op, v)| cmp(op, vec![v])),
        (lo..hi, 0..20i32).prop_map(|(a, w)| cmp(
            Op::Between,
            vec![Value::Number(f64::from(a)), Value::Number(f64::from(a + w))]
        )),
        (
            prop::sample::select(vec![Op::In, Op::NotIn]),
            prop::collection::vec(n, 1..4)
        )
            .prop_map(|(op, v)| cmp(op, v)),
        prop::sample::select(vec![Op::IsSet, Op::IsNotSet]).prop_map(|op| cmp(op, vec![])),
    ]
}

fn date_cmp() -> impl Strategy<Value = Cmp> + Clone {
    let d = (-30_000i64..400).prop_map(|off| Value::Date(now().date_naive() + Duration::days(off)));
    prop_oneof![
        (
            prop::sample::select(vec![Op::Eq, Op::Neq, Op::Gt, Op::Gte, Op::Lt, Op::Lte]),
            d.clone()
        )
            .prop_map(|(op, v)| cmp(op, vec![v])),
        (
            prop::sample::select(vec![Op::WithinLast, Op::OlderThan, Op::WithinNext]),
            1i64..300,
            prop::sample::select(vec![Unit::Days, Unit::Weeks, Unit::Months])
        )
            .prop_map(|(op, n, u)| rel(op, n, u)),
        (1i64..60).prop_map(|n| rel(Op::AnniversaryWithin, n, Unit::Days)),
        prop::sample::select(vec![Op::IsSet, Op::IsNotSet]).prop_map(|op| cmp(op, vec![])),
    ]
}

fn time_value() -> impl Strategy<Value = Value> + Clone {
    (-24i64 * 60..24 * 420).prop_map(|h| Value::Time(now() - Duration::hours(h)))
}

fn time_cmp() -> impl Strategy<Value = Cmp> + Clone {
    prop_oneof![
        (
            prop::sample::select(vec![Op::Gt, Op::Gte, Op::Lt, Op::Lte]),
            time_value()
        )
            .prop_map(|(op, v)| cmp(op, vec![v])),
        (
            prop::sample::select(vec![Op::WithinLast, Op::OlderThan, Op::WithinNext]),
            1i64..200,
            prop::sample::select(vec![Unit::Hours, Unit::Days, Unit::Weeks, Unit::Months])
        )
            .prop_map(|(op, n, u)| rel(op, n, u)),
        (1i64..40).prop_map(|n| rel(Op::AnniversaryWithin, n, Unit::Days)),
        prop::sample::select(vec![Op::IsSet, Op::IsNotSet]).prop_map(|op| cmp(op, vec![])),
    ]
}

fn field(
    name: &'static str,
    c: impl Strategy<Value = Cmp> + Clone + 'static,
) -> BoxedStrategy<Rule> {
    c.prop_map(move |cmp| {
        Rule::Field(FieldCond {
            field: name.into(),
            cmp,
        })
    })
    .boxed()
}

fn contact_condition() -> BoxedStrategy<Rule> {
    let set = |name: &'static str, pool: &'static [&'static str]| {
        (
            prop::sample::select(vec![SetMatch::Any, SetMatch::All, SetMatch::None]),
            prop::collection::vec(s(pool), 1..3),
        )
            .prop_map(move |(matching, values)| {
                Rule::Set(SetCond {
                    field: name.into(),
                    matching,
                    values,
                })
            })
            .boxed()
    };
    prop_oneof![
        field("city", text_cmp(CITIES, &["o", "New", "ark", "LIM"])),
        field("country", text_cmp(COUNTRIES, &["U", "e"])),
        field("status", text_cmp(STATUSES, &["re", "_"])),
        field("status_reason", text_cmp(REASONS, &["exp"])),
        field("source_channel", text_cmp(CHANNELS, &["a"])),
        field(
            "email",
            text_cmp(&["c1@x.co", "c2@gmail.co"], &["gmail", "@x.", "c1"])
        ),
        field("lead_score", num_cmp(0, 100)),
        field("age", num_cmp(10, 80)),
        field("birth_date", date_cmp()),
        field("created_at", time_cmp()),
        field("converted_at", time_cmp()),
        field("custom.plan", text_cmp(PLANS, &["r", "p"])),
        field("custom.seats", num_cmp(0, 50)),
        field("custom.renewal", date_cmp()),
        field(
            "custom.trial",
            prop_oneof![
                any::<bool>().prop_map(|b| cmp(Op::Eq, vec![Value::Bool(b)])),
                Just(cmp(Op::IsSet, vec![]))
            ]
        ),
        set("tags", TAGS),
        set("labels", LABELS),
        set("custom.pets", PETS),
        (
            prop::sample::select(Channel::ALL.to_vec()),
            prop::sample::select(SubscriptionStatus::ALL.to_vec())
        )
            .prop_map(|(channel, status)| Rule::Subscription(SubscriptionCond { channel, status })),
        s(&["engaged", "vip list", "snap", "Subscribers"])
            .prop_map(|n| Rule::Segment(SegmentRef::Name(n))),
    ]
    .boxed()
}

fn event_condition() -> BoxedStrategy<Rule> {
    let window = prop_oneof![
        (
            1i64..120,
            prop::sample::select(vec![Unit::Hours, Unit::Days, Unit::Weeks, Unit::Months])
        )
            .prop_map(|(n, u)| Window::Last(Span { amount: n, unit: u })),
        (1i64..120).prop_map(|n| Window::OlderThan(Span {
            amount: n,
            unit: Unit::Days
        })),
        (0i64..3000, 1i64..2000).prop_map(|(a, w)| Window::Between(
            now() - Duration::hours(a + w),
            now() - Duration::hours(a)
        )),
        (0i64..3000).prop_map(|h| Window::Before(now() - Duration::hours(h))),
        (0i64..3000).prop_map(|h| Window::After(now() - Duration::hours(h))),
        s(TYPES).prop_map(Window::SinceLast),
    ];
    let filter = prop_oneof![
        num_cmp(0, 200).prop_map(|cmp| FieldCond {
            field: "value".into(),
            cmp
        }),
        text_cmp(&["USD", "EUR"], &["U"]).prop_map(|cmp| FieldCond {
            field: "currency".into(),
            cmp
        }),
        text_cmp(URLS, &["/pricing", "team", "/B"]).prop_map(|cmp| FieldCond {
            field: "url".into(),
            cmp
        }),
        text_cmp(SKUS, &["-1"]).prop_map(|cmp| FieldCond {
            field: "properties.sku".into(),
            cmp
        }),
        num_cmp(0, 5).prop_map(|cmp| FieldCond {
            field: "properties.qty".into(),
            cmp
        }),
    ];
    let count = num_cmp(0, 6);
    let aggregate = prop_oneof![
        count.clone().prop_map(|cmp| Aggregate {
            func: AggFunc::Count,
            field: None,
            cmp
        }),
        (
            prop::sample::select(vec![AggFunc::Sum, AggFunc::Avg, AggFunc::Min, AggFunc::Max]),
            s(&["value", "properties.qty"]),
            num_cmp(0, 300)
        )
            .prop_map(|(func, f, cmp)| Aggregate {
                func,
                field: Some(f),
                cmp
            }),
        (s(&["properties.sku", "currency", "value"]), count).prop_map(|(f, cmp)| Aggregate {
            func: AggFunc::Distinct,
            field: Some(f),
            cmp
        }),
        (
            prop::sample::select(vec![AggFunc::First, AggFunc::Last]),
            time_cmp()
        )
            .prop_map(|(func, cmp)| Aggregate {
                func,
                field: None,
                cmp
            }),
    ];
    // One type mostly; sometimes any type, or two or three of them.
    let types = prop_oneof![
        6 => s(TYPES).prop_map(EventTypes::one),
        1 => Just(EventTypes::Any),
        2 => prop::collection::vec(s(TYPES), 2..4).prop_map(EventTypes::Of),
    ];
    (
        types,
        prop::option::of(window),
        prop::collection::vec(filter, 0..3),
        prop::option::of(aggregate),
    )
        .prop_map(|(types, window, filters, aggregate)| {
            Rule::Event(EventCond {
                types,
                window,
                filters,
                aggregate,
            })
        })
        .boxed()
}

fn deal_condition() -> BoxedStrategy<Rule> {
    let filter = prop_oneof![
        text_cmp(&["open", "won", "lost"], &["o"]).prop_map(|cmp| FieldCond {
            field: "status".into(),
            cmp
        }),
        text_cmp(STAGES, &["neg"]).prop_map(|cmp| FieldCond {
            field: "stage".into(),
            cmp
        }),
        num_cmp(0, 20_000).prop_map(|cmp| FieldCond {
            field: "value".into(),
            cmp
        }),
        text_cmp(OWNERS, &["a"]).prop_map(|cmp| FieldCond {
            field: "owner".into(),
            cmp
        }),
        time_cmp().prop_map(|cmp| FieldCond {
            field: "closed_at".into(),
            cmp
        }),
    ];
    let aggregate = prop_oneof![
        num_cmp(0, 4).prop_map(|cmp| Aggregate {
            func: AggFunc::Count,
            field: None,
            cmp
        }),
        (
            prop::sample::select(vec![AggFunc::Sum, AggFunc::Max, AggFunc::Avg]),
            num_cmp(0, 30_000)
        )
            .prop_map(|(func, cmp)| Aggregate {
                func,
                field: Some("value".into()),
                cmp
            }),
        num_cmp(0, 4).prop_map(|cmp| Aggregate {
            func: AggFunc::Distinct,
            field: Some("stage".into()),
            cmp
        }),
        time_cmp().prop_map(|cmp| Aggregate {
            func: AggFunc::Last,
            field: None,
            cmp
        }),
    ];
    (
        prop::collection::vec(filter, 0..3),
        prop::option::of(aggregate),
    )
        .prop_map(|(filters, aggregate)| Rule::Deal(DealCond { filters, aggregate }))
        .boxed()
}

/// Two conditions on the same events with their own aggregates, ANDed: at
/// the top level they share one grouped source.
fn same_events_twice() -> BoxedStrategy<Rule> {
    (event_condition(), event_condition())
        .prop_map(|(a, b)| match (a, b) {
            (Rule::Event(a), Rule::Event(b)) => Rule::All(vec![
                Rule::Event(a.clone()),
                Rule::Event(EventCond {
                    aggregate: b.aggregate,
                    ..a
                }),
            ]),
            (a, _) => a,
        })
        .boxed()
}

fn tree() -> impl Strategy<Value = Rule> {
    let leaf = prop_oneof![
        4 => contact_condition(),
        2 => event_condition(),
        1 => deal_condition(),
        1 => same_events_twice(),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Rule::All),
            prop::collection::vec(inner.clone(), 0..4).prop_map(Rule::Any),
            inner.prop_map(|r| Rule::Not(Box::new(r))),
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_sql_agrees_with_the_reference_evaluator() {
    let world = World::build().await;
    assert!(world.contacts.len() >= 70);
    let cases: u32 = std::env::var("SEGD_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let handle = tokio::runtime::Handle::current();
    let sizes = std::sync::Mutex::new(Vec::new());
    let result = tokio::task::block_in_place(|| {
        runner
            .run(&tree(), |rule| {
                handle.block_on(world.compare(&rule))?;
                sizes.lock().unwrap().push(print(&rule).len());
                Ok(())
            })
            .map_err(|e| e.to_string())
    });
    if let Err(e) = result {
        panic!("SQL and the reference evaluator disagree.\n{e}");
    }
    assert!(sizes.lock().unwrap().len() >= cases as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_differential_data_exercises_both_outcomes() {
    // Guards against a vacuous differential test: common conditions select
    // some contacts but not all.
    let world = World::build().await;
    for src in [
        "event(purchase, last 30d).count >= 1",
        "NOT event(purchase)",
        "deal(status = won).sum(value) > 5000",
        "custom.pets HAS_ANY (\"cat\")",
        "age >= 40",
        "segment(\"vip list\")",
        "segment(\"snap\")",
        "event(cart_abandoned, last 60d) AND NOT event(purchase, since cart_abandoned)",
        "birth_date ANNIVERSARY_WITHIN 14d",
    ] {
        let rule = segd::segment::parse::parse(src).unwrap();
        let client = world.app.state.pool.get().await.unwrap();
        let schema = segd::db::definitions::schema(&**client, world.ws)
            .await
            .unwrap();
        let segments = from_scratch(segd::service::segments::infos(
            &segd::db::segments::all(&**client, world.ws).await.unwrap(),
        ));
        let checked = check(
            &rule,
            &Catalog {
                schema: &schema,
                segments: &segments,
                current: None,
            },
        )
        .unwrap();
        let c = lower(&checked.pred, world.ws, now()).render(&Query::of(Select::Ids));
        let n = client.query_typed(&c.sql, &c.typed()).await.unwrap().len();
        assert!(
            n > 0 && n < world.contacts.len(),
            "{src} selects {n} of {}",
            world.contacts.len()
        );
        drop(client);
        world.compare(&rule).await.unwrap();
    }
}
