//! Contacts' field changes with their causes (`contact_changes`, written by
//! a trigger on every contact write).

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use super::keys;
use crate::error::Result;
use crate::model::WorkspaceId;
use crate::model::contact::ContactKey;

/// One change of one field.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Order in the workspace.
    pub id: i64,
    /// The field (`labels`, `custom.<key>`, ...).
    pub field: String,
    /// The value before (JSON; `None` when unset).
    pub old: Option<serde_json::Value>,
    /// The value after.
    pub new: Option<serde_json::Value>,
    /// What made it.
    pub cause: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// A contact's changes after change `after`, oldest first, of `field` only
/// if given. A contact given by id is found even after its deletion.
///
/// # Errors
/// `NotFound` for an unknown external id or email.
pub async fn list(
    client: &impl GenericClient,
    ws: WorkspaceId,
    contact: &ContactKey,
    field: Option<&str>,
    after: i64,
    limit: i64,
) -> Result<Vec<Change>> {
    let id = match contact {
        ContactKey::Id(id) => *id,
        key => keys::find(client, ws, key).await?,
    };
    let rows = client
        .query(
            "SELECT id, field, old, new, cause, at FROM contact_changes
             WHERE workspace_id = $1 AND contact_id = $2 AND ($3::text IS NULL OR field = $3) AND id > $4
             ORDER BY id LIMIT $5",
            &[&ws.0, &id, &field, &after, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Change {
            id: r.get(0),
            field: r.get(1),
            old: r.get(2),
            new: r.get(3),
            cause: r.get(4),
            at: r.get(5),
        })
        .collect())
}

/// One bucket of a live segment's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// Its start.
    pub start: DateTime<Utc>,
    /// Members at its end.
    pub size: i64,
    /// Entries during it.
    pub entered: i64,
    /// Exits during it.
    pub exited: i64,
}

/// Segment `segment`'s history from `start` (rounded down to a bucket) to
/// `end`, in buckets of `step` (`hour` or `day`, UTC), every bucket listed.
///
/// # Errors
/// The database is unavailable.
pub async fn segment(
    client: &impl GenericClient,
    ws: WorkspaceId,
    segment: i64,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
    step: &'static str,
) -> Result<Vec<Bucket>> {
    let rows = client
        .query(
            "WITH b AS (
                 SELECT t AS start, t + ('1 ' || $5::text)::interval AS stop
                 FROM generate_series(date_trunc($5::text, $3::timestamptz, 'UTC'), $4::timestamptz - interval '1 microsecond',
                                      ('1 ' || $5::text)::interval) t)
             SELECT b.start,
                    coalesce((SELECT r.size FROM segment_rollups r
                              WHERE r.workspace_id = $1 AND r.segment_id = $2 AND r.hour < b.stop
                              ORDER BY r.hour DESC LIMIT 1), 0),
                    coalesce(sum(r.entered), 0)::bigint, coalesce(sum(r.exited), 0)::bigint
             FROM b LEFT JOIN segment_rollups r
               ON r.workspace_id = $1 AND r.segment_id = $2 AND r.hour >= b.start AND r.hour < b.stop
             GROUP BY b.start, b.stop ORDER BY b.start",
            &[&ws.0, &segment, &start, &end, &step],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Bucket {
            start: r.get(0),
            size: r.get(1),
            entered: r.get(2),
            exited: r.get(3),
        })
        .collect())
}
