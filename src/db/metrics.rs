//! Segment metrics' stored parts: the workspace's event types, and a live
//! segment's membership at past instants read back from the change feed
//! (retention).

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use crate::error::Result;
use crate::model::WorkspaceId;
use crate::model::metrics::EventTypes;
use crate::segment::render::bucket_of;

/// The workspace's event types, the built-in ones where none are set.
///
/// # Errors
/// The database is unavailable.
pub async fn settings(client: &impl GenericClient, ws: WorkspaceId) -> Result<EventTypes> {
    let row = client
        .query_opt(
            "SELECT open_types, click_types, purchase_types, revenue_types
             FROM metrics_settings WHERE workspace_id = $1",
            &[&ws.0],
        )
        .await?;
    Ok(row.map_or_else(EventTypes::default, |r| EventTypes {
        open: r.get(0),
        click: r.get(1),
        purchase: r.get(2),
        revenue: r.get(3),
    }))
}

/// Holds, until the transaction ends, workspace `ws`'s settings against
/// other changes.
///
/// # Errors
/// The database is unavailable.
pub async fn lock_settings(tx: &impl GenericClient, ws: WorkspaceId) -> Result<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('segd.metrics_settings', $1))",
        &[&ws.0],
    )
    .await?;
    Ok(())
}

/// Stores the workspace's event types.
///
/// # Errors
/// The database is unavailable.
pub async fn set_settings(
    client: &impl GenericClient,
    ws: WorkspaceId,
    t: &EventTypes,
) -> Result<()> {
    client
        .execute(
            "INSERT INTO metrics_settings (workspace_id, open_types, click_types, purchase_types, revenue_types)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (workspace_id) DO UPDATE SET open_types = $2, click_types = $3,
                 purchase_types = $4, revenue_types = $5, updated_at = now()",
            &[&ws.0, &t.open, &t.click, &t.purchase, &t.revenue],
        )
        .await?;
    Ok(())
}

/// The earliest instant at which live segment `segment`'s membership can
/// be read back from the feed: its first build, or the newest change the
/// feed's retention dropped if later. `None` before the first build.
///
/// # Errors
/// The database is unavailable.
pub async fn history_from(
    client: &impl GenericClient,
    ws: WorkspaceId,
    segment: i64,
) -> Result<Option<DateTime<Utc>>> {
    let row = client
        .query_opt(
            "SELECT greatest(l.first_built_at, f.trimmed_through) FROM live_state l
             LEFT JOIN feed_offsets f ON f.workspace_id = l.workspace_id
             WHERE l.workspace_id = $1 AND l.segment_id = $2 AND l.first_built_at IS NOT NULL",
            &[&ws.0, &segment],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Retention of live segment `segment` from `from` to `to`, by bucket of
/// `split` (count, salt) or all as group 0: rows of (group, members at
/// `from`, those of them members at `to`). Membership at an instant is
/// the stored membership with every later change undone: a contact's
/// first change after it says what it was then (an entry: not a member;
/// an exit: a member), and a contact with none is what it is now. The
/// feed must hold every change after `from` (see [`history_from`]).
///
/// # Errors
/// The database is unavailable.
pub async fn retention(
    client: &impl GenericClient,
    ws: WorkspaceId,
    segment: i64,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    split: Option<(i32, &str)>,
) -> Result<Vec<(i32, i64, i64)>> {
    let (n, salt) = split.map_or((1, String::new()), |(n, s)| (i64::from(n), format!("{s}:")));
    let group = bucket_of("s.id", "$5", "$6");
    let sql = format!(
        "WITH ch AS (
             SELECT contact_id,
                    (array_agg(entered ORDER BY \"offset\"))[1] AS after_from,
                    (array_agg(entered ORDER BY \"offset\") FILTER (WHERE at > $4))[1] AS after_to
             FROM membership_changes
             WHERE workspace_id = $1 AND segment_id = $2 AND at > $3
             GROUP BY contact_id),
         cur AS (SELECT contact_id FROM live_members WHERE workspace_id = $1 AND segment_id = $2),
         s AS (SELECT coalesce(ch.contact_id, cur.contact_id) AS id,
                      coalesce(NOT ch.after_from, cur.contact_id IS NOT NULL) AS at_from,
                      coalesce(NOT ch.after_to, cur.contact_id IS NOT NULL) AS at_to
               FROM ch FULL JOIN cur ON cur.contact_id = ch.contact_id)
         SELECT {group}::int AS g, count(*) FILTER (WHERE at_from), count(*) FILTER (WHERE at_from AND at_to)
         FROM s GROUP BY 1 ORDER BY 1"
    );
    let rows = client
        .query(&sql, &[&ws.0, &segment, &from, &to, &salt, &n])
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}
