//! PostgreSQL over TLS (`sslmode`, `sslrootcert`, `--database-ca`), on a
//! cluster of its own that serves TLS with the fixture certificate (for
//! `localhost` and 127.0.0.1, signed by `pg-ca.pem`) and refuses TCP
//! connections without it: whatever works here went over TLS.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use segd::api::{AppState, Limits};
use segd::cluster::{ClusterOptions, LocalCluster, ServerTls};
use segd::config::{Config, Secret};
use segd::db::ConnInfo;
use segd::proto::{self as pb, query_service_client::QueryServiceClient};

use crate::helpers::{TestApp, conninfo, inline, req};

/// Contacts cover three countries, so this definition selects everyone.
const EVERYONE: &str = "country IN (\"US\", \"CA\", \"DE\")";

struct Pg {
    cluster: LocalCluster,
    tmp: PathBuf,
}

static PG: OnceLock<Pg> = OnceLock::new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);

extern "C" fn stop_pg() {
    if let Some(pg) = PG.get() {
        let _ = pg.cluster.stop();
        let _ = std::fs::remove_dir_all(&pg.tmp);
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The TLS-only cluster, started on first use.
fn pg() -> &'static Pg {
    PG.get_or_init(|| {
        std::thread::spawn(|| {
            let tmp = tempfile::Builder::new()
                .prefix("segd-pgtls-")
                .tempdir_in("/tmp")
                .expect("temp dir")
                .keep();
            let opts = ClusterOptions {
                durable: false,
                tls: Some(ServerTls {
                    cert: fixture("pg-server.pem"),
                    key: fixture("pg-server.key"),
                    only: true,
                }),
            };
            let cluster =
                LocalCluster::start(&tmp, opts).expect("starting a PostgreSQL that serves TLS");
            unsafe { libc::atexit(stop_pg) };
            Pg { cluster, tmp }
        })
        .join()
        .expect("TLS cluster setup panicked")
    })
}

/// A fresh database on the TLS cluster; its URL without parameters.
async fn fresh_db() -> String {
    let port = pg().cluster.port();
    let admin = conninfo(&format!(
        "postgres://segd@127.0.0.1:{port}/postgres?sslmode=require"
    ));
    let name = format!(
        "segd_pgtls_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    segd::startup::create_database(&admin, &name)
        .await
        .expect("create the test database");
    format!("postgres://segd@127.0.0.1:{port}/{name}")
}

/// segd's configuration for `url`, with `--database-ca` `ca`.
fn config(url: &str, ca: Option<&str>) -> Config {
    Config {
        database_url: Some(Secret::new(url)),
        database_ca: ca.map(fixture),
        ..Config::default()
    }
}

/// segd started as `segd serve` starts: migrations, pool, streams, feed.
struct App {
    addr: std::net::SocketAddr,
    state: AppState,
    /// The database, over TLS, for the test's own queries.
    db: ConnInfo,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.state.pool.close();
    }
}

async fn serve(config: &Config) -> anyhow::Result<App> {
    let db = segd::startup::database(config).await?;
    let limits = Limits {
        // A reader that stops holds the query back soon.
        stream_socket_buffer: 64 << 10,
        ..Limits::default()
    };
    let state = AppState::new(db.pool, db.conn.session(Duration::from_secs(30)), limits);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(segd::server::serve(
        listener,
        state.clone(),
        segd::server::ServeOptions::default(),
        async {
            let _ = rx.await;
        },
    ));
    Ok(App {
        addr,
        state,
        db: db.conn,
        stop: Some(tx),
    })
}

impl App {
    async fn client(&self) -> tokio_postgres::Client {
        let (c, conn) = self.db.connect().await.expect("connect over TLS");
        tokio::spawn(conn);
        c
    }

    async fn query(&self) -> QueryServiceClient<tonic::transport::Channel> {
        QueryServiceClient::new(self.channel(4 << 20).await)
    }

    async fn channel(&self, window: u32) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .initial_stream_window_size(Some(window))
            .initial_connection_window_size(Some(window))
            .connect()
            .await
            .unwrap()
    }

    /// `n` contacts in workspace `ws`, inserted directly; their ids.
    async fn bulk_contacts(&self, ws: &str, n: i64) -> Vec<i64> {
        let id = self.state.workspaces.resolve(ws).await.unwrap();
        self.client()
            .await
            .query(
                "INSERT INTO contacts (workspace_id, external_id, country)
                 SELECT $1, 'g' || i, (ARRAY['US','CA','DE'])[1 + i % 3]
                 FROM generate_series(1, $2::bigint) AS i ORDER BY i RETURNING id",
                &[&id.0, &n],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Whether this database's backends of `application_name` use TLS
    /// (one entry per backend).
    async fn ssl_of(&self, application_name: &str) -> Vec<bool> {
        self.client()
            .await
            .query(
                "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                 WHERE a.datname = current_database() AND a.application_name = $1",
                &[&application_name],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }
}

fn members(contacts: bool) -> pb::StreamMembersRequest {
    pb::StreamMembersRequest {
        selector: inline(EVERYONE),
        read_mask: contacts.then(|| prost_types::FieldMask {
            paths: vec!["external_id".into()],
        }),
        ..Default::default()
    }
}

/// Every id of a stream read to its end.
async fn stream_ids(
    q: &mut QueryServiceClient<tonic::transport::Channel>,
    contacts: bool,
) -> Vec<i64> {
    let mut s = q
        .stream_members(req("w", members(contacts)))
        .await
        .unwrap()
        .into_inner();
    let mut ids = Vec::new();
    while let Some(m) = s.next().await {
        let m = m.unwrap();
        assert!(contacts || m.contacts.is_empty());
        ids.extend(m.ids.iter().copied().chain(m.contacts.iter().map(|c| c.id)));
    }
    ids
}

/// Polls `check` every 100 ms for up to a minute.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within a minute");
}

#[tokio::test]
async fn with_sslmode_require_everything_goes_over_tls() {
    let base = fresh_db().await;
    // The cluster refuses what is not TLS.
    assert!(conninfo(&base).connect().await.is_err());
    let app = serve(&config(&format!("{base}?sslmode=require"), None))
        .await
        .expect("segd starts");
    let mut all = app.bulk_contacts("w", 30_000).await;
    // A write through the pool.
    let created = pb::contact_service_client::ContactServiceClient::new(app.channel(1 << 20).await)
        .create_contact(req(
            "w",
            pb::CreateContactRequest {
                contact: Some(pb::Contact {
                    external_id: "written".into(),
                    country: "DE".into(),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap();
    all.push(created.id);
    let mut q = app.query().await;
    let count = q
        .count_members(req(
            "w",
            pb::CountMembersRequest {
                selector: inline(EVERYONE),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(count, all.len() as i64);
    // Ids come off the stream session's socket directly; contacts through
    // tokio-postgres: both over the session's TLS.
    assert_eq!(stream_ids(&mut q, false).await, all);
    assert_eq!(stream_ids(&mut q, true).await, all);

    let streams = app.ssl_of("segd-stream").await;
    assert!(!streams.is_empty(), "an idle stream session stays open");
    assert!(streams.iter().all(|s| *s), "stream sessions use TLS");
    // The pool's connections and the change feed's listener.
    eventually("the feed listener connected", async || {
        app.client()
            .await
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                   AND query LIKE 'LISTEN %'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    let pooled = app.ssl_of("segd").await;
    assert!(
        pooled.len() >= 2,
        "pooled sessions and the listener: {pooled:?}"
    );
    assert!(pooled.iter().all(|s| *s), "every segd session uses TLS");
}

#[tokio::test]
async fn verify_full_with_the_right_ca_starts_and_streams() {
    let base = fresh_db().await;
    // The CA by flag, with the IP address the certificate names.
    let app = serve(&config(
        &format!("{base}?sslmode=verify-full"),
        Some("pg-ca.pem"),
    ))
    .await
    .expect("verify-full with the right CA");
    let all = app.bulk_contacts("w", 1_000).await;
    assert_eq!(stream_ids(&mut app.query().await, false).await, all);
    drop(app);
    // The CA in the URL, with the host name the certificate names.
    let url = base.replace("127.0.0.1", "localhost")
        + &format!(
            "?sslmode=verify-full&sslrootcert={}",
            fixture("pg-ca.pem").display()
        );
    let app = serve(&config(&url, None))
        .await
        .expect("sslrootcert in the URL");
    assert_eq!(
        stream_ids(&mut app.query().await, false).await.len(),
        all.len()
    );
}

/// The error segd's start-up fails with, as `segd` prints it.
async fn refused(config: &Config) -> String {
    match segd::startup::database(config).await {
        Ok(_) => panic!("start-up must fail"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_from_another_ca() {
    let url = format!("{}?sslmode=verify-full", fresh_db().await);
    let e = refused(&config(&url, Some("pg-other-ca.pem"))).await;
    assert!(e.contains("certificate"), "names the certificate: {e}");
    // verify-ca checks the chain just the same.
    let url = url.replace("verify-full", "verify-ca");
    let e = refused(&config(&url, Some("pg-other-ca.pem"))).await;
    assert!(e.contains("certificate"), "names the certificate: {e}");
    // And require with a CA too, as in libpq.
    let url = url.replace("verify-ca", "require");
    refused(&config(&url, Some("pg-other-ca.pem"))).await;
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_for_another_host() {
    let base = fresh_db().await;
    let port = pg().cluster.port();
    // Reach 127.0.0.1 under a name the certificate does not carry.
    let url = base.replace(&format!("127.0.0.1:{port}"), &format!("db.invalid:{port}"))
        + "?hostaddr=127.0.0.1&sslmode=verify-full";
    let e = refused(&config(&url, Some("pg-ca.pem"))).await;
    assert!(e.contains("certificate"), "names the certificate: {e}");
    // verify-ca does not check the name: it starts, streams included.
    let app = serve(&config(
        &url.replace("verify-full", "verify-ca"),
        Some("pg-ca.pem"),
    ))
    .await
    .expect("verify-ca ignores the host name");
    let all = app.bulk_contacts("w", 100).await;
    assert_eq!(stream_ids(&mut app.query().await, false).await, all);
}

#[tokio::test]
async fn require_against_a_server_without_tls_is_refused() {
    let plain = TestApp::spawn().await;
    let ssl: String = plain
        .db()
        .await
        .query_one("SHOW ssl", &[])
        .await
        .unwrap()
        .get(0);
    if ssl == "on" {
        eprintln!("skipped: the shared PostgreSQL serves TLS");
        return;
    }
    let e = refused(&config(&format!("{}?sslmode=require", plain.db_url), None)).await;
    assert!(e.contains("TLS"), "says TLS is the problem: {e}");
    // Stream sessions refuse the same way.
    let db = conninfo(&format!("{}?sslmode=require", plain.db_url));
    let e = segd::db::stream_conn::connect(&db, 0).await.unwrap_err();
    assert!(matches!(e, segd::error::Error::Unavailable(_)), "{e:?}");
    // prefer settles for plain.
    let db = conninfo(&format!("{}?sslmode=prefer", plain.db_url));
    segd::startup::migrate(&db)
        .await
        .expect("prefer falls back");
    segd::db::stream_conn::connect(&db, 0)
        .await
        .expect("prefer falls back for streams too");
}

/// A stream session whose query is cancelled while the session stays
/// open: only the cancel request (sent over TLS) can have stopped it. The
/// session is still usable after, raw reads included.
#[tokio::test]
async fn a_cancel_request_over_tls_stops_a_stream_sessions_query() {
    let url = format!("{}?sslmode=verify-full", fresh_db().await);
    let mut db = ConnInfo::parse(&url, Some(&fixture("pg-ca.pem")))
        .unwrap()
        .session(Duration::from_secs(60));
    db.config.application_name("pgtls-cancel");
    let session = segd::db::stream_conn::connect(&db, 0).await.unwrap();
    let canceller = session.canceller();
    let running = tokio::spawn(async move {
        let r = session.client.simple_query("SELECT pg_sleep(60)").await;
        (r.map(|_| ()), session)
    });
    let (watch, conn) = db.connect().await.unwrap();
    tokio::spawn(conn);
    let sleeping = async || {
        watch
            .query_one(
                "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                 WHERE a.application_name = 'pgtls-cancel' AND a.query LIKE 'SELECT pg_sleep%'
                   AND a.state = 'active' AND s.ssl",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    eventually("the query runs on a TLS session", async || {
        sleeping().await == 1
    })
    .await;
    canceller.cancel().await;
    let (r, session) = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the cancel stops the query")
        .unwrap();
    let e = r.expect_err("a cancelled query fails");
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    );
    // The backend reports itself idle around when the error is sent.
    eventually("the cancelled query leaves pg_stat_activity", async || {
        sleeping().await == 0
    })
    .await;
    // The session goes on, and its socket still lends itself to raw reads.
    let mut raw = session.borrow().unwrap();
    raw.send_query("COPY (SELECT generate_series(1, 100000)) TO STDOUT")
        .await
        .unwrap();
    let mut rows = 0;
    while !raw
        .read_some(|_| {
            rows += 1;
            Ok(())
        })
        .await
        .unwrap()
    {}
    session.give_back(raw);
    assert_eq!(rows, 100_000);
    assert!(session.is_healthy());
    session.client.simple_query("SELECT 1").await.unwrap();
}

/// A client that leaves a stream held back by backpressure: its query
/// stops, as over plain connections.
#[tokio::test]
async fn a_stream_abandoned_over_tls_stops_its_query() {
    let url = format!("{}?sslmode=require", fresh_db().await);
    let app = serve(&config(&url, None)).await.unwrap();
    // More ids than the channel, HTTP/2 and socket buffers hold together.
    app.bulk_contacts("w", 1_000_000).await;
    let busy = async || {
        app.client()
            .await
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'segd-stream'
                   AND datname = current_database() AND state <> 'idle'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let mut q = QueryServiceClient::new(app.channel(64 << 10).await);
    let mut s = q
        .stream_members(req("w", members(false)))
        .await
        .unwrap()
        .into_inner();
    assert!(!s.next().await.unwrap().unwrap().ids.is_empty());
    eventually("the stream's query waits for its reader", async || {
        busy().await == 1
    })
    .await;
    drop(s);
    eventually("the abandoned stream's query stopped", async || {
        busy().await == 0
    })
    .await;
}
