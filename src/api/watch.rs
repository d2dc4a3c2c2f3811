//! WatchMembership: the request checked, the feed's items as messages.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::AppState;
use super::convert::ts;
use super::error::invalid;
use crate::error::Violation;
use crate::proto as pb;
use crate::service::feed::{self, Item, Start};

/// Most segments one watch names.
const MAX_SEGMENTS: usize = 100;

/// The response stream.
pub type WatchStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchMembershipResponse, Status>> + Send>>;

/// Runs WatchMembership for `req`.
///
/// # Errors
/// `INVALID_ARGUMENT` for bad segment ids or offsets, `OUT_OF_RANGE` for a
/// trimmed start offset.
pub async fn watch(
    state: &AppState,
    req: Request<pb::WatchMembershipRequest>,
) -> Result<Response<WatchStream>, Status> {
    use pb::watch_membership_request::Start as S;
    let ws = state.workspace(&req).await?;
    let r = req.into_inner();
    let mut v = Vec::new();
    if r.segment_ids.len() > MAX_SEGMENTS {
        v.push(Violation::new(
            "segment_ids",
            format!("at most {MAX_SEGMENTS} segments"),
        ));
    }
    if let Some(i) = r.segment_ids.iter().position(|id| *id <= 0) {
        v.push(Violation::new(
            format!("segment_ids[{i}]"),
            "must be positive",
        ));
    }
    let start = match r.start {
        None | Some(S::Now(_)) => Start::Now,
        Some(S::SnapshotFirst(_)) => Start::SnapshotFirst,
        Some(S::AfterOffset(o)) if o >= 0 => Start::After(o),
        Some(S::AfterOffset(_)) => {
            v.push(Violation::new("after_offset", "must not be negative"));
            Start::Now
        }
    };
    if !v.is_empty() {
        return Err(invalid(v));
    }
    let w = feed::Watch {
        ws,
        segments: (!r.segment_ids.is_empty()).then_some(r.segment_ids),
        start,
        stall: state.limits.stream_stall_timeout,
    };
    let feed::Watching { mut items, outcome } =
        feed::start(&state.pool, &state.feed, w, state.shutdown.clone()).await?;
    let out: WatchStream = Box::pin(async_stream::stream! {
        while let Some(item) = items.recv().await {
            yield Ok(message(item));
        }
        match outcome.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => yield Err(Status::from(e)),
            Err(_) => yield Err(Status::internal("the watch stopped without an outcome")),
        }
    });
    Ok(Response::new(out))
}

fn message(item: Item) -> pb::WatchMembershipResponse {
    match item {
        Item::Snapshot {
            segment,
            ids,
            offset,
            last,
        } => pb::WatchMembershipResponse {
            snapshot: Some(pb::SnapshotMembers {
                segment_id: segment,
                contact_ids: ids,
            }),
            offset,
            snapshot_complete: last,
            ..Default::default()
        },
        Item::Changes(changes) => {
            let now = chrono::Utc::now();
            for c in &changes {
                crate::observe::delivered((now - c.at).num_milliseconds().max(0) as f64 / 1000.0);
            }
            changes_message(changes)
        }
    }
}

fn changes_message(changes: Vec<crate::db::feed::Change>) -> pb::WatchMembershipResponse {
    pb::WatchMembershipResponse {
        offset: changes.last().map_or(0, |c| c.offset),
        changes: changes
            .into_iter()
            .map(|c| pb::MembershipChange {
                offset: c.offset,
                segment_id: c.segment,
                contact_id: c.contact,
                entered: c.entered,
                cause: c.cause,
                at: Some(ts(c.at)),
            })
            .collect(),
        ..Default::default()
    }
}
