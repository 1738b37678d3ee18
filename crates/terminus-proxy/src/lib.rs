//! The data plane: accept, TLS handshake with a certificate chosen per ClientHello, HTTP/1.1 and
//! HTTP/2 from clients, routing by Host, header rewriting, HTTP/1.1 keep-alive to backends, error
//! responses with router codes, one log line per request, graceful shutdown.
//!
//! Locks: the handshake path reads the certificate index (sharded read locks held for one hash
//! lookup) and nothing else; the request path also reads the route table and takes the backend
//! pool's per-backend lock for a push or pop. No I/O happens under any lock.

mod accept;
mod access_log;
mod activity;
mod body;
mod conn;
mod fault;
mod handshake;
pub mod headers;
mod info;
mod pool;
mod service;
mod shutdown;
mod state;
mod tls_io;
mod upgrade;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

#[doc(hidden)]
pub use access_log::AccessLog;
pub use access_log::ACCESS_TARGET;
pub use fault::Fault;
pub use state::{Settings, Shared};

/// How often idle backend connections past their timeout are closed (at most; shorter pool
/// timeouts are checked twice per timeout).
const REAP_EVERY: Duration = Duration::from_secs(5);

/// A bound listening socket.
#[derive(Debug)]
pub struct BoundListener {
    listener: TcpListener,
    tls: bool,
    max_connections: usize,
}

impl BoundListener {
    /// Binds one listener, or fails naming its address.
    pub async fn bind(l: &terminus_config::Listener) -> Result<Self, BindError> {
        let listener = TcpListener::bind(l.address)
            .await
            .map_err(|source| BindError {
                address: l.address,
                source,
            })?;
        Ok(Self {
            listener,
            tls: l.tls,
            max_connections: l.max_connections,
        })
    }

    /// Serves `l` on a socket already listening, handed over by the process this one replaces
    /// (see the binary's upgrade module). Needs a tokio runtime.
    pub fn adopt(
        listener: std::net::TcpListener,
        l: &terminus_config::Listener,
    ) -> Result<Self, BindError> {
        let fail = |source| BindError {
            address: l.address,
            source,
        };
        listener.set_nonblocking(true).map_err(fail)?;
        Ok(Self {
            listener: TcpListener::from_std(listener).map_err(fail)?,
            tls: l.tls,
            max_connections: l.max_connections,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

/// Binds every listener, or fails naming the address that could not be bound.
pub async fn bind(
    listeners: &[terminus_config::Listener],
) -> Result<Vec<BoundListener>, BindError> {
    let mut bound = Vec::with_capacity(listeners.len());
    for l in listeners {
        bound.push(BoundListener::bind(l).await?);
    }
    Ok(bound)
}

/// The listening socket, to hand it to a new process in a binary upgrade.
impl AsFd for BoundListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address}: {source}")]
pub struct BindError {
    pub address: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// The running data plane.
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    accept: JoinSet<()>,
    reaper: tokio::task::JoinHandle<()>,
    tracker: shutdown::Tracker,
}

/// How shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Connections still open when the grace period ended.
    pub abandoned: usize,
}

impl Proxy {
    pub fn start(shared: Arc<Shared>, listeners: Vec<BoundListener>) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let tracker = shutdown::Tracker::default();
        let mut accept = JoinSet::new();
        for l in listeners {
            accept.spawn(accept::accept_loop(
                shared.clone(),
                l.listener,
                accept::ListenerOptions {
                    tls: l.tls,
                    max_connections: l.max_connections,
                },
                tracker.clone(),
                stop_rx.clone(),
            ));
        }
        let every = REAP_EVERY.min(shared.settings.pool_idle_timeout / 2);
        let reaped = shared.clone();
        let reaper = tokio::spawn(async move {
            let shared = reaped;
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            loop {
                tick.tick().await;
                shared.pool.reap();
            }
        });
        Self {
            shared,
            stop,
            accept,
            reaper,
            tracker,
        }
    }

    /// Connections currently open.
    pub fn open_connections(&self) -> usize {
        self.tracker.live()
    }

    /// Stops accepting, asks every connection to finish (HTTP/2 GOAWAY, HTTP/1.1 close after
    /// the in-flight response), and waits up to `grace` for them.
    pub async fn shutdown(self, grace: Duration) -> Drained {
        self.stop_and_drain(grace).await
    }

    /// Stops accepting after a binary upgrade (the new process accepts on the same sockets) and
    /// drains so that no client sees an error it could not have avoided:
    /// - a TLS handshake in progress completes and its connection is served;
    /// - HTTP/2 connections get GOAWAY, which tells the client which streams were processed;
    /// - an HTTP/1 connection is not closed while idle (a request may be on its way: closing
    ///   then would fail it); its next response carries `Connection: close` and the connection
    ///   closes after it, as HAProxy's `idle-close-on-response` does. An HTTP/1 connection
    ///   that stays idle is closed by the idle timeout, or at the end of `grace`.
    pub async fn hand_over(self, grace: Duration) -> Drained {
        self.shared.handing_over.store(true, Ordering::Release);
        self.stop_and_drain(grace).await
    }

    async fn stop_and_drain(mut self, grace: Duration) -> Drained {
        let _ = self.stop.send(true);
        while self.accept.join_next().await.is_some() {}
        let _ = tokio::time::timeout(grace, self.tracker.wait_idle()).await;
        self.reaper.abort();
        Drained {
            abandoned: self.tracker.live(),
        }
    }
}
