//! The data plane: accept, TLS handshake with a certificate chosen per ClientHello, HTTP/1.1 and
//! HTTP/2 from clients, routing by Host, header rewriting, HTTP/1.1 keep-alive to backends, error
//! responses with router codes, one log line per request, graceful shutdown.
//!
//! Locks: the handshake path reads the certificate store (sharded read locks held for one hash
//! lookup) and nothing else; the request path also reads the route table and takes the backend
//! pool's per-backend lock for a push or pop. No I/O happens under any lock.

mod access_log;
mod activity;
mod body;
mod conn;
mod fault;
pub mod headers;
mod pool;
mod service;
mod shutdown;
mod upgrade;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use ipnet::IpNet;
use terminus_config::Config;
use terminus_metrics::ProxyMetrics;
use terminus_route::RouteTable;
use terminus_tls::{CertStore, TlsPolicy};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

#[doc(hidden)]
pub use access_log::AccessLog;
pub use access_log::ACCESS_TARGET;
pub use fault::{Fault, Side};

/// Largest request head (all header lines together) accepted before hyper answers 431.
const MAX_REQUEST_HEAD: usize = 128 * 1024;
/// How often idle backend connections past their timeout are closed (at most; shorter pool
/// timeouts are checked twice per timeout).
const REAP_EVERY: Duration = Duration::from_secs(5);

/// The data plane's settings, from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub via_h1: HeaderValue,
    pub via_h2: HeaderValue,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub quarantine: Duration,
    pub trusted_proxies: Vec<IpNet>,
    pub max_headers: usize,
    pub connect_attempts: usize,
    pub default_app: Option<String>,
    pub access_log: bool,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        let via = |version: &str| {
            HeaderValue::from_str(&format!("{version} {}", config.router.name))
                .unwrap_or_else(|_| HeaderValue::from_static("1.1 terminus"))
        };
        Self {
            via_h1: via("1.1"),
            via_h2: via("2.0"),
            handshake_timeout: config.tls.handshake_timeout,
            connect_timeout: config.timeouts.connect,
            first_byte_timeout: config.timeouts.first_byte,
            idle_timeout: config.timeouts.idle,
            pool_idle_timeout: config.timeouts.pool_idle,
            quarantine: config.timeouts.quarantine,
            trusted_proxies: config.proxy.trusted_proxies.clone(),
            max_headers: config.proxy.max_headers,
            connect_attempts: config.proxy.connect_attempts,
            default_app: config.router.default_app.clone(),
            access_log: config.router.access_log,
        }
    }
}

/// State every connection shares.
pub struct Shared {
    pub settings: Settings,
    pub certs: Arc<CertStore>,
    pub routes: Arc<RouteTable>,
    pub policy: TlsPolicy,
    pub metrics: ProxyMetrics,
    pool: pool::Pool,
    /// HTTP/1.1 or HTTP/2, told apart by the first bytes (plaintext, or TLS without ALPN).
    http: auto::Builder<TokioExecutor>,
    /// ALPN said `http/1.1`.
    http1: auto::Builder<TokioExecutor>,
    /// ALPN said `h2`.
    http2: auto::Builder<TokioExecutor>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("certs", &self.certs)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub fn new(
        settings: Settings,
        certs: Arc<CertStore>,
        routes: Arc<RouteTable>,
        policy: TlsPolicy,
        metrics: ProxyMetrics,
    ) -> Arc<Self> {
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            // Also the keep-alive idle limit: hyper starts it whenever it waits for a head.
            .header_read_timeout(settings.idle_timeout)
            .max_buf_size(MAX_REQUEST_HEAD)
            .max_headers(settings.max_headers);
        http.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(MAX_REQUEST_HEAD).unwrap_or(u32::MAX))
            .max_concurrent_streams(256);
        let pool = pool::Pool::new(
            settings.connect_timeout,
            settings.pool_idle_timeout,
            settings.quarantine,
        );
        Arc::new(Self {
            settings,
            certs,
            routes,
            policy,
            metrics,
            pool,
            http1: http.clone().http1_only(),
            http2: http.clone().http2_only(),
            http,
        })
    }

    /// Idle backend connections in the pool.
    pub fn pooled_connections(&self) -> usize {
        self.pool.idle_count()
    }
}

/// A bound listening socket.
#[derive(Debug)]
pub struct BoundListener {
    listener: TcpListener,
    tls: bool,
}

impl BoundListener {
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
        let listener = TcpListener::bind(l.address)
            .await
            .map_err(|source| BindError {
                address: l.address,
                source,
            })?;
        bound.push(BoundListener {
            listener,
            tls: l.tls,
        });
    }
    Ok(bound)
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
            accept.spawn(conn::accept_loop(
                shared.clone(),
                l.listener,
                l.tls,
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
    pub async fn shutdown(mut self, grace: Duration) -> Drained {
        let _ = self.stop.send(true);
        while self.accept.join_next().await.is_some() {}
        let _ = tokio::time::timeout(grace, self.tracker.wait_idle()).await;
        self.reaper.abort();
        Drained {
            abandoned: self.tracker.live(),
        }
    }
}
