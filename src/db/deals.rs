//! Deals: upserts (one, or batches) by id or external id, and keyset listing.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::LazyLock;

use tokio_postgres::{GenericClient, Row};

use super::changes::{self, Touched};
use super::import::RowResult;
use super::keys::{self, Lock};
use crate::error::{Error, Result};
use crate::model::WorkspaceId;
use crate::model::contact::ContactKey;
use crate::model::deal::{Deal, DealInput, DealStatus};

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

/// The closing time a write stores: none while open; when won or lost, the
/// time given, else the time stored, else now.
const CLOSED_AT: &str =
    "CASE WHEN r.status = 'open' THEN NULL ELSE coalesce(r.closed_at, d.closed_at, now()) END";

/// Updates deals by id from a JSON array (`$2`); returns the ids updated.
static UPDATE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE deals AS d SET external_id = coalesce(r.external_id, d.external_id),
           contact_id = r.contact_id, name = r.name, status = r.status, stage = r.stage,
           value = r.value, currency = r.currency, owner = r.owner,
           created_at = coalesce(r.created_at, d.created_at), closed_at = {CLOSED_AT},
           updated_at = now()
         FROM json_to_recordset($2::json) AS r({ROW_DEF})
         WHERE d.workspace_id = (SELECT $1::bigint) AND d.id = r.id
         RETURNING d.id"
    )
});

/// Inserts deals with the ids given, or updates the deal with the same
/// external id; returns each deal's id, external id and whether it was
/// created.
static UPSERT_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO deals AS d (workspace_id, id, external_id, contact_id, name, status, stage,
                                 value, currency, owner, created_at, closed_at)
         SELECT $1, r.id, r.external_id, r.contact_id, r.name, r.status, r.stage, r.value,
                r.currency, r.owner, coalesce(r.created_at, now()),
                CASE WHEN r.status = 'open' THEN NULL ELSE coalesce(r.closed_at, now()) END
         FROM json_to_recordset($2::json) AS r({ROW_DEF})
         ON CONFLICT (workspace_id, external_id) WHERE external_id IS NOT NULL DO UPDATE SET
           contact_id = EXCLUDED.contact_id, name = EXCLUDED.name, status = EXCLUDED.status,
           stage = EXCLUDED.stage, value = EXCLUDED.value, currency = EXCLUDED.currency,
           owner = EXCLUDED.owner, created_at = coalesce(EXCLUDED.created_at, d.created_at),
           closed_at = CASE WHEN EXCLUDED.status = 'open' THEN NULL
                            ELSE coalesce(EXCLUDED.closed_at, d.closed_at, now()) END,
           updated_at = now()
         RETURNING d.id, d.external_id, (d.xmax = 0)"
    )
});

/// The columns of a deal row in the JSON arrays above.
const ROW_DEF: &str = "id bigint, external_id text, contact_id bigint, name text, status text, \
     stage text, value float8, currency text, owner text, created_at timestamptz, closed_at timestamptz";

fn row_json(d: &Deal) -> serde_json::Value {
    serde_json::json!({
        "id": d.id,
        "external_id": d.external_id,
        "contact_id": d.contact_id,
        "name": d.name,
        "status": d.status.as_str(),
        "stage": d.stage,
        "value": d.value,
        "currency": d.currency,
        "owner": d.owner,
        "created_at": d.created_at,
        "closed_at": d.closed_at,
    })
}

/// One deal by id.
///
/// # Errors
/// `NotFound`.
pub async fn get(client: &impl GenericClient, ws: WorkspaceId, id: i64) -> Result<Deal> {
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM deals WHERE workspace_id = $1 AND id = $2"),
            &[&ws.0, &id],
        )
        .await?
        .ok_or_else(|| Error::NotFound(format!("deal {id}")))?;
    Ok(from_row(&row))
}

/// Upserts one batch of deals atomically: by id if set (unknown ids fail),
/// else by external id if set, else as new deals. Closing (won/lost)
/// without a time closes a deal now; reopening clears its close time. Each
/// deal's contact is resolved by its key and locked, so a concurrent merge
/// cannot leave a deal without its contact; rows are written in canonical
/// order. Returns the outcomes and what the batch changed (the contacts
/// that gain a deal and those a deal moves away from).
///
/// # Errors
/// Only whole-batch failures; row problems are `RowResult::Failed`.
#[tracing::instrument(skip_all, fields(ws = ws.0, rows = rows.len()))]
pub async fn upsert_batch(
    tx: &super::Tx<'_>,
    ws: WorkspaceId,
    rows: &[(usize, DealInput)],
) -> Result<(Vec<(usize, RowResult)>, Touched)> {
    fn failed(field: &str, error: impl Into<String>) -> RowResult {
        RowResult::Failed {
            field: field.into(),
            error: error.into(),
        }
    }

    let keys: Vec<&ContactKey> = rows.iter().map(|(_, d)| &d.contact).collect();
    let contacts = keys::resolve_locked(&**tx, ws, &keys, Lock::KeyShare).await?;
    let mut out: Vec<(usize, RowResult)> = Vec::with_capacity(rows.len());
    let mut by_id: Vec<(usize, Deal)> = Vec::new();
    let mut upserts: Vec<(usize, Deal)> = Vec::new();
    let (mut ids, mut exts): (HashMap<i64, usize>, HashMap<&str, usize>) = Default::default();
    for (i, d) in rows {
        let Some(contact_id) = contacts.get(&d.contact) else {
            out.push((*i, failed("contact", format!("unknown {}", d.contact))));
            continue;
        };
        let first = if d.deal.id > 0 {
            ids.insert(d.deal.id, *i)
        } else {
            d.deal
                .external_id
                .as_deref()
                .and_then(|x| exts.insert(x, *i))
        };
        if let Some(first) = first {
            out.push((
                *i,
                failed("", format!("same deal as row {first} of this batch")),
            ));
            continue;
        }
        let deal = Deal {
            contact_id: *contact_id,
            ..d.deal.clone()
        };
        if deal.id > 0 {
            by_id.push((*i, deal));
        } else {
            upserts.push((*i, deal));
        }
    }
    // Canonical orders: deals by id, new or external ones by external id.
    by_id.sort_by_key(|(_, d)| d.id);
    upserts.sort_by(|(_, a), (_, b)| a.external_id.cmp(&b.external_id));
    let touched = touched(tx, ws, &by_id, &upserts).await?;

    if !by_id.is_empty() {
        let json = serde_json::Value::Array(by_id.iter().map(|(_, d)| row_json(d)).collect());
        let updated: HashSet<i64> = tx
            .query(UPDATE_SQL.as_str(), &[&ws.0, &json])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for (i, d) in by_id {
            out.push(if updated.contains(&d.id) {
                (i, RowResult::Updated(d.id))
            } else {
                (i, failed("id", format!("no deal with id {}", d.id)))
            });
        }
    }
    if !upserts.is_empty() {
        // Ids for the deals that will be new, so each row knows its deal.
        let fresh: Vec<i64> = tx
            .query(
                "SELECT nextval(pg_get_serial_sequence('deals', 'id')) FROM generate_series(1, $1::int)",
                &[&(upserts.len() as i32)],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for ((_, d), id) in upserts.iter_mut().zip(fresh) {
            d.id = id;
        }
        let json = serde_json::Value::Array(upserts.iter().map(|(_, d)| row_json(d)).collect());
        let mut written: HashMap<Option<String>, (i64, bool)> = HashMap::new();
        let mut created: HashSet<i64> = HashSet::new();
        for r in tx.query(UPSERT_SQL.as_str(), &[&ws.0, &json]).await? {
            let (id, ext, new): (i64, Option<String>, bool) = (r.get(0), r.get(1), r.get(2));
            if new {
                created.insert(id);
            }
            if ext.is_some() {
                written.insert(ext, (id, new));
            }
        }
        for (i, d) in upserts {
            let r = match &d.external_id {
                Some(_) => match written.get(&d.external_id) {
                    Some((id, true)) => RowResult::Created(*id),
                    Some((id, false)) => RowResult::Updated(*id),
                    None => failed("", "internal: the deal was not written"),
                },
                None if created.contains(&d.id) => RowResult::Created(d.id),
                None => failed("", "internal: the deal was not written"),
            };
            out.push((i, r));
        }
    }
    out.sort_by_key(|(i, _)| *i);
    Ok((out, touched))
}

/// The contacts a batch's deals go to, and those they may leave.
async fn touched(
    tx: &super::Tx<'_>,
    ws: WorkspaceId,
    by_id: &[(usize, Deal)],
    upserts: &[(usize, Deal)],
) -> Result<Touched> {
    let ids: Vec<i64> = by_id.iter().map(|(_, d)| d.id).collect();
    let exts: Vec<&str> = upserts
        .iter()
        .filter_map(|(_, d)| d.external_id.as_deref())
        .collect();
    let mut contacts: BTreeSet<i64> = by_id
        .iter()
        .chain(upserts)
        .map(|(_, d)| d.contact_id)
        .collect();
    if !ids.is_empty() || !exts.is_empty() {
        let before = tx
            .query(
                "SELECT contact_id FROM deals WHERE workspace_id = $1 AND id = ANY($2)
                 UNION SELECT contact_id FROM deals WHERE workspace_id = $1 AND external_id = ANY($3)",
                &[&ws.0, &ids, &exts],
            )
            .await?;
        contacts.extend(before.iter().map(|r| r.get::<_, i64>(0)));
    }
    Ok(Touched::of(contacts, [changes::DEAL.to_string()]))
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
