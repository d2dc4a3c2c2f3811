//! Bulk upsert of contact batches (BatchUpsertContacts).
//!
//! A batch costs a handful of statements whatever its size: one lock-and-
//! resolve query, one multi-row UPDATE and one multi-row INSERT, each fed a
//! single JSON parameter unpacked with `json_to_recordset`.

use std::collections::HashMap;
use std::sync::LazyLock;

use super::contacts::{COLUMNS, INSERT_SQL, Merge, RECORD_DEF, rows_param, taken};
use super::definitions;
use crate::error::{Error, Result};
use crate::model::WorkspaceId;
use crate::model::contact::Contact;

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

/// Upserts one batch atomically. `rows` are (row index, validated contact);
/// every contact has an external id or an email. Returns one result per row.
///
/// # Errors
/// Only for failures of the whole batch (database unavailable); row-level
/// problems are reported as `RowResult::Failed`.
#[tracing::instrument(skip_all, fields(ws = ws.0, rows = rows.len()))]
pub async fn upsert_batch(
    client: &mut super::Conn,
    ws: WorkspaceId,
    rows: &[(usize, Contact)],
) -> Result<Vec<(usize, RowResult)>> {
    // A concurrent import may insert the same new key between our resolve
    // and our insert, or deadlock with us on row locks; one retry
    // re-resolves against it.
    match try_batch(client, ws, rows).await {
        Err(Error::AlreadyExists(_) | Error::Aborted(_)) => try_batch(client, ws, rows).await,
        other => other,
    }
}

async fn try_batch(
    client: &mut super::Conn,
    ws: WorkspaceId,
    rows: &[(usize, Contact)],
) -> Result<Vec<(usize, RowResult)>> {
    let tx = client.transaction().await?;
    let schema = definitions::schema(&*tx, ws).await?;
    let mut results: HashMap<usize, RowResult> = HashMap::new();

    // Rows that break the schema or repeat a key of an earlier row.
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

    // Lock and resolve the existing contacts these rows name.
    let exts: Vec<&str> = live
        .iter()
        .filter_map(|(_, c)| c.external_id.as_deref())
        .collect();
    let emails: Vec<&str> = live
        .iter()
        .filter_map(|(_, c)| c.email.as_deref())
        .collect();
    // Lock and resolve the existing contacts these rows name: one lateral
    // unique-index probe per key. During a large import the planner's
    // statistics lag behind the table (a new workspace looks empty), and a
    // plain join or `= ANY` is then planned as a scan of the whole workspace
    // per batch; a lateral subquery with FOR UPDATE cannot be flattened, so
    // it stays a probe whatever the statistics say.
    let mut found = Vec::new();
    for (col, keys) in [("external_id", &exts), ("email", &emails)] {
        if keys.is_empty() {
            continue;
        }
        let sql = format!(
            "SELECT c.id, c.external_id, c.email, c.tid FROM unnest($2::text[]) AS k(key)
             CROSS JOIN LATERAL (SELECT id, external_id, email, ctid::text AS tid FROM contacts
                                 WHERE workspace_id = $1 AND {col} = k.key FOR UPDATE) c"
        );
        found.extend(tx.query(&sql, &[&ws.0, keys]).await?);
    }
    let tids: HashMap<i64, String> = found.iter().map(|r| (r.get(0), r.get(3))).collect();
    let mut by_ext: HashMap<String, i64> = HashMap::new();
    let mut by_email: HashMap<String, (i64, Option<String>)> = HashMap::new();
    for r in &found {
        let (id, ext, email): (i64, Option<String>, Option<String>) =
            (r.get(0), r.get(1), r.get(2));
        if let Some(x) = &ext {
            by_ext.insert(x.clone(), id);
        }
        if let Some(e) = email {
            by_email.insert(e, (id, ext));
        }
    }

    let mut updates: Vec<(usize, Contact)> = Vec::new();
    let mut inserts: Vec<(usize, &Contact)> = Vec::new();
    let mut targeted: HashMap<i64, usize> = HashMap::new();
    for (i, c) in live {
        let by_mail = c.email.as_ref().and_then(|e| by_email.get(e));
        let target = match (c.external_id.as_ref().and_then(|x| by_ext.get(x)), by_mail) {
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
        };
        match target {
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
            Ok(None) => inserts.push((*i, c)),
        }
    }

    if !updates.is_empty() {
        let json = rows_param(&updates.iter().map(|(_, c)| c).collect::<Vec<_>>());
        // The rows are locked, so their ctids are stable until commit; a TID
        // scan reaches them without trusting the planner's row estimates.
        let ids: Vec<&str> = updates
            .iter()
            .filter_map(|(_, c)| tids.get(&c.id).map(String::as_str))
            .collect();
        let merge = tx.prepare_cached(MERGE_SQL.as_str()).await?;
        let changed: std::collections::HashSet<i64> = tx
            .query(&merge, &[&ws.0, &json, &ids])
            .await
            .map_err(|e| taken(e, &updates[0].1))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for (i, c) in &updates {
            let r = if changed.contains(&c.id) {
                RowResult::Updated(c.id)
            } else {
                RowResult::Unchanged(c.id)
            };
            results.insert(*i, r);
        }
    }

    if !inserts.is_empty() {
        let json = rows_param(&inserts.iter().map(|(_, c)| *c).collect::<Vec<_>>());
        let insert = tx.prepare_cached(INSERT_SQL.as_str()).await?;
        let created = tx.query(&insert, &[&ws.0, &json]).await?;
        let mut ids: HashMap<(bool, String), i64> = HashMap::new();
        for r in &created {
            let id: i64 = r.get("id");
            if let Some(x) = r.get::<_, Option<String>>("external_id") {
                ids.insert((true, x), id);
            }
            if let Some(e) = r.get::<_, Option<String>>("email") {
                ids.insert((false, e), id);
            }
        }
        for (i, c) in inserts {
            let id = c
                .external_id
                .clone()
                .and_then(|x| ids.get(&(true, x)))
                .or_else(|| c.email.clone().and_then(|e| ids.get(&(false, e))));
            let r = match id {
                Some(id) => RowResult::Created(*id),
                None => failed("", "internal: created row not returned"),
            };
            results.insert(i, r);
        }
    }
    tx.commit().await?;
    let mut out: Vec<(usize, RowResult)> = results.into_iter().collect();
    out.sort_by_key(|(i, _)| *i);
    Ok(out)
}
