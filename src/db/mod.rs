//! The database layer: one module per aggregate, all SQL parameterised,
//! every statement scoped to one workspace. Nothing here knows about gRPC.

pub mod actions;
pub mod changes;
pub mod conninfo;
pub mod contacts;
pub mod deals;
pub mod definitions;
pub mod error;
pub mod events;
pub mod feed;
pub mod history;
pub mod import;
pub mod keys;
pub mod live;
pub mod merge;
pub mod metrics;
pub mod migrate;
pub mod replicas;
pub mod scope;
pub mod segments;
pub mod stream_conn;
pub mod tls;
pub mod workspaces;

use std::time::Duration;

use crate::error::{Error, Result};
use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};

pub use conninfo::ConnInfo;
pub use deadpool_postgres::Object as Conn;

/// A transaction on a pooled connection; the write service layer owns it.
pub type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// A connection pool, and what each transaction a call runs on it sets
/// for itself (see [`scope::Scoped`]).
///
/// Derefs to the deadpool pool it wraps.
#[derive(Clone, Debug)]
pub struct Pool {
    inner: deadpool_postgres::Pool,
    /// The statement timeout a call's transaction sets locally (a session's
    /// settings do not reach its transactions behind a transaction pooler).
    pub statement_timeout: Duration,
    /// The TLS of its connections, for cancel requests.
    pub tls: tls::Tls,
}

impl std::ops::Deref for Pool {
    type Target = deadpool_postgres::Pool;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

/// Builds a connection pool on `db`, whose sessions run in UTC with the
/// given default statement timeout (see [`ConnInfo::session`]).
///
/// # Errors
/// `Internal` if the pool cannot be built.
pub fn pool(db: &ConnInfo, size: usize, statement_timeout: Duration) -> Result<Pool> {
    build(&db.session(statement_timeout), size, statement_timeout)
}

/// Builds a connection pool on `db` behind a transaction pooler
/// (PgBouncer's `pool_mode = transaction`): its connections send no
/// session settings, which such a pooler refuses or would mix between
/// clients; each call's transaction sets its own ([`scope::Scoped`]).
///
/// # Errors
/// `Internal` if the pool cannot be built.
pub fn transaction_pool(db: &ConnInfo, size: usize, statement_timeout: Duration) -> Result<Pool> {
    build(&db.pooled(), size, statement_timeout)
}

fn build(db: &ConnInfo, size: usize, statement_timeout: Duration) -> Result<Pool> {
    let mgr = Manager::from_config(
        db.config.clone(),
        db.tls.make(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let inner = deadpool_postgres::Pool::builder(mgr)
        .max_size(size)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(10)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(Error::internal)?;
    Ok(Pool {
        inner,
        statement_timeout,
        tls: db.tls.clone(),
    })
}

/// Takes a connection from the pool.
///
/// # Errors
/// `Unavailable` when no connection can be had.
pub async fn conn(pool: &deadpool_postgres::Pool) -> Result<Conn> {
    Ok(pool.get().await?)
}

/// Attempts of a write that lost a race (a deadlock, a serialization
/// failure, a key taken concurrently) before its error is returned.
const WRITE_ATTEMPTS: u32 = 6;

/// Retries of a write transaction that lost a race: after a short,
/// growing, jittered pause, while the error is one a new attempt can fix.
///
/// ```text
/// let mut retry = Retry::default();
/// loop {
///     match attempt(client).await {
///         Err(e) if retry.again(&e, |e| matches!(e, Error::Aborted(_))).await => {}
///         other => return other,
///     }
/// }
/// ```
#[derive(Debug, Default)]
pub struct Retry {
    tries: u32,
}

impl Retry {
    /// Whether to try again after `e` (having paused if so).
    pub async fn again(&mut self, e: &Error, retryable: fn(&Error) -> bool) -> bool {
        self.tries += 1;
        if !retryable(e) || self.tries >= WRITE_ATTEMPTS {
            return false;
        }
        let pause = Duration::from_millis(5 << self.tries)
            + Duration::from_millis(rand::random_range(0..10));
        tracing::info!(error = %e, tries = self.tries, ?pause, "write lost a race; retrying");
        tokio::time::sleep(pause).await;
        true
    }
}

/// A deadlock or serialization failure: the transaction can run again.
pub fn conflicted(e: &Error) -> bool {
    matches!(e, Error::Aborted(_))
}

/// A conflict, or a key taken by a concurrent writer between a lookup and
/// a write: an upsert can run again and find it.
pub fn lost_race(e: &Error) -> bool {
    matches!(e, Error::AlreadyExists(_) | Error::Aborted(_))
}

/// How long a cancel request for an abandoned call may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Cancels the statement running on `conn`, of a call that was dropped,
/// and takes the connection out of its pool, so a late cancel can never
/// hit the next user's query.
pub(crate) fn abandon(conn: Conn, cancel: tokio_postgres::CancelToken, tls: &tls::Tls) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let client = deadpool_postgres::Object::take(conn);
    let tls = tls.make();
    rt.spawn(async move {
        match tokio::time::timeout(CANCEL_TIMEOUT, cancel.cancel_query(tls)).await {
            Ok(Ok(())) => tracing::info!("call abandoned; its statement was cancelled"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cancelling an abandoned call's statement")
            }
            Err(_) => tracing::warn!("no answer to the cancel request of an abandoned call"),
        }
        drop(client);
    });
}

/// Encodes a keyset position as an opaque page token.
pub fn encode_token(v: &serde_json::Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Decodes a page token made by [`encode_token`].
///
/// # Errors
/// `InvalidArgument` on `page_token` when it is not one of ours.
pub fn decode_token(token: &str) -> Result<serde_json::Value> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| Error::invalid("page_token", "not a page token from this call"))
}
