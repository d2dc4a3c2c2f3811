//! A JWKS fetched from a URL (`--jwks-url`): once at start-up, where a
//! failure stops segd, then in the background every `--jwks-refresh`
//! (sooner when the answer's `Cache-Control: max-age` says so, never more
//! often than every ten seconds), and soon after a token names a key the
//! set lacks (at most once per [`JwksUrlOptions::min_interval`], so forged
//! key ids cannot make segd hammer the issuer). A failed refresh keeps the
//! last good keys and logs a warning. Calls read the current set under a
//! short lock and never wait for the network.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use futures::FutureExt as _;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::{CancellationToken, DropGuard};

/// The largest JWKS document segd reads.
pub const MAX_BYTES: usize = 1024 * 1024;
/// How long one fetch (connect, TLS, answer and body) may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A `max-age` below this is read as this.
const MAX_AGE_FLOOR: Duration = Duration::from_secs(10);
/// After a failed refresh, the next try comes at most this late.
const RETRY: Duration = Duration::from_secs(30);

/// Where and how often to fetch the JWKS.
#[derive(Debug, Clone)]
pub struct JwksUrlOptions {
    /// An `https://` URL (its certificate verified against the webpki
    /// roots and [`Self::ca_pem`]) or an `http://` one.
    pub url: String,
    /// Fetch again this often; a shorter `max-age` in the answer wins.
    pub refresh: Duration,
    /// Fetches asked for by unknown key ids come at most this often.
    pub min_interval: Duration,
    /// More trusted CA certificates (PEM), for a private issuer.
    pub ca_pem: Option<Vec<u8>>,
}

impl JwksUrlOptions {
    /// `url`, refreshed every five minutes, unknown key ids fetching at
    /// most every ten seconds, the webpki roots only.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            refresh: Duration::from_secs(300),
            min_interval: Duration::from_secs(10),
            ca_pem: None,
        }
    }
}

/// The current keys from a URL, and the task keeping them fresh (stopped
/// when this is dropped).
#[derive(Debug)]
pub(super) struct JwksUrl {
    shared: Arc<Shared>,
    _stop: DropGuard,
}

#[derive(Debug)]
struct Shared {
    keys: Mutex<Arc<JwkSet>>,
    /// A call met an unknown key id.
    wake: Notify,
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

impl JwksUrl {
    /// Fetches the set once and starts refreshing it in the background
    /// (on the current tokio runtime).
    pub(super) async fn start(o: JwksUrlOptions) -> anyhow::Result<Self> {
        let uri = parse_url(&o.url)?;
        let client = client(o.ca_pem.as_deref())?;
        let first = fetch(&client, &uri)
            .await
            .with_context(|| format!("fetching the JWKS from {}", o.url))?;
        tracing::info!(url = %o.url, keys = first.set.keys.len(), "fetched the JWKS");
        let shared = Arc::new(Shared {
            keys: Mutex::new(Arc::new(first.set)),
            wake: Notify::new(),
        });
        let stop = CancellationToken::new();
        let wait = next_refresh(first.max_age, o.refresh);
        tokio::spawn(refresh(shared.clone(), client, uri, o, wait, stop.clone()));
        Ok(Self {
            shared,
            _stop: stop.drop_guard(),
        })
    }

    pub(super) fn current(&self) -> Arc<JwkSet> {
        self.shared.keys.lock().expect("jwks lock").clone()
    }

    /// A token named a key id the current set lacks: fetch again soon.
    pub(super) fn missed(&self) {
        self.shared.wake.notify_one();
    }
}

/// Keeps `shared`'s keys fresh until `stop`.
async fn refresh(
    shared: Arc<Shared>,
    client: HttpClient,
    uri: http::Uri,
    o: JwksUrlOptions,
    first: Duration,
    stop: CancellationToken,
) {
    let mut next = Instant::now() + first;
    let mut last_asked: Option<Instant> = None;
    loop {
        let asked = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = shared.wake.notified() => true,
            () = sleep_until(next) => false,
        };
        if asked {
            if let Some(at) = last_asked {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    () = sleep_until(at + o.min_interval) => {}
                }
            }
            last_asked = Some(Instant::now());
            tracing::debug!(url = %o.url, "a token named a key the JWKS lacks; fetching it again");
        }
        let fetched = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            r = fetch(&client, &uri) => r,
        };
        let wait = match fetched {
            Ok(f) => {
                let wait = next_refresh(f.max_age, o.refresh);
                let mut keys = shared.keys.lock().expect("jwks lock");
                if **keys != f.set {
                    tracing::info!(url = %o.url, keys = f.set.keys.len(), "the JWKS changed");
                    *keys = Arc::new(f.set);
                }
                wait
            }
            Err(e) => {
                tracing::warn!(url = %o.url, error = format!("{e:#}"), "cannot refresh the JWKS; keeping the previous keys");
                o.refresh.min(RETRY)
            }
        };
        // Calls that missed a key before this fetch asked for this fetch.
        let _ = shared.wake.notified().now_or_never();
        next = Instant::now() + wait;
    }
}

/// One fetched JWKS and how long its issuer says it stays fresh.
struct Fetched {
    set: JwkSet,
    max_age: Option<Duration>,
}

fn parse_url(url: &str) -> anyhow::Result<http::Uri> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("--jwks-url {url:?} is not a URL"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => bail!("--jwks-url {url:?} must be an http:// or https:// URL with a host"),
    }
}

/// An HTTP/1.1 client for http and https, verifying servers against the
/// webpki roots and `ca_pem`'s certificates.
fn client(ca_pem: Option<&[u8]>) -> anyhow::Result<HttpClient> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = ca_pem {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("--jwks-ca is not PEM certificates: {e}"))?;
        if certs.is_empty() {
            bail!("--jwks-ca holds no PEM certificate");
        }
        for cert in certs {
            roots
                .add(cert)
                .context("--jwks-ca holds an unusable certificate")?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(FETCH_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// GETs `uri`: a JWKS with at least one usable key, of at most [`MAX_BYTES`],
/// within [`FETCH_TIMEOUT`].
async fn fetch(client: &HttpClient, uri: &http::Uri) -> anyhow::Result<Fetched> {
    let req = http::Request::get(uri.clone())
        .header(http::header::ACCEPT, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("segd/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::new())?;
    let work = async {
        let resp = client.request(req).await?;
        let status = resp.status();
        if !status.is_success() {
            bail!("the server answered HTTP {status}");
        }
        let max_age = max_age(resp.headers());
        let body = Limited::new(resp.into_body(), MAX_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow!("reading the answer (at most {MAX_BYTES} bytes): {e}"))?
            .to_bytes();
        let set: JwkSet = serde_json::from_slice(&body).context("the answer is not a JWKS")?;
        // An issuer answering an empty set, or keys segd cannot use, is
        // broken: keep the keys that work.
        if !set.keys.iter().any(|k| DecodingKey::from_jwk(k).is_ok()) {
            bail!("the JWKS has no usable key");
        }
        Ok(Fetched { set, max_age })
    };
    tokio::time::timeout(FETCH_TIMEOUT, work)
        .await
        .map_err(|_| anyhow!("no answer within {FETCH_TIMEOUT:?}"))?
}

/// `Cache-Control: max-age`, if the answer has one.
fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|directive| {
            let (name, value) = directive.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("max-age") {
                return None;
            }
            value.trim().trim_matches('"').parse().ok()
        })
        .map(Duration::from_secs)
}

/// When to fetch again: after `max_age` if the issuer gave one (at least
/// [`MAX_AGE_FLOOR`]), never later than `refresh`.
fn next_refresh(max_age: Option<Duration>, refresh: Duration) -> Duration {
    match max_age {
        Some(age) => age.max(MAX_AGE_FLOOR).min(refresh),
        None => refresh,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append(http::header::CACHE_CONTROL, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn max_age_is_read_from_cache_control() {
        let s = Duration::from_secs;
        assert_eq!(max_age(&headers(&[])), None);
        assert_eq!(max_age(&headers(&["public, max-age=600"])), Some(s(600)));
        assert_eq!(
            max_age(&headers(&["no-cache", "Max-Age=\"60\""])),
            Some(s(60))
        );
        assert_eq!(max_age(&headers(&["s-maxage=60, must-revalidate"])), None);
        assert_eq!(max_age(&headers(&["max-age=soon"])), None);
    }

    #[test]
    fn max_age_shortens_the_refresh_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(next_refresh(None, s(300)), s(300));
        assert_eq!(next_refresh(Some(s(60)), s(300)), s(60));
        assert_eq!(next_refresh(Some(s(86_400)), s(300)), s(300));
        assert_eq!(next_refresh(Some(s(0)), s(300)), MAX_AGE_FLOOR);
        assert_eq!(next_refresh(Some(s(0)), s(1)), s(1));
    }

    #[test]
    fn only_http_and_https_urls() {
        assert!(parse_url("https://issuer.example/.well-known/jwks.json").is_ok());
        assert!(parse_url("http://issuer.auth.svc:8080/keys").is_ok());
        assert!(parse_url("ftp://issuer.example/jwks").is_err());
        assert!(parse_url("/jwks.json").is_err());
    }
}
