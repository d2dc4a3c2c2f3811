//! Live segments: after any sequence of writes, once the queue drains, each
//! live segment's stored membership equals a from-scratch evaluation of its
//! definition, and replaying the change feed from its start reproduces it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use prost_types::FieldMask;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use segd::proto::{self as pb, query_service_client::QueryServiceClient};
use tonic::transport::Channel;

use crate::helpers::{
    TestApp, define_field, evaluated, filter, import_all, named, record_all, req,
};

/// Live segments shaped like the seeds' examples: columns, tags, custom
/// fields, subscriptions, labels, events with windows and "did not", any
/// event, deals, and references to live and static segments.
const SEGMENTS: &[(&str, &str)] = &[
    ("german", r#"country = "DE""#),
    ("vip", "tags:vip"),
    ("pro", r#"custom.plan = "pro""#),
    ("subscribed", "subscription(email, subscribed)"),
    ("buyers", "event(purchase)"),
    ("repeat buyers", "event(purchase, last 90d).count >= 2"),
    (
        "cart, no purchase",
        "event(cart_abandoned, last 7d) AND NOT event(purchase, last 7d)",
    ),
    ("inactive", "NOT event(*, last 30d)"),
    ("openers", "event(email_open|email_click, last 30d)"),
    ("open deals", "deal(status = open)"),
    ("big won", "deal(status = won).sum(value) > 1000"),
    ("german vip", r#"segment("german") AND segment("vip")"#),
    ("listed buyers", r#"segment("list") AND segment("buyers")"#),
    ("leads", r#"label:lead AND NOT segment("buyers")"#),
];

const COUNTRIES: &[&str] = &["DE", "FR", "US"];
const TYPES: &[&str] = &[
    "purchase",
    "cart_abandoned",
    "email_open",
    "email_click",
    "page_view",
];

fn pick<'a>(rng: &mut StdRng, xs: &[&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

fn contact(rng: &mut StdRng, i: usize) -> pb::Contact {
    let mut c = pb::Contact {
        external_id: format!("x{i}"),
        country: pick(rng, COUNTRIES).into(),
        ..Default::default()
    };
    if rng.random_bool(0.4) {
        c.tags = vec!["vip".into()];
    }
    if rng.random_bool(0.5) {
        c.labels = vec!["lead".into()];
    }
    if rng.random_bool(0.5) {
        c.subscriptions = vec![pb::Subscription {
            channel: pb::SubscriptionChannel::Email as i32,
            status: pb::SubscriptionStatus::Subscribed as i32,
            ..Default::default()
        }];
    }
    c
}

fn event(rng: &mut StdRng, contact: i64) -> pb::Event {
    let ago = chrono::Duration::hours(rng.random_range(0..24 * 100));
    pb::Event {
        contact: Some(pb::ContactRef {
            key: Some(pb::contact_ref::Key::Id(contact)),
        }),
        r#type: pick(rng, TYPES).into(),
        occurred_at: Some(segd::api::convert::ts(Utc::now() - ago)),
        value: Some(f64::from(rng.random_range(1..500))),
        ..Default::default()
    }
}

async fn ids(
    q: &mut QueryServiceClient<Channel>,
    ws: &str,
    s: Option<pb::SegmentSelector>,
) -> BTreeSet<i64> {
    let r = pb::StreamMembersRequest {
        selector: s,
        ..Default::default()
    };
    let mut s = q.stream_members(req(ws, r)).await.unwrap().into_inner();
    let mut out = BTreeSet::new();
    while let Some(m) = s.next().await {
        out.extend(m.unwrap().ids);
    }
    out
}

/// Every live segment's stored members equal its from-scratch members, and
/// the feed, replayed from offset 1 without gaps, gives the stored members.
pub(crate) async fn assert_exact(app: &TestApp, ws: &str, names: &[&str]) {
    app.drained().await;
    let mut q = app.query().await;
    let db = app.db().await;
    let mut replay: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
    let rows = db
        .query(
            "SELECT \"offset\", segment_id, contact_id, entered FROM membership_changes ORDER BY \"offset\"",
            &[],
        )
        .await
        .unwrap();
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(
            r.get::<_, i64>(0),
            i as i64 + 1,
            "feed offsets have no gaps"
        );
        let set = replay.entry(r.get(1)).or_default();
        let (c, entered): (i64, bool) = (r.get(2), r.get(3));
        assert_eq!(
            set.contains(&c),
            !entered,
            "an entry follows an exit and the other way round"
        );
        if entered {
            set.insert(c);
        } else {
            set.remove(&c);
        }
    }
    for name in names {
        let stored = ids(&mut q, ws, named(name)).await;
        let scratch = ids(&mut q, ws, evaluated(name)).await;
        assert_eq!(
            stored, scratch,
            "segment {name:?}: stored against from scratch"
        );
        let id: i64 = db
            .query_one("SELECT id FROM segments WHERE name = $1", &[name])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            replay.get(&id).cloned().unwrap_or_default(),
            stored,
            "segment {name:?}: the feed replays to the stored members"
        );
        let count = q
            .count_members(req(
                ws,
                pb::CountMembersRequest {
                    selector: named(name),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(
            count.from_live,
            "{name:?} is counted from its stored members"
        );
        assert_eq!(count.count, stored.len() as i64);
    }
}

#[tokio::test]
async fn live_segments_equal_from_scratch_evaluation_after_random_writes() {
    let app = TestApp::spawn().await;
    let ws = "live";
    let mut c = app.contacts().await;
    let mut s = app.segments().await;
    define_field(&mut c, ws, "plan", pb::CustomFieldType::String).await;
    s.create_segment(req(
        ws,
        pb::CreateSegmentRequest {
            segment: Some(pb::Segment {
                name: "list".into(),
                kind: pb::SegmentKind::Static as i32,
                ..Default::default()
            }),
        },
    ))
    .await
    .unwrap();
    for (name, text) in SEGMENTS {
        s.create_segment(req(
            ws,
            pb::CreateSegmentRequest {
                segment: Some(pb::Segment {
                    name: (*name).into(),
                    definition: filter(text),
                    live: Some(true),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
    let names: Vec<&str> = SEGMENTS.iter().map(|(n, _)| *n).collect();
    let mut rng = StdRng::seed_from_u64(9);
    let seed: Vec<pb::Contact> = (0..60).map(|i| contact(&mut rng, i)).collect();
    let imported = import_all(&mut c, ws, vec![seed]).await.unwrap();
    let mut people: Vec<i64> = imported.results.iter().map(|r| r.contact_id).collect();
    let events: Vec<pb::Event> = (0..150)
        .map(|_| {
            let who = people[rng.random_range(0..people.len())];
            event(&mut rng, who)
        })
        .collect();
    record_all(&mut c, ws, vec![events]).await.unwrap();
    assert_exact(&app, ws, &names).await;

    // Random writes of every kind, checked after each round.
    let mut next = 1000;
    for round in 0..3 {
        for _ in 0..40 {
            let who = people[rng.random_range(0..people.len())];
            match rng.random_range(0..11) {
                0..=2 => {
                    let events = (0..rng.random_range(1..6))
                        .map(|_| event(&mut rng, who))
                        .collect();
                    record_all(&mut c, ws, vec![events]).await.unwrap();
                }
                3 | 4 => {
                    let p = pb::Contact {
                        id: who,
                        country: pick(&mut rng, COUNTRIES).into(),
                        tags: if rng.random_bool(0.5) {
                            vec!["vip".into()]
                        } else {
                            vec![]
                        },
                        custom_fields: [(
                            "plan".to_string(),
                            pb::CustomValue {
                                kind: Some(pb::custom_value::Kind::StringValue(
                                    pick(&mut rng, &["pro", "free"]).into(),
                                )),
                            },
                        )]
                        .into(),
                        ..Default::default()
                    };
                    let paths = ["country", "tags", "custom_fields.plan"];
                    c.update_contact(req(
                        ws,
                        pb::UpdateContactRequest {
                            contact: Some(p),
                            update_mask: Some(FieldMask {
                                paths: paths.iter().map(|s| s.to_string()).collect(),
                            }),
                        },
                    ))
                    .await
                    .unwrap();
                }
                5 => {
                    let status = pick(&mut rng, &["open", "won", "lost"]);
                    let status = match status {
                        "open" => pb::DealStatus::Open,
                        "won" => pb::DealStatus::Won,
                        _ => pb::DealStatus::Lost,
                    };
                    c.upsert_deal(req(
                        ws,
                        pb::UpsertDealRequest {
                            deal: Some(pb::Deal {
                                external_id: format!("d{}", rng.random_range(0..30)),
                                contact: Some(pb::ContactRef {
                                    key: Some(pb::contact_ref::Key::Id(who)),
                                }),
                                name: "deal".into(),
                                status: status as i32,
                                value: f64::from(rng.random_range(100..900)),
                                ..Default::default()
                            }),
                        },
                    ))
                    .await
                    .unwrap();
                }
                6 => {
                    next += 1;
                    let created = c
                        .create_contact(req(
                            ws,
                            pb::CreateContactRequest {
                                contact: Some(contact(&mut rng, next)),
                            },
                        ))
                        .await
                        .unwrap()
                        .into_inner()
                        .contact
                        .unwrap();
                    people.push(created.id);
                }
                7 if people.len() > 20 => {
                    people.retain(|p| *p != who);
                    c.delete_contact(req(
                        ws,
                        pb::DeleteContactRequest {
                            id: who,
                            ..Default::default()
                        },
                    ))
                    .await
                    .unwrap();
                }
                8 if people.len() > 20 => {
                    let dup = people[rng.random_range(0..people.len())];
                    if dup != who {
                        people.retain(|p| *p != dup);
                        c.merge_contacts(req(
                            ws,
                            pb::MergeContactsRequest {
                                primary_id: who,
                                duplicate_ids: vec![dup],
                            },
                        ))
                        .await
                        .unwrap();
                    }
                }
                9 => {
                    // Re-imported by external id: an update of every field.
                    let i = rng.random_range(0..60);
                    let again = contact(&mut rng, i);
                    let r = import_all(&mut c, ws, vec![vec![again]]).await.unwrap();
                    let id = r.results[0].contact_id;
                    if !people.contains(&id) {
                        people.push(id);
                    }
                }
                _ => {
                    let list: i64 = app
                        .db()
                        .await
                        .query_one("SELECT id FROM segments WHERE name = 'list'", &[])
                        .await
                        .unwrap()
                        .get(0);
                    if rng.random_bool(0.7) {
                        s.add_segment_members(req(
                            ws,
                            pb::AddSegmentMembersRequest {
                                segment_id: list,
                                contact_ids: vec![who],
                            },
                        ))
                        .await
                        .unwrap();
                    } else {
                        s.remove_segment_members(req(
                            ws,
                            pb::RemoveSegmentMembersRequest {
                                segment_id: list,
                                contact_ids: vec![who],
                            },
                        ))
                        .await
                        .unwrap();
                    }
                }
            }
        }
        assert_exact(&app, ws, &names).await;
        // Redefining a live segment rebuilds it and what reads it.
        if round == 1 {
            let german: i64 = app
                .db()
                .await
                .query_one("SELECT id FROM segments WHERE name = 'german'", &[])
                .await
                .unwrap()
                .get(0);
            s.update_segment(req(
                ws,
                pb::UpdateSegmentRequest {
                    segment: Some(pb::Segment {
                        id: german,
                        definition: filter(r#"country IN ("DE", "FR")"#),
                        ..Default::default()
                    }),
                    update_mask: Some(FieldMask {
                        paths: vec!["definition".into()],
                    }),
                },
            ))
            .await
            .unwrap();
        }
    }
}

#[tokio::test]
async fn a_purchase_leaves_its_window_with_no_write() {
    let mut limits = segd::api::Limits::default();
    limits.live.tick = Duration::from_millis(500);
    let app = TestApp::spawn_with(limits).await;
    let ws = "clock";
    let mut c = app.contacts().await;
    let mut s = app.segments().await;
    s.create_segment(req(
        ws,
        pb::CreateSegmentRequest {
            segment: Some(pb::Segment {
                name: "recent buyers".into(),
                definition: filter("event(purchase, last 30d)"),
                live: Some(true),
                ..Default::default()
            }),
        },
    ))
    .await
    .unwrap();
    let imported = import_all(
        &mut c,
        ws,
        vec![vec![pb::Contact {
            external_id: "a".into(),
            ..Default::default()
        }]],
    )
    .await
    .unwrap();
    let who = imported.results[0].contact_id;
    // Bought 30 days ago less 3 seconds: a member for 3 more seconds.
    let at = Utc::now() - chrono::Duration::days(30) + chrono::Duration::seconds(3);
    let purchase = pb::Event {
        contact: Some(pb::ContactRef {
            key: Some(pb::contact_ref::Key::Id(who)),
        }),
        r#type: "purchase".into(),
        occurred_at: Some(segd::api::convert::ts(at)),
        ..Default::default()
    };
    record_all(&mut c, ws, vec![vec![purchase]]).await.unwrap();
    let mut q = app.query().await;
    let mut members = BTreeSet::new();
    for _ in 0..50 {
        members = ids(&mut q, ws, named("recent buyers")).await;
        if !members.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        members,
        BTreeSet::from([who]),
        "a member while the purchase is recent"
    );
    // No more writes: the clock alone takes the contact out.
    let mut left = false;
    for _ in 0..300 {
        if ids(&mut q, ws, named("recent buyers")).await.is_empty() {
            left = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        left,
        "the contact left within 30 s of its purchase leaving the window"
    );
    let cause: String = app
        .db()
        .await
        .query_one(
            "SELECT cause FROM membership_changes WHERE NOT entered ORDER BY \"offset\" DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cause, "clock");
}

pub(crate) async fn create_live(app: &TestApp, ws: &str, name: &str, text: &str) -> i64 {
    app.segments()
        .await
        .create_segment(req(
            ws,
            pb::CreateSegmentRequest {
                segment: Some(pb::Segment {
                    name: name.into(),
                    definition: filter(text),
                    live: Some(true),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap()
        .id
}

fn watch_req(
    segment: i64,
    start: pb::watch_membership_request::Start,
) -> pb::WatchMembershipRequest {
    pb::WatchMembershipRequest {
        segment_ids: vec![segment],
        start: Some(start),
    }
}

/// Tags contacts `ids` with `tag` (or clears their tags) by re-import.
async fn tag(
    c: &mut segd::proto::contact_service_client::ContactServiceClient<Channel>,
    ws: &str,
    keys: std::ops::Range<usize>,
    tag: Option<&str>,
) {
    let rows = keys
        .map(|i| pb::Contact {
            external_id: format!("x{i}"),
            tags: tag.map(|t| vec![t.to_string()]).unwrap_or_default(),
            ..Default::default()
        })
        .collect();
    import_all(c, ws, vec![rows]).await.unwrap();
}

#[tokio::test]
async fn a_watcher_gets_a_snapshot_then_every_change_and_resumes_without_loss() {
    use pb::watch_membership_request::Start;
    let app = TestApp::spawn().await;
    let ws = "feed";
    let mut c = app.contacts().await;
    let vip = create_live(&app, ws, "vip", "tags:vip").await;
    tag(&mut c, ws, 0..300, Some("vip")).await;
    app.drained().await;

    // Snapshot first: the 300 members, then changes after exactly them.
    let mut q = app.query().await;
    let mut w = q
        .watch_membership(req(ws, watch_req(vip, Start::SnapshotFirst(true))))
        .await
        .unwrap()
        .into_inner();
    let mut members = BTreeSet::new();
    let mut offset;
    loop {
        let m = w.message().await.unwrap().unwrap();
        let s = m.snapshot.unwrap();
        members.extend(s.contact_ids);
        offset = m.offset;
        if m.snapshot_complete {
            break;
        }
    }
    assert_eq!(members.len(), 300);

    // Writes continue while the watcher reads; it is killed half way and
    // resumes from the last offset it processed.
    let writer = {
        let mut c = app.contacts().await;
        tokio::spawn(async move {
            // Over 10,000 changes, none of which a later write undoes
            // (the feed reports membership as each refresh finds it, so a
            // contact in and out again between two refreshes is no change):
            // the first 300 leave, then 26 rounds of 400 new contacts enter.
            tag(&mut c, "feed", 0..300, Some("plain")).await;
            for round in 0..26 {
                let (from, to) = (300 + round * 400, 700 + round * 400);
                tag(&mut c, "feed", from..to, Some("vip")).await;
            }
        })
    };
    let mut seen = 0;
    'first: while let Some(m) = w.message().await.unwrap() {
        for ch in m.changes {
            assert_eq!(
                ch.offset,
                offset + 1,
                "offsets arrive in order without gaps"
            );
            offset = ch.offset;
            if ch.entered {
                assert!(members.insert(ch.contact_id), "enters once");
            } else {
                assert!(members.remove(&ch.contact_id), "leaves once");
            }
            seen += 1;
            if seen == 5_000 {
                break 'first;
            }
        }
    }
    drop(w);
    writer.await.unwrap();
    app.drained().await;
    let (last,): (i64,) = {
        let row = app
            .db()
            .await
            .query_one("SELECT last FROM feed_offsets", &[])
            .await
            .unwrap();
        (row.get(0),)
    };
    assert_eq!(last, 300 + 300 + 26 * 400, "every change is in the feed");
    let mut w = q
        .watch_membership(req(ws, watch_req(vip, Start::AfterOffset(offset))))
        .await
        .unwrap()
        .into_inner();
    while offset < last {
        let m = w.message().await.unwrap().unwrap();
        for ch in m.changes {
            assert_eq!(
                ch.offset,
                offset + 1,
                "resumed right after the last offset processed"
            );
            offset = ch.offset;
            if ch.entered {
                assert!(members.insert(ch.contact_id));
            } else {
                assert!(members.remove(&ch.contact_id));
            }
        }
    }
    let stored = ids(&mut q, ws, named("vip")).await;
    assert_eq!(
        members, stored,
        "snapshot plus changes give the stored members"
    );
    assert_eq!(stored, ids(&mut q, ws, evaluated("vip")).await);

    // A watcher waits for changes that have not happened yet (woken by
    // NOTIFY, not by polling).
    let next = tokio::spawn(async move { w.message().await.unwrap().unwrap() });
    tag(&mut c, ws, 20_000..20_001, Some("vip")).await;
    let m = tokio::time::timeout(Duration::from_secs(30), next)
        .await
        .expect("the new change arrives")
        .unwrap();
    assert_eq!(m.changes.len(), 1);
    assert!(m.changes[0].entered);
    assert_eq!(m.changes[0].cause, "BatchUpsertContacts");
}

#[tokio::test]
async fn a_trimmed_start_offset_is_out_of_range_naming_the_oldest() {
    use pb::watch_membership_request::Start;
    let mut limits = segd::api::Limits::default();
    limits.live.retention_count = 50;
    let app = TestApp::spawn_with(limits).await;
    let ws = "trim";
    let mut c = app.contacts().await;
    let vip = create_live(&app, ws, "vip", "tags:vip").await;
    tag(&mut c, ws, 0..200, Some("vip")).await;
    app.drained().await;
    let mut q = app.query().await;
    trimmed_from(&mut q, ws, vip, 151).await;
    let mut w = q
        .watch_membership(req(ws, watch_req(vip, Start::AfterOffset(150))))
        .await
        .unwrap()
        .into_inner();
    let m = w.message().await.unwrap().unwrap();
    assert_eq!(m.changes[0].offset, 151);
}

#[tokio::test]
async fn changes_older_than_the_retention_age_are_trimmed() {
    use pb::watch_membership_request::Start;
    let mut limits = segd::api::Limits::default();
    limits.live.retention_age = Duration::from_secs(24 * 3600);
    let app = TestApp::spawn_with(limits).await;
    let ws = "age";
    let mut c = app.contacts().await;
    let vip = create_live(&app, ws, "vip", "tags:vip").await;
    tag(&mut c, ws, 0..100, Some("vip")).await;
    app.drained().await;
    // Still young: the whole feed is held.
    tag(&mut c, ws, 100..110, Some("vip")).await;
    app.drained().await;
    let mut q = app.query().await;
    assert!(
        q.watch_membership(req(ws, watch_req(vip, Start::AfterOffset(0))))
            .await
            .is_ok()
    );
    // Two days on, the next changes push out everything before them.
    app.state.clock.advance(chrono::Duration::hours(48));
    tag(&mut c, ws, 110..120, Some("vip")).await;
    app.drained().await;
    trimmed_from(&mut q, ws, vip, 111).await;
}

/// Asserts that watching `segment` from offset 0 is out of range, naming
/// `oldest` as the oldest offset held.
async fn trimmed_from(
    q: &mut segd::proto::query_service_client::QueryServiceClient<Channel>,
    ws: &str,
    segment: i64,
    oldest: i64,
) {
    use pb::watch_membership_request::Start;
    let err = q
        .watch_membership(req(ws, watch_req(segment, Start::AfterOffset(0))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange);
    let want = format!("oldest offset held is {oldest}");
    assert!(err.message().contains(&want), "{}", err.message());
}

async fn verify(app: &TestApp, ws: &str, id: i64) -> pb::VerifySegmentResponse {
    app.segments()
        .await
        .verify_segment(req(ws, pb::VerifySegmentRequest { segment_id: id }))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn verify_finds_drift_and_rebuild_repairs_it_through_the_feed() {
    let app = TestApp::spawn().await;
    let ws = "drift";
    let mut c = app.contacts().await;
    let vip = create_live(&app, ws, "vip", "tags:vip").await;
    tag(&mut c, ws, 0..20, Some("vip")).await;
    tag(&mut c, ws, 20..30, None).await;
    app.drained().await;
    assert_eq!(verify(&app, ws, vip).await.missing_count, 0);

    // Damage the stored members behind segd's back.
    let db = app.db().await;
    let lost: i64 = db
        .query_one(
            "DELETE FROM live_members WHERE contact_id = (SELECT min(contact_id) FROM live_members
               WHERE segment_id = $1) AND segment_id = $1 RETURNING contact_id",
            &[&vip],
        )
        .await
        .unwrap()
        .get(0);
    let stray: i64 = db
        .query_one("SELECT id FROM contacts WHERE external_id = 'x25'", &[])
        .await
        .unwrap()
        .get(0);
    db.execute(
        "INSERT INTO live_members SELECT workspace_id, $1, $2 FROM segments WHERE id = $1",
        &[&vip, &stray],
    )
    .await
    .unwrap();
    let d = verify(&app, ws, vip).await;
    assert_eq!((d.missing_count, d.missing_ids.clone()), (1, vec![lost]));
    assert_eq!((d.extra_count, d.extra_ids.clone()), (1, vec![stray]));

    let rebuilt = app
        .segments()
        .await
        .rebuild_segment(req(ws, pb::RebuildSegmentRequest { segment_id: vip }))
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap();
    let status = rebuilt.live_status.unwrap();
    assert!(status.built);
    assert_eq!(status.size, 20);
    let d = verify(&app, ws, vip).await;
    assert_eq!((d.missing_count, d.extra_count), (0, 0));
    let repairs: Vec<(i64, bool, String)> = db
        .query(
            "SELECT contact_id, entered, cause FROM membership_changes ORDER BY \"offset\" DESC LIMIT 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let mut repairs = repairs;
    repairs.sort();
    let mut want = vec![
        (lost, true, "rebuild".to_string()),
        (stray, false, "rebuild".to_string()),
    ];
    want.sort();
    assert_eq!(repairs, want, "the rebuild's repairs reach the feed");
}

/// Segments that time alone moves: windows, "did not", a last time before
/// or within a span (a future time enters at now), a relative date on a
/// contact field, and references to them.
const TIMED: &[(&str, &str)] = &[
    ("recent buyers", "event(purchase, last 30d)"),
    ("repeat buyers", "event(purchase, last 90d).count >= 2"),
    (
        "cart, no purchase",
        "event(cart_abandoned, last 7d) AND NOT event(purchase, last 7d)",
    ),
    ("inactive", "NOT event(*, last 30d)"),
    ("openers", "event(email_open|email_click, last 14d)"),
    ("lapsed", "event(purchase).last OLDER_THAN 60d"),
    ("fresh viewers", "event(page_view).last WITHIN_LAST 10d"),
    ("new contacts", "created_at WITHIN_LAST 20d"),
    (
        "bought after a cart",
        "event(purchase, since cart_abandoned)",
    ),
    (
        "vip recent buyers",
        r#"segment("recent buyers") AND tags:vip"#,
    ),
    (
        "leads, no recent purchase",
        r#"label:lead AND NOT segment("recent buyers")"#,
    ),
];

/// An event at the app's clock, from `back` hours before it up to two days
/// after it (times on the half hour, so no clock move lands on one).
fn event_at(rng: &mut StdRng, app: &TestApp, contact: i64, back: i64) -> pb::Event {
    let hours = rng.random_range(-48..back);
    let at = app.state.clock.now() - chrono::Duration::hours(hours) - chrono::Duration::minutes(30);
    pb::Event {
        contact: Some(pb::ContactRef {
            key: Some(pb::contact_ref::Key::Id(contact)),
        }),
        r#type: pick(rng, TYPES).into(),
        occurred_at: Some(segd::api::convert::ts(at)),
        ..Default::default()
    }
}

/// `n` events of random `people`, each as in [`event_at`].
fn events_at(
    rng: &mut StdRng,
    app: &TestApp,
    people: &[i64],
    n: usize,
    back: i64,
) -> Vec<pb::Event> {
    (0..n)
        .map(|_| {
            let who = people[rng.random_range(0..people.len())];
            event_at(rng, app, who, back)
        })
        .collect()
}

#[tokio::test]
async fn moving_the_clock_moves_live_segments_exactly_as_evaluation_from_scratch() {
    let mut limits = segd::api::Limits::default();
    // The clock jumps months ahead: keep the whole feed for the replay.
    limits.live.retention_age = Duration::from_secs(3650 * 24 * 3600);
    let app = TestApp::spawn_with(limits).await;
    let ws = "time";
    let mut c = app.contacts().await;
    for (name, text) in TIMED {
        create_live(&app, ws, name, text).await;
    }
    let names: Vec<&str> = TIMED.iter().map(|(n, _)| *n).collect();
    let mut rng = StdRng::seed_from_u64(11);
    let seed: Vec<pb::Contact> = (0..50).map(|i| contact(&mut rng, i)).collect();
    let imported = import_all(&mut c, ws, vec![seed]).await.unwrap();
    let people: Vec<i64> = imported.results.iter().map(|r| r.contact_id).collect();
    let events = events_at(&mut rng, &app, &people, 200, 24 * 120);
    record_all(&mut c, ws, vec![events]).await.unwrap();
    assert_exact(&app, ws, &names).await;

    for step in 0..8 {
        // Hours to weeks ahead, never more than a window at once.
        let hours = if step % 2 == 0 {
            rng.random_range(1..48)
        } else {
            rng.random_range(48..24 * 25)
        };
        app.state.clock.advance(chrono::Duration::hours(hours));
        if step % 3 == 1 {
            let events = events_at(&mut rng, &app, &people, 10, 24 * 10);
            record_all(&mut c, ws, vec![events]).await.unwrap();
        }
        assert_exact(&app, ws, &names).await;
    }
    let by_clock: i64 = app
        .db()
        .await
        .query_one(
            "SELECT count(*) FROM membership_changes WHERE cause = 'clock' AND NOT entered",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(by_clock > 0, "the clock alone took members out");
}

/// A purchase by the contact with external id `x<i>`, now.
fn purchase_by(i: usize) -> pb::Event {
    pb::Event {
        contact: Some(pb::ContactRef {
            key: Some(pb::contact_ref::Key::ExternalId(format!("x{i}"))),
        }),
        r#type: "purchase".into(),
        occurred_at: Some(segd::api::convert::ts(Utc::now())),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_rebuild_repairs_a_segment_read_straight_off_its_events() {
    // "event(purchase)" is evaluated as one aggregate over the events (no
    // contacts scan): its whole evaluations diff two sorted id lists.
    let app = TestApp::spawn().await;
    let ws = "drift-events";
    let mut c = app.contacts().await;
    tag(&mut c, ws, 0..10, None).await;
    let buyers = create_live(&app, ws, "buyers", "event(purchase)").await;
    record_all(&mut c, ws, vec![(0..5).map(purchase_by).collect()])
        .await
        .unwrap();
    app.drained().await;
    let db = app.db().await;
    let id_of = |i: usize| {
        let db = &db;
        async move {
            let r = db
                .query_one(
                    "SELECT id FROM contacts WHERE external_id = $1",
                    &[&format!("x{i}")],
                )
                .await
                .unwrap();
            r.get::<_, i64>(0)
        }
    };
    // Damage: one member lost, two strays.
    let (lost, strays) = (id_of(2).await, [id_of(7).await, id_of(9).await]);
    db.execute(
        "DELETE FROM live_members WHERE segment_id = $1 AND contact_id = $2",
        &[&buyers, &lost],
    )
    .await
    .unwrap();
    for s in strays {
        db.execute(
            "INSERT INTO live_members SELECT workspace_id, $1, $2 FROM segments WHERE id = $1",
            &[&buyers, &s],
        )
        .await
        .unwrap();
    }
    let d = verify(&app, ws, buyers).await;
    assert_eq!((d.missing_count, d.extra_count), (1, 2));
    let mut seg = app.segments().await;
    let status = seg
        .rebuild_segment(req(ws, pb::RebuildSegmentRequest { segment_id: buyers }))
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap()
        .live_status
        .unwrap();
    assert_eq!((status.built, status.size), (true, 5));
    let d = verify(&app, ws, buyers).await;
    assert_eq!((d.missing_count, d.extra_count), (0, 0));

    // Redefined to select nobody: every member exits through the feed.
    let before: i64 = db
        .query_one("SELECT max(\"offset\") FROM membership_changes", &[])
        .await
        .unwrap()
        .get(0);
    seg.update_segment(req(
        ws,
        pb::UpdateSegmentRequest {
            segment: Some(pb::Segment {
                id: buyers,
                definition: filter("event(donation)"),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["definition".into()],
            }),
        },
    ))
    .await
    .unwrap();
    app.drained().await;
    let d = verify(&app, ws, buyers).await;
    assert_eq!((d.missing_count, d.extra_count), (0, 0));
    let exits: i64 = db
        .query_one(
            "SELECT count(*) FROM membership_changes WHERE segment_id = $1 AND NOT entered AND \"offset\" > $2",
            &[&buyers, &before],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(exits, 5, "each buyer's exit is in the feed");
}
