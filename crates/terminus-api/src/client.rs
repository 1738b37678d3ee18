//! A small client for the admin API: one HTTP/1.1 connection per request (the API is called a
//! few times per command, on a private address), typed requests and answers, errors that keep
//! the server's JSON.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::{
    AcmChange, AcmDomainView, AppCreate, AppDestroyed, AppUpdate, AppView, CertChange, CertRemoved,
    CertReplace, CertUpload, CertView, DomainCreate, DomainUpdate, DomainView, ErrorBody,
    ReloadReport, NEXT_CURSOR_HEADER,
};

/// How long one request may take by default, connect to last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url}: the admin API's URL must start with http:// (it speaks plain HTTP on a private address; reach a remote one through an SSH tunnel)")]
    Url { url: String },
    #[error("cannot reach the admin API at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the admin API at {url} did not answer within {}ms", .after.as_millis())]
    Timeout { url: String, after: Duration },
    #[error("talking to the admin API at {url} failed: {source}")]
    Http {
        url: String,
        #[source]
        source: hyper::Error,
    },
    /// The API answered with an error: its status and JSON body.
    #[error("{}", .body.message)]
    Api { status: u16, body: ErrorBody },
    #[error("the admin API's answer ({status}) is not what this client understands: {source}")]
    Decode {
        status: u16,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot start the client's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl ClientError {
    /// The error as the API's JSON: the server's own body, or one in the same shape.
    pub fn body(&self) -> ErrorBody {
        match self {
            Self::Api { body, .. } => body.clone(),
            other => ErrorBody {
                id: match other {
                    Self::Url { .. } => "invalid_url",
                    Self::Connect { .. } | Self::Timeout { .. } | Self::Http { .. } => {
                        "unreachable"
                    }
                    Self::Decode { .. } => "unexpected_answer",
                    _ => "client_error",
                }
                .into(),
                message: other.to_string(),
                affected: None,
            },
        }
    }

    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// One page of a listing, and the cursor of the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// The admin API at a URL, with a bearer token.
#[derive(Debug, Clone)]
pub struct Client {
    url: String,
    authority: String,
    prefix: String,
    token: Option<String>,
    timeout: Duration,
}

impl Client {
    /// `url` is `http://HOST:PORT` with an optional path prefix.
    pub fn new(url: &str, token: Option<String>) -> Result<Self, ClientError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| ClientError::Url {
                url: url.to_owned(),
            })?;
        let (authority, prefix) = match rest.split_once('/') {
            Some((a, p)) => (a.to_owned(), format!("/{}", p.trim_end_matches('/'))),
            None => (rest.to_owned(), String::new()),
        };
        if authority.is_empty() {
            return Err(ClientError::Url {
                url: url.to_owned(),
            });
        }
        Ok(Self {
            url: format!("http://{authority}"),
            authority,
            prefix: if prefix == "/" { String::new() } else { prefix },
            token: token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()),
            timeout: REQUEST_TIMEOUT,
        })
    }

    /// Gives up on a request after `timeout` (default 60 s): a health check wants an answer
    /// sooner.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn connect_to(&self) -> String {
        let has_port = match self.authority.rsplit_once(':') {
            Some((host, _)) => !host.is_empty() && (!host.contains(':') || host.ends_with(']')),
            None => false,
        };
        if has_port {
            self.authority.clone()
        } else {
            format!("{}:80", self.authority)
        }
    }

    /// Sends one request with any body; the status and body as received. The one place that
    /// speaks HTTP: every typed call goes through it.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Bytes,
        token: Option<&str>,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), ClientError> {
        let call = async {
            let tcp = tokio::net::TcpStream::connect(self.connect_to())
                .await
                .map_err(|source| ClientError::Connect {
                    url: self.url.clone(),
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            let http_err = |source| ClientError::Http {
                url: self.url.clone(),
                source,
            };
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(http_err)?;
            tokio::spawn(conn);
            let mut req = http::Request::builder()
                .method(method)
                .uri(format!("{}{}", self.prefix, path_and_query))
                .header(header::HOST, &self.authority)
                .header(header::ACCEPT, "application/json");
            if let Some(t) = token {
                req = req.header(header::AUTHORIZATION, format!("Bearer {}", t.trim()));
            }
            if !body.is_empty() {
                req = req.header(header::CONTENT_TYPE, "application/json");
            }
            let req = req.body(Full::new(body)).map_err(|_| ClientError::Url {
                url: format!("{}{}", self.url, path_and_query),
            })?;
            let resp = sender.send_request(req).await.map_err(http_err)?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(http_err)?
                .to_bytes();
            Ok((status, headers, body))
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| ClientError::Timeout {
                url: self.url.clone(),
                after: self.timeout,
            })?
    }

    /// One API call with this client's token: the decoded answer and the next-page cursor.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<(T, Option<String>), ClientError> {
        let bytes = match body {
            Some(b) => Bytes::from(
                serde_json::to_vec(b)
                    .map_err(|source| ClientError::Decode { status: 0, source })?,
            ),
            None => Bytes::new(),
        };
        let (status, headers, body) = self
            .send(method, path, bytes, self.token.as_deref())
            .await?;
        if !status.is_success() {
            let body = serde_json::from_slice::<ErrorBody>(&body).unwrap_or_else(|_| ErrorBody {
                id: format!("http_{}", status.as_u16()),
                message: String::from_utf8_lossy(&body).trim().to_owned(),
                affected: None,
            });
            return Err(ClientError::Api {
                status: status.as_u16(),
                body,
            });
        }
        let next = headers
            .get(NEXT_CURSOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(decode_cursor);
        let value = serde_json::from_slice(&body).map_err(|source| ClientError::Decode {
            status: status.as_u16(),
            source,
        })?;
        Ok((value, next))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        Ok(self.call(Method::GET, path, None::<&()>).await?.0)
    }

    async fn page<T: DeserializeOwned>(
        &self,
        route: &str,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<Page<T>, ClientError> {
        let mut query = Vec::new();
        if let Some(l) = limit {
            query.push(format!("limit={l}"));
        }
        if let Some(c) = cursor {
            query.push(format!("cursor={}", encode(c)));
        }
        let path = if query.is_empty() {
            route.to_owned()
        } else {
            format!("{route}?{}", query.join("&"))
        };
        let (items, next) = self.call(Method::GET, &path, None::<&()>).await?;
        Ok(Page { items, next })
    }

    /// Every item of a listing, `page` at a time.
    async fn all<T: DeserializeOwned>(
        &self,
        route: &str,
        page: usize,
        limit: Option<usize>,
    ) -> Result<Vec<T>, ClientError> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let want = limit.map_or(page, |l| l.saturating_sub(out.len()).min(page));
            if want == 0 {
                return Ok(out);
            }
            let p: Page<T> = self.page(route, Some(want), cursor.as_deref()).await?;
            out.extend(p.items);
            match p.next {
                Some(next) => cursor = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// `GET /healthz` answers 200.
    pub async fn healthy(&self) -> Result<bool, ClientError> {
        let (status, _, _) = self
            .send(Method::GET, "/healthz", Bytes::new(), None)
            .await?;
        Ok(status == StatusCode::OK)
    }

    pub async fn certs_page(
        &self,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<Page<CertView>, ClientError> {
        self.page("/v1/certs", limit, cursor).await
    }

    /// Every certificate (or the first `limit`), fetched `page` at a time.
    pub async fn certs(
        &self,
        page: usize,
        limit: Option<usize>,
    ) -> Result<Vec<CertView>, ClientError> {
        self.all("/v1/certs", page, limit).await
    }

    pub async fn cert(&self, name: &str) -> Result<CertView, ClientError> {
        self.get(&format!("/v1/certs/{}", encode(name))).await
    }

    pub async fn add_cert(&self, up: &CertUpload) -> Result<CertChange, ClientError> {
        Ok(self.call(Method::POST, "/v1/certs", Some(up)).await?.0)
    }

    pub async fn update_cert(
        &self,
        name: &str,
        up: &CertReplace,
    ) -> Result<CertChange, ClientError> {
        let path = format!("/v1/certs/{}", encode(name));
        Ok(self.call(Method::PATCH, &path, Some(up)).await?.0)
    }

    pub async fn rollback_cert(&self, name: &str) -> Result<CertView, ClientError> {
        let path = format!("/v1/certs/{}/rollback", encode(name));
        Ok(self.call(Method::POST, &path, None::<&()>).await?.0)
    }

    /// Removes a certificate; `confirm` must repeat its name (else 409 with the impact).
    pub async fn remove_cert(
        &self,
        name: &str,
        confirm: Option<&str>,
    ) -> Result<CertRemoved, ClientError> {
        let path = format!("/v1/certs/{}{}", encode(name), confirm_query(confirm));
        Ok(self.call(Method::DELETE, &path, None::<&()>).await?.0)
    }

    pub async fn domains_page(
        &self,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<Page<DomainView>, ClientError> {
        self.page("/v1/domains", limit, cursor).await
    }

    /// Every domain (or the first `limit`), fetched `page` at a time.
    pub async fn domains(
        &self,
        page: usize,
        limit: Option<usize>,
    ) -> Result<Vec<DomainView>, ClientError> {
        self.all("/v1/domains", page, limit).await
    }

    pub async fn add_domain(&self, req: &DomainCreate) -> Result<DomainView, ClientError> {
        Ok(self.call(Method::POST, "/v1/domains", Some(req)).await?.0)
    }

    pub async fn update_domain(
        &self,
        host: &str,
        req: &DomainUpdate,
    ) -> Result<DomainView, ClientError> {
        let path = format!("/v1/domains/{}", encode(host));
        Ok(self.call(Method::PATCH, &path, Some(req)).await?.0)
    }

    pub async fn remove_domain(&self, host: &str) -> Result<DomainView, ClientError> {
        let path = format!("/v1/domains/{}", encode(host));
        Ok(self.call(Method::DELETE, &path, None::<&()>).await?.0)
    }

    pub async fn apps(&self) -> Result<Vec<AppView>, ClientError> {
        self.get("/v1/apps").await
    }

    pub async fn create_app(&self, req: &AppCreate) -> Result<AppView, ClientError> {
        Ok(self.call(Method::POST, "/v1/apps", Some(req)).await?.0)
    }

    pub async fn update_app(&self, name: &str, req: &AppUpdate) -> Result<AppView, ClientError> {
        let path = format!("/v1/apps/{}", encode(name));
        Ok(self.call(Method::PATCH, &path, Some(req)).await?.0)
    }

    /// Destroys an app and its domains; `confirm` must repeat its name (else 409 with the
    /// impact).
    pub async fn destroy_app(
        &self,
        name: &str,
        confirm: Option<&str>,
    ) -> Result<AppDestroyed, ClientError> {
        let path = format!("/v1/apps/{}{}", encode(name), confirm_query(confirm));
        Ok(self.call(Method::DELETE, &path, None::<&()>).await?.0)
    }

    /// Reads the router's config file again and applies it (422 with the reason if it is
    /// rejected; the running config then stays).
    pub async fn reload(&self) -> Result<ReloadReport, ClientError> {
        Ok(self.call(Method::POST, "/v1/reload", None::<&()>).await?.0)
    }

    /// `GET /readyz`: 200 and `ready`, or 503 and the reason the router is not ready.
    pub async fn ready(&self) -> Result<(bool, String), ClientError> {
        let (status, _, body) = self
            .send(Method::GET, "/readyz", Bytes::new(), None)
            .await?;
        Ok((
            status == StatusCode::OK,
            String::from_utf8_lossy(&body).trim().to_owned(),
        ))
    }
}

impl Client {
    /// ACM status of every domain of `app`, or of every ACM domain.
    pub async fn acm_status(&self, app: Option<&str>) -> Result<Vec<AcmDomainView>, ClientError> {
        match app {
            Some(a) => self.get(&format!("/v1/apps/{}/acm", encode(a))).await,
            None => self.get("/v1/acm").await,
        }
    }

    pub async fn acm_enable(&self, app: &str) -> Result<AcmChange, ClientError> {
        let path = format!("/v1/apps/{}/acm", encode(app));
        Ok(self.call(Method::POST, &path, None::<&()>).await?.0)
    }

    pub async fn acm_refresh(&self, app: &str) -> Result<AcmChange, ClientError> {
        let path = format!("/v1/apps/{}/acm/refresh", encode(app));
        Ok(self.call(Method::POST, &path, None::<&()>).await?.0)
    }

    pub async fn acm_disable(&self, app: &str) -> Result<AcmChange, ClientError> {
        let path = format!("/v1/apps/{}/acm", encode(app));
        Ok(self.call(Method::DELETE, &path, None::<&()>).await?.0)
    }
}

fn confirm_query(confirm: Option<&str>) -> String {
    confirm
        .map(|c| format!("?confirm={}", encode(c)))
        .unwrap_or_default()
}

/// Percent-encodes a path segment or query value.
pub fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn decode_cursor(v: &str) -> String {
    v.to_owned()
}

/// The same client for synchronous callers (the CLI, benchmarks): its own small runtime.
#[derive(Debug)]
pub struct Blocking {
    client: Client,
    runtime: tokio::runtime::Runtime,
}

impl Blocking {
    pub fn new(url: &str, token: Option<String>) -> Result<Self, ClientError> {
        Ok(Self {
            client: Client::new(url, token)?,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ClientError::Runtime)?,
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.client = self.client.with_timeout(timeout);
        self
    }

    /// Runs one of [`Client`]'s calls to completion: `b.block_on(b.client().certs(100, None))`.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = Client::new("http://127.0.0.1:9090", None).unwrap();
        assert_eq!(
            (c.connect_to(), c.prefix.as_str()),
            ("127.0.0.1:9090".into(), "")
        );
        let c = Client::new("http://admin.internal/terminus/", Some(" t \n".into())).unwrap();
        assert_eq!(c.connect_to(), "admin.internal:80");
        assert_eq!(c.prefix, "/terminus");
        assert_eq!(c.token.as_deref(), Some("t"));
        let c = Client::new("http://[::1]:9090", None).unwrap();
        assert_eq!(c.connect_to(), "[::1]:9090");
        let c = Client::new("http://[::1]", None).unwrap();
        assert_eq!(c.connect_to(), "[::1]:80");
        assert!(matches!(
            Client::new("https://x", None),
            Err(ClientError::Url { .. })
        ));
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode("*.example.com"), "%2A.example.com");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
