//! Bulk upsert of contact batches (BatchUpsertContacts).
//!
//! A batch costs a handful of statements whatever its size: a lookup and a
//! lock of the contacts it names (see `db::keys`), one multi-row UPDATE and
//! one multi-row INSERT, each fed a single JSON parameter unpacked with
//! `json_to_recordset`.

use std::collections::HashMap;
use std::sync::LazyLock;

use super::contacts::{COLUMNS, IMPORT_INSERT_SQL, Merge, RECORD_DEF, rows_param, taken};
use super::definitions;
use super::keys::{self, Lock};
use crate::error::{Error, Result};
use crate::model::WorkspaceId;
use crate::model::contact::{Contact, ContactKey};

/// What happened to one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowResult {
    /// A contact was created with this id.
    Created(i64),
    /// This contact was changed.
    Updated(i64),
    /// This contact already had these values.
    Unchanged(i64),
    /// Not written.
    Failed {
        /// The offending field, if one is to blame.
        field: String,
        /// Why.
        error: String,
    },
}

fn failed(field: &str, error: impl Into<String>) -> RowResult {
    RowResult::Failed {
        field: field.to_string(),
        error: error.into(),
    }
}

static MERGE_SQL: LazyLock<String> = LazyLock::new(|| {
    let names: Vec<&str> = COLUMNS.iter().map(|(n, _, _)| *n).collect();
    let merged: Vec<String> = COLUMNS
        .iter()
        .map(|(n, _, m)| match m {
            Merge::Coalesce => format!("coalesce(r.{n}, c.{n})"),
            Merge::NonEmpty => {
                format!("CASE WHEN cardinality(r.{n}) > 0 THEN r.{n} ELSE c.{n} END")
            }
            Merge::JsonOverlay => format!("c.{n} || coalesce(r.{n}, '{{}}')"),
            Merge::ChangedAt(s) => format!(
                "CASE WHEN r.{s} IS NOT NULL AND r.{s} IS DISTINCT FROM c.{s} \
                 THEN coalesce(r.{n}, now()) ELSE coalesce(r.{n}, c.{n}) END"
            ),
        })
        .collect();
    let cols = names.join(", ");
    let vals = merged.join(", ");
    let old = names
        .iter()
        .map(|n| format!("c.{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "UPDATE contacts AS c SET ({cols}, updated_at, version) = ({vals}, now(), c.version + 1)
         FROM json_to_recordset($2::json) AS r({def})
         WHERE c.ctid = ANY($3::text[]::tid[]) AND c.workspace_id = $1 AND c.id = r.id
           AND ({old}) IS DISTINCT FROM ({vals})
         RETURNING c.id",
        def = *RECORD_DEF
    )
});

/// Resolution rounds in one attempt: a round's inserts skip keys that a
/// concurrent import took meanwhile, and the next round updates those rows.
const ROUNDS: usize = 3;

/// Upserts one batch atomically. `rows` are (row index, validated contact);
/// every contact has an external id or an email. Returns one result per row.
///
/// Rows are written in one canonical order (by key), contacts are locked in
/// ascending id order, and inserts skip keys a concurrent import inserted
/// first (those rows are then updated): overlapping imports queue rather
/// than deadlock. A race that still fails the transaction fails the batch
/// with `AlreadyExists` or `Aborted`; the caller runs it again.
///
/// # Errors
/// Only for failures of the whole batch (database unavailable); row-level
/// problems are reported as `RowResult::Failed`.
#[tracing::instrument(skip_all, fields(ws = ws.0, rows = rows.len()))]
pub async fn upsert_batch(
    tx: &super::Tx<'_>,
    ws: WorkspaceId,
    rows: &[(usize, Contact)],
) -> Result<Vec<(usize, RowResult)>> {
    /// The existing contacts a round's rows name, locked.
    #[derive(Debug, Default)]
    struct Existing {
        by_ext: HashMap<String, i64>,
        by_email: HashMap<String, (i64, Option<String>)>,
        tids: HashMap<i64, String>,
    }

    impl Existing {
        /// Finds (unlocked) the contacts with the rows' keys, then locks them in
        /// ascending id order and keeps their keys as they are under the lock.
        async fn lock(
            tx: &deadpool_postgres::Transaction<'_>,
            ws: WorkspaceId,
            rows: &[&(usize, Contact)],
        ) -> Result<Self> {
            let mut wanted: Vec<ContactKey> = Vec::new();
            for (_, c) in rows {
                wanted.extend(c.external_id.clone().map(ContactKey::ExternalId));
                wanted.extend(c.email.clone().map(ContactKey::Email));
            }
            wanted.sort();
            wanted.dedup();
            let found = keys::probe(&**tx, ws, &wanted.iter().collect::<Vec<_>>()).await?;
            let mut out = Existing::default();
            for (f, tid) in keys::lock(&**tx, ws, found.iter().map(|f| f.id), Lock::Update).await? {
                if let Some(x) = &f.external_id {
                    out.by_ext.insert(x.clone(), f.id);
                }
                if let Some(e) = f.email {
                    out.by_email.insert(e, (f.id, f.external_id));
                }
                out.tids.insert(f.id, tid);
            }
            Ok(out)
        }

        /// The contact a row updates (`Ok(None)`: a new contact), or why the
        /// row fails.
        fn target(&self, c: &Contact) -> std::result::Result<Option<i64>, RowResult> {
            let by_mail = c.email.as_ref().and_then(|e| self.by_email.get(e));
            match (
                c.external_id.as_ref().and_then(|x| self.by_ext.get(x)),
                by_mail,
            ) {
                (Some(t), Some((other, _))) if other != t => Err(failed(
                    "email",
                    format!("email belongs to another contact ({other})"),
                )),
                (Some(t), _) => Ok(Some(*t)),
                (None, Some((id, None))) => Ok(Some(*id)),
                (None, Some((_, Some(x)))) if c.external_id.is_some() => Err(failed(
                    "email",
                    format!("email belongs to the contact with external id {x:?}"),
                )),
                (None, Some((id, Some(_)))) => Ok(Some(*id)),
                (None, None) => Ok(None),
            }
        }
    }

    /// Rows that break the schema or repeat a key of an earlier row fail; the
    /// rest are returned in canonical order (by external id, then email).
    fn screen<'a>(
        rows: &'a [(usize, Contact)],
        schema: &crate::model::schema::Schema,
        results: &mut HashMap<usize, RowResult>,
    ) -> Vec<&'a (usize, Contact)> {
        let mut seen: HashMap<(bool, &str), usize> = HashMap::new();
        let mut live: Vec<&(usize, Contact)> = Vec::new();
        for row @ (i, c) in rows {
            if let Some(v) = schema.check_contact(c).into_iter().next() {
                results.insert(*i, failed(&v.field, v.description));
                continue;
            }
            let keys = [
                (true, c.external_id.as_deref()),
                (false, c.email.as_deref()),
            ];
            if let Some(first) = keys
                .iter()
                .filter_map(|(x, k)| k.and_then(|k| seen.get(&(*x, k))))
                .next()
            {
                results.insert(
                    *i,
                    failed("", format!("same contact as row {first} of this batch")),
                );
                continue;
            }
            for (x, k) in keys {
                if let Some(k) = k {
                    seen.insert((x, k), *i);
                }
            }
            live.push(row);
        }
        live.sort_by(|(_, a), (_, b)| {
            (a.external_id.as_deref(), a.email.as_deref())
                .cmp(&(b.external_id.as_deref(), b.email.as_deref()))
        });
        live
    }

    let schema = definitions::schema(&**tx, ws).await?;
    let mut results: HashMap<usize, RowResult> = HashMap::new();
    let mut live = screen(rows, &schema, &mut results);
    // The contact each row updates, so two rows never update one contact.
    let mut targeted: HashMap<i64, usize> = HashMap::new();
    for _ in 0..ROUNDS {
        if live.is_empty() {
            break;
        }
        let existing = Existing::lock(tx, ws, &live).await?;
        let mut updates: Vec<(usize, Contact)> = Vec::new();
        let mut inserts: Vec<&(usize, Contact)> = Vec::new();
        for row @ (i, c) in live {
            match existing.target(c) {
                Err(f) => {
                    results.insert(*i, f);
                }
                Ok(Some(id)) => {
                    if let Some(first) = targeted.insert(id, *i) {
                        results.insert(
                            *i,
                            failed("", format!("same contact as row {first} of this batch")),
                        );
                        continue;
                    }
                    updates.push((*i, Contact { id, ..c.clone() }));
                }
                Ok(None) => inserts.push(row),
            }
        }
        update(tx, ws, &updates, &existing.tids, &mut results).await?;
        live = insert(tx, ws, inserts, &mut results).await?;
    }
    if !live.is_empty() {
        return Err(Error::Aborted(
            "the batch's keys kept changing under concurrent imports".into(),
        ));
    }
    let mut out: Vec<(usize, RowResult)> = results.into_iter().collect();
    out.sort_by_key(|(i, _)| *i);
    Ok(out)
}

/// Merges rows into the locked contacts they target.
async fn update(
    tx: &deadpool_postgres::Transaction<'_>,
    ws: WorkspaceId,
    updates: &[(usize, Contact)],
    tids: &HashMap<i64, String>,
    results: &mut HashMap<usize, RowResult>,
) -> Result<()> {
    if updates.is_empty() {
        return Ok(());
    }
    let json = rows_param(&updates.iter().map(|(_, c)| c).collect::<Vec<_>>());
    // The rows are locked, so their ctids are stable until commit; a TID
    // scan reaches them without trusting the planner's row estimates.
    let ids: Vec<&str> = updates
        .iter()
        .filter_map(|(_, c)| tids.get(&c.id).map(String::as_str))
        .collect();
    // Prepared per call, not cached on the session: behind a transaction
    // pooler, a statement must not outlive its transaction.
    let changed: std::collections::HashSet<i64> = tx
        .query(MERGE_SQL.as_str(), &[&ws.0, &json, &ids])
        .await
        .map_err(|e| taken(e, &updates[0].1))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (i, c) in updates {
        let r = if changed.contains(&c.id) {
            RowResult::Updated(c.id)
        } else {
            RowResult::Unchanged(c.id)
        };
        results.insert(*i, r);
    }
    Ok(())
}

/// Inserts new contacts, in the given (canonical) order. Returns the rows
/// whose keys a concurrent import took first: they were not written.
async fn insert<'a>(
    tx: &deadpool_postgres::Transaction<'_>,
    ws: WorkspaceId,
    inserts: Vec<&'a (usize, Contact)>,
    results: &mut HashMap<usize, RowResult>,
) -> Result<Vec<&'a (usize, Contact)>> {
    if inserts.is_empty() {
        return Ok(vec![]);
    }
    let json = rows_param(&inserts.iter().map(|(_, c)| c).collect::<Vec<_>>());
    let created = tx
        .query(IMPORT_INSERT_SQL.as_str(), &[&ws.0, &json])
        .await?;
    let mut ids: HashMap<(bool, String), i64> = HashMap::new();
    for r in &created {
        let id: i64 = r.get(0);
        if let Some(x) = r.get::<_, Option<String>>(1) {
            ids.insert((true, x), id);
        }
        if let Some(e) = r.get::<_, Option<String>>(2) {
            ids.insert((false, e), id);
        }
    }
    let mut skipped = Vec::new();
    for row @ (i, c) in inserts {
        let id = c
            .external_id
            .clone()
            .and_then(|x| ids.get(&(true, x)))
            .or_else(|| c.email.clone().and_then(|e| ids.get(&(false, e))));
        match id {
            Some(id) => {
                results.insert(*i, RowResult::Created(*id));
            }
            None => skipped.push(row),
        }
    }
    Ok(skipped)
}
