//! Getting a migrated database: the configured `DATABASE_URL`, or segd's
//! own private cluster when there is none.

use std::sync::Arc;

use anyhow::Context;
use deadpool_postgres::Pool;

use crate::cluster::{ClusterOptions, DB_NAME, LocalCluster};
use crate::config::Config;
use crate::db::{self, ConnInfo};

/// A migrated database, and the private cluster behind it if segd started one.
pub struct Database {
    /// The pool.
    pub pool: Pool,
    /// Where it is and how to reach it, TLS included (holds secrets; do
    /// not log).
    pub conn: ConnInfo,
    /// The private cluster, stopped when the last handle drops.
    pub cluster: Option<Arc<LocalCluster>>,
}

/// Connects to `DATABASE_URL` (with the TLS its `sslmode` asks for), or
/// starts the private cluster in `--data-dir`, then applies migrations.
///
/// # Errors
/// No PostgreSQL (installed or reachable), a TLS setting that cannot be
/// met (a server without TLS, a certificate that does not check out), or
/// migrations failed.
pub async fn database(config: &Config) -> anyhow::Result<Database> {
    let (conn, cluster) = match &config.database_url {
        Some(url) => (
            ConnInfo::parse(url.expose(), config.database_ca.as_deref()).context("DATABASE_URL")?,
            None,
        ),
        None => {
            let dir =
                crate::cluster::data_dir(config.data_dir.as_deref(), &std::env::current_dir()?);
            let cluster = tokio::task::spawn_blocking(move || {
                LocalCluster::start(
                    &dir,
                    ClusterOptions {
                        durable: true,
                        ..Default::default()
                    },
                )
            })
            .await??;
            let admin = ConnInfo::parse(&cluster.url("postgres"), None)?;
            create_database(&admin, DB_NAME).await?;
            (admin.with_dbname(DB_NAME), Some(Arc::new(cluster)))
        }
    };
    migrate(&conn).await?;
    let pool = db::pool(&conn, config.pool_size, config.statement_timeout)?;
    Ok(Database {
        pool,
        conn,
        cluster,
    })
}

/// Applies migrations over a dedicated connection.
///
/// # Errors
/// The database is unreachable or a migration failed.
pub async fn migrate(db: &ConnInfo) -> anyhow::Result<usize> {
    let (mut client, conn) = db.connect().await.with_context(|| {
        format!(
            "connecting to PostgreSQL (sslmode={})",
            db.tls.mode().as_str()
        )
    })?;
    let task = tokio::spawn(conn);
    let n = db::migrate::migrate(&mut client).await?;
    drop(client);
    let _ = task.await;
    Ok(n)
}

/// Creates database `name` through the maintenance database `admin`
/// unless it exists.
///
/// # Errors
/// The server is unreachable or refuses.
pub async fn create_database(admin: &ConnInfo, name: &str) -> anyhow::Result<()> {
    let (client, conn) = admin
        .connect()
        .await
        .context("connecting to PostgreSQL's maintenance database")?;
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
