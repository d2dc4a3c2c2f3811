//! The stream session's socket: TCP, Unix or TLS over either, shared
//! between tokio-postgres and segd's direct reads (the tap), and where to
//! open it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::Host;

use crate::db::ConnInfo;
use crate::db::tls::{Negotiated, Tls};
use crate::error::{Error, Result};

/// A TCP or Unix socket, or TLS over one.
#[derive(Debug)]
pub(super) enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<Sock>>),
}

impl From<Negotiated<Sock>> for Sock {
    fn from(n: Negotiated<Sock>) -> Self {
        match n {
            Negotiated::Plain(s) => s,
            Negotiated::Tls(s) => Sock::Tls(s),
        }
    }
}

impl AsyncRead for Sock {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Sock::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Sock::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Sock::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Sock {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Sock::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Sock::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Sock::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Sock::Tcp(s) => Pin::new(s).poll_flush(cx),
            Sock::Unix(s) => Pin::new(s).poll_flush(cx),
            Sock::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Sock::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Sock::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Sock::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The socket, shared between tokio-postgres and segd's own reads. While segd
/// has borrowed it, tokio-postgres (which is idle then) sees it as pending.
#[derive(Debug, Clone)]
pub(super) struct Tap(Arc<Mutex<TapState>>);

#[derive(Debug)]
struct TapState {
    sock: Option<Sock>,
    wakers: Vec<std::task::Waker>,
}

impl Tap {
    /// A tap holding `sock`.
    pub(super) fn new(sock: Sock) -> Self {
        Self(Arc::new(Mutex::new(TapState {
            sock: Some(sock),
            wakers: Vec::new(),
        })))
    }

    fn with<R>(
        &self,
        cx: &mut Context<'_>,
        f: impl FnOnce(&mut Sock, &mut Context<'_>) -> Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        let mut st = self.0.lock().expect("tap lock");
        match st.sock.as_mut() {
            Some(s) => f(s, cx),
            None => {
                st.wakers.push(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Takes the socket; tokio-postgres sees it pending until it is back.
    pub(super) fn borrow(&self) -> Option<Sock> {
        self.0.lock().expect("tap lock").sock.take()
    }

    /// Puts the socket back and wakes tokio-postgres.
    pub(super) fn give_back(&self, sock: Sock) {
        let wakers = {
            let mut st = self.0.lock().expect("tap lock");
            st.sock = Some(sock);
            std::mem::take(&mut st.wakers)
        };
        wakers.into_iter().for_each(std::task::Waker::wake);
    }
}

impl AsyncRead for Tap {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.with(cx, |s, cx| Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.with(cx, |s, cx| Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.with(cx, |s, cx| Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.with(cx, |s, cx| Pin::new(s).poll_shutdown(cx))
    }
}

/// Where the server is, for connecting and for cancel requests.
#[derive(Debug, Clone)]
enum Addr {
    Tcp(String, u16),
    Unix(std::path::PathBuf),
}

impl Addr {
    /// The first server of `cfg` (its `hostaddr` if given) and the name its
    /// TLS certificate must carry (the host).
    fn of(cfg: &tokio_postgres::Config) -> (Self, String) {
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        let host = match cfg.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(dir)) => {
                return (
                    Addr::Unix(dir.join(format!(".s.PGSQL.{port}"))),
                    String::new(),
                );
            }
            None => "localhost".into(),
        };
        let to = match cfg.get_hostaddrs().first() {
            Some(ip) => ip.to_string(),
            None => host.clone(),
        };
        (Addr::Tcp(to, port), host)
    }

    /// Connects; `recv_buffer` (bytes, 0 for the system default) sizes the
    /// socket's receive buffer.
    async fn connect(&self, recv_buffer: u32) -> std::io::Result<Sock> {
        match self {
            Addr::Tcp(h, p) => {
                // Each address in turn, as tokio-postgres does (`localhost`
                // may be ::1 first, and the server on 127.0.0.1 only).
                let mut last = std::io::Error::other(format!("{h} has no address"));
                for addr in tokio::net::lookup_host((h.as_str(), *p)).await? {
                    match tcp(addr, recv_buffer).await {
                        Ok(s) => return Ok(Sock::Tcp(s)),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            Addr::Unix(dir) => Ok(Sock::Unix(UnixStream::connect(dir).await?)),
        }
    }
}

/// A TCP connection to `addr`; `recv_buffer` as in [`Addr::connect`].
async fn tcp(addr: std::net::SocketAddr, recv_buffer: u32) -> std::io::Result<TcpStream> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // A deep receive buffer lets PostgreSQL keep writing rows while this
    // process is briefly off the CPU.
    if recv_buffer > 0 {
        sock.set_recv_buffer_size(recv_buffer)?;
    }
    let s = sock.connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// The server's address, and how to speak TLS to it.
#[derive(Debug, Clone)]
pub(super) struct Server {
    addr: Addr,
    tls: Tls,
    /// The name its certificate is checked against.
    name: String,
}

impl Server {
    /// The first server of `db`.
    pub(super) fn of(db: &ConnInfo) -> Self {
        let (addr, name) = Addr::of(&db.config);
        Self {
            addr,
            name,
            tls: db.tls.clone(),
        }
    }

    /// A socket to the server, TLS negotiated as configured; `recv_buffer`
    /// as in [`Addr::connect`].
    pub(super) async fn connect(&self, recv_buffer: u32) -> Result<Sock> {
        let sock = self
            .addr
            .connect(recv_buffer)
            .await
            .map_err(|e| Error::Unavailable(format!("connecting for a stream: {e}")))?;
        Ok(self.tls.negotiate(sock, &self.name).await?.into())
    }
}
