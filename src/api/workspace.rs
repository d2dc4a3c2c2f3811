//! Which workspace a call is for. Today it comes from the `x-segd-workspace`
//! header; a bearer token will replace it here, and only here.

use tonic::{Request, Status};

use super::AppState;
use crate::model::WorkspaceId;

/// The request header naming the workspace.
pub const HEADER: &str = "x-segd-workspace";

/// The validated workspace name, placed in request extensions by [`interceptor`].
#[derive(Debug, Clone)]
pub struct WorkspaceName(pub String);

/// Rejects calls without a valid workspace header and records the name.
///
/// # Errors
/// `INVALID_ARGUMENT` naming the header when it is missing, malformed or
/// repeated.
pub fn interceptor(mut req: Request<()>) -> Result<Request<()>, Status> {
    let mut values = req.metadata().get_all(HEADER).iter();
    let raw = values
        .next()
        .ok_or_else(|| bad(format!("the `{HEADER}` header is required")))?;
    if values.next().is_some() {
        return Err(bad(format!(
            "`{HEADER}` is given more than once; name exactly one workspace"
        )));
    }
    let name = raw
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|n| valid(n))
        .ok_or_else(|| {
            bad(format!(
                "`{HEADER}` must be 1 to 63 of a-z, 0-9, `-`, `_`, `.`, starting alphanumeric"
            ))
        })?
        .to_string();
    req.extensions_mut().insert(WorkspaceName(name));
    Ok(req)
}

fn bad(msg: String) -> Status {
    super::error::invalid(vec![crate::error::Violation::new(HEADER, msg)])
}

fn valid(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.')
        })
}

impl AppState {
    /// The workspace of a request that passed [`interceptor`], created on first use.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` without the header, `UNAVAILABLE` without a database.
    pub async fn workspace<T>(&self, req: &Request<T>) -> Result<WorkspaceId, Status> {
        let name = req
            .extensions()
            .get::<WorkspaceName>()
            .ok_or_else(|| bad(format!("the `{HEADER}` header is required")))?;
        Ok(self.workspaces.resolve(&name.0).await?)
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
