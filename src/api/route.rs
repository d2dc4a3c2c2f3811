//! Where a read runs: a read replica fresh enough for the request, or the
//! primary. The answer says which in its response headers:
//! `segd-read-from` is `primary` or `replica`, and a replica's read also
//! carries `segd-replica` (its host, port and database) and
//! `segd-replica-staleness-ms` (how old its data may be).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::db::Pool;
use tonic::metadata::MetadataValue;
use tonic::{Response, Status};

use super::AppState;
use super::error::invalid;
use crate::db::replicas::Replica;
use crate::db::stream_conn::StreamSessions;
use crate::error::Violation;

/// Where one read runs.
#[derive(Debug)]
pub struct Route {
    /// The replica and its staleness when picked; `None` for the primary.
    pub replica: Option<(Arc<Replica>, Duration)>,
    /// Set when the replica could not answer and the primary did.
    pub fell_back: AtomicBool,
}

impl Route {
    /// The replica's pool, if the read runs on one, and the flag that
    /// notes a fall back to the primary.
    pub fn replica(&self) -> Option<(&Pool, &AtomicBool)> {
        self.replica
            .as_ref()
            .map(|(r, _)| (&r.pool, &self.fell_back))
    }

    /// The stream sessions to use: the replica's, or `primary`.
    pub fn streams(&self, primary: &Arc<StreamSessions>) -> Arc<StreamSessions> {
        self.replica
            .as_ref()
            .map_or_else(|| primary.clone(), |(r, _)| r.streams.clone())
    }

    /// Marks `resp` with where the read ran, and counts it.
    pub fn annotate<T>(&self, mut resp: Response<T>) -> Response<T> {
        let h = resp.metadata_mut();
        let replica = self
            .replica
            .as_ref()
            .filter(|_| !self.fell_back.load(Ordering::Relaxed));
        // Counted where the read ran, after any fall back to the primary.
        crate::observe::read_routed(replica.is_some());
        match replica {
            None => {
                h.insert("segd-read-from", MetadataValue::from_static("primary"));
            }
            Some((r, staleness)) => {
                h.insert("segd-read-from", MetadataValue::from_static("replica"));
                if let Ok(v) = r.name.parse() {
                    h.insert("segd-replica", v);
                }
                h.insert(
                    "segd-replica-staleness-ms",
                    MetadataValue::from(staleness.as_millis() as u64),
                );
            }
        }
        resp
    }
}

impl AppState {
    /// Picks where a read with the request's `max_staleness` (unset: the
    /// server's default; zero: the primary) runs.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` on a negative or malformed `max_staleness`.
    pub fn route(&self, max_staleness: Option<&prost_types::Duration>) -> Result<Route, Status> {
        let max = match max_staleness {
            None => self.limits.replica_max_staleness,
            Some(d) if d.seconds < 0 || !(0..1_000_000_000).contains(&d.nanos) => {
                return Err(invalid(vec![Violation::new(
                    "max_staleness",
                    "must be a non-negative duration (nanos 0 to 999,999,999)",
                )]));
            }
            Some(d) => Duration::new(d.seconds as u64, d.nanos as u32),
        };
        let replica = self.replicas.pick(max);
        Ok(Route {
            replica,
            fell_back: AtomicBool::new(false),
        })
    }
}
