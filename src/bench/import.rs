//! `segd bench import`: BatchUpsertContacts throughput.

use std::time::Instant;

use crate::config::ImportBench;
use crate::proto::{self as pb, contact_service_client::ContactServiceClient};

use super::BenchEnv;

/// Imports `--contacts` generated contacts twice (create, then an
/// idempotent re-import) and prints contacts per second for each.
///
/// # Errors
/// A call failed or rows were rejected.
pub async fn run(env: &BenchEnv, o: &ImportBench) -> anyhow::Result<()> {
    let mut client = ContactServiceClient::new(env.channel().await?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let batches: Vec<pb::BatchUpsertContactsRequest> = (0..o.contacts)
        .collect::<Vec<_>>()
        .chunks(o.batch_size.max(1))
        .map(|ids| pb::BatchUpsertContactsRequest {
            contacts: ids.iter().map(|i| contact(*i)).collect(),
        })
        .collect();
    let mut figures = Vec::new();
    for pass in ["create", "reimport"] {
        let start = Instant::now();
        let mut req = tonic::Request::new(tokio_stream::iter(batches.clone()));
        req.metadata_mut()
            .insert("x-segd-workspace", "bench".parse()?);
        let mut acks = client.batch_upsert_contacts(req).await?.into_inner();
        // Each batch is acknowledged; the last acknowledgement has the totals.
        let mut resp = pb::BatchUpsertContactsResponse::default();
        while let Some(ack) = acks.message().await? {
            resp = ack;
        }
        let secs = start.elapsed().as_secs_f64();
        anyhow::ensure!(resp.failed == 0, "{} rows failed", resp.failed);
        let rate = o.contacts as f64 / secs;
        println!(
            "{pass:>8}: {} contacts in {secs:.2}s = {rate:.0} contacts/s (created {}, updated {}, unchanged {})",
            o.contacts, resp.created, resp.updated, resp.unchanged
        );
        figures.push(rate);
    }
    println!(
        "import_contacts={} batch_size={} create_per_s={:.0} reimport_per_s={:.0}",
        o.contacts, o.batch_size, figures[0], figures[1]
    );
    Ok(())
}

fn contact(i: usize) -> pb::Contact {
    const COUNTRIES: [&str; 6] = ["US", "CA", "GB", "DE", "FR", "BR"];
    const TAGS: [&str; 5] = ["vip", "newsletter", "webinar", "partner", "trial"];
    pb::Contact {
        external_id: format!("ext-{i}"),
        email: format!("contact{i}@example.com"),
        first_name: format!("First{i}"),
        last_name: format!("Last{}", i % 997),
        country: COUNTRIES[i % COUNTRIES.len()].into(),
        city: format!("City{}", i % 500),
        source_channel: (1 + i % 8) as i32,
        labels: vec![
            if i.is_multiple_of(3) {
                "customer"
            } else {
                "lead"
            }
            .into(),
        ],
        tags: vec![
            TAGS[i % TAGS.len()].into(),
            TAGS[(i / 5) % TAGS.len()].into(),
        ],
        lead_score: Some((i % 100) as f64),
        status: ["in_progress", "rejected", "regular"][i % 3].into(),
        birth_date: format!("{}-{:02}-{:02}", 1950 + i % 50, 1 + i % 12, 1 + i % 28),
        ..Default::default()
    }
}
