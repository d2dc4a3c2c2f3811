//! Getting a migrated database: the configured `DATABASE_URL`, or segd's
//! own private cluster when there is none.

use std::sync::Arc;

use anyhow::Context;

use crate::cluster::{ClusterOptions, DB_NAME, LocalCluster};
use crate::config::{Config, Pooler};
use crate::db::{self, ConnInfo, Pool};

/// A migrated database, and the private cluster behind it if segd started one.
pub struct Database {
    /// The pool calls run on.
    pub pool: Pool,
    /// The pool of work that needs a session (see `AppState::owner`): the
    /// same as `pool` unless behind a transaction pooler.
    pub owner: Pool,
    /// Where calls reach it and how, TLS included (holds secrets; do not
    /// log).
    pub conn: ConnInfo,
    /// Where session work reaches it.
    pub owner_conn: ConnInfo,
    /// What `conn` goes through.
    pub pooler: Pooler,
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
    let parse = |url: &crate::config::Secret, what: &'static str| {
        ConnInfo::parse(url.expose(), config.database_ca.as_deref()).context(what)
    };
    let (conn, cluster) = match &config.database_url {
        Some(url) => (parse(url, "DATABASE_URL")?, None),
        None if config.database_pooler == Pooler::Transaction => anyhow::bail!(
            "--database-pooler transaction needs DATABASE_URL, the pooler's address (segd's private cluster has no pooler)"
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
    let (size, timeout) = (config.pool_size, config.statement_timeout);
    let (pool, owner, owner_conn) = match config.database_pooler {
        Pooler::None => {
            if config.database_url.is_some() {
                check_session(&conn, timeout).await?;
            }
            let pool = db::pool(&conn, size, timeout)?;
            (pool.clone(), pool, conn.clone())
        }
        Pooler::Transaction => {
            let session = config.session_database_url.as_ref().context(
                "--database-pooler transaction needs --session-database-url (SEGD_SESSION_DATABASE_URL)",
            )?;
            let owner_conn = parse(session, "--session-database-url")?;
            check_session(&owner_conn, timeout)
                .await
                .context("--session-database-url must reach PostgreSQL directly, or through a pooler in session mode")?;
            check_transactions(&conn).await?;
            let pool = db::transaction_pool(&conn, size, timeout)?;
            // Session work is a handful of connections: maintenance,
            // statistics, administration.
            let owner = db::pool(&owner_conn, size.clamp(2, 4), timeout)?;
            (pool, owner, owner_conn)
        }
    };
    migrate(&owner_conn).await?;
    Ok(Database {
        pool,
        owner,
        conn,
        owner_conn,
        pooler: config.database_pooler,
        cluster,
    })
}

impl Database {
    /// The services' state over this database: calls on `pool`, member
    /// streams in sessions like its, session work on `owner`.
    pub fn state(&self, limits: crate::api::Limits) -> crate::api::AppState {
        let timeout = self.pool.statement_timeout;
        let stream_db = match self.pooler {
            Pooler::None => self.conn.session(timeout),
            Pooler::Transaction => self.conn.pooled(),
        };
        crate::api::AppState::split(
            self.pool.clone(),
            self.owner.clone(),
            stream_db,
            self.owner_conn.session(timeout),
            limits,
        )
    }
}

/// Checks that a connection to `db` is a session of its own that keeps
/// segd's settings, as a pool without a transaction pooler needs. A
/// transaction pooler refuses the settings (PgBouncer: "unsupported startup
/// parameter: options") or, told to ignore them, drops them.
///
/// # Errors
/// Says which, and what to configure instead.
pub async fn check_session(
    db: &ConnInfo,
    statement_timeout: std::time::Duration,
) -> anyhow::Result<()> {
    const HINT: &str = "is a connection pooler in front of PostgreSQL? In transaction mode, start segd with --database-pooler transaction and --session-database-url";
    let (client, conn) = match db.session(statement_timeout).connect().await {
        Ok(c) => c,
        Err(e) if server_said(&e).contains("unsupported startup parameter") => {
            anyhow::bail!(
                "the server refused segd's session settings ({}): {HINT}",
                server_said(&e)
            )
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "connecting to PostgreSQL (sslmode={})",
                db.tls.mode().as_str()
            )));
        }
    };
    let task = tokio::spawn(conn);
    // A simple query: it is one statement even through a transaction pooler.
    let rows = client
        .simple_query("SELECT setting FROM pg_settings WHERE name = 'statement_timeout'")
        .await?;
    let got = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_default();
    drop(client);
    let _ = task.await;
    let want = statement_timeout.as_millis().to_string();
    anyhow::ensure!(
        got == want,
        "the server ignored segd's session settings (statement_timeout is {got} ms, segd asked for {want}): {HINT}"
    );
    Ok(())
}

/// What the server (or pooler) said, for an error it sent.
fn server_said(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_string())
}

/// Checks that the transaction pooler at `db` lets a transaction run
/// several statements: PgBouncer in statement mode does not, and segd runs
/// every call as one transaction (its scope, then its statements).
///
/// # Errors
/// Refuses statement pooling, or the pooler is unreachable.
pub async fn check_transactions(db: &ConnInfo) -> anyhow::Result<()> {
    let (client, conn) = db
        .pooled()
        .connect()
        .await
        .context("connecting to PostgreSQL through the transaction pooler (DATABASE_URL)")?;
    let task = tokio::spawn(conn);
    let probe = async {
        client.batch_execute("BEGIN").await?;
        client.simple_query("SELECT 1").await?;
        client.batch_execute("COMMIT").await
    }
    .await;
    drop(client);
    let _ = task.await;
    match probe {
        Ok(()) => Ok(()),
        Err(e) if server_said(&e).contains("statement pooling") => anyhow::bail!(
            "DATABASE_URL goes through a pooler in statement mode ({e}); segd runs each call as a transaction of several statements, which statement pooling forbids: use pool_mode = transaction (or session)"
        ),
        Err(e) => {
            Err(anyhow::Error::new(e).context("a transaction through the pooler (DATABASE_URL)"))
        }
    }
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
