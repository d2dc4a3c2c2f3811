//! Bulk writes streamed both ways (BatchUpsertContacts, RecordEvents,
//! BatchUpsertDeals). Each request message is one batch: its rows are
//! validated, the valid ones are applied on a pooled connection taken for
//! that batch only, and the batch is acknowledged as soon as it commits, with
//! its rows' outcomes and the running totals. A call can so import any
//! number of rows, holds no connection while the client is idle, and the
//! client always knows what committed. The next message is read while a
//! batch is being applied; a batch is acknowledged as soon as it commits.

use std::pin::Pin;

use futures::Stream;
use tonic::{Status, Streaming};

use super::AppState;
use super::convert::{activity, contact as cc};
use super::error::{MAX_DESCRIPTION, invalid, row_failure};
use crate::db::{self, events::EventResult, import::RowResult};
use crate::error::{Result, Violation, clip};
use crate::model::WorkspaceId;
use crate::model::contact::Contact;
use crate::model::deal::DealInput;
use crate::model::event::NewEvent;
use crate::proto as pb;
use crate::service::stats::Table;
use crate::service::writes;

/// Most rows in one batch (request message). Acknowledgements stay well
/// under the 4 MB default message limit of gRPC clients: a row's outcome is
/// about 20 bytes, a failed row's at most about 300.
pub const MAX_BATCH_ROWS: usize = 10_000;

/// A message's rows by index: the valid ones, and the outcomes of those
/// that failed validation.
pub type Split<R, O> = (Vec<(usize, R)>, Vec<(usize, O)>);

/// A stream of acknowledgements.
pub type Acks<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// One kind of bulk write.
pub trait BatchWrite: Send + 'static {
    /// A request message.
    type Request: Send + 'static;
    /// An acknowledgement.
    type Response: Send + 'static;
    /// A validated row.
    type Row: Send + Sync + 'static;
    /// A row's outcome.
    type Outcome: Send + 'static;
    /// The table new rows go into.
    const TABLE: Table;

    /// Whether an outcome is a new row (for fresh planner statistics).
    fn is_new(outcome: &Self::Outcome) -> bool;

    /// The rows of a request message: valid rows, and outcomes of the rows
    /// that failed validation (both by row index).
    fn rows(msg: Self::Request) -> Split<Self::Row, Self::Outcome>;

    /// Applies valid rows atomically on `client`.
    fn apply(
        client: &mut db::scope::Scoped,
        ws: WorkspaceId,
        rows: &[(usize, Self::Row)],
    ) -> impl Future<Output = Result<Vec<(usize, Self::Outcome)>>> + Send;

    /// The acknowledgement of batch `batch` (outcomes by row index, sorted),
    /// counted into the running totals.
    fn ack(&mut self, batch: usize, outcomes: Vec<(usize, Self::Outcome)>) -> Self::Response;
}

/// Runs a streamed bulk write of workspace `ws` over `requests`.
pub fn acknowledged<W: BatchWrite>(
    mut writer: W,
    mut requests: Streaming<W::Request>,
    state: &AppState,
    ws: WorkspaceId,
) -> Acks<W::Response>
where
    W::Request: Rows,
{
    let pool = state.pool.clone();
    let statistics = state.statistics.clone();
    Box::pin(async_stream::try_stream! {
        let mut batch = 0usize;
        let mut next = requests.message().await?;
        while let Some(msg) = next {
            if msg.rows() > MAX_BATCH_ROWS {
                Err(invalid(vec![Violation::new(
                    msg.field(),
                    format!(
                        "at most {MAX_BATCH_ROWS} rows per message; batches before {batch} were acknowledged"
                    ),
                )]))?;
            }
            let (rows, mut outcomes) = W::rows(msg);
            // Read ahead while PostgreSQL applies this batch, but acknowledge
            // it as soon as it commits, whether or not more has arrived.
            let applying = apply::<W>(&pool, ws, &rows);
            let reading = requests.message();
            tokio::pin!(applying, reading);
            let mut read = None;
            let applied = loop {
                tokio::select! {
                    applied = &mut applying => break applied,
                    r = &mut reading, if read.is_none() => read = Some(r),
                }
            };
            let applied = applied?;
            let new = applied.iter().filter(|(_, o)| W::is_new(o)).count();
            statistics.inserted(W::TABLE, ws, new as u64);
            outcomes.extend(applied);
            outcomes.sort_by_key(|(i, _)| *i);
            yield writer.ack(batch, outcomes);
            next = match read {
                Some(r) => r?,
                None => reading.await?,
            };
            batch += 1;
        }
    })
}

async fn apply<W: BatchWrite>(
    pool: &crate::db::Pool,
    ws: WorkspaceId,
    rows: &[(usize, W::Row)],
) -> Result<Vec<(usize, W::Outcome)>, Status> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    // Dropped mid-batch (the caller went away), the connection cancels its
    // statement and leaves the pool (see `Scoped`).
    let mut session = db::scope::Scoped::get(pool, ws).await?;
    Ok(W::apply(&mut session, ws, rows).await?)
}

/// A request message's row count, and the field that holds its rows.
pub trait Rows {
    /// Rows in the message.
    fn rows(&self) -> usize;
    /// The repeated field, for errors.
    fn field(&self) -> &'static str;
}

impl Rows for pb::BatchUpsertContactsRequest {
    fn rows(&self) -> usize {
        self.contacts.len()
    }
    fn field(&self) -> &'static str {
        "contacts"
    }
}

impl Rows for pb::RecordEventsRequest {
    fn rows(&self) -> usize {
        self.events.len()
    }
    fn field(&self) -> &'static str {
        "events"
    }
}

impl Rows for pb::BatchUpsertDealsRequest {
    fn rows(&self) -> usize {
        self.deals.len()
    }
    fn field(&self) -> &'static str {
        "deals"
    }
}

/// Converts a message's items, keeping the index of each; an item that
/// does not convert becomes a failure outcome made by `failed` from its
/// bounded (field, reason).
fn split<T, R, O>(
    items: Vec<T>,
    convert: impl Fn(T) -> Result<R, Vec<Violation>>,
    failed: impl Fn(String, String) -> O,
) -> Split<R, O> {
    let mut rows = Vec::with_capacity(items.len());
    let mut failures = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        match convert(item) {
            Ok(r) => rows.push((i, r)),
            Err(v) => {
                let (field, error) = row_failure(v);
                failures.push((i, failed(field, error)));
            }
        }
    }
    (rows, failures)
}

fn row_failed(field: String, error: String) -> RowResult {
    RowResult::Failed { field, error }
}

/// Running totals of rows with [`RowResult`] outcomes.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    created: i64,
    updated: i64,
    unchanged: i64,
    failed: i64,
}

impl Tally {
    /// Counts an outcome: its proto outcome, the row's id, and for a
    /// failure, the bounded field and reason.
    fn count(&mut self, r: RowResult) -> (pb::RowOutcome, i64, String, String) {
        let none = String::new;
        match r {
            RowResult::Created(id) => {
                self.created += 1;
                (pb::RowOutcome::Created, id, none(), none())
            }
            RowResult::Updated(id) => {
                self.updated += 1;
                (pb::RowOutcome::Updated, id, none(), none())
            }
            RowResult::Unchanged(id) => {
                self.unchanged += 1;
                (pb::RowOutcome::Unchanged, id, none(), none())
            }
            RowResult::Failed { field, error } => {
                self.failed += 1;
                let (field, error) = bounded(&field, &error);
                (pb::RowOutcome::Failed, 0, field, error)
            }
        }
    }
}

/// A failure reported by the database layer, bounded like validation ones.
fn bounded(field: &str, error: &str) -> (String, String) {
    (clip(field, 80), clip(error, MAX_DESCRIPTION))
}

/// BatchUpsertContacts, with its running totals.
#[derive(Debug, Default)]
pub struct ContactImport(Tally);

impl BatchWrite for ContactImport {
    type Request = pb::BatchUpsertContactsRequest;
    type Response = pb::BatchUpsertContactsResponse;
    type Row = Contact;
    type Outcome = RowResult;
    const TABLE: Table = Table::Contacts;

    fn is_new(o: &RowResult) -> bool {
        matches!(o, RowResult::Created(_))
    }

    fn rows(msg: Self::Request) -> Split<Contact, RowResult> {
        let convert = |p| {
            let c = cc::from_proto(p)?;
            if c.external_id.is_none() && c.email.is_none() {
                return Err(vec![Violation::new(
                    "external_id",
                    "an imported contact needs an external_id or an email",
                )]);
            }
            Ok(c)
        };
        split(msg.contacts, convert, row_failed)
    }

    async fn apply(
        client: &mut db::scope::Scoped,
        ws: WorkspaceId,
        rows: &[(usize, Contact)],
    ) -> Result<Vec<(usize, RowResult)>> {
        writes::run(client, ws, &writes::ImportContacts(rows)).await
    }

    fn ack(&mut self, batch: usize, outcomes: Vec<(usize, RowResult)>) -> Self::Response {
        let results = outcomes
            .into_iter()
            .map(|(i, r)| {
                let (outcome, contact_id, field, error) = self.0.count(r);
                pb::ContactRowResult {
                    batch_index: batch as i32,
                    row_index: i as i32,
                    outcome: outcome as i32,
                    contact_id,
                    field,
                    error,
                }
            })
            .collect();
        let t = self.0;
        pb::BatchUpsertContactsResponse {
            results,
            created: t.created,
            updated: t.updated,
            unchanged: t.unchanged,
            failed: t.failed,
            batch_index: batch as i32,
        }
    }
}

/// RecordEvents, with its running totals.
#[derive(Debug, Default)]
pub struct EventRecording(pb::RecordEventsResponse);

impl BatchWrite for EventRecording {
    type Request = pb::RecordEventsRequest;
    type Response = pb::RecordEventsResponse;
    type Row = NewEvent;
    type Outcome = EventResult;
    const TABLE: Table = Table::Events;

    fn is_new(o: &EventResult) -> bool {
        matches!(o, EventResult::Recorded)
    }

    fn rows(msg: Self::Request) -> Split<NewEvent, EventResult> {
        split(
            msg.events,
            |p| activity::event_from_proto(&p),
            |field, error| EventResult::Failed { field, error },
        )
    }

    async fn apply(
        client: &mut db::scope::Scoped,
        ws: WorkspaceId,
        rows: &[(usize, NewEvent)],
    ) -> Result<Vec<(usize, EventResult)>> {
        writes::run(client, ws, &writes::RecordEvents(rows)).await
    }

    fn ack(&mut self, batch: usize, outcomes: Vec<(usize, EventResult)>) -> Self::Response {
        let totals = &mut self.0;
        let results = outcomes
            .into_iter()
            .map(|(i, r)| {
                let mut row = pb::EventRowResult {
                    batch_index: batch as i32,
                    row_index: i as i32,
                    ..Default::default()
                };
                row.outcome = match r {
                    EventResult::Recorded => {
                        totals.recorded += 1;
                        pb::EventOutcome::Recorded
                    }
                    EventResult::Duplicate => {
                        totals.duplicates += 1;
                        pb::EventOutcome::Duplicate
                    }
                    EventResult::Failed { field, error } => {
                        totals.failed += 1;
                        (row.field, row.error) = bounded(&field, &error);
                        pb::EventOutcome::Failed
                    }
                } as i32;
                row
            })
            .collect();
        pb::RecordEventsResponse {
            results,
            batch_index: batch as i32,
            ..totals.clone()
        }
    }
}

/// BatchUpsertDeals, with its running totals.
#[derive(Debug, Default)]
pub struct DealImport(Tally);

impl BatchWrite for DealImport {
    type Request = pb::BatchUpsertDealsRequest;
    type Response = pb::BatchUpsertDealsResponse;
    type Row = DealInput;
    type Outcome = RowResult;
    const TABLE: Table = Table::Deals;

    fn is_new(o: &RowResult) -> bool {
        matches!(o, RowResult::Created(_))
    }

    fn rows(msg: Self::Request) -> Split<DealInput, RowResult> {
        split(msg.deals, |p| activity::deal_from_proto(&p), row_failed)
    }

    async fn apply(
        client: &mut db::scope::Scoped,
        ws: WorkspaceId,
        rows: &[(usize, DealInput)],
    ) -> Result<Vec<(usize, RowResult)>> {
        writes::run(client, ws, &writes::UpsertDeals(rows)).await
    }

    fn ack(&mut self, batch: usize, outcomes: Vec<(usize, RowResult)>) -> Self::Response {
        let results = outcomes
            .into_iter()
            .map(|(i, r)| {
                let (outcome, deal_id, field, error) = self.0.count(r);
                pb::DealRowResult {
                    batch_index: batch as i32,
                    row_index: i as i32,
                    outcome: outcome as i32,
                    deal_id,
                    field,
                    error,
                }
            })
            .collect();
        let t = self.0;
        pb::BatchUpsertDealsResponse {
            batch_index: batch as i32,
            results,
            created: t.created,
            updated: t.updated + t.unchanged,
            failed: t.failed,
        }
    }
}
