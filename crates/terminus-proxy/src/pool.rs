//! HTTP/1.1 keep-alive connections to backends, one idle list per backend address, and the
//! quarantine of backends that refused or timed out on connect.
//!
//! Our own pool rather than hyper-util's client: a request must be retried on the next backend
//! when a connection cannot be made (never after bytes were sent), which needs the request back,
//! and round-robin must choose the backend per request, not per pooled connection.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use dashmap::DashMap;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::fault::Fault;

/// Idle connections kept per backend; more are closed when handed back.
const MAX_IDLE_PER_BACKEND: usize = 512;
/// A response head larger than this is refused (H25).
const MAX_RESPONSE_HEAD: usize = 1 << 20;

/// A connection to a backend, ready for one request.
pub(crate) struct Conn {
    pub sender: http1::SendRequest<RequestBody>,
    pub addr: SocketAddr,
    /// Came from the idle list (so it may have been closed by the backend meanwhile).
    pub reused: bool,
}

struct Idle {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

pub(crate) struct Pool {
    idle: DashMap<SocketAddr, Vec<Idle>>,
    quarantined: DashMap<SocketAddr, Instant>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    quarantine_for: Duration,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("backends", &self.idle.len())
            .field("quarantined", &self.quarantined.len())
            .finish()
    }
}

impl Pool {
    pub(crate) fn new(
        connect_timeout: Duration,
        idle_timeout: Duration,
        quarantine_for: Duration,
    ) -> Self {
        Self {
            idle: DashMap::new(),
            quarantined: DashMap::new(),
            connect_timeout,
            idle_timeout,
            quarantine_for,
        }
    }

    /// An idle connection to `addr` if one is usable, else a new one.
    pub(crate) async fn checkout(
        &self,
        addr: SocketAddr,
    ) -> Result<(Conn, Option<Duration>), Fault> {
        if let Some(conn) = self.take_idle(addr) {
            return Ok((conn, None));
        }
        let started = Instant::now();
        let conn = self.connect(addr).await?;
        Ok((conn, Some(started.elapsed())))
    }

    fn take_idle(&self, addr: SocketAddr) -> Option<Conn> {
        let mut list = self.idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(idle) = list.pop() {
            if idle.sender.is_ready() && now.duration_since(idle.since) < self.idle_timeout {
                return Some(Conn {
                    sender: idle.sender,
                    addr,
                    reused: true,
                });
            }
        }
        None
    }

    /// Opens a new connection, classifying failures as H19 (timeout) or H21 (refused).
    pub(crate) async fn connect(&self, addr: SocketAddr) -> Result<Conn, Fault> {
        let stream = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
        {
            Err(_) => return Err(Fault::ConnectTimeout),
            Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => return Err(Fault::ConnectTimeout),
            Ok(Err(_)) => return Err(Fault::ConnectRefused),
            Ok(Ok(stream)) => stream,
        };
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .max_buf_size(MAX_RESPONSE_HEAD)
            .max_headers(1000)
            .handshake(TokioIo::new(stream))
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
        })
    }

    /// Hands a connection back after a complete response.
    pub(crate) fn checkin(&self, conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        let mut list = self.idle.entry(conn.addr).or_default();
        if list.len() < MAX_IDLE_PER_BACKEND {
            list.push(Idle {
                sender: conn.sender,
                since: Instant::now(),
            });
        }
    }

    pub(crate) fn quarantine(&self, addr: SocketAddr) {
        self.quarantined
            .insert(addr, Instant::now() + self.quarantine_for);
    }

    pub(crate) fn is_quarantined(&self, addr: SocketAddr) -> bool {
        match self.quarantined.get(&addr).map(|until| *until) {
            Some(until) if until > Instant::now() => true,
            Some(_) => {
                self.quarantined
                    .remove_if(&addr, |_, until| *until <= Instant::now());
                false
            }
            None => false,
        }
    }

    /// Closes idle connections older than the pool idle timeout and forgets expired quarantines.
    pub(crate) fn reap(&self) {
        let now = Instant::now();
        self.idle.retain(|_, list| {
            list.retain(|idle| {
                !idle.sender.is_closed() && now.duration_since(idle.since) < self.idle_timeout
            });
            !list.is_empty()
        });
        self.quarantined.retain(|_, until| *until > now);
    }

    /// Idle connections currently pooled (for tests and metrics).
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.iter().map(|l| l.len()).sum()
    }
}
