//! segd behind PgBouncer (Debian's `pgbouncer`) in transaction mode: two
//! segd servers share two server connections with each other and with a
//! probe, which checks between their transactions that nothing of theirs
//! stays on a session (role, workspace, settings, prepared statements).
//! Statement mode, and a pooler segd was not told about, are refused at
//! start-up.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use segd::proto as pb;
use segd::proto::contact_service_client::ContactServiceClient;
use segd::proto::query_service_client::QueryServiceClient;
use segd::proto::segment_service_client::SegmentServiceClient;
use tokio_postgres::SimpleQueryMessage;

use crate::helpers::{TestApp, create_segment, import_all, inline, req, serve, wide_channel};

/// A PgBouncer in front of one test database, as aliases `tx` (transaction
/// mode) and `stmt` (statement mode), with two server connections each.
struct Bouncer {
    dir: PathBuf,
    port: u16,
    user: String,
    child: std::process::Child,
}

impl Bouncer {
    /// `extra`: more `[pgbouncer]` settings.
    fn start(db_url: &str, extra: &str) -> Bouncer {
        let cfg: tokio_postgres::Config = db_url.parse().unwrap();
        let host = match &cfg.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.to_string_lossy().into_owned(),
        };
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        let user = cfg.get_user().unwrap_or("postgres").to_string();
        let db = cfg.get_dbname().unwrap();
        let password = cfg
            .get_password()
            .map(|p| format!(" password={}", String::from_utf8_lossy(p)))
            .unwrap_or_default();
        let server = format!("host={host} port={port} dbname={db} user={user}{password}");

        let dir = tempfile::Builder::new()
            .prefix("segd-pgbouncer-")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let bouncer_port = listen.local_addr().unwrap().port();
        drop(listen);
        let d = dir.display();
        write(&dir.join("users.txt"), &format!("\"{user}\" \"\"\n"));
        write(
            &dir.join("pgbouncer.ini"),
            &format!(
                "[databases]\n\
                 tx = {server} connect_query='SET TimeZone TO \"America/New_York\"'\n\
                 stmt = {server} pool_mode=statement\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {bouncer_port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {d}/users.txt\n\
                 pool_mode = transaction\n\
                 default_pool_size = 2\n\
                 max_client_conn = 200\n\
                 {extra}\n\
                 logfile = {d}/pgbouncer.log\n\
                 pidfile = {d}/pgbouncer.pid\n"
            ),
        );
        let binary = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("PgBouncer is not installed: apt-get install pgbouncer (.ci/run does)");
        // PgBouncer refuses to run as root.
        let root = unsafe { libc::geteuid() } == 0;
        let mut cmd = if root {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&binary);
            c
        } else {
            std::process::Command::new(&binary)
        };
        let child = cmd
            .arg(dir.join("pgbouncer.ini"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting pgbouncer");
        let b = Bouncer {
            dir,
            port: bouncer_port,
            user,
            child,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", bouncer_port)).is_ok() {
                return b;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("pgbouncer did not start: {}", b.log());
    }

    /// A URL of `alias` through the bouncer.
    fn url(&self, alias: &str) -> String {
        format!("postgres://{}@127.0.0.1:{}/{alias}", self.user, self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        // Signalled by its pid: runuser does not pass signals on.
        let pid = std::fs::read_to_string(self.dir.join("pgbouncer.pid"));
        if let Some(pid) = pid.ok().and_then(|p| p.trim().parse::<i32>().ok()) {
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        // runuser exits once PgBouncer has (and reaps it).
        for _ in 0..100 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let dir = path.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
}

/// A test database, and a PgBouncer in front of it.
async fn bounced() -> (TestApp, Bouncer) {
    let app = TestApp::spawn().await;
    let bouncer = bouncer_for(&app, "").await;
    (app, bouncer)
}

/// A PgBouncer in front of `app`'s database, with `extra` settings.
async fn bouncer_for(app: &TestApp, extra: &'static str) -> Bouncer {
    let url = app.db_url.clone();
    tokio::task::spawn_blocking(move || Bouncer::start(&url, extra))
        .await
        .unwrap()
}

/// segd's configuration for `args`.
fn config(args: &[&str]) -> segd::config::Config {
    segd::config::Cli::try_parse_from([&["segd"], args].concat())
        .unwrap()
        .config
}

/// The arguments of segd behind a transaction pooler at `db`, with session
/// work on `session`.
fn behind<'a>(db: &'a str, session: &'a str) -> Vec<&'a str> {
    vec![
        "--database-url",
        db,
        "--database-pooler",
        "transaction",
        "--session-database-url",
        session,
    ]
}

/// A plain client through the bouncer (no session settings, simple
/// queries only, which PgBouncer can pool).
async fn probe_client(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

/// The first row of a simple query, as text.
async fn row(c: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    let msgs = c.simple_query(sql).await.unwrap();
    let r = msgs
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("a row");
    (0..r.len())
        .map(|i| r.get(i).unwrap_or("").to_string())
        .collect()
}

/// What a session carries that a call of segd could leave on it.
const SESSION: &str = "SELECT current_user, coalesce(current_setting('segd.workspace', true), ''), \
     current_setting('statement_timeout'), current_setting('TimeZone'), current_setting('jit'), \
     (SELECT count(*) FROM pg_prepared_statements)";

/// One workspace's calls on the server at `addr`: a live segment watched,
/// an import in several batches, a saved segment, counts, streams of ids
/// and of contacts, a preview and reads; the watch sees every member enter.
/// Returns the members' ids.
async fn calls(addr: std::net::SocketAddr, ws: &str, n: usize) -> Vec<i64> {
    let ch = wide_channel(addr).await;
    let mut contacts = ContactServiceClient::new(ch.clone());
    let mut segs = SegmentServiceClient::new(ch.clone());
    let mut q = QueryServiceClient::new(ch);
    let batches = (0..n)
        .map(|i| pb::Contact {
            external_id: format!("{ws}-{i}"),
            email: format!("{i}@{ws}.example"),
            tags: if i % 2 == 0 {
                vec!["vip".into()]
            } else {
                vec![]
            },
            ..Default::default()
        })
        .collect::<Vec<_>>()
        .chunks(10)
        .map(<[pb::Contact]>::to_vec)
        .collect();
    // A live segment, watched from now on: the maintainer (on the session
    // URL) keeps it, the feed's listener (LISTEN, also there) wakes the
    // watch, whose reads go through the pooler.
    let live = segs
        .create_segment(req(
            ws,
            pb::CreateSegmentRequest {
                segment: Some(pb::Segment {
                    name: "vips".into(),
                    definition: crate::helpers::filter("tags:vip"),
                    live: Some(true),
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap();
    let mut watch = q
        .watch_membership(req(
            ws,
            pb::WatchMembershipRequest {
                segment_ids: vec![live.id],
                start: Some(pb::watch_membership_request::Start::Now(true)),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let acks = import_all(&mut contacts, ws, batches).await.unwrap();
    assert_eq!(acks.created as usize, n, "{ws}: every row created");
    create_segment(&mut segs, ws, "vips-saved", "tags:vip")
        .await
        .unwrap();
    let vips = n.div_ceil(2) as i64;
    for selector in [inline("tags:vip"), crate::helpers::evaluated("vips-saved")] {
        let count = q
            .count_members(req(
                ws,
                pb::CountMembersRequest {
                    selector,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .count;
        assert_eq!(count, vips, "{ws}: count");
    }
    let mut ids = Vec::new();
    for contacts in [false, true] {
        let s = q
            .stream_members(req(
                ws,
                pb::StreamMembersRequest {
                    selector: inline("tags:vip"),
                    read_mask: contacts.then(|| prost_types::FieldMask {
                        paths: vec!["external_id".into()],
                    }),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let got = crate::helpers::members(s).await;
        assert_eq!(
            got.len() as i64,
            vips,
            "{ws}: stream (contacts: {contacts})"
        );
        ids = got;
    }
    let preview = q
        .preview_segment(req(
            ws,
            pb::PreviewSegmentRequest {
                selector: inline("tags:vip"),
                sample_size: 3,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.count, vips, "{ws}: preview");
    let first = contacts
        .get_contact(req(
            ws,
            pb::GetContactRequest {
                contact: Some(pb::ContactRef {
                    key: Some(pb::contact_ref::Key::Id(ids[0])),
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap();
    assert!(first.external_id.starts_with(&format!("{ws}-")), "{ws}");
    let page = contacts
        .list_contacts(req(
            ws,
            pb::ListContactsRequest {
                page_size: 1000,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.contacts.len(), n, "{ws}: only its own contacts");
    let mut entered = std::collections::BTreeSet::new();
    while entered.len() < ids.len() {
        let m = tokio::time::timeout(Duration::from_secs(60), watch.message())
            .await
            .unwrap_or_else(|_| panic!("{ws}: {} of {} changes in 60 s", entered.len(), ids.len()))
            .unwrap()
            .expect("the watch goes on");
        for ch in m.changes {
            assert!(ch.entered && entered.insert(ch.contact_id), "{ws}: {ch:?}");
        }
    }
    assert!(entered.into_iter().eq(ids.iter().copied()), "{ws}: watched");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_pgbouncer_in_transaction_mode_calls_leave_nothing_on_shared_sessions() {
    let (app, bouncer) = bounced().await;
    let tx_url = bouncer.url("tx");

    // The setting is real: a session setting made by one client is seen by
    // another, so a call that left anything on a session would show.
    let (one, other) = (probe_client(&tx_url).await, probe_client(&tx_url).await);
    let baseline = row(&other, SESSION).await;
    let mut shared = false;
    for i in 0..20 {
        one.simple_query(&format!("SET segd_test.probe = 'p{i}'"))
            .await
            .unwrap();
        let seen = row(&other, "SELECT current_setting('segd_test.probe', true)").await;
        if seen[0] == format!("p{i}") {
            shared = true;
            break;
        }
    }
    assert!(shared, "PgBouncer shares server sessions between clients");
    assert_eq!(baseline[1], "", "no workspace on a fresh session");
    assert_ne!(baseline[2], "30s", "the server's own statement timeout");

    // Two segd servers, each as `segd --database-pooler transaction`.
    let mut args = behind(&tx_url, &app.db_url);
    args.extend(["--pool-size", "4", "--statement-timeout", "30s"]);
    let mut servers = Vec::new();
    for _ in 0..2 {
        let db = segd::startup::database(&config(&args)).await.unwrap();
        let state = db.state(segd::api::Limits::default());
        servers.push(serve(state).await);
    }

    // Their calls run concurrently while the probe samples the sessions
    // they share, between their transactions.
    let done = tokio_util::sync::CancellationToken::new();
    let probe = probe_client(&tx_url).await;
    let sampler = tokio::spawn({
        let done = done.clone();
        async move {
            let mut seen = Vec::new();
            while !done.is_cancelled() {
                seen.push(row(&probe, SESSION).await);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            seen
        }
    });
    let work = [("a", 60, 0), ("b", 41, 1), ("c", 25, 0), ("d", 33, 1)];
    let runs = work
        .iter()
        .map(|&(ws, n, s)| tokio::spawn(calls(servers[s].0, ws, n)));
    let members: Vec<Vec<i64>> = futures::future::try_join_all(runs).await.unwrap();
    done.cancel();
    let mut seen = sampler.await.unwrap();
    // Then every server session, each held by a transaction of its own.
    let held = [probe_client(&tx_url).await, probe_client(&tx_url).await];
    for p in &held {
        p.simple_query("BEGIN").await.unwrap();
    }
    let mut pids = std::collections::BTreeSet::new();
    for p in &held {
        let mut s = row(p, SESSION).await;
        pids.insert(row(p, "SELECT pg_backend_pid()").await[0].clone());
        s.push("held".into());
        seen.push(s);
    }
    assert_eq!(pids.len(), 2, "both server sessions inspected");

    assert!(
        seen.len() > 10,
        "the probe sampled throughout: {}",
        seen.len()
    );
    for s in &seen {
        assert_eq!(
            (&s[0], &s[1], &s[2], &s[3], &s[4]),
            (
                &baseline[0],
                &baseline[1],
                &baseline[2],
                &baseline[3],
                &baseline[4]
            ),
            "user, workspace, statement_timeout, TimeZone and jit as the server set them"
        );
        assert_eq!(
            s[5], "0",
            "no prepared statement outlives its transaction: {s:?}"
        );
    }
    // Each workspace's members, as the owner sees them directly.
    let db = app.db().await;
    for ((ws, _, _), ids) in work.iter().zip(&members) {
        let want: Vec<i64> = db
            .query(
                "SELECT c.id FROM contacts c JOIN workspaces w USING (workspace_id) \
                 WHERE w.name = $1 AND 'vip' = ANY(c.tags) ORDER BY c.id",
                &[ws],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(ids, &want, "{ws}: its own members, no one else's");
    }
    assert!(
        !bouncer.log().contains("prepared statement"),
        "{}",
        bouncer.log()
    );
    drop(servers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_pooling_and_an_undeclared_transaction_pooler_are_refused_at_start_up() {
    let (app, bouncer) = bounced().await;
    let (tx_url, stmt_url) = (bouncer.url("tx"), bouncer.url("stmt"));

    let err = segd::startup::database(&config(&behind(&stmt_url, &app.db_url)))
        .await
        .err()
        .expect("statement pooling is refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("statement mode"), "{msg}");
    assert!(msg.contains("pool_mode = transaction"), "{msg}");

    // Without --database-pooler, segd sends its session settings, which
    // PgBouncer refuses: the message says what to configure.
    let err = segd::startup::database(&config(&["--database-url", &tx_url]))
        .await
        .err()
        .expect("an undeclared pooler is refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("--database-pooler transaction"), "{msg}");

    // The session URL must be a session: the bouncer in transaction mode is
    // refused there too.
    let err = segd::startup::database(&config(&behind(&tx_url, &tx_url)))
        .await
        .err()
        .expect("a pooled session URL is refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("--session-database-url"), "{msg}");

    // Told to drop the settings it does not pass on, PgBouncer takes them
    // silently: segd sees its statement timeout missing.
    let lenient = bouncer_for(&app, "ignore_startup_parameters = options").await;
    let err = segd::startup::database(&config(&["--database-url", &lenient.url("tx")]))
        .await
        .err()
        .expect("a pooler that drops the settings is refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("ignored segd's session settings"), "{msg}");
    assert!(msg.contains("--database-pooler transaction"), "{msg}");

    // Declared, the same bouncer works.
    segd::startup::database(&config(&behind(&tx_url, &app.db_url)))
        .await
        .unwrap();
}
