//! WatchMembership: the change feed of live segments, delivered in offset
//! order, past changes first and then live ones as they commit.
//!
//! One LISTEN session per server hears the maintainers' notifications (from
//! any replica) and bumps a generation counter; each watcher waits on that
//! counter, then reads what is new for its workspace. Nothing polls in a
//! loop. A watcher that stops reading is cut off after the stall timeout,
//! and a slow one slows only itself.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::db::scope::Scoped;
use crate::db::{self, feed::Change};
use crate::error::{Error, Result};
use crate::model::WorkspaceId;

/// Changes read per query.
const PAGE: i64 = 1_000;
/// Snapshot members per message.
const SNAPSHOT_PAGE: i64 = 10_000;

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// After this offset.
    After(i64),
    /// After the current last offset.
    Now,
    /// The current members, then the changes after them.
    SnapshotFirst,
}

/// What a watcher receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// Some members of a segment as of `offset`; `last` on the final one.
    Snapshot {
        /// Segment.
        segment: i64,
        /// Members, ascending.
        ids: Vec<i64>,
        /// The feed offset the snapshot reflects.
        offset: i64,
        /// The snapshot's last message.
        last: bool,
    },
    /// Changes in offset order.
    Changes(Vec<Change>),
}

/// Hears the feed's notifications for this server.
#[derive(Debug)]
pub struct Listener {
    generation: watch::Sender<u64>,
}

impl Listener {
    /// A listener that has heard nothing yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            generation: watch::Sender::new(0),
        })
    }

    /// Notifications as a changing counter.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Listens on `cfg`'s database until `stop`, reconnecting after errors.
    pub async fn run(self: Arc<Self>, cfg: db::ConnInfo, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                r = self.session(&cfg) => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "listening for feed notifications; reconnecting");
                    }
                }
            }
            // Whatever was missed while disconnected: wake every watcher.
            self.generation.send_modify(|g| *g += 1);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn session(&self, cfg: &db::ConnInfo) -> Result<()> {
        let (client, mut conn) = cfg.connect().await?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(_)) => {
                        if tx.send(()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "feed listener connection");
                        return;
                    }
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {}", db::feed::CHANNEL))
            .await?;
        // Changes appended before LISTEN took effect.
        self.generation.send_modify(|g| *g += 1);
        while rx.recv().await.is_some() {
            self.generation.send_modify(|g| *g += 1);
        }
        driver.abort();
        Err(Error::Unavailable(
            "the feed listener's connection closed".into(),
        ))
    }
}

/// A running watch: items, and how it ended.
pub struct Watching {
    /// Items, in order.
    pub items: mpsc::Receiver<Item>,
    /// Why the watch ended (it ends only on errors and shutdown).
    pub outcome: oneshot::Receiver<Result<()>>,
}

/// What a watch reads.
#[derive(Debug, Clone)]
pub struct Watch {
    /// The workspace.
    pub ws: WorkspaceId,
    /// Segments, or every one.
    pub segments: Option<Vec<i64>>,
    /// Where it starts.
    pub start: Start,
    /// A watcher that reads nothing for this long is cut off.
    pub stall: Duration,
}

/// Checks where a watch starts and runs it.
///
/// # Errors
/// `OutOfRange` when the start offset was trimmed, naming the oldest offset
/// held; the database is unavailable.
pub async fn start(
    pool: &crate::db::Pool,
    listener: &Listener,
    w: Watch,
    stop: CancellationToken,
) -> Result<Watching> {
    let wake = listener.subscribe();
    let (last, oldest) = Scoped::get(pool, w.ws)
        .await?
        .run(async |tx| db::feed::bounds(tx, w.ws).await)
        .await?;
    let after = match w.start {
        Start::After(o) if o < 0 || o > last => {
            return Err(Error::OutOfRange(format!(
                "offset {o} is not in the feed, whose last offset is {last}"
            )));
        }
        Start::After(o) if o + 1 < oldest => {
            return Err(Error::OutOfRange(format!(
                "changes after offset {o} were trimmed; the oldest offset held is {oldest}: resync with snapshot_first"
            )));
        }
        Start::After(o) => o,
        Start::Now => last,
        Start::SnapshotFirst => -1,
    };
    let (items, rx) = mpsc::channel(4);
    let (done, outcome) = oneshot::channel();
    let pool = pool.clone();
    tokio::spawn(async move {
        let r = tokio::select! {
            r = produce(&pool, &w, after, wake, &items) => r,
            () = stop.cancelled() => Err(Error::Unavailable("the server is shutting down".into())),
            () = items.closed() => Ok(()),
        };
        let _ = done.send(r);
    });
    Ok(Watching { items: rx, outcome })
}

async fn send(items: &mpsc::Sender<Item>, item: Item, stall: Duration) -> Result<()> {
    match tokio::time::timeout(stall, items.send(item)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Error::Cancelled("the watcher went away".into())),
        Err(_) => Err(Error::DeadlineExceeded(format!(
            "the watcher read nothing for {stall:?}"
        ))),
    }
}

async fn produce(
    pool: &crate::db::Pool,
    w: &Watch,
    after: i64,
    mut wake: watch::Receiver<u64>,
    items: &mpsc::Sender<Item>,
) -> Result<()> {
    let segments = w.segments.as_deref();
    let mut after = after;
    if after < 0 {
        after = snapshot(pool, w, items).await?;
    }
    loop {
        wake.mark_unchanged();
        let page = {
            Scoped::get(pool, w.ws)
                .await?
                .run(async |tx| db::feed::after(tx, w.ws, after, segments, PAGE).await)
                .await?
        };
        let full = page.len() as i64 == PAGE;
        if let Some(c) = page.last() {
            after = c.offset;
            send(items, Item::Changes(page), w.stall).await?;
        }
        if !full && wake.changed().await.is_err() {
            return Err(Error::Unavailable("the feed listener stopped".into()));
        }
    }
}

/// Sends the stored members of the watched live segments as of one feed
/// offset, read in one REPEATABLE READ snapshot; returns that offset.
async fn snapshot(pool: &crate::db::Pool, w: &Watch, items: &mpsc::Sender<Item>) -> Result<i64> {
    let mut client = Scoped::get(pool, w.ws).await?;
    let read = async |tx: &tokio_postgres::Transaction<'_>| {
        let (offset, _) = db::feed::bounds(tx, w.ws).await?;
        let segments = db::feed::live_segments(tx, w.ws, w.segments.as_deref()).await?;
        let mut pending: Option<Item> = None;
        for s in segments {
            let mut from = 0;
            loop {
                let ids = db::feed::members(tx, w.ws, s, from, SNAPSHOT_PAGE).await?;
                let Some(&lastid) = ids.last() else { break };
                from = lastid;
                let more = ids.len() as i64 == SNAPSHOT_PAGE;
                if let Some(p) = pending.replace(Item::Snapshot {
                    segment: s,
                    ids,
                    offset,
                    last: false,
                }) {
                    send(items, p, w.stall).await?;
                }
                if !more {
                    break;
                }
            }
        }
        Ok((offset, pending))
    };
    let (offset, pending) = client.read_snapshot(read).await?;
    let last = match pending {
        Some(Item::Snapshot {
            segment,
            ids,
            offset,
            ..
        }) => Item::Snapshot {
            segment,
            ids,
            offset,
            last: true,
        },
        _ => Item::Snapshot {
            segment: 0,
            ids: vec![],
            offset,
            last: true,
        },
    };
    send(items, last, w.stall).await?;
    Ok(offset)
}
