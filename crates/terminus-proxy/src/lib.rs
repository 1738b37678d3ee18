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
pub mod proxy_header;
mod service;
mod shutdown;
mod side;
mod state;
mod streams;
mod tls_io;
mod upgrade;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
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
    proxy: Option<Arc<accept::ProxyListener>>,
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
            proxy: proxy_of(l),
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
            proxy: proxy_of(l),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

/// The PROXY protocol settings of a listener, if it reads the header.
fn proxy_of(l: &terminus_config::Listener) -> Option<Arc<accept::ProxyListener>> {
    l.proxy_protocol.map(|mode| {
        Arc::new(accept::ProxyListener {
            mode,
            trusted: l.proxy_trusted.clone(),
        })
    })
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

/// What new connections use: settings, TLS policy, and the certificates, routes and backend
/// pool every generation shares. A config reload publishes a new value with one store; each
/// accept loads the current one without a lock.
#[derive(Debug, Clone)]
pub struct Live(Arc<ArcSwap<Shared>>);

impl Live {
    /// What a connection accepted now uses.
    pub fn load(&self) -> Arc<Shared> {
        self.0.load_full()
    }

    /// Publishes new settings and a new TLS policy in one swap: connections accepted from now
    /// on use them; open connections keep the ones they were accepted with, so their requests
    /// in flight are not disturbed.
    pub fn reconfigure(&self, settings: Settings, policy: terminus_tls::TlsPolicy) {
        let next = self.0.load().reconfigured(settings, policy);
        self.0.store(next);
    }
}

/// The running data plane.
#[derive(Debug)]
pub struct Proxy {
    current: Live,
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
        let current = Live(Arc::new(ArcSwap::new(shared.clone())));
        let mut accept = JoinSet::new();
        for (index, l) in listeners.into_iter().enumerate() {
            accept.spawn(accept::accept_loop(
                current.0.clone(),
                l.listener,
                accept::ListenerOptions {
                    index,
                    tls: l.tls,
                    max_connections: l.max_connections,
                    proxy: l.proxy,
                },
                tracker.clone(),
                stop_rx.clone(),
            ));
        }
        let every = REAP_EVERY.min(shared.settings.pool_idle_timeout / 2);
        let reaper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            loop {
                tick.tick().await;
                shared.pool.reap();
            }
        });
        Self {
            current,
            stop,
            accept,
            reaper,
            tracker,
        }
    }

    /// The handle a config reload publishes through.
    pub fn live(&self) -> Live {
        self.current.clone()
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
        self.current
            .load()
            .handing_over
            .store(true, Ordering::Release);
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
