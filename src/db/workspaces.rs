//! Workspaces: created, with their built-in labels and segments, the first
//! time a request names one.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::db::Pool;

use crate::error::Result;
use crate::model::{WorkspaceId, contact::BUILTIN_LABELS};

/// Resolves workspace names to ids, creating workspaces on first use and
/// caching the answer (workspaces are never renamed or deleted).
#[derive(Debug)]
pub struct Workspaces {
    pool: Pool,
    cache: RwLock<HashMap<String, WorkspaceId>>,
}

impl Workspaces {
    /// A resolver over `pool`.
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// The id of workspace `name`, creating it if needed.
    ///
    /// # Errors
    /// The database is unavailable.
    pub async fn resolve(&self, name: &str) -> Result<WorkspaceId> {
        if let Some(id) = self.cache.read().expect("cache lock").get(name) {
            return Ok(*id);
        }
        let mut client = super::conn(&self.pool).await?;
        let id = ensure(&mut client, name).await?;
        // Also for workspaces created before segments existed.
        super::segments::ensure_builtins(&**client, id).await?;
        self.cache
            .write()
            .expect("cache lock")
            .insert(name.to_string(), id);
        Ok(id)
    }
}

impl Workspaces {
    /// The id of workspace `name` if it exists (never creating it).
    ///
    /// # Errors
    /// The database is unavailable.
    pub async fn find(&self, name: &str) -> Result<Option<WorkspaceId>> {
        if let Some(id) = self.cache.read().expect("cache lock").get(name) {
            return Ok(Some(*id));
        }
        let client = super::conn(&self.pool).await?;
        let row = client
            .query_opt(
                "SELECT workspace_id FROM workspaces WHERE name = $1",
                &[&name],
            )
            .await?;
        let id = row.map(|r| WorkspaceId(r.get(0)));
        if let Some(id) = id {
            self.cache
                .write()
                .expect("cache lock")
                .insert(name.to_string(), id);
        }
        Ok(id)
    }

    /// Creates workspace `name`; `false` when it already existed.
    ///
    /// # Errors
    /// The database is unavailable.
    pub async fn create(&self, name: &str) -> Result<(WorkspaceId, bool)> {
        let mut client = super::conn(&self.pool).await?;
        find_or_create(&mut client, name).await
    }
}

/// Every workspace after `after` by name: (id, name, created at), at most
/// `limit`.
///
/// # Errors
/// The database is unavailable.
pub async fn list(
    client: &impl tokio_postgres::GenericClient,
    after: &str,
    limit: i64,
) -> Result<Vec<(WorkspaceId, String, chrono::DateTime<chrono::Utc>)>> {
    let rows = client
        .query(
            "SELECT workspace_id, name, created_at FROM workspaces WHERE name > $1 ORDER BY name LIMIT $2",
            &[&after, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (WorkspaceId(r.get(0)), r.get(1), r.get(2)))
        .collect())
}

/// When workspace `ws` was created.
///
/// # Errors
/// The database is unavailable.
pub async fn created_at(
    client: &impl tokio_postgres::GenericClient,
    ws: WorkspaceId,
) -> Result<chrono::DateTime<chrono::Utc>> {
    let row = client
        .query_one(
            "SELECT created_at FROM workspaces WHERE workspace_id = $1",
            &[&ws.0],
        )
        .await?;
    Ok(row.get(0))
}

/// Finds or creates workspace `name` with its built-in definitions.
///
/// # Errors
/// The database is unavailable.
pub async fn ensure(client: &mut tokio_postgres::Client, name: &str) -> Result<WorkspaceId> {
    Ok(find_or_create(client, name).await?.0)
}

/// Workspace `name` and whether this call created it.
async fn find_or_create(
    client: &mut tokio_postgres::Client,
    name: &str,
) -> Result<(WorkspaceId, bool)> {
    let find = "SELECT workspace_id FROM workspaces WHERE name = $1";
    if let Some(row) = client.query_opt(find, &[&name]).await? {
        return Ok((WorkspaceId(row.get(0)), false));
    }
    let tx = client.transaction().await?;
    let created = tx
        .query_opt(
            "INSERT INTO workspaces (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING workspace_id",
            &[&name],
        )
        .await?;
    let Some(row) = created else {
        // Another request created it concurrently.
        tx.rollback().await?;
        let row = client.query_one(find, &[&name]).await?;
        return Ok((WorkspaceId(row.get(0)), false));
    };
    let ws = WorkspaceId(row.get(0));
    let (names, descriptions): (Vec<&str>, Vec<&str>) = BUILTIN_LABELS.iter().copied().unzip();
    tx.execute(
        "INSERT INTO labels (workspace_id, name, description, builtin)
         SELECT $1, n, d, true FROM unnest($2::text[], $3::text[]) AS t(n, d)",
        &[&ws.0, &names, &descriptions],
    )
    .await?;
    // Built-in segments first: they keep ids 1 to 7 in a new workspace.
    super::segments::ensure_builtins(&tx, ws).await?;
    super::segments::insert_rules(&tx, ws).await?;
    tx.commit().await?;
    tracing::info!(workspace = name, id = ws.0, "created workspace");
    Ok((ws, true))
}
