//! The Helm chart: Helm's own lint and render (helm-python-sdk, no helm
//! binary) with each values file in `helm/segd/ci`, and the rendered objects
//! checked: probes, security, secrets, hooks, scaling and monitoring, and
//! that every setting it passes is one segd knows.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

/// Where helm-python-sdk and PyYAML are importable from: the system's, or
/// installed from PyPI into `target/tools/helm` on first use.
fn python_path() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/helm");
    let importable = |path: &PathBuf| {
        std::process::Command::new("python3")
            .args(["-c", "import helm_python, yaml"])
            .env("PYTHONPATH", path)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !importable(&dir) {
        let ok = std::process::Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--target"])
            .arg(&dir)
            .args(["helm-python-sdk", "pyyaml"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok && importable(&dir),
            "helm-python-sdk is not installed; install it with `pip install helm-python-sdk pyyaml`"
        );
    }
    dir
}

fn rendered() -> Value {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("python3")
        .arg(root.join("tests/helm_chart.py"))
        .arg(root.join("helm/segd"))
        .env("PYTHONPATH", python_path())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "rendering the chart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objects: &'a [Value], k: &str) -> &'a Value {
    let found = kind(objects, k);
    assert_eq!(found.len(), 1, "one {k}");
    found[0]
}

/// The environment variables segd reads, from its own command line.
fn segd_env() -> BTreeSet<String> {
    use clap::CommandFactory;
    segd::config::Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect()
}

#[test]
fn the_chart_lints_renders_and_holds_what_a_deployment_needs() {
    let out = rendered();
    // Lint: no warnings or errors in any values file (strict).
    for (file, report) in out["lint"].as_object().unwrap() {
        assert_eq!(report["errors"], Value::Array(vec![]), "{file}: {report}");
        let serious: Vec<&Value> = report["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["severity"].as_i64() >= Some(2))
            .collect();
        assert!(serious.is_empty(), "{file}: {serious:?}");
    }
    let known = segd_env();
    let render = out["render"].as_object().unwrap();
    for (file, objects) in render {
        let objects = objects.as_array().unwrap();
        // Every setting passed is one segd reads.
        for cm in kind(objects, "ConfigMap") {
            if cm["metadata"]["name"] == "segd" {
                for key in cm["data"].as_object().unwrap().keys() {
                    assert!(known.contains(key), "{file}: segd does not read {key}");
                }
            }
        }
        // Every pod: non-root, read-only, no privileges, resources set.
        let mut pods = vec![&one(objects, "Deployment")["spec"]["template"]["spec"]];
        pods.extend(
            kind(objects, "Job")
                .iter()
                .map(|j| &j["spec"]["template"]["spec"]),
        );
        for pod in pods {
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{file}");
            for c in pod["containers"].as_array().unwrap() {
                let sc = &c["securityContext"];
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{file}");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{file}");
                assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{file}");
                assert!(c["resources"]["requests"]["cpu"].is_string(), "{file}");
            }
        }
        // Native gRPC probes against segd's health service.
        let c = &one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["livenessProbe"]["grpc"]["port"], 50051, "{file}");
        assert_eq!(
            c["readinessProbe"]["grpc"]["service"], "segd.v1.QueryService",
            "{file}"
        );
        assert_eq!(
            one(objects, "Service")["spec"]["ports"][0]["port"],
            50051,
            "{file}"
        );
    }

    // The smallest install: its own Secret and the migrations hook, both
    // before the release's resources; a PDB and topology spread.
    let small = render["default-values.yaml"].as_array().unwrap();
    let secret = one(small, "Secret");
    assert_eq!(
        secret["metadata"]["annotations"]["helm.sh/hook"],
        "pre-install,pre-upgrade"
    );
    assert!(secret["stringData"]["DATABASE_URL"].is_string());
    assert!(secret["stringData"].get("SEGD_JWT_SECRET").is_none());
    assert!(
        secret["stringData"]
            .get("SEGD_READ_DATABASE_URLS")
            .is_none()
    );
    let job = one(small, "Job");
    assert_eq!(
        job["metadata"]["annotations"]["helm.sh/hook"],
        "pre-install,pre-upgrade"
    );
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["args"][0],
        "migrate"
    );
    let weight = |o: &Value| {
        o["metadata"]["annotations"]["helm.sh/hook-weight"]
            .as_str()
            .unwrap()
            .parse::<i32>()
            .unwrap()
    };
    assert!(weight(secret) < weight(job));
    assert_eq!(one(small, "PodDisruptionBudget")["spec"]["minAvailable"], 1);
    let deployment = &one(small, "Deployment")["spec"];
    assert_eq!(deployment["replicas"], 2);
    assert!(
        deployment["template"]["spec"]["topologySpreadConstraints"][0]["topologyKey"].is_string()
    );
    assert!(kind(small, "HorizontalPodAutoscaler").is_empty());
    assert!(kind(small, "ServiceMonitor").is_empty());

    // A Secret managed elsewhere: none rendered, the pods read it.
    let existing = render["existing-secret-values.yaml"].as_array().unwrap();
    assert!(kind(existing, "Secret").is_empty() && kind(existing, "Job").is_empty());
    let env = &one(existing, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"];
    assert_eq!(env[0]["name"], "DATABASE_URL");
    assert_eq!(
        env[0]["valueFrom"]["secretKeyRef"]["name"],
        "segd-credentials"
    );

    // Production: autoscaled (no fixed replicas), monitored, JWKS mounted,
    // reading from two replicas.
    let prod = render["production-values.yaml"].as_array().unwrap();
    assert_eq!(
        one(prod, "Secret")["stringData"]["SEGD_READ_DATABASE_URLS"],
        "postgres://segd:secret@postgres-r1:5432/segd,postgres://segd:secret@postgres-r2:5432/segd"
    );
    let hpa = one(prod, "HorizontalPodAutoscaler");
    assert_eq!(
        (
            hpa["spec"]["minReplicas"].as_i64(),
            hpa["spec"]["maxReplicas"].as_i64()
        ),
        (Some(3), Some(12))
    );
    let d = &one(prod, "Deployment")["spec"];
    assert!(d.get("replicas").is_none());
    assert_eq!(
        d["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/example/segd:1.2.3"
    );
    assert_eq!(
        one(prod, "ServiceMonitor")["spec"]["endpoints"][0]["port"],
        "metrics"
    );
    let ports: Vec<&Value> = one(prod, "Service")["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert!(
        ports
            .iter()
            .any(|p| p["name"] == "metrics" && p["port"] == 9090)
    );
    let cm = kind(prod, "ConfigMap");
    let settings = cm.iter().find(|c| c["metadata"]["name"] == "segd").unwrap();
    // Behind PgBouncer: the pooler declared, and the session URL reaches
    // both segd and the migrations hook (which runs before the ConfigMap
    // exists, so it carries the pooler setting itself).
    assert_eq!(settings["data"]["SEGD_DATABASE_POOLER"], "transaction");
    assert_eq!(
        one(prod, "Secret")["stringData"]["SEGD_SESSION_DATABASE_URL"],
        "postgres://segd:secret@postgres:5432/segd"
    );
    let env_names = |pod: &Value| -> Vec<String> {
        pod["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    };
    let job = &one(prod, "Job")["spec"]["template"]["spec"];
    let job_env = env_names(job);
    for name in [
        "DATABASE_URL",
        "SEGD_SESSION_DATABASE_URL",
        "SEGD_DATABASE_POOLER",
    ] {
        assert!(job_env.iter().any(|n| n == name), "migrations lack {name}");
    }
    assert_eq!(job["containers"][0]["env"][0]["value"], "transaction");
    assert!(env_names(&d["template"]["spec"]).contains(&"SEGD_SESSION_DATABASE_URL".to_string()));
    assert_eq!(
        settings["data"]["SEGD_JWKS_FILE"],
        "/etc/segd/jwks/jwks.json"
    );
    assert!(cm.iter().any(|c| c["data"]["jwks.json"].is_string()));

    // No database URL and no existing Secret: refused, saying what to set.
    let refused = out["refused"]
        .as_str()
        .expect("rendering without a database refused");
    assert!(refused.contains("secret.databaseUrl"), "{refused}");
    let refused = out["refused_pooler"]
        .as_str()
        .expect("a transaction pooler without a session URL refused");
    assert!(refused.contains("secret.sessionDatabaseUrl"), "{refused}");
}
