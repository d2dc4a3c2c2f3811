//! Clients generated from the proto by other toolchains (Python's
//! grpcio-tools, Node's @grpc/proto-loader) stream a segment from a running
//! segd, and run the same scenario with bearer tokens: create a workspace,
//! import, define a live segment, stream it and watch it change.

use std::path::PathBuf;
use std::process::Command;

use crate::helpers::TestApp;

/// A python3 that can import grpc and grpc_tools: the system one, or one
/// with them installed into `target/tools/py` on first use.
fn python_with_grpc() -> (String, Option<PathBuf>) {
    let ok = |pythonpath: Option<&PathBuf>| {
        let mut c = Command::new("python3");
        c.args(["-c", "import grpc, grpc_tools"]);
        if let Some(p) = pythonpath {
            c.env("PYTHONPATH", p);
        }
        c.status().map(|s| s.success()).unwrap_or(false)
    };
    if ok(None) {
        return ("python3".into(), None);
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/py");
    if !ok(Some(&dir)) {
        let installed = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--target"])
            .arg(&dir)
            .args(["grpcio", "grpcio-tools"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            installed && ok(Some(&dir)),
            "install grpcio and grpcio-tools: pip install grpcio grpcio-tools"
        );
    }
    ("python3".into(), Some(dir))
}

#[tokio::test]
async fn a_python_client_generated_from_the_proto_streams_a_segment() {
    let app = TestApp::spawn().await;
    app.bulk_contacts("py", 30_000).await;
    let (python, path) = python_with_grpc();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/polyglot/stream_members.py");
    let addr = app.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        let mut c = Command::new(python);
        c.arg(script).args([addr.as_str(), "py", "Leads", "10000"]);
        if let Some(p) = path {
            c.env("PYTHONPATH", p);
        }
        c.output().expect("running python3")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "python client failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10000");
}

/// The scenario's arguments: the server, a workspace, and admin, write and
/// read tokens for it.
fn scenario_args(app: &TestApp, ws: &str) -> Vec<String> {
    use crate::auth::{claims, hs256};
    vec![
        app.addr.to_string(),
        ws.to_string(),
        hs256(&claims(ws, "admin")),
        hs256(&claims(ws, "write")),
        hs256(&claims(ws, "read")),
    ]
}

fn succeeded(out: &std::process::Output, who: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "{who} scenario failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn the_python_client_runs_the_scenario_with_tokens() {
    let app = TestApp::with()
        .auth(crate::auth::jwt_app().await)
        .spawn()
        .await;
    let (python, path) = python_with_grpc();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/polyglot");
    let args = scenario_args(&app, "python-scenario");
    let out = tokio::task::spawn_blocking(move || {
        let mut c = Command::new(python);
        c.arg(dir.join("scenario.py")).args(&args);
        let mut paths = vec![dir];
        paths.extend(path);
        c.env("PYTHONPATH", std::env::join_paths(paths).unwrap());
        c.output().expect("running python3")
    })
    .await
    .unwrap();
    assert_eq!(succeeded(&out, "python"), "ok 4");
}

#[tokio::test]
async fn the_node_client_runs_the_scenario_with_tokens() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if !root.join("node_modules/@grpc/grpc-js").exists() {
        let ok = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&root)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "npm install failed: the Node scenario needs @grpc/grpc-js"
        );
    }
    let app = TestApp::with()
        .auth(crate::auth::jwt_app().await)
        .spawn()
        .await;
    let args = scenario_args(&app, "node-scenario");
    let out = tokio::process::Command::new("node")
        .arg(root.join("tests/polyglot/scenario.js"))
        .args(&args)
        .output()
        .await
        .expect("running node");
    assert_eq!(succeeded(&out, "node"), "ok 4");
}
