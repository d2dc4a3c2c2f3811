//! Contacts' field changes with their causes (`contact_changes`, written by
//! a trigger on every contact write).

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use super::keys;
use crate::error::{Error, Result};
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
        key => {
            let found = keys::probe(client, ws, &[key]).await?;
            *keys::by_key(&found)
                .get(key)
                .ok_or_else(|| Error::NotFound(key.to_string()))?
        }
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
