//! The change feed as watchers read it: offsets, changes after an offset,
//! the stored members a snapshot-first watch starts from, and retention.

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use crate::error::Result;
use crate::model::WorkspaceId;

/// One entry or exit.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Feed offset.
    pub offset: i64,
    /// Segment.
    pub segment: i64,
    /// Contact.
    pub contact: i64,
    /// Entered (else left).
    pub entered: bool,
    /// What caused it.
    pub cause: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// The workspace's last offset, and the oldest offset still held (the last
/// plus one when none is).
///
/// # Errors
/// The database is unavailable.
pub async fn bounds(client: &impl GenericClient, ws: WorkspaceId) -> Result<(i64, i64)> {
    let row = client
        .query_one(
            "SELECT coalesce((SELECT last FROM feed_offsets WHERE workspace_id = $1), 0),
                    (SELECT min(\"offset\") FROM membership_changes WHERE workspace_id = $1)",
            &[&ws.0],
        )
        .await?;
    let last: i64 = row.get(0);
    let oldest: Option<i64> = row.get(1);
    Ok((last, oldest.unwrap_or(last + 1)))
}

/// Up to `limit` changes after `after`, of `segments` (all when `None`).
///
/// # Errors
/// The database is unavailable.
pub async fn after(
    client: &impl GenericClient,
    ws: WorkspaceId,
    after: i64,
    segments: Option<&[i64]>,
    limit: i64,
) -> Result<Vec<Change>> {
    let rows = client
        .query(
            "SELECT \"offset\", segment_id, contact_id, entered, cause, at FROM membership_changes
             WHERE workspace_id = $1 AND \"offset\" > $2 AND ($3::bigint[] IS NULL OR segment_id = ANY($3))
             ORDER BY \"offset\" LIMIT $4",
            &[&ws.0, &after, &segments, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Change {
            offset: r.get(0),
            segment: r.get(1),
            contact: r.get(2),
            entered: r.get(3),
            cause: r.get(4),
            at: r.get(5),
        })
        .collect())
}

/// The workspace's live segments among `segments` (all when `None`).
///
/// # Errors
/// The database is unavailable.
pub async fn live_segments(
    client: &impl GenericClient,
    ws: WorkspaceId,
    segments: Option<&[i64]>,
) -> Result<Vec<i64>> {
    let rows = client
        .query(
            "SELECT id FROM segments WHERE workspace_id = $1 AND live
               AND ($2::bigint[] IS NULL OR id = ANY($2)) ORDER BY id",
            &[&ws.0, &segments],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Up to `limit` stored members of `segment` after contact `after`.
///
/// # Errors
/// The database is unavailable.
pub async fn members(
    client: &impl GenericClient,
    ws: WorkspaceId,
    segment: i64,
    after: i64,
    limit: i64,
) -> Result<Vec<i64>> {
    let rows = client
        .query(
            "SELECT contact_id FROM live_members WHERE workspace_id = $1 AND segment_id = $2
               AND contact_id > $3 ORDER BY contact_id LIMIT $4",
            &[&ws.0, &segment, &after, &limit],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Drops changes older than `before` or beyond the newest `max_count`.
/// Changes are appended in time order, so both limits are one cut-off
/// offset, and the common case (nothing to drop) costs two index probes:
/// the oldest change, and the first one young enough when it is not.
///
/// # Errors
/// The database is unavailable.
pub async fn trim(
    client: &impl GenericClient,
    ws: WorkspaceId,
    before: DateTime<Utc>,
    max_count: i64,
) -> Result<u64> {
    let row = client
        .query_opt(
            "SELECT o.\"offset\", o.at, f.last FROM feed_offsets f
             CROSS JOIN LATERAL (SELECT m.\"offset\", m.at FROM membership_changes m
                                 WHERE m.workspace_id = f.workspace_id
                                 ORDER BY m.\"offset\" LIMIT 1) o
             WHERE f.workspace_id = $1",
            &[&ws.0],
        )
        .await?;
    let Some(row) = row else { return Ok(0) };
    let (oldest, oldest_at, last): (i64, DateTime<Utc>, i64) = (row.get(0), row.get(1), row.get(2));
    let mut cut = oldest.max(last - max_count + 1);
    if oldest_at < before {
        let young = client
            .query_opt(
                "SELECT \"offset\" FROM membership_changes
                 WHERE workspace_id = $1 AND \"offset\" >= $2 AND at >= $3
                 ORDER BY \"offset\" LIMIT 1",
                &[&ws.0, &cut, &before],
            )
            .await?;
        cut = young.map_or(last + 1, |r| r.get(0));
    }
    if cut <= oldest {
        return Ok(0);
    }
    // With the newest dropped change's time: membership after it can
    // still be read back from the feed (segment metrics' retention).
    let row = client
        .query_one(
            "WITH d AS (DELETE FROM membership_changes WHERE workspace_id = $1 AND \"offset\" < $2 RETURNING at),
                  u AS (UPDATE feed_offsets SET trimmed_through = greatest(trimmed_through, (SELECT max(at) FROM d))
                        WHERE workspace_id = $1)
             SELECT count(*) FROM d",
            &[&ws.0, &cut],
        )
        .await?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

/// The channel the maintainer notifies when it appends changes.
pub const CHANNEL: &str = "segd_feed";

/// Tells watchers, at commit, that workspace `ws` has new changes.
///
/// # Errors
/// The database is unavailable.
pub async fn notify(tx: &impl GenericClient, ws: WorkspaceId) -> Result<()> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &ws.0.to_string()])
        .await?;
    Ok(())
}
