//! Keys from a JWKS URL: a test issuer (HTTP/1.1 on a tokio listener,
//! optionally TLS) serves a JWKS of the fixture keys and counts requests.
//! Tokens verify; a token naming a key the set lacks is refused and fetches
//! the set again, so the next one passes; forged key ids fetch at most once
//! per window; a failing issuer leaves the last good keys; start-up needs a
//! JWKS; https issuers are verified against the configured CA.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use segd::api::auth::{Auth, JwksUrlOptions, JwtOptions};
use segd::proto as pb;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::Channel;

use crate::auth::{create_workspace, jwks, now, signed, with};
use crate::helpers::*;

/// What the test issuer answers.
#[derive(Debug, Clone)]
enum Answer {
    /// 200 with this JSON.
    Ok(String),
    /// This status, empty.
    Status(u16),
}

/// A JWKS server inside the test.
struct Issuer {
    url: String,
    answer: Arc<Mutex<Answer>>,
    hits: Arc<AtomicUsize>,
}

impl Issuer {
    /// Serves `answer` over HTTP, or HTTPS with the fixture server
    /// certificate.
    async fn start(answer: Answer, tls: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls { "https" } else { "http" };
        let url = format!("{scheme}://{}/jwks.json", listener.local_addr().unwrap());
        let answer = Arc::new(Mutex::new(answer));
        let hits = Arc::new(AtomicUsize::new(0));
        let acceptor = tls.then(acceptor);
        let (a, h) = (answer.clone(), hits.clone());
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (a, h, acceptor) = (a.clone(), h.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        None => respond(sock, &a, &h).await,
                        Some(acc) => {
                            if let Ok(s) = acc.accept(sock).await {
                                respond(s, &a, &h).await;
                            }
                        }
                    }
                });
            }
        });
        Self { url, answer, hits }
    }

    fn serve(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Waits until the issuer has been asked `n` times.
    async fn reached(&self, n: usize) {
        let waited = tokio::time::timeout(Duration::from_secs(20), async {
            while self.hits() < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "{} requests, not {n}", self.hits());
    }

    /// segd's options for this issuer: refreshed every `refresh`, unknown
    /// kids fetching at most once a minute.
    fn options(&self, refresh: Duration) -> JwksUrlOptions {
        JwksUrlOptions {
            refresh,
            min_interval: Duration::from_secs(60),
            ..JwksUrlOptions::new(&self.url)
        }
    }
}

/// Reads one request's head and answers what the issuer serves now.
async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    answer: &Mutex<Answer>,
    hits: &AtomicUsize,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let (status, body) = match answer.lock().unwrap().clone() {
        Answer::Ok(body) => (200, body),
        Answer::Status(code) => (code, String::new()),
    };
    let reply = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // A client that stops reading (an answer over the cap) is no error.
    let _ = s.write_all(reply.as_bytes()).await;
    let _ = s.shutdown().await;
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn acceptor() -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(&fixture("tls-server.pem"))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(&fixture("tls-server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn url_auth(o: JwksUrlOptions) -> anyhow::Result<Auth> {
    Auth::jwt(JwtOptions {
        jwks_url: Some(o),
        ..Default::default()
    })
    .await
}

fn admin() -> serde_json::Value {
    json!({"workspace": "acme", "role": "admin", "exp": now() + 3600})
}

/// A token signed by fixture key `key` that names `kid`.
fn signed_as(key: &str, kid: &str) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.into());
    let key = EncodingKey::from_ec_pem(&fixture(&format!("{key}.pem"))).unwrap();
    encode(&h, &admin(), &key).unwrap()
}

/// Serves segd with `auth`.
async fn serve(auth: Auth) -> (TestApp, Channel) {
    let app = TestApp::with().auth(auth).spawn().await;
    let channel = app.channel().await;
    (app, channel)
}

async fn code(channel: &Channel, token: &str) -> Code {
    let mut q = pb::query_service_client::QueryServiceClient::new(channel.clone());
    match q
        .get_metrics_settings(with(pb::GetMetricsSettingsRequest {}, Some(token), None))
        .await
    {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// Calls with `token` until it is served.
async fn until_served(channel: &Channel, token: &str) {
    let served = tokio::time::timeout(Duration::from_secs(20), async {
        while code(channel, token).await != Code::Ok {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(served.is_ok(), "the token was never accepted");
}

#[tokio::test]
async fn url_keys_verify_tokens_and_an_unknown_kid_fetches_them_again() {
    let issuer = Issuer::start(Answer::Ok(jwks(&["es256-a", "rs256"])), false).await;
    let auth = url_auth(issuer.options(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(issuer.hits(), 1);
    let (_app, channel) = serve(auth).await;
    create_workspace(&channel, "acme", &signed("es256-a", &admin()))
        .await
        .unwrap();
    assert_eq!(code(&channel, &signed("es256-a", &admin())).await, Code::Ok);
    assert_eq!(code(&channel, &signed("rs256", &admin())).await, Code::Ok);

    // Rotation: the issuer now serves key b only. The first token naming b
    // is refused and fetches the set again; then b passes and a does not.
    issuer.serve(Answer::Ok(jwks(&["es256-b"])));
    let b = signed("es256-b", &admin());
    assert_eq!(code(&channel, &b).await, Code::Unauthenticated);
    until_served(&channel, &b).await;
    assert_eq!(issuer.hits(), 2, "one fetch for the unknown kid");
    assert_eq!(
        code(&channel, &signed("es256-a", &admin())).await,
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn forged_kids_fetch_at_most_once_per_window() {
    let issuer = Issuer::start(Answer::Ok(jwks(&["es256-a"])), false).await;
    let auth = url_auth(issuer.options(Duration::from_secs(3600)))
        .await
        .unwrap();
    let (_app, channel) = serve(auth).await;
    create_workspace(&channel, "acme", &signed("es256-a", &admin()))
        .await
        .unwrap();
    assert_eq!(
        code(&channel, &signed_as("es256-b", "forged-0")).await,
        Code::Unauthenticated
    );
    issuer.reached(2).await;
    for i in 1..=30 {
        let forged = signed_as("es256-b", &format!("forged-{i}"));
        assert_eq!(code(&channel, &forged).await, Code::Unauthenticated);
    }
    // Time for a fetch the forgeries might wrongly have caused to arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(issuer.hits(), 2, "forged kids within the window fetched");
    assert_eq!(code(&channel, &signed("es256-a", &admin())).await, Code::Ok);
}

#[tokio::test]
async fn a_failing_issuer_leaves_the_last_good_keys() {
    let issuer = Issuer::start(Answer::Ok(jwks(&["es256-a"])), false).await;
    let auth = url_auth(issuer.options(Duration::from_millis(50)))
        .await
        .unwrap();
    let (_app, channel) = serve(auth).await;
    let a = signed("es256-a", &admin());
    create_workspace(&channel, "acme", &a).await.unwrap();
    let too_big = json!({"keys": [], "pad": "x".repeat(segd::api::auth::MAX_BYTES)}).to_string();
    let bad = [
        Answer::Status(500),
        Answer::Status(404),
        Answer::Ok("<html>try again later</html>".into()),
        Answer::Ok(r#"{"keys": []}"#.into()),
        Answer::Ok(r#"{"keys": [{"kty": "EC"}]}"#.into()),
        Answer::Ok(too_big),
    ];
    for answer in bad {
        issuer.serve(answer.clone());
        // Two more requests: the first one with this answer has been handled.
        issuer.reached(issuer.hits() + 2).await;
        assert_eq!(code(&channel, &a).await, Code::Ok, "after {answer:?}");
    }
    // The periodic refresh takes the issuer's new keys once it answers.
    issuer.serve(Answer::Ok(jwks(&["es256-b"])));
    issuer.reached(issuer.hits() + 2).await;
    assert_eq!(code(&channel, &a).await, Code::Unauthenticated);
    assert_eq!(code(&channel, &signed("es256-b", &admin())).await, Code::Ok);
}

#[tokio::test]
async fn start_up_needs_a_jwks_from_the_url() {
    let issuer = Issuer::start(Answer::Status(500), false).await;
    let o = issuer.options(Duration::from_secs(3600));
    let e = format!("{:#}", url_auth(o.clone()).await.unwrap_err());
    assert!(e.contains(&issuer.url) && e.contains("500"), "{e}");
    issuer.serve(Answer::Ok("not json".into()));
    let e = format!("{:#}", url_auth(o.clone()).await.unwrap_err());
    assert!(e.contains("not a JWKS"), "{e}");
    // Nobody listening.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let nobody = JwksUrlOptions::new(format!("http://{closed}/jwks.json"));
    assert!(url_auth(nobody).await.is_err());
    assert!(
        url_auth(JwksUrlOptions::new("file:///etc/jwks.json"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn https_issuers_are_verified_against_the_ca() {
    let issuer = Issuer::start(Answer::Ok(jwks(&["es256-a"])), true).await;
    let with_ca = |ca: Option<&str>| JwksUrlOptions {
        ca_pem: ca.map(fixture),
        ..issuer.options(Duration::from_secs(3600))
    };
    // Another CA, or the public roots alone: the start-up fetch fails.
    for ca in [Some("tls-other-ca.pem"), None] {
        let e = format!("{:#}", url_auth(with_ca(ca)).await.unwrap_err());
        assert!(e.contains("certificate"), "{ca:?}: {e}");
    }
    assert_eq!(issuer.hits(), 0, "no request without a verified server");
    let auth = url_auth(with_ca(Some("tls-ca.pem"))).await.unwrap();
    let (_app, channel) = serve(auth).await;
    let a = signed("es256-a", &admin());
    create_workspace(&channel, "acme", &a).await.unwrap();
    assert_eq!(code(&channel, &a).await, Code::Ok);
}
