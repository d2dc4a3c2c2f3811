//! Streaming segment members. A spawned producer opens a dedicated session
//! (see `db::stream_conn`), runs the compiled query in one read-only
//! REPEATABLE READ transaction, in id order, and feeds batches into a small
//! bounded channel: a slow reader slows the query (backpressure reaches
//! PostgreSQL through the socket), memory stays bounded, and a reader that
//! goes away, passes its deadline, or a server shutdown cancels the query on
//! the server. The session is closed afterwards, never pooled.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use crate::db::{self, stream_conn};
use crate::error::{Error, Result};
use crate::model::WorkspaceId;
use crate::model::contact::Contact;
use crate::segment::lower::{Compiled, Param};

/// Ids per message at most; messages start smaller so the first arrives fast.
pub const MAX_ID_BATCH: usize = 32_768;
const FIRST_ID_BATCH: usize = 512;
/// Contacts per batch at most (the API splits further by encoded size).
pub const MAX_CONTACT_BATCH: usize = 256;
/// Batches buffered between the query and the client.
const CHANNEL: usize = 4;

/// Where a stream is: the last id delivered, the evaluation instant, and a
/// fingerprint of what is being streamed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// Version of the token format.
    pub v: u8,
    /// Last id delivered.
    pub after: i64,
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

/// FNV-1a over the query text and parameters: stable across builds.
pub fn fingerprint(c: &Compiled, projection: bool) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |b: &[u8]| {
        for x in b {
            h ^= u64::from(*x);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(c.body.as_bytes());
    for p in &c.params {
        feed(p.to_json().to_string().as_bytes());
    }
    feed(&[u8::from(projection)]);
    format!("{h:016x}")
}

/// What to stream.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The workspace (for decoding custom fields).
    pub ws: WorkspaceId,
    /// The compiled segment, sample applied.
    pub compiled: Compiled,
    /// Stream whole contacts rather than ids.
    pub contacts: bool,
    /// Stop after this many rows.
    pub limit: Option<i64>,
    /// Resume after this id.
    pub after: Option<i64>,
    /// The evaluation instant (kept in tokens).
    pub now: DateTime<Utc>,
    /// Fingerprint for tokens.
    pub fp: String,
    /// Statement timeout (zero: none).
    pub timeout: Duration,
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
    /// The end: rows delivered, snapshot read, evaluation instant.
    Done {
        /// Rows delivered by this call.
        total: u64,
        /// pg_current_snapshot() of the stream's transaction.
        snapshot: String,
        /// Evaluation instant.
        now: DateTime<Utc>,
    },
}

/// Starts the producer on its own task and returns the receiving end. The
/// permit bounds concurrent streams and is released when the stream ends.
pub fn spawn(
    sessions: Arc<stream_conn::StreamSessions>,
    plan: Plan,
    shutdown: CancellationToken,
    permit: OwnedSemaphorePermit,
) -> mpsc::Receiver<Result<Item>> {
    let (tx, rx) = mpsc::channel(CHANNEL);
    tokio::spawn(async move {
        produce(&sessions, plan, tx, shutdown).await;
        drop(permit);
    });
    rx
}

enum End {
    /// Every row was delivered.
    Finished,
    /// The reader left; the query must be cancelled.
    Abandoned,
    /// The caller's deadline passed; the query must be cancelled.
    Expired,
    /// The server is shutting down; the query must be cancelled.
    Shutdown,
}

async fn produce(
    sessions: &stream_conn::StreamSessions,
    plan: Plan,
    tx: mpsc::Sender<Result<Item>>,
    shutdown: CancellationToken,
) {
    let outcome = match sessions.get().await {
        Ok(session) => {
            let canceller = session.canceller();
            let outcome = run(&session, &plan, &tx, &shutdown).await;
            if matches!(outcome, Ok(End::Finished)) {
                sessions.put(session);
            } else {
                // Stop the statement on the server and close the session.
                canceller.cancel().await;
                drop(session);
                tracing::info!("stream stopped early; query cancelled");
            }
            outcome
        }
        Err(e) => Err(e),
    };
    // Tell a reader that is still there why the stream stopped.
    let reason = match outcome {
        Err(e) => Some(e),
        Ok(End::Expired) => Some(Error::DeadlineExceeded(
            "the call's deadline passed mid-stream".into(),
        )),
        Ok(End::Shutdown) => Some(Error::Unavailable(
            "the server is shutting down; resume with the last token".into(),
        )),
        Ok(_) => None,
    };
    if let Some(e) = reason {
        let _ = tokio::time::timeout(Duration::from_secs(2), tx.send(Err(e))).await;
    }
}

/// Runs the stream on a fresh session.
async fn run(
    session: &stream_conn::StreamSession,
    plan: &Plan,
    tx: &mpsc::Sender<Result<Item>>,
    shutdown: &CancellationToken,
) -> Result<End> {
    let client = &session.client;
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET LOCAL statement_timeout = {}",
            plan.timeout.as_millis()
        ))
        .await?;
    // The first statement fixes the transaction's snapshot.
    let snapshot: String = client
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .await?
        .get(0);

    let mut c = plan.compiled.clone();
    if let Some(after) = plan.after {
        let p = c.bind(Param::Int8(after));
        c.and_id(&format!("c.id > {p}"));
    }
    let limit = match plan.limit {
        Some(n) => format!(" LIMIT {}", c.bind(Param::Int8(n))),
        None => String::new(),
    };
    let mut out = Out {
        tx,
        shutdown,
        expired: Box::pin(tokio::time::sleep_until(plan.deadline.unwrap_or_else(
            || tokio::time::Instant::now() + Duration::from_secs(86_400 * 365),
        ))),
        cursor: Cursor {
            v: 1,
            after: 0,
            at: plan.now.timestamp_millis(),
            fp: plan.fp.clone(),
        },
        target: FIRST_ID_BATCH,
        total: 0,
    };

    if plan.contacts {
        let schema = db::definitions::schema(client, plan.ws).await?;
        let sql = format!(
            "SELECT {} {} ORDER BY c.id{limit}",
            *db::contacts::SELECT_COLUMNS,
            c.body
        );
        let rows = client
            .query_typed_raw(&sql, c.params.iter().map(|p| (p, p.pg_type())))
            .await?;
        // Rows already received come in one chunk, so the select below runs
        // per chunk, not per row.
        let rows = rows.ready_chunks(MAX_CONTACT_BATCH);
        futures::pin_mut!(rows);
        let mut contacts: Vec<Contact> = Vec::new();
        loop {
            let chunk = match out.unless_stopped(rows.next()).await {
                Ok(chunk) => chunk,
                Err(end) => return Ok(end),
            };
            let last = chunk.is_none();
            for r in chunk.into_iter().flatten() {
                contacts.push(db::contacts::from_row(&r?, &schema));
            }
            while contacts.len() >= MAX_CONTACT_BATCH || (last && !contacts.is_empty()) {
                let rest = contacts.split_off(contacts.len().min(MAX_CONTACT_BATCH));
                let batch = std::mem::replace(&mut contacts, rest);
                if let Some(end) = out
                    .send(batch.len(), batch.last().map_or(0, |c| c.id), |cur| {
                        Item::Contacts(batch, cur)
                    })
                    .await
                {
                    return Ok(end);
                }
            }
            if last {
                break;
            }
        }
        client.batch_execute("COMMIT").await?;
    } else {
        // Ids travel as COPY text read straight off the socket (the fewest
        // bytes per id of any format): COPY takes no bind parameters, so the values go into transaction-local
        // settings through bound parameters, and the query reads each one
        // once; caller values never become SQL text.
        let (set, query) = via_settings(
            &format!("SELECT c.id {} ORDER BY c.id{limit}", c.ids_from()),
            &c.params,
        );
        client
            .query_typed(&set, &crate::segment::lower::typed(&c.params))
            .await?;
        let mut raw = session.borrow()?;
        raw.send_query(&format!("COPY ({query}) TO STDOUT")).await?;
        let mut ids: Vec<i64> = Vec::with_capacity(FIRST_ID_BATCH);
        loop {
            let read = raw.read_some(|payload| text_ids(payload, &mut ids));
            let done = match out.unless_stopped(read).await {
                Ok(r) => r?,
                Err(end) => return Ok(end),
            };
            while ids.len() >= out.target || (done && !ids.is_empty()) {
                let rest = ids.split_off(ids.len().min(out.target));
                let batch = std::mem::replace(&mut ids, rest);
                out.target = (out.target * 2).min(MAX_ID_BATCH);
                if let Some(end) = out
                    .send(batch.len(), *batch.last().unwrap_or(&0), |cur| {
                        Item::Ids(batch, cur)
                    })
                    .await
                {
                    return Ok(end);
                }
            }
            if done {
                break;
            }
        }
        session.give_back(raw);
        client.batch_execute("COMMIT").await?;
    }
    let done = Item::Done {
        total: out.total,
        snapshot,
        now: plan.now,
    };
    if !send(tx, shutdown, Ok(done)).await {
        return Ok(gone(shutdown));
    }
    Ok(End::Finished)
}

/// The sending side of a stream: counts rows, stamps cursors, and stops on
/// the deadline, a departed reader or shutdown.
struct Out<'a> {
    tx: &'a mpsc::Sender<Result<Item>>,
    shutdown: &'a CancellationToken,
    expired: Pin<Box<tokio::time::Sleep>>,
    cursor: Cursor,
    target: usize,
    total: u64,
}

impl Out<'_> {
    /// Awaits `fut` unless the server stops, the reader leaves or the
    /// deadline passes first; then the reason the stream ends.
    async fn unless_stopped<T>(&mut self, fut: impl Future<Output = T>) -> Result<T, End> {
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => Err(End::Shutdown),
            () = self.tx.closed() => Err(End::Abandoned),
            () = &mut self.expired => Err(End::Expired),
            r = fut => Ok(r),
        }
    }

    /// Sends a batch of `rows` ending at id `last`; Some(end) if the stream
    /// must stop.
    async fn send(
        &mut self,
        rows: usize,
        last: i64,
        item: impl FnOnce(Cursor) -> Item,
    ) -> Option<End> {
        self.total += rows as u64;
        let cursor = Cursor {
            after: last,
            ..self.cursor.clone()
        };
        tokio::select! {
            biased;
            () = &mut self.expired => Some(End::Expired),
            sent = send(self.tx, self.shutdown, Ok(item(cursor))) => (!sent).then(|| gone(self.shutdown)),
        }
    }
}

/// The SQL type name of a parameter, for casts.
fn sql_type(p: &Param) -> &'static str {
    match p {
        Param::Int8(_) => "bigint",
        Param::Float8(_) => "float8",
        Param::Text(_) => "text",
        Param::Bool(_) => "boolean",
        Param::Date(_) => "date",
        Param::Time(_) => "timestamptz",
        Param::Int8Array(_) => "bigint[]",
        Param::Int4Array(_) => "int[]",
        Param::Float8Array(_) => "float8[]",
        Param::TextArray(_) => "text[]",
        Param::DateArray(_) => "date[]",
        Param::JsonArray(_) => "jsonb[]",
    }
}

/// Splits a parameterised query into a statement storing each parameter in
/// a transaction-local setting (`segd.p<n>`, bound, never inlined) and the
/// query reading each setting once through an InitPlan.
pub fn via_settings(sql: &str, params: &[Param]) -> (String, String) {
    let sets: Vec<String> = params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "set_config('segd.p{n}', ${n}::{}::text, true)",
                sql_type(p),
                n = i + 1
            )
        })
        .collect();
    let mut query = sql.to_string();
    // Highest first, so $1 never clobbers the start of $10.
    for (i, p) in params.iter().enumerate().rev() {
        let value = match p {
            // Numbers, dates and times print from typed values through
            // Rust's formatters (digits, signs, dots, dashes, colons): they
            // cannot carry SQL, and as literals the planner sees them.
            Param::Int8(v) => format!("{v}::bigint"),
            Param::Float8(v) => format!("'{v}'::float8"),
            Param::Bool(v) => format!("{v}"),
            Param::Date(v) => format!("'{v}'::date"),
            // Truncated to microseconds, as binding it would.
            Param::Time(v) => format!("'{}'::timestamptz", v.format("%Y-%m-%dT%H:%M:%S%.6f+00:00")),
            // The outer cast keeps `= ANY(...)` an array comparison rather
            // than a subquery comparison.
            _ => format!(
                "(SELECT current_setting('segd.p{}')::{ty})::{ty}",
                i + 1,
                ty = sql_type(p)
            ),
        };
        query = query.replace(&format!("${}", i + 1), &value);
    }
    (format!("SELECT {}", sets.join(", ")), query)
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

/// Why a send failed: the server is stopping, or the reader left.
fn gone(shutdown: &CancellationToken) -> End {
    if shutdown.is_cancelled() {
        End::Shutdown
    } else {
        End::Abandoned
    }
}

/// Sends one item, waiting for room (backpressure). False if the reader is
/// gone or the server is stopping.
async fn send(
    tx: &mpsc::Sender<Result<Item>>,
    shutdown: &CancellationToken,
    item: Result<Item>,
) -> bool {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => false,
        r = tx.send(item) => r.is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_carry_text_and_literals_carry_only_formatted_values() {
        let params = vec![
            Param::Int8(7),
            Param::Text("'; DROP TABLE contacts; --".into()),
            Param::Float8(-2.5),
            Param::TextArray(vec!["$1".into()]),
        ];
        let (set, q) = via_settings(
            "SELECT c.id FROM contacts c WHERE a = $1 AND b = $2 AND x > $3 AND y && $4",
            &params,
        );
        assert_eq!(
            set,
            "SELECT set_config('segd.p1', $1::bigint::text, true), set_config('segd.p2', $2::text::text, true), \
             set_config('segd.p3', $3::float8::text, true), set_config('segd.p4', $4::text[]::text, true)"
        );
        assert_eq!(
            q,
            "SELECT c.id FROM contacts c WHERE a = 7::bigint AND b = (SELECT current_setting('segd.p2')::text)::text \
             AND x > '-2.5'::float8 AND y && (SELECT current_setting('segd.p4')::text[])::text[]"
        );
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
            at: 1_700_000_000_000,
            fp: "abc".into(),
        };
        assert_eq!(Cursor::parse(&c.token()).unwrap(), c);
        assert!(Cursor::parse("nope").is_err());
    }

    #[test]
    fn fingerprints_change_with_the_query() {
        let a = Compiled::new("FROM contacts c WHERE x".into(), vec![Param::Int8(1)]);
        let mut b = a.clone();
        b.params[0] = Param::Int8(2);
        assert_ne!(fingerprint(&a, false), fingerprint(&b, false));
        assert_ne!(fingerprint(&a, false), fingerprint(&a, true));
        assert_eq!(fingerprint(&a, false), fingerprint(&a.clone(), false));
    }
}
