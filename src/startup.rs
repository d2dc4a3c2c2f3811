//! Getting a migrated database: the configured `DATABASE_URL`, or segd's
//! own private cluster when there is none.

use std::sync::Arc;

use anyhow::Context;
use deadpool_postgres::Pool;
use tokio_postgres::NoTls;

use crate::cluster::{ClusterOptions, DB_NAME, LocalCluster};
use crate::config::Config;
use crate::db;

/// A migrated database, and the private cluster behind it if segd started one.
pub struct Database {
    /// The pool.
    pub pool: Pool,
    /// The connection URL (holds secrets; do not log).
    pub url: String,
    /// The private cluster, stopped when the last handle drops.
    pub cluster: Option<Arc<LocalCluster>>,
}

/// Connects to `DATABASE_URL`, or starts the private cluster in
/// `--data-dir`, then applies migrations.
///
/// # Errors
/// No PostgreSQL (installed or reachable), or migrations failed.
pub async fn database(config: &Config) -> anyhow::Result<Database> {
    let (url, cluster) = match &config.database_url {
        Some(url) => (url.expose().to_string(), None),
        None => {
            let dir =
                crate::cluster::data_dir(config.data_dir.as_deref(), &std::env::current_dir()?);
            let cluster = tokio::task::spawn_blocking(move || {
                LocalCluster::start(&dir, ClusterOptions { durable: true })
            })
            .await??;
            create_database(&cluster.url("postgres"), DB_NAME).await?;
            (cluster.url(DB_NAME), Some(Arc::new(cluster)))
        }
    };
    migrate(&url).await?;
    let pool = db::pool(&url, config.pool_size, config.statement_timeout)?;
    Ok(Database { pool, url, cluster })
}

/// Applies migrations over a dedicated connection.
///
/// # Errors
/// The database is unreachable or a migration failed.
pub async fn migrate(url: &str) -> anyhow::Result<usize> {
    let (mut client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    let task = tokio::spawn(conn);
    let n = db::migrate::migrate(&mut client).await?;
    drop(client);
    let _ = task.await;
    Ok(n)
}

/// Creates database `name` through the maintenance database at `admin_url`
/// unless it exists.
///
/// # Errors
/// The server is unreachable or refuses.
pub async fn create_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let (client, conn) = tokio_postgres::connect(admin_url, NoTls)
        .await
        .context("connecting to the private PostgreSQL")?;
    let task = tokio::spawn(conn);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        // Identifiers cannot be parameters; `name` is ours, quote it anyway.
        let quoted: String = name
            .chars()
            .flat_map(|c| if c == '"' { vec!['"', '"'] } else { vec![c] })
            .collect();
        client
            .batch_execute(&format!("CREATE DATABASE \"{quoted}\""))
            .await?;
    }
    drop(client);
    let _ = task.await;
    Ok(())
}
