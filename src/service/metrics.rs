//! Segment metrics: how segments, or the buckets of one, performed over a
//! time window. One set-based statement per segment counts its members and
//! their events (and for a live segment with history, one more reads its
//! retention from the feed), all in one snapshot; rates, intervals and
//! comparisons are derived from the counts.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::query::{Reader, compile_guarded};
use super::segments::Target;
use crate::db;
use crate::error::{Error, Result, Violation};
use crate::model::WorkspaceId;
use crate::model::metrics::{Comparison, Counts, EventTypes, compare};
use crate::segment::render::{Metrics, Query, Select};

/// What to measure.
#[derive(Debug, Clone)]
pub struct Ask {
    /// The segments (with a split, exactly one).
    pub targets: Vec<Target>,
    /// The window's start, included.
    pub from: DateTime<Utc>,
    /// The window's end, excluded.
    pub to: DateTime<Utc>,
    /// Bucket count and salt of a split.
    pub split: Option<(i32, String)>,
    /// Run inline definitions whatever their cost.
    pub allow_expensive: bool,
}

/// One segment's or bucket's counts.
#[derive(Debug, Clone)]
pub struct Group {
    /// The saved segment's id and name.
    pub segment: Option<(i64, String)>,
    /// The bucket of a split, else 0.
    pub bucket: i32,
    /// Members came from stored live membership.
    pub from_live: bool,
    /// What was counted.
    pub counts: Counts,
}

/// The groups, their comparisons with the first, and the types counted.
#[derive(Debug, Clone)]
pub struct Report {
    /// In request order, or bucket order.
    pub groups: Vec<Group>,
    /// Each group's rates against the first group's.
    pub comparisons: Vec<Comparison>,
    /// The event types counted.
    pub types: EventTypes,
}

impl Reader<'_> {
    /// Measures `ask` at `now`.
    ///
    /// # Errors
    /// As [`compile_guarded`]; the database is unavailable or timed out.
    pub async fn metrics(&self, ws: WorkspaceId, ask: &Ask, now: DateTime<Utc>) -> Result<Report> {
        self.within(ws, async |tx| {
            // JIT compiled these statements for 0.4 s of a 1 s run on 76k
            // members (the planner cannot size the members' CTE).
            tx.batch_execute(
                "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET LOCAL jit = off",
            )
            .await?;
            let types = db::metrics::settings(tx, ws).await?;
            let m = Metrics {
                from: ask.from,
                to: ask.to,
                types,
                split: ask.split.clone(),
            };
            let mut groups = Vec::new();
            for target in &ask.targets {
                let t = compile_guarded(tx, ws, target, now, self.max_cost, ask.allow_expensive)
                    .await?;
                let q = t.compiled.render(&Query::of(Select::Metrics(&m)));
                let rows = tx.query_typed(&q.sql, &q.typed()).await?;
                // Every bucket listed, the empty ones too.
                let n = ask.split.as_ref().map_or(1, |(n, _)| *n);
                let mut by: BTreeMap<i32, Counts> =
                    (0..n).map(|g| (g, Counts::default())).collect();
                for r in &rows {
                    by.insert(
                        r.get(0),
                        Counts {
                            members: r.get(1),
                            openers: r.get(2),
                            clickers: r.get(3),
                            clicked_openers: r.get(4),
                            opens: r.get(5),
                            clicks: r.get(6),
                            purchasers: r.get(7),
                            orders: r.get(8),
                            repeat_purchasers: r.get(9),
                            revenue: r.get(10),
                            retention: None,
                        },
                    );
                }
                let from_live = t.live().is_some();
                if let Some(s) = t.segment.as_ref().filter(|_| from_live) {
                    let since = db::metrics::history_from(tx, ws, s.id).await?;
                    if since.is_some_and(|h| h <= ask.from) {
                        for c in by.values_mut() {
                            c.retention = Some((0, 0));
                        }
                        let split = ask.split.as_ref().map(|(n, s)| (*n, s.as_str()));
                        let kept =
                            db::metrics::retention(tx, ws, s.id, (ask.from, ask.to), split).await?;
                        for (g, start, still) in kept {
                            if let Some(c) = by.get_mut(&g) {
                                c.retention = Some((start, still));
                            }
                        }
                    }
                }
                let segment = t.segment.as_ref().map(|s| (s.id, s.name.clone()));
                groups.extend(by.into_iter().map(|(bucket, counts)| Group {
                    segment: segment.clone(),
                    bucket,
                    from_live,
                    counts,
                }));
            }
            let counts: Vec<Counts> = groups.iter().map(|g| g.counts.clone()).collect();
            Ok(Report {
                comparisons: compare(&counts),
                groups,
                types: m.types,
            })
        })
        .await
    }
}

/// Changes workspace `ws`'s event types to what `change` makes of the
/// current ones, one change at a time per workspace (a masked change keeps
/// the other roles as they are).
///
/// # Errors
/// `InvalidArgument` with `change`'s violations (nothing is written); the
/// database is unavailable.
pub async fn update_settings(
    pool: &crate::db::Pool,
    ws: WorkspaceId,
    change: impl FnOnce(&EventTypes) -> std::result::Result<EventTypes, Vec<Violation>>,
) -> Result<EventTypes> {
    let mut client = db::scope::Scoped::get(pool, ws).await?;
    client
        .run_tx(None, false, async |tx| {
            db::metrics::lock_settings(&**tx, ws).await?;
            let current = db::metrics::settings(&**tx, ws).await?;
            let t = change(&current).map_err(Error::InvalidArgument)?;
            db::metrics::set_settings(&**tx, ws, &t).await?;
            Ok(t)
        })
        .await
}
