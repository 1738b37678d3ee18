//! What every connection shares: the settings taken from the config, the certificate index,
//! the route table, the TLS policy, metrics, the backend pool and the HTTP server builders.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use hyper_util::server::conn::auto;
use ipnet::IpNet;
use terminus_config::Config;
use terminus_metrics::ProxyMetrics;
use terminus_route::RouteTable;
use terminus_tls::{AcmeChallenges, CertIndex, TlsPolicy};

use crate::body::RequestBody;
use crate::pool;
use crate::streams::StreamExec;

/// The most an HTTP/2 stream queues for a client beyond what the socket takes (hyper's default
/// is 400 KiB per stream, 100 MiB over 256 streams of a client that never reads).
const H2_SEND_BUFFER: usize = 64 * 1024;

/// The data plane's settings, from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub via_h1: HeaderValue,
    pub via_h2: HeaderValue,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    /// An HTTP/1 request head must be complete this long after its first byte.
    pub request_head_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub quarantine: Duration,
    pub trusted_proxies: Vec<IpNet>,
    pub max_headers: usize,
    pub max_request_head: usize,
    pub connect_attempts: usize,
    pub set_x_real_ip: bool,
    pub default_app: Option<String>,
    pub access_log: bool,
    /// How long shutdown waits for open connections.
    pub shutdown_grace: Duration,
    /// Each listener's `max_connections`, in config order.
    pub max_connections: Vec<usize>,
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
            request_head_timeout: config.timeouts.request_head,
            pool_idle_timeout: config.timeouts.pool_idle,
            quarantine: config.timeouts.quarantine,
            trusted_proxies: config.proxy.trusted_proxies.clone(),
            max_headers: config.proxy.max_headers,
            max_request_head: config.proxy.max_request_head,
            connect_attempts: config.proxy.connect_attempts,
            set_x_real_ip: config.proxy.set_x_real_ip,
            default_app: config.router.default_app.clone().map(String::from),
            access_log: config.router.access_log,
            shutdown_grace: config.timeouts.shutdown_grace,
            max_connections: config.listeners.iter().map(|l| l.max_connections).collect(),
        }
    }
}

/// State every connection shares.
pub struct Shared {
    pub settings: Settings,
    pub certs: Arc<CertIndex>,
    pub routes: Arc<RouteTable>,
    pub policy: TlsPolicy,
    pub metrics: ProxyMetrics,
    /// Pending ACME challenges, answered before routing (HTTP-01) and before certificate
    /// selection (TLS-ALPN-01).
    pub challenges: Arc<AcmeChallenges>,
    pub(crate) pool: pool::Pool<RequestBody>,
    /// HTTP/1.1 or HTTP/2, told apart by the first bytes (plaintext, or TLS without ALPN).
    pub(crate) http: auto::Builder<StreamExec>,
    /// ALPN said `http/1.1`: hyper's own builder, whose connections can be taken apart
    /// between requests (see conn.rs).
    pub(crate) http1: http1::Builder,
    /// ALPN said `h2`.
    pub(crate) http2: auto::Builder<StreamExec>,
    /// Set when another process has taken over the listeners (binary upgrade): the drain
    /// then closes HTTP/1 connections after a response rather than while idle. Shared by
    /// every generation a reload makes, so connections accepted before a reload see it too.
    pub(crate) handing_over: Arc<AtomicBool>,
    /// HTTP/1 connections waiting for a request without HTTP state (see conn.rs).
    pub(crate) waiting: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("certs", &self.certs)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

/// The HTTP server builders for one set of settings: plaintext or TLS without ALPN (sniffed),
/// ALPN `http/1.1`, ALPN `h2`.
fn builders(
    settings: &Settings,
) -> (
    http1::Builder,
    auto::Builder<StreamExec>,
    auto::Builder<StreamExec>,
) {
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        // The connection's watchdog times heads (request_head, from the first byte, answered
        // 408) and the wait for them (idle). hyper's own timer would start before the first
        // byte and close without a 408, and it costs a timer made, registered and dropped for
        // every request (about 1.3% of a keep-alive request's instructions): off.
        .header_read_timeout(None)
        // The largest head (hyper answers 431 beyond it), and also the most hyper buffers
        // for writing: a response is pulled from the backend only as fast as the client
        // drains this, so a client that stops reading holds at most this much here (plus
        // one chunk).
        .max_buf_size(settings.max_request_head)
        .max_headers(settings.max_headers);
    let mut http = auto::Builder::new(StreamExec);
    // The same HTTP/1 settings where the first bytes tell the protocol.
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(settings.max_request_head)
        .max_headers(settings.max_headers);
    http.http2()
        .timer(TokioTimer::new())
        // h2 answers a larger header block with 431 and resets the stream.
        .max_header_list_size(u32::try_from(settings.max_request_head).unwrap_or(u32::MAX))
        .max_send_buf_size(H2_SEND_BUFFER)
        .max_concurrent_streams(256);
    (http1, http.clone().http2_only(), http)
}

impl Shared {
    pub fn new(
        settings: Settings,
        certs: Arc<CertIndex>,
        routes: Arc<RouteTable>,
        policy: TlsPolicy,
        metrics: ProxyMetrics,
        challenges: Arc<AcmeChallenges>,
    ) -> Arc<Self> {
        let pool = pool::Pool::new(
            settings.connect_timeout,
            settings.pool_idle_timeout,
            settings.quarantine,
        );
        let (http1, http2, http) = builders(&settings);
        Arc::new(Self {
            settings,
            certs,
            routes,
            policy,
            metrics,
            challenges,
            pool,
            http1,
            http2,
            http,
            handing_over: Arc::new(AtomicBool::new(false)),
            waiting: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The same router with new settings and TLS policy (a config reload): the certificate
    /// index, route table, metrics and backend pool are shared with `self`. The pool's timeouts
    /// change at once; everything else applies to connections that use the returned value.
    pub fn reconfigured(&self, settings: Settings, policy: TlsPolicy) -> Arc<Self> {
        self.pool.set_timeouts(
            settings.connect_timeout,
            settings.pool_idle_timeout,
            settings.quarantine,
        );
        let (http1, http2, http) = builders(&settings);
        Arc::new(Self {
            settings,
            certs: self.certs.clone(),
            routes: self.routes.clone(),
            policy,
            metrics: self.metrics.clone(),
            challenges: self.challenges.clone(),
            pool: self.pool.clone(),
            http1,
            http2,
            http,
            handing_over: self.handing_over.clone(),
            waiting: self.waiting.clone(),
        })
    }

    /// Whether this process is draining after handing its listeners to a new one.
    pub(crate) fn handing_over(&self) -> bool {
        self.handing_over.load(Ordering::Acquire)
    }

    /// HTTP/1.1 client connections waiting for their next request with no HTTP state held.
    pub fn waiting_connections(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Idle backend connections in the pool.
    pub fn pooled_connections(&self) -> usize {
        self.pool.idle_count()
    }
}
