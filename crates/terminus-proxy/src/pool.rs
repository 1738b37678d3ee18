//! HTTP/1.1 keep-alive connections to backends, one idle list per backend address, and the
//! quarantine of backends that refused or timed out on connect.
//!
//! Our own pool rather than hyper-util's client: a request must be retried on the next backend
//! when a connection cannot be made (never after bytes were sent), which needs the request back,
//! and round-robin must choose the backend per request, not per pooled connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use dashmap::DashMap;
use http_body::Body;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::fault::Fault;

/// Idle connections kept per backend; more are closed when handed back.
const MAX_IDLE_PER_BACKEND: usize = 512;
/// A response head larger than this is refused (H25).
const MAX_RESPONSE_HEAD: usize = 1 << 20;
/// The most read from a backend at once. hyper grows its read buffer towards
/// `MAX_RESPONSE_HEAD` while a fast backend keeps it full, and every body chunk handed on keeps
/// its part of that buffer alive until the client has taken it: for a client that stops
/// reading, megabytes. Capped reads keep each chunk, and so what a stalled client holds, small.
///
/// One byte short of 32 KiB: hyper doubles its next read buffer whenever a read fills the
/// present one, so reads of exactly 32 KiB would have it allocate 64 KiB for each 32 KiB chunk,
/// and a stalled client would keep twice its chunks alive. 32 KiB rather than 16 halves the
/// system calls per MiB on both sides of a large response (benches/README.md, *Measured steps*).
const READ_CHUNK: usize = 32 * 1024 - 1;

/// A connection to a backend, ready for one request. Once its response has ended cleanly it goes
/// back to its pool with [`Conn::release`]; dropped instead, it is closed.
pub(crate) struct Conn<B> {
    pub sender: http1::SendRequest<B>,
    pub addr: SocketAddr,
    /// Came from the idle list (so it may have been closed by the backend meanwhile).
    pub reused: bool,
    pool: Arc<Inner<B>>,
}

impl<B> Conn<B> {
    /// Hands the connection back after a complete response.
    pub(crate) fn release(self) {
        let Self {
            sender, addr, pool, ..
        } = self;
        pool.checkin(addr, sender);
    }
}

struct Idle<B> {
    sender: http1::SendRequest<B>,
    since: Instant,
}

/// Keep-alive connections to backends, generic over the request body type so that bodies and
/// the pool do not depend on each other.
pub(crate) struct Pool<B> {
    inner: Arc<Inner<B>>,
}

/// Backend addresses come from the config, not from clients, so a fast hash (looked up two or
/// three times per request) needs no flooding resistance.
type ByBackend<V> = DashMap<SocketAddr, V, foldhash::fast::RandomState>;

struct Inner<B> {
    idle: ByBackend<Vec<Idle<B>>>,
    quarantined: ByBackend<Instant>,
    /// The timeouts change on a config reload (nanoseconds, read without a lock).
    connect_timeout: Nanos,
    idle_timeout: Nanos,
    quarantine_for: Nanos,
}

/// A duration that can be replaced while it is read.
#[derive(Debug)]
struct Nanos(AtomicU64);

impl Nanos {
    fn new(d: Duration) -> Self {
        Self(AtomicU64::new(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
        ))
    }

    fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, d: Duration) {
        self.0.store(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

impl<B> Clone for Pool<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<B> std::fmt::Debug for Pool<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("backends", &self.inner.idle.len())
            .field("quarantined", &self.inner.quarantined.len())
            .finish()
    }
}

impl<B> Inner<B> {
    fn checkin(&self, addr: SocketAddr, sender: http1::SendRequest<B>) {
        if sender.is_closed() {
            return;
        }
        let mut list = self.idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

impl<B> Pool<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub(crate) fn new(
        connect_timeout: Duration,
        idle_timeout: Duration,
        quarantine_for: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                idle: ByBackend::default(),
                quarantined: ByBackend::default(),
                connect_timeout: Nanos::new(connect_timeout),
                idle_timeout: Nanos::new(idle_timeout),
                quarantine_for: Nanos::new(quarantine_for),
            }),
        }
    }

    /// New timeouts (a config reload): they apply to the next connect, checkout and reap.
    pub(crate) fn set_timeouts(
        &self,
        connect_timeout: Duration,
        idle_timeout: Duration,
        quarantine_for: Duration,
    ) {
        self.inner.connect_timeout.set(connect_timeout);
        self.inner.idle_timeout.set(idle_timeout);
        self.inner.quarantine_for.set(quarantine_for);
    }

    /// An idle connection to `addr` if one is usable, else a new one.
    pub(crate) async fn checkout(
        &self,
        addr: SocketAddr,
    ) -> Result<(Conn<B>, Option<Duration>), Fault> {
        if let Some(conn) = self.take_idle(addr) {
            return Ok((conn, None));
        }
        let started = Instant::now();
        let conn = self.connect(addr).await?;
        Ok((conn, Some(started.elapsed())))
    }

    fn take_idle(&self, addr: SocketAddr) -> Option<Conn<B>> {
        let mut list = self.inner.idle.get_mut(&addr)?;
        let now = Instant::now();
        let idle_timeout = self.inner.idle_timeout.get();
        while let Some(idle) = list.pop() {
            if idle.sender.is_ready() && now.duration_since(idle.since) < idle_timeout {
                return Some(Conn {
                    sender: idle.sender,
                    addr,
                    reused: true,
                    pool: self.inner.clone(),
                });
            }
        }
        None
    }

    /// Opens a new connection, classifying failures as H19 (timeout) or H21 (refused).
    pub(crate) async fn connect(&self, addr: SocketAddr) -> Result<Conn<B>, Fault> {
        let stream =
            match tokio::time::timeout(self.inner.connect_timeout.get(), TcpStream::connect(addr))
                .await
            {
                Err(_) => return Err(Fault::ConnectTimeout),
                Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(Fault::ConnectTimeout)
                }
                Ok(Err(_)) => return Err(Fault::ConnectRefused),
                Ok(Ok(stream)) => stream,
            };
        let _ = stream.set_nodelay(true);
        // hyper's default header limit (100, as HAProxy's 101): an explicit limit makes hyper
        // allocate and fill arrays of that many entries for every response it parses.
        let (sender, connection) = http1::Builder::new()
            .max_buf_size(MAX_RESPONSE_HEAD)
            .handshake(TokioIo::new(BackendIo(stream)))
            .await
            .map_err(|_| Fault::ConnectRefused)?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(backend = %addr, error = %e, "backend connection ended");
            }
        });
        Ok(Conn {
            sender,
            addr,
            reused: false,
            pool: self.inner.clone(),
        })
    }

    pub(crate) fn quarantine(&self, addr: SocketAddr) {
        self.inner
            .quarantined
            .insert(addr, Instant::now() + self.inner.quarantine_for.get());
    }

    pub(crate) fn is_quarantined(&self, addr: SocketAddr) -> bool {
        let quarantined = &self.inner.quarantined;
        match quarantined.get(&addr).map(|until| *until) {
            Some(until) if until > Instant::now() => true,
            Some(_) => {
                quarantined.remove_if(&addr, |_, until| *until <= Instant::now());
                false
            }
            None => false,
        }
    }

    /// Closes idle connections older than the pool idle timeout and forgets expired quarantines.
    pub(crate) fn reap(&self) {
        let now = Instant::now();
        let inner = &self.inner;
        let idle_timeout = inner.idle_timeout.get();
        inner.idle.retain(|_, list| {
            list.retain(|idle| {
                !idle.sender.is_closed() && now.duration_since(idle.since) < idle_timeout
            });
            !list.is_empty()
        });
        inner.quarantined.retain(|_, until| *until > now);
    }

    /// Idle connections currently pooled (for tests and metrics).
    pub(crate) fn idle_count(&self) -> usize {
        self.inner.idle.iter().map(|l| l.len()).sum()
    }
}

/// A backend connection read at most [`READ_CHUNK`] bytes at a time.
struct BackendIo(TcpStream);

impl AsyncRead for BackendIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() <= READ_CHUNK {
            return Pin::new(&mut self.0).poll_read(cx, buf);
        }
        // Only once hyper offers more than a chunk (a large body from a fast backend), and
        // without unsafe code: the chunk is zeroed before it is read into.
        let mut chunk = ReadBuf::new(buf.initialize_unfilled_to(READ_CHUNK));
        ready!(Pin::new(&mut self.0).poll_read(cx, &mut chunk))?;
        let n = chunk.filled().len();
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for BackendIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
