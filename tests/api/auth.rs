//! Who may call: every RPC refuses a call without a valid token
//! (UNAUTHENTICATED), with a role below its own or for another workspace
//! (PERMISSION_DENIED), and serves the right caller; tokens' claims are
//! checked; JWKS keys rotate with their file; workspaces come only from an
//! admin; health and reflection stay open.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use prost::Message;
use segd::api::auth::{Auth, JwtOptions, Role, required};
use segd::proto as pb;
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::*;

const SECRET: &str = "test-secret";
const ISSUER: &str = "segd-tests";
const AUDIENCE: &str = "segd";

pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Standard claims for `workspace` and `role`, valid for an hour.
pub(crate) fn claims(workspace: &str, role: &str) -> serde_json::Value {
    json!({"workspace": workspace, "role": role, "iss": ISSUER, "aud": AUDIENCE,
           "exp": now() + 3600, "nbf": now() - 10})
}

/// An HS256 token of `claims`, signed with the test secret.
pub(crate) fn hs256(claims: &serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Token authentication with the test secret, issuer and audience.
pub(crate) async fn jwt_app() -> Auth {
    Auth::jwt(JwtOptions {
        secret: Some(SECRET.into()),
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A request with a bearer token and optionally the workspace header.
pub(crate) fn with<T>(msg: T, token: Option<&str>, header: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    if let Some(h) = header {
        r.metadata_mut().insert(WS_HEADER, h.parse().unwrap());
    }
    r
}

/// Calls `path` with one empty message, whatever its kind, and returns the
/// first status: the call's, or its stream's first message's. The auth
/// layer answers in the response headers, so a stream that is still open
/// after its headers (a watch waits for changes) has passed it: OK.
async fn raw_call(
    channel: &Channel,
    path: &str,
    token: Option<&str>,
    header: Option<&str>,
) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let body = tokio_stream::iter(vec![()]);
    let req = with(body, token, header);
    let path = http::uri::PathAndQuery::try_from(path).unwrap();
    match grpc.streaming(req, path, codec).await {
        Err(s) => s.code(),
        Ok(r) => {
            let mut s = r.into_inner();
            match tokio::time::timeout(Duration::from_secs(5), s.message()).await {
                Ok(Err(s)) => s.code(),
                Ok(Ok(_)) | Err(_) => Code::Ok,
            }
        }
    }
}

/// Every segd RPC path, from the descriptor set reflection serves.
fn every_rpc() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let mut out = Vec::new();
    for f in &set.file {
        for s in &f.service {
            for m in &s.method {
                out.push(format!("/{}.{}/{}", f.package(), s.name(), m.name()));
            }
        }
    }
    out
}

pub(crate) async fn create_workspace(
    channel: &Channel,
    name: &str,
    token: &str,
) -> Result<pb::Workspace, tonic::Status> {
    pb::workspace_service_client::WorkspaceServiceClient::new(channel.clone())
        .create_workspace(with(
            pb::CreateWorkspaceRequest { name: name.into() },
            Some(token),
            None,
        ))
        .await
        .map(|r| r.into_inner().workspace.unwrap())
}

/// Every workspace's name, as ListWorkspaces gives them.
async fn workspace_names(channel: &Channel, token: Option<&str>) -> Vec<String> {
    pb::workspace_service_client::WorkspaceServiceClient::new(channel.clone())
        .list_workspaces(with(pb::ListWorkspacesRequest::default(), token, None))
        .await
        .unwrap()
        .into_inner()
        .workspaces
        .into_iter()
        .map(|w| w.name)
        .collect()
}

#[tokio::test]
async fn every_rpc_refuses_the_wrong_caller_and_serves_the_right_one() {
    let app = TestApp::with().auth(jwt_app().await).spawn().await;
    let channel = app.channel().await;
    let admin = hs256(&claims("acme", "admin"));
    create_workspace(&channel, "acme", &admin).await.unwrap();
    create_workspace(&channel, "other", &admin).await.unwrap();
    let rpcs = every_rpc();
    assert!(rpcs.len() >= 40, "{rpcs:?}");
    for path in &rpcs {
        let need = required(path).expect("every segd RPC needs a role");
        let token = |role: Role| hs256(&claims("acme", role.as_str()));
        let own = token(need);
        assert_eq!(
            raw_call(&channel, path, None, None).await,
            Code::Unauthenticated,
            "{path} without a token"
        );
        assert_eq!(
            raw_call(&channel, path, Some("not.a.jwt"), None).await,
            Code::Unauthenticated,
            "{path} with a malformed token"
        );
        let below = match need {
            Role::Read => None,
            Role::Write => Some(Role::Read),
            Role::Admin => Some(Role::Write),
        };
        if let Some(below) = below {
            assert_eq!(
                raw_call(&channel, path, Some(&token(below)), None).await,
                Code::PermissionDenied,
                "{path} with the {below} role"
            );
        }
        assert_eq!(
            raw_call(&channel, path, Some(&own), Some("other")).await,
            Code::PermissionDenied,
            "{path} for another workspace"
        );
        let code = raw_call(&channel, path, Some(&own), None).await;
        assert!(
            !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
            "{path} with the {need} role: {code:?}"
        );
    }
}

#[tokio::test]
async fn tokens_are_checked_claim_by_claim() {
    let app = TestApp::with().auth(jwt_app().await).spawn().await;
    let channel = app.channel().await;
    create_workspace(&channel, "acme", &hs256(&claims("acme", "admin")))
        .await
        .unwrap();
    let mut q = pb::query_service_client::QueryServiceClient::new(channel.clone());
    let mut call = async |token: String| {
        q.get_metrics_settings(with(pb::GetMetricsSettingsRequest {}, Some(&token), None))
            .await
            .map(|_| ())
            .map_err(|s| (s.code(), s.message().to_string()))
    };
    assert_eq!(call(hs256(&claims("acme", "read"))).await, Ok(()));
    let mut bad = Vec::new();
    let with_claim = |k: &str, v: serde_json::Value| {
        let mut c = claims("acme", "read");
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = claims("acme", "read");
        c.as_object_mut().unwrap().remove(k);
        c
    };
    bad.push(("expired", hs256(&with_claim("exp", json!(now() - 120)))));
    bad.push((
        "not yet valid",
        hs256(&with_claim("nbf", json!(now() + 600))),
    ));
    bad.push((
        "another issuer",
        hs256(&with_claim("iss", json!("mallory"))),
    ));
    bad.push((
        "another audience",
        hs256(&with_claim("aud", json!("billing"))),
    ));
    bad.push(("no audience", hs256(&without("aud"))));
    bad.push(("no expiry", hs256(&without("exp"))));
    bad.push((
        "an unknown role",
        hs256(&with_claim("role", json!("owner"))),
    ));
    bad.push((
        "a bad workspace",
        hs256(&with_claim("workspace", json!("Not A Name"))),
    ));
    bad.push((
        "another secret",
        encode(
            &Header::new(Algorithm::HS256),
            &claims("acme", "read"),
            &EncodingKey::from_secret(b"guess"),
        )
        .unwrap(),
    ));
    for (what, token) in bad {
        let r = call(token).await;
        assert!(
            matches!(&r, Err((Code::Unauthenticated, _))),
            "a token with {what}: {r:?}"
        );
    }
    // A token for a workspace nobody created: refused, and not created.
    let r = call(hs256(&claims("ghost", "admin"))).await;
    assert!(
        matches!(&r, Err((Code::PermissionDenied, m)) if m.contains("does not exist")),
        "{r:?}"
    );
    let admin = hs256(&claims("acme", "admin"));
    assert_eq!(workspace_names(&channel, Some(&admin)).await, ["acme"]);
    let again = create_workspace(&channel, "acme", &hs256(&claims("acme", "admin"))).await;
    assert_eq!(again.unwrap_err().code(), Code::AlreadyExists);
    let bad_name = create_workspace(&channel, "Bad Name", &hs256(&claims("acme", "admin"))).await;
    assert_eq!(violations(&bad_name.unwrap_err()), ["name"]);
}

/// A JWKS with these fixture keys.
pub(crate) fn jwks(names: &[&str]) -> String {
    let keys: Vec<serde_json::Value> = names
        .iter()
        .map(|n| {
            let text = std::fs::read_to_string(format!("tests/fixtures/{n}.jwk.json")).unwrap();
            serde_json::from_str(&text).unwrap()
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

/// A token signed by fixture key `name` (ES256 or RS256), naming it.
pub(crate) fn signed(name: &str, claims: &serde_json::Value) -> String {
    let pem = std::fs::read(format!("tests/fixtures/{name}.pem")).unwrap();
    let (alg, key) = if name.starts_with("rs") {
        (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem).unwrap())
    } else {
        (Algorithm::ES256, EncodingKey::from_ec_pem(&pem).unwrap())
    };
    let mut h = Header::new(alg);
    h.kid = Some(name.into());
    encode(&h, claims, &key).unwrap()
}

#[tokio::test]
async fn jwks_keys_verify_tokens_and_rotate_with_their_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&["es256-a", "rs256"])).unwrap();
    let auth = Auth::jwt(JwtOptions {
        jwks_file: Some(file.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    let app = TestApp::with().auth(auth).spawn().await;
    let channel = app.channel().await;
    let c = json!({"workspace": "acme", "role": "admin", "exp": now() + 3600});
    create_workspace(&channel, "acme", &signed("es256-a", &c))
        .await
        .unwrap();
    let mut q = pb::query_service_client::QueryServiceClient::new(channel.clone());
    let mut code = async |token: String| match q
        .get_metrics_settings(with(pb::GetMetricsSettingsRequest {}, Some(&token), None))
        .await
    {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    };
    assert_eq!(code(signed("es256-a", &c)).await, Code::Ok);
    assert_eq!(code(signed("rs256", &c)).await, Code::Ok);
    assert_eq!(code(signed("es256-b", &c)).await, Code::Unauthenticated);
    // No shared secret configured: HS256 is refused.
    assert_eq!(code(hs256(&c)).await, Code::Unauthenticated);
    // A key signing as another's kid does not verify.
    let forged = {
        let pem = std::fs::read("tests/fixtures/es256-b.pem").unwrap();
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("es256-a".into());
        encode(&h, &c, &EncodingKey::from_ec_pem(&pem).unwrap()).unwrap()
    };
    assert_eq!(code(forged).await, Code::Unauthenticated);

    // Rotation: the file now holds key b only.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(&file, jwks(&["es256-b"])).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(code(signed("es256-b", &c)).await, Code::Ok);
    assert_eq!(code(signed("es256-a", &c)).await, Code::Unauthenticated);
}

#[tokio::test]
async fn roles_decide_and_health_and_reflection_stay_open() {
    let app = TestApp::with().auth(jwt_app().await).spawn().await;
    let channel = app.channel().await;
    create_workspace(&channel, "acme", &hs256(&claims("acme", "admin")))
        .await
        .unwrap();
    let (reader, writer) = (
        hs256(&claims("acme", "read")),
        hs256(&claims("acme", "write")),
    );
    let mut c = pb::contact_service_client::ContactServiceClient::new(channel.clone());
    let contact = || pb::CreateContactRequest {
        contact: Some(pb::Contact {
            email: "ann@example.com".into(),
            country: "US".into(),
            ..Default::default()
        }),
    };
    let denied = c
        .create_contact(with(contact(), Some(&reader), None))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("write"), "{denied:?}");
    c.create_contact(with(contact(), Some(&writer), None))
        .await
        .unwrap();
    // The header may repeat the token's workspace.
    let mut q = pb::query_service_client::QueryServiceClient::new(channel.clone());
    let n = q
        .count_members(with(
            pb::CountMembersRequest {
                selector: inline("country = \"US\""),
                ..Default::default()
            },
            Some(&reader),
            Some("acme"),
        ))
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(n, 1);

    // Health and reflection need no token.
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: "segd.v1.QueryService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // (tokio's Command: the server runs on this test's thread.)
    let out = tokio::process::Command::new(grpcurl())
        .args(["-plaintext", &app.addr.to_string(), "list"])
        .output()
        .await
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("segd.v1.WorkspaceService"), "{listed}");
}

#[tokio::test]
async fn dev_mode_creates_workspaces_on_first_use_and_admin_calls_need_no_header() {
    let app = TestApp::spawn().await;
    let channel = app.channel().await;
    app.query()
        .await
        .get_metrics_settings(req("fresh", pb::GetMetricsSettingsRequest {}))
        .await
        .unwrap();
    assert_eq!(workspace_names(&channel, None).await, ["fresh"]);
}
