//! The admin listener: Prometheus metrics at `/metrics`, liveness at `/healthz`, readiness at
//! `/readyz` (503 with the reason while starting, draining, or while a fleet's store is
//! unreachable), and the JSON API under `/v1/` for certificates, domains, apps and config
//! reloads (bearer token). Loopback by default; a separate listener so the data plane never
//! serves it.

mod acm;
mod api;
mod backends;
mod certs;
mod control;
mod fleet;
mod ready;
mod routing;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use terminus_metrics::MetricsRegistry;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub use api::{Api, Reload, Token};
pub use control::{ApiError, ApiResult, Control, StaticCert, Statics, AUDIT_TARGET};
pub use ready::{Readiness, Stage};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin listener serves.
#[derive(Debug)]
pub struct Admin {
    registry: MetricsRegistry,
    /// Set once the router has loaded what the API manages; until then `/v1/` answers 503.
    api: OnceLock<Option<Arc<Api>>>,
    readiness: Arc<Readiness>,
}

impl Admin {
    /// An admin listener that is ready, with its API (or none) from the start.
    pub fn new(registry: MetricsRegistry, api: Option<Api>) -> Arc<Self> {
        let admin = Self::starting(registry, Arc::new(Readiness::new(Stage::Ready)));
        admin.set_api(api);
        admin
    }

    /// An admin listener served while the router starts: `/healthz` and `/metrics` answer at
    /// once, `/readyz` follows `readiness`, and `/v1/` answers 503 until [`Admin::set_api`].
    pub fn starting(registry: MetricsRegistry, readiness: Arc<Readiness>) -> Arc<Self> {
        Arc::new(Self {
            registry,
            api: OnceLock::new(),
            readiness,
        })
    }

    /// Turns the API on (or, with `None`, says it is disabled); only the first call counts.
    pub fn set_api(&self, api: Option<Api>) {
        let _ = self.api.set(api.map(Arc::new));
    }

    /// Why a fleet router should not take traffic that changes things: its etcd is unreachable.
    fn fleet_unready(&self) -> Option<String> {
        self.api.get()?.as_ref()?.control.unready()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") => match self.readiness.stage() {
                Stage::Ready => match self.fleet_unready() {
                    None => text(StatusCode::OK, "ready\n"),
                    Some(reason) => {
                        let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "");
                        *r.body_mut() = Full::new(Bytes::from(format!("not ready: {reason}\n")));
                        r
                    }
                },
                stage => text(StatusCode::SERVICE_UNAVAILABLE, stage.reason()),
            },
            (&Method::GET, "/metrics") => {
                let mut out = String::with_capacity(16 * 1024);
                match terminus_metrics::encode_text(&mut out, &self.registry) {
                    Ok(()) => {
                        let mut r = Response::new(Full::new(Bytes::from(out)));
                        r.headers_mut().insert(
                            header::CONTENT_TYPE,
                            header::HeaderValue::from_static(OPENMETRICS),
                        );
                        r
                    }
                    Err(_) => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "metrics encoding failed\n",
                    ),
                }
            }
            (_, path) if path == "/v1" || path.starts_with("/v1/") => match self.api.get() {
                Some(Some(api)) => api.clone().handle(req).await,
                Some(None) => text(StatusCode::NOT_FOUND, "not found\n"),
                None => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the router is starting: try again once /readyz answers 200\n",
                ),
            },
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// What one admin connection may hold. The admin listener shares the process's file
/// descriptors with the data plane, and its connections need no token to be opened: without
/// these limits, idle admin connections could use up the descriptors HTTPS and `/healthz` need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A connection must send its first request head within this (and each later head, once
    /// begun, within this too).
    pub header_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 256,
        }
    }
}

/// Request activity on one connection, as the service sees it.
#[derive(Debug)]
struct Activity {
    opened: tokio::time::Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `opened` when the last request finished; `u64::MAX`: none yet.
    last_done_ms: AtomicU64,
}

impl Activity {
    /// When the connection may be closed if nothing happens: the header timeout from opening
    /// until a first request, then the idle timeout from the last request's end.
    fn deadline(&self, limits: &Limits) -> Option<tokio::time::Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(match self.last_done_ms.load(Ordering::Acquire) {
            u64::MAX => self.opened + limits.header_timeout,
            ms => self.opened + Duration::from_millis(ms) + limits.idle_timeout,
        })
    }
}

/// Serves the admin listener until `stop` changes.
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(ok) => ok,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, limit = limits.max_connections, "admin connection refused: too many open");
            drop(tcp);
            continue;
        };
        let admin = admin.clone();
        let http = http.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let activity = Arc::new(Activity {
                opened: tokio::time::Instant::now(),
                in_flight: AtomicUsize::new(0),
                last_done_ms: AtomicU64::new(u64::MAX),
            });
            let seen = activity.clone();
            let service = service_fn(move |req| {
                let admin = admin.clone();
                let seen = seen.clone();
                seen.in_flight.fetch_add(1, Ordering::AcqRel);
                async move {
                    let reply = admin.handle(req).await;
                    let ms =
                        u64::try_from(seen.opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
                    seen.last_done_ms.store(ms, Ordering::Release);
                    seen.in_flight.fetch_sub(1, Ordering::AcqRel);
                    Ok::<_, Infallible>(reply)
                }
            });
            let conn = http.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            loop {
                let deadline = activity.deadline(&limits);
                let expired = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at).await,
                        // A request is in flight: look again shortly.
                        None => {
                            tokio::time::sleep(limits.idle_timeout.min(Duration::from_secs(1)))
                                .await
                        }
                    }
                };
                tokio::select! {
                    done = &mut conn => {
                        if let Err(e) = done {
                            tracing::debug!(error = %e, "admin connection ended with an error");
                        }
                        return;
                    }
                    _ = stop.changed() => return,
                    () = expired => {
                        if activity.deadline(&limits).is_some_and(|at| at <= tokio::time::Instant::now()) {
                            tracing::debug!(%peer, "admin connection closed: idle");
                            return;
                        }
                    }
                }
            }
        });
    }
}
