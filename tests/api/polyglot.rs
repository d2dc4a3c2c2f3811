//! A client generated from the proto by another toolchain (Python's
//! grpcio-tools) streams a segment from a running segd.

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
