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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::db::Pool;
use crate::db::scope::Scoped;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::segments::Definitions;
use super::stats::{self, Statistics, Table};
use super::writes;
use crate::clock::Clock;
use crate::db::{self, live::Refreshed};
use crate::error::{Error, Result};
use crate::model::WorkspaceId;
use crate::model::action::Trigger;
use crate::model::deps::affects;
use crate::model::segment::{Definition, Segment, SegmentKind};
use crate::segment::deps::{self, Edge};
use crate::segment::lower::lower;
use crate::segment::plan::Plan;
use crate::segment::render::{Query, Refresh, Select};
use crate::segment::time;

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
    /// Most segment actions in a chain.
    pub max_action_depth: i32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(100),
            batch_contacts: 5_000,
            tick: Duration::from_secs(60),
            retention_age: Duration::from_secs(7 * 24 * 3600),
            retention_count: 10_000_000,
            max_action_depth: 8,
        }
    }
}

/// Keeps live segments' stored memberships current.
#[derive(Debug, Clone)]
pub struct Maintainer {
    pool: Pool,
    opts: Options,
    /// Told how many members it stores, for fresh planner statistics.
    statistics: Option<Arc<Statistics>>,
    /// The instant definitions are evaluated at.
    clock: Clock,
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
    /// Where time moves its members, when an index can find who is there.
    edges: Option<Vec<Edge>>,
}

impl Maintainer {
    /// A maintainer over `pool`.
    pub fn new(pool: Pool, opts: Options) -> Self {
        Self {
            pool,
            opts,
            statistics: None,
            clock: Clock::default(),
        }
    }

    /// Evaluates definitions at `clock`'s now.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Reports the members it stores to `statistics`, which keeps the
    /// planner's view of `live_members` current.
    pub fn with_statistics(mut self, statistics: Arc<Statistics>) -> Self {
        self.statistics = Some(statistics);
        self
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
        for ws in db::live::busy(&**client, self.clock.now(), self.opts.tick).await? {
            loop {
                let done = self.drain(&mut client, ws, false).await?.done;
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
    /// workspace's queue is drained too. (A failed build leaves its error in
    /// the segment's live state.)
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
        // The first pass builds it (every segment not built from its
        // definition is); more only while writes are left in the queue.
        while self.drain(&mut client, ws, true).await?.more {}
        Ok(())
    }

    /// Applies one batch of workspace `ws`'s queue, and builds its live
    /// segments that need it.
    async fn drain(&self, client: &mut db::Conn, ws: WorkspaceId, wait: bool) -> Result<Drained> {
        let mut tx = client.transaction().await?;
        if wait {
            db::live::lock(&*tx, ws).await?;
        } else if !db::live::try_lock(&*tx, ws).await? {
            return Ok(Drained::default());
        }
        // Refreshes are short or one-off: compiling them costs more than it
        // saves (a rebuild spent 175 of its 380 ms in JIT).
        tx.batch_execute("SET LOCAL jit = off").await?;
        let now = self.clock.now();
        let segments = db::segments::all(&*tx, ws).await?;
        let defs = Definitions::with(&*tx, ws, &segments).await?;
        let live = live_segments(&segments, &defs);
        let mut queued = db::live::queued(&*tx, ws, QUEUE_BATCH).await?;
        // Writes this pass leaves queued, as far as it can see.
        let mut more = queued.len() == QUEUE_BATCH as usize;
        // How many contacts the batch holds so far.
        let mut ids: BTreeSet<i64> = BTreeSet::new();
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
                Some(v) => ids.extend(v),
                None => whole_keys.extend(q.keys.iter().cloned()),
            }
        }
        more |= take < queued.len();
        queued.truncate(take);

        // What to evaluate over every contact: segments not built from their
        // current definition, those a whole-workspace change affects, and
        // those time moves in ways no index can narrow.
        let last_tick = ago(now, self.opts.tick);
        let due = |l: &Live| {
            l.timed
                && l.segment
                    .live_state
                    .as_ref()
                    .and_then(|s| s.evaluated_at)
                    .is_none_or(|t| t <= last_tick)
        };
        let whole: HashSet<i64> = live
            .iter()
            .filter(|l| {
                !l.segment.stored()
                    || reads_any(&l.reads, whole_keys.iter())
                    || (due(l) && clock_from(l).is_none())
            })
            .map(|l| l.segment.id)
            .collect();
        // Time's other effects: the contacts with events that crossed a
        // window's edge since the segment's last clock pass.
        let mut clock: HashMap<i64, BTreeSet<i64>> = HashMap::new();
        for l in live
            .iter()
            .filter(|l| due(l) && !whole.contains(&l.segment.id))
        {
            let (since, edges) = clock_from(l).expect("narrowed above");
            let mut crossed = BTreeSet::new();
            for e in edges {
                let (lo, hi) = (time::back(since, e.span), time::back(now, e.span));
                crossed.extend(db::live::crossed(&*tx, ws, e.types.as_deref(), lo, hi).await?);
            }
            clock.insert(l.segment.id, crossed);
        }
        if queued.is_empty() && whole.is_empty() && clock.is_empty() {
            return Ok(Drained::default());
        }

        // The batch's writes to contacts: each segment is refreshed for the
        // contacts of the writes it reads.
        let parts: Vec<(&[i64], &[String])> = queued
            .iter()
            .filter_map(|q| Some((q.ids.as_deref()?, q.keys.as_slice())))
            .collect();
        // How many segment actions led to each contact's writes, where any
        // did: the actions its entries and exits run are one deeper.
        let mut depth_of: HashMap<i64, i32> = HashMap::new();
        for q in queued.iter().filter(|q| q.depth > 0) {
            for id in q.ids.iter().flatten() {
                let d = depth_of.entry(*id).or_default();
                *d = (*d).max(q.depth);
            }
        }
        let cause = if causes.is_empty() {
            "rebuild".to_string()
        } else {
            causes.into_iter().collect::<Vec<_>>().join(",")
        };
        let mut offset = db::live::feed_offset(&*tx, ws).await?;
        let first = offset;
        let mut work: Vec<&Live> = live.iter().collect();
        // A segment after every segment it reads.
        work.sort_by_key(|l| l.uses.len());
        // Who changed in each segment refreshed so far, and why: a segment
        // that reads it is refreshed for them too.
        let mut changed: HashMap<i64, (Vec<i64>, String)> = HashMap::new();
        let mut applied = 0;
        let mut outgrown = false;
        for l in work {
            let s = l.segment;
            let all = whole.contains(&s.id);
            let mut by_write = false;
            let by_clock = clock.remove(&s.id);
            // The contacts writes touched, directly or through a segment
            // this one reads, and apart from them, those the clock moved:
            // each set its own statement, so each change names its cause.
            let mut written: BTreeSet<i64> = BTreeSet::new();
            for (v, k) in &parts {
                if !v.is_empty() && reads_any(&l.reads, k.iter()) {
                    by_write = true;
                    written.extend(v.iter());
                }
            }
            let mut by_ref = None;
            for u in &l.uses {
                if let Some((c, why)) = changed.get(u).filter(|(c, _)| !c.is_empty()) {
                    written.extend(c);
                    by_ref.get_or_insert_with(|| why.clone());
                }
            }
            let mut runs: Vec<(Option<Vec<i64>>, String)> = Vec::new();
            if all {
                let why = match (s.stored(), due(l)) {
                    (false, _) => "rebuild".to_string(),
                    (true, true) => "clock".into(),
                    (true, false) => cause.clone(),
                };
                runs.push((None, why));
            } else {
                let moved: Vec<i64> = by_clock
                    .iter()
                    .flatten()
                    .filter(|c| !written.contains(c))
                    .copied()
                    .collect();
                if !written.is_empty() {
                    let why = if by_write {
                        cause.clone()
                    } else {
                        by_ref.unwrap_or_else(|| cause.clone())
                    };
                    runs.push((Some(written.into_iter().collect()), why));
                }
                if !moved.is_empty() {
                    runs.push((Some(moved), "clock".into()));
                }
            }
            if runs.is_empty() && by_clock.is_none() {
                continue;
            }
            let started = Instant::now();
            let (mut entered_ids, mut exited_ids) = (Vec::new(), Vec::new());
            let mut size = None;
            // Planned once for all its runs.
            let (plan, mut failure) = match plan_of(ws, s, &defs, now) {
                Ok(p) => (Some(p), None),
                Err(e) => (None, Some(e)),
            };
            for (only, why) in &runs {
                let Some(plan) = &plan else { break };
                let refresh = Refresh {
                    segment: s.id,
                    base: offset,
                    cause: why.clone(),
                    at: now,
                };
                let sp = tx.savepoint("refresh").await?;
                match refresh_one(&*sp, ws, s, plan, &refresh, only.as_deref()).await {
                    Ok(o) => {
                        sp.commit().await?;
                        offset += (o.diff.entered.len() + o.diff.exited.len()) as i64;
                        entered_ids.extend(o.diff.entered);
                        exited_ids.extend(o.diff.exited);
                        size = o.size.or(size);
                    }
                    Err(e) => {
                        sp.rollback().await?;
                        failure = Some(e);
                        break;
                    }
                }
            }
            match failure {
                None => {
                    let (entered, exited) = (entered_ids.len() as i64, exited_ids.len() as i64);
                    applied += usize::from(all);
                    if let Some(st) = &self.statistics {
                        st.inserted(Table::LiveMembers, ws, u64::try_from(entered).unwrap_or(0));
                    }
                    // A membership that grew by half or more (a build) has
                    // outgrown what the planner believes of it.
                    let before = s.live_state.as_ref().map_or(0, |l| l.size);
                    outgrown |= entered >= 1_000 && entered >= before / 2;
                    crate::observe::refreshed(s.id, started.elapsed().as_secs_f64());
                    let r = Refreshed {
                        entered,
                        exited,
                        ms: started.elapsed().as_secs_f64() * 1000.0,
                        built: all.then_some(s.version),
                        timed: l.timed,
                        clocked: all || by_clock.is_some(),
                        size,
                    };
                    db::live::record(&*tx, ws, s.id, r, now).await?;
                    // Members found by the first build did not just enter.
                    if s.live_state.is_some() && !s.actions.is_empty() {
                        let moved = [(Trigger::Enter, &entered_ids), (Trigger::Exit, &exited_ids)];
                        self.act(&tx, ws, s, moved, &mut depth_of).await?;
                    }
                    let why = runs.first().map_or_else(|| "clock".into(), |r| r.1.clone());
                    let mut ids_changed = entered_ids;
                    ids_changed.extend(exited_ids);
                    changed.insert(s.id, (ids_changed, why));
                }
                Some(e) => {
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
        if let Some(oldest) = queued.first() {
            let lag = chrono::Utc::now() - oldest.at;
            crate::observe::live_lag(lag.num_milliseconds().max(0) as f64 / 1000.0);
        }
        if outgrown {
            // Refreshes restricted to a few contacts plan by these
            // statistics: a segment believed empty is scanned per contact.
            // (After the commit: a failure here loses nothing.)
            if let Err(e) = stats::analyze(client, Table::LiveMembers).await {
                tracing::warn!(error = %e, "refreshing live_members statistics");
            }
        }
        Ok(Drained {
            done: seqs.len() + applied,
            more,
        })
    }
}

impl Maintainer {
    /// Runs segment `s`'s actions on the contacts that `moved` (entered,
    /// exited), each chain one deeper than the writes that moved them
    /// (`depth_of`, 0 when absent, and raised for the contacts an action
    /// writes: segments refreshed later in the same pass see its writes);
    /// a chain at the depth limit stops and says so in the segment's last
    /// error.
    async fn act(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        ws: WorkspaceId,
        s: &Segment,
        moved: [(Trigger, &Vec<i64>); 2],
        depth_of: &mut HashMap<i64, i32>,
    ) -> Result<()> {
        for (on, ids) in moved {
            let mut by_depth: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
            for id in ids {
                let d = depth_of.get(id).copied().unwrap_or(0) + 1;
                by_depth.entry(d).or_default().push(*id);
            }
            for (depth, ids) in by_depth {
                if depth > self.opts.max_action_depth {
                    let msg = format!(
                        "a cascade of segment actions reached the depth limit ({}); the actions of {:?} did not run for {} contacts",
                        self.opts.max_action_depth,
                        s.name,
                        ids.len()
                    );
                    tracing::warn!(ws = ws.0, segment = s.id, "{msg}");
                    db::live::noted(tx, ws, s.id, &msg).await?;
                    continue;
                }
                for a in s.actions.iter().filter(|a| a.on == on) {
                    for id in writes::segment_action(tx, ws, s.id, a, &ids, depth).await? {
                        let d = depth_of.entry(id).or_default();
                        *d = (*d).max(depth);
                    }
                }
            }
        }
        Ok(())
    }
}

/// What one pass over a workspace did.
#[derive(Debug, Default, Clone, Copy)]
struct Drained {
    /// Queued writes and builds applied (0: nothing to do, or another
    /// maintainer holds the workspace).
    done: usize,
    /// Writes were left in the queue.
    more: bool,
}

/// Most queued writes one pass reads.
const QUEUE_BATCH: i64 = 500;

/// `d` before `now`, or the beginning of time.
fn ago(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// For a timed segment whose edges an index can find: since when its
/// clock has run, and the edges.
fn clock_from<'a>(l: &'a Live) -> Option<(DateTime<Utc>, &'a [Edge])> {
    let since = l.segment.live_state.as_ref()?.evaluated_at?;
    Some((since, l.edges.as_deref()?))
}

/// Whether a definition reading `reads` may be affected by writes of `keys`.
fn reads_any<'a>(reads: &BTreeSet<String>, mut keys: impl Iterator<Item = &'a String>) -> bool {
    keys.any(|k| reads.iter().any(|r| affects(k, r)))
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
                edges: deps::edges(&v.checked.pred),
            })
        })
        .collect()
}

/// The most members, and stored members, a whole refresh carries through
/// segd (two arrays of ids, 8 MB each at most); more are diffed inside
/// PostgreSQL.
const DIFF_CAP: i64 = 1_000_000;

/// Live segment `s`'s definition, planned for `now`.
fn plan_of(ws: WorkspaceId, s: &Segment, defs: &Definitions, now: DateTime<Utc>) -> Result<Plan> {
    let rule = s.rule.clone().expect("a live segment has a definition");
    let v = defs.validate(&Definition::saved(rule, &s.name), Some(s.id))?;
    Ok(lower(&v.checked.pred, ws, now))
}

/// What one refresh did.
struct Outcome {
    /// Who entered and who exited.
    diff: db::live::Diff,
    /// After a refresh over every contact, the members.
    size: Option<i64>,
}

/// One refresh of segment `s` by its `plan`.
async fn refresh_one(
    tx: &impl tokio_postgres::GenericClient,
    ws: WorkspaceId,
    s: &Segment,
    plan: &Plan,
    refresh: &Refresh,
    only: Option<&[i64]>,
) -> Result<Outcome> {
    // A whole evaluation of a segment with stored members: both sides are
    // read by a read-only statement PostgreSQL can run in parallel, diffed
    // here, and the differences applied by id. A first build, or sides too
    // long to carry through segd, are one statement inside PostgreSQL.
    if only.is_none() && s.live_state.as_ref().is_some_and(|l| l.size > 0) {
        let q = Query::of(Select::Diff {
            segment: s.id,
            cap: DIFF_CAP,
        });
        let r = plan.render(&q);
        // Members come out of a sort in id order where the hash aggregate
        // the planner prefers for DISTINCT and GROUP BY needs a sort of its
        // own after it. A failure rolls the setting back with the caller's
        // savepoint.
        tx.batch_execute("SET LOCAL enable_hashagg = off").await?;
        let row = tx.query_typed(&r.sql, &r.typed()).await?;
        tx.batch_execute("SET LOCAL enable_hashagg TO DEFAULT")
            .await?;
        let row = row
            .first()
            .ok_or_else(|| crate::error::Error::internal("a diff returns one row"))?;
        // (NULL: both sides are equal.)
        let side = |i| row.get::<_, Option<Vec<i64>>>(i).unwrap_or_default();
        let (new, old) = (side(0), side(1));
        let size: i64 = row.try_get(2)?;
        let carried = |v: &Vec<i64>| i64::try_from(v.len()).is_ok_and(|n| n <= DIFF_CAP);
        if carried(&new) && carried(&old) {
            let d = db::live::Diff::of(&new, &old);
            if !d.is_empty() {
                let at = (refresh.base, refresh.cause.as_str(), refresh.at);
                db::live::apply(tx, ws, s.id, &d, at).await?;
            }
            return Ok(Outcome {
                diff: d,
                size: Some(size),
            });
        }
    }
    let q = Query {
        only,
        ..Query::of(Select::Refresh(refresh))
    };
    let r = plan.render(&q);
    let rows = tx.query_typed(&r.sql, &r.typed()).await?;
    let row = rows
        .first()
        .ok_or_else(|| crate::error::Error::internal("a refresh returns one row"))?;
    Ok(Outcome {
        diff: db::live::Diff {
            entered: row.get(0),
            exited: row.get(1),
        },
        size: only.is_none().then(|| row.get(2)),
    })
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
    client: &mut Scoped,
    ws: WorkspaceId,
    segment: i64,
    now: DateTime<Utc>,
) -> Result<Drift> {
    let read = async |tx: &tokio_postgres::Transaction<'_>| {
        let s = db::segments::get(tx, ws, &crate::segment::ast::SegmentRef::Id(segment)).await?;
        if !s.stored() {
            return Err(Error::FailedPrecondition(format!(
                "segment {:?} has no current stored members: it is not live and enabled, or not built yet",
                s.name
            )));
        }
        let defs = Definitions::load(tx, ws).await?.inlined();
        let r = plan_of(ws, &s, &defs, now)?.render(&Query::of(Select::Drift(s.id)));
        let row = tx
            .query_typed(&r.sql, &r.typed())
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::internal("a drift check returns one row"))?;
        let pending = db::live::pending(tx, ws).await?;
        Ok((row, pending))
    };
    let (row, pending) = client.read_snapshot(read).await?;
    Ok(Drift {
        missing: row.get(0),
        extra: row.get(1),
        missing_ids: row.get(2),
        extra_ids: row.get(3),
        pending,
    })
}
