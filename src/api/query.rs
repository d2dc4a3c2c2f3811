//! QueryService.

use std::pin::Pin;

use futures::Stream;
use prost::Message;
use tonic::{Request, Response, Status};

use super::AppState;
use super::convert::{contact as cc, rules, ts};
use super::error::{checked, invalid};
use super::metrics;
use super::route::Route;
use crate::db;
use crate::error::Violation;
use crate::proto::{self as pb, query_service_server::QueryService};
use crate::segment::ast::SegmentRef;
use crate::service::query::{self as q, Sample};
use crate::service::segments::Target;
use crate::service::stream::{self, Cursor, Item};

/// How long a stream waits for a free slot before RESOURCE_EXHAUSTED.
const STREAM_SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Largest encoded message of contacts; far below the 4 MB default limit.
const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// The QueryService implementation.
#[derive(Debug, Clone)]
pub struct Query {
    state: AppState,
}

impl Query {
    /// The service over shared state.
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    /// Queries on the primary.
    fn reader(&self) -> q::Reader<'_> {
        q::Reader {
            pool: &self.state.pool,
            replica: None,
            timeout: self.state.limits.query_timeout,
            max_cost: self.state.limits.max_query_cost,
        }
    }

    /// Queries where `route` says, falling back to the primary.
    fn reader_on<'a>(&'a self, route: &'a Route) -> q::Reader<'a> {
        q::Reader {
            replica: route.replica(),
            ..self.reader()
        }
    }
}

fn bad(field: &str, msg: impl Into<String>) -> Status {
    invalid(vec![Violation::new(field, msg)])
}

fn selector(s: Option<&pb::SegmentSelector>) -> Result<Target, Status> {
    checked("", target(s, "selector"))
}

/// The target a selector at `field` names.
pub(super) fn target(
    s: Option<&pb::SegmentSelector>,
    field: &str,
) -> Result<Target, Vec<Violation>> {
    use pb::segment_selector::Kind;
    let saved = |r| match s.is_some_and(|s| s.evaluate) {
        true => Target::Evaluated(r),
        false => Target::Saved(r),
    };
    match s.and_then(|s| s.kind.as_ref()) {
        Some(Kind::SegmentId(id)) if *id > 0 => Ok(saved(SegmentRef::Id(*id))),
        Some(Kind::SegmentName(n)) if !n.trim().is_empty() => {
            Ok(saved(SegmentRef::Name(n.trim().into())))
        }
        Some(Kind::Definition(d)) => {
            rules::definition(Some(d), &format!("{field}.definition")).map(Target::Inline)
        }
        _ => Err(vec![Violation::new(
            field,
            "set segment_id, segment_name or definition",
        )]),
    }
}

fn sample(s: Option<&pb::Sample>) -> Result<Option<Sample>, Status> {
    use pb::sample::Kind;
    let Some(s) = s else { return Ok(None) };
    match &s.kind {
        Some(Kind::Fraction(f)) if *f > 0.0 && *f <= 1.0 => {
            Ok(Some(Sample::Fraction(*f, s.salt.clone())))
        }
        Some(Kind::Fraction(_)) => Err(bad("sample.fraction", "must be in (0, 1]")),
        Some(Kind::Bucket(b))
            if (2..=1000).contains(&b.count) && (0..b.count).contains(&b.index) =>
        {
            Ok(Some(Sample::Bucket {
                index: b.index,
                count: b.count,
                salt: s.salt.clone(),
            }))
        }
        Some(Kind::Bucket(_)) => Err(bad(
            "sample.bucket",
            "count must be 2 to 1000 and index 0 to count - 1",
        )),
        None => Err(bad("sample", "set fraction or bucket")),
    }
}

fn mask(m: Option<&prost_types::FieldMask>, field: &str) -> Result<Vec<String>, Status> {
    let paths = m.map(|m| m.paths.clone()).unwrap_or_default();
    checked("", cc::check_read_mask(&paths, field))?;
    Ok(paths)
}

/// Messages for one stream item: contacts split so no message passes
/// [`MAX_MESSAGE_BYTES`]. Every message carries a resume token, the summary
/// included.
fn messages(item: Item, paths: &[String]) -> Vec<pb::StreamMembersResponse> {
    match item {
        Item::Ids(ids, cursor) => vec![pb::StreamMembersResponse {
            ids,
            resume_token: cursor.token(),
            ..Default::default()
        }],
        Item::Contacts(contacts, cursor) => {
            let mut out = Vec::new();
            let mut batch: Vec<pb::Contact> = Vec::new();
            let mut bytes = 0;
            // Cursors inside the item: rows delivered before it, plus those
            // of each message so far.
            let before = cursor.n - contacts.len() as u64;
            let mut sent = 0u64;
            let mut flush = |batch: &mut Vec<pb::Contact>, out: &mut Vec<_>| {
                sent += batch.len() as u64;
                let after = batch.last().map_or(cursor.after, |c| c.id);
                let token = Cursor {
                    after,
                    n: before + sent,
                    ..cursor.clone()
                }
                .token();
                out.push(pb::StreamMembersResponse {
                    contacts: std::mem::take(batch),
                    resume_token: token,
                    ..Default::default()
                });
            };
            for c in &contacts {
                let p = cc::apply_read_mask(cc::to_proto(c), paths);
                let len = p.encoded_len() + 8;
                if !batch.is_empty() && bytes + len > MAX_MESSAGE_BYTES {
                    flush(&mut batch, &mut out);
                    bytes = 0;
                }
                bytes += len;
                batch.push(p);
            }
            if !batch.is_empty() {
                flush(&mut batch, &mut out);
            }
            out
        }
        Item::Done {
            total,
            snapshot,
            now,
            cursor,
        } => vec![pb::StreamMembersResponse {
            resume_token: cursor.token(),
            summary: Some(pb::StreamSummary {
                total_rows: total as i64,
                snapshot,
                evaluated_at: Some(ts(now)),
            }),
            ..Default::default()
        }],
    }
}

/// A stream's end as a status that carries the last resume token (in a
/// `google.rpc.ErrorInfo` with reason `STREAM_INTERRUPTED`), so a client
/// that kept the token of each message it processed resumes without loss.
fn interrupted(e: crate::error::Error, token: &str) -> Status {
    use tonic_types::StatusExt;
    let status = Status::from(e);
    if token.is_empty() {
        return status;
    }
    let mut details = status.get_error_details();
    details.set_error_info(
        "STREAM_INTERRUPTED",
        "segd.v1",
        std::collections::HashMap::from([("resume_token".to_string(), token.to_string())]),
    );
    Status::with_error_details(status.code(), status.message(), details)
}

/// The gRPC side of a member stream: forwards batches, then ends with the
/// producer's outcome. It ends OK only after a summary whose `total_rows`
/// equals the rows it forwarded; anything else is an error carrying the
/// last token.
fn respond(members: stream::Members, paths: Vec<String>, first_token: String) -> MemberStream {
    let stream::Members { mut items, outcome } = members;
    Box::pin(async_stream::stream! {
        let mut token = first_token;
        let mut rows: i64 = 0;
        let mut summary = None;
        while let Some(item) = items.recv().await {
            for m in messages(item, &paths) {
                rows += (m.ids.len() + m.contacts.len()) as i64;
                crate::observe::streamed(m.ids.len() + m.contacts.len(), m.encoded_len());
                token.clone_from(&m.resume_token);
                summary = m.summary.as_ref().map(|s| s.total_rows);
                yield Ok(m);
            }
        }
        let end = match outcome.await {
            Ok(Ok(())) if summary == Some(rows) => None,
            Ok(Ok(())) => Some(crate::error::Error::Internal(format!(
                "the stream delivered {rows} rows but its summary says {summary:?}"
            ))),
            Ok(Err(e)) => Some(e),
            Err(_) => Some(crate::error::Error::Internal(
                "the stream's producer stopped without an outcome".into(),
            )),
        };
        if let Some(e) = end {
            yield Err(interrupted(e, &token));
        }
    })
}

/// The caller's deadline from the `grpc-timeout` header (`<digits><unit>`,
/// units H, M, S, m, u, n).
fn deadline<T>(req: &Request<T>) -> Option<tokio::time::Instant> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "H" => std::time::Duration::from_secs(n.checked_mul(3600)?),
        "M" => std::time::Duration::from_secs(n.checked_mul(60)?),
        "S" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_millis(n),
        "u" => std::time::Duration::from_micros(n),
        "n" => std::time::Duration::from_nanos(n),
        _ => return None,
    };
    tokio::time::Instant::now().checked_add(d)
}

type MemberStream = Pin<Box<dyn Stream<Item = Result<pb::StreamMembersResponse, Status>> + Send>>;

#[tonic::async_trait]
impl QueryService for Query {
    type WatchMembershipStream = super::watch::WatchStream;

    async fn watch_membership(
        &self,
        req: Request<pb::WatchMembershipRequest>,
    ) -> Result<Response<Self::WatchMembershipStream>, Status> {
        super::watch::watch(&self.state, req).await
    }

    type StreamMembersStream = MemberStream;

    async fn stream_members(
        &self,
        req: Request<pb::StreamMembersRequest>,
    ) -> Result<Response<MemberStream>, Status> {
        let ws = self.state.workspace(&req).await?;
        let deadline = deadline(&req);
        let r = req.into_inner();
        let target = selector(r.selector.as_ref())?;
        let sample = sample(r.sample.as_ref())?;
        let paths = mask(r.read_mask.as_ref(), "read_mask")?;
        if r.limit < 0 {
            return Err(bad("limit", "must not be negative"));
        }
        let cursor = (!r.resume_token.is_empty())
            .then(|| Cursor::parse(&r.resume_token))
            .transpose()?;
        let now = cursor
            .as_ref()
            .map_or_else(|| self.state.clock.now_ms(), Cursor::now);
        let limits = &self.state.limits;
        let route = self.state.route(r.max_staleness.as_ref())?;
        let t = {
            let mut conn = self.state.conn_in(ws).await?;
            conn.run(async |tx| {
                q::compile_guarded(
                    tx,
                    ws,
                    &target,
                    now,
                    limits.max_query_cost,
                    r.allow_expensive,
                )
                .await
            })
            .await?
        };
        let compiled = t.compiled;
        let fp = stream::fingerprint(&compiled, sample.as_ref(), !paths.is_empty());
        if cursor.as_ref().is_some_and(|c| c.fp != fp) {
            return Err(Status::failed_precondition(
                "the resume token belongs to another query, or the segment's definition changed since",
            ));
        }
        let start = cursor.unwrap_or_else(|| Cursor {
            v: 1,
            after: 0,
            n: 0,
            at: now.timestamp_millis(),
            fp,
        });
        // The limit counts every row of the stream, resumed parts included.
        let limit = (r.limit > 0).then(|| (r.limit - start.n as i64).max(0));
        let permit = tokio::time::timeout(
            STREAM_SLOT_WAIT,
            self.state.stream_slots.clone().acquire_owned(),
        )
        .await
        .map_err(|_| {
            Status::resource_exhausted("too many member streams are running; retry shortly")
        })?
        .map_err(|_| Status::unavailable("the server is shutting down"))?;
        let first_token = if r.resume_token.is_empty() {
            String::new()
        } else {
            start.token()
        };
        let plan = stream::Job {
            ws,
            compiled,
            sample,
            contacts: !paths.is_empty(),
            limit,
            start,
            timeouts: stream::Timeouts {
                statement: limits.stream_timeout,
                stall: limits.stream_stall_timeout,
                connect: limits.stream_connect_timeout,
            },
            deadline,
        };
        let members = stream::spawn(
            route.streams(&self.state.streams),
            plan,
            self.state.shutdown.clone(),
            permit,
        );
        Ok(route.annotate(Response::new(respond(members, paths, first_token))))
    }

    async fn count_members(
        &self,
        req: Request<pb::CountMembersRequest>,
    ) -> Result<Response<pb::CountMembersResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let r = req.into_inner();
        let target = selector(r.selector.as_ref())?;
        let sample = sample(r.sample.as_ref())?;
        let route = self.state.route(r.max_staleness.as_ref())?;
        let (count, live) = self
            .reader_on(&route)
            .count(
                ws,
                &target,
                sample.as_ref(),
                r.allow_expensive,
                self.state.clock.now_ms(),
            )
            .await?;
        Ok(route.annotate(Response::new(pb::CountMembersResponse {
            count,
            from_live: live.is_some(),
            live_changed_at: live.flatten().map(super::convert::ts),
        })))
    }

    async fn preview_segment(
        &self,
        req: Request<pb::PreviewSegmentRequest>,
    ) -> Result<Response<pb::PreviewSegmentResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let r = req.into_inner();
        let target = selector(r.selector.as_ref())?;
        let paths = mask(r.read_mask.as_ref(), "read_mask")?;
        let n = match r.sample_size {
            0 => 10,
            n @ 1..=100 => i64::from(n),
            _ => return Err(bad("sample_size", "must be 0 to 100")),
        };
        let route = self.state.route(r.max_staleness.as_ref())?;
        let p = self
            .reader_on(&route)
            .preview(ws, &target, n, r.allow_expensive, self.state.clock.now_ms())
            .await?;
        Ok(route.annotate(Response::new(pb::PreviewSegmentResponse {
            count: p.count,
            sample: p
                .sample
                .iter()
                .map(|c| cc::apply_read_mask(cc::to_proto(c), &paths))
                .collect(),
            estimated_cost: p.cost,
            estimated_rows: p.rows,
            elapsed_ms: p.elapsed.as_secs_f64() * 1000.0,
        })))
    }

    async fn check_membership(
        &self,
        req: Request<pb::CheckMembershipRequest>,
    ) -> Result<Response<pb::CheckMembershipResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let r = req.into_inner();
        let key = checked("contact", cc::key_from_proto(r.contact.as_ref()))?;
        if r.segment_ids.len() > 1000 {
            return Err(bad("segment_ids", "at most 1000"));
        }
        let (contact_id, answers) = self
            .reader()
            .check(
                ws,
                &key,
                &r.segment_ids,
                r.explain,
                self.state.clock.now_ms(),
            )
            .await?;
        Ok(Response::new(pb::CheckMembershipResponse {
            contact_id,
            segments: answers
                .into_iter()
                .map(|m| pb::SegmentMembership {
                    segment_id: m.id,
                    segment_name: m.name,
                    member: m.member,
                    conditions: m
                        .explanation
                        .into_iter()
                        .map(|n| pb::ConditionResult {
                            path: n.path,
                            condition: n.condition,
                            held: n.held,
                        })
                        .collect(),
                })
                .collect(),
        }))
    }

    async fn breakdown_segment(
        &self,
        req: Request<pb::BreakdownSegmentRequest>,
    ) -> Result<Response<pb::BreakdownSegmentResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let r = req.into_inner();
        let target = selector(r.selector.as_ref())?;
        if !(1..=2).contains(&r.group_by.len()) {
            return Err(bad("group_by", "give one or two fields"));
        }
        let n = match r.top_n {
            0 => 10,
            n @ 1..=1000 => i64::from(n),
            _ => return Err(bad("top_n", "must be 0 to 1000")),
        };
        let route = self.state.route(r.max_staleness.as_ref())?;
        let b = self
            .reader_on(&route)
            .breakdown(
                ws,
                &target,
                &r.group_by,
                n,
                r.allow_expensive,
                self.state.clock.now_ms(),
            )
            .await?;
        Ok(route.annotate(Response::new(pb::BreakdownSegmentResponse {
            rows: b
                .groups
                .into_iter()
                .map(|g| pb::BreakdownRow {
                    missing: g.keys.iter().map(Option::is_none).collect(),
                    keys: g.keys.into_iter().map(Option::unwrap_or_default).collect(),
                    count: g.count,
                })
                .collect(),
            other_count: b.other,
            group_count: b.group_count,
            total: b.total,
        })))
    }

    async fn overlap_segments(
        &self,
        req: Request<pb::OverlapSegmentsRequest>,
    ) -> Result<Response<pb::OverlapSegmentsResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let r = req.into_inner();
        let route = self.state.route(r.max_staleness.as_ref())?;
        let ids = r.segment_ids;
        if !(2..=5).contains(&ids.len()) {
            return Err(bad("segment_ids", "give 2 to 5 segments"));
        }
        if let Some(i) = ids
            .iter()
            .enumerate()
            .position(|(i, id)| *id <= 0 || ids[..i].contains(id))
        {
            return Err(bad(
                &format!("segment_ids[{i}]"),
                "must be distinct positive ids",
            ));
        }
        let o = self
            .reader_on(&route)
            .overlap(ws, &ids, self.state.clock.now_ms())
            .await?;
        let overlap = |(ids, count): (Vec<i64>, i64)| pb::Overlap {
            segment_ids: ids,
            count,
        };
        Ok(route.annotate(Response::new(pb::OverlapSegmentsResponse {
            segments: o
                .sizes
                .into_iter()
                .map(|(id, n)| overlap((vec![id], n)))
                .collect(),
            intersections: o.intersections.into_iter().map(overlap).collect(),
            union_count: o.union,
        })))
    }

    async fn segment_metrics(
        &self,
        req: Request<pb::SegmentMetricsRequest>,
    ) -> Result<Response<pb::SegmentMetricsResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let now = self.state.clock.now_ms();
        let ask = checked("", metrics::ask(req.get_ref(), now))?;
        let report = self.reader().metrics(ws, &ask, now).await?;
        Ok(Response::new(metrics::response(&report, &ask)))
    }

    async fn get_metrics_settings(
        &self,
        req: Request<pb::GetMetricsSettingsRequest>,
    ) -> Result<Response<pb::GetMetricsSettingsResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let mut client = self.state.conn_in(ws).await?;
        let t = client
            .run(async |tx| db::metrics::settings(tx, ws).await)
            .await?;
        Ok(Response::new(pb::GetMetricsSettingsResponse {
            settings: Some(metrics::settings(&t)),
        }))
    }

    async fn update_metrics_settings(
        &self,
        req: Request<pb::UpdateMetricsSettingsRequest>,
    ) -> Result<Response<pb::UpdateMetricsSettingsResponse>, Status> {
        let ws = self.state.workspace(&req).await?;
        let r = req.into_inner();
        let t = crate::service::metrics::update_settings(&self.state.pool, ws, |current| {
            metrics::updated(&r, current)
        })
        .await?;
        Ok(Response::new(pb::UpdateMetricsSettingsResponse {
            settings: Some(metrics::settings(&t)),
        }))
    }
}
