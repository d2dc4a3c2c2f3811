//! Streaming segment members. A spawned producer runs the compiled query
//! in one read-only REPEATABLE READ transaction, in id order, and feeds
//! batches into a small bounded channel: a slow reader slows the query
//! (backpressure reaches PostgreSQL through the socket), memory stays
//! bounded, and a reader that goes away, or a server shutdown, cancels the
//! query on the server.

use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use crate::db::{self, Conn};
use crate::error::{Error, Result};
use crate::model::WorkspaceId;
use crate::model::contact::Contact;
use crate::segment::lower::{Compiled, Param};

/// Ids per message at most; messages start smaller so the first arrives fast.
pub const MAX_ID_BATCH: usize = 8192;
const FIRST_ID_BATCH: usize = 512;
/// Contacts per batch at most (the API splits further by encoded size).
pub const MAX_CONTACT_BATCH: usize = 256;
/// Batches buffered between the query and the client.
const CHANNEL: usize = 4;
/// Connections that streamed more rows than this are closed afterwards,
/// since their buffers keep their peak size.
const RECYCLE_AFTER_ROWS: u64 = 100_000;

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

/// Starts the producer on its own task and returns the receiving end.
pub fn spawn(conn: Conn, plan: Plan, shutdown: CancellationToken) -> mpsc::Receiver<Result<Item>> {
    let (tx, rx) = mpsc::channel(CHANNEL);
    tokio::spawn(produce(conn, plan, tx, shutdown));
    rx
}

enum End {
    /// Every row was delivered.
    Finished(u64),
    /// The reader left or the server is stopping; the query must be cancelled.
    Abandoned,
    /// The caller's deadline passed; the query must be cancelled.
    Expired,
}

async fn produce(
    mut conn: Conn,
    plan: Plan,
    tx: mpsc::Sender<Result<Item>>,
    shutdown: CancellationToken,
) {
    let cancel = conn.cancel_token();
    let outcome = run(&mut conn, &plan, &tx, &shutdown).await;
    let healthy = match &outcome {
        Ok(End::Finished(rows)) => *rows <= RECYCLE_AFTER_ROWS,
        Ok(End::Abandoned | End::Expired) => {
            // Stop the query on the server; the connection may still be
            // draining rows, so it never goes back to the pool.
            if let Err(e) = cancel.cancel_query(NoTls).await {
                tracing::warn!(error = %e, "cancelling an abandoned stream's query");
            }
            tracing::info!("stream abandoned; query cancelled");
            false
        }
        Err(_) => false,
    };
    match outcome {
        Err(e) => {
            let _ = tx.send(Err(e)).await;
        }
        Ok(End::Expired) => {
            let _ = tx.try_send(Err(Error::DeadlineExceeded(
                "the call's deadline passed mid-stream".into(),
            )));
        }
        Ok(_) => {}
    }
    if !healthy {
        drop(deadpool_postgres::Object::take(conn));
    }
}

async fn run(
    conn: &mut Conn,
    plan: &Plan,
    tx: &mpsc::Sender<Result<Item>>,
    shutdown: &CancellationToken,
) -> Result<End> {
    let txn = conn
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    txn.batch_execute(&format!(
        "SET LOCAL statement_timeout = {}",
        plan.timeout.as_millis()
    ))
    .await?;
    // The first statement fixes the transaction's snapshot.
    let snapshot: String = txn
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .await?
        .get(0);
    let schema = if plan.contacts {
        Some(db::definitions::schema(&*txn, plan.ws).await?)
    } else {
        None
    };

    let mut c = plan.compiled.clone();
    if let Some(after) = plan.after {
        let p = c.bind(Param::Int8(after));
        c.body.push_str(&format!(" AND c.id > {p}"));
    }
    let limit = match plan.limit {
        Some(n) => format!(" LIMIT {}", c.bind(Param::Int8(n))),
        None => String::new(),
    };
    let select = if plan.contacts {
        db::contacts::SELECT_COLUMNS.as_str()
    } else {
        "c.id"
    };
    let sql = format!("SELECT {select} {} ORDER BY c.id{limit}", c.body);
    let rows = txn
        .query_typed_raw(&sql, c.params.iter().map(|p| (p, p.pg_type())))
        .await?;
    futures::pin_mut!(rows);

    let token = |after: i64| Cursor {
        v: 1,
        after,
        at: plan.now.timestamp_millis(),
        fp: plan.fp.clone(),
    };
    let mut ids: Vec<i64> = Vec::with_capacity(FIRST_ID_BATCH);
    let mut contacts: Vec<Contact> = Vec::new();
    let mut target = FIRST_ID_BATCH;
    let mut total: u64 = 0;
    let deadline = plan
        .deadline
        .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400 * 365));
    let expired = tokio::time::sleep_until(deadline);
    tokio::pin!(expired);
    loop {
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(End::Abandoned),
            () = tx.closed() => return Ok(End::Abandoned),
            () = &mut expired => return Ok(End::Expired),
            r = rows.next() => r,
        };
        let row = match next {
            Some(r) => Some(r?),
            None => None,
        };
        if let Some(r) = &row {
            total += 1;
            match &schema {
                Some(s) => contacts.push(db::contacts::from_row(r, s)),
                None => ids.push(r.get(0)),
            }
        }
        let full = ids.len() >= target || contacts.len() >= MAX_CONTACT_BATCH;
        let last = row.is_none();
        if (full || last) && !(ids.is_empty() && contacts.is_empty()) {
            let item = if schema.is_some() {
                let t = token(contacts.last().map_or(0, |c| c.id));
                Item::Contacts(std::mem::take(&mut contacts), t)
            } else {
                let t = token(*ids.last().unwrap_or(&0));
                target = (target * 2).min(MAX_ID_BATCH);
                Item::Ids(std::mem::replace(&mut ids, Vec::with_capacity(target)), t)
            };
            tokio::select! {
                biased;
                () = &mut expired => return Ok(End::Expired),
                sent = send(tx, shutdown, Ok(item)) => if !sent {
                    return Ok(End::Abandoned);
                },
            }
        }
        if last {
            break;
        }
    }
    txn.commit().await?;
    let done = Item::Done {
        total,
        snapshot,
        now: plan.now,
    };
    if !send(tx, shutdown, Ok(done)).await {
        return Ok(End::Abandoned);
    }
    Ok(End::Finished(total))
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
        let a = Compiled {
            body: "FROM contacts c WHERE x".into(),
            params: vec![Param::Int8(1)],
        };
        let mut b = a.clone();
        b.params[0] = Param::Int8(2);
        assert_ne!(fingerprint(&a, false), fingerprint(&b, false));
        assert_ne!(fingerprint(&a, false), fingerprint(&a, true));
        assert_eq!(fingerprint(&a, false), fingerprint(&a.clone(), false));
    }
}
