//! Segment actions (lifecycle rules, purchase-frequency statuses, cycles
//! refused at save, the cascade limit), the contact history naming why, and
//! a segment's history over time.

use std::time::{Duration, Instant};

use segd::api::Limits;
use segd::proto as pb;
use tonic::Code;

use crate::helpers::*;

/// A contact `email` with `labels` and `status`; returns its id.
async fn contact(app: &TestApp, ws: &str, email: &str, labels: &[&str], status: &str) -> i64 {
    let c = pb::Contact {
        email: email.into(),
        labels: labels.iter().map(|l| (*l).to_string()).collect(),
        status: status.into(),
        ..Default::default()
    };
    create_contact_id(app, ws, c).await
}

/// A purchase by contact `id`, `back` days before the app's clock.
async fn buy(app: &TestApp, ws: &str, id: i64, back: i64) {
    let e = pb::Event {
        contact: Some(pb::ContactRef {
            key: Some(pb::contact_ref::Key::Id(id)),
        }),
        r#type: "purchase".into(),
        occurred_at: Some(segd::api::convert::ts(
            app.state.clock.now() - chrono::Duration::days(back),
        )),
        value: Some(20.0),
        ..Default::default()
    };
    record_all(&mut app.contacts().await, ws, vec![vec![e]])
        .await
        .unwrap();
}

async fn get(app: &TestApp, ws: &str, id: i64) -> pb::Contact {
    app.contacts()
        .await
        .get_contact(req(
            ws,
            pb::GetContactRequest {
                contact: Some(pb::ContactRef {
                    key: Some(pb::contact_ref::Key::Id(id)),
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap()
}

/// Segment ids by name.
async fn segment_id(app: &TestApp, name: &str) -> i64 {
    app.db()
        .await
        .query_one("SELECT id FROM segments WHERE name = $1", &[&name])
        .await
        .unwrap()
        .get(0)
}

async fn changes(app: &TestApp, ws: &str, id: i64, field: &str) -> Vec<pb::ContactChange> {
    app.contacts()
        .await
        .list_contact_changes(req(
            ws,
            pb::ListContactChangesRequest {
                contact: Some(pb::ContactRef {
                    key: Some(pb::contact_ref::Key::Id(id)),
                }),
                field: field.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .changes
}

fn strings(v: &Option<prost_types::Value>) -> Vec<String> {
    match v.as_ref().and_then(|v| v.kind.as_ref()) {
        Some(prost_types::value::Kind::ListValue(l)) => l
            .values
            .iter()
            .filter_map(|x| match &x.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => vec![],
    }
}

#[tokio::test]
async fn a_purchase_makes_a_lead_a_customer_and_the_history_says_why() {
    let app = TestApp::spawn().await;
    let ws = "lifecycle";
    let ann = contact(&app, ws, "ann@example.com", &["lead"], "").await;
    app.drained().await;
    let (leads, customers) = (1, 3);
    let rule = segment_id(&app, "Rule: a purchase makes a customer").await;
    let mut w = app
        .query()
        .await
        .watch_membership(req(
            ws,
            pb::WatchMembershipRequest {
                segment_ids: vec![],
                start: Some(pb::watch_membership_request::Start::Now(true)),
            },
        ))
        .await
        .unwrap()
        .into_inner();

    let started = Instant::now();
    buy(&app, ws, ann, 0).await;
    // The server's own maintainer applies it: the rule's entry, its action's
    // write, then Leads and Customers.
    let mut q = app.query().await;
    let check = pb::CheckMembershipRequest {
        contact: Some(pb::ContactRef {
            key: Some(pb::contact_ref::Key::Id(ann)),
        }),
        segment_ids: vec![leads, customers],
        explain: false,
    };
    let mut done = None;
    while started.elapsed() < Duration::from_secs(30) {
        let r = q
            .check_membership(req(ws, check.clone()))
            .await
            .unwrap()
            .into_inner();
        let member = |id| r.segments.iter().any(|s| s.segment_id == id && s.member);
        if member(customers) && !member(leads) {
            done = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = done.expect("the lead became a customer");
    println!("a purchase made the lead a customer in {took:?}");

    // The watcher sees it: the rule entered, then Leads left and Customers
    // entered, caused by the rule's action.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(30), w.message())
            .await
            .expect("changes arrive")
            .unwrap()
            .unwrap();
        seen.extend(
            m.changes
                .into_iter()
                .filter(|c| c.contact_id == ann)
                .map(|c| (c.segment_id, c.entered, c.cause)),
        );
    }
    let by_rule = format!("segment {rule} entered");
    // (The one-time buyer status rule enters too; both actions are one
    // batch of writes, named together.)
    let caused = |id: i64, entered: bool| {
        seen.iter()
            .any(|(s, e, why)| *s == id && *e == entered && why.split(',').any(|w| w == by_rule))
    };
    assert!(
        seen.contains(&(rule, true, "RecordEvents".into())),
        "{seen:?}"
    );
    assert!(caused(leads, false), "{seen:?}");
    assert!(caused(customers, true), "{seen:?}");

    // The contact's history names the cause.
    let labels = changes(&app, ws, ann, "labels").await;
    assert_eq!(labels.len(), 1, "{labels:?}");
    assert_eq!(labels[0].cause, by_rule);
    assert_eq!(strings(&labels[0].old_value), ["lead"]);
    assert_eq!(strings(&labels[0].new_value), ["customer"]);
    // A caller's own write is named by its RPC.
    app.contacts()
        .await
        .update_contact(req(
            ws,
            pb::UpdateContactRequest {
                contact: Some(pb::Contact {
                    id: ann,
                    city: "Leeds".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["city".into()],
                }),
            },
        ))
        .await
        .unwrap();
    let city = changes(&app, ws, ann, "city").await;
    assert_eq!(city.len(), 1);
    assert_eq!(city[0].cause, "UpdateContact");
    assert_eq!(get(&app, ws, ann).await.labels, ["customer"]);
}

#[tokio::test]
async fn purchase_frequency_statuses_follow_purchases_and_the_clock_both_ways() {
    let app = TestApp::spawn().await;
    let ws = "frequency";
    let bob = contact(&app, ws, "bob@example.com", &[], "").await;
    let kim = contact(&app, ws, "kim@example.com", &[], "in_progress").await;
    app.drained().await;
    let status = |c: pb::Contact| c.status;

    buy(&app, ws, bob, 10).await;
    buy(&app, ws, kim, 10).await;
    app.drained().await;
    assert_eq!(status(get(&app, ws, bob).await), "one_time");
    // A manual status stays.
    assert_eq!(status(get(&app, ws, kim).await), "in_progress");

    buy(&app, ws, bob, 5).await;
    app.drained().await;
    assert_eq!(status(get(&app, ws, bob).await), "occasional");

    buy(&app, ws, bob, 1).await;
    app.drained().await;
    assert_eq!(status(get(&app, ws, bob).await), "regular");

    // 90 days on, the three purchases are out of the window: back down.
    app.state.clock.advance(chrono::Duration::days(91));
    app.drained().await;
    let b = get(&app, ws, bob).await;
    assert_eq!(
        (b.status.as_str(), b.status_reason.as_str()),
        ("occasional", "purchase frequency")
    );

    // And up again with three fresh purchases.
    for back in [3, 2, 1] {
        buy(&app, ws, bob, back).await;
    }
    app.drained().await;
    assert_eq!(status(get(&app, ws, bob).await), "regular");
    let history: Vec<String> = changes(&app, ws, bob, "status")
        .await
        .iter()
        .map(
            |c| match c.new_value.as_ref().and_then(|v| v.kind.clone()) {
                Some(prost_types::value::Kind::StringValue(s)) => s,
                _ => String::new(),
            },
        )
        .collect();
    assert_eq!(
        history,
        ["one_time", "occasional", "regular", "occasional", "regular"]
    );
}

/// The BadRequest violations of a status, `field: description` each.
fn described(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

/// Creates live segment `name` with `actions`.
async fn with_actions(
    app: &TestApp,
    ws: &str,
    name: &str,
    text: &str,
    actions: Vec<pb::SegmentAction>,
) -> Result<pb::Segment, tonic::Status> {
    app.segments()
        .await
        .create_segment(req(
            ws,
            pb::CreateSegmentRequest {
                segment: Some(pb::Segment {
                    name: name.into(),
                    definition: filter(text),
                    live: Some(true),
                    actions,
                    ..Default::default()
                }),
            },
        ))
        .await
        .map(|r| r.into_inner().segment.unwrap())
}

fn on_enter(f: impl FnOnce(&mut pb::SegmentAction)) -> Vec<pb::SegmentAction> {
    let mut a = pb::SegmentAction {
        trigger: pb::ActionTrigger::Enter as i32,
        ..Default::default()
    };
    f(&mut a);
    vec![a]
}

#[tokio::test]
async fn actions_that_could_fire_themselves_again_are_refused_naming_the_cycle() {
    let app = TestApp::spawn().await;
    let ws = "cycles";
    // Itself: tagging decides whether it tags.
    let err = with_actions(
        &app,
        ws,
        "untagged",
        "NOT tags:x",
        on_enter(|a| a.add_tags = vec!["x".into()]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        described(&err).contains(r#""untagged" -> "untagged""#),
        "{err:?}"
    );
    // Two segments: staff get a tag, the tag makes staff.
    with_actions(
        &app,
        ws,
        "staff tagged",
        "label:staff",
        on_enter(|a| a.add_tags = vec!["t".into()]),
    )
    .await
    .unwrap();
    let err = with_actions(
        &app,
        ws,
        "tag makes staff",
        "tags:t",
        on_enter(|a| a.add_labels = vec!["staff".into()]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let v = described(&err);
    assert!(
        v.contains(r#""staff tagged" -> "tag makes staff" -> "staff tagged""#)
            || v.contains(r#""tag makes staff" -> "staff tagged" -> "tag makes staff""#),
        "{v}"
    );
    // Nothing of the refused saves stayed.
    let n: i64 = app
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM segments WHERE name IN ('untagged', 'tag makes staff')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // Bad actions are field violations.
    let err = with_actions(
        &app,
        ws,
        "bad",
        "tags:y",
        on_enter(|a| a.add_labels = vec!["nope".into()]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        violations(&err)
            .iter()
            .any(|v| v.starts_with("segment.actions[0].add_labels[0]")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_cascade_of_actions_stops_at_the_depth_limit_and_says_so() {
    let mut limits = Limits::default();
    limits.live.max_action_depth = 2;
    let app = TestApp::spawn_with(limits).await;
    let ws = "cascade";
    let mut c = app.contacts().await;
    define_field(&mut c, ws, "tier", pb::CustomFieldType::String).await;
    // tags -> label -> custom field -> status: no cycle, three deep.
    with_actions(
        &app,
        ws,
        "a",
        "tags:a",
        on_enter(|a| a.add_labels = vec!["member".into()]),
    )
    .await
    .unwrap();
    with_actions(
        &app,
        ws,
        "b",
        "label:member",
        on_enter(|a| {
            a.set_fields = [(
                "tier".to_string(),
                pb::CustomValue {
                    kind: Some(pb::custom_value::Kind::StringValue("gold".into())),
                },
            )]
            .into();
        }),
    )
    .await
    .unwrap();
    let third = with_actions(
        &app,
        ws,
        "c",
        r#"custom.tier = "gold""#,
        on_enter(|a| {
            a.set_status = "deep".into();
        }),
    )
    .await
    .unwrap();
    app.drained().await;
    let id = c
        .create_contact(req(
            ws,
            pb::CreateContactRequest {
                contact: Some(pb::Contact {
                    email: "deep@example.com".into(),
                    tags: vec!["a".into()],
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap()
        .id;
    app.drained().await;
    let got = get(&app, ws, id).await;
    assert_eq!(got.labels, ["member"], "depth 1 ran");
    assert!(got.custom_fields.contains_key("tier"), "depth 2 ran");
    assert_eq!(got.status, "", "depth 3 did not");
    let s = app
        .segments()
        .await
        .get_segment(req(
            ws,
            pb::GetSegmentRequest {
                segment: Some(pb::SegmentReference {
                    r#ref: Some(pb::segment_reference::Ref::Id(third.id)),
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap();
    let status = s.live_status.unwrap();
    assert!(status.last_error.contains("depth limit (2)"), "{status:?}");
    assert_eq!(status.size, 1, "the segment itself is maintained");
}

async fn history(
    app: &TestApp,
    ws: &str,
    segment: i64,
    from: chrono::DateTime<chrono::Utc>,
    hours: i64,
    resolution: pb::HistoryResolution,
) -> Vec<(i64, i64, i64)> {
    app.segments()
        .await
        .get_segment_history(req(
            ws,
            pb::GetSegmentHistoryRequest {
                segment_id: segment,
                start_time: Some(segd::api::convert::ts(from)),
                end_time: Some(segd::api::convert::ts(
                    from + chrono::Duration::hours(hours),
                )),
                resolution: resolution as i32,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .buckets
        .iter()
        .map(|b| (b.size, b.entered, b.exited))
        .collect()
}

#[tokio::test]
async fn a_segments_history_outlives_its_change_feed() {
    let app = TestApp::spawn().await;
    let ws = "history";
    let vip = with_actions(&app, ws, "vip", "tags:vip", vec![])
        .await
        .unwrap()
        .id;
    app.drained().await;
    let hour = |t: chrono::DateTime<chrono::Utc>| {
        use chrono::{DurationRound, TimeDelta};
        t.duration_trunc(TimeDelta::hours(1)).unwrap()
    };
    let t0 = hour(app.state.clock.now());
    // Hour 0: three enter. Hour 2: one leaves and one enters.
    tag_emails(
        &app,
        ws,
        &[("a@x.co", "vip"), ("b@x.co", "vip"), ("c@x.co", "vip")],
    )
    .await;
    app.state.clock.advance(chrono::Duration::hours(2));
    tag_emails(&app, ws, &[("a@x.co", "plain"), ("d@x.co", "vip")]).await;
    let want = vec![(0, 0, 0), (3, 3, 0), (3, 0, 0), (3, 1, 1), (3, 0, 0)];
    let hourly = |app| {
        history(
            app,
            ws,
            vip,
            t0 - chrono::Duration::hours(1),
            5,
            pb::HistoryResolution::Hour,
        )
    };
    assert_eq!(hourly(&app).await, want);
    // By day: the same totals in the day's bucket (or two, across midnight).
    let daily = history(&app, ws, vip, t0, 24, pb::HistoryResolution::Day).await;
    let (entered, exited): (i64, i64) = daily.iter().fold((0, 0), |(e, x), b| (e + b.1, x + b.2));
    assert_eq!((entered, exited, daily.last().unwrap().0), (4, 1, 3));

    // The feed trimmed to nothing: the history stays.
    app.db()
        .await
        .execute("DELETE FROM membership_changes", &[])
        .await
        .unwrap();
    assert_eq!(hourly(&app).await, want);

    // Bad requests are field violations.
    let err = app
        .segments()
        .await
        .get_segment_history(req(
            ws,
            pb::GetSegmentHistoryRequest {
                segment_id: vip,
                start_time: Some(segd::api::convert::ts(t0)),
                end_time: Some(segd::api::convert::ts(t0 + chrono::Duration::days(3650))),
                resolution: pb::HistoryResolution::Hour as i32,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violations(&err), ["end_time"]);
}

#[tokio::test]
async fn the_history_names_each_changed_column_and_custom_key() {
    let app = TestApp::spawn().await;
    let ws = "columns";
    let mut c = app.contacts().await;
    define_field(&mut c, ws, "tier", pb::CustomFieldType::String).await;
    define_field(&mut c, ws, "seats", pb::CustomFieldType::Number).await;
    let ann = contact(&app, ws, "ann@example.com", &[], "").await;
    let custom = |pairs: Vec<(&str, pb::custom_value::Kind)>| {
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), pb::CustomValue { kind: Some(v) }))
            .collect()
    };
    use pb::custom_value::Kind;
    let update = |contact: pb::Contact, paths: &[&str]| pb::UpdateContactRequest {
        contact: Some(contact),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| (*p).to_string()).collect(),
        }),
    };
    for (tier, seats) in [("gold", 3.0), ("gold", 5.0)] {
        let contact = pb::Contact {
            id: ann,
            lead_score: Some(42.0),
            birth_date: "1990-02-03".into(),
            custom_fields: custom(vec![
                ("tier", Kind::StringValue(tier.into())),
                ("seats", Kind::NumberValue(seats)),
            ]),
            ..Default::default()
        };
        c.update_contact(req(
            ws,
            update(contact, &["lead_score", "birth_date", "custom_fields"]),
        ))
        .await
        .unwrap();
    }
    let all = changes(&app, ws, ann, "").await;
    let fields: Vec<(&str, String)> = all
        .iter()
        .map(|ch| {
            let v = ch.new_value.as_ref().map(|v| format!("{:?}", v.kind));
            (ch.field.as_str(), v.unwrap_or_default())
        })
        .collect();
    // The first update sets four fields; the second changes one key only.
    let names: Vec<&str> = fields.iter().map(|(f, _)| *f).collect();
    let mut first = names[..4].to_vec();
    first.sort_unstable();
    assert_eq!(
        first,
        ["birth_date", "custom.seats", "custom.tier", "lead_score"],
        "{all:?}"
    );
    assert_eq!(names[4..], ["custom.seats"], "{all:?}");
    assert!(fields[4].1.contains('5'), "{all:?}");
    assert!(all.iter().all(|ch| ch.cause == "UpdateContact"));

    // Every contact column but the bookkeeping ones is compared by the
    // trigger (a new column must be added to it).
    let db = app.db().await;
    let def: String = db
        .query_one(
            "SELECT pg_get_functiondef('contact_changes_logged'::regproc)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let columns = db
        .query(
            "SELECT attname::text FROM pg_attribute
             WHERE attrelid = 'contacts'::regclass AND attnum > 0 AND NOT attisdropped",
            &[],
        )
        .await
        .unwrap();
    for r in columns {
        let col: String = r.get(0);
        if ["workspace_id", "id", "version", "updated_at", "attrs"].contains(&col.as_str()) {
            continue;
        }
        assert!(
            def.contains(&format!("o.{col} IS DISTINCT FROM n.{col}")),
            "the history trigger does not compare {col}"
        );
    }
}
