//! Generated benchmark data: contacts, events and deals loaded by `COPY`
//! into tables whose secondary indexes are dropped first and rebuilt after,
//! the fastest way PostgreSQL takes a bulk load.

use futures::SinkExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::BenchEnv;
use crate::model::WorkspaceId;

/// How much to generate.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Contacts.
    pub contacts: usize,
    /// Events per contact are uniform over `0..=max_events` (mean half).
    pub max_events: usize,
}

impl Shape {
    /// About 3 events per contact: the streaming benchmark.
    pub fn stream(contacts: usize) -> Self {
        Self {
            contacts,
            max_events: 6,
        }
    }

    /// About 5 events per contact: the SQL benchmark.
    pub fn sql(contacts: usize) -> Self {
        Self {
            contacts,
            max_events: 10,
        }
    }
}

const COUNTRIES: [&str; 6] = ["US", "CA", "GB", "DE", "FR", "BR"];
const LABELS: [&str; 5] = [
    "{lead}",
    "{customer}",
    "{lead,subscriber}",
    "{donor}",
    "{staff}",
];
const TYPES: [&str; 5] = [
    "page_view",
    "email_open",
    "purchase",
    "cart_abandoned",
    "email_click",
];
const PAGES: [&str; 6] = [
    "/pricing",
    "/pricing/enterprise",
    "/blog/segments",
    "/docs/start",
    "/",
    "/about",
];

/// Loads contacts (demographics, labels, tags, lead scores), events (page
/// views with urls, purchases with products and amounts, carts, emails) over
/// the last year, and deals (0 to 3 for one contact in five) into workspace
/// `workspace`, then analyzes the tables.
///
/// # Errors
/// A statement failed.
pub async fn generate(
    env: &BenchEnv,
    workspace: &str,
    shape: &Shape,
) -> anyhow::Result<WorkspaceId> {
    let n = shape.contacts;
    let ws = crate::db::workspaces::Workspaces::new(env.pool.clone())
        .resolve(workspace)
        .await?;
    let client = env.pool.get().await?;
    let indexes: Vec<(String, String)> = client
        .query(
            "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index
             WHERE indrelid::regclass::text IN ('contacts', 'events', 'deals') AND NOT indisprimary",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (name, _) in &indexes {
        client.batch_execute(&format!("DROP INDEX {name}")).await?;
    }
    let mut rng = StdRng::seed_from_u64(7);
    let now = chrono::Utc::now();
    let today = now.date_naive();
    let ws_id = ws.0;

    let mut lines = Vec::with_capacity(n);
    for i in 1..=n {
        let label = LABELS[if rng.random_bool(0.02) {
            4
        } else {
            rng.random_range(0..4)
        }];
        let birth = if rng.random_bool(0.8) {
            (today - chrono::Duration::days(rng.random_range(6_000..30_000))).to_string()
        } else {
            "\\N".into()
        };
        lines.push(format!(
            "{ws_id}\t{i}\tx{i}\tc{i}@example.com\t{}\t{label}\t{}\t{}\t{}\t{birth}\n",
            COUNTRIES[rng.random_range(0..COUNTRIES.len())],
            rng.random_range(0..100),
            (now - chrono::Duration::days(rng.random_range(0..1500))).to_rfc3339(),
            if rng.random_bool(0.3) { "{vip}" } else { "{}" }
        ));
    }
    copy(&client, "COPY contacts (workspace_id, id, external_id, email, country, labels, lead_score, created_at, tags, birth_date) FROM STDIN", lines).await?;
    client
        .execute(
            "SELECT setval(pg_get_serial_sequence('contacts', 'id'), $1)",
            &[&(n as i64)],
        )
        .await?;

    let mut events = 0;
    let mut lines = Vec::with_capacity(100_000);
    let sink = client
        .copy_in::<_, bytes::Bytes>(
            "COPY events (workspace_id, contact_id, type, occurred_at, value, properties) FROM STDIN",
        )
        .await?;
    futures::pin_mut!(sink);
    for c in 1..=n {
        for _ in 0..rng.random_range(0..=shape.max_events) {
            let t = TYPES[rng.random_range(0..TYPES.len())];
            let (value, props) = match t {
                "purchase" => (
                    rng.random_range(5..500).to_string(),
                    format!("{{\"product_id\": \"p{}\"}}", rng.random_range(0..50)),
                ),
                "page_view" => (
                    "\\N".into(),
                    format!(
                        "{{\"url\": \"{}\"}}",
                        PAGES[rng.random_range(0..PAGES.len())]
                    ),
                ),
                _ => (
                    "\\N".into(),
                    format!("{{\"campaign\": \"c{}\"}}", rng.random_range(0..20)),
                ),
            };
            lines.push(format!(
                "{ws_id}\t{c}\t{t}\t{}\t{value}\t{props}\n",
                (now - chrono::Duration::minutes(rng.random_range(0..525_600))).to_rfc3339(),
            ));
        }
        if lines.len() >= 50_000 {
            events += lines.len();
            sink.send(bytes::Bytes::from(lines.concat())).await?;
            lines.clear();
        }
    }
    events += lines.len();
    sink.send(bytes::Bytes::from(lines.concat())).await?;
    sink.finish().await?;

    let mut lines = Vec::new();
    for c in 1..=n {
        if !rng.random_bool(0.2) {
            continue;
        }
        for _ in 0..rng.random_range(1..=3) {
            lines.push(format!(
                "{ws_id}\t{c}\t{}\t{}\t{}\n",
                ["open", "won", "lost"][rng.random_range(0..3)],
                ["qualification", "negotiation", "closing"][rng.random_range(0..3)],
                rng.random_range(100..50_000)
            ));
        }
    }
    let deals = lines.len();
    copy(
        &client,
        "COPY deals (workspace_id, contact_id, status, stage, value) FROM STDIN",
        lines,
    )
    .await?;
    for (_, def) in &indexes {
        client.batch_execute(def).await?;
    }
    client
        .batch_execute("VACUUM ANALYZE contacts, events, deals")
        .await?;
    println!("loaded {n} contacts, {events} events, {deals} deals");
    Ok(ws)
}

async fn copy(
    client: &tokio_postgres::Client,
    sql: &str,
    lines: Vec<String>,
) -> anyhow::Result<()> {
    let sink = client.copy_in::<_, bytes::Bytes>(sql).await?;
    futures::pin_mut!(sink);
    for chunk in lines.chunks(10_000) {
        sink.send(bytes::Bytes::from(chunk.concat())).await?;
    }
    sink.finish().await?;
    Ok(())
}
