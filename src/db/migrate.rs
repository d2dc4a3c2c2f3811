//! Embedded, numbered SQL migrations, applied at start-up under an advisory
//! lock so several replicas can start at once.

use tokio_postgres::Client;

use crate::error::Result;

/// Every migration, in order: (version, name, SQL).
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "contacts", include_str!("migrations/0001_contacts.sql")),
    (2, "segments", include_str!("migrations/0002_segments.sql")),
    (3, "live", include_str!("migrations/0003_live.sql")),
    (4, "actions", include_str!("migrations/0004_actions.sql")),
    (5, "history", include_str!("migrations/0005_history.sql")),
    (6, "metrics", include_str!("migrations/0006_metrics.sql")),
    (
        7,
        "history_columns",
        include_str!("migrations/0007_history_columns.sql"),
    ),
    (
        8,
        "row_security",
        include_str!("migrations/0008_row_security.sql"),
    ),
];

/// Arbitrary key for `pg_advisory_lock`, shared by every segd replica.
const LOCK_KEY: i64 = 0x5e9d_0001;

/// Applies the migrations not yet applied, each in its own transaction, and
/// returns how many ran.
///
/// # Errors
/// A migration failed (it is rolled back) or the database is unreachable.
pub async fn migrate(client: &mut Client) -> Result<usize> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = apply(client).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let n = result?;
    unlock?;
    Ok(n)
}

async fn apply(client: &mut Client) -> Result<usize> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS segd_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let done: Vec<i32> = client
        .query("SELECT version FROM segd_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut ran = 0;
    for (version, name, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO segd_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, name, "applied migration");
        ran += 1;
    }
    Ok(ran)
}
