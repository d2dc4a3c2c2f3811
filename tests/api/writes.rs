//! The write path under pressure: idle and huge imports, concurrent
//! imports of the same keys, events racing merges, hostile values. Nothing
//! is half-written, no batch fails for a race, every error is bounded.

use std::collections::HashSet;
use std::time::Duration;

use prost::Message;
use rand::seq::SliceRandom;
use segd::proto::{self as pb, contact_service_client::ContactServiceClient};
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::{TestApp, define_field, filter, import_all, record_all, req, violations};

type Client = ContactServiceClient<Channel>;

fn person(email: &str) -> pb::Contact {
    pb::Contact {
        email: email.into(),
        ..Default::default()
    }
}

fn by(key: pb::contact_ref::Key) -> Option<pb::ContactRef> {
    Some(pb::ContactRef { key: Some(key) })
}

fn event(contact: Option<pb::ContactRef>, kind: &str) -> pb::Event {
    pb::Event {
        contact,
        r#type: kind.into(),
        ..Default::default()
    }
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    app.db().await.query_one(sql, &[]).await.unwrap().get(0)
}

/// Import streams that send nothing hold no connection: with a pool of two,
/// sixteen idle imports leave other calls (and another import) working.
#[tokio::test]
async fn idle_imports_hold_no_connection() {
    let app = TestApp::with().pool_size(2).spawn().await;
    let mut c = app.contacts().await;
    let created = c
        .create_contact(req(
            "w",
            pb::CreateContactRequest {
                contact: Some(person("a@x.co")),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap();
    let mut idle = Vec::new();
    for _ in 0..16 {
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::BatchUpsertContactsRequest>(1);
        let mut client = app.contacts().await;
        let acks = client
            .batch_upsert_contacts(req("w", tokio_stream::wrappers::ReceiverStream::new(rx)))
            .await
            .unwrap();
        idle.push((tx, acks, client));
    }
    for _ in 0..5 {
        c.get_contact(req(
            "w",
            pb::GetContactRequest {
                contact: by(pb::contact_ref::Key::Id(created.id)),
            },
        ))
        .await
        .unwrap();
    }
    let r = import_all(&mut c, "w", vec![vec![person("b@x.co")]])
        .await
        .unwrap();
    assert_eq!(r.created, 1);
    // An idle stream that then sends a batch gets it acknowledged.
    let (tx, mut acks, _client) = idle.pop().unwrap();
    tx.send(pb::BatchUpsertContactsRequest {
        contacts: vec![person("c@x.co")],
    })
    .await
    .unwrap();
    let ack = acks.get_mut().message().await.unwrap().unwrap();
    assert_eq!((ack.batch_index, ack.created), (0, 1));
}

/// One call imports more rows than the old per-call cap, every batch is
/// acknowledged as it commits, and every acknowledgement stays far below
/// 4 MB, even for a batch whose every row fails with a long value.
#[tokio::test]
async fn imports_of_any_size_are_acknowledged_batch_by_batch() {
    let app = TestApp::spawn().await;
    let mut c = app.contacts().await.max_encoding_message_size(64 << 20);
    let batches: Vec<Vec<pb::Contact>> = (0..21)
        .map(|b| {
            (0..10_000)
                .map(|i| pb::Contact {
                    external_id: format!("e{b}-{i}"),
                    ..Default::default()
                })
                .collect()
        })
        .collect();
    let r = import_all(&mut c, "w", batches).await.unwrap();
    assert_eq!(r.created, 210_000);
    assert_eq!(r.results.len(), 210_000);
    assert_eq!(count(&app, "SELECT count(*) FROM contacts").await, 210_000);

    let long = "x".repeat(1_000);
    let bad: Vec<pb::Contact> = (0..10_000).map(|i| person(&format!("{long}{i}"))).collect();
    let mut acks = c
        .batch_upsert_contacts(req(
            "w",
            tokio_stream::iter(vec![pb::BatchUpsertContactsRequest { contacts: bad }]),
        ))
        .await
        .unwrap()
        .into_inner();
    let ack = acks.message().await.unwrap().unwrap();
    assert_eq!(ack.failed, 10_000);
    assert!(
        ack.encoded_len() < 4 << 20,
        "an acknowledgement of {} bytes",
        ack.encoded_len()
    );
    assert!(
        ack.results
            .iter()
            .all(|r| r.field == "email" && r.error.len() <= 200)
    );
}

/// Six imports of the same 2,000 keys, each in its own order, at once: none
/// fails, none deadlocks, and the keys exist once each.
#[tokio::test]
async fn concurrent_imports_of_the_same_keys_queue_instead_of_deadlocking() {
    let app = TestApp::spawn().await;
    let keys: Vec<String> = (0..2_000).map(|i| format!("k{i}")).collect();
    let mut tasks = Vec::new();
    for seed in 0..6u64 {
        let mut mine = keys.clone();
        mine.shuffle(&mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed));
        let mut c = app.contacts().await;
        tasks.push(tokio::spawn(async move {
            let batches: Vec<Vec<pb::Contact>> = mine
                .chunks(500)
                .map(|ks| {
                    ks.iter()
                        .map(|k| pb::Contact {
                            external_id: k.clone(),
                            first_name: format!("by {seed}"),
                            ..Default::default()
                        })
                        .collect()
                })
                .collect();
            import_all(&mut c, "w", batches).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap().expect("no import fails");
        assert_eq!(
            r.failed,
            0,
            "{:?}",
            r.results.iter().find(|x| !x.error.is_empty())
        );
        assert_eq!(r.created + r.updated + r.unchanged, 2_000);
    }
    assert_eq!(count(&app, "SELECT count(*) FROM contacts").await, 2_000);
}

/// Values PostgreSQL cannot store fail their own row only.
#[tokio::test]
async fn unstorable_event_properties_fail_their_row_only() {
    let app = TestApp::spawn().await;
    let mut c = app.contacts().await;
    import_all(&mut c, "w", vec![vec![person("a@x.co")]])
        .await
        .unwrap();
    let who = || by(pb::contact_ref::Key::Email("a@x.co".into()));
    let with = |k: &str, v: prost_types::value::Kind| {
        let mut e = event(who(), "page_view");
        e.properties = Some(prost_types::Struct {
            fields: [(k.to_string(), prost_types::Value { kind: Some(v) })].into(),
        });
        e
    };
    use prost_types::value::Kind;
    let r = record_all(
        &mut c,
        "w",
        vec![vec![
            with("url", Kind::StringValue("/ok".into())),
            with("url", Kind::StringValue("/a\0b".into())),
            with("price", Kind::NumberValue(f64::NAN)),
            with("price", Kind::NumberValue(f64::INFINITY)),
            event(who(), "page_view"),
        ]],
    )
    .await
    .unwrap();
    let outcome: Vec<(pb::EventOutcome, &str)> = r
        .results
        .iter()
        .map(|x| (x.outcome(), x.field.as_str()))
        .collect();
    use pb::EventOutcome::{Failed, Recorded};
    assert_eq!(
        outcome,
        vec![
            (Recorded, ""),
            (Failed, "properties.url"),
            (Failed, "properties.price"),
            (Failed, "properties.price"),
            (Recorded, "")
        ]
    );
    assert_eq!(count(&app, "SELECT count(*) FROM events").await, 2);
}

/// Events recorded while their contacts are merged away: no batch fails,
/// and no event reported as recorded is lost (the merge moves it).
#[tokio::test]
async fn events_racing_merges_never_fail_a_batch_or_vanish() {
    let app = TestApp::spawn().await;
    let mut c = app.contacts().await;
    let people: Vec<pb::Contact> = (0..200).map(|i| person(&format!("p{i}@x.co"))).collect();
    let ids: Vec<i64> = import_all(&mut c, "w", vec![people])
        .await
        .unwrap()
        .results
        .iter()
        .map(|r| r.contact_id)
        .collect();
    let writer = {
        let mut c = app.contacts().await;
        let ids = ids.clone();
        tokio::spawn(async move {
            let mut recorded = 0;
            for round in 0..20 {
                let events: Vec<pb::Event> = ids
                    .iter()
                    .map(|id| {
                        let mut e = event(by(pb::contact_ref::Key::Id(*id)), "purchase");
                        e.event_id = format!("{round}-{id}");
                        e
                    })
                    .collect();
                let r = record_all(&mut c, "w", vec![events])
                    .await
                    .expect("no batch fails for a merge race");
                assert!(
                    r.results
                        .iter()
                        .all(|x| x.outcome() == pb::EventOutcome::Recorded || x.field == "contact"),
                    "{:?}",
                    r.results
                        .iter()
                        .find(|x| x.outcome() == pb::EventOutcome::Failed)
                );
                recorded += r.recorded;
            }
            recorded
        })
    };
    // Meanwhile, merge pairs: the second of each pair into the first.
    for pair in ids.chunks(2) {
        c.merge_contacts(req(
            "w",
            pb::MergeContactsRequest {
                primary_id: pair[0],
                duplicate_ids: vec![pair[1]],
            },
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let recorded = writer.await.unwrap();
    assert!(recorded > 0);
    assert_eq!(count(&app, "SELECT count(*) FROM events").await, recorded);
}

/// Dates PostgreSQL cannot read (year 0, which chrono accepts) are refused
/// wherever a date enters, with a field path.
#[tokio::test]
async fn out_of_range_dates_are_refused_everywhere() {
    let app = TestApp::spawn().await;
    let mut c = app.contacts().await;
    define_field(&mut c, "w", "day", pb::CustomFieldType::Date).await;
    let err = c
        .create_contact(req(
            "w",
            pb::CreateContactRequest {
                contact: Some(pb::Contact {
                    birth_date: "0000-05-01".into(),
                    ..person("a@x.co")
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["contact.birth_date"]);
    let day = |d: &str| pb::Contact {
        custom_fields: [(
            "day".to_string(),
            pb::CustomValue {
                kind: Some(pb::custom_value::Kind::DateValue(d.into())),
            },
        )]
        .into(),
        ..person("b@x.co")
    };
    let r = import_all(
        &mut c,
        "w",
        vec![vec![day("0000-01-01"), day("2024-01-01")]],
    )
    .await
    .unwrap();
    assert_eq!(r.results[0].outcome(), pb::RowOutcome::Failed);
    assert_eq!(r.results[0].field, "custom_fields.day");
    assert_eq!(r.results[1].outcome(), pb::RowOutcome::Created);
    // And in rules, as text or as a tree.
    let mut s = app.segments().await;
    let err = s
        .validate_segment(req(
            "w",
            pb::ValidateSegmentRequest {
                definition: filter("birth_date > 0000-01-01"),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A count over the field keeps working: nothing unreadable was stored.
    let mut q = app.query().await;
    q.count_members(req(
        "w",
        pb::CountMembersRequest {
            selector: crate::helpers::inline("custom.day WITHIN_LAST 30d"),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
}

/// Deals import in streamed batches, addressed by the contact's external id
/// or email; each row reports its outcome.
#[tokio::test]
async fn deals_import_in_batches_by_any_contact_key() {
    let app = TestApp::spawn().await;
    let mut c = app.contacts().await;
    import_all(
        &mut c,
        "w",
        vec![vec![pb::Contact {
            external_id: "crm-1".into(),
            ..person("a@x.co")
        }]],
    )
    .await
    .unwrap();
    let deal = |ext: &str, contact: pb::contact_ref::Key, status: pb::DealStatus| pb::Deal {
        external_id: ext.into(),
        contact: by(contact),
        name: ext.into(),
        status: status as i32,
        value: 100.0,
        ..Default::default()
    };
    use pb::contact_ref::Key::{Email, ExternalId};
    let batches = vec![
        pb::BatchUpsertDealsRequest {
            deals: vec![
                deal("d1", ExternalId("crm-1".into()), pb::DealStatus::Open),
                deal("d2", Email("A@X.CO".into()), pb::DealStatus::Won),
                deal("d3", ExternalId("nobody".into()), pb::DealStatus::Open),
                deal("d1", ExternalId("crm-1".into()), pb::DealStatus::Lost),
            ],
        },
        pb::BatchUpsertDealsRequest {
            deals: vec![
                deal("d1", Email("a@x.co".into()), pb::DealStatus::Won),
                pb::Deal {
                    external_id: String::new(),
                    ..deal("", ExternalId("crm-1".into()), pb::DealStatus::Open)
                },
            ],
        },
    ];
    let mut acks = c
        .batch_upsert_deals(req("w", tokio_stream::iter(batches)))
        .await
        .unwrap()
        .into_inner();
    let first = acks.message().await.unwrap().unwrap();
    let outcomes: Vec<pb::RowOutcome> = first.results.iter().map(|r| r.outcome()).collect();
    use pb::RowOutcome::{Created, Failed, Updated};
    assert_eq!(outcomes, vec![Created, Created, Failed, Failed]);
    assert_eq!(first.results[2].field, "contact");
    let second = acks.message().await.unwrap().unwrap();
    let outcomes: Vec<pb::RowOutcome> = second.results.iter().map(|r| r.outcome()).collect();
    assert_eq!(outcomes, vec![Updated, Created]);
    assert_eq!(second.results[0].deal_id, first.results[0].deal_id);
    assert_eq!((second.created, second.updated, second.failed), (3, 1, 2));
    assert!(acks.message().await.unwrap().is_none());
    let stored: HashSet<(String, String)> = app
        .db()
        .await
        .query("SELECT coalesce(external_id, ''), status FROM deals", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        stored,
        [("d1", "won"), ("d2", "won"), ("", "open")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    );
}

/// Hostile input gets a bounded INVALID_ARGUMENT, not a huge trailer (which
/// standard clients turn into RESOURCE_EXHAUSTED).
#[tokio::test]
async fn hostile_input_gets_a_small_invalid_argument() {
    let app = TestApp::spawn().await;
    let mut c: Client = app.contacts().await;
    let err = c
        .create_contact(req(
            "w",
            pb::CreateContactRequest {
                contact: Some(person(&format!("{}@x.co", "a".repeat(20_000)))),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() + err.details().len() < 4096);
    let mut s = app.segments().await;
    let wide = pb::Definition {
        kind: Some(pb::definition::Kind::Rule(pb::Rule {
            kind: Some(pb::rule::Kind::All(pb::RuleList {
                rules: vec![pb::Rule { kind: None }; 200_000],
            })),
        })),
    };
    let err = s
        .validate_segment(req(
            "w",
            pb::ValidateSegmentRequest {
                definition: Some(wide),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() + err.details().len() < 4096);
}
