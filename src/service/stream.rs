//! Streaming segment members. A spawned producer opens a dedicated session
//! (see `db::stream_conn`), runs the compiled query in one read-only
//! REPEATABLE READ transaction, in id order, and feeds batches into a small
//! bounded channel: a slow reader slows the query (backpressure reaches
//! PostgreSQL through the socket), memory stays bounded, and a reader that
//! goes away, passes its deadline, stops reading for too long, or a server
//! shutdown stops the query on the server.
//!
//! How a stream ended travels apart from the batches, on a oneshot channel
//! the reader checks after the last batch: a failure can never be lost
//! behind a full channel, and a stream that did not deliver its summary
//! never looks complete.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::db::{self, stream_conn};
use crate::error::{Error, Result};
use crate::model::WorkspaceId;
use crate::model::contact::Contact;
use crate::segment::plan::Plan;
use crate::segment::render::{Order, Query, Sample, Select};

/// Ids per message at most; messages start smaller so the first arrives fast.
pub const MAX_ID_BATCH: usize = 32_768;
const FIRST_ID_BATCH: usize = 512;
/// Contacts per batch at most (the API splits further by encoded size).
pub const MAX_CONTACT_BATCH: usize = 256;
/// Batches buffered between the query and the client.
const CHANNEL: usize = 4;

/// Where a stream is: the last id delivered, how many rows were delivered
/// in all (across resumes), the evaluation instant, and a fingerprint of
/// what is being streamed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// Version of the token format.
    pub v: u8,
    /// Last id delivered.
    pub after: i64,
    /// Rows delivered so far by this stream and the calls it resumed, so a
    /// `limit` holds across resumes.
    #[serde(default)]
    pub n: u64,
    /// Relative conditions are evaluated at this instant (milliseconds).
    pub at: i64,
    /// Fingerprint of the query; a token only resumes the same query.
    pub fp: String,
}

impl Cursor {
    /// The opaque token.
    pub fn token(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(self).expect("cursor serialises"))
    }

    /// Parses a token.
    ///
    /// # Errors
    /// `InvalidArgument` on `resume_token`.
    pub fn parse(token: &str) -> Result<Cursor> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|b| serde_json::from_slice::<Cursor>(&b).ok())
            .filter(|c| c.v == 1)
            .ok_or_else(|| Error::invalid("resume_token", "not a token from StreamMembers"))
    }

    /// The evaluation instant.
    pub fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.at).unwrap_or_else(Utc::now)
    }
}

/// FNV-1a over the query text and parameters, sample included: stable
/// across builds.
pub fn fingerprint(c: &Plan, sample: Option<&Sample>, projection: bool) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |b: &[u8]| {
        for x in b {
            h ^= u64::from(*x);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    let q = c.render(&Query {
        sample,
        ..Query::of(Select::Ids)
    });
    feed(q.sql.as_bytes());
    for p in &q.params {
        feed(p.to_json().to_string().as_bytes());
    }
    feed(&[u8::from(projection)]);
    format!("{h:016x}")
}

/// Time limits of one stream.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Statement timeout (zero: none).
    pub statement: Duration,
    /// How long the reader may leave a batch unread before the stream ends
    /// with a resumable error (zero: no limit).
    pub stall: Duration,
    /// How long opening a session may take.
    pub connect: Duration,
}

/// What to stream.
#[derive(Debug, Clone)]
pub struct Job {
    /// The workspace (for decoding custom fields).
    pub ws: WorkspaceId,
    /// The compiled segment.
    pub compiled: Plan,
    /// Only a sample or split of its members.
    pub sample: Option<Sample>,
    /// Stream whole contacts rather than ids.
    pub contacts: bool,
    /// Stop after this many rows in this call.
    pub limit: Option<i64>,
    /// Where to start: after `start.after`, with `start.n` rows delivered
    /// before; the evaluation instant and fingerprint go into every token.
    pub start: Cursor,
    /// Time limits.
    pub timeouts: Timeouts,
    /// The caller's deadline, if it sent one.
    pub deadline: Option<tokio::time::Instant>,
}

/// One message of a stream.
#[derive(Debug, Clone)]
pub enum Item {
    /// Member ids and the cursor after them.
    Ids(Vec<i64>, Cursor),
    /// Members and the cursor after them.
    Contacts(Vec<Contact>, Cursor),
    /// The end: rows delivered, snapshot read, evaluation instant, and the
    /// cursor after the last row.
    Done {
        /// Rows delivered by this call.
        total: u64,
        /// pg_current_snapshot() of the stream's transaction.
        snapshot: String,
        /// Evaluation instant.
        now: DateTime<Utc>,
        /// The cursor after everything delivered.
        cursor: Cursor,
    },
}

/// The receiving end of a stream: batches, then how it ended. `outcome`
/// is `Ok` only after [`Item::Done`] was sent.
#[derive(Debug)]
pub struct Members {
    /// The batches, ending with [`Item::Done`] when complete.
    pub items: mpsc::Receiver<Item>,
    /// How the stream ended; read it after `items` is exhausted.
    pub outcome: oneshot::Receiver<Result<()>>,
}

/// Starts the producer on its own task and returns the receiving end. The
/// permit bounds concurrent streams and is released when the stream ends.
pub fn spawn(
    sessions: Arc<stream_conn::StreamSessions>,
    plan: Job,
    shutdown: CancellationToken,
    permit: OwnedSemaphorePermit,
) -> Members {
    let (tx, items) = mpsc::channel(CHANNEL);
    let (done, outcome) = oneshot::channel();
    tokio::spawn(async move {
        let r = produce(&sessions, &plan, &tx, &shutdown).await;
        if let Err(e) = &r {
            tracing::info!(error = %e, "member stream ended early");
        }
        let _ = done.send(r);
        drop(permit);
    });
    Members { items, outcome }
}

/// Why a stream stopped before its end.
#[derive(Debug)]
enum End {
    /// The reader left; the query must be cancelled.
    Abandoned,
    /// The caller's deadline passed; the query must be cancelled.
    Expired,
    /// The server is shutting down; the query must be cancelled.
    Shutdown,
    /// The reader left a batch unread for too long.
    Stalled(Duration),
}

impl End {
    /// What the reader is told.
    fn error(self) -> Error {
        match self {
            End::Abandoned => Error::Aborted("the reader went away".into()),
            End::Expired => Error::DeadlineExceeded(
                "the call's deadline passed mid-stream; resume with the last token".into(),
            ),
            End::Shutdown => {
                Error::Unavailable("the server is shutting down; resume with the last token".into())
            }
            End::Stalled(d) => Error::Aborted(format!(
                "the stream made no progress for {}s because the reader stopped reading; \
                 resume with the last token",
                d.as_secs()
            )),
        }
    }
}

/// A stream stopped: by a stop condition, or by a failure.
#[derive(Debug)]
enum Stop {
    End(End),
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

type Step<T> = std::result::Result<T, Stop>;

async fn produce(
    sessions: &stream_conn::StreamSessions,
    plan: &Job,
    tx: &mpsc::Sender<Item>,
    shutdown: &CancellationToken,
) -> Result<()> {
    let mut out = Out {
        tx,
        shutdown,
        expired: Box::pin(tokio::time::sleep_until(plan.deadline.unwrap_or_else(
            || tokio::time::Instant::now() + Duration::from_secs(86_400 * 365),
        ))),
        stall: plan.timeouts.stall,
        cursor: plan.start.clone(),
        target: FIRST_ID_BATCH,
        total: 0,
    };
    let connect = async {
        tokio::time::timeout(plan.timeouts.connect, sessions.get())
            .await
            .unwrap_or_else(|_| {
                Err(Error::Unavailable(format!(
                    "no database session for the stream within {}s; retry",
                    plan.timeouts.connect.as_secs()
                )))
            })
    };
    let session = match out.wait(connect).await {
        Ok(s) => s,
        Err(Stop::End(end)) => return Err(end.error()),
        Err(Stop::Failed(e)) => return Err(e),
    };
    let canceller = session.canceller();
    let stopped = match run(&session, plan, &mut out).await {
        Ok(()) => {
            sessions.put(session);
            return Ok(());
        }
        Err(stop) => stop,
    };
    // Stop the statement on the server and close the session: a backend
    // blocked writing to a reader that stalled sees its socket close. The
    // caller's answer does not wait for the cancel request (a new
    // connection to the server, slow when it is busy).
    drop(session);
    tokio::spawn(async move { canceller.cancel().await });
    match stopped {
        Stop::End(end) => Err(end.error()),
        Stop::Failed(e) => Err(e),
    }
}

/// Runs the stream on a session; `Ok` once the summary was sent.
async fn run(session: &stream_conn::StreamSession, plan: &Job, out: &mut Out<'_>) -> Step<()> {
    let client = &session.client;
    out.wait(async {
        client
            .batch_execute(&format!(
                // A stream reads a plain scan in id order. Past
                // `jit_above_cost` (large workspaces), PostgreSQL would
                // first spend 50-100 ms compiling it, all before the first
                // row: no JIT here. Settings are local to the transaction,
                // which leaves the session as it found it (a transaction
                // pooler may hand it to another client next).
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET LOCAL jit = off; {}",
                crate::db::scope::Scope {
                    ws: plan.ws,
                    statement_timeout: plan.timeouts.statement,
                }
                .local_sql()
            ))
            .await
            .map_err(Error::from)
    })
    .await?;
    // The first statement fixes the transaction's snapshot.
    let snapshot: String = out
        .wait(async {
            Ok(client
                .query_one("SELECT pg_current_snapshot()::text", &[])
                .await?
                .get(0))
        })
        .await?;

    let query = |select| Query {
        select,
        after: (plan.start.after > 0).then_some(plan.start.after),
        sample: plan.sample.as_ref(),
        only: None,
        order: Order::Id,
        limit: plan.limit,
    };

    if plan.contacts {
        let schema = out.wait(db::definitions::schema(client, plan.ws)).await?;
        let q = plan
            .compiled
            .render(&query(Select::Contacts(&db::contacts::SELECT_COLUMNS)));
        let rows = out
            .wait(async {
                client
                    .query_typed_raw(&q.sql, q.params.iter().map(|p| (p, p.pg_type())))
                    .await
                    .map_err(Error::from)
            })
            .await?;
        // Rows already received come in one chunk, so the select below runs
        // per chunk, not per row.
        let rows = rows.ready_chunks(MAX_CONTACT_BATCH);
        futures::pin_mut!(rows);
        let mut contacts: Vec<Contact> = Vec::new();
        loop {
            let chunk = out.wait(async { Ok(rows.next().await) }).await?;
            let last = chunk.is_none();
            for r in chunk.into_iter().flatten() {
                contacts.push(db::contacts::from_row(&r.map_err(Error::from)?, &schema));
            }
            while contacts.len() >= MAX_CONTACT_BATCH || (last && !contacts.is_empty()) {
                let rest = contacts.split_off(contacts.len().min(MAX_CONTACT_BATCH));
                let batch = std::mem::replace(&mut contacts, rest);
                let at = batch.last().map_or(0, |c| c.id);
                out.send(batch.len(), at, |cur| Item::Contacts(batch, cur))
                    .await?;
            }
            if last {
                break;
            }
        }
        out.wait(async { client.batch_execute("COMMIT").await.map_err(Error::from) })
            .await?;
    } else {
        // Ids travel as COPY text read straight off the socket (the fewest
        // bytes per id of any format): COPY takes no bind parameters, so the
        // values go into transaction-local settings through bound
        // parameters, and the query reads each one once; caller values never
        // become SQL text.
        let q = plan.compiled.render_with_settings(&query(Select::Ids));
        out.wait(async {
            client
                .query_typed(&q.set.sql, &q.set.typed())
                .await
                .map_err(Error::from)
        })
        .await?;
        let mut raw = session.borrow()?;
        out.wait(raw.send_query(&format!("COPY ({}) TO STDOUT", q.query)))
            .await?;
        let mut ids: Vec<i64> = Vec::with_capacity(FIRST_ID_BATCH);
        loop {
            let done = out
                .wait(raw.read_some(|payload| text_ids(payload, &mut ids)))
                .await?;
            while ids.len() >= out.target || (done && !ids.is_empty()) {
                let rest = ids.split_off(ids.len().min(out.target));
                let batch = std::mem::replace(&mut ids, rest);
                out.target = (out.target * 2).min(MAX_ID_BATCH);
                let at = *batch.last().unwrap_or(&0);
                out.send(batch.len(), at, |cur| Item::Ids(batch, cur))
                    .await?;
            }
            if done {
                break;
            }
        }
        session.give_back(raw);
        out.wait(async { client.batch_execute("COMMIT").await.map_err(Error::from) })
            .await?;
    }
    let done = Item::Done {
        total: out.total,
        snapshot,
        now: plan.start.now(),
        cursor: out.cursor.clone(),
    };
    out.deliver(done).await
}

/// The sending side of a stream: counts rows, stamps cursors, and stops on
/// the deadline, a departed or stalled reader, or shutdown.
struct Out<'a> {
    tx: &'a mpsc::Sender<Item>,
    shutdown: &'a CancellationToken,
    expired: Pin<Box<tokio::time::Sleep>>,
    stall: Duration,
    /// The cursor after the last row sent.
    cursor: Cursor,
    target: usize,
    total: u64,
}

impl Out<'_> {
    /// Awaits `fut` unless the server stops, the reader leaves or the
    /// deadline passes first.
    async fn wait<T>(&mut self, fut: impl Future<Output = Result<T>>) -> Step<T> {
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => Err(Stop::End(End::Shutdown)),
            () = self.tx.closed() => Err(Stop::End(End::Abandoned)),
            () = &mut self.expired => Err(Stop::End(End::Expired)),
            r = fut => Ok(r?),
        }
    }

    /// Sends a batch of `rows` ending at id `last`.
    async fn send(
        &mut self,
        rows: usize,
        last: i64,
        item: impl FnOnce(Cursor) -> Item,
    ) -> Step<()> {
        self.total += rows as u64;
        self.cursor.after = last;
        self.cursor.n += rows as u64;
        self.deliver(item(self.cursor.clone())).await
    }

    /// Puts one item in the channel, waiting for room (backpressure) no
    /// longer than the stall timeout.
    async fn deliver(&mut self, item: Item) -> Step<()> {
        let limit = self.stall;
        let stall = async move {
            if limit.is_zero() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(limit).await;
        };
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => Err(Stop::End(End::Shutdown)),
            () = &mut self.expired => Err(Stop::End(End::Expired)),
            sent = self.tx.send(item) => sent.map_err(|_| Stop::End(End::Abandoned)),
            () = stall => Err(Stop::End(End::Stalled(limit))),
        }
    }
}

/// Parses text COPY rows of one bigint column: digits, then a newline.
fn text_ids(payload: &[u8], out: &mut Vec<i64>) -> Result<()> {
    let mut v: i64 = 0;
    let mut neg = false;
    for b in payload {
        match b {
            b'0'..=b'9' => v = v * 10 + i64::from(b - b'0'),
            b'-' => neg = true,
            b'\n' => {
                out.push(if neg { -v } else { v });
                v = 0;
                neg = false;
            }
            _ => return Err(Error::internal("malformed COPY row")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out<'a>(
        tx: &'a mpsc::Sender<Item>,
        shutdown: &'a CancellationToken,
        deadline: Duration,
        stall: Duration,
    ) -> Out<'a> {
        Out {
            tx,
            shutdown,
            expired: Box::pin(tokio::time::sleep(deadline)),
            stall,
            cursor: Cursor {
                v: 1,
                after: 0,
                n: 0,
                at: 0,
                fp: String::new(),
            },
            target: FIRST_ID_BATCH,
            total: 0,
        }
    }

    /// The producer's stop conditions, on paused time: a reader that takes
    /// nothing ends the stream after the stall timeout, a deadline ends it
    /// at the deadline, a reader that left ends it at once.
    #[tokio::test(start_paused = true)]
    async fn stalls_deadlines_and_departures_stop_the_producer() {
        let shutdown = CancellationToken::new();
        let (tx, mut rx) = mpsc::channel(1);
        let mut o = out(
            &tx,
            &shutdown,
            Duration::from_secs(3600),
            Duration::from_secs(60),
        );
        o.send(2, 7, |c| Item::Ids(vec![6, 7], c)).await.unwrap();
        let started = tokio::time::Instant::now();
        let stalled = o.send(1, 9, |c| Item::Ids(vec![9], c)).await;
        assert!(
            matches!(stalled, Err(Stop::End(End::Stalled(_)))),
            "{stalled:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        // The cursor counts what was handed over.
        match rx.recv().await {
            Some(Item::Ids(ids, c)) => assert_eq!((ids, c.after, c.n), (vec![6, 7], 7, 2)),
            other => panic!("{other:?}"),
        }

        let mut o = out(&tx, &shutdown, Duration::from_secs(5), Duration::ZERO);
        o.deliver(Item::Ids(vec![], o.cursor.clone()))
            .await
            .unwrap();
        let expired = o.deliver(Item::Ids(vec![], o.cursor.clone())).await;
        assert!(
            matches!(expired, Err(Stop::End(End::Expired))),
            "{expired:?}"
        );
        let waiting = o.wait(std::future::pending::<Result<()>>()).await;
        assert!(matches!(waiting, Err(Stop::End(End::Expired))));

        drop(rx);
        let mut o = out(&tx, &shutdown, Duration::from_secs(5), Duration::ZERO);
        let left = o.wait(std::future::pending::<Result<()>>()).await;
        assert!(matches!(left, Err(Stop::End(End::Abandoned))));
        shutdown.cancel();
        let stopping = o.wait(std::future::pending::<Result<()>>()).await;
        assert!(matches!(stopping, Err(Stop::End(End::Shutdown))));
    }

    #[test]
    fn text_copy_rows_parse() {
        let mut out = Vec::new();
        text_ids(b"1\n", &mut out).unwrap();
        text_ids(b"9223372036854775807\n", &mut out).unwrap();
        text_ids(b"-5\n", &mut out).unwrap();
        assert_eq!(out, vec![1, i64::MAX, -5]);
        assert!(text_ids(b"1,2\n", &mut out).is_err());
    }

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let c = Cursor {
            v: 1,
            after: 42,
            n: 7,
            at: 1_700_000_000_000,
            fp: "abc".into(),
        };
        assert_eq!(Cursor::parse(&c.token()).unwrap(), c);
        assert!(Cursor::parse("nope").is_err());
        // Tokens from before `n` existed still resume, from a count of 0.
        let old = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"v":1,"after":5,"at":0,"fp":"x"}"#);
        assert_eq!(Cursor::parse(&old).unwrap().n, 0);
    }

    #[test]
    fn fingerprints_change_with_the_query() {
        use crate::segment::lower::Param;
        use crate::segment::plan::{Conjunct, hole};
        let a = Plan {
            params: vec![Param::Int8(1), Param::Int8(5)],
            sources: vec![],
            conjuncts: vec![Conjunct {
                sql: format!("c.x > {}", hole::param(1)),
                tests: None,
                strict: false,
                some: false,
            }],
            driver: None,
        };
        let mut b = a.clone();
        b.params[1] = Param::Int8(6);
        assert_ne!(fingerprint(&a, None, false), fingerprint(&b, None, false));
        assert_ne!(fingerprint(&a, None, false), fingerprint(&a, None, true));
        let half = Sample::Fraction(0.5, String::new());
        assert_ne!(
            fingerprint(&a, None, false),
            fingerprint(&a, Some(&half), false)
        );
        assert_eq!(
            fingerprint(&a, None, false),
            fingerprint(&a.clone(), None, false)
        );
    }
}
