//! Load shedding. Queries and writes each run at most so many at once
//! (member streams have their own slots, see `Limits::max_streams`). A call
//! that finds its class full waits a little, never past half its deadline,
//! and is then refused with RESOURCE_EXHAUSTED and a RetryInfo detail: an
//! overloaded server answers at once instead of queueing callers for
//! PostgreSQL connections past their deadlines.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::auth::{Role, required};

/// What a refused caller is told to wait before retrying.
pub const RETRY_AFTER: Duration = Duration::from_millis(250);

/// The classes calls are limited by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Counts, previews, checks, breakdowns, metrics, reads.
    Query,
    /// Contact, event, deal, segment and settings writes.
    Write,
    /// Not limited here: member streams and change feeds (their own slots
    /// and stall limits), streamed writes (batch by batch, by the pool),
    /// health, reflection, administration.
    Unlimited,
}

/// The class of the RPC at `path`.
pub fn class(path: &str) -> Class {
    let method = path.rsplit('/').next().unwrap_or("");
    // Streams last as long as their callers like: member streams and feeds
    // have their own slots, and streamed writes hold a connection only
    // while a batch is written (the pool bounds them, and an idle import
    // must not hold a slot).
    if matches!(
        method,
        "StreamMembers"
            | "WatchMembership"
            | "BatchUpsertContacts"
            | "BatchUpsertDeals"
            | "RecordEvents"
    ) {
        return Class::Unlimited;
    }
    match required(path) {
        Some(Role::Read) => Class::Query,
        Some(Role::Write) => Class::Write,
        _ => Class::Unlimited,
    }
}

/// The tower layer that sheds load (see the module docs).
#[derive(Debug, Clone)]
pub struct ShedLayer {
    queries: Arc<Semaphore>,
    writes: Arc<Semaphore>,
    wait: Duration,
}

impl ShedLayer {
    /// At most `queries` and `writes` calls of each class at once; a call
    /// waits at most `wait` for a slot.
    pub fn new(queries: usize, writes: usize, wait: Duration) -> Self {
        Self {
            queries: Arc::new(Semaphore::new(queries)),
            writes: Arc::new(Semaphore::new(writes)),
            wait,
        }
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            limits: self.clone(),
        }
    }
}

/// See [`ShedLayer`].
#[derive(Debug, Clone)]
pub struct Shed<S> {
    inner: S,
    limits: ShedLayer,
}

/// The `grpc-timeout` header as a duration.
pub fn deadline(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn exhausted(class: Class) -> Status {
    let what = match class {
        Class::Query => "queries",
        _ => "writes",
    };
    Status::with_error_details(
        Code::ResourceExhausted,
        format!("too many {what} are running; retry after the RetryInfo delay"),
        ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
    )
}

impl<S, B> tower::Service<http::Request<B>> for Shed<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = crate::observe::Respond<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let class = class(req.uri().path());
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let slots = match class {
            Class::Query => Some(self.limits.queries.clone()),
            Class::Write => Some(self.limits.writes.clone()),
            Class::Unlimited => None,
        };
        let wait =
            deadline(req.headers()).map_or(self.limits.wait, |d| self.limits.wait.min(d / 2));
        Box::pin(async move {
            let Some(slots) = slots else {
                return inner.call(req).await;
            };
            let permit = match tokio::time::timeout(wait, slots.acquire_owned()).await {
                Ok(Ok(p)) => p,
                _ => return Ok(exhausted(class).into_http()),
            };
            let resp = inner.call(req).await?;
            let (parts, body) = resp.into_parts();
            let body = tonic::body::Body::new(Holding {
                inner: body,
                _permit: permit,
            });
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

/// A response body that keeps its call's slot until it is done.
struct Holding {
    inner: tonic::body::Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Holding {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_deadlines() {
        assert_eq!(class("/segd.v1.QueryService/CountMembers"), Class::Query);
        assert_eq!(
            class("/segd.v1.QueryService/StreamMembers"),
            Class::Unlimited
        );
        assert_eq!(
            class("/segd.v1.QueryService/WatchMembership"),
            Class::Unlimited
        );
        assert_eq!(class("/segd.v1.ContactService/GetContact"), Class::Query);
        assert_eq!(
            class("/segd.v1.ContactService/RecordEvents"),
            Class::Unlimited
        );
        assert_eq!(class("/segd.v1.ContactService/UpdateContact"), Class::Write);
        assert_eq!(class("/grpc.health.v1.Health/Check"), Class::Unlimited);
        assert_eq!(
            class("/segd.v1.WorkspaceService/CreateWorkspace"),
            Class::Unlimited
        );
        let mut h = http::HeaderMap::new();
        h.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(deadline(&h), Some(Duration::from_millis(250)));
        h.insert("grpc-timeout", "3S".parse().unwrap());
        assert_eq!(deadline(&h), Some(Duration::from_secs(3)));
        h.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(deadline(&h), None);
    }
}
