//! Contact keys on the write path: finding contacts by id, external id or
//! email, and locking them, with plans that cannot degrade.
//!
//! Every index leads with `workspace_id`. When a workspace is newer than the
//! table's statistics, PostgreSQL believes it holds one row, and a probe
//! `workspace_id = $1 AND email = $2` may be planned as a scan of the whole
//! workspace through any index that starts with `workspace_id` (once per
//! key: an import ran at 100 contacts/s). Here the workspace reaches each
//! probe as an InitPlan parameter, `(SELECT $1::bigint)`, whose value the
//! planner does not look at: the workspace then weighs as an average one,
//! and the unique index on the key, which btree costing knows returns at
//! most one row, wins with current, stale or no statistics
//! (`tests/api/plans.rs` checks the plans).
//!
//! Locks are taken in ascending id order, one probe after another, so
//! concurrent writers over overlapping contacts queue instead of
//! deadlocking.

use std::collections::{BTreeSet, HashMap};

use tokio_postgres::GenericClient;

use crate::error::Result;
use crate::model::WorkspaceId;
use crate::model::contact::ContactKey;

/// Finds contacts by key: `$1` the workspace, `$2` ids, `$3` external ids,
/// `$4` emails; returns `id, external_id, email` per match.
pub const PROBE_SQL: &str = "
SELECT c.* FROM unnest($2::bigint[]) AS k(key) CROSS JOIN LATERAL (
    SELECT id, external_id, email FROM contacts
    WHERE workspace_id = (SELECT $1::bigint) AND id = k.key OFFSET 0) c
UNION ALL
SELECT c.* FROM unnest($3::text[]) AS k(key) CROSS JOIN LATERAL (
    SELECT id, external_id, email FROM contacts
    WHERE workspace_id = (SELECT $1::bigint) AND external_id = k.key OFFSET 0) c
UNION ALL
SELECT c.* FROM unnest($4::text[]) AS k(key) CROSS JOIN LATERAL (
    SELECT id, external_id, email FROM contacts
    WHERE workspace_id = (SELECT $1::bigint) AND email = k.key OFFSET 0) c";

/// How a contact row is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// `FOR KEY SHARE`: the contact stays while rows refer to it (events,
    /// deals); a merge or delete waits.
    KeyShare,
    /// `FOR NO KEY UPDATE`: its columns are about to change.
    NoKeyUpdate,
    /// `FOR UPDATE`: its keys may change (imports).
    Update,
}

impl Lock {
    fn clause(self) -> &'static str {
        match self {
            Lock::KeyShare => "FOR KEY SHARE",
            Lock::NoKeyUpdate => "FOR NO KEY UPDATE",
            Lock::Update => "FOR UPDATE",
        }
    }
}

/// Locks contacts by id, in ascending id order: `$1` the workspace, `$2`
/// the ids (sorted); returns `id, external_id, email, tid` of each contact
/// still there.
pub fn lock_sql(lock: Lock) -> String {
    format!(
        "SELECT c.* FROM unnest($2::bigint[]) AS k(id) CROSS JOIN LATERAL (
             SELECT id, external_id, email, ctid::text AS tid FROM contacts
             WHERE workspace_id = (SELECT $1::bigint) AND id = k.id {}) c",
        lock.clause()
    )
}

/// A contact as the write path sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Id.
    pub id: i64,
    /// External id.
    pub external_id: Option<String>,
    /// Email.
    pub email: Option<String>,
}

/// The contacts with any of these keys (unlocked).
///
/// # Errors
/// The database is unavailable.
pub async fn probe(
    client: &impl GenericClient,
    ws: WorkspaceId,
    keys: &[&ContactKey],
) -> Result<Vec<Found>> {
    let mut ids = Vec::new();
    let mut exts = Vec::new();
    let mut emails = Vec::new();
    for k in keys {
        match k {
            ContactKey::Id(i) => ids.push(*i),
            ContactKey::ExternalId(x) => exts.push(x.as_str()),
            ContactKey::Email(e) => emails.push(e.as_str()),
        }
    }
    let rows = client
        .query(PROBE_SQL, &[&ws.0, &ids, &exts, &emails])
        .await?;
    Ok(rows
        .iter()
        .map(|r| Found {
            id: r.get(0),
            external_id: r.get(1),
            email: r.get(2),
        })
        .collect())
}

/// The id of the contact with `key` (unlocked).
///
/// # Errors
/// `NotFound`; the database is unavailable.
pub async fn find(client: &impl GenericClient, ws: WorkspaceId, key: &ContactKey) -> Result<i64> {
    let found = probe(client, ws, &[key]).await?;
    by_key(&found)
        .get(key)
        .copied()
        .ok_or_else(|| crate::error::Error::NotFound(key.to_string()))
}

/// Locks the contacts with these ids in ascending order and returns them as
/// they are now (deleted ones are missing), with each one's `ctid`.
///
/// # Errors
/// The database is unavailable; a deadlock (`Aborted`) is possible only
/// against writers that lock in another order.
pub async fn lock(
    client: &impl GenericClient,
    ws: WorkspaceId,
    ids: impl IntoIterator<Item = i64>,
    mode: Lock,
) -> Result<Vec<(Found, String)>> {
    let ids: Vec<i64> = ids
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let rows = client.query(&lock_sql(mode), &[&ws.0, &ids]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                Found {
                    id: r.get(0),
                    external_id: r.get(1),
                    email: r.get(2),
                },
                r.get(3),
            )
        })
        .collect())
}

/// Every key under which these contacts can be found.
pub fn by_key(found: &[Found]) -> HashMap<ContactKey, i64> {
    let mut out = HashMap::new();
    for f in found {
        out.insert(ContactKey::Id(f.id), f.id);
        if let Some(x) = &f.external_id {
            out.insert(ContactKey::ExternalId(x.clone()), f.id);
        }
        if let Some(e) = &f.email {
            out.insert(ContactKey::Email(e.clone()), f.id);
        }
    }
    out
}

/// Resolves keys to ids and locks those contacts in ascending id order, so
/// they cannot disappear (a merge, a delete) before the transaction ends.
/// A key whose contact went away between the lookup and the lock is looked
/// up once more: after a merge, an email may now belong to the primary.
/// Unknown keys are absent from the result.
///
/// # Errors
/// The database is unavailable.
pub async fn resolve_locked(
    client: &impl GenericClient,
    ws: WorkspaceId,
    keys: &[&ContactKey],
    mode: Lock,
) -> Result<HashMap<ContactKey, i64>> {
    let mut out: HashMap<ContactKey, i64> = HashMap::new();
    let mut pending: Vec<&ContactKey> = keys.to_vec();
    for _ in 0..2 {
        if pending.is_empty() {
            break;
        }
        let found = probe(client, ws, &pending).await?;
        let locked: Vec<Found> = lock(client, ws, found.iter().map(|f| f.id), mode)
            .await?
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        // Keys as they are under the lock: a contact found first may have
        // lost the key, or gone.
        let now = by_key(&locked);
        pending.retain(|k| match now.get(*k) {
            Some(id) => {
                out.insert((*k).clone(), *id);
                false
            }
            None => found
                .iter()
                .any(|f| by_key(std::slice::from_ref(f)).contains_key(*k)),
        });
    }
    Ok(out)
}
