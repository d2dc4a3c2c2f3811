//! SegmentMetrics: counts and rates against a hand computation, intervals
//! and p-values against Python's `statistics`, splits against
//! StreamMembers' buckets, retention read back from the change feed, and
//! the workspace's event types.

use std::process::Command;

use chrono::{DateTime, Duration, Utc};
use segd::api::convert::ts;
use segd::proto as pb;
use tonic::Code;

use crate::helpers::*;
use crate::live::create_live;

/// A contact `email` in `country` with `tags`; returns its id.
async fn contact(app: &TestApp, ws: &str, email: &str, country: &str, tags: &[&str]) -> i64 {
    let c = pb::Contact {
        email: email.into(),
        country: country.into(),
        tags: tags.iter().map(|t| (*t).to_string()).collect(),
        ..Default::default()
    };
    create_contact_id(app, ws, c).await
}

fn event(id: i64, ty: &str, at: DateTime<Utc>, value: Option<f64>) -> pb::Event {
    pb::Event {
        contact: Some(pb::ContactRef {
            key: Some(pb::contact_ref::Key::Id(id)),
        }),
        r#type: ty.into(),
        occurred_at: Some(ts(at)),
        value,
        ..Default::default()
    }
}

fn ask(
    selectors: Vec<Option<pb::SegmentSelector>>,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
) -> pb::SegmentMetricsRequest {
    pb::SegmentMetricsRequest {
        selectors: selectors.into_iter().flatten().collect(),
        start_time: Some(ts(from)),
        end_time: Some(ts(to)),
        ..Default::default()
    }
}

async fn metrics(
    app: &TestApp,
    ws: &str,
    r: pb::SegmentMetricsRequest,
) -> Result<pb::SegmentMetricsResponse, tonic::Status> {
    app.query()
        .await
        .segment_metrics(req(ws, r))
        .await
        .map(tonic::Response::into_inner)
}

/// Wilson intervals and two-proportion p-values computed by Python's
/// `statistics.NormalDist`, independently of segd: for each (x1, n1, x2,
/// n2), the interval of x1/n1, that of x2/n2, and the p-value.
fn python(cases: &[(i64, i64, i64, i64)]) -> Vec<[f64; 5]> {
    let script = r"
import json, math, sys
from statistics import NormalDist
N = NormalDist()
z = N.inv_cdf(0.975)
def wilson(x, n):
    p = x / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [max(0.0, c - h), min(1.0, c + h)]
def p_value(x1, n1, x2, n2):
    p = (x1 + x2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    return 1.0 if se == 0 else 2 * (1 - N.cdf(abs((x2 / n2 - x1 / n1) / se)))
out = [wilson(a, b) + wilson(c, d) + [p_value(a, b, c, d)] for a, b, c, d in json.load(sys.stdin)]
print(json.dumps(out))
";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let input = serde_json::to_vec(cases).unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn rate(r: &Option<pb::Rate>) -> (i64, i64, f64) {
    let r = r.as_ref().expect("the rate is set");
    (r.successes, r.trials, r.value)
}

#[tokio::test]
async fn segment_metrics_match_a_hand_computation() {
    let app = TestApp::spawn().await;
    let ws = "metrics";
    let now = app.state.clock.now();
    let day = |d: i64| now - Duration::days(d);
    let (mut us, mut fr) = (Vec::new(), Vec::new());
    for i in 0..10 {
        us.push(contact(&app, ws, &format!("u{i}@x.co"), "US", &[]).await);
    }
    for i in 0..8 {
        fr.push(contact(&app, ws, &format!("f{i}@x.co"), "FR", &[]).await);
    }
    // The window: 10 days ago up to 1 day ago.
    let window = (day(10), day(1));
    let events = vec![
        // US: u0 opens twice and clicks, u1 opens and clicks, u2 and u3
        // open, u4 clicks without an open: 4 openers, 3 clickers, 2 who
        // did both, 5 opens, 3 clicks.
        event(us[0], "email_open", day(9), None),
        event(us[0], "email_open", day(8), None),
        event(us[0], "email_click", day(8), None),
        event(us[1], "email_open", day(7), None),
        event(us[1], "email_click", day(7), None),
        event(us[2], "email_open", day(6), None),
        event(us[3], "email_open", day(6), None),
        event(us[4], "email_click", day(5), None),
        // u0 buys twice (10 + 30), u5 once (20): 2 purchasers, 3 orders, 1
        // repeat purchaser, revenue 60.
        event(us[0], "purchase", day(5), Some(10.0)),
        event(us[0], "purchase", day(4), Some(30.0)),
        event(us[5], "purchase", day(3), Some(20.0)),
        // Outside the window or not counted: before it, at its (excluded)
        // end, and a page view.
        event(us[6], "purchase", day(20), Some(99.0)),
        event(us[7], "email_open", day(1), None),
        event(us[8], "page_view", day(5), None),
        // FR: one opener, no purchase.
        event(fr[0], "email_open", day(2), None),
    ];
    record_all(&mut app.contacts().await, ws, vec![events])
        .await
        .unwrap();

    let r = metrics(
        &app,
        ws,
        ask(
            vec![inline("country = \"US\""), inline("country = \"FR\"")],
            window,
        ),
    )
    .await
    .unwrap();
    assert_eq!(r.groups.len(), 2);
    let g = &r.groups[0];
    assert_eq!(
        (g.members, g.openers, g.clickers, g.opens, g.clicks),
        (10, 4, 3, 5, 3)
    );
    assert_eq!((g.purchasers, g.orders, g.repeat_purchasers), (2, 3, 1));
    assert_eq!(g.revenue, 60.0);
    assert_eq!(rate(&g.open_rate), (4, 10, 0.4));
    assert_eq!(rate(&g.click_rate), (3, 10, 0.3));
    assert_eq!(rate(&g.click_to_open_rate), (2, 4, 0.5));
    assert_eq!(rate(&g.conversion_rate), (2, 10, 0.2));
    assert_eq!(rate(&g.repeat_purchase_rate), (1, 2, 0.5));
    assert_eq!((g.revenue_per_member, g.average_order_value), (6.0, 20.0));
    // Not a live segment: no retention.
    assert!(g.retention.is_none() && !g.from_live);
    let f = &r.groups[1];
    assert_eq!((f.members, f.openers, f.purchasers), (8, 1, 0));
    assert_eq!(rate(&f.open_rate), (1, 8, 0.125));
    // No purchasers: no repeat-purchase rate, and no comparison of it.
    assert!(f.repeat_purchase_rate.is_none() && f.average_order_value == 0.0);

    // Intervals and p-values against Python's, computed independently.
    let cases = [(4, 10, 1, 8), (3, 10, 0, 8), (2, 4, 0, 1), (2, 10, 0, 8)];
    let want = python(&cases);
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    let metrics = [
        (pb::Metric::OpenRate, &g.open_rate, &f.open_rate),
        (pb::Metric::ClickRate, &g.click_rate, &f.click_rate),
        (
            pb::Metric::ClickToOpenRate,
            &g.click_to_open_rate,
            &f.click_to_open_rate,
        ),
        (
            pb::Metric::ConversionRate,
            &g.conversion_rate,
            &f.conversion_rate,
        ),
    ];
    for ((metric, a, b), w) in metrics.iter().zip(&want) {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        assert!(
            close(a.ci_lower, w[0]) && close(a.ci_upper, w[1]),
            "{metric:?} {a:?} {w:?}"
        );
        assert!(
            close(b.ci_lower, w[2]) && close(b.ci_upper, w[3]),
            "{metric:?} {b:?} {w:?}"
        );
        let c = r
            .comparisons
            .iter()
            .find(|c| c.metric == *metric as i32)
            .expect("compared");
        assert_eq!(c.group, 1);
        assert!(close(c.difference, b.value - a.value));
        assert!(
            close(c.p_value, w[4]),
            "{metric:?}: {} against {}",
            c.p_value,
            w[4]
        );
    }
    // Repeat purchases are not compared: FR has no purchaser.
    let compared: Vec<i32> = r.comparisons.iter().map(|c| c.metric).collect();
    assert_eq!(
        compared,
        [
            pb::Metric::OpenRate as i32,
            pb::Metric::ClickRate as i32,
            pb::Metric::ClickToOpenRate as i32,
            pb::Metric::ConversionRate as i32
        ]
    );
}

#[tokio::test]
async fn a_split_measures_the_buckets_stream_members_sends() {
    let app = TestApp::spawn().await;
    let ws = "split";
    let ids = app.bulk_contacts(ws, 300).await;
    let now = app.state.clock.now();
    // Every seventh contact buys, in the window.
    let buyers: Vec<i64> = ids.iter().copied().step_by(7).collect();
    let events = buyers
        .iter()
        .map(|id| event(*id, "purchase", now - Duration::days(2), Some(5.0)))
        .collect();
    record_all(&mut app.contacts().await, ws, vec![events])
        .await
        .unwrap();
    let us = "country = \"US\"";
    let mut r = ask(vec![inline(us)], (now - Duration::days(7), now));
    r.split = Some(pb::MetricsSplit {
        count: 3,
        salt: "spring".into(),
    });
    let got = metrics(&app, ws, r).await.unwrap();
    assert_eq!(got.groups.len(), 3);
    let mut q = app.query().await;
    for (i, g) in got.groups.iter().enumerate() {
        assert_eq!(g.bucket, i as i32);
        let sample = pb::Sample {
            kind: Some(pb::sample::Kind::Bucket(pb::Bucket {
                index: i as i32,
                count: 3,
            })),
            salt: "spring".into(),
        };
        let mut s = q
            .stream_members(req(
                ws,
                pb::StreamMembersRequest {
                    selector: inline(us),
                    sample: Some(sample),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let mut members = Vec::new();
        while let Some(m) = s.message().await.unwrap() {
            members.extend(m.ids);
        }
        let bought = members.iter().filter(|id| buyers.contains(id)).count() as i64;
        assert_eq!(
            (g.members, g.purchasers),
            (members.len() as i64, bought),
            "bucket {i}"
        );
        assert_eq!(g.revenue, 5.0 * bought as f64);
    }
    assert_eq!(got.groups.iter().map(|g| g.members).sum::<i64>(), 100);
    // Buckets 1 and 2 are compared with bucket 0.
    let groups: Vec<i32> = got.comparisons.iter().map(|c| c.group).collect();
    assert!(groups.contains(&1) && groups.contains(&2) && !groups.contains(&0));
}

#[tokio::test]
async fn retention_is_read_back_from_the_feed_where_it_reaches() {
    let mut limits = segd::api::Limits::default();
    limits.live.retention_age = std::time::Duration::from_secs(24 * 3600);
    let app = TestApp::spawn_with(limits).await;
    let ws = "retention";
    let vip = create_live(&app, ws, "vip", "tags:vip").await;
    let t0 = app.state.clock.now();
    let hour = Duration::hours(1);
    let vips = [
        ("a@x.co", "vip"),
        ("b@x.co", "vip"),
        ("c@x.co", "vip"),
        ("d@x.co", "vip"),
    ];
    tag_emails(&app, ws, &vips).await;
    app.state.clock.advance(hour);
    let from = app.state.clock.now();
    // During the window: a leaves, e enters.
    app.state.clock.advance(hour);
    tag_emails(&app, ws, &[("a@x.co", "plain"), ("e@x.co", "vip")]).await;
    app.state.clock.advance(hour);
    let to = app.state.clock.now();
    // After it: b leaves (undone when reading membership at its end).
    app.state.clock.advance(hour);
    tag_emails(&app, ws, &[("b@x.co", "plain")]).await;

    let saved = || {
        Some(pb::SegmentSelector {
            kind: Some(pb::segment_selector::Kind::SegmentId(vip)),
            evaluate: false,
        })
    };
    let r = metrics(&app, ws, ask(vec![saved()], (from, to)))
        .await
        .unwrap();
    let g = &r.groups[0];
    assert!(g.from_live);
    // {a, b, c, d} at the start; {b, c, d, e} at the end; {c, d, e} now.
    assert_eq!(g.members, 3);
    assert_eq!(rate(&g.retention), (3, 4, 0.75));
    // Split in two, the buckets add up.
    let mut split = ask(vec![saved()], (from, to));
    split.split = Some(pb::MetricsSplit {
        count: 2,
        salt: "r".into(),
    });
    let r = metrics(&app, ws, split).await.unwrap();
    let (start, kept) = r.groups.iter().fold((0, 0), |(s, k), g| {
        let r = g.retention.unwrap_or_default();
        (s + r.trials, k + r.successes)
    });
    assert_eq!((start, kept), (4, 3));
    // Before the segment was first built, or evaluated from its
    // definition: no history, no retention.
    let r = metrics(&app, ws, ask(vec![saved()], (t0 - hour, to)))
        .await
        .unwrap();
    assert!(r.groups[0].retention.is_none());
    let evaluated = Some(pb::SegmentSelector {
        kind: Some(pb::segment_selector::Kind::SegmentId(vip)),
        evaluate: true,
    });
    let r = metrics(&app, ws, ask(vec![evaluated], (from, to)))
        .await
        .unwrap();
    assert!(!r.groups[0].from_live && r.groups[0].retention.is_none());

    // Two days on, the feed's retention drops those changes: the old
    // window has no retention any more, a window after the cut has.
    app.state.clock.advance(Duration::hours(48));
    tag_emails(&app, ws, &[("f@x.co", "vip")]).await;
    let r = metrics(&app, ws, ask(vec![saved()], (from, to)))
        .await
        .unwrap();
    assert!(r.groups[0].retention.is_none());
    let now = app.state.clock.now();
    let r = metrics(&app, ws, ask(vec![saved()], (now - hour, now + hour)))
        .await
        .unwrap();
    // {c, d, e} an hour ago, all still members (f entered since).
    assert_eq!(rate(&r.groups[0].retention), (3, 3, 1.0));
}

#[tokio::test]
async fn the_workspace_decides_which_events_count() {
    let app = TestApp::spawn().await;
    let ws = "types";
    let mut q = app.query().await;
    let get = pb::GetMetricsSettingsRequest {};
    let s = q
        .get_metrics_settings(req(ws, get))
        .await
        .unwrap()
        .into_inner()
        .settings
        .unwrap();
    assert_eq!(
        (
            s.open_types,
            s.click_types,
            s.purchase_types,
            s.revenue_types
        ),
        (
            vec!["email_open".to_string()],
            vec!["email_click".to_string()],
            vec!["purchase".to_string()],
            vec!["purchase".to_string()]
        )
    );
    let a = contact(&app, ws, "a@x.co", "US", &[]).await;
    let now = app.state.clock.now();
    record_all(
        &mut app.contacts().await,
        ws,
        vec![vec![
            event(a, "sms_open", now - Duration::hours(2), None),
            event(a, "donation", now - Duration::hours(2), Some(50.0)),
        ]],
    )
    .await
    .unwrap();
    let window = (now - Duration::days(1), now);
    let before = metrics(&app, ws, ask(vec![inline("country = \"US\"")], window))
        .await
        .unwrap();
    assert_eq!(
        (before.groups[0].openers, before.groups[0].revenue),
        (0, 0.0)
    );

    // Opens: email and SMS; revenue: donations. The mask leaves the rest.
    let update = pb::UpdateMetricsSettingsRequest {
        settings: Some(pb::MetricsSettings {
            open_types: vec!["email_open".into(), "SMS Open".into()],
            revenue_types: vec!["donation".into()],
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["open_types".into(), "revenue_types".into()],
        }),
    };
    let s = q
        .update_metrics_settings(req(ws, update))
        .await
        .unwrap()
        .into_inner()
        .settings
        .unwrap();
    assert_eq!(s.open_types, ["email_open", "sms_open"]);
    assert_eq!(s.purchase_types, ["purchase"]);
    let after = metrics(&app, ws, ask(vec![inline("country = \"US\"")], window))
        .await
        .unwrap();
    let g = &after.groups[0];
    assert_eq!((g.openers, g.opens, g.revenue, g.orders), (1, 1, 50.0, 0));
    assert_eq!(after.settings.unwrap().revenue_types, ["donation"]);

    // Bad settings change nothing.
    let bad = pb::UpdateMetricsSettingsRequest {
        settings: Some(pb::MetricsSettings {
            open_types: vec!["1open".into()],
            click_types: vec![],
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["open_types".into(), "click_types".into(), "colour".into()],
        }),
    };
    let err = q.update_metrics_settings(req(ws, bad)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        violations(&err),
        [
            "update_mask.paths[2]",
            "settings.open_types[0]",
            "settings.click_types"
        ]
    );
    let s = q
        .get_metrics_settings(req(ws, pb::GetMetricsSettingsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .settings
        .unwrap();
    assert_eq!(s.open_types, ["email_open", "sms_open"]);
}

#[tokio::test]
async fn bad_metrics_requests_name_their_fields() {
    let app = TestApp::spawn_with(segd::api::Limits {
        max_query_cost: 1.0,
        ..Default::default()
    })
    .await;
    let ws = "bad";
    let now = app.state.clock.now();
    let mut two = ask(
        vec![inline("country = \"US\""), inline("country = ")],
        (now, now - Duration::days(1)),
    );
    two.split = Some(pb::MetricsSplit {
        count: 1,
        salt: String::new(),
    });
    let err = metrics(&app, ws, two).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let v = violations(&err);
    assert!(v[0].starts_with("selectors[1].definition"), "{v:?}");
    assert_eq!(&v[1..], ["end_time", "split.count", "split"]);
    let none = pb::SegmentMetricsRequest::default();
    let err = metrics(&app, ws, none).await.unwrap_err();
    assert_eq!(violations(&err), ["selectors", "start_time"]);
    // An unknown segment is NOT_FOUND; an inline definition over the cost
    // ceiling is refused unless allowed.
    let missing = Some(pb::SegmentSelector {
        kind: Some(pb::segment_selector::Kind::SegmentId(999)),
        evaluate: false,
    });
    let err = metrics(&app, ws, ask(vec![missing], (now - Duration::days(1), now)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let window = (now - Duration::days(1), now);
    let err = metrics(&app, ws, ask(vec![inline("country = \"US\"")], window))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("allow_expensive"), "{err:?}");
    let mut allowed = ask(vec![inline("country = \"US\"")], window);
    allowed.allow_expensive = true;
    assert_eq!(
        metrics(&app, ws, allowed).await.unwrap().groups[0].members,
        0
    );
}
