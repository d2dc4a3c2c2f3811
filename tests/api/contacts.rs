//! ContactService end to end: every RPC, its error paths, idempotent
//! import, merge, and workspace isolation.

use prost_types::{FieldMask, Timestamp};
use segd::proto::{self as pb, contact_ref::Key, contact_service_client::ContactServiceClient};
use tonic::{Code, transport::Channel};

use crate::helpers::{TestApp, define_field, import_all, record_all, req, violations};

type Client = ContactServiceClient<Channel>;

fn by_id(id: i64) -> Option<pb::ContactRef> {
    Some(pb::ContactRef {
        key: Some(Key::Id(id)),
    })
}

fn contact(email: &str) -> pb::Contact {
    pb::Contact {
        email: email.into(),
        ..Default::default()
    }
}

async fn create(c: &mut Client, ws: &str, p: pb::Contact) -> pb::Contact {
    c.create_contact(req(ws, pb::CreateContactRequest { contact: Some(p) }))
        .await
        .expect("create")
        .into_inner()
        .contact
        .unwrap()
}

async fn get(c: &mut Client, ws: &str, key: Key) -> Result<pb::Contact, tonic::Status> {
    c.get_contact(req(
        ws,
        pb::GetContactRequest {
            contact: Some(pb::ContactRef { key: Some(key) }),
        },
    ))
    .await
    .map(|r| r.into_inner().contact.unwrap())
}

fn custom(kind: pb::custom_value::Kind) -> pb::CustomValue {
    pb::CustomValue { kind: Some(kind) }
}

async fn import(
    c: &mut Client,
    ws: &str,
    batches: Vec<Vec<pb::Contact>>,
) -> pb::BatchUpsertContactsResponse {
    import_all(c, ws, batches).await.expect("import")
}

async fn record(c: &mut Client, ws: &str, events: Vec<pb::Event>) -> pb::RecordEventsResponse {
    record_all(c, ws, vec![events]).await.expect("record")
}

fn event(id: &str, contact: i64, t: &str, at: i64) -> pb::Event {
    pb::Event {
        event_id: id.into(),
        contact: by_id(contact),
        r#type: t.into(),
        occurred_at: Some(Timestamp {
            seconds: at,
            nanos: 0,
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn create_get_by_every_key_and_normalise() {
    let app = TestApp::spawn().await;
    let mut c = app.contacts().await;
    define_field(&mut c, "w", "plan", pb::CustomFieldType::String).await;
    define_field(&mut c, "w", "renewal", pb::CustomFieldType::Date).await;
    let p = pb::Contact {
        external_id: "crm-1".into(),
        email: " Ada@Example.COM ".into(),
        phone: "+44 (20) 7946-0958".into(),
        country: "gb".into(),
        locale: "en_gb".into(),
        birth_date: "1985-12-10".into(),
        labels: vec!["lead".into()],
        status: "Rejected".into(),
        status_reason: "too expensive".into(),
        source_channel: pb::SourceChannel::Paid as i32,
        custom_fields: [
            (
                "plan".to_string(),
                custom(pb::custom_value::Kind::StringValue("pro".into())),
            ),
            (
                "renewal".to_string(),
                custom(pb::custom_value::Kind::DateValue("2027-01-31".into())),
            ),
        ]
        .into(),
        ..Default::default()
    };
    let created = create(&mut c, "w", p).await;
    assert!(created.id > 0);
    assert_eq!(created.email, "ada@example.com");
    assert_eq!(created.phone, "+442079460958");
    assert_eq!(created.locale, "en-GB");
    assert_eq!(created.status, "rejected");
    assert_eq!(created.status_reason, "too_expensive");
    assert_eq!(created.etag, "v1");
    for key in [
        Key::Id(created.id),
        Key::ExternalId("crm-1".into()),
        Key::Email("ADA@example.com".into()),
    ] {
        let got = get(&mut c, "w", key).await.unwrap();
        assert_eq!(got, created);
    }
    assert_eq!(
        created.custom_fields["renewal"].kind,
        Some(pb::custom_value::Kind::DateValue("2027-01-31".into()))
    );
    let missing = get(&mut c, "w", Key::Id(created.id + 1000))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn invalid_contacts_report_every_field_and_write_nothing() {
    let app = TestApp::spawn().await;
    let mut c = app.contacts().await;
    define_field(&mut c, "w", "score", pb::CustomFieldType::Number).await;
    let bad = pb::Contact {
        email: "not-an-email".into(),
        country: "ZZ".into(),
        birth_date: "1990-13-01".into(),
        labels: vec!["no such label".into()],
        custom_fields: [(
            "score".to_string(),
            custom(pb::custom_value::Kind::StringValue("high".into())),
        )]
        .into(),
        ..Default::default()
    };
    let err = c
        .create_contact(req("w", pb::CreateContactRequest { contact: Some(bad) }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let v = violations(&err);
    for f in ["contact.email", "contact.country", "contact.birth_date"] {
        assert!(v.contains(&f.to_string()), "{f} in {v:?}");
    }
    // Value-level problems pass; schema-level ones are checked against the workspace.
    let schema_bad = pb::Contact {
        email: "ok@example.com".into(),
        labels: vec!["vip_partner".into()],
        custom_fields: [
            (
                "score".to_string(),
                custom(pb::custom_value::Kind::StringValue("high".into())),
            ),
            (
                "nope".to_string(),
                custom(pb::custom_value::Kind::BoolValue(true)),
            ),
        ]
        .into(),
        ..Default::default()
    };
    let err = c
        .create_contact(req(
            "w",
            pb::CreateContactRequest {
                contact: Some(schema_bad),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let v = violations(&err);
    assert!(v.contains(&"labels[0]".to_string()), "{v:?}");
    assert!(v.contains(&"custom_fields.score".to_string()), "{v:?}");
    assert!(v.contains(&"custom_fields.nope".to_string()), "{v:?}");
    let listed = c
        .list_contacts(req("w", pb::ListContactsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.contacts.is_empty(), "nothing was written");
}

#[tokio::test]
async fn duplicate_keys_are_already_exists() {
    let app = TestApp::spawn().await;
    let mut c = app.contacts().await;
    create(
        &mut c,
        "w",
        pb::Contact {
            external_id: "x1".into(),
            email: "a@x.co".into(),
            ..Default::default()
        },
    )
    .await;
    for dup in [
        contact("A@x.co"),
        pb::Contact {
            external_id: "x1".into(),
            ..Default::default()
        },
    ] {
        let err = c
            .create_contact(req("w", pb::CreateContactRequest { contact: Some(dup) }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    }
}

#[tokio::test]
async fn update_with_mask_and_etag() {
    let app = TestApp::spawn().await;
    let mut c = app.contacts().await;
    define_field(&mut c, "w", "plan", pb::CustomFieldType::String).await;
    let created = create(
        &mut c,
        "w",
        pb::Contact {
            email: "u@x.co".into(),
            city: "Oslo".into(),
            ..Default::default()
        },
    )
    .await;
    let update = |p: pb::Contact, paths: &[&str]| pb::UpdateContactRequest {
        contact: Some(p),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|s| s.to_string()).collect(),
        }),
    };
    // Only masked fields change; the unmasked bad email is ignored.
    let p = pb::Contact {
        id: created.id,
        etag: created.etag.clone(),
        email: "garbage".into(),
        city: "Bergen".into(),
        tags: vec!["b".into(), "a".into()],
        custom_fields: [(
            "plan".to_string(),
            custom(pb::custom_value::Kind::StringValue("gold".into())),
        )]
        .into(),
        ..Default::default()
    };
    let updated = c
        .update_contact(req("w", update(p, &["city", "tags", "custom_fields.plan"])))
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap();
    assert_eq!(updated.city, "Bergen");
    assert_eq!(updated.email, "u@x.co");
    assert_eq!(updated.tags, vec!["a", "b"]);
    assert_eq!(updated.etag, "v2");
    assert!(updated.custom_fields.contains_key("plan"));

    // A stale etag is ABORTED and changes nothing.
    let stale = pb::Contact {
        id: created.id,
        etag: created.etag.clone(),
        city: "Paris".into(),
        ..Default::default()
    };
    let err = c
        .update_contact(req("w", update(stale, &["city"])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(
        get(&mut c, "w", Key::Id(created.id)).await.unwrap().city,
        "Bergen"
    );

    // Clearing through the mask, and removing one custom field.
    let clear = pb::Contact {
        id: created.id,
        ..Default::default()
    };
    let cleared = c
        .update_contact(req("w", update(clear, &["city", "custom_fields.plan"])))
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap();
    assert_eq!(cleared.city, "");
    assert!(cleared.custom_fields.is_empty());

    // Unknown paths and bad masked values are INVALID_ARGUMENT with paths.
    let err = c
        .update_contact(req(
            "w",
            update(
                pb::Contact {
                    id: created.id,
                    ..Default::default()
                },
                &["nope"],
            ),
        ))
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["update_mask.paths[0]".to_string()]);
    let err = c
        .update_contact(req(
            "w",
            update(
                pb::Contact {
                    id: created.id,
                    email: "bad".into(),
                    ..Default::default()
                },
                &["email"],
            ),
        ))
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["contact.email".to_string()]);
    let err = c
        .update_contact(req(
            "w",
            update(
                pb::Contact {
                    id: 999_999,
                    city: "X".into(),
                    ..Default::default()
                },
                &["city"],
            ),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn list_pages_in_every_order_without_gaps() {
    let app = TestApp::spawn().await;
    let mut c = app.contacts().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let p = pb::Contact {
            email: format!("l{i}@x.co"),
            created_at: Some(Timestamp {
                seconds: 1_600_000_000 + (i % 3) * 100,
                nanos: 0,
            }),
            ..Default::default()
        };
        ids.push(create(&mut c, "w", p).await.id);
    }
    for order in ["", "id desc", "created_at", "created_at desc", "updated_at"] {
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = c
                .list_contacts(req(
                    "w",
                    pb::ListContactsRequest {
                        page_size: 3,
                        page_token: token.clone(),
                        order_by: order.into(),
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            assert!(page.contacts.len() <= 3);
            seen.extend(
                page.contacts
                    .iter()
                    .map(|c| (c.created_at.unwrap().seconds, c.id)),
            );
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen.len(), 7, "{order}");
        let mut sorted = seen.clone();
        match order {
            "id desc" => sorted.sort_by_key(|(_, id)| std::cmp::Reverse(*id)),
            "created_at" => sorted.sort(),
            "created_at desc" => sorted.sort_by(|a, b| b.cmp(a)),
            _ => sorted.sort_by_key(|(_, id)| *id),
        }
        assert_eq!(seen, sorted, "{order}");
    }
    let err = c
        .list_contacts(req(
            "w",
            pb::ListContactsRequest {
                order_by: "email; drop".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["order_by".to_string()]);
    let err = c
        .list_contacts(req(
            "w",
            pb::ListContactsRequest {
                page_token: "garbage".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["page_token".to_string()]);
}

#[tokio::test]
async fn delete_erases_events_and_deals() {
    let app = TestApp::spawn().await;
    let mut c = app.contacts().await;
    let a = create(&mut c, "w", contact("d@x.co")).await;
    record(
        &mut c,
        "w",
        vec![event("e1", a.id, "page_view", 1_700_000_000)],
    )
    .await;
    c.upsert_deal(req(
        "w",
        pb::UpsertDealRequest {
            deal: Some(pb::Deal {
                contact_id: a.id,
                status: pb::DealStatus::Open as i32,
                ..Default::default()
            }),
        },
    ))
    .await
    .unwrap();
    let err = c
        .delete_contact(req(
            "w",
            pb::DeleteContactRequest {
                id: a.id,
                etag: "v9".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    c.delete_contact(req(
        "w",
        pb::DeleteContactRequest {
            id: a.id,
            etag: a.etag,
        },
    ))
    .await
    .unwrap();
    assert_eq!(
        get(&mut c, "w", Key::Id(a.id)).await.unwrap_err().code(),
        Code::NotFound
    );
    let db = app.db().await;
    let left: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM deals)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let err = c
        .delete_contact(req(
            "w",
            pb::DeleteContactRequest {
                id: a.id,
                etag: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn batch_import_reports_rows_and_is_idempotent() {
    let app = TestApp::spawn().await;
    let mut c = app.contacts().await;
    let existing = create(
        &mut c,
        "w",
        pb::Contact {
            email: "old@x.co".into(),
            city: "Rome".into(),
            ..Default::default()
        },
    )
    .await;
    let batch1 = vec![
        pb::Contact {
            external_id: "e1".into(),
            email: "e1@x.co".into(),
            tags: vec!["t".into()],
            ..Default::default()
        },
        pb::Contact {
            email: "old@x.co".into(),
            first_name: "Olga".into(),
            ..Default::default()
        },
        pb::Contact {
            external_id: "e2".into(),
            email: "broken".into(),
            ..Default::default()
        },
        pb::Contact {
            first_name: "no key".into(),
            ..Default::default()
        },
    ];
    let batch2 = vec![
        pb::Contact {
            external_id: "e3".into(),
            labels: vec!["customer".into()],
            ..Default::default()
        },
        pb::Contact {
            external_id: "e3".into(),
            city: "dup".into(),
            ..Default::default()
        },
    ];
    let r = import(&mut c, "w", vec![batch1.clone(), batch2.clone()]).await;
    assert_eq!(
        (r.created, r.updated, r.unchanged, r.failed),
        (2, 1, 0, 3),
        "{r:?}"
    );
    let outcomes: Vec<(i32, i32, pb::RowOutcome)> = r
        .results
        .iter()
        .map(|x| (x.batch_index, x.row_index, x.outcome()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (0, 0, pb::RowOutcome::Created),
            (0, 1, pb::RowOutcome::Updated),
            (0, 2, pb::RowOutcome::Failed),
            (0, 3, pb::RowOutcome::Failed),
            (1, 0, pb::RowOutcome::Created),
            (1, 1, pb::RowOutcome::Failed),
        ]
    );
    assert_eq!(r.results[2].field, "email");
    assert_eq!(r.results[1].contact_id, existing.id);
    let olga = get(&mut c, "w", Key::Id(existing.id)).await.unwrap();
    assert_eq!(
        (olga.first_name.as_str(), olga.city.as_str()),
        ("Olga", "Rome"),
        "unset fields are kept"
    );

    // Re-sending the same stream changes nothing.
    let again = import(&mut c, "w", vec![batch1, batch2]).await;
    assert_eq!(
        (again.created, again.updated, again.unchanged, again.failed),
        (0, 0, 3, 3),
        "{again:?}"
    );
    let n: i64 = app
        .db()
        .await
        .query_one("SELECT count(*) FROM contacts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);

    // Matching by email adopts an external id; a conflicting one fails.
    let r = import(
        &mut c,
        "w",
        vec![vec![
            pb::Contact {
                external_id: "crm-old".into(),
                email: "old@x.co".into(),
                ..Default::default()
            },
            pb::Contact {
                external_id: "other".into(),
                email: "e1@x.co".into(),
                ..Default::default()
            },
        ]],
    )
    .await;
    assert_eq!(r.results[0].outcome(), pb::RowOutcome::Updated);
    assert_eq!(r.results[0].contact_id, existing.id);
    assert_eq!(r.results[1].outcome(), pb::RowOutcome::Failed);
}

#[tokio::test]
async fn a_failing_batch_writes_nothing_of_its_own() {
    let app = TestApp::spawn().await;
    let mut c = app.contacts().await;
    let huge: Vec<pb::Contact> = (0..10_001)
        .map(|i| contact(&format!("h{i}@x.co")))
        .collect();
    let ok = vec![contact("first@x.co")];
    let mut acks = c
        .batch_upsert_contacts(req(
            "w",
            tokio_stream::iter(vec![
                pb::BatchUpsertContactsRequest { contacts: ok },
                pb::BatchUpsertContactsRequest { contacts: huge },
            ]),
        ))
        .await
        .unwrap()
        .into_inner();
    let first = acks
        .message()
        .await
        .unwrap()
        .expect("the first batch's ack");
    assert_eq!((first.batch_index, first.created), (0, 1));
    let err = acks.message().await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violations(&err), vec!["contacts"]);
    let n: i64 = app
        .db()
        .await
        .query_one("SELECT count(*) FROM contacts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        n, 1,
        "the first batch committed, the oversized one wrote nothing"
    );
}

#[tokio::test]
async fn events_are_idempotent_and_fail_per_row() {
    let app = TestApp::spawn().await;
    let mut c = app.contacts().await;
    let a = create(
        &mut c,
        "w",
        pb::Contact {
            external_id: "ev-a".into(),
            ..Default::default()
        },
    )
    .await;
    let mut purchase = event("p1", a.id, "purchase", 1_700_000_100);
    purchase.value = Some(49.5);
    purchase.currency = "eur".into();
    purchase.properties = Some(prost_types::Struct {
        fields: [(
            "sku".to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("A-1".into())),
            },
        )]
        .into(),
    });
    let by_ext = pb::Event {
        event_id: "v1".into(),
        contact: Some(pb::ContactRef {
            key: Some(Key::ExternalId("ev-a".into())),
        }),
        r#type: "page_view".into(),
        occurred_at: Some(Timestamp {
            seconds: 1_600_000_000,
            nanos: 0,
        }),
        ..Default::default()
    };
    let rows = vec![
        purchase.clone(),
        by_ext,
        event("x1", a.id + 999, "page_view", 1_700_000_000),
        event("p1", a.id, "purchase", 1_700_000_100),
        pb::Event {
            r#type: "Not An Identifier!".into(),
            contact: by_id(a.id),
            ..Default::default()
        },
        event("", a.id, "email_open", 1_700_000_050),
    ];
    let r = record(&mut c, "w", rows.clone()).await;
    let outcomes: Vec<pb::EventOutcome> = r.results.iter().map(|x| x.outcome()).collect();
    use pb::EventOutcome::*;
    assert_eq!(
        outcomes,
        vec![Recorded, Recorded, Failed, Duplicate, Failed, Recorded]
    );
    assert_eq!(r.results[2].field, "contact");
    assert_eq!(r.results[4].field, "type");
    assert_eq!((r.recorded, r.duplicates, r.failed), (3, 1, 2));

    let again = record(&mut c, "w", vec![purchase]).await;
    assert_eq!((again.recorded, again.duplicates), (0, 1));

    // The purchase converted the contact.
    let got = get(&mut c, "w", Key::Id(a.id)).await.unwrap();
    assert_eq!(got.converted_at.unwrap().seconds, 1_700_000_100);

    let listed = c
        .list_events(req(
            "w",
            pb::ListEventsRequest {
                contact: by_id(a.id),
                page_size: 2,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.events.len(), 2);
    assert_eq!(listed.events[0].r#type, "purchase", "newest first");
    assert_eq!(listed.events[0].currency, "EUR");
    assert_eq!(listed.events[0].value, Some(49.5));
    let rest = c
        .list_events(req(
            "w",
            pb::ListEventsRequest {
                contact: by_id(a.id),
                page_size: 2,
                page_token: listed.next_page_token,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.events.len(), 1);
    assert!(rest.next_page_token.is_empty());
}

#[tokio::test]
async fn deals_upsert_by_id_and_external_id() {
    let app = TestApp::spawn().await;
    let mut c = app.contacts().await;
    let a = create(&mut c, "w", contact("deal@x.co")).await;
    let d = pb::Deal {
        external_id: "opp-1".into(),
        contact_id: a.id,
        name: "Big one".into(),
        status: pb::DealStatus::Open as i32,
        stage: "Negotiation".into(),
        value: 12_000.0,
        currency: "usd".into(),
        ..Default::default()
    };
    let first = c
        .upsert_deal(req(
            "w",
            pb::UpsertDealRequest {
                deal: Some(d.clone()),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    let deal = first.deal.unwrap();
    assert_eq!(deal.stage, "negotiation");
    assert!(deal.closed_at.is_none());
    let won = pb::Deal {
        status: pb::DealStatus::Won as i32,
        ..d.clone()
    };
    let second = c
        .upsert_deal(req("w", pb::UpsertDealRequest { deal: Some(won) }))
        .await
        .unwrap()
        .into_inner();
    assert!(!second.created);
    let second = second.deal.unwrap();
    assert_eq!(second.id, deal.id);
    assert!(second.closed_at.is_some(), "closing stamps the time");
    let by_id = pb::Deal {
        id: deal.id,
        status: pb::DealStatus::Open as i32,
        ..d.clone()
    };
    let reopened = c
        .upsert_deal(req("w", pb::UpsertDealRequest { deal: Some(by_id) }))
        .await
        .unwrap()
        .into_inner()
        .deal
        .unwrap();
    assert!(reopened.closed_at.is_none());

    let err = c
        .upsert_deal(req(
            "w",
            pb::UpsertDealRequest {
                deal: Some(pb::Deal {
                    id: 999_999,
                    ..d.clone()
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .upsert_deal(req(
            "w",
            pb::UpsertDealRequest {
                deal: Some(pb::Deal {
                    contact_id: 0,
                    status: 0,
                    value: f64::NAN,
                    ..d
                }),
            },
        ))
        .await
        .unwrap_err();
    let v = violations(&err);
    for f in ["deal.contact", "deal.status", "deal.value"] {
        assert!(v.contains(&f.to_string()), "{f} in {v:?}");
    }
    for _ in 0..2 {
        let extra = pb::Deal {
            contact_id: a.id,
            status: pb::DealStatus::Lost as i32,
            ..Default::default()
        };
        c.upsert_deal(req("w", pb::UpsertDealRequest { deal: Some(extra) }))
            .await
            .unwrap();
    }
    let page = c
        .list_deals(req(
            "w",
            pb::ListDealsRequest {
                contact_id: a.id,
                page_size: 2,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.deals.len(), 2);
    let rest = c
        .list_deals(req(
            "w",
            pb::ListDealsRequest {
                contact_id: a.id,
                page_size: 2,
                page_token: page.next_page_token,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.deals.len(), 1);
}

#[tokio::test]
async fn custom_fields_and_labels_are_defined_per_workspace() {
    let app = TestApp::spawn().await;
    let mut c = app.contacts().await;
    define_field(&mut c, "w", "pets", pb::CustomFieldType::StringList).await;
    let err = c
        .define_custom_field(req(
            "w",
            pb::DefineCustomFieldRequest {
                field: Some(pb::CustomField {
                    key: "pets".into(),
                    r#type: pb::CustomFieldType::Number as i32,
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = c
        .define_custom_field(req(
            "w",
            pb::DefineCustomFieldRequest {
                field: Some(pb::CustomField {
                    key: "Bad Key".into(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violations(&err),
        vec!["field.key".to_string(), "field.type".to_string()]
    );
    let fields = c
        .list_custom_fields(req("w", pb::ListCustomFieldsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .fields;
    assert_eq!(
        fields.iter().map(|f| f.key.as_str()).collect::<Vec<_>>(),
        vec!["pets"]
    );

    let labels = c
        .list_labels(req("w", pb::ListLabelsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .labels;
    let names: Vec<&str> = labels.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "attendee",
            "customer",
            "donor",
            "lead",
            "member",
            "staff",
            "subscriber"
        ]
    );
    c.define_label(req(
        "w",
        pb::DefineLabelRequest {
            label: Some(pb::Label {
                name: "Near Business".into(),
                ..Default::default()
            }),
        },
    ))
    .await
    .unwrap();
    let err = c
        .define_label(req(
            "w",
            pb::DefineLabelRequest {
                label: Some(pb::Label {
                    name: "lead".into(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let with_label = pb::Contact {
        email: "nb@x.co".into(),
        labels: vec!["near_business".into()],
        ..Default::default()
    };
    create(&mut c, "w", with_label.clone()).await;
    // Another workspace has neither the label nor the field.
    let err = c
        .create_contact(req(
            "other",
            pb::CreateContactRequest {
                contact: Some(with_label),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["labels[0]".to_string()]);
    assert!(
        c.list_custom_fields(req("other", pb::ListCustomFieldsRequest {}))
            .await
            .unwrap()
            .into_inner()
            .fields
            .is_empty()
    );
}

#[tokio::test]
async fn merge_moves_everything_to_the_primary() {
    let app = TestApp::spawn().await;
    let mut c = app.contacts().await;
    let p = create(
        &mut c,
        "w",
        pb::Contact {
            email: "p@x.co".into(),
            tags: vec!["a".into()],
            ..Default::default()
        },
    )
    .await;
    let d1 = create(
        &mut c,
        "w",
        pb::Contact {
            email: "d1@x.co".into(),
            city: "Lima".into(),
            tags: vec!["b".into()],
            labels: vec!["donor".into()],
            ..Default::default()
        },
    )
    .await;
    let d2 = create(
        &mut c,
        "w",
        pb::Contact {
            external_id: "d2".into(),
            phone: "5551234".into(),
            ..Default::default()
        },
    )
    .await;
    record(
        &mut c,
        "w",
        vec![
            event("m1", d1.id, "donation", 1_700_000_000),
            event("m2", d2.id, "page_view", 1_700_000_001),
        ],
    )
    .await;
    c.upsert_deal(req(
        "w",
        pb::UpsertDealRequest {
            deal: Some(pb::Deal {
                contact_id: d2.id,
                status: 1,
                ..Default::default()
            }),
        },
    ))
    .await
    .unwrap();
    let r = c
        .merge_contacts(req(
            "w",
            pb::MergeContactsRequest {
                primary_id: p.id,
                duplicate_ids: vec![d1.id, d2.id],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.events_moved, r.deals_moved), (2, 1));
    let m = r.contact.unwrap();
    assert_eq!(m.id, p.id);
    assert_eq!(m.email, "p@x.co");
    assert_eq!(m.city, "Lima");
    assert_eq!(m.external_id, "d2", "keys of deleted duplicates move too");
    assert_eq!(m.phone, "5551234");
    assert_eq!(m.tags, vec!["a", "b"]);
    assert_eq!(m.labels, vec!["donor"]);
    for gone in [d1.id, d2.id] {
        assert_eq!(
            get(&mut c, "w", Key::Id(gone)).await.unwrap_err().code(),
            Code::NotFound
        );
    }
    let events = c
        .list_events(req(
            "w",
            pb::ListEventsRequest {
                contact: by_id(p.id),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 2);

    let err = c
        .merge_contacts(req(
            "w",
            pb::MergeContactsRequest {
                primary_id: p.id,
                duplicate_ids: vec![p.id],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["duplicate_ids[0]".to_string()]);
    let err = c
        .merge_contacts(req(
            "w",
            pb::MergeContactsRequest {
                primary_id: p.id,
                duplicate_ids: vec![d1.id],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn workspaces_never_see_each_other() {
    let app = TestApp::spawn().await;
    let mut c = app.contacts().await;
    let a = create(
        &mut c,
        "alpha",
        pb::Contact {
            external_id: "same".into(),
            email: "same@x.co".into(),
            ..Default::default()
        },
    )
    .await;
    // The same keys are free in another workspace.
    let b = create(
        &mut c,
        "beta",
        pb::Contact {
            external_id: "same".into(),
            email: "same@x.co".into(),
            ..Default::default()
        },
    )
    .await;
    assert_ne!(a.id, b.id);
    record(
        &mut c,
        "alpha",
        vec![event("shared-id", a.id, "purchase", 1_700_000_000)],
    )
    .await;
    // beta cannot record against alpha's contact id, and the event id is free there.
    let r = record(
        &mut c,
        "beta",
        vec![event("shared-id", a.id, "purchase", 1_700_000_000)],
    )
    .await;
    assert_eq!(r.results[0].outcome(), pb::EventOutcome::Failed);
    let r = record(
        &mut c,
        "beta",
        vec![event("shared-id", b.id, "purchase", 1_700_000_000)],
    )
    .await;
    assert_eq!(r.results[0].outcome(), pb::EventOutcome::Recorded);
    c.upsert_deal(req(
        "alpha",
        pb::UpsertDealRequest {
            deal: Some(pb::Deal {
                contact_id: a.id,
                status: 1,
                ..Default::default()
            }),
        },
    ))
    .await
    .unwrap();

    for key in [Key::Id(a.id), Key::ExternalId("nope".into())] {
        assert_eq!(
            get(&mut c, "beta", key).await.unwrap_err().code(),
            Code::NotFound
        );
    }
    assert_eq!(
        get(&mut c, "beta", Key::Email("same@x.co".into()))
            .await
            .unwrap()
            .id,
        b.id
    );
    let listed = c
        .list_contacts(req("beta", pb::ListContactsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.contacts.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![b.id]
    );
    let events = c
        .list_events(req(
            "beta",
            pb::ListEventsRequest {
                contact: by_id(a.id),
                ..Default::default()
            },
        ))
        .await;
    assert_eq!(events.unwrap_err().code(), Code::NotFound);
    let deals = c
        .list_deals(req("beta", pb::ListDealsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .deals;
    assert!(deals.is_empty());
    let deal_for_alpha = pb::Deal {
        contact_id: a.id,
        status: 1,
        ..Default::default()
    };
    let err = c
        .upsert_deal(req(
            "beta",
            pb::UpsertDealRequest {
                deal: Some(deal_for_alpha),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    for (id, etag) in [(a.id, "")] {
        let err = c
            .delete_contact(req(
                "beta",
                pb::DeleteContactRequest {
                    id,
                    etag: etag.into(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    let err = c
        .merge_contacts(req(
            "beta",
            pb::MergeContactsRequest {
                primary_id: b.id,
                duplicate_ids: vec![a.id],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let upd = pb::UpdateContactRequest {
        contact: Some(pb::Contact {
            id: a.id,
            city: "X".into(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["city".into()],
        }),
    };
    assert_eq!(
        c.update_contact(req("beta", upd)).await.unwrap_err().code(),
        Code::NotFound
    );
    // Importing into beta by alpha's external id creates nothing in alpha.
    let r = import(
        &mut c,
        "beta",
        vec![vec![pb::Contact {
            external_id: "same".into(),
            city: "Beta".into(),
            ..Default::default()
        }]],
    )
    .await;
    assert_eq!(r.results[0].contact_id, b.id);
    assert_eq!(get(&mut c, "alpha", Key::Id(a.id)).await.unwrap().city, "");
}
