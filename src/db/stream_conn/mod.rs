//! Dedicated connections for member streams.
//!
//! Streams use their own PostgreSQL sessions, outside the main pool, so a
//! long stream never starves other calls. Sessions are driven by
//! tokio-postgres (authentication, transactions, bound parameters); for id
//! streams segd borrows the socket and reads `COPY ... TO STDOUT`
//! straight off it in large reads, then lends it back. tokio-postgres
//! handles one message per row, which costs more CPU than PostgreSQL spends
//! producing the row; the direct read costs a few nanoseconds per id.
//!
//! A session that finished cleanly goes back to a small idle list (a fresh
//! backend is slow on its first large query); one that was abandoned or
//! failed is closed.
//!
//! With TLS (`sslmode`), segd asks for it and performs the handshake itself
//! ([`Tls::negotiate`]) before tokio-postgres starts the session over the
//! decrypted stream, so what segd borrows is still the plain protocol:
//! TLS adds the decryption and nothing else to the direct read.

mod socket;

use std::sync::Mutex;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{CancelToken, Client, NoTls};

use self::socket::{Server, Sock, Tap};
use super::ConnInfo;
use crate::error::{Error, Result};

/// How long a cancel request may take to send.
const CANCEL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Socket receive buffer asked for stream sessions by default, in bytes.
pub const RECV_BUFFER: u32 = 4 << 20;

/// Aborts the connection task when dropped, so an abandoned session does not
/// keep draining rows in the background.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A dedicated streaming session.
pub struct StreamSession {
    /// The tokio-postgres client, for setup and for whole-row queries.
    pub client: Client,
    tap: Tap,
    task: AbortOnDrop,
    cancel: CancelToken,
    server: Server,
}

/// Opens a session with the settings of `db` (first host only).
///
/// # Errors
/// `Unavailable` when the server cannot be reached, refuses, or its TLS
/// does not check out.
pub async fn connect(db: &ConnInfo, recv_buffer: u32) -> Result<StreamSession> {
    let server = Server::of(db);
    let sock = server.connect(recv_buffer).await?;
    let tap = Tap::new(sock);
    // TLS, if any, is already under the tap: tokio-postgres speaks plain
    // protocol over it (and so sends cancel requests plain over whatever
    // socket it is given; see `Canceller`).
    let mut cfg = db.config.clone();
    cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
    let (client, conn) = cfg.connect_raw(tap.clone(), NoTls).await?;
    let task = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let cancel = client.cancel_token();
    Ok(StreamSession {
        client,
        tap,
        task,
        cancel,
        server,
    })
}

impl StreamSession {
    /// A handle that cancels whatever the session is running.
    pub fn canceller(&self) -> Canceller {
        Canceller {
            token: self.cancel.clone(),
            server: self.server.clone(),
        }
    }

    /// Borrows the socket for direct reads. tokio-postgres must be idle:
    /// every query it was given has completed.
    ///
    /// # Errors
    /// `Internal` if the socket is already borrowed.
    pub fn borrow(&self) -> Result<RawCopy> {
        let sock = self
            .tap
            .borrow()
            .ok_or_else(|| Error::internal("stream socket already borrowed"))?;
        Ok(RawCopy {
            sock,
            buf: BytesMut::with_capacity(256 * 1024),
            failed: None,
        })
    }

    /// Lends the socket back to tokio-postgres after a direct read ended at
    /// ReadyForQuery.
    pub fn give_back(&self, raw: RawCopy) {
        debug_assert!(raw.buf.is_empty(), "bytes after ReadyForQuery");
        self.tap.give_back(raw.sock);
    }

    /// Whether the connection is still usable.
    pub fn is_healthy(&self) -> bool {
        !self.client.is_closed() && !self.task.0.is_finished()
    }
}

/// Idle stream sessions, reused so streams start on a warm backend.
#[derive(Debug)]
pub struct StreamSessions {
    db: ConnInfo,
    idle: Mutex<Vec<StreamSession>>,
    max_idle: usize,
    recv_buffer: u32,
}

impl std::fmt::Debug for StreamSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamSession")
    }
}

impl StreamSessions {
    /// Sessions on `db` (whose application name marks them as streams),
    /// keeping at most `max_idle` idle, with sockets asking for a receive
    /// buffer of `recv_buffer` bytes (0: the system default).
    pub fn new(mut db: ConnInfo, max_idle: usize, recv_buffer: u32) -> Self {
        db.config.application_name("segd-stream");
        Self {
            db,
            idle: Mutex::new(Vec::new()),
            max_idle,
            recv_buffer,
        }
    }

    /// An idle session, or a new one.
    ///
    /// # Errors
    /// `Unavailable` when no session can be opened.
    pub async fn get(&self) -> Result<StreamSession> {
        loop {
            let s = self.idle.lock().expect("idle lock").pop();
            match s {
                Some(s) if s.is_healthy() => return Ok(s),
                Some(_) => continue,
                None => return connect(&self.db, self.recv_buffer).await,
            }
        }
    }

    /// Returns a session that finished cleanly (outside any transaction).
    pub fn put(&self, s: StreamSession) {
        let mut idle = self.idle.lock().expect("idle lock");
        if idle.len() < self.max_idle && s.is_healthy() {
            idle.push(s);
        }
    }
}

/// Cancels a session's running statement from elsewhere.
#[derive(Clone)]
pub struct Canceller {
    token: CancelToken,
    server: Server,
}

impl Canceller {
    /// Sends a cancel request (best effort: PostgreSQL does not answer),
    /// giving up after a few seconds when the server does not respond.
    pub async fn cancel(&self) {
        let send = async {
            // Over TLS when the session is: the token sends its request
            // plain over the stream it is given.
            match self.server.connect(0).await {
                Ok(s) => self
                    .token
                    .cancel_query_raw(s, NoTls)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        let sent = tokio::time::timeout(CANCEL_TIMEOUT, send)
            .await
            .unwrap_or_else(|_| Err("no answer within 5s".into()));
        if let Err(e) = sent {
            tracing::warn!(error = %e, "sending a cancel request");
        }
    }
}

/// A session's socket after setup: speaks the simple query protocol.
pub struct RawCopy {
    sock: Sock,
    buf: BytesMut,
    /// An ErrorResponse read before its ReadyForQuery. It must survive
    /// buffer refills: the two often arrive in separate reads, and a
    /// forgotten error would end a failed query as if it had completed.
    failed: Option<Error>,
}

/// One protocol message read off the socket.
enum Msg {
    /// A CopyData payload: `buf[start..end]` of the reader's buffer.
    Data(usize, usize),
    /// ReadyForQuery: the query is over.
    Ready,
    /// ErrorResponse.
    Failed(Error),
    /// Anything else (CopyOutResponse, CopyDone, CommandComplete, notices).
    Other,
}

impl RawCopy {
    /// Sends a simple query.
    ///
    /// # Errors
    /// `Unavailable` when the connection is gone.
    pub async fn send_query(&mut self, sql: &str) -> Result<()> {
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::query(sql, &mut out).map_err(Error::internal)?;
        self.sock.write_all(&out).await.map_err(gone)?;
        // TLS may hold the record back until flushed.
        self.sock.flush().await.map_err(gone)?;
        Ok(())
    }

    /// Reads until at least one whole message is buffered; false at EOF.
    async fn fill(&mut self) -> Result<()> {
        self.buf.reserve(64 * 1024);
        let n = self.sock.read_buf(&mut self.buf).await.map_err(gone)?;
        if n == 0 {
            return Err(Error::Unavailable(
                "the database closed the stream's connection".into(),
            ));
        }
        Ok(())
    }

    /// The next buffered message, if whole.
    fn next_msg(&self, at: usize) -> Option<(Msg, usize)> {
        let b = &self.buf[at..];
        if b.len() < 5 {
            return None;
        }
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        if b.len() < 1 + len {
            return None;
        }
        let body = &b[5..1 + len];
        let msg = match b[0] {
            b'd' => Msg::Data(at + 5, at + 1 + len),
            b'Z' => Msg::Ready,
            b'E' => Msg::Failed(error_response(body)),
            _ => Msg::Other,
        };
        Some((msg, at + 1 + len))
    }

    /// Feeds every CopyData payload available now to `each` and returns
    /// whether the query finished (ReadyForQuery). Waits for data only when
    /// nothing whole is buffered.
    ///
    /// # Errors
    /// The query failed (with its SQLSTATE mapped) or the connection is gone.
    pub async fn read_some(&mut self, mut each: impl FnMut(&[u8]) -> Result<()>) -> Result<bool> {
        loop {
            let mut at = 0;
            let mut got = false;
            while let Some((msg, next)) = self.next_msg(at) {
                got = true;
                match msg {
                    Msg::Data(a, b) if self.failed.is_none() => each(&self.buf[a..b])?,
                    Msg::Data(..) | Msg::Other => {}
                    Msg::Ready => {
                        self.buf.advance(next);
                        return match self.failed.take() {
                            Some(e) => Err(e),
                            None => Ok(true),
                        };
                    }
                    Msg::Failed(e) => self.failed = Some(e),
                }
                at = next;
            }
            self.buf.advance(at);
            if got && self.failed.is_none() {
                return Ok(false);
            }
            if let Err(e) = self.fill().await {
                // A FATAL error is followed by the server closing the socket.
                return Err(self.failed.take().unwrap_or(e));
            }
        }
    }

    /// Runs a statement that returns no data (COMMIT) and waits for it.
    ///
    /// # Errors
    /// The statement failed or the connection is gone.
    pub async fn execute(&mut self, sql: &str) -> Result<()> {
        self.send_query(sql).await?;
        while !self.read_some(|_| Ok(())).await? {}
        Ok(())
    }
}

fn gone(e: std::io::Error) -> Error {
    Error::Unavailable(format!("the stream's database connection failed: {e}"))
}

/// Maps an ErrorResponse body to a domain error by its SQLSTATE.
fn error_response(body: &[u8]) -> Error {
    let (mut code, mut message) = (String::new(), String::new());
    for field in body.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let value = String::from_utf8_lossy(&field[1..]).into_owned();
        match field[0] {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    super::error::from_sqlstate(&code, &message)
}

#[cfg(test)]
mod tests {
    use tokio::net::UnixStream;

    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn raw(sock: UnixStream) -> RawCopy {
        RawCopy {
            sock: Sock::Unix(sock),
            buf: BytesMut::new(),
            failed: None,
        }
    }

    /// Rows, then an ErrorResponse, then (in a later read) ReadyForQuery:
    /// the query failed, whatever the read boundaries.
    #[tokio::test]
    async fn an_error_split_from_its_ready_for_query_is_not_forgotten() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut r = raw(a);
        let mut first = msg(b'd', b"1\n");
        first.extend(msg(b'd', b"2\n"));
        first.extend(msg(
            b'E',
            b"SERROR\0C57014\0Mcanceling statement due to user request\0\0",
        ));
        b.write_all(&first).await.unwrap();
        let rows = std::cell::RefCell::new(Vec::new());
        {
            let read = r.read_some(|p| {
                rows.borrow_mut().push(p.to_vec());
                Ok(())
            });
            futures::pin_mut!(read);
            // Until the rows (and the error after them, in the same read) are
            // consumed; ReadyForQuery is not there yet.
            while rows.borrow().len() < 2 {
                assert!(futures::poll!(&mut read).is_pending());
                tokio::task::yield_now().await;
            }
            assert!(futures::poll!(&mut read).is_pending());
            b.write_all(&msg(b'Z', b"E")).await.unwrap();
            let outcome = read.await;
            assert!(
                matches!(outcome, Err(Error::Unavailable(_))),
                "a cancelled query fails the read: {outcome:?}"
            );
        }
        let rows = rows.into_inner();
        assert_eq!(rows, vec![b"1\n".to_vec(), b"2\n".to_vec()]);
    }

    /// A FATAL error and then the server hanging up reports the error.
    #[tokio::test]
    async fn a_fatal_error_before_eof_is_reported() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut r = raw(a);
        b.write_all(&msg(b'E', b"SFATAL\0C57P01\0Mterminating connection\0\0"))
            .await
            .unwrap();
        drop(b);
        let out = r.read_some(|_| Ok(())).await;
        assert!(matches!(out, Err(Error::Unavailable(_))), "{out:?}");
    }
}
