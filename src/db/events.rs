//! Activity events: idempotent batch recording and per-contact history.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use super::changes::{self, Touched};
use super::keys::{self, Lock};
use crate::error::Result;
use crate::model::WorkspaceId;
use crate::model::contact::ContactKey;
use crate::model::event::{CONVERSION_EVENT, NewEvent, StoredEvent};

/// What happened to one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventResult {
    /// Stored.
    Recorded,
    /// Already stored under the same event id.
    Duplicate,
    /// Not stored.
    Failed {
        /// The offending field.
        field: String,
        /// Why.
        error: String,
    },
}

const INSERT_SQL: &str = "
WITH ins AS (
    INSERT INTO events (workspace_id, contact_id, event_key, type, occurred_at, value, currency, properties)
    SELECT $1, r.contact_id, r.event_key, r.type, r.occurred_at, r.value, r.currency, coalesce(r.properties, '{}')
    FROM json_to_recordset($2::json) AS r(contact_id bigint, event_key text, type text, occurred_at timestamptz,
                                     value float8, currency text, properties jsonb)
    ON CONFLICT (workspace_id, event_key) WHERE event_key IS NOT NULL DO NOTHING
    RETURNING contact_id, event_key, type, occurred_at
), conv AS (
    UPDATE contacts c SET converted_at = p.first, updated_at = now(), version = c.version + 1
    FROM (SELECT contact_id, min(occurred_at) AS first FROM ins WHERE type = $3 GROUP BY contact_id) p
    WHERE c.workspace_id = (SELECT $1::bigint) AND c.id = p.contact_id
      AND (c.converted_at IS NULL OR c.converted_at > p.first)
)
SELECT event_key FROM ins WHERE event_key IS NOT NULL";

/// Each row's outcome, by its index in the batch.
pub type Outcomes = Vec<(usize, EventResult)>;

/// Records one batch atomically. `rows` are (row index, validated event).
/// Rows naming unknown contacts fail; rows whose event id is already stored
/// (or repeats an earlier row of the batch) are duplicates. A purchase sets
/// the contact's `converted_at` if it is unset or later.
///
/// The contacts are resolved and locked (`FOR KEY SHARE`, ascending) before
/// the insert, so a concurrent merge or delete either finishes first (and
/// its keys are looked up again) or waits: no batch fails for that race.
///
/// Returns the outcomes and what the batch changed, by event type (a live
/// segment that reads purchases is refreshed for the buyers only).
///
/// # Errors
/// Only whole-batch failures (database unavailable).
#[tracing::instrument(skip_all, fields(ws = ws.0, rows = rows.len()))]
pub async fn record_batch(
    tx: &super::Tx<'_>,
    ws: WorkspaceId,
    rows: &[(usize, NewEvent)],
) -> Result<(Outcomes, Vec<Touched>)> {
    let keys: Vec<&ContactKey> = rows.iter().map(|(_, e)| &e.contact).collect();
    let ids = keys::resolve_locked(&**tx, ws, &keys, Lock::KeyShare).await?;
    // Conversions change contacts: lock them for that, in id order too.
    let buyers: BTreeSet<i64> = rows
        .iter()
        .filter(|(_, e)| e.event_type == CONVERSION_EVENT)
        .filter_map(|(_, e)| ids.get(&e.contact).copied())
        .collect();
    keys::lock(&**tx, ws, buyers, Lock::NoKeyUpdate).await?;
    let mut out = Vec::with_capacity(rows.len());
    let mut json = Vec::with_capacity(rows.len());
    let mut keyed: Vec<(usize, &str)> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut touched: BTreeMap<&str, Touched> = BTreeMap::new();
    for (i, e) in rows {
        let Some(contact_id) = ids.get(&e.contact) else {
            out.push((
                *i,
                EventResult::Failed {
                    field: "contact".into(),
                    error: format!("unknown {}", e.contact),
                },
            ));
            continue;
        };
        if let Some(k) = e.event_key.as_deref() {
            if !seen.insert(k) {
                out.push((*i, EventResult::Duplicate));
                continue;
            }
            keyed.push((*i, k));
        } else {
            out.push((*i, EventResult::Recorded));
        }
        let t = touched
            .entry(e.event_type.as_str())
            .or_insert_with(Touched::nothing);
        t.ids.get_or_insert_default().insert(*contact_id);
        t.keys.insert(changes::event(&e.event_type));
        if e.event_type == CONVERSION_EVENT {
            t.keys.insert(changes::column("converted_at"));
            t.keys.insert(changes::column("updated_at"));
        }
        json.push(serde_json::json!({
            "contact_id": contact_id,
            "event_key": e.event_key,
            "type": e.event_type,
            "occurred_at": e.occurred_at,
            "value": e.value,
            "currency": e.currency,
            "properties": e.properties,
        }));
    }
    if !json.is_empty() {
        let inserted: HashSet<String> = tx
            .query(
                INSERT_SQL,
                &[&ws.0, &serde_json::Value::Array(json), &CONVERSION_EVENT],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for (i, k) in keyed {
            let r = if inserted.contains(k) {
                EventResult::Recorded
            } else {
                EventResult::Duplicate
            };
            out.push((i, r));
        }
    }
    out.sort_by_key(|(i, _)| *i);
    Ok((out, touched.into_values().collect()))
}

/// A contact's events, newest first, after the keyset position `after`
/// (occurred_at, id).
///
/// # Errors
/// `NotFound` when the contact does not exist.
#[tracing::instrument(skip_all, fields(ws = ws.0))]
pub async fn list(
    client: &impl GenericClient,
    ws: WorkspaceId,
    contact: &ContactKey,
    event_type: Option<&str>,
    after: Option<(DateTime<Utc>, i64)>,
    limit: i64,
) -> Result<Vec<StoredEvent>> {
    let id = keys::find(client, ws, contact).await?;
    let (at, after_id) = after.unwrap_or((DateTime::<Utc>::MAX_UTC, i64::MAX));
    let rows = client
        .query(
            "SELECT id, event_key, contact_id, type, occurred_at, value, currency, properties
             FROM events WHERE workspace_id = $1 AND contact_id = $2
               AND ($3::text IS NULL OR type = $3) AND (occurred_at, id) < ($4, $5)
             ORDER BY occurred_at DESC, id DESC LIMIT $6",
            &[&ws.0, &id, &event_type, &at, &after_id, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| StoredEvent {
            id: r.get(0),
            event_key: r.get(1),
            contact_id: r.get(2),
            event_type: r.get(3),
            occurred_at: r.get(4),
            value: r.get(5),
            currency: r.get(6),
            properties: match r.get::<_, serde_json::Value>(7) {
                serde_json::Value::Object(m) => m,
                _ => serde_json::Map::new(),
            },
        })
        .collect())
}
