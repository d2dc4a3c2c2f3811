//! Command-line and environment configuration (clap). `segd --help` is the
//! reference; every flag also reads an environment variable.

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// segd: CRM contact segmentation served over gRPC, on PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "segd", version, about, long_about = None)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings shared by every command.
    #[command(flatten)]
    pub config: Config,
}

/// segd's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve gRPC (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Run a benchmark and print its figures.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Bulk import through BatchUpsertContacts; prints contacts per second.
    Import(ImportBench),
    /// StreamMembers against `COPY (same SQL) TO STDOUT`, alternating.
    Stream(StreamBench),
    /// Compiled segment SQL against hand-written SQL, by EXPLAIN ANALYZE.
    Sql(SqlBench),
    /// Imports and segment queries on a workspace newer than the planner's
    /// statistics, against the same on one they describe.
    Fresh(FreshBench),
    /// Live segments under a sustained write load: write-to-feed latency,
    /// maintenance cost, lag, catch-up and rebuild times.
    Live(LiveBench),
    /// A mix of imports, events, counts, streams and checks from many
    /// clients at a target rate, then at twice it: latency per RPC, codes,
    /// deadlines, memory.
    Load(LoadBench),
}

/// Options of `segd bench load`.
#[derive(Debug, Clone, Args)]
pub struct LoadBench {
    /// Contacts to generate (about 3 events each).
    #[arg(long, default_value_t = 200_000)]
    pub contacts: usize,
    /// Calls per second in the sustained phase (the overload phase sends
    /// twice as many).
    #[arg(long, default_value_t = 100)]
    pub rate: usize,
    /// Concurrent clients: calls in flight at most.
    #[arg(long, default_value_t = 256)]
    pub clients: usize,
    /// How long each phase lasts.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
}

/// Options of `segd bench live`.
#[derive(Debug, Clone, Args)]
pub struct LiveBench {
    /// Contacts to generate (about 3 events each).
    #[arg(long, default_value_t = 1_000_000)]
    pub contacts: usize,
    /// Events recorded per second during the load.
    #[arg(long, default_value_t = 5_000)]
    pub rate: usize,
    /// How long the load lasts.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Keep the generated database afterwards, to study plans by hand.
    #[arg(long)]
    pub keep: bool,
    /// Drop the workspace's lifecycle rules (by default they are live
    /// during the load, acting on contacts that enter them).
    #[arg(long)]
    pub no_rules: bool,
}

/// Options of `segd bench import`.
#[derive(Debug, Clone, Args)]
pub struct ImportBench {
    /// How many contacts to import.
    #[arg(long, default_value_t = 100_000)]
    pub contacts: usize,
    /// Contacts per batch (request message).
    #[arg(long, default_value_t = 2_000)]
    pub batch_size: usize,
}

/// Options of `segd bench stream`.
#[derive(Debug, Clone, Args)]
pub struct StreamBench {
    /// How many contacts to generate.
    #[arg(long, default_value_t = 1_000_000)]
    pub contacts: usize,
    /// How many measured rounds of each method.
    #[arg(long, default_value_t = 9)]
    pub rounds: usize,
    /// Also measure both over TLS to PostgreSQL (sslmode=require; the
    /// private cluster serves it with a throwaway certificate), against
    /// plain, in the same rounds.
    #[arg(long)]
    pub tls: bool,
}

/// Options of `segd bench sql`.
#[derive(Debug, Clone, Args)]
pub struct SqlBench {
    /// How many contacts to generate (about 5 events each).
    #[arg(long, default_value_t = 1_000_000)]
    pub contacts: usize,
    /// How many timed runs of each query.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Print both queries of each example.
    #[arg(long)]
    pub verbose: bool,
    /// Keep the generated database afterwards, to study plans by hand.
    #[arg(long)]
    pub keep: bool,
}

/// Options of `segd bench fresh`.
#[derive(Debug, Clone, Args)]
pub struct FreshBench {
    /// Contacts of the workspace the statistics describe (about 5 events each).
    #[arg(long, default_value_t = 300_000)]
    pub analyzed_contacts: usize,
    /// Contacts imported into each workspace (about 3 events each).
    #[arg(long, default_value_t = 20_000)]
    pub contacts: usize,
    /// Timed runs of each count (the median is shown).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Give up on a count after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// What stands between segd and PostgreSQL at DATABASE_URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Pooler {
    /// Nothing, or a pooler in session mode: each connection is one
    /// PostgreSQL session.
    #[default]
    None,
    /// A pooler in transaction mode (PgBouncer's `pool_mode = transaction`):
    /// sessions are shared between clients between transactions.
    Transaction,
}

/// Settings shared by every command.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(
        long,
        env = "SEGD_LISTEN",
        default_value = "0.0.0.0:50051",
        global = true
    )]
    pub listen: SocketAddr,

    /// PostgreSQL connection URL. Without it, segd runs its own private
    /// PostgreSQL cluster in --data-dir, using the installed binaries.
    /// TLS follows libpq: `sslmode` (disable, the default; prefer; require;
    /// verify-ca; verify-full) and `sslrootcert` (a PEM CA file) in the URL.
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<Secret>,

    /// What DATABASE_URL reaches PostgreSQL through. With `transaction`
    /// (PgBouncer's `pool_mode = transaction`), segd sends no session
    /// settings, runs every call's statements in transactions that set
    /// their own, and keeps work that needs a session of its own on
    /// --session-database-url. Statement pooling is refused at start-up.
    #[arg(
        long,
        env = "SEGD_DATABASE_POOLER",
        value_enum,
        default_value = "none",
        global = true,
        requires_if("transaction", "session_database_url")
    )]
    pub database_pooler: Pooler,

    /// PostgreSQL reached directly (or through a pooler in session mode),
    /// for what needs a session: migrations, the change feed's LISTEN,
    /// live-segment maintenance, statistics and workspace administration.
    /// Needed with --database-pooler transaction; unused otherwise.
    #[arg(long, env = "SEGD_SESSION_DATABASE_URL", global = true)]
    pub session_database_url: Option<Secret>,

    /// A PostgreSQL hot standby of the primary to serve reads from (member
    /// streams, counts, previews, breakdowns, overlaps); repeat the flag,
    /// or separate URLs with commas in the variable, for several. Writes,
    /// membership checks, live-segment maintenance and the change feed stay
    /// on the primary.
    #[arg(
        long = "read-database-url",
        env = "SEGD_READ_DATABASE_URLS",
        value_delimiter = ',',
        global = true
    )]
    pub read_database_urls: Vec<Secret>,

    /// How stale a replica may be for a read that does not say
    /// (`max_staleness` in the request); a read no replica is fresh enough
    /// for goes to the primary.
    #[arg(long, env = "SEGD_REPLICA_MAX_STALENESS", default_value = "10s", value_parser = parse_duration, global = true)]
    pub replica_max_staleness: Duration,

    /// How often each replica's replay position is checked against the
    /// primary's (its staleness is known to about this).
    #[arg(long, env = "SEGD_REPLICA_CHECK_INTERVAL", default_value = "1s", value_parser = parse_duration, global = true)]
    pub replica_check_interval: Duration,

    /// PEM file of the CA that signed PostgreSQL's certificate (overrides
    /// `sslrootcert` in DATABASE_URL). Needed by sslmode verify-ca and
    /// verify-full; with prefer and require it makes segd check the chain.
    #[arg(long, env = "SEGD_DATABASE_CA", global = true)]
    pub database_ca: Option<PathBuf>,

    /// Where the private PostgreSQL cluster lives when DATABASE_URL is unset
    /// [default: ./.segd, or, when running as root where the `postgres` user
    /// cannot reach ./.segd, a directory for this checkout under /var/tmp].
    #[arg(long, env = "SEGD_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// Maximum PostgreSQL connections in the pool.
    #[arg(long, env = "SEGD_POOL_SIZE", default_value_t = 16, global = true)]
    pub pool_size: usize,

    /// Statement timeout for ordinary calls (for example 30s, 500ms, 2m).
    #[arg(long, env = "SEGD_STATEMENT_TIMEOUT", default_value = "30s", value_parser = parse_duration, global = true)]
    pub statement_timeout: Duration,

    /// Statement timeout for counts, previews, breakdowns and overlaps.
    #[arg(long, env = "SEGD_QUERY_TIMEOUT", default_value = "60s", value_parser = parse_duration, global = true)]
    pub query_timeout: Duration,

    /// Statement timeout for membership streams (0 means none). A stream
    /// that runs past it ends with DEADLINE_EXCEEDED and a resume token.
    #[arg(long, env = "SEGD_STREAM_TIMEOUT", default_value = "10m", value_parser = parse_duration, global = true)]
    pub stream_timeout: Duration,

    /// How long a member stream waits for its reader to take the next batch.
    /// A reader that stops for longer loses the stream (ABORTED, with a
    /// resume token), so it cannot hold a PostgreSQL session and snapshot
    /// forever (0 means wait forever).
    #[arg(long, env = "SEGD_STREAM_STALL_TIMEOUT", default_value = "60s", value_parser = parse_duration, global = true)]
    pub stream_stall_timeout: Duration,

    /// How long a member stream may take to open its database session.
    #[arg(long, env = "SEGD_STREAM_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration, global = true)]
    pub stream_connect_timeout: Duration,

    /// Inline definitions whose PostgreSQL cost estimate exceeds this are
    /// refused unless the request sets `allow_expensive`.
    #[arg(
        long,
        env = "SEGD_MAX_QUERY_COST",
        default_value_t = 50_000_000.0,
        global = true
    )]
    pub max_query_cost: f64,

    /// Member streams running at once; each holds its own PostgreSQL session.
    #[arg(long, env = "SEGD_MAX_STREAMS", default_value_t = 32, global = true)]
    pub max_streams: usize,

    /// Queries (counts, previews, checks, breakdowns, metrics, reads)
    /// running at once; more wait up to --shed-wait, then get
    /// RESOURCE_EXHAUSTED with a RetryInfo.
    #[arg(long, env = "SEGD_MAX_QUERIES", default_value_t = 16, global = true)]
    pub max_queries: usize,

    /// Writes running at once (see --max-queries).
    #[arg(long, env = "SEGD_MAX_WRITES", default_value_t = 16, global = true)]
    pub max_writes: usize,

    /// How long a query or write waits for a slot (at most half its
    /// deadline).
    #[arg(long, env = "SEGD_SHED_WAIT", default_value = "250ms", value_parser = parse_duration, global = true)]
    pub shed_wait: Duration,

    /// segd analyzes a table it writes to once a workspace has gained this
    /// many rows in it and at least half as many as the planner believes the
    /// workspace has (0 turns this off and leaves statistics to autovacuum).
    #[arg(
        long,
        env = "SEGD_ANALYZE_MIN_ROWS",
        default_value_t = 1_000,
        global = true
    )]
    pub analyze_min_rows: u64,

    /// How often live segments that time alone moves (windows, relative
    /// dates, anniversaries) are evaluated again: no member is later.
    #[arg(long, env = "SEGD_LIVE_TICK", default_value = "60s", value_parser = parse_duration, global = true)]
    pub live_tick: Duration,

    /// Changes older than this leave the membership change feed.
    #[arg(long, env = "SEGD_FEED_RETENTION", default_value = "168h", value_parser = parse_duration, global = true)]
    pub feed_retention: Duration,

    /// At most this many changes per workspace stay in the change feed.
    #[arg(
        long,
        env = "SEGD_FEED_RETENTION_COUNT",
        default_value_t = 10_000_000,
        global = true
    )]
    pub feed_retention_count: i64,

    /// Most segment actions in a chain (an action's write making a contact
    /// enter a segment whose action writes again, ...); a longer cascade
    /// stops there and says so in the segment's last error.
    #[arg(
        long,
        env = "SEGD_MAX_ACTION_DEPTH",
        default_value_t = 8,
        global = true
    )]
    pub max_action_depth: i32,

    /// Largest gRPC request message accepted, in bytes.
    #[arg(long, env = "SEGD_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024, global = true)]
    pub max_message_bytes: usize,

    /// After SIGTERM, how long segd keeps serving while health reports
    /// NOT_SERVING, so load balancers and Kubernetes stop sending it calls
    /// before it stops accepting them (a few seconds behind a balancer).
    #[arg(long, env = "SEGD_SHUTDOWN_DRAIN", default_value = "0s", value_parser = parse_duration, global = true)]
    pub shutdown_drain: Duration,

    /// How long shutdown waits for in-flight calls before giving up.
    #[arg(long, env = "SEGD_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration, global = true)]
    pub shutdown_grace: Duration,

    /// Serve gRPC over TLS with this PEM certificate chain (with
    /// --tls-key).
    #[arg(long, env = "SEGD_TLS_CERT", global = true, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, env = "SEGD_TLS_KEY", global = true, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates signed by this PEM CA (with --tls-cert).
    #[arg(long, env = "SEGD_TLS_CLIENT_CA", global = true, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Serve Prometheus metrics at `/metrics` on this address (off when
    /// unset).
    #[arg(long, env = "SEGD_METRICS_LISTEN", global = true)]
    pub metrics_listen: Option<SocketAddr>,

    /// Accept calls without a token: the `x-segd-workspace` header names
    /// the workspace (created on first use) and every caller may do
    /// anything. For a laptop only. It is what segd does when no JWT key is
    /// configured, with a warning at start and on each call.
    #[arg(long, env = "SEGD_INSECURE_DEV_AUTH", global = true)]
    pub insecure_dev_auth: bool,

    /// Shared secret for HS256 bearer tokens.
    #[arg(long, env = "SEGD_JWT_SECRET", global = true)]
    pub jwt_secret: Option<Secret>,

    /// JWKS file with the RS256 or ES256 public keys of bearer tokens,
    /// read again when it changes.
    #[arg(long, env = "SEGD_JWKS_FILE", global = true)]
    pub jwks_file: Option<PathBuf>,

    /// URL (https://, or http:// for an in-cluster issuer) of a JWKS with
    /// the RS256 or ES256 public keys of bearer tokens: fetched at start
    /// (segd does not start without it), then every --jwks-refresh and
    /// when a token names an unknown key (at most every 10 s).
    #[arg(
        long,
        env = "SEGD_JWKS_URL",
        global = true,
        conflicts_with = "jwks_file"
    )]
    pub jwks_url: Option<String>,

    /// How often --jwks-url is fetched again (sooner when its answer's
    /// `Cache-Control: max-age` says so, but not below 10 s).
    #[arg(long, env = "SEGD_JWKS_REFRESH", default_value = "5m", value_parser = parse_duration, global = true)]
    pub jwks_refresh: Duration,

    /// More CA certificates (PEM) that --jwks-url's https server may be
    /// signed by, besides the public (webpki) roots.
    #[arg(long, env = "SEGD_JWKS_CA", global = true, requires = "jwks_url")]
    pub jwks_ca: Option<PathBuf>,

    /// Required `iss` claim of bearer tokens.
    #[arg(long, env = "SEGD_JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim of bearer tokens.
    #[arg(long, env = "SEGD_JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,

    /// Export traces over OTLP/gRPC to this receiver, such as an
    /// OpenTelemetry Collector (`http://localhost:4317`): each call is a
    /// server span, a child of the caller's W3C `traceparent` (off when
    /// unset).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,

    /// The service name traces carry.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "segd", global = true)]
    pub otel_service_name: String,

    /// Log format.
    #[arg(
        long,
        env = "SEGD_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Cli::parse_from(["segd"]).config
    }
}

/// A string that never prints (connection URLs carry passwords).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself; do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

/// Parses `500ms`, `30s`, `2m`, `1h` or a bare number of seconds.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 500ms, 30s, 2m or 1h"))?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("`{s}` has an unknown unit; use ms, s, m or h")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("`{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("7x").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let s: Secret = "postgres://u:pw@h/db".parse().unwrap();
        assert!(!format!("{s:?}").contains("pw"));
    }

    #[test]
    fn a_transaction_pooler_needs_a_session_url() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["segd"], args].concat());
        let err = parse(&["--database-pooler", "transaction"]).unwrap_err();
        assert!(err.to_string().contains("--session-database-url"), "{err}");
        let c = parse(&[
            "--database-pooler",
            "transaction",
            "--session-database-url",
            "postgres://h/db",
        ])
        .unwrap()
        .config;
        assert_eq!(c.database_pooler, Pooler::Transaction);
        assert!(parse(&["--database-pooler", "statement"]).is_err());
    }

    #[test]
    fn one_jwks_source() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["segd"], args].concat());
        let url = "https://issuer.example/jwks.json";
        assert!(parse(&["--jwks-url", url, "--jwks-file", "k.json"]).is_err());
        assert!(parse(&["--jwks-ca", "ca.pem"]).is_err());
        let c = parse(&["--jwks-url", url, "--jwks-ca", "ca.pem"])
            .unwrap()
            .config;
        assert_eq!(c.jwks_refresh, Duration::from_secs(300));
    }

    #[test]
    fn defaults_serve_on_50051() {
        let c = Config::default();
        assert_eq!(c.listen.port(), 50051);
        assert!(c.database_url.is_none() || std::env::var("DATABASE_URL").is_ok());
    }
}
