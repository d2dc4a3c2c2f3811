//! The contacts table: reads, single writes, pages. Bulk import lives in
//! `import`, merging in `merge`.
//!
//! Writes send the contact as one JSON row and unpack it with
//! `json_to_record(set)`, so every write path shares one column list.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use tokio_postgres::{GenericClient, Row};

use super::definitions;
use crate::error::{Error, Result};
use crate::model::WorkspaceId;
use crate::model::contact::{Contact, ContactKey, SourceChannel, SubscriptionStatus, TextField};
use crate::model::patch::Patch;
use crate::model::schema::Schema;

/// How an import merges a supplied column into the stored one.
#[derive(Clone, Copy)]
pub(crate) enum Merge {
    /// The supplied value if set, else the stored one.
    Coalesce,
    /// The supplied array if non-empty, else the stored one.
    NonEmpty,
    /// Stored JSON object overlaid with the supplied keys.
    JsonOverlay,
    /// A subscription time: now when the paired status changes without a time.
    ChangedAt(&'static str),
}

/// Every writable column with its SQL type and import merge rule.
pub(crate) const COLUMNS: &[(&str, &str, Merge)] = &[
    ("external_id", "text", Merge::Coalesce),
    ("email", "text", Merge::Coalesce),
    ("phone", "text", Merge::Coalesce),
    ("first_name", "text", Merge::Coalesce),
    ("last_name", "text", Merge::Coalesce),
    ("birth_date", "date", Merge::Coalesce),
    ("gender", "text", Merge::Coalesce),
    ("locale", "text", Merge::Coalesce),
    ("country", "text", Merge::Coalesce),
    ("region", "text", Merge::Coalesce),
    ("city", "text", Merge::Coalesce),
    ("postal_code", "text", Merge::Coalesce),
    ("company", "text", Merge::Coalesce),
    ("job_title", "text", Merge::Coalesce),
    ("source_channel", "text", Merge::Coalesce),
    ("source_detail", "text", Merge::Coalesce),
    ("created_at", "timestamptz", Merge::Coalesce),
    ("converted_at", "timestamptz", Merge::Coalesce),
    ("owner", "text", Merge::Coalesce),
    ("labels", "text[]", Merge::NonEmpty),
    ("status", "text", Merge::Coalesce),
    ("status_reason", "text", Merge::Coalesce),
    ("lead_score", "float8", Merge::Coalesce),
    ("tags", "text[]", Merge::NonEmpty),
    ("attrs", "jsonb", Merge::JsonOverlay),
    ("email_status", "text", Merge::Coalesce),
    (
        "email_changed_at",
        "timestamptz",
        Merge::ChangedAt("email_status"),
    ),
    ("sms_status", "text", Merge::Coalesce),
    (
        "sms_changed_at",
        "timestamptz",
        Merge::ChangedAt("sms_status"),
    ),
];

/// The columns every read selects, in `from_row` order.
pub static SELECT_COLUMNS: LazyLock<String> = LazyLock::new(|| {
    let mut cols = vec!["c.id"];
    cols.extend(COLUMNS.iter().map(|(n, _, _)| *n));
    cols.extend(["updated_at", "version"]);
    cols.iter()
        .map(|c| {
            if c.starts_with("c.") {
                c.to_string()
            } else {
                format!("c.{c}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
});

/// `id bigint, external_id text, ...`: the record definition for
/// `json_to_record(set)` over a serialised [`Contact`].
pub(crate) static RECORD_DEF: LazyLock<String> = LazyLock::new(|| {
    std::iter::once("id bigint".to_string())
        .chain(COLUMNS.iter().map(|(n, t, _)| format!("{n} {t}")))
        .collect::<Vec<_>>()
        .join(", ")
});

/// Contacts as one JSON array parameter (sent as `json`, which PostgreSQL
/// parses once, rather than `jsonb`, which it also sorts and re-encodes).
/// The model serialises with column names and skips unset fields.
pub(crate) fn rows_param<'a>(
    rows: &[&'a Contact],
) -> tokio_postgres::types::Json<Vec<&'a Contact>> {
    tokio_postgres::types::Json(rows.to_vec())
}

/// Inserts contacts from a JSON array (`$2`) into workspace `$1`, ending
/// with `tail` (a RETURNING clause, or ON CONFLICT and RETURNING).
fn insert_sql(tail: &str) -> String {
    let names: Vec<&str> = COLUMNS.iter().map(|(n, _, _)| *n).collect();
    let values: Vec<String> = names
        .iter()
        .map(|n| match *n {
            "created_at" => "coalesce(r.created_at, now())".to_string(),
            "labels" | "tags" => format!("coalesce(r.{n}, '{{}}')"),
            "attrs" => "coalesce(r.attrs, '{}')".to_string(),
            n => match COLUMNS.iter().find(|c| c.0 == n) {
                Some((_, _, Merge::ChangedAt(status))) => {
                    format!("CASE WHEN r.{status} IS NOT NULL THEN coalesce(r.{n}, now()) END")
                }
                _ => format!("r.{n}"),
            },
        })
        .collect();
    format!(
        "INSERT INTO contacts AS c (workspace_id, {}) SELECT $1, {} FROM json_to_recordset($2::json) AS r({}) {tail}",
        names.join(", "),
        values.join(", "),
        *RECORD_DEF,
    )
}

/// Inserts contacts and returns them whole.
pub(crate) static INSERT_SQL: LazyLock<String> =
    LazyLock::new(|| insert_sql(&format!("RETURNING {}", *SELECT_COLUMNS)));

/// Inserts contacts whose keys are free, skipping (not failing on) any key
/// taken meanwhile, and returns the keys of those inserted.
pub(crate) static IMPORT_INSERT_SQL: LazyLock<String> =
    LazyLock::new(|| insert_sql("ON CONFLICT DO NOTHING RETURNING c.id, c.external_id, c.email"));

static REPLACE_SQL: LazyLock<String> = LazyLock::new(|| {
    let sets: Vec<String> = COLUMNS
        .iter()
        .map(|(n, _, _)| match *n {
            "labels" | "tags" => format!("{n} = coalesce(r.{n}, '{{}}')"),
            "attrs" => "attrs = coalesce(r.attrs, '{}')".to_string(),
            "created_at" => "created_at = coalesce(r.created_at, c.created_at)".to_string(),
            n => format!("{n} = r.{n}"),
        })
        .collect();
    format!(
        "UPDATE contacts AS c SET {}, updated_at = now(), version = c.version + 1
         FROM json_to_record($2::json) AS r({}) WHERE c.workspace_id = $1 AND c.id = r.id RETURNING {}",
        sets.join(", "),
        *RECORD_DEF,
        *SELECT_COLUMNS
    )
});

/// Decodes a row selected with [`SELECT_COLUMNS`].
pub fn from_row(r: &Row, schema: &Schema) -> Contact {
    let mut c = Contact {
        id: r.get("id"),
        birth_date: r.get("birth_date"),
        source_channel: r
            .get::<_, Option<&str>>("source_channel")
            .and_then(SourceChannel::parse),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        converted_at: r.get("converted_at"),
        labels: r.get("labels"),
        lead_score: r.get("lead_score"),
        tags: r.get("tags"),
        custom: schema.decode_attrs(&r.get::<_, serde_json::Value>("attrs")),
        email_status: r
            .get::<_, Option<&str>>("email_status")
            .and_then(SubscriptionStatus::parse),
        email_changed_at: r.get("email_changed_at"),
        sms_status: r
            .get::<_, Option<&str>>("sms_status")
            .and_then(SubscriptionStatus::parse),
        sms_changed_at: r.get("sms_changed_at"),
        version: r.get("version"),
        ..Contact::default()
    };
    for f in TextField::ALL {
        f.set(&mut c, r.get(f.name()));
    }
    c
}

fn check(schema: &Schema, c: &Contact) -> Result<()> {
    let v = schema.check_contact(c);
    if v.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(v))
    }
}

/// Creates a contact.
///
/// # Errors
/// `InvalidArgument` for unknown labels or custom fields, `AlreadyExists`
/// when the external id or email is taken.
#[tracing::instrument(skip_all, fields(ws = ws.0))]
pub async fn create(tx: &super::Tx<'_>, ws: WorkspaceId, c: &Contact) -> Result<Contact> {
    let schema = definitions::schema(&**tx, ws).await?;
    check(&schema, c)?;
    let row = tx
        .query_one(INSERT_SQL.as_str(), &[&ws.0, &rows_param(&[c])])
        .await
        .map_err(|e| taken(e, c))?;
    Ok(from_row(&row, &schema))
}

/// Explains a unique violation on a contact write in terms of its keys.
pub(crate) fn taken(e: tokio_postgres::Error, c: &Contact) -> Error {
    let constraint = e
        .as_db_error()
        .and_then(|d| d.constraint())
        .unwrap_or_default()
        .to_string();
    match (super::error::from_pg(e), constraint.as_str()) {
        (Error::AlreadyExists(_), "contacts_email") => Error::AlreadyExists(format!(
            "a contact with email {:?} already exists",
            c.email.as_deref().unwrap_or_default()
        )),
        (Error::AlreadyExists(_), "contacts_external_id") => Error::AlreadyExists(format!(
            "a contact with external id {:?} already exists",
            c.external_id.as_deref().unwrap_or_default()
        )),
        (other, _) => other,
    }
}

/// Reads one contact by any key.
///
/// # Errors
/// `NotFound` when no contact in the workspace has that key.
#[tracing::instrument(skip_all, fields(ws = ws.0))]
pub async fn get(
    client: &impl GenericClient,
    ws: WorkspaceId,
    key: &ContactKey,
) -> Result<Contact> {
    let schema = definitions::schema(client, ws).await?;
    let row = select_by_key(client, ws, key, "").await?;
    Ok(from_row(&row, &schema))
}

async fn select_by_key(
    client: &impl GenericClient,
    ws: WorkspaceId,
    key: &ContactKey,
    suffix: &str,
) -> Result<Row> {
    let row = match key {
        ContactKey::Id(id) => {
            client
                .query_opt(&select_where("id", suffix), &[&ws.0, id])
                .await?
        }
        ContactKey::ExternalId(x) => {
            client
                .query_opt(&select_where("external_id", suffix), &[&ws.0, x])
                .await?
        }
        ContactKey::Email(e) => {
            client
                .query_opt(&select_where("email", suffix), &[&ws.0, e])
                .await?
        }
    };
    row.ok_or_else(|| Error::NotFound(key.to_string()))
}

fn select_where(col: &str, suffix: &str) -> String {
    format!(
        "SELECT {} FROM contacts c WHERE c.workspace_id = $1 AND c.{col} = $2 {suffix}",
        *SELECT_COLUMNS
    )
}

/// Applies `patch` to contact `id`, if its version is still `expected`
/// (when given); returns the contact before and after.
///
/// # Errors
/// `NotFound`, `Aborted` on an etag mismatch, `InvalidArgument` when the
/// result breaks the schema, `AlreadyExists` when a key is taken.
#[tracing::instrument(skip_all, fields(ws = ws.0, id))]
pub async fn update(
    tx: &super::Tx<'_>,
    ws: WorkspaceId,
    id: i64,
    expected: Option<i64>,
    patch: &Patch,
) -> Result<(Contact, Contact)> {
    let schema = definitions::schema(&**tx, ws).await?;
    let row = select_by_key(&**tx, ws, &ContactKey::Id(id), "FOR UPDATE").await?;
    let mut c = from_row(&row, &schema);
    if let Some(v) = expected
        && v != c.version
    {
        return Err(Error::Aborted(format!(
            "contact {id} changed: etag is v{}, request has v{v}",
            c.version
        )));
    }
    let before = c.clone();
    patch.apply(&mut c, Utc::now());
    if c == before {
        return Ok((before.clone(), before));
    }
    check(&schema, &c)?;
    let row = tx
        .query_one(
            REPLACE_SQL.as_str(),
            &[&ws.0, &tokio_postgres::types::Json(&c)],
        )
        .await
        .map_err(|e| taken(e, &c))?;
    Ok((before, from_row(&row, &schema)))
}

/// Writes a whole contact over the stored row (used by merge).
pub(crate) async fn replace(
    tx: &impl GenericClient,
    ws: WorkspaceId,
    c: &Contact,
    schema: &Schema,
) -> Result<Contact> {
    let row = tx
        .query_one(
            REPLACE_SQL.as_str(),
            &[&ws.0, &tokio_postgres::types::Json(c)],
        )
        .await
        .map_err(|e| taken(e, c))?;
    Ok(from_row(&row, schema))
}

/// Erases a contact with its events, deals and memberships.
///
/// # Errors
/// `NotFound`, or `Aborted` when `expected` does not match.
#[tracing::instrument(skip_all, fields(ws = ws.0, id))]
pub async fn delete(
    client: &impl GenericClient,
    ws: WorkspaceId,
    id: i64,
    expected: Option<i64>,
) -> Result<()> {
    let row = client
        .query_opt(
            "WITH d AS (DELETE FROM contacts WHERE workspace_id = $1 AND id = $2
                          AND ($3::bigint IS NULL OR version = $3) RETURNING id)
             SELECT (SELECT count(*) FROM d), (SELECT version FROM contacts WHERE workspace_id = $1 AND id = $2)",
            &[&ws.0, &id, &expected],
        )
        .await?
        .expect("aggregate returns a row");
    let (deleted, current): (i64, Option<i64>) = (row.get(0), row.get(1));
    match (deleted, current) {
        (1, _) => Ok(()),
        (_, Some(v)) => Err(Error::Aborted(format!(
            "contact {id} changed: etag is v{v}, request has v{}",
            expected.unwrap_or_default()
        ))),
        _ => Err(Error::NotFound(ContactKey::Id(id).to_string())),
    }
}

/// Sort orders for [`list`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// By id.
    Id,
    /// By creation time, then id.
    CreatedAt,
    /// By last change, then id.
    UpdatedAt,
}

impl Order {
    fn column(self) -> &'static str {
        match self {
            Order::Id => "id",
            Order::CreatedAt => "created_at",
            Order::UpdatedAt => "updated_at",
        }
    }

    /// Parses `id`, `created_at` or `updated_at`, optionally with ` desc`/` asc`.
    pub fn parse(s: &str) -> Option<(Order, bool)> {
        let mut words = s.split_whitespace();
        let order = match words.next().unwrap_or("id") {
            "id" => Order::Id,
            "created_at" => Order::CreatedAt,
            "updated_at" => Order::UpdatedAt,
            _ => return None,
        };
        let desc = match words.next() {
            None | Some("asc") => false,
            Some("desc") => true,
            _ => return None,
        };
        words.next().is_none().then_some((order, desc))
    }
}

/// A keyset position in a contact listing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// The order it belongs to, as given.
    pub order_by: String,
    /// Sort time of the last row (for time orders).
    pub at: Option<DateTime<Utc>>,
    /// Id of the last row.
    pub id: i64,
}

/// A page of contacts after `after`, and the cursor for the next page.
///
/// # Errors
/// The database is unavailable.
#[tracing::instrument(skip_all, fields(ws = ws.0))]
pub async fn list(
    client: &impl GenericClient,
    ws: WorkspaceId,
    order_by: &str,
    (order, desc): (Order, bool),
    after: Option<&Cursor>,
    limit: i64,
) -> Result<(Vec<Contact>, Option<Cursor>)> {
    let schema = definitions::schema(client, ws).await?;
    let (cmp, dir) = if desc { ("<", "DESC") } else { (">", "ASC") };
    let col = order.column();
    let key = if order == Order::Id {
        "c.id".to_string()
    } else {
        format!("(c.{col}, c.id)")
    };
    let pos = if order == Order::Id {
        "$3".to_string()
    } else {
        "($2, $3)".to_string()
    };
    let order_sql = if order == Order::Id {
        format!("c.id {dir}")
    } else {
        format!("c.{col} {dir}, c.id {dir}")
    };
    let sql = format!(
        // `$2 IS NOT NULL` only types $2, so every order binds the same parameters.
        "SELECT {} FROM contacts c WHERE c.workspace_id = $1 AND ($2::timestamptz IS NOT NULL)
           AND ($4 OR {key} {cmp} {pos})
         ORDER BY {order_sql} LIMIT $5",
        *SELECT_COLUMNS
    );
    let at = after.and_then(|a| a.at).unwrap_or_else(Utc::now);
    let id = after.map(|a| a.id).unwrap_or_default();
    let rows = client
        .query(&sql, &[&ws.0, &at, &id, &after.is_none(), &(limit + 1)])
        .await?;
    let mut contacts: Vec<Contact> = rows.iter().map(|r| from_row(r, &schema)).collect();
    let next = if contacts.len() as i64 > limit {
        contacts.truncate(limit as usize);
        contacts.last().map(|c| Cursor {
            order_by: order_by.to_string(),
            at: match order {
                Order::Id => None,
                Order::CreatedAt => c.created_at,
                Order::UpdatedAt => c.updated_at,
            },
            id: c.id,
        })
    } else {
        None
    };
    Ok((contacts, next))
}
