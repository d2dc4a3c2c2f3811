//! Keeping planner statistics fresh for what segd writes.
//!
//! Every index leads with `workspace_id`, and PostgreSQL plans a workspace
//! by what its statistics say about that value. A workspace newer than the
//! statistics looks like one row, and plans built on that scan it once per
//! key or per contact: a new workspace's first segment query ran over 1,000×
//! slower. Autovacuum does not help in time: it analyzes a table after 10% of
//! it changed, which a small workspace in a large table may never reach.
//!
//! So writers report the rows they insert per table and workspace
//! ([`Statistics::inserted`], a counter bump: the write path never waits),
//! and a background task compares those counts with what the planner
//! believes: once a workspace has gained at least `min_rows` rows and at least
//! half as many as the planner's estimate for it, the table is analyzed. A
//! new workspace is analyzed after its first `min_rows` rows and then each
//! time it has grown by half; an established one rarely. Replicas coordinate
//! through a PostgreSQL advisory lock per table: one analyzes, the others
//! skip, and all see the new statistics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::db::Pool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::error::Result;
use crate::model::WorkspaceId;

/// A table segd inserts into in bulk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// `contacts`.
    Contacts,
    /// `events`.
    Events,
    /// `deals`.
    Deals,
    /// `live_members`, written by the live-segment maintainer.
    LiveMembers,
}

impl Table {
    /// The table's name (a fixed identifier, never caller input).
    pub fn name(self) -> &'static str {
        match self {
            Table::Contacts => "contacts",
            Table::Events => "events",
            Table::Deals => "deals",
            Table::LiveMembers => "live_members",
        }
    }

    /// What refreshes its statistics after bulk writes. Stored membership is
    /// read index-only (refreshes, rebuilds, reads of live segments), so it
    /// is vacuumed too: fresh pages are not all-visible until then, and
    /// every read of them visits the heap.
    fn refresh_statement(self) -> String {
        match self {
            Table::LiveMembers => format!("VACUUM (ANALYZE) {}", self.name()),
            _ => format!("ANALYZE {}", self.name()),
        }
    }

    /// The advisory lock key under which one replica analyzes the table.
    pub fn lock_key(self) -> i64 {
        0x5e6d_0000 + self as i64
    }
}

/// When the statistics keeper acts.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Rows a workspace must gain in a table before its estimate is
    /// checked (0 turns the keeper off).
    pub min_rows: u64,
    /// Shortest pause between two passes.
    pub interval: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            min_rows: 1_000,
            interval: Duration::from_secs(1),
        }
    }
}

/// Rows inserted per table and workspace since the table was last
/// analyzed (as far as this process knows), and the keeper's wake-up.
#[derive(Debug, Default)]
pub struct Statistics {
    pending: Mutex<HashMap<(Table, WorkspaceId), u64>>,
    wake: Notify,
    thresholds: Thresholds,
}

impl Statistics {
    /// A keeper with these thresholds (not yet running; see [`Statistics::run`]).
    pub fn new(thresholds: Thresholds) -> Arc<Self> {
        Arc::new(Self {
            thresholds,
            ..Self::default()
        })
    }

    /// Records `rows` new rows of workspace `ws` in `table`. Cheap and
    /// never waits for the database.
    pub fn inserted(&self, table: Table, ws: WorkspaceId, rows: u64) {
        if rows == 0 || self.thresholds.min_rows == 0 {
            return;
        }
        let due = {
            let mut p = self.pending.lock().expect("statistics lock");
            let n = p.entry((table, ws)).or_default();
            *n += rows;
            *n >= self.thresholds.min_rows
        };
        if due {
            self.wake.notify_one();
        }
    }

    /// Runs the keeper until `stop` is cancelled.
    pub async fn run(self: Arc<Self>, pool: Pool, stop: CancellationToken) {
        if self.thresholds.min_rows == 0 {
            return;
        }
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
            }
            if let Err(e) = self.pass(&pool).await {
                tracing::warn!(error = %e, "keeping statistics fresh");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.thresholds.interval) => {}
            }
        }
    }

    /// One pass: checks every workspace past `min_rows` against the
    /// planner's estimate, and analyzes the tables where one has outgrown it.
    ///
    /// # Errors
    /// The database is unavailable.
    pub async fn pass(&self, pool: &Pool) -> Result<Vec<Table>> {
        let due: Vec<((Table, WorkspaceId), u64)> = {
            let p = self.pending.lock().expect("statistics lock");
            p.iter()
                .filter(|(_, n)| **n >= self.thresholds.min_rows)
                .map(|(k, n)| (*k, *n))
                .collect()
        };
        if due.is_empty() {
            return Ok(vec![]);
        }
        let client = db::conn(pool).await?;
        let mut stale: Vec<Table> = Vec::new();
        for ((table, ws), gained) in due {
            if stale.contains(&table) {
                continue;
            }
            let believed = estimate(&client, table, ws).await?;
            if gained as f64 >= believed / 2.0 {
                tracing::info!(
                    table = table.name(),
                    workspace = ws.0,
                    gained,
                    believed,
                    "a workspace outgrew the planner's statistics"
                );
                stale.push(table);
            }
        }
        let mut analyzed = Vec::new();
        for table in stale {
            if analyze(&client, table).await? {
                analyzed.push(table);
            }
            // Analyzed here or by another replica just now: counting
            // starts again either way.
            self.pending
                .lock()
                .expect("statistics lock")
                .retain(|(t, _), _| *t != table);
        }
        Ok(analyzed)
    }
}

/// The planner's row estimate for one workspace in a table.
async fn estimate(client: &db::Conn, table: Table, ws: WorkspaceId) -> Result<f64> {
    // The workspace goes in as a literal (a bigint, so it cannot carry SQL):
    // the estimate must be the one the planner makes for this value.
    let sql = format!(
        "EXPLAIN (FORMAT JSON) SELECT 1 FROM {} WHERE workspace_id = {}",
        table.name(),
        ws.0
    );
    let row = client.query_one(&sql, &[]).await?;
    let plan: serde_json::Value = row.get(0);
    Ok(plan[0]["Plan"]["Plan Rows"].as_f64().unwrap_or(0.0))
}

/// Analyzes `table` unless another replica holds its lock (then it is
/// doing so). Returns whether this call analyzed it.
///
/// # Errors
/// The database is unavailable.
pub async fn analyze(client: &db::Conn, table: Table) -> Result<bool> {
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&table.lock_key()])
        .await?
        .get(0);
    if !locked {
        tracing::info!(table = table.name(), "another segd is analyzing");
        return Ok(false);
    }
    let started = std::time::Instant::now();
    let done = client.batch_execute(&table.refresh_statement()).await;
    client
        .query_one("SELECT pg_advisory_unlock($1)", &[&table.lock_key()])
        .await?;
    done?;
    crate::observe::analyzed(table.name());
    tracing::info!(table = table.name(), elapsed = ?started.elapsed(), "analyzed");
    Ok(true)
}
