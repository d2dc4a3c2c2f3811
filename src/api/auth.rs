//! Who may call. A tower layer in front of every service checks each call
//! before the service runs: a bearer token (JWT: HS256 with a shared
//! secret, RS256 or ES256 with keys from a JWKS file reloaded when it
//! changes or a JWKS URL refreshed in the background, see [`jwks`] and
//! [`jwks_url`]; `exp`, `nbf`, `iss` and `aud` checked) carries the caller's
//! workspace and role, and every RPC needs a role (see [`required`]).
//! Health and reflection stay open. With `--insecure-dev-auth`, the
//! `x-segd-workspace` header alone names the workspace and every caller
//! may do anything: for a laptop, never for a deployment.

mod jwks;
mod jwks_url;

use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use tonic::Status;

use self::jwks::{Jwks, JwksFile};
use self::jwks_url::JwksUrl;
pub use self::jwks_url::{FETCH_TIMEOUT, JwksUrlOptions, MAX_BYTES};
use super::workspace::{self, HEADER};

crate::model::str_enum! {
    /// What a caller may do, each role including the ones before it.
    Role {
        /// Read contacts, segments and memberships.
        Read => "read",
        /// Also write contacts, events, deals, segments and settings.
        Write => "write",
        /// Also create and list workspaces.
        Admin => "admin",
    }
}

/// The caller of one RPC, as the layer found it (in request extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The workspace it acts in (none for an admin RPC in dev mode).
    pub workspace: Option<String>,
    /// Its role.
    pub role: Role,
    /// Named by the dev-mode header, not a token: the workspace is created
    /// on first use.
    pub dev: bool,
}

/// Services whose calls are open to anyone.
const OPEN: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The workspace administration service: admin only, no workspace.
pub const ADMIN_SERVICE: &str = "segd.v1.WorkspaceService";

/// The role an RPC (`/package.Service/Method`) needs; `None` for the open
/// services. Reads are the QueryService (but its settings update) and the
/// other services' Get, List, Validate, Explain and Verify calls;
/// everything else writes; workspace administration and unknown paths
/// need admin.
pub fn required(path: &str) -> Option<Role> {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if OPEN.contains(&service) {
        return None;
    }
    let reads = ["Get", "List", "Validate", "Explain", "Verify"];
    Some(match service {
        "segd.v1.QueryService" if method.starts_with("Update") => Role::Write,
        "segd.v1.QueryService" => Role::Read,
        "segd.v1.ContactService" | "segd.v1.SegmentService" => {
            if reads.iter().any(|r| method.starts_with(r)) {
                Role::Read
            } else {
                Role::Write
            }
        }
        _ => Role::Admin,
    })
}

/// How callers are authenticated.
#[derive(Debug)]
pub enum Auth {
    /// The workspace header alone; every caller is an admin.
    InsecureDev,
    /// Bearer tokens.
    Jwt(Jwt),
}

/// Token checking: its keys and the claims it requires.
#[derive(Debug)]
pub struct Jwt {
    secret: Option<DecodingKey>,
    jwks: Option<Jwks>,
    issuer: Option<String>,
    audience: Option<String>,
}

/// Where JWT keys come from.
#[derive(Debug, Clone, Default)]
pub struct JwtOptions {
    /// HS256 shared secret.
    pub secret: Option<String>,
    /// JWKS file with RS256 or ES256 public keys, reloaded when it changes.
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL with RS256 or ES256 public keys, refreshed in the
    /// background (not with `jwks_file`).
    pub jwks_url: Option<JwksUrlOptions>,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud`, if set.
    pub audience: Option<String>,
}

impl Auth {
    /// Token checking with `o`'s keys. With a JWKS URL, fetches it once and
    /// starts refreshing it on the current tokio runtime (until the `Auth`
    /// is dropped).
    ///
    /// # Errors
    /// No key at all, both a JWKS file and URL, an unreadable JWKS file, or
    /// a first fetch of the JWKS URL that fails or is not a JWKS.
    pub async fn jwt(o: JwtOptions) -> anyhow::Result<Self> {
        let jwks = match (o.jwks_file, o.jwks_url) {
            (Some(_), Some(_)) => {
                anyhow::bail!("--jwks-file and --jwks-url exclude each other; choose one")
            }
            (Some(path), None) => Some(Jwks::File(JwksFile::open(path)?)),
            (None, Some(url)) => Some(Jwks::Url(JwksUrl::start(url).await?)),
            (None, None) => None,
        };
        if o.secret.is_none() && jwks.is_none() {
            anyhow::bail!("JWT authentication needs --jwt-secret, --jwks-file or --jwks-url");
        }
        Ok(Self::Jwt(Jwt {
            secret: o.secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            jwks,
            issuer: o.issuer,
            audience: o.audience,
        }))
    }

    /// The caller of `path` with `headers`: `Ok(None)` for an open service.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` without a valid token, `PERMISSION_DENIED` for a
    /// role below the RPC's or a workspace header naming another workspace;
    /// in dev mode, `INVALID_ARGUMENT` for a bad or missing header.
    pub fn check(&self, path: &str, headers: &http::HeaderMap) -> Result<Option<Caller>, Status> {
        let caller = self.caller(path, headers)?;
        // Every log line of the call names its workspace.
        if let Some(ws) = caller.as_ref().and_then(|c| c.workspace.as_deref()) {
            let span = tracing::Span::current();
            span.record("workspace", ws);
            crate::traces::workspace(&span, ws);
        }
        if caller.as_ref().is_some_and(|c| c.dev) {
            tracing::warn!(
                method = path,
                "insecure dev auth: the caller is not authenticated (--insecure-dev-auth)"
            );
        }
        Ok(caller)
    }

    fn caller(&self, path: &str, headers: &http::HeaderMap) -> Result<Option<Caller>, Status> {
        let Some(need) = required(path) else {
            return Ok(None);
        };
        let admin_rpc = path.trim_start_matches('/').starts_with(ADMIN_SERVICE);
        match self {
            Self::InsecureDev => {
                let workspace = match admin_rpc {
                    true => None,
                    false => Some(workspace::header(headers)?),
                };
                Ok(Some(Caller {
                    workspace,
                    role: Role::Admin,
                    dev: true,
                }))
            }
            Self::Jwt(jwt) => {
                let caller = jwt.verify(headers)?;
                if caller.role < need {
                    return Err(Status::permission_denied(format!(
                        "{path} needs the {need} role; the token's role is {}",
                        caller.role
                    )));
                }
                let named = headers.get(HEADER).and_then(|v| v.to_str().ok());
                if let (Some(named), Some(own)) = (named, &caller.workspace)
                    && named.trim() != own
                {
                    return Err(Status::permission_denied(format!(
                        "the token is for workspace {own:?}, not {:?}",
                        named.trim()
                    )));
                }
                Ok(Some(caller))
            }
        }
    }
}

/// A token's claims segd reads (the registered ones are checked by
/// `jsonwebtoken`).
#[derive(Debug, serde::Deserialize)]
struct Claims {
    workspace: String,
    role: String,
}

fn unauthenticated(msg: impl Into<String>) -> Status {
    Status::unauthenticated(msg)
}

impl Jwt {
    fn verify(&self, headers: &http::HeaderMap) -> Result<Caller, Status> {
        let value = headers.get(http::header::AUTHORIZATION).ok_or_else(|| {
            unauthenticated("a bearer token is required (authorization: Bearer <JWT>)")
        })?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| unauthenticated("the authorization header must be `Bearer <JWT>`"))?;
        let header =
            decode_header(token).map_err(|e| unauthenticated(format!("malformed token: {e}")))?;
        let key = match header.alg {
            Algorithm::HS256 => self.secret.clone().ok_or_else(|| {
                unauthenticated("HS256 tokens are not accepted: no shared secret is configured")
            })?,
            Algorithm::RS256 | Algorithm::ES256 => self
                .jwks
                .as_ref()
                .ok_or_else(|| {
                    unauthenticated(
                        "RS256 and ES256 tokens need a JWKS (--jwks-file or --jwks-url)",
                    )
                })?
                .key(header.kid.as_deref(), header.alg)?,
            other => {
                return Err(unauthenticated(format!(
                    "{other:?} tokens are not accepted; use HS256, RS256 or ES256"
                )));
            }
        };
        let mut v = Validation::new(header.alg);
        v.leeway = 30;
        v.validate_nbf = true;
        let mut required = vec!["exp"];
        match &self.issuer {
            Some(iss) => {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            None => v.iss = None,
        }
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        let data = decode::<Claims>(token, &key, &v)
            .map_err(|e| unauthenticated(format!("invalid token: {e}")))?;
        let role = Role::parse(&data.claims.role).ok_or_else(|| {
            unauthenticated(format!(
                "invalid token: role {:?} is not read, write or admin",
                data.claims.role
            ))
        })?;
        let ws = data.claims.workspace.trim();
        if !workspace::valid(ws) {
            return Err(unauthenticated(format!(
                "invalid token: workspace {ws:?} is not a workspace name"
            )));
        }
        Ok(Caller {
            workspace: Some(ws.to_string()),
            role,
            dev: false,
        })
    }
}

/// The tower layer that checks every call with an [`Auth`].
#[derive(Debug, Clone)]
pub struct AuthLayer(pub Arc<Auth>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.0.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Auth>,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = crate::observe::Respond<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        match self.auth.check(req.uri().path(), req.headers()) {
            Ok(caller) => {
                if let Some(c) = caller {
                    req.extensions_mut().insert(c);
                }
                // The service that was polled ready serves this call.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(req))
            }
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_by_rpc() {
        assert_eq!(required("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            required("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(
            required("/segd.v1.QueryService/StreamMembers"),
            Some(Role::Read)
        );
        assert_eq!(
            required("/segd.v1.QueryService/UpdateMetricsSettings"),
            Some(Role::Write)
        );
        assert_eq!(
            required("/segd.v1.ContactService/ListEvents"),
            Some(Role::Read)
        );
        assert_eq!(
            required("/segd.v1.ContactService/RecordEvents"),
            Some(Role::Write)
        );
        assert_eq!(
            required("/segd.v1.SegmentService/VerifySegment"),
            Some(Role::Read)
        );
        assert_eq!(
            required("/segd.v1.SegmentService/RebuildSegment"),
            Some(Role::Write)
        );
        assert_eq!(
            required("/segd.v1.WorkspaceService/CreateWorkspace"),
            Some(Role::Admin)
        );
        assert_eq!(required("/evil.Service/Method"), Some(Role::Admin));
        assert!(Role::Read < Role::Write && Role::Write < Role::Admin);
    }
}
