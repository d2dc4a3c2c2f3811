//! The README's grpcurl cookbook, run verbatim (apart from the address)
//! against a fresh server: every command must succeed.

use crate::helpers::{TestApp, grpcurl};

fn cookbook() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("## grpcurl cookbook")
        .expect("cookbook section");
    let end = start
        + readme[start..]
            .find("## The rule language")
            .expect("section after the cookbook");
    let mut script = String::new();
    let mut in_sh = false;
    for line in readme[start..end].lines() {
        match line.trim_end() {
            "```sh" => in_sh = true,
            "```" if in_sh => in_sh = false,
            l if in_sh => {
                script.push_str(l);
                script.push('\n');
            }
            _ => {}
        }
    }
    script
}

#[tokio::test]
async fn the_readme_cookbook_works_as_written() {
    let app = TestApp::spawn().await;
    let script = cookbook().replace("localhost:50051", &app.addr.to_string());
    assert!(
        script.matches("grpcurl ").count() >= 30,
        "the cookbook covers every RPC:\n{script}"
    );
    let bin = grpcurl();
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let bin_name = bin.file_name().unwrap().to_string_lossy().into_owned();
    let script = if bin_name == "grpcurl" {
        script
    } else {
        script.replace("grpcurl ", &format!("{bin_name} "))
    };
    let out = tokio::process::Command::new("bash")
        .args(["-e", "-o", "pipefail", "-c", &script])
        .env("PATH", path)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the cookbook failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "segd.v1.QueryService",
        "\"email\": \"ada@example.com\"",
        "\"failed\": \"1\"",
        "\"filter\": \"label:lead AND NOT event(purchase)\"",
        "NOT EXISTS (SELECT 1 FROM events e",
        "\"totalRows\"",
        "\"memberCount\"",
        "\"keys\": [",
        "\"intersections\"",
        "\"eventsMoved\"",
        "\"conversionRate\"",
        "\"sms_open\"",
        "\"name\": \"globex\"",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected} missing from the cookbook's output:\n{stdout}"
        );
    }
}
