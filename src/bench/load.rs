//! `segd bench load`: a mix of imports, events, counts, streams and
//! membership checks from many concurrent clients at a target rate,
//! open-loop (calls are sent on schedule whether or not earlier ones have
//! answered), against a separate `segd serve` process. It runs at `--rate`,
//! then at twice that: for each phase, the p50 and p99 latency per RPC, the
//! answers by code, the worst latency against the calls' deadline, and the
//! server's resident memory before and after.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

use super::fresh::in_workspace;
use super::{BenchEnv, data};
use crate::config::LoadBench;
use crate::proto::{
    self as pb, contact_service_client::ContactServiceClient,
    query_service_client::QueryServiceClient,
};

const WS: &str = "load";

/// Each call's deadline.
const DEADLINE: Duration = Duration::from_secs(2);

/// Inline definitions the counts pick from.
const COUNTS: [&str; 4] = [
    "label:lead AND country = \"US\"",
    "event(purchase, last 30d)",
    "tags:vip AND lead_score >= 50",
    "event(email_open, last 14d) AND NOT event(purchase, last 30d)",
];

/// Latencies (ms) and codes per RPC.
type Results = Arc<Mutex<BTreeMap<&'static str, (Vec<f64>, BTreeMap<String, u64>)>>>;

/// Generates the data, then runs both phases and reports.
///
/// # Errors
/// Setup failed.
pub async fn run(env: &BenchEnv, o: &LoadBench) -> anyhow::Result<()> {
    let started = Instant::now();
    data::generate(env, WS, &data::Shape::stream(o.contacts)).await?;
    println!(
        "loaded {} contacts with events in {:.1}s; {} clients, each call's deadline {:?}",
        o.contacts,
        started.elapsed().as_secs_f64(),
        o.clients,
        DEADLINE
    );
    let channel = env.channel().await?;
    for (phase, rate) in [("sustained", o.rate), ("overload (2x)", o.rate * 2)] {
        let rss0 = env.server_pid().and_then(rss_mb).unwrap_or(0.0);
        let (results, sent, skipped) = phase_run(&channel, o, rate).await;
        let rss1 = env.server_pid().and_then(rss_mb).unwrap_or(0.0);
        report(
            phase,
            rate,
            o.duration,
            &results,
            sent,
            skipped,
            (rss0, rss1),
        );
    }
    Ok(())
}

/// One phase at `rate` calls per second for the configured duration.
async fn phase_run(channel: &Channel, o: &LoadBench, rate: usize) -> (Results, u64, u64) {
    let results: Results = Arc::default();
    let clients = Arc::new(tokio::sync::Semaphore::new(o.clients));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut rng = StdRng::seed_from_u64(rate as u64);
    let end = Instant::now() + o.duration;
    let (mut sent, mut skipped) = (0u64, 0u64);
    let mut tasks = tokio::task::JoinSet::new();
    while Instant::now() < end {
        tick.tick().await;
        // Every client busy: the call is not sent (and counted).
        let Ok(permit) = clients.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        sent += 1;
        let pick = rng.random_range(0..100);
        let contact = rng.random_range(1..=o.contacts as i64);
        let seed = rng.random::<u64>();
        let (channel, results) = (channel.clone(), results.clone());
        tasks.spawn(async move {
            let t = Instant::now();
            let (rpc, code) = one_call(channel, pick, contact, seed).await;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            let mut r = results.lock().expect("results");
            let e = r.entry(rpc).or_default();
            e.0.push(ms);
            *e.1.entry(code).or_default() += 1;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    (results, sent, skipped)
}

fn request<T>(msg: T) -> tonic::Request<T> {
    let mut r = in_workspace(msg, WS).expect("a valid workspace name");
    r.set_timeout(DEADLINE);
    r
}

fn code_of<T>(r: Result<T, tonic::Status>) -> String {
    match r {
        Ok(_) => "OK".into(),
        Err(s) => format!("{:?}", s.code()),
    }
}

/// One call of the mix: 30% RecordEvents (10 events), 10%
/// BatchUpsertContacts (50 contacts), 30% CountMembers, 10% StreamMembers
/// (read to the end), 20% CheckMembership.
async fn one_call(channel: Channel, pick: u32, contact: i64, seed: u64) -> (&'static str, String) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = ContactServiceClient::new(channel.clone());
    let mut q = QueryServiceClient::new(channel);
    let by_id = |id: i64| {
        Some(pb::ContactRef {
            key: Some(pb::contact_ref::Key::Id(id)),
        })
    };
    match pick {
        0..30 => {
            let events: Vec<pb::Event> = (0..10)
                .map(|i| pb::Event {
                    contact: by_id(contact + i),
                    r#type: ["page_view", "email_open", "purchase"][rng.random_range(0..3)].into(),
                    occurred_at: Some(crate::api::convert::ts(chrono::Utc::now())),
                    value: Some(10.0),
                    ..Default::default()
                })
                .collect();
            let msgs = tokio_stream::iter(vec![pb::RecordEventsRequest { events }]);
            let r = async {
                let mut acks = c.record_events(request(msgs)).await?.into_inner();
                while acks.message().await?.is_some() {}
                Ok::<_, tonic::Status>(())
            };
            ("RecordEvents", code_of(r.await))
        }
        30..40 => {
            let contacts: Vec<pb::Contact> = (0..50)
                .map(|i| pb::Contact {
                    external_id: format!("x{}", contact + i),
                    lead_score: Some(f64::from(rng.random_range(0..100u32))),
                    ..Default::default()
                })
                .collect();
            let msgs = tokio_stream::iter(vec![pb::BatchUpsertContactsRequest { contacts }]);
            let r = async {
                let mut acks = c.batch_upsert_contacts(request(msgs)).await?.into_inner();
                while acks.message().await?.is_some() {}
                Ok::<_, tonic::Status>(())
            };
            ("BatchUpsertContacts", code_of(r.await))
        }
        40..70 => {
            let text = COUNTS[rng.random_range(0..COUNTS.len())];
            let r = pb::CountMembersRequest {
                selector: Some(pb::SegmentSelector {
                    kind: Some(pb::segment_selector::Kind::Definition(pb::Definition {
                        kind: Some(pb::definition::Kind::Filter(text.into())),
                    })),
                    evaluate: false,
                }),
                ..Default::default()
            };
            ("CountMembers", code_of(q.count_members(request(r)).await))
        }
        70..80 => {
            let r = pb::StreamMembersRequest {
                selector: Some(pb::SegmentSelector {
                    kind: Some(pb::segment_selector::Kind::SegmentName("Donors".into())),
                    evaluate: false,
                }),
                ..Default::default()
            };
            let r = async {
                let mut s = q.stream_members(request(r)).await?.into_inner();
                while s.message().await?.is_some() {}
                Ok::<_, tonic::Status>(())
            };
            ("StreamMembers", code_of(r.await))
        }
        _ => {
            let r = pb::CheckMembershipRequest {
                contact: by_id(contact),
                segment_ids: vec![],
                explain: false,
            };
            (
                "CheckMembership",
                code_of(q.check_membership(request(r)).await),
            )
        }
    }
}

fn report(
    phase: &str,
    rate: usize,
    duration: Duration,
    results: &Results,
    sent: u64,
    skipped: u64,
    (rss0, rss1): (f64, f64),
) {
    let mut r = results.lock().expect("results");
    println!(
        "\n{phase}: target {rate} calls/s for {:?}: {sent} sent, {skipped} not sent (every client busy); server RSS {rss0:.0} MB -> {rss1:.0} MB",
        duration
    );
    println!(
        "{:<22} {:>8} {:>9} {:>9} {:>9}  codes",
        "rpc", "calls", "p50 ms", "p99 ms", "max ms"
    );
    let mut worst: f64 = 0.0;
    for (rpc, (lat, codes)) in r.iter_mut() {
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        worst = worst.max(pct(1.0));
        let codes: Vec<String> = codes.iter().map(|(c, n)| format!("{c}={n}")).collect();
        println!(
            "{rpc:<22} {:>8} {:>9.1} {:>9.1} {:>9.1}  {}",
            lat.len(),
            pct(0.5),
            pct(0.99),
            pct(1.0),
            codes.join(" ")
        );
    }
    let answered: u64 = r.values().map(|(l, _)| l.len() as u64).sum();
    println!(
        "load_phase={} sent={sent} answered={answered} worst_ms={worst:.0} deadline_ms={} over_deadline={} rss_growth_mb={:.0}",
        phase.split_whitespace().next().unwrap_or(phase),
        DEADLINE.as_millis(),
        worst > DEADLINE.as_secs_f64() * 1000.0 + 100.0,
        rss1 - rss0
    );
}

fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
