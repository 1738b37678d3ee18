//! The admin listener: Prometheus metrics at `/metrics`, liveness at `/healthz`, and the JSON
//! API under `/v1/` for certificates, domains and apps (bearer token). Loopback by default; a
//! separate listener so the data plane never serves it.

mod api;
mod certs;
mod control;
mod routing;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use terminus_metrics::MetricsRegistry;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use api::{Api, Token};
pub use certs::{CertChange, CertReplace, CertUpload, CertView, DroppedView, PreviousView};
pub use control::{ApiError, ApiResult, Control, Source, StaticCert, Statics, AUDIT_TARGET};
pub use routing::{AppCreate, AppUpdate, AppView, DomainCreate, DomainUpdate, DomainView};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin listener serves.
#[derive(Debug)]
pub struct Admin {
    registry: MetricsRegistry,
    api: Option<Arc<Api>>,
}

impl Admin {
    pub fn new(registry: MetricsRegistry, api: Option<Api>) -> Arc<Self> {
        Arc::new(Self {
            registry,
            api: api.map(Arc::new),
        })
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
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
            (_, path) if path == "/v1" || path.starts_with("/v1/") => match &self.api {
                Some(api) => api.clone().handle(req).await,
                None => text(StatusCode::NOT_FOUND, "not found\n"),
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

/// Serves the admin listener until `stop` changes.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, mut stop: watch::Receiver<bool>) {
    let http = auto::Builder::new(TokioExecutor::new());
    loop {
        let (tcp, _) = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(ok) => ok,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(req).await) }
            });
            if let Err(e) = http.serve_connection(TokioIo::new(tcp), service).await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}
