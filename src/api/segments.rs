//! SegmentService.

use tonic::{Request, Response, Status};

use super::AppState;
use super::convert::{action, from_ts, page_size, rules, ts};
use super::error::{checked, invalid};
use crate::db;
use crate::error::Violation;
use crate::model::schema::Schema;
use crate::model::segment::{Segment, SegmentKind};
use crate::proto::{self as pb, segment_service_server::SegmentService};
use crate::segment::ast::SegmentRef;
use crate::segment::check::{SegmentInfo, refs_to_names};
use crate::segment::print::print;
use crate::service::segments::{self as svc, Changes, Target};
use crate::service::writes;

/// Most buckets of one GetSegmentHistory answer.
const MAX_BUCKETS: i64 = 10_000;

/// Most contacts in one AddSegmentMembers or RemoveSegmentMembers call.
const MAX_MEMBERS: usize = 10_000;

/// The SegmentService implementation.
#[derive(Debug, Clone)]
pub struct Segments {
    state: AppState,
}

impl Segments {
    /// The service over shared state.
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    /// Converts segments for output, naming references, on the request's
    /// own connection (a second one could wait forever on a small pool).
    async fn out(
        client: &impl tokio_postgres::GenericClient,
        ws: crate::model::WorkspaceId,
        segs: &[Segment],
    ) -> crate::error::Result<Vec<pb::Segment>> {
        let infos = svc::infos(&db::segments::all(client, ws).await?);
        // Custom values of actions are typed by the workspace's fields.
        let typed = segs
            .iter()
            .any(|s| s.actions.iter().any(|a| !a.set_fields.is_empty()));
        let schema = match typed {
            true => Some(db::definitions::schema(client, ws).await?),
            false => None,
        };
        Ok(segs
            .iter()
            .map(|s| to_proto(s, &infos, schema.as_ref()))
            .collect())
    }

    async fn one(
        client: &impl tokio_postgres::GenericClient,
        ws: crate::model::WorkspaceId,
        s: Segment,
    ) -> crate::error::Result<Option<pb::Segment>> {
        Ok(Self::out(client, ws, &[s]).await?.pop())
    }
}

/// A segment as proto; `infos` name its references, `schema` types its
/// actions' custom values.
pub fn to_proto(s: &Segment, infos: &[SegmentInfo], schema: Option<&Schema>) -> pb::Segment {
    pb::Segment {
        id: s.id,
        name: s.name.clone(),
        description: s.description.clone(),
        kind: match s.kind {
            SegmentKind::Dynamic => pb::SegmentKind::Dynamic,
            SegmentKind::Static => pb::SegmentKind::Static,
            SegmentKind::Snapshot => pb::SegmentKind::Snapshot,
        } as i32,
        enabled: Some(s.enabled),
        builtin: s.builtin,
        definition: s.rule.as_ref().map(|r| pb::Definition {
            kind: Some(pb::definition::Kind::Rule(rules::to_proto(r))),
        }),
        filter: s
            .rule
            .as_ref()
            .map(|r| print(&refs_to_names(r, infos)))
            .unwrap_or_default(),
        referenced_segment_ids: s.refs.clone(),
        source_segment_id: s.source_segment_id.unwrap_or_default(),
        snapshot_at: s.snapshot_at.map(ts),
        created_at: Some(ts(s.created_at)),
        updated_at: Some(ts(s.updated_at)),
        etag: format!("v{}", s.version),
        live: Some(s.live),
        live_status: s
            .live_state
            .as_ref()
            .filter(|_| s.live)
            .map(|l| pb::LiveStatus {
                built: s.stored(),
                size: l.size,
                changed_at: l.changed_at.map(ts),
                lag: Some(duration(l.lag_s)),
                last_evaluation: l.eval_ms.map(|ms| duration(ms / 1000.0)),
                last_error: l.last_error.clone().unwrap_or_default(),
            }),
        actions: s
            .actions
            .iter()
            .map(|a| action::to_proto(a, schema))
            .collect(),
    }
}

fn duration(secs: f64) -> prost_types::Duration {
    let secs = secs.max(0.0);
    prost_types::Duration {
        seconds: secs.trunc() as i64,
        nanos: (secs.fract() * 1e9) as i32,
    }
}

fn reference(r: Option<&pb::SegmentReference>, field: &str) -> Result<SegmentRef, Status> {
    match r.and_then(|r| r.r#ref.as_ref()) {
        Some(pb::segment_reference::Ref::Id(id)) if *id > 0 => Ok(SegmentRef::Id(*id)),
        Some(pb::segment_reference::Ref::Name(n)) if !n.trim().is_empty() => {
            Ok(SegmentRef::Name(n.trim().to_string()))
        }
        _ => Err(invalid(vec![Violation::new(
            field,
            "set a positive id or a name",
        )])),
    }
}

fn etag(field: &str, e: &str) -> Result<Option<i64>, Status> {
    if e.is_empty() {
        return Ok(None);
    }
    e.strip_prefix('v')
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| invalid(vec![Violation::new(field, "not an etag returned by segd")]))
}

fn member_ids(ids: &[i64]) -> Result<(), Status> {
    if ids.is_empty() || ids.len() > MAX_MEMBERS {
        return Err(invalid(vec![Violation::new(
            "contact_ids",
            format!("give 1 to {MAX_MEMBERS} ids"),
        )]));
    }
    match ids.iter().position(|id| *id <= 0) {
        Some(i) => Err(invalid(vec![Violation::new(
            format!("contact_ids[{i}]"),
            "must be positive",
        )])),
        None => Ok(()),
    }
}

#[tonic::async_trait]
impl SegmentService for Segments {
    async fn create_segment(
        &self,
        req: Request<pb::CreateSegmentRequest>,
    ) -> Result<Response<pb::CreateSegmentResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let s = req.into_inner().segment.unwrap_or_default();
        let kind = match pb::SegmentKind::try_from(s.kind) {
            Ok(pb::SegmentKind::Unspecified | pb::SegmentKind::Dynamic) => SegmentKind::Dynamic,
            Ok(pb::SegmentKind::Static) => SegmentKind::Static,
            Ok(pb::SegmentKind::Snapshot) => SegmentKind::Snapshot,
            Err(_) => {
                return Err(invalid(vec![Violation::new(
                    "segment.kind",
                    "unknown kind",
                )]));
            }
        };
        let name = checked("", svc::name("segment.name", &s.name))?;
        let rule = s
            .definition
            .as_ref()
            .map(|d| checked("", rules::definition(Some(d), "segment.definition")))
            .transpose()?;
        let changes = Changes {
            name: Some(name),
            description: Some(s.description.trim().to_string()),
            enabled: s.enabled,
            live: s.live,
            rule,
            actions: Some(checked(
                "",
                action::from_proto("segment.actions", &s.actions),
            )?),
        };
        let mut client = self.state.conn_in(ws).await?;
        let created = svc::create(&mut client, ws, kind, changes).await?;
        Ok(Response::new(pb::CreateSegmentResponse {
            segment: client
                .run(async |tx| Self::one(tx, ws, created).await)
                .await?,
        }))
    }

    async fn get_segment(
        &self,
        req: Request<pb::GetSegmentRequest>,
    ) -> Result<Response<pb::GetSegmentResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let r = reference(req.get_ref().segment.as_ref(), "segment")?;
        let mut client = self.state.conn_in(ws).await?;
        let s = client
            .run(async |tx| db::segments::get(tx, ws, &r).await)
            .await?;
        Ok(Response::new(pb::GetSegmentResponse {
            segment: client.run(async |tx| Self::one(tx, ws, s).await).await?,
        }))
    }

    async fn list_segments(
        &self,
        req: Request<pb::ListSegmentsRequest>,
    ) -> Result<Response<pb::ListSegmentsResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let r = req.into_inner();
        let limit = page_size(r.page_size, 100, 1000)
            .map_err(|e| invalid(vec![Violation::new("page_size", e)]))?;
        let after = match r.page_token.as_str() {
            "" => 0,
            t => db::decode_token(t)?.as_i64().ok_or_else(|| {
                invalid(vec![Violation::new(
                    "page_token",
                    "not a ListSegments token",
                )])
            })?,
        };
        let mut client = self.state.conn_in(ws).await?;
        let mut segs = client
            .run(async |tx| db::segments::list(tx, ws, after, limit + 1).await)
            .await?;
        let next = if segs.len() as i64 > limit {
            segs.truncate(limit as usize);
            segs.last()
                .map(|s| db::encode_token(&s.id.into()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListSegmentsResponse {
            segments: client
                .run(async |tx| Self::out(tx, ws, &segs).await)
                .await?,
            next_page_token: next,
        }))
    }

    async fn update_segment(
        &self,
        req: Request<pb::UpdateSegmentRequest>,
    ) -> Result<Response<pb::UpdateSegmentResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let r = req.into_inner();
        let s = r.segment.unwrap_or_default();
        if s.id <= 0 {
            return Err(invalid(vec![Violation::new("segment.id", "required")]));
        }
        let expected = etag("segment.etag", &s.etag)?;
        let mut paths: Vec<String> = r.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            for (p, set) in [
                ("name", !s.name.is_empty()),
                ("description", !s.description.is_empty()),
                ("enabled", s.enabled.is_some()),
                ("definition", s.definition.is_some()),
                ("actions", !s.actions.is_empty()),
            ] {
                if set {
                    paths.push(p.to_string());
                }
            }
        }
        let mut c = Changes::default();
        for (i, p) in paths.iter().enumerate() {
            match p.as_str() {
                "name" => c.name = Some(checked("", svc::name("segment.name", &s.name))?),
                "description" => c.description = Some(s.description.trim().to_string()),
                "enabled" => c.enabled = Some(s.enabled.unwrap_or(true)),
                "live" => c.live = Some(s.live.unwrap_or(false)),
                "actions" => {
                    c.actions = Some(checked(
                        "",
                        action::from_proto("segment.actions", &s.actions),
                    )?);
                }
                "definition" => {
                    c.rule = Some(checked(
                        "",
                        rules::definition(s.definition.as_ref(), "segment.definition"),
                    )?)
                }
                other => {
                    return Err(invalid(vec![Violation::new(
                        format!("update_mask.paths[{i}]"),
                        format!(
                            "`{other}` cannot be updated; use name, description, enabled, live or definition"
                        ),
                    )]));
                }
            }
        }
        let mut client = self.state.conn_in(ws).await?;
        let updated = svc::update(&mut client, ws, s.id, expected, c).await?;
        Ok(Response::new(pb::UpdateSegmentResponse {
            segment: client
                .run(async |tx| Self::one(tx, ws, updated).await)
                .await?,
        }))
    }

    async fn delete_segment(
        &self,
        req: Request<pb::DeleteSegmentRequest>,
    ) -> Result<Response<pb::DeleteSegmentResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let r = req.into_inner();
        if r.id <= 0 {
            return Err(invalid(vec![Violation::new("id", "required")]));
        }
        let expected = etag("etag", &r.etag)?;
        let mut client = self.state.conn_in(ws).await?;
        client
            .run(async |tx| db::segments::delete(tx, ws, r.id, expected).await)
            .await?;
        Ok(Response::new(pb::DeleteSegmentResponse {}))
    }

    async fn add_segment_members(
        &self,
        req: Request<pb::AddSegmentMembersRequest>,
    ) -> Result<Response<pb::AddSegmentMembersResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let r = req.into_inner();
        member_ids(&r.contact_ids)?;
        let mut client = self.state.conn_in(ws).await?;
        let edit = writes::EditMembers {
            segment: r.segment_id,
            ids: &r.contact_ids,
            add: true,
        };
        let added = writes::run(&mut client, ws, &edit).await?;
        Ok(Response::new(pb::AddSegmentMembersResponse {
            added: added as i64,
        }))
    }

    async fn remove_segment_members(
        &self,
        req: Request<pb::RemoveSegmentMembersRequest>,
    ) -> Result<Response<pb::RemoveSegmentMembersResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let r = req.into_inner();
        member_ids(&r.contact_ids)?;
        let mut client = self.state.conn_in(ws).await?;
        let edit = writes::EditMembers {
            segment: r.segment_id,
            ids: &r.contact_ids,
            add: false,
        };
        let removed = writes::run(&mut client, ws, &edit).await?;
        Ok(Response::new(pb::RemoveSegmentMembersResponse {
            removed: removed as i64,
        }))
    }

    async fn snapshot_segment(
        &self,
        req: Request<pb::SnapshotSegmentRequest>,
    ) -> Result<Response<pb::SnapshotSegmentResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let r = req.into_inner();
        let source = reference(r.source.as_ref(), "source")?;
        let name = checked("", svc::name("name", &r.name))?;
        let mut client = self.state.conn_in(ws).await?;
        let (s, n) = svc::snapshot(
            &mut client,
            ws,
            &source,
            name,
            r.description.trim().to_string(),
            self.state.clock.now(),
        )
        .await?;
        Ok(Response::new(pb::SnapshotSegmentResponse {
            segment: client.run(async |tx| Self::one(tx, ws, s).await).await?,
            member_count: n as i64,
        }))
    }

    async fn validate_segment(
        &self,
        req: Request<pb::ValidateSegmentRequest>,
    ) -> Result<Response<pb::ValidateSegmentResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let rule = checked(
            "",
            rules::definition(req.get_ref().definition.as_ref(), "definition"),
        )?;
        let mut client = self.state.conn_in(ws).await?;
        let v = client
            .run(async |tx| svc::validate(tx, ws, &rule, None).await)
            .await?;
        Ok(Response::new(pb::ValidateSegmentResponse {
            rule: Some(rules::to_proto(&v.rule)),
            filter: print(&v.display),
            referenced_segment_ids: v.checked.refs,
        }))
    }

    async fn rebuild_segment(
        &self,
        req: Request<pb::RebuildSegmentRequest>,
    ) -> Result<Response<pb::RebuildSegmentResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let id = req.into_inner().segment_id;
        if id <= 0 {
            return Err(invalid(vec![Violation::new("segment_id", "required")]));
        }
        self.state.live.rebuild(ws, id).await?;
        let mut client = self.state.conn_in(ws).await?;
        let s = client
            .run(async |tx| db::segments::get(tx, ws, &SegmentRef::Id(id)).await)
            .await?;
        Ok(Response::new(pb::RebuildSegmentResponse {
            segment: client.run(async |tx| Self::one(tx, ws, s).await).await?,
        }))
    }

    async fn get_segment_history(
        &self,
        req: Request<pb::GetSegmentHistoryRequest>,
    ) -> Result<Response<pb::GetSegmentHistoryResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let r = req.into_inner();
        let mut bad = Vec::new();
        if r.segment_id <= 0 {
            bad.push(Violation::new("segment_id", "required"));
        }
        let mut time = |field: &str, t: Option<&prost_types::Timestamp>| match t.map(from_ts) {
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                bad.push(Violation::new(field, e));
                None
            }
            None => {
                bad.push(Violation::new(field, "required"));
                None
            }
        };
        let (start, end) = (
            time("start_time", r.start_time.as_ref()),
            time("end_time", r.end_time.as_ref()),
        );
        let (step, hours) = match pb::HistoryResolution::try_from(r.resolution) {
            Ok(pb::HistoryResolution::Hour) => ("hour", 1),
            Ok(pb::HistoryResolution::Day) => ("day", 24),
            _ => {
                bad.push(Violation::new(
                    "resolution",
                    "set HISTORY_RESOLUTION_HOUR or HISTORY_RESOLUTION_DAY",
                ));
                ("hour", 1)
            }
        };
        if let (Some(a), Some(b)) = (start, end) {
            let buckets = (b - a).num_hours() / hours;
            if b <= a {
                bad.push(Violation::new("end_time", "must be after start_time"));
            } else if buckets > MAX_BUCKETS {
                bad.push(Violation::new(
                    "end_time",
                    format!("at most {MAX_BUCKETS} buckets; use a coarser resolution"),
                ));
            }
        }
        let (Some(start), Some(end), true) = (start, end, bad.is_empty()) else {
            return Err(invalid(bad));
        };
        let mut client = self.state.conn_in(ws).await?;
        let s = client
            .run(async |tx| db::segments::get(tx, ws, &SegmentRef::Id(r.segment_id)).await)
            .await?;
        if !s.live {
            return Err(crate::error::Error::FailedPrecondition(format!(
                "segment {:?} is not live: only live segments keep a history",
                s.name
            ))
            .into());
        }
        let buckets = client
            .run(async |tx| db::history::segment(tx, ws, s.id, (start, end), step).await)
            .await?;
        Ok(Response::new(pb::GetSegmentHistoryResponse {
            buckets: buckets
                .into_iter()
                .map(|b| pb::SegmentHistoryBucket {
                    start_time: Some(ts(b.start)),
                    size: b.size,
                    entered: b.entered,
                    exited: b.exited,
                })
                .collect(),
        }))
    }

    async fn verify_segment(
        &self,
        req: Request<pb::VerifySegmentRequest>,
    ) -> Result<Response<pb::VerifySegmentResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let id = req.into_inner().segment_id;
        if id <= 0 {
            return Err(invalid(vec![Violation::new("segment_id", "required")]));
        }
        let mut client = self.state.conn_in(ws).await?;
        let d = crate::service::live::verify(&mut client, ws, id, self.state.clock.now()).await?;
        Ok(Response::new(pb::VerifySegmentResponse {
            missing_count: d.missing,
            missing_ids: d.missing_ids,
            extra_count: d.extra,
            extra_ids: d.extra_ids,
            pending_writes: d.pending,
        }))
    }

    async fn explain_segment(
        &self,
        req: Request<pb::ExplainSegmentRequest>,
    ) -> Result<Response<pb::ExplainSegmentResponse>, Status> {
        use pb::explain_segment_request::Target as T;
        let ws = self.state.workspace(&req).await?;
        let r = req.into_inner();
        let target = match &r.target {
            Some(T::Definition(d)) => {
                Target::Inline(checked("", rules::definition(Some(d), "definition"))?)
            }
            Some(T::SegmentId(id)) if *id > 0 => Target::Saved(SegmentRef::Id(*id)),
            _ => {
                return Err(invalid(vec![Violation::new(
                    "target",
                    "set definition or segment_id",
                )]));
            }
        };
        let mut client = self.state.conn_in(ws).await?;
        let t = client
            .run(async |tx| svc::compile(tx, ws, &target, self.state.clock.now(), false).await)
            .await?;
        let e = client
            .run(async |tx| svc::explain(tx, &t.compiled, r.analyze).await)
            .await?;
        Ok(Response::new(pb::ExplainSegmentResponse {
            sql: e.sql,
            params: e.params,
            plan_json: e.plan_json,
            estimated_cost: e.cost,
            estimated_rows: e.rows,
        }))
    }
}
