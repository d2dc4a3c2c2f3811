//! `segd bench stream`: StreamMembers against PostgreSQL's own limit,
//! `COPY (the same SQL) TO STDOUT`, measured alternately in one run; with
//! `--tls`, both over plain connections and over TLS, in the same rounds.

use std::time::{Duration, Instant};

use futures::StreamExt;

use super::{BenchEnv, Served, data};
use crate::config::StreamBench;
use crate::db::ConnInfo;
use crate::db::tls::SslMode;
use crate::proto::{
    self as pb, query_service_client::QueryServiceClient,
    segment_service_client::SegmentServiceClient,
};
use crate::segment::ast::SegmentRef;
use crate::segment::render::{Order, Query, Select};
use crate::service::segments::{Target, compile};

const WS: &str = "bench";
const SEGMENT: &str = "bench-80";
/// About 80% of contacts: lead scores are uniform over 0..100.
const DEFINITION: &str = "lead_score >= 20 AND NOT label:staff";

/// One way of reaching PostgreSQL: a segd server whose sessions use it, and
/// a client session for COPY that uses it too.
struct Variant {
    label: String,
    query: QueryServiceClient<tonic::transport::Channel>,
    copy: tokio_postgres::Client,
    pid: Option<u32>,
    streams: Vec<f64>,
    copies: Vec<f64>,
    ttfbs: Vec<f64>,
}

impl Variant {
    async fn new(
        conn: &ConnInfo,
        channel: tonic::transport::Channel,
        pid: Option<u32>,
    ) -> anyhow::Result<Self> {
        let (copy, connection) = conn.session(Duration::ZERO).connect().await?;
        tokio::spawn(connection);
        let label = match conn.tls.mode() {
            SslMode::Disable => "plain".to_string(),
            m => format!("tls ({})", m.as_str()),
        };
        Ok(Self {
            label,
            query: QueryServiceClient::new(channel).max_decoding_message_size(16 << 20),
            copy,
            pid,
            streams: Vec::new(),
            copies: Vec::new(),
            ttfbs: Vec::new(),
        })
    }

    /// One measured round; `copy_first` alternates which goes first, so
    /// neither always runs on a warmer machine.
    async fn round(&mut self, sql: &str, rows: u64, copy_first: bool) -> anyhow::Result<()> {
        let cpu0 = self.pid.and_then(cpu_seconds).unwrap_or(0.0);
        let self0 = cpu_seconds(std::process::id()).unwrap_or(0.0);
        let (s, c) = if copy_first {
            let c = timed_copy(&self.copy, sql).await?;
            (timed_stream(&mut self.query).await?, c)
        } else {
            let s = timed_stream(&mut self.query).await?;
            (s, timed_copy(&self.copy, sql).await?)
        };
        println!(
            "  {:<16} stream {:.3}s ({:.0} rows/s, first batch {:.1} ms) | copy {:.3}s ({:.0} rows/s) | CPU: server {:.2}s, benchmark client {:.2}s",
            self.label,
            s.0.as_secs_f64(),
            rows as f64 / s.0.as_secs_f64(),
            s.1.as_secs_f64() * 1000.0,
            c.as_secs_f64(),
            rows as f64 / c.as_secs_f64(),
            self.pid.and_then(cpu_seconds).unwrap_or(0.0) - cpu0,
            cpu_seconds(std::process::id()).unwrap_or(0.0) - self0
        );
        self.streams.push(s.0.as_secs_f64());
        self.ttfbs.push(s.1.as_secs_f64() * 1000.0);
        self.copies.push(c.as_secs_f64());
        Ok(())
    }

    /// Median stream and COPY seconds and first-batch milliseconds.
    fn medians(&mut self) -> (f64, f64, f64) {
        (
            median(&mut self.streams),
            median(&mut self.copies),
            median(&mut self.ttfbs),
        )
    }
}

/// Generates the data, then measures.
///
/// # Errors
/// Setup or a call failed.
pub async fn run(env: &BenchEnv, o: &StreamBench) -> anyhow::Result<()> {
    let started = Instant::now();
    let ws = data::generate(env, WS, &data::Shape::stream(o.contacts)).await?;
    println!(
        "generated {} contacts with events and deals in {:.1}s",
        o.contacts,
        started.elapsed().as_secs_f64()
    );

    let mut segments = SegmentServiceClient::new(env.channel().await?);
    let mut create = tonic::Request::new(pb::CreateSegmentRequest {
        segment: Some(pb::Segment {
            name: SEGMENT.into(),
            definition: Some(pb::Definition {
                kind: Some(pb::definition::Kind::Filter(DEFINITION.into())),
            }),
            ..Default::default()
        }),
    });
    create
        .metadata_mut()
        .insert("x-segd-workspace", WS.parse()?);
    segments.create_segment(create).await?;

    let client = env.pool.get().await?;
    let t = compile(
        &**client,
        ws,
        &Target::Saved(SegmentRef::Name(SEGMENT.into())),
        chrono::Utc::now(),
        true,
    )
    .await?;
    drop(client);
    // The very query the stream runs, with its values as literals (COPY
    // takes no bind parameters).
    let ids = Query {
        order: Order::Id,
        ..Query::of(Select::Ids)
    };
    let sql = t.compiled.render(&ids).sql;
    let copy_sql = format!("COPY ({}) TO STDOUT", t.compiled.render_literals(&ids));
    println!("segment: {DEFINITION}\nsql: {sql}");

    let mut variants = vec![Variant::new(&env.conn, env.channel().await?, env.server_pid()).await?];
    // With --tls, a second server reaches the same database the other way.
    let mut other: Option<Served> = None;
    if o.tls {
        let conn = if env.conn.tls.mode() == SslMode::Disable {
            super::with_ssl_mode(&env.conn, SslMode::Require)?
        } else {
            super::with_ssl_mode(&env.conn, SslMode::Disable)?
        };
        let served = env.serve_also(&conn).await?;
        variants.push(Variant::new(&conn, served.channel().await?, served.pid()).await?);
        variants.sort_by_key(|v| v.label != "plain");
        other = Some(served);
    }

    // Warm the cache and both code paths of each variant once.
    let mut rows = None;
    for v in &mut variants {
        let (warm, _) = stream_once(&mut v.query).await?;
        let warm_copy = copy_once(&v.copy, &copy_sql).await?;
        anyhow::ensure!(
            warm == warm_copy && rows.is_none_or(|r| r == warm),
            "{}: stream returned {warm} rows, COPY {warm_copy}",
            v.label
        );
        rows = Some(warm);
    }
    let rows = rows.unwrap_or_default();

    for round in 0..o.rounds {
        println!("round {}:", round + 1);
        let n = variants.len();
        for i in 0..n {
            // Alternate the order of the variants too.
            let v = &mut variants[(i + round) % n];
            v.round(&copy_sql, rows, round % 2 == 1).await?;
        }
    }
    // Before the other server stops and its /proc entry goes.
    let rss: Vec<f64> = variants
        .iter()
        .map(|v| v.pid.and_then(peak_rss_mb).unwrap_or(0.0))
        .collect();
    report_sessions(env).await?;
    if let Some(s) = other {
        s.stop().await;
    }

    let mut line = format!("stream_rows={rows}");
    let mut plain_stream = None;
    for (v, rss) in variants.iter_mut().zip(rss) {
        let (stream_s, copy_s, ttfb) = v.medians();
        println!(
            "medians, {}: stream {stream_s:.3}s, copy {copy_s:.3}s (copy/stream {:.3}), first batch {ttfb:.1} ms, server peak RSS {rss:.0} MB",
            v.label,
            copy_s / stream_s
        );
        let p = if v.label == "plain" { "" } else { "tls_" };
        line.push_str(&format!(
            " {p}stream_s={stream_s:.3} {p}copy_s={copy_s:.3} {p}ratio={:.3} {p}ttfb_ms={ttfb:.1} {p}server_peak_rss_mb={rss:.0}",
            copy_s / stream_s
        ));
        match plain_stream {
            None => plain_stream = Some((stream_s, copy_s)),
            Some((ps, pc)) => {
                println!(
                    "TLS costs the stream {:+.1}% and COPY {:+.1}% against plain",
                    (stream_s / ps - 1.0) * 100.0,
                    (copy_s / pc - 1.0) * 100.0
                );
                line.push_str(&format!(" tls_stream_cost={:.3}", stream_s / ps));
            }
        }
    }
    println!("{line}");
    Ok(())
}

/// Prints how the servers' idle stream sessions reach PostgreSQL, as
/// `pg_stat_ssl` sees them: the proof that the TLS figures are TLS.
async fn report_sessions(env: &BenchEnv) -> anyhow::Result<()> {
    let client = env.pool.get().await?;
    let rows = client
        .query(
            "SELECT s.ssl, count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.datname = current_database() AND a.application_name = 'segd-stream'
             GROUP BY s.ssl ORDER BY s.ssl",
            &[],
        )
        .await?;
    let counts: Vec<String> = rows
        .iter()
        .map(|r| {
            let (ssl, n): (bool, i64) = (r.get(0), r.get(1));
            format!("{n} {}", if ssl { "over TLS" } else { "plain" })
        })
        .collect();
    println!("stream sessions (pg_stat_ssl): {}", counts.join(", "));
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

async fn stream_once(
    q: &mut QueryServiceClient<tonic::transport::Channel>,
) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let mut r = tonic::Request::new(pb::StreamMembersRequest {
        selector: Some(pb::SegmentSelector {
            kind: Some(pb::segment_selector::Kind::SegmentName(SEGMENT.into())),
            evaluate: false,
        }),
        ..Default::default()
    });
    r.metadata_mut().insert("x-segd-workspace", WS.parse()?);
    let mut s = q.stream_members(r).await?.into_inner();
    let mut rows = 0u64;
    let mut first = None;
    while let Some(m) = s.next().await {
        let m = m?;
        if first.is_none() && !m.ids.is_empty() {
            first = Some(started.elapsed());
        }
        rows += m.ids.len() as u64;
    }
    Ok((rows, first.unwrap_or_default()))
}

async fn timed_stream(
    q: &mut QueryServiceClient<tonic::transport::Channel>,
) -> anyhow::Result<(Duration, Duration)> {
    let started = Instant::now();
    let (_, ttfb) = stream_once(q).await?;
    Ok((started.elapsed(), ttfb))
}

async fn copy_once(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<u64> {
    let s = client.copy_out(sql).await?;
    futures::pin_mut!(s);
    let mut rows = 0u64;
    while let Some(chunk) = s.next().await {
        rows += chunk?.iter().filter(|b| **b == b'\n').count() as u64;
    }
    Ok(rows)
}

async fn timed_copy(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    copy_once(client, sql).await?;
    Ok(started.elapsed())
}
