//! `segd bench stream`: StreamMembers against PostgreSQL's own limit,
//! `COPY (the same SQL) TO STDOUT`, measured alternately in one run.

use std::time::{Duration, Instant};

use futures::StreamExt;

use super::{BenchEnv, data};
use crate::config::StreamBench;
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
    // The very query the stream runs, with its values as literals (COPY
    // takes no bind parameters).
    let ids = Query {
        order: Order::Id,
        ..Query::of(Select::Ids)
    };
    let sql = t.compiled.render(&ids).sql;
    let copy_sql = format!("COPY ({}) TO STDOUT", t.compiled.render_literals(&ids));
    println!("segment: {DEFINITION}\nsql: {sql}");

    let mut query =
        QueryServiceClient::new(env.channel().await?).max_decoding_message_size(16 << 20);
    // Warm the cache and both code paths once.
    let (warm, _) = stream_once(&mut query).await?;
    let warm_copy = copy_once(&client, &copy_sql).await?;
    anyhow::ensure!(
        warm == warm_copy,
        "stream returned {warm} rows, COPY {warm_copy}"
    );

    let (mut streams, mut copies, mut ttfbs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..o.rounds {
        // Alternate which goes first, so neither always runs on a warmer machine.
        let cpu0 = env.server_pid().and_then(cpu_seconds).unwrap_or(0.0);
        let self0 = cpu_seconds(std::process::id()).unwrap_or(0.0);
        let (s, c) = if round % 2 == 0 {
            let s = timed_stream(&mut query).await?;
            (s, timed_copy(&client, &copy_sql).await?)
        } else {
            let c = timed_copy(&client, &copy_sql).await?;
            (timed_stream(&mut query).await?, c)
        };
        println!(
            "round {}: stream {:.3}s ({:.0} rows/s, first batch {:.1} ms) | copy {:.3}s ({:.0} rows/s)",
            round + 1,
            s.0.as_secs_f64(),
            warm as f64 / s.0.as_secs_f64(),
            s.1.as_secs_f64() * 1000.0,
            c.as_secs_f64(),
            warm as f64 / c.as_secs_f64()
        );
        println!(
            "         CPU used by this round: server {:.2}s, benchmark client {:.2}s",
            env.server_pid().and_then(cpu_seconds).unwrap_or(0.0) - cpu0,
            cpu_seconds(std::process::id()).unwrap_or(0.0) - self0
        );
        streams.push(s.0.as_secs_f64());
        ttfbs.push(s.1.as_secs_f64() * 1000.0);
        copies.push(c.as_secs_f64());
    }
    let (stream_s, copy_s, ttfb) = (
        median(&mut streams),
        median(&mut copies),
        median(&mut ttfbs),
    );
    let rss = env.server_pid().and_then(peak_rss_mb).unwrap_or(0.0);
    println!(
        "medians: stream {stream_s:.3}s, copy {copy_s:.3}s, first batch {ttfb:.1} ms, server peak RSS {rss:.0} MB"
    );
    println!(
        "stream_rows={warm} stream_s={stream_s:.3} copy_s={copy_s:.3} ratio={:.3} ttfb_ms={ttfb:.1} server_peak_rss_mb={rss:.0}",
        copy_s / stream_s
    );
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
