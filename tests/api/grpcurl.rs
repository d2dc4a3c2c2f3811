//! The real grpcurl against a running segd: reflection, JSON in, JSON out.

use tokio::process::Command;

use crate::helpers::{TestApp, grpcurl};

/// Runs grpcurl with `args` against `app`, returning stdout; panics on failure.
pub async fn run(app: &TestApp, args: &[&str], method: &str) -> String {
    let out = Command::new(grpcurl())
        .arg("-plaintext")
        .args(args)
        .arg(app.addr.to_string())
        .args((!method.is_empty()).then_some(method))
        .output()
        .await
        .expect("running grpcurl");
    assert!(
        out.status.success(),
        "grpcurl {args:?} {method} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn grpcurl_lists_services_creates_and_reads_a_contact() {
    let app = TestApp::spawn().await;
    let listed = run(&app, &[], "list").await;
    for s in [
        "segd.v1.ContactService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            listed.lines().any(|l| l == s),
            "{s} missing from:\n{listed}"
        );
    }

    let ws = "x-segd-workspace: grpcurl-ws";
    let body = r#"{"contact": {"email": "Grace@Example.com", "first_name": "Grace", "country": "gb", "tags": ["vip"]}}"#;
    let created = run(
        &app,
        &["-H", ws, "-d", body],
        "segd.v1.ContactService/CreateContact",
    )
    .await;
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let id = created["contact"]["id"]
        .as_str()
        .expect("id is an int64 string")
        .to_string();
    assert_eq!(created["contact"]["email"], "grace@example.com");

    let body = format!(r#"{{"contact": {{"id": {id}}}}}"#);
    let got = run(
        &app,
        &["-H", ws, "-d", &body],
        "segd.v1.ContactService/GetContact",
    )
    .await;
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["contact"]["id"], id.as_str());
    assert_eq!(got["contact"]["firstName"], "Grace");
    assert_eq!(got["contact"]["country"], "GB");
    assert_eq!(got["contact"]["tags"], serde_json::json!(["vip"]));

    let health = run(&app, &[], "grpc.health.v1.Health/Check").await;
    assert!(health.contains("SERVING"), "{health}");
}

#[tokio::test]
async fn grpcurl_validates_explains_and_saves_the_issue_example() {
    let app = TestApp::spawn().await;
    let ws = "x-segd-workspace: grpcurl-seg";
    let engaged = r#"{"segment": {"name": "newsletter-engaged", "definition": {"filter": "subscription(email, subscribed) AND event(email_open, last 30d).count >= 3"}}}"#;
    run(
        &app,
        &["-H", ws, "-d", engaged],
        "segd.v1.SegmentService/CreateSegment",
    )
    .await;
    let text = r#"label:lead AND country IN (\"US\",\"CA\") AND age >= 25 AND tags:vip AND NOT label:customer\nAND event(purchase, last 90d).count >= 2 AND segment(\"newsletter-engaged\")"#;
    let def = format!(r#"{{"definition": {{"filter": "{text}"}}}}"#);

    let v: serde_json::Value = serde_json::from_str(
        &run(
            &app,
            &["-H", ws, "-d", &def],
            "segd.v1.SegmentService/ValidateSegment",
        )
        .await,
    )
    .unwrap();
    assert!(
        v["filter"]
            .as_str()
            .unwrap()
            .starts_with("label:lead AND country IN (\"US\", \"CA\")"),
        "{v}"
    );
    assert!(
        v["rule"]["all"]["rules"].as_array().unwrap().len() == 7,
        "{v}"
    );

    let e: serde_json::Value = serde_json::from_str(
        &run(
            &app,
            &["-H", ws, "-d", &def],
            "segd.v1.SegmentService/ExplainSegment",
        )
        .await,
    )
    .unwrap();
    assert!(
        e["sql"].as_str().unwrap().contains("GROUP BY e.contact_id"),
        "{e}"
    );
    assert!(e["estimatedCost"].as_f64().unwrap() > 0.0);
    assert!(e["planJson"].as_str().unwrap().contains("Plan"));

    let create =
        format!(r#"{{"segment": {{"name": "example", "definition": {{"filter": "{text}"}}}}}}"#);
    let s: serde_json::Value = serde_json::from_str(
        &run(
            &app,
            &["-H", ws, "-d", &create],
            "segd.v1.SegmentService/CreateSegment",
        )
        .await,
    )
    .unwrap();
    assert_eq!(s["segment"]["name"], "example");
    assert_eq!(s["segment"]["filter"], v["filter"]);
}

#[tokio::test]
async fn grpcurl_watches_a_live_segment() {
    let app = TestApp::spawn().await;
    let ws = "x-segd-workspace: grpcurl-watch";
    let body = r#"{"contact": {"email": "lead@example.com", "labels": ["lead"]}}"#;
    run(
        &app,
        &["-H", ws, "-d", body],
        "segd.v1.ContactService/CreateContact",
    )
    .await;
    app.drained().await;
    let out = Command::new(grpcurl())
        .args(["-plaintext", "-H", ws, "-max-time", "2", "-d"])
        .arg(r#"{"segment_ids": [1], "snapshot_first": true}"#)
        .arg(app.addr.to_string())
        .arg("segd.v1.QueryService/WatchMembership")
        .output()
        .await
        .expect("running grpcurl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The watch only ends when stopped: grpcurl's -max-time does.
    assert_eq!(out.status.code(), Some(68), "DEADLINE_EXCEEDED: {stdout}");
    let first: serde_json::Value =
        serde_json::from_str(&stdout[..stdout.find("\n}").map_or(stdout.len(), |i| i + 2)])
            .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(first["snapshot"]["segmentId"], "1", "{stdout}");
    assert_eq!(first["snapshot"]["contactIds"], serde_json::json!(["1"]));
    assert_eq!(first["snapshotComplete"], true);
}
