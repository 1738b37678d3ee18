//! HTTP/1.1 keep-alive connections to backends, one idle list per backend address, and the
//! quarantine of backends that refused or timed out on connect.
//!
//! Our own pool rather than hyper-util's client: a request must be retried on the next backend
//! when a connection cannot be made (never after bytes were sent), which needs the request back,
//! and round-robin must choose the backend per request, not per pooled connection.
//!
//! A backend connection is not a task of its own. hyper's connection future (the [`Driver`])
//! travels with the request that holds it and is polled by that request's task: while the
//! request is sent and its response head awaited (`service::send`), and while the response
//! body is read (`body::ResponseBody`). A task of its own would be woken about three times per
//! request, each wake-up a cross-task hand-off of the request, the response head or a body
//! chunk; polled inline, the same bytes move within one poll of the client's task. Since only
//! the holder polls the driver, the response and its body can only become ready during one of
//! its polls, so they are polled with a no-op waker: their channels then wake nobody, and the
//! driver's socket wakes the holder ([`Conn::poll_through`]).
//!
//! Requests that came over HTTP/2 use connections that do run as tasks of their own
//! ([`Runs::OwnTask`], kept in lists of their own): the response head and body stay queued in
//! the client's HTTP/2 connection until it next writes, and they share hyper's read buffer,
//! which a connection polled inline would reserve again for its next response while they still
//! hold it (an 8 KiB allocation per request, measured in benches/README.md).
//!
//! An idle connection in the pool is polled by nobody, and holds no waker of the task that used
//! it last (it goes back polled last with a no-op waker). A checkout does not look at it first:
//! a request handed to a connection the backend closed meanwhile comes back unsent (hyper reads
//! the close before it writes) and goes to a fresh connection (`service::send`). The reaper
//! polls idle connections and drops those the backend closed. An upgrade (101) hands the driver
//! to a task of its own, which finishes the upgrade as hyper requires.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
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

/// hyper's side of one backend connection: reads and writes its socket when polled. (hyper does
/// not export the upgradeable connection's type, hence the trait object.)
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send + Sync>>;

/// Where a backend connection's driver is polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Runs {
    /// By the task of the request that holds it.
    Inline,
    /// On a task of its own, spawned when it was made.
    OwnTask,
}

/// A connection to a backend, ready for one request. Once its response has ended cleanly it goes
/// back to its pool with [`Conn::release`]; dropped instead, it is closed.
pub(crate) struct Conn<B> {
    pub sender: http1::SendRequest<B>,
    pub addr: SocketAddr,
    /// Came from the idle list (so it may have been closed by the backend meanwhile).
    pub reused: bool,
    runs: Runs,
    /// `None` once the connection has ended, or when it runs on a task of its own.
    driver: Option<Driver>,
    /// Last polled with a waker that does nothing: it holds no waker of a task.
    quiet: bool,
    pool: Arc<Inner<B>>,
}

impl<B> Conn<B>
where
    B: Body + Send + Sync + Unpin + 'static,
    B::Data: Send + Sync,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Hands the connection back after a complete response.
    pub(crate) fn release(self) {
        let Self {
            sender,
            addr,
            runs,
            driver,
            quiet,
            pool,
            ..
        } = self;
        if runs == Runs::Inline && driver.is_none() {
            return;
        }
        let mut idle = Idle {
            sender,
            driver,
            since: Instant::now(),
        };
        // A pooled connection must not wake the task that used it last when the backend
        // closes it or the next request is handed over.
        if (quiet || idle.look()) && !idle.sender.is_closed() {
            pool.checkin((addr, runs), idle);
        }
    }

    /// Polls what the connection delivers (its response, a chunk of its body) with `poll`, after
    /// polling the connection itself with the caller's task: for the first poll after a request
    /// was handed over, when the connection has bytes to write and nothing can have arrived.
    /// While the connection runs here, what it delivers can only arrive during a poll of it, so
    /// `poll` gets a context whose waker does nothing: the connection's socket wakes the caller,
    /// and no channel between the two wakes it a second time.
    pub(crate) fn poll_after<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        if self.drive(cx) {
            poll(&mut Context::from_waker(Waker::noop()))
        } else {
            poll(cx)
        }
    }

    /// As [`Conn::poll_after`], for every later poll: what already arrived is taken first, then
    /// the connection is polled with a waker that does nothing, and only if that brought nothing
    /// is it polled again with the caller's task, to be woken when bytes come. A connection that
    /// delivered without the caller's waker keeps none of it (its response channel and body
    /// channel would otherwise wake the caller once more, for nothing, when read).
    pub(crate) fn poll_through<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let mut noop = Context::from_waker(Waker::noop());
        if self.driver.is_none() {
            return poll(cx);
        }
        if let Poll::Ready(t) = poll(&mut noop) {
            return Poll::Ready(t);
        }
        if !self.drive(&mut noop) {
            return poll(cx);
        }
        if let Poll::Ready(t) = poll(&mut noop) {
            return Poll::Ready(t);
        }
        self.poll_after(cx, poll)
    }

    /// Polls the connection with the caller's task: true while it still runs here, false once
    /// it has ended (or runs on a task of its own), when whatever waited on it is ready.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(driver) = &mut self.driver else {
            return false;
        };
        self.quiet = cx.waker().will_wake(Waker::noop());
        let Poll::Ready(result) = driver.as_mut().poll(cx) else {
            return true;
        };
        if let Err(e) = result {
            tracing::debug!(backend = %self.addr, error = %e, "backend connection ended");
        }
        self.driver = None;
        false
    }

    /// Gives the connection a task of its own: after a 101 response, hyper completes the upgrade
    /// when its connection future is polled to the end, which the tunnel waits for.
    pub(crate) fn detach(&mut self) {
        if let Some(driver) = self.driver.take() {
            let addr = self.addr;
            tokio::spawn(async move {
                if let Err(e) = driver.await {
                    tracing::debug!(backend = %addr, error = %e, "backend connection ended");
                }
            });
        }
    }
}

struct Idle<B> {
    sender: http1::SendRequest<B>,
    /// `None` for a connection on a task of its own.
    driver: Option<Driver>,
    since: Instant,
}

impl<B> Idle<B>
where
    B: Body + Send + Sync + Unpin + 'static,
    B::Data: Send + Sync,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Polls the idle connection once, with no task to wake: it reads a close (or anything else)
    /// the backend sent while it waited. False once it has ended.
    fn look(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.driver.as_mut().map(|d| d.as_mut().poll(&mut cx)) {
            None | Some(Poll::Pending) => !self.sender.is_closed(),
            Some(Poll::Ready(_)) => false,
        }
    }
}

/// Keep-alive connections to backends, generic over the request body type so that bodies and
/// the pool do not depend on each other.
pub(crate) struct Pool<B> {
    inner: Arc<Inner<B>>,
}

/// Backend addresses come from the config, not from clients, so a fast hash (looked up two or
/// three times per request) needs no flooding resistance.
type ByBackend<K, V> = DashMap<K, V, foldhash::fast::RandomState>;

struct Inner<B> {
    idle: ByBackend<(SocketAddr, Runs), Vec<Idle<B>>>,
    quarantined: ByBackend<SocketAddr, Instant>,
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
    fn checkin(&self, key: (SocketAddr, Runs), idle: Idle<B>) {
        let mut list = self.idle.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(idle);
        }
    }
}

impl<B> Pool<B>
where
    B: Body + Send + Sync + Unpin + 'static,
    B::Data: Send + Sync,
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
        runs: Runs,
    ) -> Result<(Conn<B>, Option<Duration>), Fault> {
        if let Some(conn) = self.take_idle(addr, runs) {
            return Ok((conn, None));
        }
        let started = Instant::now();
        let conn = self.connect(addr, runs).await?;
        Ok((conn, Some(started.elapsed())))
    }

    fn take_idle(&self, addr: SocketAddr, runs: Runs) -> Option<Conn<B>> {
        let now = Instant::now();
        let idle_timeout = self.inner.idle_timeout.get();
        loop {
            let idle = self.inner.idle.get_mut(&(addr, runs))?.pop()?;
            if now.duration_since(idle.since) < idle_timeout && idle.sender.is_ready() {
                return Some(Conn {
                    sender: idle.sender,
                    addr,
                    reused: true,
                    runs,
                    driver: idle.driver,
                    quiet: true,
                    pool: self.inner.clone(),
                });
            }
        }
    }

    /// Opens a new connection, classifying failures as H19 (timeout) or H21 (refused).
    pub(crate) async fn connect(&self, addr: SocketAddr, runs: Runs) -> Result<Conn<B>, Fault> {
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
        let mut conn = Conn {
            sender,
            addr,
            reused: false,
            runs,
            driver: Some(Box::pin(connection.with_upgrades())),
            quiet: true,
            pool: self.inner.clone(),
        };
        if runs == Runs::OwnTask {
            conn.detach();
        }
        Ok(conn)
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
            list.retain_mut(|idle| now.duration_since(idle.since) < idle_timeout && idle.look());
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

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;
    use http::Request;
    use hyper::body::Incoming;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    const S: Duration = Duration::from_secs(5);

    /// A backend that answers one request with `ok`, then closes when told to.
    async fn backend() -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (close, closed) = oneshot::channel();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "request head cut short");
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            let _ = closed.await;
        });
        (addr, close, task)
    }

    /// One request through `conn`, polled as the router polls it, and its body.
    async fn exchange(conn: &mut Conn<String>) -> Bytes {
        let request = Request::get("/")
            .header("host", "app.test")
            .body(String::new())
            .unwrap();
        let response = conn.sender.try_send_request(request);
        tokio::pin!(response);
        let response: http::Response<Incoming> =
            std::future::poll_fn(|cx| conn.poll_after(cx, |cx| response.as_mut().poll(cx)))
                .await
                .unwrap();
        let mut body = response.into_body();
        let mut got = Vec::new();
        loop {
            let frame = std::future::poll_fn(|cx| {
                conn.poll_after(cx, |cx| Pin::new(&mut body).poll_frame(cx))
            })
            .await;
            match frame {
                Some(frame) => got.extend_from_slice(frame.unwrap().data_ref().unwrap()),
                None => return Bytes::from(got),
            }
        }
    }

    fn pool() -> Pool<String> {
        Pool::new(S, Duration::from_secs(60), S)
    }

    #[tokio::test]
    async fn a_backend_connection_runs_on_the_task_that_holds_it() {
        let (addr, _close, _backend) = backend().await;
        let pool = pool();
        let tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        let (mut conn, connect) = pool.checkout(addr, Runs::Inline).await.unwrap();
        assert!(connect.is_some(), "a new connection");
        assert_eq!(
            tokio::time::timeout(S, exchange(&mut conn)).await.unwrap(),
            "ok"
        );
        assert_eq!(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            tasks,
            "no task was spawned for the connection"
        );
        conn.release();
        assert_eq!(pool.idle_count(), 1, "pooled after a complete response");

        // For a request that came over HTTP/2: a task of its own, and a list of its own.
        let (addr, _close, _backend) = backend().await;
        let tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        let (mut conn, _) = pool.checkout(addr, Runs::OwnTask).await.unwrap();
        assert_eq!(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            tasks + 1
        );
        assert_eq!(
            tokio::time::timeout(S, exchange(&mut conn)).await.unwrap(),
            "ok"
        );
        conn.release();
        assert_eq!(pool.idle_count(), 2);
        assert!(pool.take_idle(addr, Runs::Inline).is_none());
        assert!(pool.take_idle(addr, Runs::OwnTask).is_some());
    }

    #[tokio::test]
    async fn an_idle_connection_the_backend_closed_is_reaped_or_gives_its_request_back() {
        let (addr, close, first) = backend().await;
        let pool = pool();
        let (mut conn, _) = pool.checkout(addr, Runs::Inline).await.unwrap();
        assert_eq!(
            tokio::time::timeout(S, exchange(&mut conn)).await.unwrap(),
            "ok"
        );
        conn.release();
        assert_eq!(pool.idle_count(), 1);
        close.send(()).unwrap();
        first.await.unwrap();
        // Nobody polls a pooled connection: the backend's close waits in its socket.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(pool.idle_count(), 1);
        pool.reap();
        assert_eq!(pool.idle_count(), 0, "the reaper read the close");

        let (addr, close, second) = backend().await;
        let (mut conn, _) = pool.checkout(addr, Runs::Inline).await.unwrap();
        assert_eq!(
            tokio::time::timeout(S, exchange(&mut conn)).await.unwrap(),
            "ok"
        );
        conn.release();
        close.send(()).unwrap();
        second.await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A checkout does not look (it costs a poll per request): the request handed to the
        // closed connection comes back unsent, for a fresh connection (`service::send`).
        let mut conn = pool.take_idle(addr, Runs::Inline).expect("still pooled");
        let request = Request::get("/").body(String::new()).unwrap();
        let response = conn.sender.try_send_request(request);
        tokio::pin!(response);
        let sent = std::future::poll_fn(|cx| conn.poll_after(cx, |cx| response.as_mut().poll(cx)));
        let mut e = tokio::time::timeout(S, sent).await.unwrap().unwrap_err();
        assert!(e.take_message().is_some(), "the request comes back unsent");
        assert_eq!(pool.idle_count(), 0);
    }
}
