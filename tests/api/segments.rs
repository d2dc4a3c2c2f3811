//! SegmentService end to end.

use segd::proto::{self as pb, segment_service_client::SegmentServiceClient};
use tonic::{Code, transport::Channel};

use crate::helpers::{TestApp, create_segment as create, filter, req, violations};

type Client = SegmentServiceClient<Channel>;

async fn redefine(
    c: &mut Client,
    ws: &str,
    id: i64,
    text: &str,
) -> Result<pb::Segment, tonic::Status> {
    let s = pb::Segment {
        id,
        definition: filter(text),
        ..Default::default()
    };
    let mask = prost_types::FieldMask {
        paths: vec!["definition".into()],
    };
    c.update_segment(req(
        ws,
        pb::UpdateSegmentRequest {
            segment: Some(s),
            update_mask: Some(mask),
        },
    ))
    .await
    .map(|r| r.into_inner().segment.unwrap())
}

fn by_name(n: &str) -> Option<pb::SegmentReference> {
    Some(pb::SegmentReference {
        r#ref: Some(pb::segment_reference::Ref::Name(n.into())),
    })
}

#[tokio::test]
async fn builtin_segments_exist_and_are_protected() {
    let app = TestApp::spawn().await;
    let mut c = app.segments().await;
    let all = c
        .list_segments(req("w", pb::ListSegmentsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .segments;
    let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "Leads",
            "Subscribers",
            "Customers",
            "Donors",
            "Attendees",
            "Members",
            "Staff",
            // The lifecycle rules: ordinary live segments with actions.
            "Rule: a purchase makes a customer",
            "Rule: a donation makes a donor",
            "Rule: attending makes an attendee",
            "Rule: an email opt-in makes a subscriber",
            "Rule: a membership purchase makes a member",
            "Status: one-time buyer",
            "Status: occasional buyer",
            "Status: regular buyer",
        ]
    );
    let (all, rules) = all.split_at(7);
    assert!(all.iter().all(|s| s.builtin && s.enabled == Some(true)));
    assert!(
        rules
            .iter()
            .all(|s| !s.builtin && s.live == Some(true) && s.actions.len() == 1)
    );
    let subs = &all[1];
    assert_eq!(
        subs.filter,
        "subscription(email, subscribed) OR subscription(sms, subscribed)"
    );
    let err = c
        .delete_segment(req(
            "w",
            pb::DeleteSegmentRequest {
                id: all[0].id,
                etag: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = redefine(&mut c, "w", all[0].id, "label:customer")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    // Disabling a built-in segment is allowed.
    let s = pb::Segment {
        id: all[0].id,
        enabled: Some(false),
        ..Default::default()
    };
    let mask = prost_types::FieldMask {
        paths: vec!["enabled".into()],
    };
    let off = c
        .update_segment(req(
            "w",
            pb::UpdateSegmentRequest {
                segment: Some(s),
                update_mask: Some(mask),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(off.segment.unwrap().enabled, Some(false));
}

#[tokio::test]
async fn create_get_update_delete_with_etags() {
    let app = TestApp::spawn().await;
    let mut c = app.segments().await;
    let s = create(&mut c, "w", "hot leads", "label:lead AND lead_score >= 80")
        .await
        .unwrap();
    assert_eq!(s.kind(), pb::SegmentKind::Dynamic);
    assert_eq!(s.filter, "label:lead AND lead_score >= 80");
    assert!(matches!(
        s.definition.as_ref().unwrap().kind,
        Some(pb::definition::Kind::Rule(_))
    ));
    let got = c
        .get_segment(req(
            "w",
            pb::GetSegmentRequest {
                segment: by_name("hot leads"),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap();
    assert_eq!(got, s);
    assert_eq!(
        create(&mut c, "w", "hot leads", "label:lead")
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );

    let updated = redefine(&mut c, "w", s.id, "label:lead AND lead_score >= 90")
        .await
        .unwrap();
    assert_eq!(updated.etag, "v2");
    let stale = pb::Segment {
        id: s.id,
        etag: s.etag.clone(),
        description: "x".into(),
        ..Default::default()
    };
    let err = c
        .update_segment(req(
            "w",
            pb::UpdateSegmentRequest {
                segment: Some(stale),
                update_mask: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    let err = c
        .delete_segment(req(
            "w",
            pb::DeleteSegmentRequest {
                id: s.id,
                etag: "v1".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    c.delete_segment(req(
        "w",
        pb::DeleteSegmentRequest {
            id: s.id,
            etag: "v2".into(),
        },
    ))
    .await
    .unwrap();
    let err = c
        .get_segment(req(
            "w",
            pb::GetSegmentRequest {
                segment: by_name("hot leads"),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn bad_definitions_name_their_paths() {
    let app = TestApp::spawn().await;
    let mut c = app.segments().await;
    let err = create(
        &mut c,
        "w",
        "bad",
        "label:lead AND colour = \"red\" AND age > \"old\"",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Text: the filter is the field; the description says where in the tree.
    assert_eq!(
        violations(&err),
        vec!["segment.definition.filter", "segment.definition.filter"]
    );
    assert!(
        err.message().contains("all.rules[1].field.field")
            && err.message().contains("all.rules[2].field.values[0]"),
        "{}",
        err.message()
    );
    // A tree: the converter's and the checker's problems name proto fields
    // the same way, under `rule`.
    let field = |name: &str, op: pb::Operator, values: Vec<pb::Value>| pb::Rule {
        kind: Some(pb::rule::Kind::Field(pb::FieldCondition {
            field: name.into(),
            op: op as i32,
            values,
            relative: None,
        })),
    };
    let text = |t: &str| pb::Value {
        kind: Some(pb::value::Kind::StringValue(t.into())),
    };
    let tree = |rules: Vec<pb::Rule>| {
        Some(pb::Definition {
            kind: Some(pb::definition::Kind::Rule(pb::Rule {
                kind: Some(pb::rule::Kind::All(pb::RuleList { rules })),
            })),
        })
    };
    let save = |definition| {
        req(
            "w",
            pb::CreateSegmentRequest {
                segment: Some(pb::Segment {
                    name: "tree".into(),
                    definition,
                    ..Default::default()
                }),
            },
        )
    };
    let err = c
        .create_segment(save(tree(vec![
            field("country", pb::Operator::Eq, vec![text("US")]),
            field("country", pb::Operator::Unspecified, vec![text("US")]),
        ])))
        .await
        .unwrap_err();
    assert_eq!(
        violations(&err),
        vec!["segment.definition.rule.all.rules[1].field.op"]
    );
    let err = c
        .create_segment(save(tree(vec![
            field("country", pb::Operator::Eq, vec![text("US")]),
            field("colour", pb::Operator::Eq, vec![text("red")]),
        ])))
        .await
        .unwrap_err();
    assert_eq!(
        violations(&err),
        vec!["segment.definition.rule.all.rules[1].field.field"]
    );
    let err = create(&mut c, "w", "bad", "label:lead AND\n  (country = ")
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["segment.definition.filter"]);
    assert!(
        err.message().contains("line 2, column 14"),
        "{}",
        err.message()
    );
    let err = c
        .validate_segment(req(
            "w",
            pb::ValidateSegmentRequest {
                definition: filter("event(purchase, last 0d)"),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["definition.filter"]);
    assert!(err.message().contains("event.window"), "{}", err.message());
    let err = c
        .create_segment(req(
            "w",
            pb::CreateSegmentRequest {
                segment: Some(pb::Segment {
                    name: "x".into(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["segment.definition"]);
}

#[tokio::test]
async fn reference_cycles_are_rejected_and_referenced_segments_kept() {
    let app = TestApp::spawn().await;
    let mut c = app.segments().await;
    let a = create(&mut c, "w", "a", "label:lead").await.unwrap();
    let b = create(&mut c, "w", "b", "segment(\"a\") AND tags:vip")
        .await
        .unwrap();
    assert_eq!(b.referenced_segment_ids, vec![a.id]);
    let d = create(&mut c, "w", "d", "segment(\"b\") OR label:donor")
        .await
        .unwrap();
    // a -> d -> b -> a
    let err = redefine(&mut c, "w", a.id, "segment(\"d\")")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("cycle"), "{}", err.message());
    let err = redefine(&mut c, "w", a.id, &format!("segment({})", a.id))
        .await
        .unwrap_err();
    assert!(err.message().contains("cycle"), "{}", err.message());
    // The failed updates changed nothing.
    let a_now = c
        .get_segment(req(
            "w",
            pb::GetSegmentRequest {
                segment: by_name("a"),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap();
    assert_eq!(a_now.filter, "label:lead");

    let err = c
        .delete_segment(req(
            "w",
            pb::DeleteSegmentRequest {
                id: a.id,
                etag: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("\"b\""), "{}", err.message());
    // Renaming a referenced segment keeps references working, by id.
    let s = pb::Segment {
        id: a.id,
        name: "a2".into(),
        ..Default::default()
    };
    c.update_segment(req(
        "w",
        pb::UpdateSegmentRequest {
            segment: Some(s),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into()],
            }),
        },
    ))
    .await
    .unwrap();
    let b_now = c
        .get_segment(req(
            "w",
            pb::GetSegmentRequest {
                segment: by_name("b"),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap();
    assert_eq!(b_now.filter, "segment(\"a2\") AND tags:vip");
    c.delete_segment(req(
        "w",
        pb::DeleteSegmentRequest {
            id: d.id,
            etag: String::new(),
        },
    ))
    .await
    .unwrap();
    c.delete_segment(req(
        "w",
        pb::DeleteSegmentRequest {
            id: b.id,
            etag: String::new(),
        },
    ))
    .await
    .unwrap();
    c.delete_segment(req(
        "w",
        pb::DeleteSegmentRequest {
            id: a.id,
            etag: String::new(),
        },
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn static_members_and_snapshots() {
    let app = TestApp::spawn().await;
    let mut contacts = app.contacts().await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let p = pb::Contact {
            email: format!("s{i}@x.co"),
            labels: if i < 2 { vec!["lead".into()] } else { vec![] },
            ..Default::default()
        };
        ids.push(
            contacts
                .create_contact(req("w", pb::CreateContactRequest { contact: Some(p) }))
                .await
                .unwrap()
                .into_inner()
                .contact
                .unwrap()
                .id,
        );
    }
    let mut c = app.segments().await;
    let list = c
        .create_segment(req(
            "w",
            pb::CreateSegmentRequest {
                segment: Some(pb::Segment {
                    name: "picked".into(),
                    kind: pb::SegmentKind::Static as i32,
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap();
    let added = c
        .add_segment_members(req(
            "w",
            pb::AddSegmentMembersRequest {
                segment_id: list.id,
                contact_ids: vec![ids[0], ids[3], ids[3]],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.added, 2);
    let err = c
        .add_segment_members(req(
            "w",
            pb::AddSegmentMembersRequest {
                segment_id: list.id,
                contact_ids: vec![ids[1], 999_999],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("999999"));
    let removed = c
        .remove_segment_members(req(
            "w",
            pb::RemoveSegmentMembersRequest {
                segment_id: list.id,
                contact_ids: vec![ids[3], ids[2]],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.removed, 1);
    let leads = c
        .get_segment(req(
            "w",
            pb::GetSegmentRequest {
                segment: by_name("Leads"),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap();
    let err = c
        .add_segment_members(req(
            "w",
            pb::AddSegmentMembersRequest {
                segment_id: leads.id,
                contact_ids: vec![ids[0]],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let snap = c
        .snapshot_segment(req(
            "w",
            pb::SnapshotSegmentRequest {
                source: by_name("Leads"),
                name: "leads on day one".into(),
                description: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(snap.member_count, 2);
    let s = snap.segment.unwrap();
    assert_eq!(
        (s.kind(), s.source_segment_id),
        (pb::SegmentKind::Snapshot, leads.id)
    );
    assert!(s.snapshot_at.is_some());
    let db = app.db().await;
    let frozen: Vec<i64> = db
        .query(
            "SELECT contact_id FROM segment_members WHERE segment_id = $1 ORDER BY contact_id",
            &[&s.id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(frozen, vec![ids[0], ids[1]]);
    // A segment can refer to static and snapshot segments.
    let both = create(
        &mut c,
        "w",
        "picked leads",
        "segment(\"picked\") AND segment(\"leads on day one\")",
    )
    .await
    .unwrap();
    assert_eq!(both.referenced_segment_ids, vec![list.id, s.id]);
}

#[tokio::test]
async fn explain_and_validate_return_sql_and_both_forms() {
    let app = TestApp::spawn().await;
    let mut c = app.segments().await;
    create(
        &mut c,
        "w",
        "newsletter-engaged",
        "subscription(email, subscribed) AND event(email_open, last 30d).count >= 3",
    )
    .await
    .unwrap();
    let text = "label:lead AND country IN (\"US\",\"CA\") AND age >= 25 AND tags:vip AND NOT label:customer\nAND event(purchase, last 90d).count >= 2 AND segment(\"newsletter-engaged\")";
    let v = c
        .validate_segment(req(
            "w",
            pb::ValidateSegmentRequest {
                definition: filter(text),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        v.filter,
        "label:lead AND country IN (\"US\", \"CA\") AND age >= 25 AND tags:vip AND NOT label:customer AND event(purchase, last 90d).count >= 2 AND segment(\"newsletter-engaged\")"
    );
    assert_eq!(v.referenced_segment_ids.len(), 1);
    // The tree form validates to the same.
    let again = c
        .validate_segment(req(
            "w",
            pb::ValidateSegmentRequest {
                definition: Some(pb::Definition {
                    kind: Some(pb::definition::Kind::Rule(v.rule.clone().unwrap())),
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.filter, v.filter);
    let e = c
        .explain_segment(req(
            "w",
            pb::ExplainSegmentRequest {
                target: Some(pb::explain_segment_request::Target::Definition(
                    filter(text).unwrap(),
                )),
                analyze: true,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        e.sql.starts_with(
            "SELECT c.id FROM contacts c LEFT JOIN (SELECT e.contact_id, e.workspace_id, count(*)"
        ),
        "{}",
        e.sql
    );
    assert!(e.sql.contains("GROUP BY e.contact_id"));
    assert_eq!(e.params[0], "1", "the workspace is $1");
    assert!(e.estimated_cost > 0.0);
    let plan: serde_json::Value = serde_json::from_str(&e.plan_json).unwrap();
    assert!(
        plan[0]["Plan"]["Actual Rows"].is_number(),
        "analyze ran the query"
    );
}

#[tokio::test]
async fn workspaces_cannot_reference_each_others_segments() {
    let app = TestApp::spawn().await;
    let mut c = app.segments().await;
    let a = create(&mut c, "alpha", "mine", "label:lead").await.unwrap();
    let err = create(&mut c, "beta", "theirs", &format!("segment({})", a.id))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .get_segment(req(
            "beta",
            pb::GetSegmentRequest {
                segment: Some(pb::SegmentReference {
                    r#ref: Some(pb::segment_reference::Ref::Id(a.id)),
                }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .delete_segment(req(
            "beta",
            pb::DeleteSegmentRequest {
                id: a.id,
                etag: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // beta has its own "mine" name free, and its own built-ins.
    create(&mut c, "beta", "mine", "label:customer")
        .await
        .unwrap();
}
