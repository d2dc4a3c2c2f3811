//! Every write to contacts and what hangs off them goes through here. The
//! layer owns the transaction: it runs the write, records in the same
//! transaction what the write changed (the change queue live segments are
//! maintained from), commits, and retries a transaction that lost a race.
//! API handlers never write through `db` directly.

use std::collections::BTreeSet;

use crate::db::changes::{self, Touched};
use crate::db::events::EventResult;
use crate::db::import::RowResult;
use crate::db::merge::Merged;
use crate::db::scope::Scoped;
use crate::db::{self, Tx};
use crate::error::{Error, Result};
use crate::model::WorkspaceId;
use crate::model::action::{Action, Trigger};
use crate::model::contact::Contact;
use crate::model::deal::{Deal, DealInput};
use crate::model::event::NewEvent;
use crate::model::patch::Patch;

/// One write: what it does inside the transaction, and what it changed.
pub trait Write: Sync {
    /// Its result.
    type Out: Send;

    /// What the change feed names as the cause.
    const CAUSE: &'static str;

    /// Which failures of the whole transaction are worth running it again.
    fn retryable(e: &Error) -> bool {
        db::conflicted(e)
    }

    /// Runs the write in `tx`; returns its result and what it changed.
    fn apply(
        &self,
        tx: &Tx<'_>,
        ws: WorkspaceId,
    ) -> impl Future<Output = Result<(Self::Out, Vec<Touched>)>> + Send;
}

/// Runs `w` in its own transaction on `client`, recording its changes.
///
/// # Errors
/// The write's own errors; the database is unavailable.
pub async fn run<W: Write>(client: &mut Scoped, ws: WorkspaceId, w: &W) -> Result<W::Out> {
    let mut retry = db::Retry::default();
    loop {
        match attempt(client, ws, w).await {
            Err(e) if retry.again(&e, W::retryable).await => {}
            other => return other,
        }
    }
}

async fn attempt<W: Write>(client: &mut Scoped, ws: WorkspaceId, w: &W) -> Result<W::Out> {
    client
        .run_tx(None, false, async |tx| {
            cause(&**tx, W::CAUSE).await?;
            let (out, touched) = w.apply(tx, ws).await?;
            for t in &touched {
                changes::enqueue(&**tx, ws, t, W::CAUSE).await?;
            }
            Ok(out)
        })
        .await
}

/// Names the cause of the transaction's contact changes, for their history
/// (`contact_changes`, written by a trigger that reads it).
async fn cause(tx: &impl tokio_postgres::GenericClient, cause: &str) -> Result<()> {
    tx.execute("SELECT set_config('segd.cause', $1, true)", &[&cause])
        .await?;
    Ok(())
}

/// Most contacts one statement of a segment action writes.
const ACTION_SLICE: usize = 2_000;

/// Applies a segment's action to the contacts that entered or exited it,
/// inside the maintainer's transaction `tx`, as an ordinary contact write:
/// its changes carry the cause `segment <id> entered` (or `exited`) into
/// the contacts' history and the queue, at cascade depth `depth`. Returns
/// the contacts it changed.
///
/// # Errors
/// The database is unavailable.
pub async fn segment_action(
    tx: &impl tokio_postgres::GenericClient,
    ws: WorkspaceId,
    segment: i64,
    action: &Action,
    ids: &[i64],
    depth: i32,
) -> Result<Vec<i64>> {
    let why = format!(
        "segment {segment} {}",
        match action.on {
            Trigger::Enter => "entered",
            Trigger::Exit => "exited",
        }
    );
    cause(tx, &why).await?;
    // In slices, each statement well inside the statement timeout (a bulk
    // import can make hundreds of thousands of contacts enter at once).
    let mut changed = Vec::new();
    for slice in ids.chunks(ACTION_SLICE) {
        changed.extend(db::actions::apply(tx, ws, action, slice).await?);
    }
    let t = Touched::of(changed.iter().copied(), action.writes());
    changes::enqueue_at(tx, ws, &t, &why, depth).await?;
    Ok(changed)
}

/// CreateContact.
pub struct CreateContact<'a>(pub &'a Contact);

impl Write for CreateContact<'_> {
    type Out = Contact;
    const CAUSE: &'static str = "CreateContact";

    async fn apply(&self, tx: &Tx<'_>, ws: WorkspaceId) -> Result<(Contact, Vec<Touched>)> {
        let c = db::contacts::create(tx, ws, self.0).await?;
        let t = Touched::of([c.id], [changes::ANY.to_string()]);
        Ok((c, vec![t]))
    }
}

/// UpdateContact.
pub struct UpdateContact<'a> {
    /// The contact.
    pub id: i64,
    /// The version the caller read, if it gave an etag.
    pub expected: Option<i64>,
    /// The changes.
    pub patch: &'a Patch,
}

impl Write for UpdateContact<'_> {
    type Out = Contact;
    const CAUSE: &'static str = "UpdateContact";

    async fn apply(&self, tx: &Tx<'_>, ws: WorkspaceId) -> Result<(Contact, Vec<Touched>)> {
        let (before, after) =
            db::contacts::update(tx, ws, self.id, self.expected, self.patch).await?;
        let t = Touched::of([after.id], changes::contact_diff(&before, &after));
        Ok((after, vec![t]))
    }
}

/// DeleteContact.
pub struct DeleteContact {
    /// The contact.
    pub id: i64,
    /// The version the caller read, if it gave an etag.
    pub expected: Option<i64>,
}

impl Write for DeleteContact {
    type Out = ();
    const CAUSE: &'static str = "DeleteContact";

    async fn apply(&self, tx: &Tx<'_>, ws: WorkspaceId) -> Result<((), Vec<Touched>)> {
        db::contacts::delete(&**tx, ws, self.id, self.expected).await?;
        Ok(((), vec![Touched::of([self.id], [changes::ANY.into()])]))
    }
}

/// MergeContacts.
pub struct MergeContacts<'a> {
    /// The contact that stays.
    pub primary: i64,
    /// The contacts folded into it.
    pub duplicates: &'a [i64],
}

impl Write for MergeContacts<'_> {
    type Out = Merged;
    const CAUSE: &'static str = "MergeContacts";

    async fn apply(&self, tx: &Tx<'_>, ws: WorkspaceId) -> Result<(Merged, Vec<Touched>)> {
        let m = db::merge::merge(tx, ws, self.primary, self.duplicates).await?;
        let ids = std::iter::once(self.primary).chain(self.duplicates.iter().copied());
        Ok((m, vec![Touched::of(ids, [changes::ANY.into()])]))
    }
}

/// One batch of BatchUpsertContacts.
pub struct ImportContacts<'a>(pub &'a [(usize, Contact)]);

impl Write for ImportContacts<'_> {
    type Out = Vec<(usize, RowResult)>;
    const CAUSE: &'static str = "BatchUpsertContacts";

    fn retryable(e: &Error) -> bool {
        db::lost_race(e)
    }

    async fn apply(&self, tx: &Tx<'_>, ws: WorkspaceId) -> Result<(Self::Out, Vec<Touched>)> {
        let out = db::import::upsert_batch(tx, ws, self.0).await?;
        let (mut created, mut updated) = (BTreeSet::new(), BTreeSet::new());
        for (_, r) in &out {
            match r {
                RowResult::Created(id) => created.insert(*id),
                RowResult::Updated(id) => updated.insert(*id),
                _ => false,
            };
        }
        let touched = vec![
            Touched::of(created, [changes::ANY.into()]),
            Touched::of(updated, [changes::CONTACT.into()]),
        ];
        Ok((out, touched))
    }
}

/// One batch of RecordEvents.
pub struct RecordEvents<'a>(pub &'a [(usize, NewEvent)]);

impl Write for RecordEvents<'_> {
    type Out = Vec<(usize, EventResult)>;
    const CAUSE: &'static str = "RecordEvents";

    async fn apply(&self, tx: &Tx<'_>, ws: WorkspaceId) -> Result<(Self::Out, Vec<Touched>)> {
        db::events::record_batch(tx, ws, self.0).await
    }
}

/// One batch of BatchUpsertDeals, or UpsertDeal.
pub struct UpsertDeals<'a>(pub &'a [(usize, DealInput)]);

impl Write for UpsertDeals<'_> {
    type Out = Vec<(usize, RowResult)>;
    const CAUSE: &'static str = "UpsertDeals";

    fn retryable(e: &Error) -> bool {
        db::lost_race(e)
    }

    async fn apply(&self, tx: &Tx<'_>, ws: WorkspaceId) -> Result<(Self::Out, Vec<Touched>)> {
        let (out, touched) = db::deals::upsert_batch(tx, ws, self.0).await?;
        Ok((out, vec![touched]))
    }
}

/// Creates or updates one deal; returns it, and whether it was created.
///
/// # Errors
/// `NotFound` for an unknown deal id or contact; `InvalidArgument` for a
/// row a batch would fail.
pub async fn upsert_deal(
    client: &mut Scoped,
    ws: WorkspaceId,
    d: &DealInput,
) -> Result<(Deal, bool)> {
    let rows = [(0, d.clone())];
    let (_, outcome) = run(client, ws, &UpsertDeals(&rows))
        .await?
        .pop()
        .ok_or_else(|| Error::internal("no outcome for the deal"))?;
    let (id, created) = match outcome {
        RowResult::Created(id) => (id, true),
        RowResult::Updated(id) | RowResult::Unchanged(id) => (id, false),
        RowResult::Failed { field, error } if field == "contact" || field == "id" => {
            return Err(Error::NotFound(error));
        }
        RowResult::Failed { field, error } => return Err(Error::invalid(field, error)),
    };
    let deal = client
        .run(async |tx| db::deals::get(tx, ws, id).await)
        .await?;
    Ok((deal, created))
}

/// AddSegmentMembers or RemoveSegmentMembers.
pub struct EditMembers<'a> {
    /// The static segment.
    pub segment: i64,
    /// The contacts.
    pub ids: &'a [i64],
    /// Add (else remove).
    pub add: bool,
}

impl Write for EditMembers<'_> {
    type Out = u64;
    const CAUSE: &'static str = "EditSegmentMembers";

    async fn apply(&self, tx: &Tx<'_>, ws: WorkspaceId) -> Result<(u64, Vec<Touched>)> {
        let n = if self.add {
            db::segments::add_members(&**tx, ws, self.segment, self.ids).await?
        } else {
            db::segments::remove_members(&**tx, ws, self.segment, self.ids).await?
        };
        let t = Touched::of(self.ids.iter().copied(), [changes::members(self.segment)]);
        Ok((n, vec![t]))
    }
}
