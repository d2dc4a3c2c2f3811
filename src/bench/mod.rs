//! Benchmark commands. Each prints human-readable figures and a final
//! machine-readable `key=value` line. They use `DATABASE_URL` or the private
//! cluster, always in a fresh database that is dropped afterwards.

pub mod data;
pub mod fresh;
pub mod import;
pub mod live;
pub mod load;
pub mod sql;
pub mod stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_postgres::NoTls;

use crate::api::{AppState, Limits};
use crate::cluster::{ClusterOptions, LocalCluster};
use crate::config::{BenchCommand, Config};
use crate::{db, server, startup};

/// Runs one benchmark.
///
/// # Errors
/// Setup failed (no PostgreSQL) or a call failed.
pub async fn run(cmd: BenchCommand, config: Config) -> anyhow::Result<()> {
    let separate = matches!(
        cmd,
        BenchCommand::Stream(_) | BenchCommand::Live(_) | BenchCommand::Load(_)
    );
    let keep = match &cmd {
        BenchCommand::Sql(o) => o.keep,
        BenchCommand::Live(o) => o.keep,
        _ => false,
    };
    let env = BenchEnv::start(&config, separate).await?;
    let result = match cmd {
        BenchCommand::Import(o) => import::run(&env, &o).await,
        BenchCommand::Stream(o) => stream::run(&env, &o).await,
        BenchCommand::Sql(o) => sql::run(&env, &o).await,
        BenchCommand::Fresh(o) => fresh::run(&env, &o).await,
        BenchCommand::Live(o) => live::run(&env, &o).await,
        BenchCommand::Load(o) => load::run(&env, &o).await,
    };
    env.stop(keep).await;
    result
}

/// How the benchmarked server runs.
enum Server {
    /// In this process.
    Task(
        Option<tokio::sync::oneshot::Sender<()>>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ),
    /// As a separate `segd serve` process, so its memory can be measured.
    Child(tokio::process::Child),
}

/// A fresh, migrated database with segd serving it on a local port.
pub struct BenchEnv {
    /// Where segd listens.
    pub addr: SocketAddr,
    /// URL of the fresh database.
    pub url: String,
    /// A pool on the fresh database, for setup and measurement.
    pub pool: deadpool_postgres::Pool,
    admin_url: String,
    db_name: String,
    cluster: Option<Arc<LocalCluster>>,
    server: Server,
}

impl BenchEnv {
    async fn start(config: &Config, separate: bool) -> anyhow::Result<Self> {
        let (admin_url, cluster) = match &config.database_url {
            Some(u) => (u.expose().to_string(), None),
            None => {
                let dir =
                    crate::cluster::data_dir(config.data_dir.as_deref(), &std::env::current_dir()?);
                let c = tokio::task::spawn_blocking(move || {
                    LocalCluster::start(&dir, ClusterOptions { durable: false })
                })
                .await??;
                (c.url("postgres"), Some(Arc::new(c)))
            }
        };
        let db_name = format!("segd_bench_{}", std::process::id());
        startup::create_database(&admin_url, &db_name).await?;
        let mut cfg: tokio_postgres::Config = admin_url.parse()?;
        cfg.dbname(&db_name);
        let url = pg_url(&cfg);
        startup::migrate(&url).await?;
        // Loading and indexing millions of rows outlasts any ordinary timeout.
        let pool = db::pool(&url, config.pool_size, Duration::ZERO)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = if separate {
            drop(listener);
            let child = tokio::process::Command::new(std::env::current_exe()?)
                .args([
                    "serve",
                    "--listen",
                    &addr.to_string(),
                    "--database-url",
                    &url,
                    "--log-format",
                    "json",
                ])
                // The dev-auth warning every call logs is not the bench's
                // subject.
                .env("SEGD_LOG", "warn,segd::api::auth=error")
                .kill_on_drop(true)
                .spawn()
                .context("starting segd serve")?;
            Server::Child(child)
        } else {
            let limits = Limits {
                statistics: crate::service::stats::Thresholds {
                    min_rows: config.analyze_min_rows,
                    ..Default::default()
                },
                ..Limits::default()
            };
            let state = AppState::new(
                pool.clone(),
                db::session_config(&url, Duration::ZERO)?,
                limits,
            );
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(server::serve(
                listener,
                state,
                server::ServeOptions {
                    max_message_bytes: 64 << 20,
                    ..Default::default()
                },
                async {
                    let _ = rx.await;
                },
            ));
            Server::Task(Some(tx), task)
        };
        let env = Self {
            addr,
            url,
            pool,
            admin_url,
            db_name,
            cluster,
            server,
        };
        env.wait_ready().await?;
        Ok(env)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("segd did not start listening on {}", self.addr)
    }

    /// The server process id, when it runs separately.
    pub fn server_pid(&self) -> Option<u32> {
        match &self.server {
            Server::Child(c) => c.id(),
            Server::Task(..) => None,
        }
    }

    /// A tonic channel to the server with large flow-control windows.
    ///
    /// # Errors
    /// The server is unreachable.
    pub async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))?
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .tcp_nodelay(true)
            .connect()
            .await
            .context("connecting to the benchmark server")
    }

    async fn stop(mut self, keep: bool) {
        match &mut self.server {
            Server::Task(tx, task) => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
                let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            }
            Server::Child(child) => {
                if let Some(pid) = child.id() {
                    // SIGTERM: a graceful stop.
                    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                }
                let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
            }
        }
        self.pool.close();
        if keep {
            println!("kept database {:?} in {}", self.db_name, self.admin_url);
        } else if let Ok((client, conn)) = tokio_postgres::connect(&self.admin_url, NoTls).await {
            tokio::spawn(conn);
            let _ = client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.db_name
                ))
                .await;
        }
        if let Some(c) = self.cluster.take() {
            let _ = tokio::task::spawn_blocking(move || drop(c)).await;
        }
    }
}

/// A `postgres://` URL for a parsed config.
fn pg_url(cfg: &tokio_postgres::Config) -> String {
    let host = cfg
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(p) => p.to_string_lossy().into_owned(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let user = cfg.get_user().unwrap_or("postgres");
    let auth = match cfg.get_password() {
        Some(p) => format!("{user}:{}", String::from_utf8_lossy(p)),
        None => user.to_string(),
    };
    let db = cfg.get_dbname().unwrap_or("postgres");
    if host.starts_with('/') {
        format!("postgres://{auth}@/{db}?host={host}&port={port}")
    } else {
        format!("postgres://{auth}@{host}:{port}/{db}")
    }
}
