//! MergeContacts: fold duplicates into a primary contact in one transaction.

use super::contacts::{SELECT_COLUMNS, from_row, replace};
use super::definitions;
use crate::error::{Error, Result};
use crate::model::WorkspaceId;
use crate::model::contact::Contact;
use crate::model::merge::merge as merge_contacts;

/// The outcome of a merge.
#[derive(Debug, Clone)]
pub struct Merged {
    /// The primary contact after the merge.
    pub contact: Contact,
    /// Events moved to it.
    pub events_moved: u64,
    /// Deals moved to it.
    pub deals_moved: u64,
}

/// Moves the duplicates' events, deals and memberships to `primary`, fills
/// its gaps from them (see `model::merge`), and deletes them.
///
/// # Errors
/// `NotFound` naming every missing contact.
#[tracing::instrument(skip_all, fields(ws = ws.0, primary))]
pub async fn merge(
    tx: &super::Tx<'_>,
    ws: WorkspaceId,
    primary: i64,
    dups: &[i64],
) -> Result<Merged> {
    let schema = definitions::schema(&**tx, ws).await?;
    let mut all = vec![primary];
    all.extend_from_slice(dups);
    let rows = tx
        .query(
            &format!(
                "SELECT {} FROM contacts c WHERE c.workspace_id = $1 AND c.id = ANY($2) ORDER BY c.id FOR UPDATE",
                *SELECT_COLUMNS
            ),
            &[&ws.0, &all],
        )
        .await?;
    let found: Vec<Contact> = rows.iter().map(|r| from_row(r, &schema)).collect();
    let get = |id: i64| found.iter().find(|c| c.id == id);
    let missing: Vec<String> = all
        .iter()
        .filter(|id| get(**id).is_none())
        .map(i64::to_string)
        .collect();
    if !missing.is_empty() {
        return Err(Error::NotFound(format!("contacts {}", missing.join(", "))));
    }
    let dup_contacts: Vec<Contact> = dups.iter().filter_map(|id| get(*id).cloned()).collect();
    let merged = merge_contacts(get(primary).expect("checked"), &dup_contacts);

    let events_moved = tx
        .execute(
            "UPDATE events SET contact_id = $2 WHERE workspace_id = $1 AND contact_id = ANY($3)",
            &[&ws.0, &primary, &dups],
        )
        .await?;
    let deals_moved = tx
        .execute(
            "UPDATE deals SET contact_id = $2, updated_at = now() WHERE workspace_id = $1 AND contact_id = ANY($3)",
            &[&ws.0, &primary, &dups],
        )
        .await?;
    tx.execute(
        "INSERT INTO segment_members (workspace_id, segment_id, contact_id, added_at)
         SELECT workspace_id, segment_id, $2, min(added_at) FROM segment_members
         WHERE workspace_id = $1 AND contact_id = ANY($3) GROUP BY workspace_id, segment_id
         ON CONFLICT DO NOTHING",
        &[&ws.0, &primary, &dups],
    )
    .await?;
    tx.execute(
        "DELETE FROM contacts WHERE workspace_id = $1 AND id = ANY($2)",
        &[&ws.0, &dups],
    )
    .await?;
    let contact = replace(&**tx, ws, &merged, &schema).await?;
    Ok(Merged {
        contact,
        events_moved,
        deals_moved,
    })
}
