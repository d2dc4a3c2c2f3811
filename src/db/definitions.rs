//! Per-workspace definitions: custom fields and labels, and the `Schema`
//! they form.

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use crate::error::{Error, Result};
use crate::model::WorkspaceId;
use crate::model::contact::{CustomFieldDef, CustomFieldType, LabelDef};
use crate::model::schema::Schema;

/// Loads the workspace's custom field types and labels.
///
/// # Errors
/// The database is unavailable.
#[tracing::instrument(skip_all, fields(ws = ws.0))]
pub async fn schema(client: &impl GenericClient, ws: WorkspaceId) -> Result<Schema> {
    let rows = client
        .query(
            "SELECT 'f', key, type FROM custom_fields WHERE workspace_id = $1
             UNION ALL SELECT 'l', name, '' FROM labels WHERE workspace_id = $1",
            &[&ws.0],
        )
        .await?;
    let mut s = Schema::default();
    for r in rows {
        let (kind, name, t): (&str, String, &str) = (r.get(0), r.get(1), r.get(2));
        if kind == "l" {
            s.labels.insert(name);
        } else if let Some(t) = CustomFieldType::parse(t) {
            s.custom.insert(name, t);
        }
    }
    Ok(s)
}

/// Defines a custom field, or updates the description of an existing one of
/// the same type.
///
/// # Errors
/// `AlreadyExists` if the key is defined with another type.
#[tracing::instrument(skip_all, fields(ws = ws.0, key = %def.key))]
pub async fn define_custom_field(
    client: &impl GenericClient,
    ws: WorkspaceId,
    def: &CustomFieldDef,
) -> Result<CustomFieldDef> {
    let row = client
        .query_opt(
            "INSERT INTO custom_fields (workspace_id, key, type, description) VALUES ($1, $2, $3, $4)
             ON CONFLICT (workspace_id, key) DO UPDATE SET description = EXCLUDED.description
             WHERE custom_fields.type = EXCLUDED.type
             RETURNING key, type, description, created_at",
            &[&ws.0, &def.key, &def.field_type.as_str(), &def.description],
        )
        .await?;
    match row {
        Some(r) => Ok(custom_field_from_row(&r)),
        None => Err(Error::AlreadyExists(format!(
            "custom field `{}` is already defined with another type; types cannot change",
            def.key
        ))),
    }
}

/// Every custom field of the workspace, by key.
///
/// # Errors
/// The database is unavailable.
pub async fn list_custom_fields(
    client: &impl GenericClient,
    ws: WorkspaceId,
) -> Result<Vec<CustomFieldDef>> {
    let rows = client
        .query(
            "SELECT key, type, description, created_at FROM custom_fields
             WHERE workspace_id = $1 ORDER BY key",
            &[&ws.0],
        )
        .await?;
    Ok(rows.iter().map(custom_field_from_row).collect())
}

fn custom_field_from_row(r: &tokio_postgres::Row) -> CustomFieldDef {
    let t: &str = r.get(1);
    CustomFieldDef {
        key: r.get(0),
        field_type: CustomFieldType::parse(t).unwrap_or(CustomFieldType::String),
        description: r.get(2),
        created_at: r.get::<_, DateTime<Utc>>(3),
    }
}

/// Defines a label, or updates a custom label's description.
///
/// # Errors
/// `FailedPrecondition` when trying to redefine a built-in label.
#[tracing::instrument(skip_all, fields(ws = ws.0, label = %def.name))]
pub async fn define_label(
    client: &impl GenericClient,
    ws: WorkspaceId,
    def: &LabelDef,
) -> Result<LabelDef> {
    let row = client
        .query_opt(
            "INSERT INTO labels (workspace_id, name, description) VALUES ($1, $2, $3)
             ON CONFLICT (workspace_id, name) DO UPDATE SET description = EXCLUDED.description
             WHERE NOT labels.builtin
             RETURNING name, description, builtin",
            &[&ws.0, &def.name, &def.description],
        )
        .await?;
    row.map(|r| label_from_row(&r)).ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "`{}` is a built-in label and cannot be redefined",
            def.name
        ))
    })
}

/// Every label of the workspace, by name.
///
/// # Errors
/// The database is unavailable.
pub async fn list_labels(client: &impl GenericClient, ws: WorkspaceId) -> Result<Vec<LabelDef>> {
    let rows = client
        .query(
            "SELECT name, description, builtin FROM labels WHERE workspace_id = $1 ORDER BY name",
            &[&ws.0],
        )
        .await?;
    Ok(rows.iter().map(label_from_row).collect())
}

fn label_from_row(r: &tokio_postgres::Row) -> LabelDef {
    LabelDef {
        name: r.get(0),
        description: r.get(1),
        builtin: r.get(2),
    }
}
