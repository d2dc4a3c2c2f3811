//! Live segments' storage: the change queue as the maintainer reads it, the
//! maintenance state, and the feed offset.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use crate::error::Result;
use crate::model::WorkspaceId;

/// Advisory lock namespace of live maintenance: one maintainer per
/// workspace at a time, across replicas.
const LOCK_SPACE: i32 = 0x5e9d;

/// A queued write.
#[derive(Debug, Clone)]
pub struct Queued {
    /// Queue position.
    pub seq: i64,
    /// The contacts (`None`: every contact).
    pub ids: Option<Vec<i64>>,
    /// What changed.
    pub keys: Vec<String>,
    /// The write.
    pub cause: String,
    /// When it was queued.
    pub at: DateTime<Utc>,
    /// Segment actions in the chain that made it (0: a caller's write).
    pub depth: i32,
}

/// Workspaces with queued writes, live segments to build, or time-moved
/// live segments not evaluated for `tick`.
///
/// # Errors
/// The database is unavailable.
pub async fn busy(
    client: &impl GenericClient,
    now: DateTime<Utc>,
    tick: Duration,
) -> Result<Vec<WorkspaceId>> {
    let rows = client
        .query(
            "SELECT DISTINCT workspace_id FROM change_queue
             UNION
             SELECT s.workspace_id FROM segments s
             LEFT JOIN live_state l ON l.workspace_id = s.workspace_id AND l.segment_id = s.id
             WHERE s.live AND s.enabled
               AND (l.built_version IS DISTINCT FROM s.version
                    OR (l.timed AND l.evaluated_at <= $1::timestamptz - $2::float8 * interval '1 second'))",
            &[&now, &tick.as_secs_f64()],
        )
        .await?;
    Ok(rows.iter().map(|r| WorkspaceId(r.get(0))).collect())
}

/// Takes workspace `ws`'s maintenance lock for the transaction, if no
/// other maintainer holds it.
///
/// # Errors
/// The database is unavailable.
pub async fn try_lock(tx: &impl GenericClient, ws: WorkspaceId) -> Result<bool> {
    let row = tx
        .query_one(
            "SELECT pg_try_advisory_xact_lock($1, $2::int)",
            &[&LOCK_SPACE, &(ws.0 as i32)],
        )
        .await?;
    Ok(row.get(0))
}

/// Takes workspace `ws`'s maintenance lock for the transaction, waiting for
/// another maintainer to finish.
///
/// # Errors
/// The database is unavailable.
pub async fn lock(tx: &impl GenericClient, ws: WorkspaceId) -> Result<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2::int)",
        &[&LOCK_SPACE, &(ws.0 as i32)],
    )
    .await?;
    Ok(())
}

/// Writes of `ws` queued and not yet applied.
///
/// # Errors
/// The database is unavailable.
pub async fn pending(client: &impl GenericClient, ws: WorkspaceId) -> Result<i64> {
    let row = client
        .query_one(
            "SELECT count(*) FROM change_queue WHERE workspace_id = $1",
            &[&ws.0],
        )
        .await?;
    Ok(row.get(0))
}

/// Marks a live segment for a rebuild.
///
/// # Errors
/// The database is unavailable.
pub async fn invalidate(client: &impl GenericClient, ws: WorkspaceId, segment: i64) -> Result<()> {
    client
        .execute(
            "UPDATE live_state SET built_version = NULL WHERE workspace_id = $1 AND segment_id = $2",
            &[&ws.0, &segment],
        )
        .await?;
    Ok(())
}

/// The oldest queued writes of `ws`, at most `limit`.
///
/// # Errors
/// The database is unavailable.
pub async fn queued(tx: &impl GenericClient, ws: WorkspaceId, limit: i64) -> Result<Vec<Queued>> {
    let rows = tx
        .query(
            "SELECT seq, contact_ids, keys, cause, enqueued_at, depth FROM change_queue
             WHERE workspace_id = $1 ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[&ws.0, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Queued {
            seq: r.get(0),
            ids: r.get(1),
            keys: r.get(2),
            cause: r.get(3),
            at: r.get(4),
            depth: r.get(5),
        })
        .collect())
}

/// Removes applied writes from the queue.
///
/// # Errors
/// The database is unavailable.
pub async fn done(tx: &impl GenericClient, ws: WorkspaceId, seqs: &[i64]) -> Result<()> {
    tx.execute(
        "DELETE FROM change_queue WHERE workspace_id = $1 AND seq = ANY($2)",
        &[&ws.0, &seqs],
    )
    .await?;
    Ok(())
}

/// The workspace's last feed offset, locked until the transaction ends.
///
/// # Errors
/// The database is unavailable.
pub async fn feed_offset(tx: &impl GenericClient, ws: WorkspaceId) -> Result<i64> {
    tx.execute(
        "INSERT INTO feed_offsets (workspace_id) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&ws.0],
    )
    .await?;
    let row = tx
        .query_one(
            "SELECT last FROM feed_offsets WHERE workspace_id = $1 FOR UPDATE",
            &[&ws.0],
        )
        .await?;
    Ok(row.get(0))
}

/// Sets the workspace's last feed offset.
///
/// # Errors
/// The database is unavailable.
pub async fn set_feed_offset(tx: &impl GenericClient, ws: WorkspaceId, offset: i64) -> Result<()> {
    tx.execute(
        "UPDATE feed_offsets SET last = $2 WHERE workspace_id = $1",
        &[&ws.0, &offset],
    )
    .await?;
    Ok(())
}

/// What one refresh of a segment did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Refreshed {
    /// Contacts that entered.
    pub entered: i64,
    /// Contacts that left.
    pub exited: i64,
    /// The refresh took this long, in milliseconds.
    pub ms: f64,
    /// A refresh over every contact, of the definition version given.
    pub built: Option<i64>,
    /// Time alone moves the segment's members.
    pub timed: bool,
    /// Time's effects up to now are applied (a build, or a clock pass).
    pub clocked: bool,
    /// After a refresh over every contact: the members, counted (else the
    /// stored size moves by the entries and exits).
    pub size: Option<i64>,
}

/// Records a refresh in the segment's state and its history.
///
/// # Errors
/// The database is unavailable.
pub async fn record(
    tx: &impl GenericClient,
    ws: WorkspaceId,
    segment: i64,
    r: Refreshed,
    now: DateTime<Utc>,
) -> Result<()> {
    // With the hour's rollup of the segment's history (one statement: the
    // maintainer's pass pays no extra round trip for it).
    tx.execute(
        "WITH s AS (
         INSERT INTO live_state AS l (workspace_id, segment_id, built_version, size, changed_at, eval_ms,
                                      last_error, timed, evaluated_at, eval_ms_total, first_built_at)
         VALUES ($1, $2, $3,
                 coalesce($10, $4::bigint - $5::bigint),
                 CASE WHEN $4::bigint + $5::bigint > 0 THEN $6::timestamptz END, $7::float8, NULL, $8,
                 CASE WHEN $3::bigint IS NOT NULL OR $9 THEN $6::timestamptz END, $7,
                 CASE WHEN $3::bigint IS NOT NULL THEN $6::timestamptz END)
         ON CONFLICT (workspace_id, segment_id) DO UPDATE SET
             built_version = coalesce($3, l.built_version),
             first_built_at = coalesce(l.first_built_at, excluded.first_built_at),
             size = coalesce($10, l.size + $4::bigint - $5::bigint),
             changed_at = CASE WHEN $4::bigint + $5::bigint > 0 THEN $6::timestamptz ELSE l.changed_at END,
             eval_ms = $7, timed = $8, eval_ms_total = l.eval_ms_total + $7,
             -- A failed refresh is followed by a build, which clears its
             -- error; a note (a cascade stopped) stays until then.
             last_error = CASE WHEN $3::bigint IS NOT NULL THEN NULL ELSE l.last_error END,
             evaluated_at = coalesce(excluded.evaluated_at, l.evaluated_at)
         RETURNING l.size)
         INSERT INTO segment_rollups AS r (workspace_id, segment_id, hour, entered, exited, size)
         SELECT $1, $2, date_trunc('hour', $6::timestamptz, 'UTC'), $4, $5, s.size FROM s
         WHERE $4::bigint + $5::bigint > 0 OR $3::bigint IS NOT NULL
         ON CONFLICT (workspace_id, segment_id, hour) DO UPDATE SET
             entered = r.entered + excluded.entered, exited = r.exited + excluded.exited,
             size = excluded.size",
        &[&ws.0, &segment, &r.built, &r.entered, &r.exited, &now, &r.ms, &r.timed, &r.clocked, &r.size],
    )
    .await?;
    Ok(())
}

/// One refresh's differences.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Contacts entering, ascending.
    pub entered: Vec<i64>,
    /// Contacts exiting, ascending.
    pub exited: Vec<i64>,
}

impl Diff {
    /// How stored members `old` differ from members `new`, both ascending
    /// (as [`crate::segment::render::Select::Diff`] reads them): one merge
    /// pass. A repeated id counts once.
    pub fn of(new: &[i64], old: &[i64]) -> Self {
        let mut d = Self::default();
        let (mut i, mut j) = (0, 0);
        let mut last: Option<i64> = None;
        while i < new.len() || j < old.len() {
            let (n, o) = (new.get(i).copied(), old.get(j).copied());
            let id = match (n, o) {
                (Some(n), Some(o)) => n.min(o),
                (Some(n), None) => n,
                (None, Some(o)) => o,
                (None, None) => break,
            };
            let in_new = n == Some(id);
            let in_old = o == Some(id);
            if last != Some(id) {
                match (in_new, in_old) {
                    (true, false) => d.entered.push(id),
                    (false, true) => d.exited.push(id),
                    _ => {}
                }
                last = Some(id);
            }
            i += usize::from(in_new);
            j += usize::from(in_old);
        }
        d
    }

    /// Nothing differs.
    pub fn is_empty(&self) -> bool {
        self.entered.is_empty() && self.exited.is_empty()
    }
}

/// Applies `d` to live segment `segment`'s stored members and appends it to
/// the feed after offset `base` (by contact, an exit before an entry), as
/// caused by `cause` at `at`.
///
/// # Errors
/// The database is unavailable.
pub async fn apply(
    tx: &impl GenericClient,
    ws: WorkspaceId,
    segment: i64,
    d: &Diff,
    (base, cause, at): (i64, &str, DateTime<Utc>),
) -> Result<()> {
    tx.execute(
        "WITH ins AS (INSERT INTO live_members (workspace_id, segment_id, contact_id)
                      SELECT $1, $2, id FROM unnest($3::bigint[]) id),
              del AS (DELETE FROM live_members m
                      WHERE m.workspace_id = $1 AND m.segment_id = $2 AND m.contact_id = ANY($4::bigint[]))
         INSERT INTO membership_changes (workspace_id, \"offset\", segment_id, contact_id, entered, cause, at)
         SELECT $1, $5::bigint + row_number() OVER (ORDER BY x.id, x.entered), $2, x.id, x.entered, $6, $7
         FROM (SELECT id, true AS entered FROM unnest($3::bigint[]) id
               UNION ALL SELECT id, false FROM unnest($4::bigint[]) id) x",
        &[&ws.0, &segment, &d.entered, &d.exited, &base, &cause, &at],
    )
    .await?;
    Ok(())
}

/// Records an error that leaves the stored membership as it is (a segment
/// action not run); it stays the segment's last error until its next
/// build.
///
/// # Errors
/// The database is unavailable.
pub async fn noted(
    client: &impl GenericClient,
    ws: WorkspaceId,
    segment: i64,
    error: &str,
) -> Result<()> {
    client
        .execute(
            "UPDATE live_state SET last_error = $3 WHERE workspace_id = $1 AND segment_id = $2",
            &[&ws.0, &segment, &error],
        )
        .await?;
    Ok(())
}

/// Records a failed refresh: the segment is rebuilt on the next pass.
///
/// # Errors
/// The database is unavailable.
pub async fn failed(
    client: &impl GenericClient,
    ws: WorkspaceId,
    segment: i64,
    error: &str,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO live_state AS l (workspace_id, segment_id, last_error) VALUES ($1, $2, $3)
             ON CONFLICT (workspace_id, segment_id) DO UPDATE SET built_version = NULL, last_error = $3",
            &[&ws.0, &segment, &error],
        )
        .await?;
    Ok(())
}

/// Stops maintaining a segment: its stored membership and state go.
///
/// # Errors
/// The database is unavailable.
pub async fn forget(tx: &impl GenericClient, ws: WorkspaceId, segment: i64) -> Result<()> {
    tx.execute(
        "DELETE FROM live_members WHERE workspace_id = $1 AND segment_id = $2",
        &[&ws.0, &segment],
    )
    .await?;
    tx.execute(
        "DELETE FROM live_state WHERE workspace_id = $1 AND segment_id = $2",
        &[&ws.0, &segment],
    )
    .await?;
    Ok(())
}

/// The contacts of `ws` with an event of `types` (`None`: any type) that
/// occurred between `lo` and `hi` (both included): for the event types, an
/// index range scan each (every type found by skipping through the index).
///
/// # Errors
/// The database is unavailable.
pub async fn crossed(
    tx: &impl GenericClient,
    ws: WorkspaceId,
    types: Option<&[String]>,
    lo: DateTime<Utc>,
    hi: DateTime<Utc>,
) -> Result<Vec<i64>> {
    let rows = match types {
        Some(types) => {
            tx.query(
                "SELECT DISTINCT e.contact_id FROM events e
                 WHERE e.workspace_id = $1 AND e.type = ANY($2) AND e.occurred_at BETWEEN $3 AND $4",
                &[&ws.0, &types, &lo, &hi],
            )
            .await?
        }
        None => {
            tx.query(
                "WITH RECURSIVE t(type) AS (
                     SELECT min(type) FROM events WHERE workspace_id = $1
                     UNION ALL
                     SELECT (SELECT min(e.type) FROM events e WHERE e.workspace_id = $1 AND e.type > t.type)
                     FROM t WHERE t.type IS NOT NULL)
                 SELECT DISTINCT e.contact_id FROM t JOIN events e
                   ON e.workspace_id = $1 AND e.type = t.type AND e.occurred_at BETWEEN $2 AND $3",
                &[&ws.0, &lo, &hi],
            )
            .await?
        }
    };
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::Diff;

    #[test]
    fn a_diff_names_entries_and_exits_once_each() {
        let d = Diff::of(&[1, 2, 2, 4, 7], &[2, 3, 3, 7, 9]);
        assert_eq!(d.entered, vec![1, 4]);
        assert_eq!(d.exited, vec![3, 9]);
        assert!(Diff::of(&[5], &[5]).is_empty());
        assert_eq!(Diff::of(&[], &[1, 2]).exited, vec![1, 2]);
    }

    proptest! {
        #[test]
        fn a_diff_is_the_two_set_differences(
            new in proptest::collection::vec(0i64..60, 0..40),
            old in proptest::collection::vec(0i64..60, 0..40),
        ) {
            let (mut n, mut o) = (new, old);
            n.sort_unstable();
            o.sort_unstable();
            let d = Diff::of(&n, &o);
            let (sn, so): (BTreeSet<i64>, BTreeSet<i64>) =
                (n.iter().copied().collect(), o.iter().copied().collect());
            prop_assert_eq!(d.entered, sn.difference(&so).copied().collect::<Vec<_>>());
            prop_assert_eq!(d.exited, so.difference(&sn).copied().collect::<Vec<_>>());
        }
    }
}
