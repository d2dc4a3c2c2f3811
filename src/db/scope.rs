//! The row-level security scope of a call (migration 0008): its statements
//! run as [`APP_ROLE`], which does not bypass row-level security, with its
//! workspace in the setting [`WORKSPACE_SETTING`] that every table's policy
//! reads. A statement that forgot `workspace_id = $1` still sees, and may
//! write, only that workspace's rows.
//!
//! The scope is set with `SET LOCAL` in every transaction a call runs
//! ([`Scoped`], [`Scope::begin_with`]) and ends with it, together with the
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

    /// Begins a scoped transaction on `client` at `isolation` (read
    /// committed when `None`), read-only if asked.
    ///
    /// # Errors
    /// The database is unavailable, or the role is missing (migration 0008).
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

    /// The statements that scope a transaction ([`APP_ROLE`],
    /// [`WORKSPACE_SETTING`], UTC, the statement timeout), to send with
    /// others in one simple query (the values are numbers, not caller text).
    pub fn local_sql(&self) -> String {
        format!(
            "SET LOCAL ROLE {APP_ROLE}; SET LOCAL {WORKSPACE_SETTING} = '{}'; SET LOCAL TimeZone = 'UTC'; SET LOCAL statement_timeout = {}",
            self.ws.0,
            self.statement_timeout.as_millis()
        )
    }
}

/// A pooled connection for one call in one workspace. Its statements run
/// only inside the functions it runs, each in a scoped transaction
/// ([`Scope`]) that it commits when the function succeeds.
///
/// Dropped while a transaction is under way (the call was dropped: its
/// caller went away, or its deadline passed), it cancels the statement on
/// the server and takes the connection out of the pool. The connection may
/// then hold a statement prepared by a request that never saw its answer;
/// closed, it cannot reach the next caller, nor, behind a transaction
/// pooler, another client.
pub struct Scoped {
    conn: Option<Conn>,
    scope: Scope,
    /// A transaction was begun and has not ended.
    busy: bool,
    cancel: tokio_postgres::CancelToken,
    tls: super::tls::Tls,
}

impl Scoped {
    /// A connection from `pool` for a call in workspace `ws`.
    ///
    /// # Errors
    /// `Unavailable` when no connection can be had.
    pub async fn get(pool: &Pool, ws: WorkspaceId) -> Result<Self> {
        let conn = super::conn(pool).await?;
        Ok(Self {
            cancel: conn.cancel_token(),
            conn: Some(conn),
            scope: Scope::of(pool, ws),
            busy: false,
            tls: pool.tls.clone(),
        })
    }

    /// The call's scope.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// The same, with statement timeout `timeout` (zero: none) instead of
    /// the pool's.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.scope.statement_timeout = timeout;
        self
    }

    /// Runs `f` in a scoped read-committed transaction, and commits it if
    /// `f` succeeds.
    ///
    /// # Errors
    /// `f`'s errors; the database is unavailable.
    pub async fn run<T>(
        &mut self,
        f: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        self.run_tx(None, false, async |tx| f(tx).await).await
    }

    /// Runs `f` in a scoped read-only REPEATABLE READ transaction: one
    /// snapshot for all its reads.
    ///
    /// # Errors
    /// `f`'s errors; the database is unavailable.
    pub async fn read_snapshot<T>(
        &mut self,
        f: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        self.run_tx(Some(IsolationLevel::RepeatableRead), true, async |tx| {
            f(tx).await
        })
        .await
    }

    /// Runs `f` in a scoped transaction at `isolation` (read committed when
    /// `None`), read-only if asked, and commits it if `f` succeeds.
    ///
    /// # Errors
    /// `f`'s errors; the database is unavailable.
    pub async fn run_tx<T>(
        &mut self,
        isolation: Option<IsolationLevel>,
        read_only: bool,
        f: impl AsyncFnOnce(&Tx<'_>) -> Result<T>,
    ) -> Result<T> {
        let scope = self.scope;
        let conn = self
            .conn
            .as_mut()
            .expect("a scoped connection holds it until dropped");
        self.busy = true;
        let tx = scope.begin_with(conn, isolation, read_only).await?;
        let out = f(&tx).await;
        let out = match out {
            Ok(v) => tx.commit().await.map(|()| v).map_err(Into::into),
            // Nothing is in flight: the rollback goes ahead of whatever the
            // connection runs next.
            Err(e) => Err(e),
        };
        self.busy = false;
        out
    }
}

impl Drop for Scoped {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take().filter(|_| self.busy) {
            super::abandon(conn, self.cancel.clone(), &self.tls);
        }
    }
}
