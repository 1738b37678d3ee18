//! What every connection shares: the settings taken from the config, the certificate index,
//! the route table, the TLS policy, metrics, the backend pool and the HTTP server builders.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use ipnet::IpNet;
use terminus_config::Config;
use terminus_metrics::ProxyMetrics;
use terminus_route::RouteTable;
use terminus_tls::{CertIndex, TlsPolicy};

use crate::body::RequestBody;
use crate::pool;

/// Largest request head (all header lines together) accepted before hyper answers 431.
const MAX_REQUEST_HEAD: usize = 128 * 1024;

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
            default_app: config.router.default_app.clone().map(String::from),
            access_log: config.router.access_log,
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
    pub(crate) pool: pool::Pool<RequestBody>,
    /// HTTP/1.1 or HTTP/2, told apart by the first bytes (plaintext, or TLS without ALPN).
    pub(crate) http: auto::Builder<TokioExecutor>,
    /// ALPN said `http/1.1`.
    pub(crate) http1: auto::Builder<TokioExecutor>,
    /// ALPN said `h2`.
    pub(crate) http2: auto::Builder<TokioExecutor>,
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
        certs: Arc<CertIndex>,
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
