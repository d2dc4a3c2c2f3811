//! Segments: definitions (stored as canonical text with references by id),
//! the reference graph, and static member lists.

use tokio_postgres::{GenericClient, Row};

use crate::error::{Error, Result};
use crate::model::WorkspaceId;
use crate::model::segment::{BUILTIN_SEGMENTS, LiveState, Segment, SegmentKind};
use crate::segment::ast::SegmentRef;
use crate::segment::parse::parse;
use crate::segment::print::print;

const COLUMNS: &str = "s.id, s.name, s.description, s.kind, s.enabled, s.builtin, s.definition, \
     s.source_segment_id, s.snapshot_at, s.created_at, s.updated_at, s.version, \
     ARRAY(SELECT r.ref_id FROM segment_refs r WHERE r.workspace_id = s.workspace_id AND r.segment_id = s.id ORDER BY r.ref_id), \
     s.live, l.segment_id IS NOT NULL, l.built_version, l.size, l.changed_at, l.eval_ms, l.last_error, \
     coalesce(extract(epoch FROM clock_timestamp() - (SELECT min(q.enqueued_at) FROM change_queue q WHERE q.workspace_id = s.workspace_id))::float8, 0), \
     l.evaluated_at, s.actions";

/// Segments with their live state.
const FROM: &str =
    "segments s LEFT JOIN live_state l ON l.workspace_id = s.workspace_id AND l.segment_id = s.id";

fn from_row(r: &Row) -> Result<Segment> {
    let definition: Option<String> = r.get(6);
    let rule = definition
        .map(|d| {
            parse(&d).map_err(|e| Error::Internal(format!("stored definition does not parse: {e}")))
        })
        .transpose()?;
    Ok(Segment {
        id: r.get(0),
        name: r.get(1),
        description: r.get(2),
        kind: SegmentKind::parse(r.get(3)).unwrap_or(SegmentKind::Dynamic),
        enabled: r.get(4),
        builtin: r.get(5),
        rule,
        source_segment_id: r.get(7),
        snapshot_at: r.get(8),
        created_at: r.get(9),
        updated_at: r.get(10),
        version: r.get(11),
        refs: r.get(12),
        live: r.get(13),
        live_state: r.get::<_, bool>(14).then(|| LiveState {
            built_version: r.get(15),
            size: r.get(16),
            changed_at: r.get(17),
            eval_ms: r.get(18),
            last_error: r.get(19),
            lag_s: r.get(20),
            evaluated_at: r.get(21),
        }),
        actions: serde_json::from_value(r.get(22))
            .map_err(|e| Error::Internal(format!("stored actions do not parse: {e}")))?,
    })
}

/// Creates the built-in segments the workspace lacks.
///
/// # Errors
/// The database is unavailable.
pub async fn ensure_builtins(client: &impl GenericClient, ws: WorkspaceId) -> Result<()> {
    let (names, rest): (Vec<&str>, Vec<(&str, &str)>) = BUILTIN_SEGMENTS
        .iter()
        .map(|(n, d, f)| (*n, (*d, *f)))
        .unzip();
    let (descriptions, definitions): (Vec<&str>, Vec<&str>) = rest.into_iter().unzip();
    client
        .execute(
            "INSERT INTO segments (workspace_id, name, description, kind, builtin, definition, live)
             SELECT $1, n, d, 'dynamic', true, f, true FROM unnest($2::text[], $3::text[], $4::text[]) AS t(n, d, f)
             -- (A conflicting row would still use up an id.)
             WHERE NOT EXISTS (SELECT 1 FROM segments s WHERE s.workspace_id = $1 AND s.name = t.n)
             ON CONFLICT (workspace_id, name) DO NOTHING",
            &[&ws.0, &names, &descriptions, &definitions],
        )
        .await?;
    Ok(())
}

/// Creates the lifecycle rules of a new workspace (see
/// [`crate::model::action::lifecycle_rules`]): live segments with actions.
///
/// # Errors
/// The database is unavailable.
pub async fn insert_rules(client: &impl GenericClient, ws: WorkspaceId) -> Result<()> {
    for r in crate::model::action::lifecycle_rules() {
        let definition = parse(r.definition)
            .map(|d| print(&d))
            .map_err(|e| Error::Internal(format!("rule {:?} does not parse: {e}", r.name)))?;
        client
            .execute(
                "INSERT INTO segments (workspace_id, name, description, kind, definition, live, actions)
                 VALUES ($1, $2, $3, 'dynamic', $4, true, $5)",
                &[&ws.0, &r.name, &r.description, &definition, &actions_json(&[r.on_enter])?],
            )
            .await?;
    }
    Ok(())
}

/// Every segment of the workspace, by id.
///
/// # Errors
/// The database is unavailable.
#[tracing::instrument(skip_all, fields(ws = ws.0))]
pub async fn all(client: &impl GenericClient, ws: WorkspaceId) -> Result<Vec<Segment>> {
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM {FROM} WHERE s.workspace_id = $1 ORDER BY s.id"),
            &[&ws.0],
        )
        .await?;
    rows.iter().map(from_row).collect()
}

/// One segment by id or name.
///
/// # Errors
/// `NotFound`.
pub async fn get(client: &impl GenericClient, ws: WorkspaceId, r: &SegmentRef) -> Result<Segment> {
    let (id, name) = match r {
        SegmentRef::Id(id) => (Some(*id), None),
        SegmentRef::Name(n) => (None, Some(n.as_str())),
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM {FROM} WHERE s.workspace_id = $1 AND (s.id = $2 OR s.name = $3)"
    );
    let row = client.query_opt(&sql, &[&ws.0, &id, &name]).await?;
    match row {
        Some(r) => from_row(&r),
        None => Err(Error::NotFound(match r {
            SegmentRef::Id(id) => format!("segment {id}"),
            SegmentRef::Name(n) => format!("segment named {n:?}"),
        })),
    }
}

/// A page of segments after id `after`.
///
/// # Errors
/// The database is unavailable.
pub async fn list(
    client: &impl GenericClient,
    ws: WorkspaceId,
    after: i64,
    limit: i64,
) -> Result<Vec<Segment>> {
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM {FROM} WHERE s.workspace_id = $1 AND s.id > $2 ORDER BY s.id LIMIT $3"),
            &[&ws.0, &after, &limit],
        )
        .await?;
    rows.iter().map(from_row).collect()
}

/// Inserts a segment (its rule already checked, references by id) and its
/// reference edges.
///
/// # Errors
/// `AlreadyExists` when the name is taken.
pub async fn insert(client: &impl GenericClient, ws: WorkspaceId, s: &Segment) -> Result<Segment> {
    let definition = s.rule.as_ref().map(print);
    let row = client
        .query_one(
            "INSERT INTO segments (workspace_id, name, description, kind, enabled, definition, source_segment_id, snapshot_at, live, actions)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            &[&ws.0, &s.name, &s.description, &s.kind.as_str(), &s.enabled, &definition, &s.source_segment_id, &s.snapshot_at, &s.live, &actions_json(&s.actions)?],
        )
        .await
        .map_err(|e| name_taken(e, &s.name))?;
    let id: i64 = row.get(0);
    set_refs(client, ws, id, &s.refs).await?;
    get(client, ws, &SegmentRef::Id(id)).await
}

/// Writes the changeable fields of `s` if its version is still `expected`.
///
/// # Errors
/// `NotFound`, `Aborted` on a version mismatch, `AlreadyExists` on a taken name.
pub async fn update(
    client: &impl GenericClient,
    ws: WorkspaceId,
    s: &Segment,
    expected: Option<i64>,
) -> Result<Segment> {
    let definition = s.rule.as_ref().map(print);
    let n = client
        .execute(
            "UPDATE segments SET name = $3, description = $4, enabled = $5, definition = $6,
                 live = $8, actions = $9, updated_at = now(), version = version + 1
             WHERE workspace_id = $1 AND id = $2 AND ($7::bigint IS NULL OR version = $7)",
            &[
                &ws.0,
                &s.id,
                &s.name,
                &s.description,
                &s.enabled,
                &definition,
                &expected,
                &s.live,
                &actions_json(&s.actions)?,
            ],
        )
        .await
        .map_err(|e| name_taken(e, &s.name))?;
    if n == 0 {
        let current = get(client, ws, &SegmentRef::Id(s.id)).await?;
        return Err(Error::Aborted(format!(
            "segment {} changed: etag is v{}, request has v{}",
            s.id,
            current.version,
            expected.unwrap_or_default()
        )));
    }
    set_refs(client, ws, s.id, &s.refs).await?;
    get(client, ws, &SegmentRef::Id(s.id)).await
}

fn actions_json(a: &[crate::model::action::Action]) -> Result<serde_json::Value> {
    serde_json::to_value(a).map_err(|e| Error::Internal(format!("encoding actions: {e}")))
}

async fn set_refs(
    client: &impl GenericClient,
    ws: WorkspaceId,
    id: i64,
    refs: &[i64],
) -> Result<()> {
    client
        .execute(
            "WITH gone AS (DELETE FROM segment_refs WHERE workspace_id = $1 AND segment_id = $2 AND ref_id <> ALL($3))
             INSERT INTO segment_refs (workspace_id, segment_id, ref_id)
             SELECT $1, $2, r FROM unnest($3::bigint[]) AS r ON CONFLICT DO NOTHING",
            &[&ws.0, &id, &refs],
        )
        .await?;
    Ok(())
}

fn name_taken(e: tokio_postgres::Error, name: &str) -> Error {
    match super::error::from_pg(e) {
        Error::AlreadyExists(_) => {
            Error::AlreadyExists(format!("a segment named {name:?} already exists"))
        }
        other => other,
    }
}

/// Deletes a segment that nothing refers to.
///
/// # Errors
/// `FailedPrecondition` for built-in or referenced segments (naming the
/// referrers), `NotFound`, `Aborted` on a version mismatch.
pub async fn delete(
    client: &impl GenericClient,
    ws: WorkspaceId,
    id: i64,
    expected: Option<i64>,
) -> Result<()> {
    let s = get(client, ws, &SegmentRef::Id(id)).await?;
    if s.builtin {
        return Err(Error::FailedPrecondition(format!(
            "{:?} is a built-in segment and cannot be deleted",
            s.name
        )));
    }
    if let Some(v) = expected.filter(|v| *v != s.version) {
        return Err(Error::Aborted(format!(
            "segment {id} changed: etag is v{}, request has v{v}",
            s.version
        )));
    }
    let referrers: Vec<String> = client
        .query(
            "SELECT s.name FROM segment_refs r JOIN segments s ON s.workspace_id = r.workspace_id AND s.id = r.segment_id
             WHERE r.workspace_id = $1 AND r.ref_id = $2 ORDER BY s.name",
            &[&ws.0, &id],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !referrers.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "segment {:?} is referred to by {}; change those first",
            s.name,
            referrers
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    client
        .execute(
            "DELETE FROM segments WHERE workspace_id = $1 AND id = $2",
            &[&ws.0, &id],
        )
        .await?;
    Ok(())
}

/// Adds contacts to a static segment, all or none; returns how many were new.
///
/// # Errors
/// `NotFound` naming unknown contacts; `FailedPrecondition` if the segment
/// is not static.
pub async fn add_members(
    client: &impl GenericClient,
    ws: WorkspaceId,
    seg: i64,
    contacts: &[i64],
) -> Result<u64> {
    static_segment(client, ws, seg).await?;
    let missing: Vec<i64> = client
        .query(
            "SELECT k FROM unnest($2::bigint[]) AS k WHERE NOT EXISTS
               (SELECT 1 FROM contacts c WHERE c.workspace_id = $1 AND c.id = k) ORDER BY k LIMIT 20",
            &[&ws.0, &contacts],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(i64::to_string).collect();
        return Err(Error::NotFound(format!("contacts {}", list.join(", "))));
    }
    Ok(client
        .execute(
            "INSERT INTO segment_members (workspace_id, segment_id, contact_id)
             SELECT $1, $2, k FROM unnest($3::bigint[]) AS k ON CONFLICT DO NOTHING",
            &[&ws.0, &seg, &contacts],
        )
        .await?)
}

/// Removes contacts from a static segment; returns how many were members.
///
/// # Errors
/// `FailedPrecondition` if the segment is not static.
pub async fn remove_members(
    client: &impl GenericClient,
    ws: WorkspaceId,
    seg: i64,
    contacts: &[i64],
) -> Result<u64> {
    static_segment(client, ws, seg).await?;
    Ok(client
        .execute(
            "DELETE FROM segment_members WHERE workspace_id = $1 AND segment_id = $2 AND contact_id = ANY($3)",
            &[&ws.0, &seg, &contacts],
        )
        .await?)
}

async fn static_segment(client: &impl GenericClient, ws: WorkspaceId, seg: i64) -> Result<()> {
    let s = get(client, ws, &SegmentRef::Id(seg)).await?;
    if s.kind == SegmentKind::Static {
        Ok(())
    } else {
        Err(Error::FailedPrecondition(format!(
            "segment {:?} is {}, not static; its members are not edited by hand",
            s.name, s.kind
        )))
    }
}
