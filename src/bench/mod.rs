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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::api::{AppState, Limits};
use crate::cluster::{ClusterOptions, LocalCluster, ServerTls};
use crate::config::{BenchCommand, Config};
use crate::db::ConnInfo;
use crate::db::tls::{SslMode, Tls};
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
    // The private cluster serves TLS too when a benchmark compares it.
    let tls = matches!(&cmd, BenchCommand::Stream(o) if o.tls);
    let env = BenchEnv::start(&config, separate, tls).await?;
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
    /// The fresh database, as configured (plain on the private cluster).
    pub conn: ConnInfo,
    /// A pool on the fresh database, for setup and measurement.
    pub pool: crate::db::Pool,
    admin: ConnInfo,
    db_name: String,
    cluster: Option<Arc<LocalCluster>>,
    server: Server,
}

impl BenchEnv {
    /// `tls`: the private cluster (if used) also serves TLS, with a
    /// throwaway self-signed certificate.
    async fn start(config: &Config, separate: bool, tls: bool) -> anyhow::Result<Self> {
        let (admin, cluster) = match &config.database_url {
            Some(u) => (
                ConnInfo::parse(u.expose(), config.database_ca.as_deref())?,
                None,
            ),
            None => {
                let dir =
                    crate::cluster::data_dir(config.data_dir.as_deref(), &std::env::current_dir()?);
                let c = tokio::task::spawn_blocking(move || {
                    let tls = if tls { Some(self_signed(&dir)?) } else { None };
                    LocalCluster::start(
                        &dir,
                        ClusterOptions {
                            durable: false,
                            tls,
                        },
                    )
                })
                .await??;
                (
                    ConnInfo::parse(&c.url("postgres"), None)?,
                    Some(Arc::new(c)),
                )
            }
        };
        let db_name = format!("segd_bench_{}", std::process::id());
        startup::create_database(&admin, &db_name).await?;
        let conn = admin.with_dbname(&db_name);
        startup::migrate(&conn).await?;
        // Loading and indexing millions of rows outlasts any ordinary timeout.
        let pool = db::pool(&conn, config.pool_size, Duration::ZERO)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = if separate {
            drop(listener);
            Server::Child(serve_child(addr, &conn)?)
        } else {
            let limits = Limits {
                statistics: crate::service::stats::Thresholds {
                    min_rows: config.analyze_min_rows,
                    ..Default::default()
                },
                ..Limits::default()
            };
            let state = AppState::new(pool.clone(), conn.session(Duration::ZERO), limits);
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
            conn,
            pool,
            admin,
            db_name,
            cluster,
            server,
        };
        wait_ready(env.addr).await?;
        Ok(env)
    }

    /// Another `segd serve` process on the fresh database, reached through
    /// `conn` (the same database with other TLS settings, say).
    ///
    /// # Errors
    /// It did not start.
    pub async fn serve_also(&self, conn: &ConnInfo) -> anyhow::Result<Served> {
        let addr = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
        let child = serve_child(addr, conn)?;
        wait_ready(addr).await?;
        Ok(Served { addr, child })
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
        channel(self.addr).await
    }

    async fn stop(mut self, keep: bool) {
        match &mut self.server {
            Server::Task(tx, task) => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
                let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            }
            Server::Child(child) => stop_child(child).await,
        }
        self.pool.close();
        if keep {
            println!(
                "kept database {:?} in {}",
                self.db_name,
                pg_url(&self.admin)
            );
        } else if let Ok((client, conn)) = self.admin.connect().await {
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

/// Another server process (see [`BenchEnv::serve_also`]), stopped by
/// [`Served::stop`] or killed when dropped.
pub struct Served {
    /// Where it listens.
    pub addr: SocketAddr,
    child: tokio::process::Child,
}

impl Served {
    /// A channel to it, as [`BenchEnv::channel`].
    ///
    /// # Errors
    /// The server is unreachable.
    pub async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        channel(self.addr).await
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops it gracefully.
    pub async fn stop(mut self) {
        stop_child(&mut self.child).await;
    }
}

/// `segd serve` on `addr` over `conn`, as a child process.
fn serve_child(addr: SocketAddr, conn: &ConnInfo) -> anyhow::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.args([
        "serve",
        "--listen",
        &addr.to_string(),
        "--database-url",
        &pg_url(conn),
        "--log-format",
        "json",
    ]);
    // The URL says all about TLS; a CA in the environment would override it.
    cmd.env_remove("SEGD_DATABASE_CA");
    // The dev-auth warning every call logs is not the bench's subject.
    cmd.env("SEGD_LOG", "warn,segd::api::auth=error")
        .kill_on_drop(true)
        .spawn()
        .context("starting segd serve")
}

async fn stop_child(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SIGTERM: a graceful stop.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}

async fn wait_ready(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("segd did not start listening on {addr}")
}

/// A tonic channel to `addr` with large flow-control windows.
async fn channel(addr: SocketAddr) -> anyhow::Result<tonic::transport::Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .tcp_nodelay(true)
        .connect()
        .await
        .context("connecting to the benchmark server")
}

/// `conn` with TLS mode `mode` (keeping its CA, if any).
///
/// # Errors
/// The mode needs a CA that `conn` lacks.
pub fn with_ssl_mode(conn: &ConnInfo, mode: SslMode) -> anyhow::Result<ConnInfo> {
    let mut c = conn.clone();
    c.tls = Tls::new(mode, conn.tls.ca())?;
    c.config.ssl_mode(mode.to_tokio_postgres());
    Ok(c)
}

/// A throwaway self-signed certificate for `localhost` and 127.0.0.1, made
/// with the `openssl` command in `dir/bench-tls`, for the private cluster
/// (clients do not check it: sslmode=require).
fn self_signed(dir: &Path) -> anyhow::Result<ServerTls> {
    let out = dir.join("bench-tls");
    std::fs::create_dir_all(&out)?;
    let (cert, key): (PathBuf, PathBuf) = (out.join("server.crt"), out.join("server.key"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .context("running openssl to make a certificate for the cluster (is it installed?)")?;
    anyhow::ensure!(status.success(), "openssl could not make a certificate");
    Ok(ServerTls {
        cert,
        key,
        only: false,
    })
}

/// A `postgres://` URL for `conn`, TLS settings included.
fn pg_url(conn: &ConnInfo) -> String {
    let cfg = &conn.config;
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
    let mut params = Vec::new();
    if host.starts_with('/') {
        params.push(format!("host={host}"));
        params.push(format!("port={port}"));
    }
    if conn.tls.mode() != SslMode::Disable {
        params.push(format!("sslmode={}", conn.tls.mode().as_str()));
    }
    if let Some(ca) = conn.tls.ca() {
        params.push(format!(
            "sslrootcert={}",
            percent_encode(&ca.to_string_lossy())
        ));
    }
    let query = if params.is_empty() {
        String::new()
    } else {
        format!("?{}", params.join("&"))
    };
    if host.starts_with('/') {
        format!("postgres://{auth}@/{db}{query}")
    } else {
        format!("postgres://{auth}@{host}:{port}/{db}{query}")
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
