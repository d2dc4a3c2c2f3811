//! Which workspace a call is for: the caller's token's (see
//! [`super::auth`]), or in insecure dev mode, the `x-segd-workspace` header.

use tonic::{Request, Status};

use super::AppState;
use super::auth::Caller;
use crate::model::WorkspaceId;

/// The request header naming the workspace (dev mode; with tokens, it may
/// only repeat the token's workspace).
pub const HEADER: &str = "x-segd-workspace";

/// The workspace the dev-mode header names.
///
/// # Errors
/// `INVALID_ARGUMENT` naming the header when it is missing, malformed or
/// repeated.
pub fn header(headers: &http::HeaderMap) -> Result<String, Status> {
    let mut values = headers.get_all(HEADER).iter();
    let raw = values
        .next()
        .ok_or_else(|| bad(format!("the `{HEADER}` header is required")))?;
    if values.next().is_some() {
        return Err(bad(format!(
            "`{HEADER}` is given more than once; name exactly one workspace"
        )));
    }
    Ok(raw
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|n| valid(n))
        .ok_or_else(|| {
            bad(format!(
                "`{HEADER}` must be 1 to 63 of a-z, 0-9, `-`, `_`, `.`, starting alphanumeric"
            ))
        })?
        .to_string())
}

fn bad(msg: String) -> Status {
    super::error::invalid(vec![crate::error::Violation::new(HEADER, msg)])
}

/// Whether `n` is a workspace name.
pub fn valid(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.')
        })
}

impl AppState {
    /// The workspace of a request the auth layer let through: the token's,
    /// which must exist (workspaces are created by an admin), or in dev
    /// mode the header's, created on first use.
    ///
    /// # Errors
    /// `PERMISSION_DENIED` for a token's workspace that does not exist,
    /// `UNAUTHENTICATED` for a call the layer did not see, `UNAVAILABLE`
    /// without a database.
    pub async fn workspace<T>(&self, req: &Request<T>) -> Result<WorkspaceId, Status> {
        let caller = req
            .extensions()
            .get::<Caller>()
            .ok_or_else(|| Status::unauthenticated("the call was not authenticated"))?;
        let Some(name) = &caller.workspace else {
            return Err(bad(format!("the `{HEADER}` header is required")));
        };
        if caller.dev {
            return Ok(self.workspaces.resolve(name).await?);
        }
        self.workspaces.find(name).await?.ok_or_else(|| {
            Status::permission_denied(format!(
                "workspace {name:?} does not exist; an admin creates it with WorkspaceService/CreateWorkspace"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid("acme"));
        assert!(valid("acme-eu.1"));
        assert!(!valid(""));
        assert!(!valid("-acme"));
        assert!(!valid("Acme"));
        assert!(!valid("a b"));
    }
}
