//! `segd bench live`: 20 live segments shaped like the seeds' examples,
//! kept current under a sustained write load (RecordEvents at a set rate,
//! plus contact updates). Prints the write-to-feed latency as a watcher sees
//! it, the maintenance cost per 1,000 events, the queue lag, the catch-up
//! time after the load, and each segment's rebuild time beside its
//! from-scratch count. (The first build of a segment also writes every
//! member and logs its entry; it is shown apart. A rebuild, as after a
//! redefinition or through RebuildSegment, evaluates the definition over
//! every contact and applies only the differences.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_stream::wrappers::ReceiverStream;

use super::fresh::in_workspace;
use super::stream::cpu_seconds;
use super::{BenchEnv, data};
use crate::config::LiveBench;
use crate::proto::{
    self as pb, contact_service_client::ContactServiceClient,
    query_service_client::QueryServiceClient, segment_service_client::SegmentServiceClient,
};

const WS: &str = "live";

const SEGMENTS: [(&str, &str); 20] = [
    ("recent buyers", "event(purchase, last 30d)"),
    ("repeat buyers", "event(purchase, last 90d).count >= 2"),
    (
        "cart, no purchase",
        "event(cart_abandoned, last 7d) AND NOT event(purchase, last 7d)",
    ),
    (
        "pricing viewers",
        "event(page_view, last 30d, properties.url = \"/pricing\")",
    ),
    ("email engaged", "event(email_open|email_click, last 30d)"),
    ("inactive 90d", "NOT event(*, last 90d)"),
    ("big spenders", "event(purchase).sum(value) > 500"),
    ("US leads", "label:lead AND country = \"US\""),
    ("hot leads", "label:lead AND lead_score >= 80"),
    ("German customers", "label:customer AND country = \"DE\""),
    ("donors", "label:donor"),
    (
        "opened, no purchase",
        "event(email_open, last 14d) AND NOT event(purchase, last 30d)",
    ),
    (
        "leads who never bought",
        "label:lead AND NOT event(purchase)",
    ),
    ("open deals", "deal(status = open)"),
    ("won big", "deal(status = won).sum(value) > 10000"),
    (
        "bought after a cart",
        "event(purchase, since cart_abandoned)",
    ),
    (
        "French clickers",
        "country = \"FR\" AND event(email_click, last 7d)",
    ),
    (
        "high score, inactive",
        "lead_score >= 50 AND NOT event(*, last 30d)",
    ),
    (
        "US recent buyers",
        "segment(\"recent buyers\") AND country = \"US\"",
    ),
    ("engaged leads", "segment(\"email engaged\") AND label:lead"),
];

const TYPES: [&str; 5] = [
    "page_view",
    "email_open",
    "purchase",
    "cart_abandoned",
    "email_click",
];

/// When a contact was last written: sent, and acknowledged (committed).
type Written = Arc<Mutex<HashMap<i64, (Instant, Option<Instant>)>>>;

/// Generates the data, builds the segments, runs the load, and reports.
///
/// # Errors
/// Setup or a call failed.
pub async fn run(env: &BenchEnv, o: &LiveBench) -> anyhow::Result<()> {
    let started = Instant::now();
    let ws = data::generate(env, WS, &data::Shape::stream(o.contacts)).await?;
    let client = env.pool.get().await?;
    let (lo, hi): (i64, i64) = {
        let r = client
            .query_one(
                "SELECT min(id), max(id) FROM contacts WHERE workspace_id = $1",
                &[&ws.0],
            )
            .await?;
        (r.get(0), r.get(1))
    };
    // The lifecycle rules every new workspace gets would act on each
    // purchaser of the generated history at once (hundreds of thousands of
    // contact writes) if they were built before the load was announced:
    // they stop being live until the other segments are built, and their
    // first build then acts on no one, as for any new live segment. With
    // --no-rules they are dropped, to measure without them.
    let rules: Vec<i64> = client
        .query(
            "SELECT id FROM segments WHERE workspace_id = $1 AND live AND NOT builtin ORDER BY id",
            &[&ws.0],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    client
        .execute(
            "DELETE FROM live_members WHERE workspace_id = $1 AND segment_id = ANY($2)",
            &[&ws.0, &rules],
        )
        .await?;
    client
        .execute(
            "DELETE FROM live_state WHERE workspace_id = $1 AND segment_id = ANY($2)",
            &[&ws.0, &rules],
        )
        .await?;
    let drop_rules = match o.no_rules {
        true => "DELETE FROM segments WHERE workspace_id = $1 AND id = ANY($2)",
        false => "UPDATE segments SET live = false WHERE workspace_id = $1 AND id = ANY($2)",
    };
    client.execute(drop_rules, &[&ws.0, &rules]).await?;
    // The load bypassed segd: tell the maintainer everything changed.
    client
        .execute(
            "INSERT INTO change_queue (workspace_id, keys, cause) VALUES ($1, '{*}', 'bench load')",
            &[&ws.0],
        )
        .await?;
    settle(&client).await?;
    println!(
        "loaded {} contacts with events and deals, built-in live segments built, in {:.1}s",
        o.contacts,
        started.elapsed().as_secs_f64()
    );

    let channel = env.channel().await?;
    let mut segments = SegmentServiceClient::new(channel.clone());
    for (name, text) in SEGMENTS {
        let s = pb::Segment {
            name: name.into(),
            definition: Some(pb::Definition {
                kind: Some(pb::definition::Kind::Filter(text.into())),
            }),
            live: Some(true),
            ..Default::default()
        };
        let r = pb::CreateSegmentRequest { segment: Some(s) };
        segments.create_segment(in_workspace(r, WS)?).await?;
    }
    settle(&client).await?;
    if !o.no_rules {
        let t = Instant::now();
        for id in &rules {
            let r = pb::UpdateSegmentRequest {
                segment: Some(pb::Segment {
                    id: *id,
                    live: Some(true),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["live".into()],
                }),
            };
            segments.update_segment(in_workspace(r, WS)?).await?;
        }
        settle(&client).await?;
        println!(
            "{} lifecycle rules live again and built in {:.1}s (--no-rules drops them)",
            rules.len(),
            t.elapsed().as_secs_f64()
        );
    }
    let mut query = QueryServiceClient::new(channel.clone());
    println!(
        "\n{:<26} {:>9} {:>9} {:>11} {:>11} {:>7}",
        "segment", "members", "build ms", "rebuild ms", "count ms", "ratio"
    );
    let mut worst: f64 = 0.0;
    for (name, _) in SEGMENTS {
        let row = client
            .query_one(
                "SELECT l.eval_ms, l.size FROM live_state l JOIN segments s
                   ON s.workspace_id = l.workspace_id AND s.id = l.segment_id
                 WHERE s.workspace_id = $1 AND s.name = $2",
                &[&ws.0, &name],
            )
            .await?;
        let (build_ms, size): (f64, i64) = (row.get(0), row.get(1));
        // A full rebuild: RebuildSegment evaluates the definition over every
        // contact and applies the differences, as after a redefinition.
        let id: i64 = client
            .query_one(
                "SELECT id FROM segments WHERE workspace_id = $1 AND name = $2",
                &[&ws.0, &name],
            )
            .await?
            .get(0);
        // Each the median of three runs, taken in turns after one untimed
        // turn: whichever ran first would otherwise read the tables from
        // disk for the other (a rebuild run three times before three counts
        // measured 150-390 ms where the counts after it took 45 ms).
        let (mut rebuilds, mut counts) = (Vec::new(), Vec::new());
        for turn in 0..4 {
            let t = Instant::now();
            let r = pb::RebuildSegmentRequest { segment_id: id };
            segments.rebuild_segment(in_workspace(r, WS)?).await?;
            let rebuilt = t.elapsed().as_secs_f64() * 1000.0;
            let t = Instant::now();
            let r = pb::CountMembersRequest {
                selector: Some(pb::SegmentSelector {
                    kind: Some(pb::segment_selector::Kind::SegmentName(name.into())),
                    evaluate: true,
                }),
                ..Default::default()
            };
            query.count_members(in_workspace(r, WS)?).await?;
            if turn > 0 {
                rebuilds.push(rebuilt);
                counts.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (rebuild_ms, count_ms) = (median(rebuilds), median(counts));
        let ratio = rebuild_ms / count_ms;
        worst = worst.max(ratio);
        println!(
            "{name:<26} {size:>9} {build_ms:>9.1} {rebuild_ms:>11.1} {count_ms:>11.1} {ratio:>7.2}"
        );
    }

    // The watcher: every change of every live segment, from now.
    let received: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let watch = {
        let mut q = QueryServiceClient::new(channel.clone());
        let r = pb::WatchMembershipRequest {
            segment_ids: vec![],
            start: Some(pb::watch_membership_request::Start::Now(true)),
        };
        let mut s = q.watch_membership(in_workspace(r, WS)?).await?.into_inner();
        let received = received.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = s.message().await {
                let now = Instant::now();
                let mut r = received.lock().expect("received");
                // Changes the clock made follow no write: they have no
                // write-to-feed latency.
                r.extend(
                    m.changes
                        .iter()
                        .filter(|c| c.cause != "clock")
                        .map(|c| (c.contact_id, now)),
                );
            }
        })
    };

    let written: Written = Arc::default();
    let server_cpu0 = env.server_pid().and_then(cpu_seconds).unwrap_or(0.0);
    let db_ms0 = maintenance_ms(&client).await?;
    let (lag_max, lag_p50, sent, load_s) = load(env, o, lo, hi, &written, &client).await?;
    let load_end = Instant::now();
    settle(&client).await?;
    let catch_up = load_end.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    watch.abort();
    let server_cpu = env.server_pid().and_then(cpu_seconds).unwrap_or(0.0) - server_cpu0;
    let db_ms = maintenance_ms(&client).await? - db_ms0;

    let mut lat: Vec<f64> = {
        let written = written.lock().expect("written");
        received
            .lock()
            .expect("received")
            .iter()
            .filter_map(|(c, at)| {
                let (sent, acked) = written.get(c)?;
                let from = acked.filter(|a| a <= at).unwrap_or(*sent);
                Some(at.saturating_duration_since(from).as_secs_f64() * 1000.0)
            })
            .collect()
    };
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let rate = sent as f64 / load_s;
    let per_k = |x: f64| x / (sent.max(1) as f64 / 1000.0);
    println!(
        "\nload: {sent} events in {load_s:.1}s ({rate:.0}/s) and contact updates; {} membership changes caused by writes seen by the watcher",
        lat.len()
    );
    println!(
        "write-to-feed latency: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "maintenance: {:.1} ms of refresh statements per 1,000 events; segd process CPU {:.2} s per 1,000 events (writes and maintenance)",
        per_k(db_ms),
        per_k(server_cpu)
    );
    println!(
        "queue lag during the load: p50 {lag_p50:.2} s, max {lag_max:.2} s; caught up {:.2} s after the load stopped",
        catch_up.as_secs_f64()
    );
    println!(
        "\nlive_events_per_s={rate:.0} p50_ms={:.0} p99_ms={:.0} max_ms={:.0} rebuild_ratio_worst={worst:.2}",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}

/// Waits until nothing is queued and every live segment is built.
async fn settle(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    loop {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM change_queue)
                      + (SELECT count(*) FROM segments s LEFT JOIN live_state l
                           ON l.workspace_id = s.workspace_id AND l.segment_id = s.id
                         WHERE s.live AND s.enabled AND l.built_version IS DISTINCT FROM s.version)",
                &[],
            )
            .await?;
        if row.get::<_, i64>(0) == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Time spent in refresh statements so far, in milliseconds.
async fn maintenance_ms(client: &tokio_postgres::Client) -> anyhow::Result<f64> {
    Ok(client
        .query_one(
            "SELECT coalesce(sum(eval_ms_total), 0)::float8 FROM live_state",
            &[],
        )
        .await?
        .get(0))
}

/// Runs the write load; returns the queue lag's max and median (s), the
/// events sent, and how long the load took.
async fn load(
    env: &BenchEnv,
    o: &LiveBench,
    lo: i64,
    hi: i64,
    written: &Written,
    client: &tokio_postgres::Client,
) -> anyhow::Result<(f64, f64, usize, f64)> {
    let channel = env.channel().await?;
    let mut contacts = ContactServiceClient::new(channel.clone());
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::RecordEventsRequest>(64);
    let mut acks = contacts
        .record_events(in_workspace(ReceiverStream::new(rx), WS)?)
        .await?
        .into_inner();
    let batches: Arc<Mutex<Vec<Vec<i64>>>> = Arc::default();
    let acker = {
        let (batches, written) = (batches.clone(), written.clone());
        tokio::spawn(async move {
            while let Ok(Some(a)) = acks.message().await {
                let now = Instant::now();
                let ids = batches.lock().expect("batches")[a.batch_index as usize].clone();
                let mut w = written.lock().expect("written");
                for c in ids {
                    if let Some(e) = w.get_mut(&c) {
                        e.1 = Some(now);
                    }
                }
            }
        })
    };
    let mut rng = StdRng::seed_from_u64(7);
    let ticks_per_s = 10;
    let per_tick = (o.rate / ticks_per_s).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / ticks_per_s as u64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let (mut sent, mut lags) = (0usize, Vec::new());
    let mut updater = ContactServiceClient::new(channel);
    let mut n = 0u64;
    while started.elapsed() < o.duration {
        tick.tick().await;
        n += 1;
        let now = Instant::now();
        let events: Vec<pb::Event> = (0..per_tick)
            .map(|_| pb::Event {
                contact: Some(pb::ContactRef {
                    key: Some(pb::contact_ref::Key::Id(rng.random_range(lo..=hi))),
                }),
                r#type: TYPES[rng.random_range(0..TYPES.len())].into(),
                value: Some(f64::from(rng.random_range(5..400))),
                ..Default::default()
            })
            .collect();
        let ids: Vec<i64> = events
            .iter()
            .filter_map(|e| match e.contact.as_ref()?.key {
                Some(pb::contact_ref::Key::Id(id)) => Some(id),
                _ => None,
            })
            .collect();
        {
            let mut w = written.lock().expect("written");
            for c in &ids {
                w.insert(*c, (now, None));
            }
        }
        batches.lock().expect("batches").push(ids);
        sent += per_tick;
        tx.send(pb::RecordEventsRequest { events }).await?;
        // Contact updates: a few lead-score changes every tick.
        for _ in 0..2 {
            let id = rng.random_range(lo..=hi);
            let sent_at = Instant::now();
            written.lock().expect("written").insert(id, (sent_at, None));
            let r = pb::UpdateContactRequest {
                contact: Some(pb::Contact {
                    id,
                    lead_score: Some(f64::from(rng.random_range(0..100))),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["lead_score".into()],
                }),
            };
            updater.update_contact(in_workspace(r, WS)?).await?;
            if let Some(e) = written.lock().expect("written").get_mut(&id) {
                e.1 = Some(Instant::now());
            }
        }
        if n.is_multiple_of(5) {
            let lag: f64 = client
                .query_one(
                    "SELECT coalesce(extract(epoch FROM clock_timestamp() - min(enqueued_at))::float8, 0) FROM change_queue",
                    &[],
                )
                .await?
                .get(0);
            lags.push(lag);
        }
    }
    drop(tx);
    acker.await?;
    let load_s = started.elapsed().as_secs_f64();
    lags.sort_by(f64::total_cmp);
    let max = lags.last().copied().unwrap_or(0.0);
    let p50 = lags.get(lags.len() / 2).copied().unwrap_or(0.0);
    Ok((max, p50, sent, load_s))
}
