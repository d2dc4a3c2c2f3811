//! Deals: upserts (one, or batches) by id or external id, and keyset listing.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use tokio_postgres::{GenericClient, Row};

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

/// Creates or updates one deal (see [`upsert_batch`]) and returns it, and
/// whether it was created.
///
/// # Errors
/// `NotFound` for an unknown deal id or contact; `InvalidArgument` for a
/// row the batch would fail.
#[tracing::instrument(skip_all, fields(ws = ws.0))]
pub async fn upsert(
    client: &mut super::Conn,
    ws: WorkspaceId,
    d: &DealInput,
) -> Result<(Deal, bool)> {
    let (_, outcome) = upsert_batch(client, ws, &[(0, d.clone())])
        .await?
        .pop()
        .ok_or_else(|| Error::internal("no outcome for the deal"))?;
    let (id, created) = match outcome {
        RowResult::Created(id) => (id, true),
        RowResult::Updated(id) | RowResult::Unchanged(id) => (id, false),
        RowResult::Failed { field, error } if field == "contact" || field == "id" => {
            return Err(Error::NotFound(error));
        }
        RowResult::Failed { field, error } => return Err(Error::invalid(field, error)),
    };
    let row = client
        .query_one(
            &format!("SELECT {COLUMNS} FROM deals WHERE workspace_id = $1 AND id = $2"),
            &[&ws.0, &id],
        )
        .await?;
    Ok((from_row(&row), created))
}

/// Upserts one batch of deals atomically: by id if set (unknown ids fail),
/// else by external id if set, else as new deals. Closing (won/lost)
/// without a time closes a deal now; reopening clears its close time. Each
/// deal's contact is resolved by its key and locked, so a concurrent merge
/// cannot leave a deal without its contact; rows are written in canonical
/// order and a lost race is retried.
///
/// # Errors
/// Only whole-batch failures; row problems are `RowResult::Failed`.
#[tracing::instrument(skip_all, fields(ws = ws.0, rows = rows.len()))]
pub async fn upsert_batch(
    client: &mut super::Conn,
    ws: WorkspaceId,
    rows: &[(usize, DealInput)],
) -> Result<Vec<(usize, RowResult)>> {
    let mut retry = super::Retry::default();
    loop {
        match try_batch(client, ws, rows).await {
            Err(e) if retry.again(&e, super::lost_race).await => {}
            other => return other,
        }
    }
}

fn failed(field: &str, error: impl Into<String>) -> RowResult {
    RowResult::Failed {
        field: field.into(),
        error: error.into(),
    }
}

async fn try_batch(
    client: &mut super::Conn,
    ws: WorkspaceId,
    rows: &[(usize, DealInput)],
) -> Result<Vec<(usize, RowResult)>> {
    let tx = client.transaction().await?;
    let keys: Vec<&ContactKey> = rows.iter().map(|(_, d)| &d.contact).collect();
    let contacts = keys::resolve_locked(&*tx, ws, &keys, Lock::KeyShare).await?;
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
    tx.commit().await?;
    out.sort_by_key(|(i, _)| *i);
    Ok(out)
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
