//! gRPC services: proto ↔ domain, nothing else. Handlers validate, call one
//! function a layer down, and convert the answer.

pub mod admin;
pub mod auth;
pub mod contacts;
pub mod convert;
pub mod error;
pub mod imports;
pub mod metrics;
pub mod query;
pub mod route;
pub mod segments;
pub mod shed;
pub mod watch;
pub mod workspace;

use std::sync::Arc;
use std::time::Duration;

use crate::db::Pool;
use tokio_util::sync::CancellationToken;

use crate::db::workspaces::Workspaces;

/// Limits and timeouts the services apply.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Statement timeout for counts, previews and breakdowns.
    pub query_timeout: Duration,
    /// Statement timeout for membership streams (zero: none).
    pub stream_timeout: Duration,
    /// How long a stream waits for its reader to take a batch before it
    /// ends with a resumable error (zero: forever).
    pub stream_stall_timeout: Duration,
    /// How long a stream may take to open its database session.
    pub stream_connect_timeout: Duration,
    /// Receive buffer asked for stream sessions' sockets, in bytes: a deep
    /// one lets PostgreSQL keep writing while segd is off the CPU.
    pub stream_socket_buffer: u32,
    /// When segd analyzes a table it writes to (see `service::stats`).
    pub statistics: crate::service::stats::Thresholds,
    /// EXPLAIN cost above which inline definitions need `allow_expensive`.
    pub max_query_cost: f64,
    /// Member streams running at once, each on its own session.
    pub max_streams: usize,
    /// Queries (counts, previews, checks, reads) running at once.
    pub max_queries: usize,
    /// Writes running at once.
    pub max_writes: usize,
    /// How long a query or write waits for a slot before RESOURCE_EXHAUSTED
    /// (at most half its deadline).
    pub shed_wait: Duration,
    /// How live segments are maintained.
    pub live: crate::service::live::Options,
    /// How stale a replica may be for a read that does not say.
    pub replica_max_staleness: Duration,
    /// How often replicas are checked against the primary.
    pub replica_check_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            query_timeout: Duration::from_secs(60),
            stream_timeout: Duration::from_secs(600),
            stream_stall_timeout: Duration::from_secs(60),
            stream_connect_timeout: Duration::from_secs(10),
            stream_socket_buffer: crate::db::stream_conn::RECV_BUFFER,
            statistics: crate::service::stats::Thresholds::default(),
            max_query_cost: 50_000_000.0,
            max_streams: 32,
            max_queries: 16,
            max_writes: 16,
            shed_wait: Duration::from_millis(250),
            live: crate::service::live::Options::default(),
            replica_max_staleness: Duration::from_secs(10),
            replica_check_interval: Duration::from_secs(1),
        }
    }
}

/// What every service shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The pool calls run their scoped transactions on (through a
    /// transaction pooler, if segd is behind one).
    pub pool: Pool,
    /// The pool of work that needs a session of its own or spans
    /// workspaces: live-segment maintenance, statistics, replica checks,
    /// workspace administration. The same as `pool` unless segd is behind
    /// a transaction pooler (`--session-database-url`).
    pub owner: Pool,
    /// Sessions for member streams, apart from the pool.
    pub streams: Arc<crate::db::stream_conn::StreamSessions>,
    /// Bounds concurrent member streams.
    pub stream_slots: Arc<tokio::sync::Semaphore>,
    /// Workspace resolution and creation.
    pub workspaces: Arc<Workspaces>,
    /// Cancelled when the server shuts down; streams stop on it.
    pub shutdown: CancellationToken,
    /// Rows written per table and workspace, for fresh planner statistics.
    pub statistics: Arc<crate::service::stats::Statistics>,
    /// Keeps live segments current.
    pub live: crate::service::live::Maintainer,
    /// Hears the change feed's notifications.
    pub feed: Arc<crate::service::feed::Listener>,
    /// Where the feed listener connects (`LISTEN` needs a session).
    pub feed_db: crate::db::ConnInfo,
    /// Limits and timeouts.
    pub limits: Limits,
    /// The instant definitions are evaluated at (tests move it).
    pub clock: crate::clock::Clock,
    /// How callers are authenticated.
    pub auth: Arc<auth::Auth>,
    /// Hot standbys that serve reads (none by default).
    pub replicas: Arc<crate::db::replicas::Replicas>,
}

impl AppState {
    /// State over `pool`; member streams open their own sessions with
    /// `stream_db` (see `db::ConnInfo::session`), with its TLS.
    pub fn new(pool: Pool, stream_db: crate::db::ConnInfo, limits: Limits) -> Self {
        Self::split(pool.clone(), pool, stream_db.clone(), stream_db, limits)
    }

    /// State whose calls run on `pool` and member streams on `stream_db`,
    /// and whose session work runs on `owner` and the feed listener on
    /// `owner_db`: behind a transaction pooler, the first two reach it and
    /// the last two reach PostgreSQL directly (or a session pool).
    pub fn split(
        pool: Pool,
        owner: Pool,
        stream_db: crate::db::ConnInfo,
        owner_db: crate::db::ConnInfo,
        limits: Limits,
    ) -> Self {
        let feed_db = owner_db;
        let statistics = crate::service::stats::Statistics::new(limits.statistics);
        let clock = crate::clock::Clock::default();
        Self {
            streams: Arc::new(crate::db::stream_conn::StreamSessions::new(
                stream_db,
                4,
                limits.stream_socket_buffer,
            )),
            workspaces: Arc::new(Workspaces::new(owner.clone())),
            live: crate::service::live::Maintainer::new(owner.clone(), limits.live)
                .with_statistics(statistics.clone())
                .with_clock(clock.clone()),
            clock,
            statistics,
            stream_slots: Arc::new(tokio::sync::Semaphore::new(limits.max_streams)),
            feed: crate::service::feed::Listener::new(),
            feed_db,
            pool,
            owner,
            shutdown: CancellationToken::new(),
            limits,
            auth: Arc::new(auth::Auth::InsecureDev),
            replicas: Arc::default(),
        }
    }

    /// A connection as the tables' owner, for work across workspaces.
    ///
    /// # Errors
    /// `UNAVAILABLE` when the database cannot be reached.
    pub async fn owner_conn(&self) -> Result<crate::db::Conn, tonic::Status> {
        Ok(crate::db::conn(&self.owner).await?)
    }

    /// A connection for a call in workspace `ws`: its statements run in
    /// transactions under row-level security, scoped to `ws` (see
    /// `db::scope`).
    ///
    /// # Errors
    /// `UNAVAILABLE` when the database cannot be reached.
    pub async fn conn_in(
        &self,
        ws: crate::model::WorkspaceId,
    ) -> Result<crate::db::scope::Scoped, tonic::Status> {
        Ok(crate::db::scope::Scoped::get(&self.pool, ws).await?)
    }
}
