//! The row-level security scope of a call (migration 0008): its statements
//! run as [`APP_ROLE`], which does not bypass row-level security, with its
//! workspace in the setting [`WORKSPACE_SETTING`] that every table's policy
//! reads. A statement that forgot `workspace_id = $1` still sees, and may
//! write, only that workspace's rows.
//!
//! The scope is set with `SET LOCAL` in every transaction a call runs
//! ([`Scoped`], [`Scope::begin`]) and ends with it, together with the
//! session settings a transaction relies on (UTC, the statement timeout).
//! Nothing is left on the session, so a connection is safe to share behind
//! a transaction pooler (PgBouncer's `pool_mode = transaction`), which hands
//! the server connection to another client after each transaction. A call
//! therefore runs every statement inside an explicit transaction: a
//! [`Scoped`] connection offers no other way to run one.
//!
//! Work that spans workspaces (migrations, live-segment maintenance,
//! statistics, the feed's listener, workspace administration) runs as the
//! connection's own user, the tables' owner, which the policies do not
//! bind.

use std::time::Duration;

use tokio_postgres::IsolationLevel;

use super::{Conn, Pool, Tx};
use crate::error::Result;
use crate::model::WorkspaceId;

/// The role a call's statements run as.
pub const APP_ROLE: &str = "segd_app";

/// The setting the policies read.
pub const WORKSPACE_SETTING: &str = "segd.workspace";

/// What a call's transactions set for themselves.
#[derive(Debug, Clone, Copy)]
pub struct Scope {
    /// The workspace every statement is scoped to.
    pub ws: WorkspaceId,
    /// The statement timeout (zero: none).
    pub statement_timeout: Duration,
}

impl Scope {
    /// The scope of workspace `ws` on `pool` (its statement timeout).
    pub fn of(pool: &Pool, ws: WorkspaceId) -> Self {
        Self {
            ws,
            statement_timeout: pool.statement_timeout,
        }
    }

    /// Begins a scoped read-committed transaction on `client`.
    ///
    /// # Errors
    /// The database is unavailable, or the role is missing (migration 0008).
    pub async fn begin<'a>(&self, client: &'a mut Conn) -> Result<Tx<'a>> {
        self.begin_with(client, None, false).await
    }

    /// Begins a scoped transaction at `isolation` (read committed when
    /// `None`), read-only if asked.
    ///
    /// # Errors
    /// As [`Scope::begin`].
    pub async fn begin_with<'a>(
        &self,
        client: &'a mut Conn,
        isolation: Option<IsolationLevel>,
        read_only: bool,
    ) -> Result<Tx<'a>> {
        let mut b = client.build_transaction();
        if read_only {
            b = b.read_only(true);
        }
        if let Some(i) = isolation {
            b = b.isolation_level(i);
        }
        let tx = b.start().await?;
        // SET, not SELECT set_config: a query would take the snapshot.
        tx.batch_execute(&self.local_sql()).await?;
        Ok(tx)
    }

    /// The statements that scope a transaction, to send with others in one
    /// simple query (the values are numbers, not caller text).
    pub fn local_sql(&self) -> String {
        format!(
            "{}; SET LOCAL statement_timeout = {}",
            enter_local_sql(self.ws),
            self.statement_timeout.as_millis()
        )
    }
}

/// A pooled connection for one call in one workspace. Its statements run
/// only in transactions it begins, each scoped ([`Scope`]).
pub struct Scoped {
    conn: Option<Conn>,
    scope: Scope,
    /// Set for a call whose statement is cancelled if it is dropped before
    /// [`Scoped::finish`] (see [`super::Session`]).
    guard: Option<(tokio_postgres::CancelToken, super::tls::Tls)>,
}

impl Scoped {
    /// A connection from `pool` for a call in workspace `ws`.
    ///
    /// # Errors
    /// `Unavailable` when no connection can be had.
    pub async fn get(pool: &Pool, ws: WorkspaceId) -> Result<Self> {
        Ok(Self {
            conn: Some(super::conn(pool).await?),
            scope: Scope::of(pool, ws),
            guard: None,
        })
    }

    /// The same, but if the call is dropped before [`Scoped::finish`] (its
    /// caller went away, or its deadline passed), its statement is
    /// cancelled on the server (over `tls`, the pool's) and the connection
    /// leaves the pool.
    ///
    /// # Errors
    /// `Unavailable` when no connection can be had.
    pub async fn guarded(pool: &Pool, tls: &super::tls::Tls, ws: WorkspaceId) -> Result<Self> {
        let mut s = Self::get(pool, ws).await?;
        s.guard = Some((s.conn().cancel_token(), tls.clone()));
        Ok(s)
    }

    /// The call completed: the connection goes back to the pool.
    pub fn finish(mut self) {
        self.guard = None;
    }

    fn conn(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a scoped connection holds it until dropped")
    }

    /// The call's scope.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// Begins a scoped read-committed transaction.
    ///
    /// # Errors
    /// As [`Scope::begin`].
    pub async fn transaction(&mut self) -> Result<Tx<'_>> {
        let scope = self.scope;
        scope.begin(self.conn()).await
    }

    /// Begins a scoped transaction at `isolation`, read-only if asked.
    ///
    /// # Errors
    /// As [`Scope::begin`].
    pub async fn transaction_with(
        &mut self,
        isolation: IsolationLevel,
        read_only: bool,
    ) -> Result<Tx<'_>> {
        let scope = self.scope;
        scope
            .begin_with(self.conn(), Some(isolation), read_only)
            .await
    }

    /// Runs `f` in a scoped read-committed transaction and commits it.
    ///
    /// # Errors
    /// `f`'s errors; the database is unavailable.
    pub async fn run<T>(
        &mut self,
        f: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let tx = self.transaction().await?;
        let out = f(&tx).await?;
        tx.commit().await?;
        Ok(out)
    }
}

impl Drop for Scoped {
    fn drop(&mut self) {
        if let (Some(conn), Some((cancel, tls))) = (self.conn.take(), self.guard.take()) {
            super::abandon(conn, cancel, &tls);
        }
    }
}

/// Scopes the transaction to `ws` ([`APP_ROLE`], [`WORKSPACE_SETTING`]) in
/// UTC, as statements to send with others in one simple query (the
/// workspace id is a number, not caller text).
pub fn enter_local_sql(ws: WorkspaceId) -> String {
    format!(
        "SET LOCAL ROLE {APP_ROLE}; SET LOCAL {WORKSPACE_SETTING} = '{}'; SET LOCAL TimeZone = 'UTC'",
        ws.0
    )
}
