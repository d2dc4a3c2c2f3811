//! Deals: upsert by id or external id, and keyset listing.

use tokio_postgres::{GenericClient, Row};

use crate::error::{Error, Result};
use crate::model::WorkspaceId;
use crate::model::deal::{Deal, DealStatus};

const COLUMNS: &str = "id, external_id, contact_id, name, status, stage, value, currency, owner, created_at, closed_at, updated_at";

fn from_row(r: &Row) -> Deal {
    Deal {
        id: r.get(0),
        external_id: r.get(1),
        contact_id: r.get(2),
        name: r.get(3),
        status: DealStatus::parse(r.get(4)).unwrap_or(DealStatus::Open),
        stage: r.get(5),
        value: r.get(6),
        currency: r.get(7),
        owner: r.get(8),
        created_at: r.get(9),
        closed_at: r.get(10),
        updated_at: r.get(11),
    }
}

/// Creates or updates a deal: by id if set, else by external id if set,
/// else creates. Closing (won/lost) without a time closes it now; reopening
/// clears the close time. Returns the deal and whether it was created.
///
/// # Errors
/// `NotFound` for an unknown deal id or contact.
#[tracing::instrument(skip_all, fields(ws = ws.0))]
pub async fn upsert(
    client: &impl GenericClient,
    ws: WorkspaceId,
    d: &Deal,
) -> Result<(Deal, bool)> {
    let contact_ok = client
        .query_opt(
            "SELECT 1 FROM contacts WHERE workspace_id = $1 AND id = $2",
            &[&ws.0, &d.contact_id],
        )
        .await?
        .is_some();
    if !contact_ok {
        return Err(Error::NotFound(format!("contact {}", d.contact_id)));
    }
    let closed = "CASE WHEN $6 = 'open' THEN NULL ELSE coalesce($12, now()) END";
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 12] = [
        &ws.0,
        &d.id,
        &d.external_id,
        &d.contact_id,
        &d.name,
        &d.status.as_str(),
        &d.stage,
        &d.value,
        &d.currency,
        &d.owner,
        &d.created_at,
        &d.closed_at,
    ];
    let sql = if d.id != 0 {
        format!(
            "UPDATE deals SET external_id = coalesce($3, external_id), contact_id = $4, name = $5,
               status = $6, stage = $7, value = $8, currency = $9, owner = $10,
               created_at = coalesce($11, created_at),
               closed_at = CASE WHEN $6 = 'open' THEN NULL ELSE coalesce($12, closed_at, now()) END,
               updated_at = now()
             WHERE workspace_id = $1 AND id = $2 RETURNING {COLUMNS}, false"
        )
    } else {
        format!(
            "INSERT INTO deals (workspace_id, external_id, contact_id, name, status, stage, value, currency,
                                owner, created_at, closed_at)
             SELECT $1, $3, $4, $5, $6, $7, $8, $9, $10, coalesce($11, now()), {closed} WHERE $2::bigint = 0
             ON CONFLICT (workspace_id, external_id) WHERE external_id IS NOT NULL DO UPDATE SET
               contact_id = EXCLUDED.contact_id, name = EXCLUDED.name, status = EXCLUDED.status,
               stage = EXCLUDED.stage, value = EXCLUDED.value, currency = EXCLUDED.currency,
               owner = EXCLUDED.owner, created_at = coalesce($11, deals.created_at),
               closed_at = CASE WHEN EXCLUDED.status = 'open' THEN NULL
                                ELSE coalesce($12, deals.closed_at, now()) END,
               updated_at = now()
             RETURNING {COLUMNS}, (xmax = 0)"
        )
    };
    let row = client
        .query_opt(&sql, &params)
        .await?
        .ok_or_else(|| Error::NotFound(format!("deal {}", d.id)))?;
    Ok((from_row(&row), row.get(12)))
}

/// Deals in id order after `after_id`, optionally of one contact.
///
/// # Errors
/// The database is unavailable.
#[tracing::instrument(skip_all, fields(ws = ws.0))]
pub async fn list(
    client: &impl GenericClient,
    ws: WorkspaceId,
    contact_id: Option<i64>,
    after_id: i64,
    limit: i64,
) -> Result<Vec<Deal>> {
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM deals WHERE workspace_id = $1
                   AND ($2::bigint IS NULL OR contact_id = $2) AND id > $3
                 ORDER BY id LIMIT $4"
            ),
            &[&ws.0, &contact_id, &after_id, &limit],
        )
        .await?;
    Ok(rows.iter().map(from_row).collect())
}
