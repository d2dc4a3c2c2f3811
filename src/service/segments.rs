//! Saving, checking, compiling and explaining segments.

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use crate::db;
use crate::db::scope::Scoped;
use crate::error::{Error, Result, Violation};
use crate::model::WorkspaceId;
use crate::model::segment::{Definition, Segment, SegmentKind};
use crate::segment::ast::{Rule, SegmentRef};
use crate::segment::check::{Catalog, Checked, SegmentInfo, check, refs_to_ids, refs_to_names};
use crate::segment::lower::lower;
use crate::segment::plan::Plan;
use crate::segment::render::{Query, Select};

/// The segments of a workspace as the checker sees them.
pub fn infos(segments: &[Segment]) -> Vec<SegmentInfo> {
    segments
        .iter()
        .map(|s| SegmentInfo {
            id: s.id,
            name: s.name.clone(),
            kind: s.kind,
            rule: s.rule.clone(),
            enabled: s.enabled,
            stored: s.stored(),
        })
        .collect()
}

/// A definition checked against its workspace.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The rule with segment references by id (for storage).
    pub rule: Rule,
    /// The rule with segment references by name (for display).
    pub display: Rule,
    /// The checked predicate and direct references.
    pub checked: Checked,
    /// Names of the disabled segments the definition reads.
    pub disabled: Vec<String>,
}

impl Validated {
    /// Refuses a definition that reads a disabled segment, naming it.
    ///
    /// # Errors
    /// `FailedPrecondition` naming the first disabled segment read.
    pub fn require_enabled(&self) -> Result<()> {
        match self.disabled.first() {
            Some(name) => Err(Error::FailedPrecondition(format!(
                "the definition reads segment {name:?}, which is disabled; enable it with UpdateSegment to query it"
            ))),
            None => Ok(()),
        }
    }
}

/// What definitions are checked against: a workspace's custom fields,
/// labels and segments, loaded once for any number of checks.
#[derive(Debug, Clone)]
pub struct Definitions {
    schema: crate::model::schema::Schema,
    segments: Vec<SegmentInfo>,
}

impl Definitions {
    /// Loads workspace `ws`'s catalog.
    ///
    /// # Errors
    /// The database is unavailable.
    pub async fn load(client: &impl GenericClient, ws: WorkspaceId) -> Result<Self> {
        let segments = db::segments::all(client, ws).await?;
        Self::with(client, ws, &segments).await
    }

    /// Workspace `ws`'s catalog, around its `segments` as the caller
    /// already read them.
    ///
    /// # Errors
    /// The database is unavailable.
    pub async fn with(
        client: &impl GenericClient,
        ws: WorkspaceId,
        segments: &[Segment],
    ) -> Result<Self> {
        Ok(Self {
            schema: db::definitions::schema(client, ws).await?,
            segments: infos(segments),
        })
    }

    /// The same catalog with every reference inlined, stored live
    /// memberships ignored: what definitions read, all the way down.
    pub fn inlined(&self) -> Self {
        let mut d = self.clone();
        for s in &mut d.segments {
            s.stored = false;
        }
        d
    }

    /// Checks `def`. `current` is the segment being saved, whose own id
    /// closes reference cycles.
    ///
    /// # Errors
    /// As [`Definition::problems`]: field violations for a definition from
    /// the request, a failed precondition for a saved one.
    pub fn validate(&self, def: &Definition, current: Option<i64>) -> Result<Validated> {
        let catalog = Catalog {
            schema: &self.schema,
            segments: &self.segments,
            current,
        };
        let checked = check(&def.rule, &catalog).map_err(|v| def.problems(v))?;
        let rule = refs_to_ids(&def.rule, &self.segments);
        let display = refs_to_names(&rule, &self.segments);
        let disabled = self
            .segments
            .iter()
            .filter(|s| !s.enabled && checked.uses.contains(&s.id))
            .map(|s| s.name.clone())
            .collect();
        Ok(Validated {
            rule,
            display,
            checked,
            disabled,
        })
    }
}

/// Checks `def` against workspace `ws`; see [`Definitions::validate`].
///
/// # Errors
/// As [`Definitions::validate`]; the database is unavailable.
pub async fn validate(
    client: &impl GenericClient,
    ws: WorkspaceId,
    def: &Definition,
    current: Option<i64>,
) -> Result<Validated> {
    Definitions::load(client, ws).await?.validate(def, current)
}

/// What to compile: a saved segment or an inline definition.
#[derive(Debug, Clone)]
pub enum Target {
    /// A saved segment; a live one reads its stored membership when that
    /// is current.
    Saved(SegmentRef),
    /// A saved segment evaluated from its definition, references included,
    /// even when it is live.
    Evaluated(SegmentRef),
    /// An unsaved definition.
    Inline(Definition),
}

/// A compiled target.
#[derive(Debug, Clone)]
pub struct CompiledTarget {
    /// The query's plan.
    pub compiled: Plan,
    /// The checked definition.
    pub checked: Checked,
    /// The saved segment, if the target was one.
    pub segment: Option<Segment>,
    /// The definition as written (references by name), for explanations.
    pub display: Rule,
}

/// Compiles a target at `now`. With `require_enabled` (queries), the
/// target and every segment it reads must be enabled; static and snapshot
/// segments compile to their stored member list.
///
/// # Errors
/// `NotFound`, `FailedPrecondition` for a disabled segment (named, also when
/// only referred to), `InvalidArgument` for a bad inline definition.
pub async fn compile(
    client: &impl GenericClient,
    ws: WorkspaceId,
    target: &Target,
    now: DateTime<Utc>,
    require_enabled: bool,
) -> Result<CompiledTarget> {
    let (def, segment) = match target {
        Target::Inline(def) => (def.clone(), None),
        Target::Saved(r) | Target::Evaluated(r) => {
            let s = db::segments::get(client, ws, r).await?;
            if require_enabled && !s.enabled {
                return Err(Error::FailedPrecondition(format!(
                    "segment {:?} is disabled; enable it with UpdateSegment to query it",
                    s.name
                )));
            }
            let def = match target {
                Target::Evaluated(_) => evaluated_definition(&s),
                _ => saved_definition(&s),
            };
            (def, Some(s))
        }
    };
    let defs = Definitions::load(client, ws).await?;
    let v = match target {
        Target::Evaluated(_) => defs.inlined().validate(&def, None)?,
        _ => defs.validate(&def, None)?,
    };
    if require_enabled {
        v.require_enabled()?;
    }
    let compiled = lower(&v.checked.pred, ws, now);
    Ok(CompiledTarget {
        compiled,
        checked: v.checked,
        segment,
        display: v.display,
    })
}

impl CompiledTarget {
    /// For a target read from a live segment's stored membership: the time
    /// of its last entry or exit, if any.
    pub fn live(&self) -> Option<Option<DateTime<Utc>>> {
        let s = self.segment.as_ref()?;
        let stored = matches!(self.checked.pred, crate::segment::ir::Pred::Live(id) if id == s.id);
        stored.then(|| s.live_state.as_ref().and_then(|l| l.changed_at))
    }
}

/// A saved segment as a definition: membership of its stored list (static
/// and snapshot segments, and live ones whose stored membership is
/// current), or its rule.
pub fn saved_definition(s: &Segment) -> Definition {
    let rule = match &s.rule {
        Some(r) if !s.stored() => r.clone(),
        _ => Rule::Segment(SegmentRef::Id(s.id)),
    };
    Definition::saved(rule, &s.name)
}

/// A saved segment as a definition evaluated from scratch: its rule, even
/// when it is live.
pub fn evaluated_definition(s: &Segment) -> Definition {
    let rule = s
        .rule
        .clone()
        .unwrap_or(Rule::Segment(SegmentRef::Id(s.id)));
    Definition::saved(rule, &s.name)
}

/// What a segment create or update asks for.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New enabled flag.
    pub enabled: Option<bool>,
    /// New live flag.
    pub live: Option<bool>,
    /// New definition.
    pub rule: Option<Definition>,
    /// New actions (replacing the list).
    pub actions: Option<Vec<crate::model::action::Action>>,
}

async fn lock_definitions(client: &impl GenericClient, ws: WorkspaceId) -> Result<()> {
    // Serialises definition writes per workspace, so two concurrent saves
    // cannot close a reference cycle between them.
    client
        .execute(
            "SELECT pg_advisory_xact_lock(7231, $1::int)",
            &[&(ws.0 as i32)],
        )
        .await?;
    Ok(())
}

/// Creates a dynamic or static segment.
///
/// # Errors
/// `InvalidArgument` for a bad definition or a kind/definition mismatch,
/// `AlreadyExists` for a taken name.
pub async fn create(
    client: &mut Scoped,
    ws: WorkspaceId,
    kind: SegmentKind,
    c: Changes,
) -> Result<Segment> {
    client.run_tx(None, false, async |tx| {
    lock_definitions(&**tx, ws).await?;
    let name = c
        .name
        .ok_or_else(|| Error::invalid("segment.name", "required"))?;
    let (rule, refs) = match (kind, c.rule) {
        (SegmentKind::Dynamic, Some(def)) => {
            let v = validate(&**tx, ws, &def, None).await?;
            (Some(v.rule), v.checked.refs)
        }
        (SegmentKind::Dynamic, None) => {
            return Err(Error::invalid(
                "segment.definition",
                "a dynamic segment needs a definition",
            ));
        }
        (SegmentKind::Static, None) if c.live == Some(true) => {
            return Err(Error::invalid(
                "segment.live",
                "only dynamic segments are live; a static segment's members are stored already",
            ));
        }
        (SegmentKind::Static, None) => (None, vec![]),
        (SegmentKind::Static, Some(_)) => {
            return Err(Error::invalid(
                "segment.definition",
                "a static segment has members, not a definition",
            ));
        }
        (SegmentKind::Snapshot, _) => {
            return Err(Error::invalid(
                "segment.kind",
                "snapshots are made with SnapshotSegment",
            ));
        }
    };
    let now = Utc::now();
    let s = Segment {
        id: 0,
        name,
        description: c.description.unwrap_or_default(),
        kind,
        enabled: c.enabled.unwrap_or(true),
        builtin: false,
        rule,
        refs,
        source_segment_id: None,
        snapshot_at: None,
        created_at: now,
        updated_at: now,
        version: 1,
        live: c.live.unwrap_or(false),
        live_state: None,
        actions: vec![],
    };
    let s = Segment {
        actions: actions(&**tx, ws, s.live, c.actions.unwrap_or_default()).await?,
        ..s
    };
    let out = db::segments::insert(&**tx, ws, &s).await?;
    refuse_cycles(&**tx, ws).await?;
    Ok(out)
    })
    .await
}

/// Updates a segment.
///
/// # Errors
/// `FailedPrecondition` when renaming or redefining a built-in segment or
/// defining a non-dynamic one; `InvalidArgument` for a bad definition
/// (including a reference cycle); `Aborted` on an etag mismatch.
pub async fn update(
    client: &mut Scoped,
    ws: WorkspaceId,
    id: i64,
    expected: Option<i64>,
    c: Changes,
) -> Result<Segment> {
    client.run_tx(None, false, async |tx| {
    lock_definitions(&**tx, ws).await?;
    let mut s = db::segments::get(&**tx, ws, &SegmentRef::Id(id)).await?;
    if s.builtin && (c.rule.is_some() || c.name.as_ref().is_some_and(|n| *n != s.name)) {
        return Err(Error::FailedPrecondition(format!(
            "{:?} is built in: its name and definition are fixed",
            s.name
        )));
    }
    if let Some(def) = c.rule {
        if s.kind != SegmentKind::Dynamic {
            return Err(Error::FailedPrecondition(format!(
                "segment {:?} is {} and has no definition",
                s.name, s.kind
            )));
        }
        let v = validate(&**tx, ws, &def, Some(id)).await?;
        s.rule = Some(v.rule);
        s.refs = v.checked.refs;
    }
    if let Some(n) = c.name {
        s.name = n;
    }
    if let Some(d) = c.description {
        s.description = d;
    }
    if let Some(e) = c.enabled {
        s.enabled = e;
    }
    if let Some(l) = c.live {
        if l && s.kind != SegmentKind::Dynamic {
            return Err(Error::invalid(
                "segment.live",
                "only dynamic segments are live; a static segment's members are stored already",
            ));
        }
        s.live = l;
    }
    // Kept actions are checked again: the segment may have stopped being
    // live, or lost a label they name.
    let wanted = c.actions.unwrap_or_else(|| std::mem::take(&mut s.actions));
    s.actions = actions(&**tx, ws, s.live, wanted).await?;
    let out = db::segments::update(&**tx, ws, &s, expected).await?;
    refuse_cycles(&**tx, ws).await?;
    if !out.live {
        db::live::forget(&**tx, ws, id).await?;
    }
    Ok(out)
    })
    .await
}

/// Checks `actions` for a segment as it will be saved (`live` or not):
/// only a live segment runs them, and their labels and custom fields must
/// exist.
async fn actions(
    tx: &impl GenericClient,
    ws: WorkspaceId,
    live: bool,
    actions: Vec<crate::model::action::Action>,
) -> Result<Vec<crate::model::action::Action>> {
    if actions.is_empty() {
        return Ok(actions);
    }
    if !live {
        return Err(Error::invalid(
            "segment.actions",
            "only live segments run actions; set live",
        ));
    }
    let schema = db::definitions::schema(tx, ws).await?;
    crate::model::action::check("segment.actions", actions, &schema).map_err(Error::InvalidArgument)
}

/// Refuses the workspace's actions, as this transaction saved them, when
/// they form a cycle.
async fn refuse_cycles(tx: &impl GenericClient, ws: WorkspaceId) -> Result<()> {
    let segments = db::segments::all(tx, ws).await?;
    if segments.iter().all(|s| s.actions.is_empty()) {
        return Ok(());
    }
    let defs = Definitions::with(tx, ws, &segments).await?;
    super::actions::refuse_cycles(&segments, &defs)
}

/// Freezes the current members of `source` into a new snapshot segment.
///
/// # Errors
/// `NotFound`, `AlreadyExists` for a taken name, `FailedPrecondition` for a
/// disabled source.
pub async fn snapshot(
    client: &mut Scoped,
    ws: WorkspaceId,
    source: &SegmentRef,
    name: String,
    description: String,
    now: DateTime<Utc>,
) -> Result<(Segment, u64)> {
    client
        .run_tx(
            Some(tokio_postgres::IsolationLevel::RepeatableRead),
            false,
            async |tx| {
                let t = compile(&**tx, ws, &Target::Saved(source.clone()), now, true).await?;
                let src = t.segment.as_ref().expect("saved target");
                let s = Segment {
                    id: 0,
                    name,
                    description,
                    kind: SegmentKind::Snapshot,
                    enabled: true,
                    builtin: false,
                    rule: None,
                    refs: vec![],
                    source_segment_id: Some(src.id),
                    snapshot_at: Some(now),
                    created_at: now,
                    updated_at: now,
                    version: 1,
                    live: false,
                    live_state: None,
                    actions: vec![],
                };
                let created = db::segments::insert(&**tx, ws, &s).await?;
                let insert = t.compiled.render(&Query::of(Select::Snapshot(created.id)));
                let n = tx.execute_typed(&insert.sql, &insert.typed()).await?;
                Ok((created, n))
            },
        )
        .await
}

/// PostgreSQL's plan for a compiled target.
#[derive(Debug, Clone)]
pub struct Explained {
    /// The SQL.
    pub sql: String,
    /// Parameters as JSON.
    pub params: Vec<String>,
    /// EXPLAIN (FORMAT JSON).
    pub plan_json: String,
    /// Total cost estimate.
    pub cost: f64,
    /// Row estimate.
    pub rows: f64,
}

/// Runs EXPLAIN (optionally ANALYZE) on the member query.
///
/// # Errors
/// The database refused the plan (a bug) or timed out.
pub async fn explain(client: &impl GenericClient, c: &Plan, analyze: bool) -> Result<Explained> {
    let r = c.canonical();
    let sql = r.sql.clone();
    let opts = if analyze {
        "ANALYZE, FORMAT JSON"
    } else {
        "FORMAT JSON"
    };
    let rows = client
        .query_typed(&format!("EXPLAIN ({opts}) {sql}"), &r.typed())
        .await?;
    let plan: serde_json::Value = rows
        .first()
        .map(|r| r.get(0))
        .ok_or_else(|| Error::internal("EXPLAIN returned nothing"))?;
    let top = &plan[0]["Plan"];
    Ok(Explained {
        sql,
        params: r.params.iter().map(|p| p.to_json().to_string()).collect(),
        cost: top["Total Cost"].as_f64().unwrap_or_default(),
        rows: top["Plan Rows"].as_f64().unwrap_or_default(),
        plan_json: plan.to_string(),
    })
}

/// Checks that a name is usable.
///
/// # Errors
/// A violation on `field`.
pub fn name(field: &str, raw: &str) -> Result<String, Vec<Violation>> {
    match crate::model::validate::text(raw) {
        Ok(Some(n)) if n.chars().count() <= 200 => Ok(n),
        Ok(Some(_)) => Err(vec![Violation::new(field, "at most 200 characters")]),
        Ok(None) => Err(vec![Violation::new(field, "required")]),
        Err(e) => Err(vec![Violation::new(field, e)]),
    }
}
