//! Segment actions applied to contacts: one set-based statement per action.
//! Labels and tags stay deduplicated in byte order, as writes store them.

use tokio_postgres::GenericClient;

use crate::error::Result;
use crate::model::WorkspaceId;
use crate::model::action::Action;

/// Applies `a` to contacts `ids` of workspace `ws`; returns the contacts it
/// changed (a contact it would leave as it is, is not written).
///
/// # Errors
/// The database is unavailable.
pub async fn apply(
    tx: &impl GenericClient,
    ws: WorkspaceId,
    a: &Action,
    ids: &[i64],
) -> Result<Vec<i64>> {
    let fields = serde_json::Value::Object(a.set_fields.clone().into_iter().collect());
    let rows = tx
        .query(
            "WITH n AS (
                 SELECT c.id,
                        ARRAY(SELECT x FROM unnest(c.labels || $3::text[]) x
                              WHERE x <> ALL($4::text[]) GROUP BY x ORDER BY x COLLATE \"C\") AS labels,
                        ARRAY(SELECT x FROM unnest(c.tags || $5::text[]) x
                              WHERE x <> ALL($6::text[]) GROUP BY x ORDER BY x COLLATE \"C\") AS tags,
                        CASE WHEN st.set THEN $7::text ELSE c.status END AS status,
                        CASE WHEN st.set THEN $8::text ELSE c.status_reason END AS status_reason,
                        (c.attrs - $11::text[]) || $10::jsonb AS attrs
                 FROM contacts c
                 -- Whether the status is set: a status to set, and one it
                 -- may replace.
                 CROSS JOIN LATERAL (SELECT $7::text IS NOT NULL
                     AND (c.status IS NULL OR cardinality($9::text[]) = 0 OR c.status = ANY($9::text[])) AS set) st
                 WHERE c.workspace_id = $1 AND c.id = ANY($2::bigint[])
                 FOR NO KEY UPDATE OF c
             )
             UPDATE contacts c SET labels = n.labels, tags = n.tags, status = n.status,
                    status_reason = n.status_reason, attrs = n.attrs,
                    updated_at = now(), version = c.version + 1
             FROM n
             WHERE c.workspace_id = $1 AND c.id = n.id
               AND (c.labels, c.tags, c.status, c.status_reason, c.attrs)
                   IS DISTINCT FROM (n.labels, n.tags, n.status, n.status_reason, n.attrs)
             RETURNING c.id",
            &[
                &ws.0,
                &ids,
                &a.add_labels,
                &a.remove_labels,
                &a.add_tags,
                &a.remove_tags,
                &a.set_status,
                &a.status_reason,
                &a.replace_statuses,
                &fields,
                &a.clear_fields,
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
