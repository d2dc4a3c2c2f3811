//! QueryService end to end: streams (snapshots, resume, cancellation,
//! splits), counts, previews, membership checks, breakdowns and overlaps.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use segd::proto::{self as pb, query_service_client::QueryServiceClient};
use tonic::{Code, transport::Channel};

use crate::helpers::{TestApp, create_segment, filter, inline, named, req, violations};

type Client = QueryServiceClient<Channel>;

fn stream_req(selector: Option<pb::SegmentSelector>) -> pb::StreamMembersRequest {
    pb::StreamMembersRequest {
        selector,
        ..Default::default()
    }
}

/// Reads a whole stream: ids, messages and the summary.
async fn read_all(
    c: &mut Client,
    ws: &str,
    r: pb::StreamMembersRequest,
) -> Result<(Vec<i64>, usize, pb::StreamSummary), tonic::Status> {
    let mut s = c.stream_members(req(ws, r)).await?.into_inner();
    let (mut ids, mut msgs, mut summary) = (Vec::new(), 0, None);
    while let Some(m) = s.next().await {
        let m = m?;
        msgs += 1;
        ids.extend(m.ids);
        ids.extend(m.contacts.iter().map(|c| c.id));
        if let Some(x) = m.summary {
            summary = Some(x);
        }
    }
    Ok((ids, msgs, summary.expect("a summary")))
}

#[tokio::test]
async fn streams_a_segment_in_batches_with_a_summary() {
    let app = TestApp::spawn().await;
    let all = app.bulk_contacts("w", 30_000).await;
    let leads: Vec<i64> = all
        .iter()
        .copied()
        .enumerate()
        .filter(|(i, _)| (i + 1) % 3 == 0)
        .map(|(_, id)| id)
        .collect();
    let mut q = app.query().await;
    let (ids, msgs, summary) = read_all(&mut q, "w", stream_req(named("Leads")))
        .await
        .unwrap();
    assert_eq!(ids, leads, "every lead, in id order");
    assert!(msgs > 3, "batched into several messages, got {msgs}");
    assert_eq!(summary.total_rows, leads.len() as i64);
    assert!(!summary.snapshot.is_empty());
    // Contacts with a read mask carry only the masked fields.
    let mut r = stream_req(inline("country = \"DE\""));
    r.read_mask = Some(prost_types::FieldMask {
        paths: vec!["country".into(), "external_id".into()],
    });
    r.limit = 5;
    let mut s = q.stream_members(req("w", r)).await.unwrap().into_inner();
    let first = s.next().await.unwrap().unwrap();
    assert_eq!(first.contacts.len(), 5);
    assert!(
        first
            .contacts
            .iter()
            .all(|c| c.country == "DE" && c.external_id.starts_with('g') && c.labels.is_empty())
    );
    // A count agrees.
    let n = q
        .count_members(req(
            "w",
            pb::CountMembersRequest {
                selector: named("Leads"),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(n, leads.len() as i64);
}

#[tokio::test]
async fn a_stream_reads_one_snapshot_while_writes_continue() {
    let app = TestApp::spawn().await;
    let all = app.bulk_contacts("w", 60_000).await;
    let before: BTreeSet<i64> = all
        .iter()
        .copied()
        .enumerate()
        .filter(|(i, _)| (i + 1) % 3 == 0)
        .map(|(_, id)| id)
        .collect();
    let mut q = app.query().await;
    let mut s = q
        .stream_members(req("w", stream_req(named("Leads"))))
        .await
        .unwrap()
        .into_inner();
    let mut got: Vec<i64> = s.next().await.unwrap().unwrap().ids;
    assert!(!got.is_empty() && (got.len() as usize) < before.len());
    // Meanwhile: new leads appear, unread leads are deleted or stop being leads.
    let db = app.db().await;
    let ws = app.state.workspaces.resolve("w").await.unwrap();
    db.execute(
        "INSERT INTO contacts (workspace_id, labels) SELECT $1, ARRAY['lead'] FROM generate_series(1, 500)",
        &[&ws.0],
    )
    .await
    .unwrap();
    let tail: Vec<i64> = before.iter().rev().take(300).copied().collect();
    db.execute(
        "DELETE FROM contacts WHERE id = ANY($1)",
        &[&tail[..150].to_vec()],
    )
    .await
    .unwrap();
    db.execute(
        "UPDATE contacts SET labels = '{}' WHERE id = ANY($1)",
        &[&tail[150..].to_vec()],
    )
    .await
    .unwrap();
    while let Some(m) = s.next().await {
        got.extend(m.unwrap().ids);
    }
    assert_eq!(
        got.into_iter().collect::<BTreeSet<_>>(),
        before,
        "exactly the segment as of the stream's start"
    );
}

#[tokio::test]
async fn resuming_continues_after_the_last_id_without_duplicates_or_gaps() {
    let app = TestApp::spawn().await;
    app.bulk_contacts("w", 20_000).await;
    let mut q = app.query().await;
    let (full, _, _) = read_all(
        &mut q,
        "w",
        stream_req(inline("country IN (\"US\", \"CA\")")),
    )
    .await
    .unwrap();
    // Read two messages, then drop the stream and resume from the last token.
    let mut s = q
        .stream_members(req("w", stream_req(inline("country IN (\"US\", \"CA\")"))))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    let mut token = String::new();
    for _ in 0..2 {
        let m = s.next().await.unwrap().unwrap();
        got.extend(m.ids);
        token = m.resume_token;
    }
    drop(s);
    let mut r = stream_req(inline("country IN (\"US\", \"CA\")"));
    r.resume_token = token.clone();
    let (rest, _, summary) = read_all(&mut q, "w", r).await.unwrap();
    assert_eq!(summary.total_rows as usize, rest.len());
    got.extend(rest);
    assert_eq!(got, full);
    // A token only resumes its own query.
    let mut other = stream_req(inline("country = \"DE\""));
    other.resume_token = token;
    let err = read_all(&mut q, "w", other).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let mut garbage = stream_req(named("Leads"));
    garbage.resume_token = "garbage".into();
    assert_eq!(
        violations(&read_all(&mut q, "w", garbage).await.unwrap_err()),
        vec!["resume_token"]
    );
}

/// A stream of whole contacts over a client with default (small) HTTP/2
/// windows, so that a stalled reader really holds the query back rather than
/// letting the server finish into buffers.
async fn stalled_stream(
    app: &TestApp,
    timeout: Option<Duration>,
) -> tonic::Streaming<pb::StreamMembersResponse> {
    let mut q = QueryServiceClient::new(app.channel().await);
    let mut r = stream_req(inline("country IN (\"US\", \"CA\", \"DE\")"));
    r.read_mask = Some(prost_types::FieldMask {
        paths: vec!["external_id".into()],
    });
    let mut r = req("w", r);
    if let Some(t) = timeout {
        r.set_timeout(t);
    }
    let mut s = q.stream_members(r).await.unwrap().into_inner();
    let first = s.next().await.unwrap().unwrap();
    assert!(!first.contacts.is_empty());
    s
}

/// Stream sessions of this test's database that are inside a query or a
/// transaction.
async fn active_streams(app: &TestApp) -> i64 {
    app.db()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
               AND application_name = 'segd-stream' AND state <> 'idle'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_query() {
    let app = TestApp::spawn().await;
    app.bulk_contacts("w", 300_000).await;
    let s = stalled_stream(&app, None).await;
    // The reader stalls: the query is still on the server, held back by backpressure.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        active_streams(&app).await,
        1,
        "the query waits for the reader"
    );
    drop(s);
    let mut gone = false;
    for _ in 0..50 {
        if active_streams(&app).await == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the query is still running 5 s after the client left");
    // The pool still works.
    let mut q = app.query().await;
    let n = q
        .count_members(req(
            "w",
            pb::CountMembersRequest {
                selector: named("Leads"),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(n, 100_000);
}

#[tokio::test]
async fn an_id_stream_session_ends_when_its_client_leaves() {
    let app = TestApp::spawn().await;
    // More ids than the channel, HTTP/2 and socket buffers hold together.
    app.bulk_contacts("w", 1_000_000).await;
    let sessions = || async {
        app.db()
            .await
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'segd-stream' AND datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let mut q = QueryServiceClient::new(app.channel().await);
    let mut s = q
        .stream_members(req(
            "w",
            stream_req(inline("country IN (\"US\", \"CA\", \"DE\")")),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!s.next().await.unwrap().unwrap().ids.is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sessions().await, 1, "the stalled stream holds its session");
    drop(s);
    let mut closed = false;
    for _ in 0..50 {
        if sessions().await == 0 {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed, "the stream's session outlived its client by 5 s");
}

#[tokio::test]
async fn a_deadline_cancels_the_query_too() {
    let app = TestApp::spawn().await;
    app.bulk_contacts("w", 300_000).await;
    // A generous deadline: the first batch arrives well within it on a
    // loaded machine; then the reader stops and the deadline passes.
    let _s = stalled_stream(&app, Some(Duration::from_secs(6))).await;
    let mut gone = false;
    for _ in 0..600 {
        if active_streams(&app).await == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the query outlived the deadline by a minute");
}

#[tokio::test]
async fn splits_are_disjoint_complete_and_stable() {
    let app = TestApp::spawn().await;
    app.bulk_contacts("w", 3_000).await;
    let mut q = app.query().await;
    let (full, _, _) = read_all(&mut q, "w", stream_req(named("Leads")))
        .await
        .unwrap();
    let bucket = |index, salt: &str| pb::Sample {
        kind: Some(pb::sample::Kind::Bucket(pb::Bucket { index, count: 3 })),
        salt: salt.into(),
    };
    let mut union = BTreeSet::new();
    let mut sizes = Vec::new();
    for i in 0..3 {
        let mut r = stream_req(named("Leads"));
        r.sample = Some(bucket(i, "spring"));
        let (ids, _, _) = read_all(&mut q, "w", r.clone()).await.unwrap();
        let (again, _, _) = read_all(&mut q, "w", r).await.unwrap();
        assert_eq!(ids, again, "stable across calls");
        sizes.push(ids.len());
        for id in ids {
            assert!(union.insert(id), "{id} is in two buckets");
        }
    }
    assert_eq!(
        union.into_iter().collect::<Vec<_>>(),
        full,
        "the buckets cover the segment"
    );
    assert!(sizes.iter().all(|n| *n > 250 && *n < 420), "{sizes:?}");
    // Another salt splits differently; a fraction keeps about that share.
    let mut r = stream_req(named("Leads"));
    r.sample = Some(bucket(0, "autumn"));
    let (other, _, _) = read_all(&mut q, "w", r).await.unwrap();
    assert_ne!(other.len(), 0);
    let mut r = stream_req(named("Leads"));
    r.sample = Some(bucket(0, "spring"));
    assert_ne!(read_all(&mut q, "w", r).await.unwrap().0, other);
    let frac = pb::Sample {
        kind: Some(pb::sample::Kind::Fraction(0.1)),
        salt: "x".into(),
    };
    let n = q
        .count_members(req(
            "w",
            pb::CountMembersRequest {
                max_staleness: None,
                selector: named("Leads"),
                sample: Some(frac),
                allow_expensive: false,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .count;
    assert!((50..150).contains(&n), "{n}");
    let bad = pb::Sample {
        kind: Some(pb::sample::Kind::Bucket(pb::Bucket { index: 3, count: 3 })),
        salt: String::new(),
    };
    let mut r = stream_req(named("Leads"));
    r.sample = Some(bad);
    assert_eq!(
        violations(&read_all(&mut q, "w", r).await.unwrap_err()),
        vec!["sample.bucket"]
    );
}

/// A disabled segment is refused also when read through another segment
/// or an inline definition, naming it; the sweep of CheckMembership leaves
/// out what cannot be queried.
#[tokio::test]
async fn segments_reading_a_disabled_segment_are_refused_naming_it() {
    let app = TestApp::spawn().await;
    let ids = app.bulk_contacts("w", 30).await;
    let mut seg = app.segments().await;
    let canadians = create_segment(&mut seg, "w", "canadians", "country = \"CA\"")
        .await
        .unwrap();
    create_segment(
        &mut seg,
        "w",
        "canadian leads",
        "segment(\"canadians\") AND label:lead",
    )
    .await
    .unwrap();
    seg.update_segment(req(
        "w",
        pb::UpdateSegmentRequest {
            segment: Some(pb::Segment {
                id: canadians.id,
                enabled: Some(false),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["enabled".into()],
            }),
        },
    ))
    .await
    .unwrap();
    let mut q = app.query().await;
    let refused = |err: tonic::Status| {
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("\"canadians\""), "{}", err.message());
    };
    for selector in [
        named("canadian leads"),
        inline("segment(\"canadians\") OR tags:x"),
    ] {
        refused(
            q.count_members(req(
                "w",
                pb::CountMembersRequest {
                    selector: selector.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err(),
        );
        refused(
            read_all(&mut q, "w", stream_req(selector))
                .await
                .unwrap_err(),
        );
    }
    let check = |only: Vec<i64>| {
        req(
            "w",
            pb::CheckMembershipRequest {
                contact: Some(pb::ContactRef {
                    key: Some(pb::contact_ref::Key::Id(ids[0])),
                }),
                segment_ids: only,
                ..Default::default()
            },
        )
    };
    let all = q
        .check_membership(check(vec![]))
        .await
        .unwrap()
        .into_inner();
    assert!(
        all.segments
            .iter()
            .all(|s| s.segment_name != "canadians" && s.segment_name != "canadian leads")
    );
    let leads_of_canada = seg
        .get_segment(req(
            "w",
            pb::GetSegmentRequest {
                segment: Some(pb::SegmentReference {
                    r#ref: Some(pb::segment_reference::Ref::Name("canadian leads".into())),
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap();
    refused(
        q.check_membership(check(vec![leads_of_canada.id]))
            .await
            .unwrap_err(),
    );
}

#[tokio::test]
async fn disabled_segments_and_expensive_definitions_are_refused() {
    let app = TestApp::spawn_with(segd::api::Limits {
        max_query_cost: 1.0,
        ..Default::default()
    })
    .await;
    app.bulk_contacts("w", 100).await;
    let mut seg = app.segments().await;
    let s = seg
        .create_segment(req(
            "w",
            pb::CreateSegmentRequest {
                segment: Some(pb::Segment {
                    name: "low quality".into(),
                    definition: filter("status = poor"),
                    enabled: Some(false),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap();
    let mut q = app.query().await;
    let err = read_all(&mut q, "w", stream_req(named("low quality")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = q
        .count_members(req(
            "w",
            pb::CountMembersRequest {
                selector: named("low quality"),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let on = pb::Segment {
        id: s.id,
        enabled: Some(true),
        ..Default::default()
    };
    seg.update_segment(req(
        "w",
        pb::UpdateSegmentRequest {
            segment: Some(on),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["enabled".into()],
            }),
        },
    ))
    .await
    .unwrap();
    q.count_members(req(
        "w",
        pb::CountMembersRequest {
            selector: named("low quality"),
            ..Default::default()
        },
    ))
    .await
    .unwrap();

    // Inline definitions over the (tiny) cost ceiling need allow_expensive.
    let err = q
        .count_members(req(
            "w",
            pb::CountMembersRequest {
                selector: inline("label:lead"),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("estimated cost"),
        "{}",
        err.message()
    );
    let ok = q
        .count_members(req(
            "w",
            pb::CountMembersRequest {
                selector: inline("label:lead"),
                allow_expensive: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().count, 33);
}

#[tokio::test]
async fn preview_counts_samples_and_times() {
    let app = TestApp::spawn().await;
    app.bulk_contacts("w", 500).await;
    let mut q = app.query().await;
    let p = q
        .preview_segment(req(
            "w",
            pb::PreviewSegmentRequest {
                max_staleness: None,
                selector: inline("country = \"CA\""),
                sample_size: 5,
                read_mask: Some(prost_types::FieldMask {
                    paths: vec!["country".into()],
                }),
                allow_expensive: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.count, 167);
    assert_eq!(p.sample.len(), 5);
    assert!(
        p.sample
            .iter()
            .all(|c| c.country == "CA" && c.external_id.is_empty())
    );
    assert!(p.estimated_cost > 0.0 && p.elapsed_ms > 0.0);
    let err = q
        .preview_segment(req(
            "w",
            pb::PreviewSegmentRequest {
                selector: inline("nope = 1"),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["selector.definition.filter"]);
    assert!(err.message().contains("field.field"), "{}", err.message());
}

#[tokio::test]
async fn check_membership_explains_each_condition() {
    let app = TestApp::spawn().await;
    let mut contacts = app.contacts().await;
    let ann = contacts
        .create_contact(req(
            "w",
            pb::CreateContactRequest {
                contact: Some(pb::Contact {
                    email: "ann@x.co".into(),
                    labels: vec!["lead".into()],
                    country: "US".into(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap();
    let ev = pb::Event {
        event_id: "p1".into(),
        contact: Some(pb::ContactRef {
            key: Some(pb::contact_ref::Key::Id(ann.id)),
        }),
        r#type: "purchase".into(),
        ..Default::default()
    };
    crate::helpers::record_all(&mut contacts, "w", vec![vec![ev]])
        .await
        .unwrap();
    let mut seg = app.segments().await;
    let mk = |name: &str, text: &str| pb::CreateSegmentRequest {
        segment: Some(pb::Segment {
            name: name.into(),
            definition: filter(text),
            ..Default::default()
        }),
    };
    let hot = seg
        .create_segment(req(
            "w",
            mk(
                "us leads who bought",
                "label:lead AND country = \"US\" AND event(purchase).count >= 1",
            ),
        ))
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap();
    let no = seg
        .create_segment(req(
            "w",
            mk("canadian or donors", "country = \"CA\" OR NOT label:lead"),
        ))
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap();
    let mut q = app.query().await;
    let r = q
        .check_membership(req(
            "w",
            pb::CheckMembershipRequest {
                contact: Some(pb::ContactRef {
                    key: Some(pb::contact_ref::Key::Email("ann@x.co".into())),
                }),
                segment_ids: vec![],
                explain: true,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.contact_id, ann.id);
    let by = |id: i64| r.segments.iter().find(|s| s.segment_id == id).unwrap();
    assert!(by(hot.id).member);
    assert!(!by(no.id).member);
    let leads = r
        .segments
        .iter()
        .find(|s| s.segment_name == "Leads")
        .unwrap();
    assert!(leads.member);
    assert_eq!(
        r.segments.len(),
        17,
        "7 built-ins, 8 lifecycle rules and 2 of ours"
    );
    let conds: Vec<(&str, &str, bool)> = by(no.id)
        .conditions
        .iter()
        .map(|c| (c.path.as_str(), c.condition.as_str(), c.held))
        .collect();
    assert_eq!(
        conds,
        vec![
            ("", "country = \"CA\" OR NOT label:lead", false),
            ("any.rules[0]", "country = \"CA\"", false),
            ("any.rules[1]", "NOT label:lead", false),
            ("any.rules[1].not", "label:lead", true),
        ]
    );
    assert!(by(hot.id).conditions.iter().all(|c| c.held));
    // Without explain: answers only; a listed subset only.
    let r = q
        .check_membership(req(
            "w",
            pb::CheckMembershipRequest {
                contact: Some(pb::ContactRef {
                    key: Some(pb::contact_ref::Key::Id(ann.id)),
                }),
                segment_ids: vec![no.id],
                explain: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.segments.len(), 1);
    assert!(r.segments[0].conditions.is_empty());
    let err = q
        .check_membership(req(
            "w",
            pb::CheckMembershipRequest {
                contact: Some(pb::ContactRef {
                    key: Some(pb::contact_ref::Key::Id(999_999)),
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn breakdowns_and_overlaps_match_hand_counts() {
    let app = TestApp::spawn().await;
    let mut contacts = app.contacts().await;
    // 6 rejected leads: 3 too_expensive (2 US, 1 CA), 2 competitor (US), 1 with no reason (DE).
    let rows = [
        ("too_expensive", "US", vec!["lead"]),
        ("too_expensive", "US", vec!["lead", "donor"]),
        ("too_expensive", "CA", vec!["lead"]),
        ("competitor", "US", vec!["lead"]),
        ("competitor", "US", vec!["lead", "customer"]),
        ("", "DE", vec!["lead"]),
        ("too_expensive", "US", vec!["customer"]),
    ];
    let batch: Vec<pb::Contact> = rows
        .iter()
        .enumerate()
        .map(|(i, (reason, country, labels))| pb::Contact {
            external_id: format!("r{i}"),
            status: "rejected".into(),
            status_reason: (*reason).into(),
            country: (*country).into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .collect();
    crate::helpers::import_all(&mut contacts, "w", vec![batch])
        .await
        .unwrap();
    let mut q = app.query().await;
    let b = q
        .breakdown_segment(req(
            "w",
            pb::BreakdownSegmentRequest {
                max_staleness: None,
                selector: named("Leads"),
                group_by: vec!["status_reason".into()],
                top_n: 2,
                allow_expensive: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(Vec<String>, i64)> = b.rows.iter().map(|r| (r.keys.clone(), r.count)).collect();
    assert_eq!(
        got,
        vec![
            (vec!["too_expensive".to_string()], 3),
            (vec!["competitor".to_string()], 2)
        ]
    );
    assert_eq!((b.other_count, b.group_count, b.total), (1, 3, 6));
    let b = q
        .breakdown_segment(req(
            "w",
            pb::BreakdownSegmentRequest {
                max_staleness: None,
                selector: named("Leads"),
                group_by: vec!["status_reason".into(), "country".into()],
                top_n: 10,
                allow_expensive: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(Vec<String>, Vec<bool>, i64)> = b
        .rows
        .iter()
        .map(|r| (r.keys.clone(), r.missing.clone(), r.count))
        .collect();
    let s = |a: &str, b: &str| vec![a.to_string(), b.to_string()];
    assert_eq!(
        got,
        vec![
            (s("competitor", "US"), vec![false, false], 2),
            (s("too_expensive", "US"), vec![false, false], 2),
            (s("", "DE"), vec![true, false], 1),
            (s("too_expensive", "CA"), vec![false, false], 1),
        ]
    );
    let b = q
        .breakdown_segment(req(
            "w",
            pb::BreakdownSegmentRequest {
                max_staleness: None,
                selector: inline("status = rejected"),
                group_by: vec!["labels".into()],
                top_n: 10,
                allow_expensive: false,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(String, i64)> = b
        .rows
        .iter()
        .map(|r| (r.keys[0].clone(), r.count))
        .collect();
    assert_eq!(
        got,
        vec![
            ("lead".into(), 6),
            ("customer".into(), 2),
            ("donor".into(), 1)
        ]
    );
    let err = q
        .breakdown_segment(req(
            "w",
            pb::BreakdownSegmentRequest {
                selector: named("Leads"),
                group_by: vec!["nope".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["group_by[0]"]);

    // Leads is live: the overlap reads its stored members, current once
    // the maintainer has applied the import.
    app.drained().await;
    let mut seg = app.segments().await;
    let mk = |name: &str, text: &str| pb::CreateSegmentRequest {
        segment: Some(pb::Segment {
            name: name.into(),
            definition: filter(text),
            ..Default::default()
        }),
    };
    let us = seg
        .create_segment(req("w", mk("us", "country = \"US\"")))
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap();
    let exp = seg
        .create_segment(req("w", mk("expensive", "status_reason = too_expensive")))
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap();
    let leads = seg
        .get_segment(req(
            "w",
            pb::GetSegmentRequest {
                segment: Some(pb::SegmentReference {
                    r#ref: Some(pb::segment_reference::Ref::Name("Leads".into())),
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap();
    let o = q
        .overlap_segments(req(
            "w",
            pb::OverlapSegmentsRequest {
                max_staleness: None,
                segment_ids: vec![leads.id, us.id, exp.id],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let sizes: Vec<(Vec<i64>, i64)> = o
        .segments
        .iter()
        .map(|x| (x.segment_ids.clone(), x.count))
        .collect();
    assert_eq!(
        sizes,
        vec![(vec![leads.id], 6), (vec![us.id], 5), (vec![exp.id], 4)]
    );
    let inter: std::collections::HashMap<Vec<i64>, i64> = o
        .intersections
        .iter()
        .map(|x| (x.segment_ids.clone(), x.count))
        .collect();
    let key = |v: &[i64]| {
        let mut v = v.to_vec();
        v.sort();
        inter[&v]
    };
    assert_eq!(key(&[leads.id, us.id]), 4);
    assert_eq!(key(&[leads.id, exp.id]), 3);
    assert_eq!(key(&[us.id, exp.id]), 3);
    assert_eq!(key(&[leads.id, us.id, exp.id]), 2);
    assert_eq!(o.union_count, 7);
    let err = q
        .overlap_segments(req(
            "w",
            pb::OverlapSegmentsRequest {
                max_staleness: None,
                segment_ids: vec![us.id],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(violations(&err), vec!["segment_ids"]);
}
