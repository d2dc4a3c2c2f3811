//! Read replicas: PostgreSQL hot standbys that serve reads (member streams,
//! counts, previews, breakdowns, overlaps) while writes, maintenance and the
//! change feed stay on the primary.
//!
//! How stale a replica is, is measured, not guessed. Every check notes the
//! time, reads the primary's WAL position, then asks the replica whether it
//! has replayed past it; if so, everything committed on the primary before
//! the noted time is on the replica. A replica's *staleness* is the time
//! since the last check that found it so: an upper bound on how old its
//! data is (a healthy replica shows about one check interval). A replica
//! that is down, or not a standby at all, stops being found caught up, so
//! its staleness grows and reads leave it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::db::Pool;
use tokio_util::sync::CancellationToken;

use super::ConnInfo;
use super::stream_conn::StreamSessions;
use crate::error::{Error, Result};

/// One hot standby.
#[derive(Debug)]
pub struct Replica {
    /// `host:port/database`, for logs, headers and metrics (no password).
    pub name: String,
    /// Pooled connections for unary reads.
    pub pool: Pool,
    /// Sessions for member streams.
    pub streams: Arc<StreamSessions>,
    /// When a check last found it caught up with the primary.
    caught_up: Mutex<Option<Instant>>,
}

impl Replica {
    /// A replica over `pool` and `streams`, not yet known to be caught up.
    pub fn new(name: String, pool: Pool, streams: Arc<StreamSessions>) -> Self {
        Self {
            name,
            pool,
            streams,
            caught_up: Mutex::new(None),
        }
    }

    /// How old its data may be; `None` until a check found it caught up.
    pub fn staleness(&self) -> Option<Duration> {
        self.caught_up
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map(|t| t.elapsed())
    }

    fn mark_caught_up(&self, at: Instant) {
        *self
            .caught_up
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(at);
    }
}

/// The read replicas, picked in turn.
#[derive(Debug, Default)]
pub struct Replicas {
    list: Vec<Arc<Replica>>,
    next: AtomicUsize,
}

impl Replicas {
    /// Reads over `list`.
    pub fn new(list: Vec<Replica>) -> Self {
        Self {
            list: list.into_iter().map(Arc::new).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Replicas at `urls` (with `ca` as for the primary, see
    /// [`ConnInfo::parse`]), each with a pool of `pool_size` and stream
    /// sessions configured as the primary's (see [`ConnInfo::session`]).
    /// Nothing connects yet: the first check does.
    ///
    /// # Errors
    /// A URL does not parse, or its TLS settings cannot be used.
    pub fn connect(
        urls: &[&str],
        ca: Option<&std::path::Path>,
        pool_size: usize,
        statement_timeout: Duration,
        socket_buffer: u32,
    ) -> Result<Self> {
        let list = urls
            .iter()
            .map(|url| {
                let db = ConnInfo::parse(url, ca)?;
                Ok(Replica::new(
                    display_name(url)?,
                    super::pool(&db, pool_size, statement_timeout)?,
                    Arc::new(StreamSessions::new(
                        db.session(statement_timeout),
                        4,
                        socket_buffer,
                    )),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::new(list))
    }

    /// The replicas, in configuration order.
    pub fn all(&self) -> &[Arc<Replica>] {
        &self.list
    }

    /// The next replica (in turn) whose staleness is at most `max`, with
    /// that staleness; `None` when none is fresh enough (read the primary).
    pub fn pick(&self, max: Duration) -> Option<(Arc<Replica>, Duration)> {
        let n = self.list.len();
        if n == 0 || max.is_zero() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).find_map(|i| {
            let r = &self.list[(start + i) % n];
            r.staleness().filter(|s| *s <= max).map(|s| (r.clone(), s))
        })
    }

    /// Checks every replica against the primary every `every` until
    /// `shutdown`, keeping staleness and its metric current.
    pub async fn run(self: Arc<Self>, primary: Pool, every: Duration, shutdown: CancellationToken) {
        if self.list.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = vec![false; self.list.len()];
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            // One reading of the primary serves every replica's check.
            let at = Instant::now();
            let limit = every.max(Duration::from_secs(1));
            let lsn = match tokio::time::timeout(limit, primary_lsn(&primary)).await {
                Ok(Ok(lsn)) => Some(lsn),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading the primary's WAL position for the replica checks");
                    None
                }
                Err(_) => {
                    tracing::warn!(
                        "reading the primary's WAL position for the replica checks timed out"
                    );
                    None
                }
            };
            for (r, failing) in self.list.iter().zip(failing.iter_mut()) {
                if let Some(lsn) = &lsn {
                    match tokio::time::timeout(limit, check(r, lsn, at)).await {
                        Ok(Ok(())) if *failing => {
                            *failing = false;
                            tracing::info!(replica = %r.name, "read replica reachable again");
                        }
                        Ok(Err(e)) if !*failing => {
                            *failing = true;
                            tracing::warn!(replica = %r.name, error = %e, "read replica check failed; reads leave it as it grows stale");
                        }
                        Err(_) if !*failing => {
                            *failing = true;
                            tracing::warn!(replica = %r.name, "read replica check timed out; reads leave it as it grows stale");
                        }
                        _ => {}
                    }
                }
                crate::observe::replica_staleness(&r.name, r.staleness());
            }
        }
    }
}

/// The primary's current WAL position, as text.
async fn primary_lsn(primary: &Pool) -> Result<String> {
    Ok(super::conn(primary)
        .await?
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0))
}

/// One check: has `r` replayed past `lsn`, the primary's WAL position
/// read after `at`? Then it holds everything committed before `at`.
async fn check(r: &Replica, lsn: &str, at: Instant) -> Result<()> {
    let row = super::conn(&r.pool)
        .await?
        .query_one(
            "SELECT pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
            &[&lsn],
        )
        .await?;
    let (standby, caught_up): (bool, bool) = (row.get(0), row.get(1));
    if !standby {
        return Err(Error::FailedPrecondition(
            "it is not a hot standby (pg_is_in_recovery() is false); segd reads only from standbys of its primary".into(),
        ));
    }
    if caught_up {
        r.mark_caught_up(at);
    }
    Ok(())
}

/// `host:port/database` of a connection URL, without credentials.
///
/// # Errors
/// The URL does not parse.
pub fn display_name(url: &str) -> Result<String> {
    let cfg = ConnInfo::parse(url, None)
        .map_err(|_| Error::invalid("read_database_url", "not a PostgreSQL URL"))?
        .config;
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    Ok(format!(
        "{host}:{port}/{}",
        cfg.get_dbname().unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(name: &str) -> Replica {
        let db = ConnInfo::parse("postgres://u@127.0.0.1:1/db", None).unwrap();
        let pool = crate::db::pool(&db, 1, Duration::from_secs(1)).unwrap();
        Replica::new(
            name.into(),
            pool,
            Arc::new(StreamSessions::new(db, 1, 1 << 16)),
        )
    }

    #[tokio::test]
    async fn picks_only_replicas_fresh_enough_and_in_turn() {
        let rs = Replicas::new(vec![replica("a"), replica("b")]);
        assert!(rs.pick(Duration::from_secs(60)).is_none(), "never checked");
        let now = Instant::now();
        rs.all()[0].mark_caught_up(now);
        rs.all()[1].mark_caught_up(now - Duration::from_secs(30));
        let names: Vec<String> = (0..4)
            .map(|_| rs.pick(Duration::from_secs(60)).unwrap().0.name.clone())
            .collect();
        assert!(names.contains(&"a".to_string()) && names.contains(&"b".to_string()));
        for _ in 0..4 {
            assert_eq!(rs.pick(Duration::from_secs(10)).unwrap().0.name, "a");
        }
        assert!(
            rs.pick(Duration::ZERO).is_none(),
            "zero staleness is the primary"
        );
        assert!(Replicas::default().pick(Duration::from_secs(60)).is_none());
    }

    #[test]
    fn names_carry_no_credentials() {
        assert_eq!(
            display_name("postgres://u:secret@db-r1:5433/segd").unwrap(),
            "db-r1:5433/segd"
        );
        assert!(display_name("not a url").is_err());
    }
}
