//! The HTTP client the ACME client talks through: hyper with rustls (aws-lc-rs), trusting the
//! Mozilla roots plus `acme.directory_roots`, and noting each answer's `Retry-After` so a
//! rate-limited order is retried when the CA says, not sooner.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::RootCertStore;

use crate::error::{AcmeError, Result};

tokio::task_local! {
    /// The last `Retry-After` the CA sent to the task issuing one order.
    pub(crate) static RETRY_AFTER: Arc<Mutex<Option<Duration>>>;
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// A CA that has not answered a request (head) within this is treated as unreachable: the
/// attempt fails and backs off instead of holding an order slot forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct AcmeHttp {
    client: Client<Https, BodyWrapper<Bytes>>,
}

impl AcmeHttp {
    /// A client trusting the Mozilla roots and the PEM roots in `extra`.
    pub(crate) fn new(
        provider: Arc<rustls::crypto::CryptoProvider>,
        extra: Option<&std::path::Path>,
    ) -> Result<Self> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = extra {
            let fail = |message: String| AcmeError::Roots {
                path: path.display().to_string(),
                message,
            };
            let pem = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
            let mut added = 0;
            for der in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
                let der: rustls_pki_types::CertificateDer<'static> =
                    der.map_err(|e| fail(format!("not PEM: {e}")))?;
                roots
                    .add(der)
                    .map_err(|e| fail(format!("not a usable root: {e}")))?;
                added += 1;
            }
            if added == 0 {
                return Err(fail("holds no certificate".into()));
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| AcmeError::Roots {
                path: String::new(),
                message: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // HTTP/1.1 only: each request in flight gets its own pooled connection, so one
        // stalled answer never holds a shared HTTP/2 connection's flow-control window (and
        // with it every other domain's order).
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = self.client.request(req);
        Box::pin(async move {
            let rsp = tokio::time::timeout(REQUEST_TIMEOUT, fut)
                .await
                .map_err(|_| instant_acme::Error::Str("the CA did not answer within 30 s"))?
                .map_err(|e| instant_acme::Error::Other(chain(&e).into()))?;
            // Only a refusal's Retry-After is a floor for the next attempt; the one on an
            // order still processing is how soon to poll, which the client already honours.
            let refused = rsp.status().is_client_error() || rsp.status().is_server_error();
            let wait = rsp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|_| refused);
            if let Some(wait) = wait {
                let _ = RETRY_AFTER.try_with(|slot| {
                    if let Ok(mut s) = slot.lock() {
                        *s = Some(Duration::from_secs(wait));
                    }
                });
            }
            Ok(BytesResponse::from(rsp))
        })
    }
}

/// An error with its causes, one line: hyper's own message ("client error (Connect)") says
/// nothing of why; the operator needs the refused connection or the certificate problem.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
