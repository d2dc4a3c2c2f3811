//! Live segments: stored memberships kept equal to their definitions.
//!
//! Every write queues, in its own transaction, the contacts it touched and
//! what about them changed (`service::writes`). The maintainer drains that
//! queue one workspace at a time, under an advisory lock so that across
//! replicas exactly one maintainer works on a workspace. For a batch of
//! queued writes it re-evaluates only the live segments whose definitions
//! read something the writes changed (`segment::deps`), each with one
//! set-based statement restricted to the batch's contacts, which diffs the
//! stored membership, applies entries and exits, and appends them to the
//! workspace's change feed. Segments run in dependency order (a segment
//! after those it reads), all in one transaction with the queue deletion,
//! so a crash loses nothing and applies nothing twice.
//!
//! Time moves members too: a segment with a window relative to now, a
//! relative date test, an anniversary or an age is evaluated again over
//! every contact once per tick (default 60 s), diffed like any refresh, so
//! nobody is later than a tick. (Narrowing that to the contacts whose
//! window boundaries passed since the last tick is still to come.)
//!
//! A live segment whose stored membership does not reflect its current
//! definition (new, redefined, re-enabled, or after a failed refresh) is
//! rebuilt the same way over every contact; readers keep the old membership
//! until the rebuild commits.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use super::segments::Definitions;
use crate::db::{self, live::Refreshed};
use crate::error::{Error, Result};
use crate::model::WorkspaceId;
use crate::model::deps::affects;
use crate::model::segment::{Definition, Segment, SegmentKind};
use crate::segment::deps;
use crate::segment::lower::lower;
use crate::segment::render::{Query, Refresh, Select};

/// How the maintainer works.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Pause between passes when there is nothing to do.
    pub poll: Duration,
    /// Most contacts re-evaluated in one transaction.
    pub batch_contacts: usize,
    /// How often segments that time alone moves (windows, relative dates,
    /// anniversaries) are evaluated again: nobody is later than this.
    pub tick: Duration,
    /// Changes older than this leave the feed.
    pub retention_age: Duration,
    /// At most this many changes per workspace stay in the feed.
    pub retention_count: i64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(100),
            batch_contacts: 5_000,
            tick: Duration::from_secs(60),
            retention_age: Duration::from_secs(7 * 24 * 3600),
            retention_count: 10_000_000,
        }
    }
}

/// Keeps live segments' stored memberships current.
#[derive(Debug, Clone)]
pub struct Maintainer {
    pool: Pool,
    opts: Options,
}

/// A live segment as one pass sees it.
struct Live<'a> {
    segment: &'a Segment,
    /// What its definition reads (references inlined).
    reads: BTreeSet<String>,
    /// Every segment it reads, directly or not.
    uses: BTreeSet<i64>,
    /// Time alone moves its members.
    timed: bool,
}

impl Maintainer {
    /// A maintainer over `pool`.
    pub fn new(pool: Pool, opts: Options) -> Self {
        Self { pool, opts }
    }

    /// Runs passes until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            let busy = match self.pass().await {
                Ok(n) => n > 0,
                Err(e) => {
                    tracing::warn!(error = %e, "maintaining live segments");
                    false
                }
            };
            if !busy {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(self.opts.poll) => {}
                }
            } else if stop.is_cancelled() {
                return;
            }
        }
    }

    /// One pass: drains what is queued for every workspace (as far as no
    /// other maintainer holds it) and builds what needs building. Returns
    /// how many queued writes and builds it applied.
    ///
    /// # Errors
    /// The database is unavailable.
    pub async fn pass(&self) -> Result<usize> {
        let mut client = db::conn(&self.pool).await?;
        let mut n = 0;
        for ws in db::live::busy(&**client, self.opts.tick).await? {
            loop {
                let done = self.drain(&mut client, ws, false).await?;
                n += done;
                if done == 0 {
                    break;
                }
            }
        }
        Ok(n)
    }

    /// Rebuilds live segment `segment` of `ws` (and what reads it), waiting
    /// for another maintainer if one holds the workspace; returns when the
    /// workspace's queue is drained too.
    ///
    /// # Errors
    /// `FailedPrecondition` when the segment is not live and enabled;
    /// `NotFound`; the database is unavailable.
    pub async fn rebuild(&self, ws: WorkspaceId, segment: i64) -> Result<()> {
        let mut client = db::conn(&self.pool).await?;
        let s =
            db::segments::get(&**client, ws, &crate::segment::ast::SegmentRef::Id(segment)).await?;
        if !(s.live && s.enabled) {
            return Err(Error::FailedPrecondition(format!(
                "segment {:?} is not a live, enabled segment; make it live with UpdateSegment",
                s.name
            )));
        }
        db::live::invalidate(&**client, ws, segment).await?;
        while self.drain(&mut client, ws, true).await? > 0 {}
        Ok(())
    }

    /// Applies one batch of workspace `ws`'s queue, and builds its live
    /// segments that need it; returns how much it applied (0: nothing to
    /// do, or another maintainer holds the workspace).
    async fn drain(&self, client: &mut db::Conn, ws: WorkspaceId, wait: bool) -> Result<usize> {
        let mut tx = client.transaction().await?;
        if wait {
            db::live::lock(&*tx, ws).await?;
        } else if !db::live::try_lock(&*tx, ws).await? {
            return Ok(0);
        }
        let now = Utc::now();
        let segments = db::segments::all(&*tx, ws).await?;
        let defs = Definitions::load(&*tx, ws).await?;
        let live = live_segments(&segments, &defs);
        let mut queued = db::live::queued(&*tx, ws, 500).await?;
        let mut ids: BTreeSet<i64> = BTreeSet::new();
        let mut keys: BTreeSet<String> = BTreeSet::new();
        let mut whole_keys: BTreeSet<String> = BTreeSet::new();
        let mut causes: BTreeSet<String> = BTreeSet::new();
        let mut take = 0;
        for q in &queued {
            if take > 0 && ids.len() + q.ids.as_ref().map_or(0, Vec::len) > self.opts.batch_contacts
            {
                break;
            }
            take += 1;
            causes.insert(q.cause.clone());
            match &q.ids {
                Some(v) => {
                    ids.extend(v);
                    keys.extend(q.keys.iter().cloned());
                }
                None => whole_keys.extend(q.keys.iter().cloned()),
            }
        }
        queued.truncate(take);

        // What to rebuild over every contact: segments not built from their
        // current definition, those a whole-workspace change affects, and
        // everything that reads one of them.
        let last_tick = ago(now, self.opts.tick);
        let due = |l: &Live| {
            l.timed
                && l.segment
                    .live_state
                    .as_ref()
                    .and_then(|s| s.evaluated_at)
                    .is_none_or(|t| t <= last_tick)
        };
        let mut whole: HashSet<i64> = live
            .iter()
            .filter(|l| !l.segment.stored() || reads_any(&l.reads, &whole_keys) || due(l))
            .map(|l| l.segment.id)
            .collect();
        let readers: Vec<i64> = live
            .iter()
            .filter(|l| l.uses.iter().any(|u| whole.contains(u)))
            .map(|l| l.segment.id)
            .collect();
        whole.extend(readers);
        let some: Vec<&Live> = live
            .iter()
            .filter(|l| {
                !whole.contains(&l.segment.id) && !ids.is_empty() && reads_any(&l.reads, &keys)
            })
            .collect();
        if queued.is_empty() && whole.is_empty() {
            return Ok(0);
        }

        let ids: Vec<i64> = ids.into_iter().collect();
        let cause = if causes.is_empty() {
            "rebuild".to_string()
        } else {
            causes.into_iter().collect::<Vec<_>>().join(",")
        };
        let mut offset = db::live::feed_offset(&*tx, ws).await?;
        let first = offset;
        let mut work: Vec<(&Live, bool)> = live
            .iter()
            .filter(|l| whole.contains(&l.segment.id))
            .map(|l| (l, true))
            .chain(some.into_iter().map(|l| (l, false)))
            .collect();
        // A segment after every segment it reads.
        work.sort_by_key(|(l, _)| l.uses.len());
        let built = work.iter().filter(|(_, all)| *all).count();
        for (l, all) in work {
            let s = l.segment;
            let why = match (all, s.stored()) {
                (false, _) => cause.clone(),
                (true, false) => "rebuild".into(),
                (true, true) if due(l) => "clock".into(),
                (true, true) => cause.clone(),
            };
            let refresh = Refresh {
                segment: s.id,
                base: offset,
                cause: why,
                at: now,
            };
            let only = (!all).then_some(ids.as_slice());
            let sp = tx.savepoint("refresh").await?;
            let started = Instant::now();
            match refresh_one(&*sp, ws, s, &defs, &refresh, only, now).await {
                Ok((entered, exited)) => {
                    sp.commit().await?;
                    offset += entered + exited;
                    let r = Refreshed {
                        entered,
                        exited,
                        ms: started.elapsed().as_secs_f64() * 1000.0,
                        built: all.then_some(s.version),
                        timed: l.timed,
                    };
                    db::live::record(&*tx, ws, s.id, r, now).await?;
                }
                Err(e) => {
                    sp.rollback().await?;
                    tracing::warn!(ws = ws.0, segment = s.id, error = %e, "refreshing a live segment; it will be rebuilt");
                    db::live::failed(&*tx, ws, s.id, &crate::error::clip(&e.to_string(), 500))
                        .await?;
                }
            }
        }
        if offset > first {
            db::live::set_feed_offset(&*tx, ws, offset).await?;
            db::feed::notify(&*tx, ws).await?;
            let before = ago(now, self.opts.retention_age);
            db::feed::trim(&*tx, ws, before, self.opts.retention_count).await?;
        }
        let seqs: Vec<i64> = queued.iter().map(|q| q.seq).collect();
        db::live::done(&*tx, ws, &seqs).await?;
        tx.commit().await?;
        Ok(seqs.len() + built)
    }
}

/// `d` before `now`, or the beginning of time.
fn ago(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Whether a definition reading `reads` may be affected by writes of `keys`.
fn reads_any(reads: &BTreeSet<String>, keys: &BTreeSet<String>) -> bool {
    keys.iter().any(|k| reads.iter().any(|r| affects(k, r)))
}

/// The workspace's maintained segments (live, enabled, dynamic) whose
/// definitions check, with what they read.
fn live_segments<'a>(segments: &'a [Segment], defs: &Definitions) -> Vec<Live<'a>> {
    let inlined = defs.inlined();
    segments
        .iter()
        .filter(|s| s.live && s.enabled && s.kind == SegmentKind::Dynamic)
        .filter_map(|s| {
            let rule = s.rule.clone()?;
            let v = inlined
                .validate(&Definition::saved(rule, &s.name), None)
                .ok()?;
            Some(Live {
                segment: s,
                reads: deps::of(&v.checked.pred),
                uses: v.checked.uses.iter().copied().collect(),
                timed: deps::timed(&v.checked.pred),
            })
        })
        .collect()
}

/// One segment's refresh: returns (entries, exits).
async fn refresh_one(
    tx: &impl tokio_postgres::GenericClient,
    ws: WorkspaceId,
    s: &Segment,
    defs: &Definitions,
    refresh: &Refresh,
    only: Option<&[i64]>,
    now: DateTime<Utc>,
) -> Result<(i64, i64)> {
    let rule = s.rule.clone().expect("a live segment has a definition");
    let v = defs.validate(&Definition::saved(rule, &s.name), Some(s.id))?;
    let plan = lower(&v.checked.pred, ws, now);
    let q = Query {
        only,
        ..Query::of(Select::Refresh(refresh))
    };
    let r = plan.render(&q);
    let rows = tx.query_typed(&r.sql, &r.typed()).await?;
    let row = rows
        .first()
        .ok_or_else(|| crate::error::Error::internal("a refresh returns one row"))?;
    Ok((row.get(0), row.get(1)))
}

/// How a live segment's stored members differ from its definition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Drift {
    /// Selected by the definition, not stored.
    pub missing: i64,
    /// Up to 100 of them.
    pub missing_ids: Vec<i64>,
    /// Stored, not selected.
    pub extra: i64,
    /// Up to 100 of them.
    pub extra_ids: Vec<i64>,
    /// Writes not yet applied when the check ran.
    pub pending: i64,
}

/// Compares live segment `segment`'s stored members with a from-scratch
/// evaluation, in one snapshot.
///
/// # Errors
/// `FailedPrecondition` when the segment is not live and built; `NotFound`;
/// the database is unavailable or timed out.
pub async fn verify(
    client: &mut db::Conn,
    ws: WorkspaceId,
    segment: i64,
    now: DateTime<Utc>,
) -> Result<Drift> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let s = db::segments::get(&*tx, ws, &crate::segment::ast::SegmentRef::Id(segment)).await?;
    if !s.stored() {
        return Err(Error::FailedPrecondition(format!(
            "segment {:?} has no current stored members: it is not live and enabled, or not built yet",
            s.name
        )));
    }
    let defs = Definitions::load(&*tx, ws).await?.inlined();
    let rule = s.rule.clone().expect("a live segment has a definition");
    let v = defs.validate(&Definition::saved(rule, &s.name), Some(s.id))?;
    let r = lower(&v.checked.pred, ws, now).render(&Query::of(Select::Drift(s.id)));
    let rows = tx.query_typed(&r.sql, &r.typed()).await?;
    let row = rows
        .first()
        .ok_or_else(|| Error::internal("a drift check returns one row"))?;
    let pending = db::live::pending(&*tx, ws).await?;
    tx.commit().await?;
    Ok(Drift {
        missing: row.get(0),
        extra: row.get(1),
        missing_ids: row.get(2),
        extra_ids: row.get(3),
        pending,
    })
}
