//! `segd bench fresh`: writes and segment queries on a workspace newer than
//! the planner's statistics, against the same on one they describe.
//!
//! Workspace `a` is loaded and analyzed, and autovacuum is turned off for the
//! benchmark's tables, so only segd can refresh statistics. Then the same
//! import (contacts, then their events, through the gRPC API) runs into `a`,
//! which the statistics know, and into a new workspace `b`, which they do
//! not. Segment counts on `b` are timed right after its import and again
//! after a manual ANALYZE. The last line gives the worst "fresh over
//! analyzed" ratios: how much slower segd is on data the statistics have not
//! seen (1.0: no slower).

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{BenchEnv, data};
use crate::config::FreshBench;
use crate::proto::{
    self as pb, contact_service_client::ContactServiceClient,
    query_service_client::QueryServiceClient, segment_service_client::SegmentServiceClient,
};

/// Segments timed on the new workspace: the shapes that degraded most.
const SEGMENTS: &[(&str, &str)] = &[
    (
        "abandoned a cart in 7 days, no purchase in 7 days",
        "event(cart_abandoned, last 7d) AND NOT event(purchase, last 7d)",
    ),
    (
        "subscribed, no email opened in 90 days",
        "subscription(email, subscribed) AND NOT event(email_open, last 90d)",
    ),
    (
        "bought twice in 90 days",
        "event(purchase, last 90d).count >= 2",
    ),
    ("US leads", "label:lead AND country = \"US\""),
    (
        "viewed /pricing in 30 days",
        "event(page_view, last 30d, properties.url = \"/pricing\")",
    ),
];

/// Runs the benchmark and prints its table.
///
/// # Errors
/// Setup or a call failed.
pub async fn run(env: &BenchEnv, o: &FreshBench) -> anyhow::Result<()> {
    let started = Instant::now();
    data::generate(env, "a", &data::Shape::sql(o.analyzed_contacts)).await?;
    println!(
        "workspace a generated in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let client = env.pool.get().await?;
    client
        .batch_execute(
            "ALTER TABLE contacts SET (autovacuum_enabled = false);
             ALTER TABLE events SET (autovacuum_enabled = false);
             ALTER TABLE deals SET (autovacuum_enabled = false);",
        )
        .await?;
    let channel = env.channel().await?;
    let mut contacts = ContactServiceClient::new(channel.clone())
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);

    let analyses = async || -> anyhow::Result<i64> {
        Ok(client
            .query_one(
                "SELECT sum(analyze_count)::bigint FROM pg_stat_user_tables
                 WHERE relname IN ('contacts', 'events', 'deals')",
                &[],
            )
            .await?
            .get(0))
    };
    let known = import(&mut contacts, "a", "fa", o.contacts).await?;
    let before = analyses().await?;
    let fresh = import(&mut contacts, "b", "fb", o.contacts).await?;
    let by_segd = analyses().await? - before;

    let mut segments = SegmentServiceClient::new(channel.clone());
    for (name, text) in SEGMENTS {
        let segment = pb::Segment {
            name: (*name).into(),
            definition: Some(pb::Definition {
                kind: Some(pb::definition::Kind::Filter((*text).into())),
            }),
            ..Default::default()
        };
        let r = pb::CreateSegmentRequest {
            segment: Some(segment),
        };
        segments.create_segment(in_workspace(r, "b")?).await?;
    }
    let mut query = QueryServiceClient::new(channel);
    let mut fresh_ms = Vec::new();
    for (name, _) in SEGMENTS {
        fresh_ms.push(count(&mut query, name, o).await?);
    }
    client
        .batch_execute("ANALYZE contacts, events, deals")
        .await?;
    let mut analyzed_ms = Vec::new();
    for (name, _) in SEGMENTS {
        analyzed_ms.push(count(&mut query, name, o).await?);
    }

    println!("\nsegd ran ANALYZE {by_segd} times during workspace b's import (autovacuum off)\n");
    println!(
        "{:<58} {:>12} {:>12} {:>8}",
        "what", "analyzed", "fresh", "ratio"
    );
    let mut import_worst: f64 = 0.0;
    for (what, a, f) in [
        ("BatchUpsertContacts, contacts/s", known.0, fresh.0),
        ("RecordEvents, events/s", known.1, fresh.1),
    ] {
        let ratio = a / f;
        import_worst = import_worst.max(ratio);
        println!("{what:<58} {a:>12.0} {f:>12.0} {ratio:>8.2}");
    }
    let mut query_worst: f64 = 0.0;
    for (((name, _), f), a) in SEGMENTS.iter().zip(&fresh_ms).zip(&analyzed_ms) {
        let ratio = f.ms / a.ms;
        query_worst = query_worst.max(ratio);
        println!(
            "{:<58} {:>12} {:>12} {ratio:>8.2}",
            format!("{name} ({} members), ms", a.members),
            format!("{:.1}", a.ms),
            f.shown(),
        );
        anyhow::ensure!(
            f.members == a.members,
            "{name}: {} members fresh, {} after ANALYZE",
            f.members,
            a.members
        );
    }
    println!(
        "\nanalyzed_contacts={} imported_contacts={} fresh_import_ratio={import_worst:.2} fresh_query_ratio_worst={query_worst:.2}",
        o.analyzed_contacts, o.contacts
    );
    Ok(())
}

/// Imports `n` contacts (keys `<prefix><i>`) and about three events each
/// into `workspace`; returns contacts per second and events per second.
async fn import(
    c: &mut ContactServiceClient<tonic::transport::Channel>,
    workspace: &str,
    prefix: &str,
    n: usize,
) -> anyhow::Result<(f64, f64)> {
    let people: Vec<pb::BatchUpsertContactsRequest> = (0..n)
        .collect::<Vec<_>>()
        .chunks(2_000)
        .map(|ids| pb::BatchUpsertContactsRequest {
            contacts: ids.iter().map(|i| person(prefix, *i)).collect(),
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(11);
    let now = chrono::Utc::now().timestamp();
    let events: Vec<pb::Event> = (0..n)
        .flat_map(|i| {
            let k = rng.random_range(0..=6);
            (0..k)
                .map(|_| {
                    let t = ["page_view", "email_open", "purchase", "cart_abandoned"]
                        [rng.random_range(0..4)];
                    let mut props = prost_types::Struct::default();
                    if t == "page_view" {
                        let url = ["/pricing", "/", "/blog"][rng.random_range(0..3)];
                        props.fields.insert(
                            "url".into(),
                            prost_types::Value {
                                kind: Some(prost_types::value::Kind::StringValue(url.into())),
                            },
                        );
                    }
                    pb::Event {
                        contact: Some(pb::ContactRef {
                            key: Some(pb::contact_ref::Key::ExternalId(format!("{prefix}{i}"))),
                        }),
                        r#type: t.into(),
                        occurred_at: Some(prost_types::Timestamp {
                            seconds: now - rng.random_range(0..120 * 86_400),
                            nanos: 0,
                        }),
                        value: (t == "purchase").then(|| rng.random_range(5.0..500.0)),
                        properties: Some(props),
                        ..Default::default()
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let events_n = events.len();
    let events: Vec<pb::RecordEventsRequest> = events
        .chunks(5_000)
        .map(|e| pb::RecordEventsRequest { events: e.to_vec() })
        .collect();

    let t = Instant::now();
    let mut acks = c
        .batch_upsert_contacts(in_workspace(tokio_stream::iter(people), workspace)?)
        .await?
        .into_inner();
    let mut failed = 0;
    while let Some(a) = acks.message().await? {
        failed = a.failed;
    }
    anyhow::ensure!(failed == 0, "{failed} contacts failed");
    let contacts_per_s = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut acks = c
        .record_events(in_workspace(tokio_stream::iter(events), workspace)?)
        .await?
        .into_inner();
    while let Some(a) = acks.message().await? {
        failed = a.failed;
    }
    anyhow::ensure!(failed == 0, "{failed} events failed");
    let events_per_s = events_n as f64 / t.elapsed().as_secs_f64();
    println!(
        "workspace {workspace}: {n} contacts at {contacts_per_s:.0}/s, {events_n} events at {events_per_s:.0}/s"
    );
    Ok((contacts_per_s, events_per_s))
}

/// A request for `workspace`.
pub(crate) fn in_workspace<T>(msg: T, workspace: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("x-segd-workspace", workspace.parse()?);
    Ok(r)
}

fn person(prefix: &str, i: usize) -> pb::Contact {
    pb::Contact {
        external_id: format!("{prefix}{i}"),
        email: format!("{prefix}{i}@example.com"),
        country: ["US", "CA", "DE"][i % 3].into(),
        labels: vec![
            if i.is_multiple_of(4) {
                "customer"
            } else {
                "lead"
            }
            .into(),
        ],
        subscriptions: vec![pb::Subscription {
            channel: pb::SubscriptionChannel::Email as i32,
            status: if i.is_multiple_of(2) {
                pb::SubscriptionStatus::Subscribed
            } else {
                pb::SubscriptionStatus::Unsubscribed
            } as i32,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A timed count: the median of the rounds, or a timeout.
struct Timed {
    ms: f64,
    members: i64,
    timed_out: bool,
}

impl Timed {
    fn shown(&self) -> String {
        if self.timed_out {
            format!("> {:.0}", self.ms)
        } else {
            format!("{:.1}", self.ms)
        }
    }
}

/// Times CountMembers on saved segment `name` of workspace `b`.
async fn count(
    q: &mut QueryServiceClient<tonic::transport::Channel>,
    name: &str,
    o: &FreshBench,
) -> anyhow::Result<Timed> {
    let mut times = Vec::new();
    let mut members = 0;
    for _ in 0..o.rounds.max(1) {
        let selector = pb::SegmentSelector {
            kind: Some(pb::segment_selector::Kind::SegmentName(name.into())),
            evaluate: false,
        };
        let mut r = in_workspace(
            pb::CountMembersRequest {
                selector: Some(selector),
                ..Default::default()
            },
            "b",
        )?;
        r.set_timeout(o.timeout);
        let t = Instant::now();
        match q.count_members(r).await {
            Ok(c) => members = c.into_inner().count,
            Err(e) if e.code() == tonic::Code::DeadlineExceeded => {
                return Ok(Timed {
                    ms: o.timeout.as_secs_f64() * 1000.0,
                    members: -1,
                    timed_out: true,
                });
            }
            Err(e) => return Err(e.into()),
        }
        times.push(t.elapsed());
    }
    times.sort();
    Ok(Timed {
        ms: times[times.len() / 2].as_secs_f64() * 1000.0,
        members,
        timed_out: false,
    })
}
