//! Where the public keys of RS256 and ES256 tokens come from: a JWKS file
//! read again when it changes, or a JWKS URL refreshed in the background
//! (see [`super::jwks_url`]). Both hand out the current set as an
//! `Arc<JwkSet>`, and one function picks a token's key from it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};
use tonic::Status;

use super::jwks_url::JwksUrl;
use super::unauthenticated;

/// The JWKS that verifies RS256 and ES256 tokens.
#[derive(Debug)]
pub(super) enum Jwks {
    /// A file, reloaded when its modification time changes.
    File(JwksFile),
    /// A URL, refreshed in the background.
    Url(JwksUrl),
}

impl Jwks {
    /// The key for `kid`, or without one, the only key of `alg`'s family.
    /// An unknown `kid` asks a URL source to fetch the set again (rate
    /// limited); this token is refused all the same.
    pub(super) fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, Status> {
        let set = match self {
            Self::File(f) => f.current(),
            Self::Url(u) => u.current(),
        };
        let jwk = match kid {
            Some(kid) => match set.find(kid) {
                Some(jwk) => jwk,
                None => {
                    if let Self::Url(u) = self {
                        u.missed();
                    }
                    return Err(unauthenticated(format!("no key {kid:?} in the JWKS")));
                }
            },
            None => {
                let mut fit = set
                    .keys
                    .iter()
                    .filter(|k| DecodingKey::from_jwk(k).is_ok_and(|d| d.family() == alg.family()));
                match (fit.next(), fit.next()) {
                    (Some(k), None) => k,
                    _ => {
                        return Err(unauthenticated(
                            "the token names no key (kid) and the JWKS has not exactly one for its algorithm",
                        ));
                    }
                }
            }
        };
        DecodingKey::from_jwk(jwk).map_err(|e| unauthenticated(format!("unusable JWKS key: {e}")))
    }
}

/// Public keys from a JWKS file, read again when its modification time
/// changes (checked at most once a second).
#[derive(Debug)]
pub(super) struct JwksFile {
    path: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    checked: Instant,
    modified: Option<SystemTime>,
    keys: Arc<JwkSet>,
}

/// How often the file's modification time is looked at.
const JWKS_CHECK: Duration = Duration::from_secs(1);

impl JwksFile {
    pub(super) fn open(path: PathBuf) -> anyhow::Result<Self> {
        let (modified, keys) = read_jwks(&path)?;
        Ok(Self {
            path,
            state: Mutex::new(Loaded {
                checked: Instant::now(),
                modified,
                keys: Arc::new(keys),
            }),
        })
    }

    fn current(&self) -> Arc<JwkSet> {
        let mut s = self.state.lock().expect("jwks lock");
        if s.checked.elapsed() >= JWKS_CHECK {
            s.checked = Instant::now();
            let modified = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok();
            if modified != s.modified {
                match read_jwks(&self.path) {
                    Ok((modified, keys)) => {
                        tracing::info!(path = %self.path.display(), keys = keys.keys.len(), "reloaded the JWKS file");
                        s.modified = modified;
                        s.keys = Arc::new(keys);
                    }
                    // Keep the keys that worked; say why the new ones do not.
                    Err(e) => {
                        tracing::warn!(path = %self.path.display(), error = %e, "the JWKS file changed but cannot be read; keeping the previous keys")
                    }
                }
            }
        }
        s.keys.clone()
    }
}

fn read_jwks(path: &Path) -> anyhow::Result<(Option<SystemTime>, JwkSet)> {
    use anyhow::Context as _;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let set: JwkSet =
        serde_json::from_str(&text).with_context(|| format!("{} is not a JWKS", path.display()))?;
    Ok((modified, set))
}
