//! The row-level security scope of a call (migration 0008): its statements
//! run as [`APP_ROLE`], which does not bypass row-level security, with its
//! workspace in the setting [`WORKSPACE_SETTING`] that every table's policy
//! reads. A statement that forgot `workspace_id = $1` still sees, and may
//! write, only that workspace's rows.
//!
//! A pooled connection is scoped for the call that took it ([`conn_in`])
//! and reset ([`RESET`]) before anyone else takes it; a transaction is
//! scoped with `SET LOCAL` ([`enter`] with `local`), which ends with it.
//! Work that spans workspaces (migrations, live-segment maintenance,
//! statistics, the feed's listener, workspace administration) runs as the
//! connection's own user, the tables' owner, which the policies do not
//! bind.

use deadpool_postgres::Pool;
use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;

use super::Conn;
use crate::error::Result;
use crate::model::WorkspaceId;

/// The role a call's statements run as.
pub const APP_ROLE: &str = "segd_app";

/// The setting the policies read.
pub const WORKSPACE_SETTING: &str = "segd.workspace";

/// Undoes a session-wide scope; pooled connections run it when recycled.
pub const RESET: &str = "RESET ROLE; RESET segd.workspace";

/// A pooled connection scoped to `ws` for one call.
///
/// # Errors
/// `Unavailable` when no connection can be had.
pub async fn conn_in(pool: &Pool, ws: WorkspaceId) -> Result<Conn> {
    let conn = super::conn(pool).await?;
    enter(&**conn, ws, false).await?;
    Ok(conn)
}

/// Scopes `client` to `ws`: for the rest of the transaction when `local`,
/// else for the session. One round trip.
///
/// # Errors
/// The database is unavailable, or the role is missing (migration 0008).
pub async fn enter(client: &impl GenericClient, ws: WorkspaceId, local: bool) -> Result<()> {
    client
        .query_typed(
            "SELECT set_config('role', $1, $3), set_config($2, $4, $3)",
            &[
                (&APP_ROLE, Type::TEXT),
                (&WORKSPACE_SETTING, Type::TEXT),
                (&local, Type::BOOL),
                (&ws.0.to_string(), Type::TEXT),
            ],
        )
        .await?;
    Ok(())
}

/// The same as `enter(.., true)`, as statements to send with others in
/// one simple query (the workspace id is a number, not caller text).
pub fn enter_local_sql(ws: WorkspaceId) -> String {
    format!(
        "SET LOCAL ROLE {APP_ROLE}; SET LOCAL {WORKSPACE_SETTING} = '{}'",
        ws.0
    )
}
