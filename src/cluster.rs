//! A private PostgreSQL cluster managed by segd, for when no `DATABASE_URL`
//! is given: `cargo run --release` and the test harness both use it.
//!
//! It uses the installed PostgreSQL server binaries (found with
//! `pg_config --bindir`, under `/usr/lib/postgresql/*/bin`, or on `PATH`),
//! initialises a data directory on first use, listens on 127.0.0.1 on a free
//! port (no Unix socket, so long paths never matter), and stops the server
//! when dropped. `initdb` refuses to run as root, so as root every command
//! runs through `runuser -u postgres`.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context, Result, anyhow, bail};

/// The superuser and database segd creates in its private cluster.
pub const DB_USER: &str = "segd";
/// The database segd uses in its private cluster.
pub const DB_NAME: &str = "segd";

/// How to run the private cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Keep fsync on. Tests turn it off for speed; the served cluster keeps it.
    pub durable: bool,
    /// Serve TLS (for this run only: nothing is written to the cluster's
    /// configuration).
    pub tls: Option<ServerTls>,
}

/// A certificate for the private cluster to serve TLS with.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// PEM certificate (chain).
    pub cert: PathBuf,
    /// Its PEM private key.
    pub key: PathBuf,
    /// Refuse TCP connections without TLS (an `hba_file` of its own), so
    /// a test can prove that every connection uses TLS.
    pub only: bool,
}

/// A running private PostgreSQL cluster. Dropping it stops the server.
#[derive(Debug)]
pub struct LocalCluster {
    bindir: PathBuf,
    pgdata: PathBuf,
    log: PathBuf,
    port: u16,
    /// `postgres` options for `pg_ctl -o` (port, TLS).
    server_opts: String,
    as_postgres: bool,
    stopped: AtomicBool,
}

impl LocalCluster {
    /// Initialises (on first use) and starts a cluster under `dir`.
    ///
    /// Blocking: it runs `initdb` and `pg_ctl`. Call it from
    /// `spawn_blocking` inside async code.
    ///
    /// # Errors
    /// No PostgreSQL binaries are installed (the message names the package),
    /// the directory is unusable, or the server fails to start (the message
    /// quotes its log).
    pub fn start(dir: &Path, opts: ClusterOptions) -> Result<Self> {
        let bindir = find_bindir()?;
        let as_postgres = unsafe { libc::geteuid() } == 0;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        if as_postgres {
            prepare_for_postgres_user(&dir)?;
        }
        let port = free_port()?;
        let mut server_opts = format!("-p {port}");
        if let Some(tls) = &opts.tls {
            server_opts.push_str(&tls_options(&dir, tls, as_postgres)?);
        }
        let cluster = Self {
            pgdata: dir.join("pgdata"),
            log: dir.join("postgres.log"),
            port,
            server_opts,
            bindir,
            as_postgres,
            stopped: AtomicBool::new(false),
        };
        if !cluster.pgdata.join("PG_VERSION").exists() {
            cluster.initdb(&opts)?;
        }
        cluster.check_version()?;
        // A segd killed without a clean shutdown may have left its server
        // running; stop it so this one owns the data directory.
        if cluster.pg_ctl(&["status"])?.status.success() {
            tracing::warn!(pgdata = %cluster.pgdata.display(), "stopping a PostgreSQL left running by an earlier segd");
            cluster.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "30"])?;
        }
        let log = cluster.log.to_string_lossy().into_owned();
        let out = cluster.pg_ctl(&[
            "start",
            "-w",
            "-t",
            "60",
            "-l",
            &log,
            "-o",
            &cluster.server_opts,
        ])?;
        if !out.status.success() {
            let tail = fs::read_to_string(&cluster.log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            cluster.stopped.store(true, Ordering::SeqCst);
            bail!(
                "PostgreSQL failed to start in {}: {}\n{}\nlog tail:\n{}",
                cluster.pgdata.display(),
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tracing::info!(port = cluster.port, pgdata = %cluster.pgdata.display(), "private PostgreSQL started");
        Ok(cluster)
    }

    /// Starts a hot standby of this cluster under `dir`: a base backup
    /// streamed with `pg_basebackup -R` (which writes `standby.signal` and
    /// the primary's connection), `extra_conf` appended to its
    /// `postgresql.conf`, then started on a port of its own. Tests use it
    /// to serve reads from a real replica.
    ///
    /// Blocking, as [`LocalCluster::start`].
    ///
    /// # Errors
    /// The base backup or the start failed.
    pub fn start_standby(&self, dir: &Path, extra_conf: &str) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        if self.as_postgres {
            prepare_for_postgres_user(&dir)?;
        }
        let pgdata = dir.join("pgdata");
        let (target, port) = (pgdata.to_string_lossy(), self.port.to_string());
        let out = self.run(
            &self.bindir.join("pg_basebackup"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                DB_USER,
                "-D",
                &target,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
        )?;
        if !out.status.success() {
            bail!(
                "pg_basebackup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let conf = pgdata.join("postgresql.conf");
        let mut text =
            fs::read_to_string(&conf).context("reading the standby's postgresql.conf")?;
        text.push_str("\n# Added for the standby.\n");
        text.push_str(extra_conf);
        text.push('\n');
        fs::write(&conf, text).context("writing the standby's postgresql.conf")?;
        Self::start(
            &dir,
            ClusterOptions {
                durable: false,
                tls: None,
            },
        )
    }

    /// A connection URL for `database` on this cluster.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{DB_USER}@127.0.0.1:{}/{database}", self.port)
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    /// Stops the server (fast shutdown: open sessions are disconnected).
    /// Stopping twice is harmless.
    ///
    /// # Errors
    /// `pg_ctl stop` failed.
    pub fn stop(&self) -> Result<()> {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let out = self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "8"])?;
        if !out.status.success() {
            self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "5"])?;
        }
        tracing::info!(pgdata = %self.pgdata.display(), "private PostgreSQL stopped");
        Ok(())
    }

    /// Stops the server and starts it again on the same port. Tests use it to
    /// simulate a database outage.
    ///
    /// # Errors
    /// `pg_ctl restart` failed.
    pub fn restart(&self) -> Result<()> {
        // With its log file, so the new server does not hold our output pipes open.
        let log = self.log.to_string_lossy().into_owned();
        let out = self.pg_ctl(&[
            "restart",
            "-m",
            "fast",
            "-w",
            "-t",
            "30",
            "-l",
            &log,
            "-o",
            &self.server_opts,
        ])?;
        if !out.status.success() {
            bail!(
                "pg_ctl restart failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn initdb(&self, opts: &ClusterOptions) -> Result<()> {
        let initdb = self.bindir.join("initdb");
        let pgdata = self.pgdata.to_string_lossy().into_owned();
        let base = ["-D", &pgdata, "-U", DB_USER, "--auth=trust", "-E", "UTF8"];
        let mut out = self.run(&initdb, &[&base[..], &["--locale=C.UTF-8"]].concat())?;
        if !out.status.success() {
            // Some systems lack the C.UTF-8 locale.
            let _ = fs::remove_dir_all(&self.pgdata);
            out = self.run(&initdb, &[&base[..], &["--no-locale"]].concat())?;
        }
        if !out.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut conf = String::from(
            "\n# Added by segd.\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n\
             max_connections = 200\nshared_buffers = '256MB'\nwork_mem = '32MB'\n\
             maintenance_work_mem = '256MB'\nmax_wal_size = '2GB'\n",
        );
        if !opts.durable {
            conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        let path = self.pgdata.join("postgresql.conf");
        let mut existing = fs::read_to_string(&path).context("reading postgresql.conf")?;
        existing.push_str(&conf);
        fs::write(&path, existing).context("writing postgresql.conf")?;
        Ok(())
    }

    fn check_version(&self) -> Result<()> {
        let data =
            fs::read_to_string(self.pgdata.join("PG_VERSION")).context("reading PG_VERSION")?;
        let out = Command::new(self.bindir.join("postgres"))
            .arg("--version")
            .output()?;
        let have = String::from_utf8_lossy(&out.stdout);
        let major = have
            .split_whitespace()
            .find_map(|w| {
                w.split('.')
                    .next()
                    .filter(|m| m.chars().all(|c| c.is_ascii_digit()) && !m.is_empty())
            })
            .unwrap_or("");
        if major != data.trim() {
            bail!(
                "{} holds a PostgreSQL {} cluster but the installed server is {}; \
                 remove the directory or point --data-dir elsewhere",
                self.pgdata.display(),
                data.trim(),
                have.trim()
            );
        }
        Ok(())
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<Output> {
        let pgdata = self.pgdata.to_string_lossy().into_owned();
        let mut all = vec!["-D", pgdata.as_str()];
        all.extend_from_slice(args);
        self.run(&self.bindir.join("pg_ctl"), &all)
    }

    fn run(&self, program: &Path, args: &[&str]) -> Result<Output> {
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        cmd.args(args)
            .env("LC_ALL", "C.UTF-8")
            .output()
            .with_context(|| format!("running {}", program.display()))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!(error = %e, "stopping private PostgreSQL");
        }
    }
}

/// The default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = ".segd";

/// Where the private cluster lives: `explicit` if given (an unusable one is
/// an error later, naming it), else `.segd` in `here` (the working
/// directory). Running as root, PostgreSQL
/// runs as `postgres`, which cannot reach a checkout under a private home
/// (`/root` is 0700); then the cluster lives in a directory of its own for
/// this checkout under `/var/tmp`, and the log says where.
///
pub fn data_dir(explicit: Option<&Path>, here: &Path) -> PathBuf {
    if let Some(dir) = explicit {
        return dir.to_path_buf();
    }
    let default = here.join(DEFAULT_DATA_DIR);
    if unsafe { libc::geteuid() } != 0 || postgres_can_reach(here) {
        return default;
    }
    // FNV-1a of the checkout's path: the same checkout finds its cluster
    // again, another checkout gets its own.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in default.to_string_lossy().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let fallback = PathBuf::from(format!("/var/tmp/segd-{h:016x}"));
    tracing::warn!(
        default = %default.display(),
        using = %fallback.display(),
        "running as root, the postgres user cannot reach the default data directory (a parent directory is private); using a directory for this checkout instead"
    );
    fallback
}

/// Whether the `postgres` user can traverse to `dir`.
fn postgres_can_reach(dir: &Path) -> bool {
    Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

/// Finds the directory holding `initdb`, `pg_ctl` and `postgres`.
///
/// # Errors
/// None is installed; the message says which package to install.
pub fn find_bindir() -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    versioned.sort_by_key(|v| std::cmp::Reverse(v.0));
    candidates.extend(versioned.into_iter().map(|(_, p)| p));
    candidates.push(PathBuf::from("/usr/local/pgsql/bin"));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates
        .into_iter()
        .find(|d| {
            ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|b| d.join(b).is_file())
        })
        .map(|d| d.canonicalize().unwrap_or(d))
        .ok_or_else(|| {
            anyhow!(
                "no PostgreSQL server binaries found (looked for initdb, pg_ctl and postgres via \
                 `pg_config --bindir`, in /usr/lib/postgresql/*/bin and on PATH).\n\
                 Install PostgreSQL (Debian/Ubuntu: `apt-get install postgresql`; Fedora: \
                 `dnf install postgresql-server`; macOS: `brew install postgresql`), \
                 or set DATABASE_URL to use an existing server."
            )
        })
}

/// As root, the server runs as `postgres`: it must own `dir` and be able to
/// reach it through every parent directory.
fn prepare_for_postgres_user(dir: &Path) -> Result<()> {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()
        .context("running chown (is there a `postgres` user?)")?;
    if !status.success() {
        bail!(
            "could not give {} to the postgres user; does the user exist?",
            dir.display()
        );
    }
    let ok = Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-w"])
        .arg(dir)
        .status()
        .context("running runuser")?;
    if !ok.success() {
        bail!(
            "running as root, PostgreSQL runs as the `postgres` user, which cannot reach {} \
             (a parent directory is not traversable); choose a --data-dir under /var/tmp or /tmp, \
             or leave --data-dir unset to let segd pick one",
            dir.display()
        );
    }
    Ok(())
}

/// Copies the certificate and key into `dir/tls` (owned by the server's
/// user, the key private, as PostgreSQL insists) and returns the `postgres`
/// options that serve TLS with them.
fn tls_options(dir: &Path, tls: &ServerTls, as_postgres: bool) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let tls_dir = dir.join("tls");
    fs::create_dir_all(&tls_dir).with_context(|| format!("creating {}", tls_dir.display()))?;
    let (cert, key) = (tls_dir.join("server.crt"), tls_dir.join("server.key"));
    fs::copy(&tls.cert, &cert).with_context(|| format!("copying {}", tls.cert.display()))?;
    fs::copy(&tls.key, &key).with_context(|| format!("copying {}", tls.key.display()))?;
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
    let mut opts = format!(
        " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
        cert.display(),
        key.display()
    );
    if tls.only {
        let hba = tls_dir.join("pg_hba.conf");
        fs::write(
            &hba,
            "# Written by segd: TLS only.\nhostssl all all all trust\nhostnossl all all all reject\n",
        )?;
        opts.push_str(&format!(" -c hba_file={}", hba.display()));
    }
    if as_postgres {
        prepare_for_postgres_user(&tls_dir)?;
    }
    Ok(opts)
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}
