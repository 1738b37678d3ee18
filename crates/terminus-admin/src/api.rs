//! The JSON API under `/v1/`: bearer-token authentication compared in constant time, request
//! bodies capped (413) and strictly parsed (unknown fields are errors), every change run on a
//! blocking thread because it waits for the disk.

use std::sync::Arc;

use aws_lc_rs::digest::{digest, SHA256};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::Serialize;
use subtle::ConstantTimeEq;

use terminus_api::{
    AppCreate, AppUpdate, CertReplace, CertUpload, DomainCreate, DomainUpdate, NEXT_CURSOR_HEADER,
};

use crate::control::{ApiError, ApiResult, Control};

/// The API's bearer token, kept only as its SHA-256 so comparison time does not depend on
/// where a guess first differs nor on its length.
pub struct Token([u8; 32]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    pub fn new(secret: &str) -> Self {
        Self(hash(secret.trim().as_bytes()))
    }

    fn matches(&self, presented: &[u8]) -> bool {
        self.0.ct_eq(&hash(presented)).into()
    }
}

fn hash(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// Reads the router's config file again and applies it (`POST /v1/reload`, `SIGHUP`).
/// Implemented by the binary, which knows where the config came from.
pub trait Reload: Send + Sync + std::fmt::Debug {
    /// Applies the config file as it is now, or changes nothing and says why (422). Blocks on
    /// the disk and on name resolution: call it from a blocking task.
    fn reload(&self) -> ApiResult<terminus_api::ReloadReport>;
}

/// The API as served by the admin listener.
#[derive(Debug)]
pub struct Api {
    pub control: Arc<Control>,
    pub token: Option<Token>,
    pub max_body: usize,
    pub now: fn() -> i64,
    /// `None`: the router was started from the command line, with no file to read again.
    pub reload: Option<Arc<dyn Reload>>,
}

pub(crate) type Reply = Response<Full<Bytes>>;

pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    let body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(e: &ApiError) -> Reply {
    json(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.body(),
    )
}

/// A page of a listing: the items, and the next page's cursor in a header (the body stays the
/// plain array it always was).
fn page<T: Serialize>((items, next): (Vec<T>, Option<String>)) -> Reply {
    let mut r = json(StatusCode::OK, &items);
    if let Some(v) = next.and_then(|n| header::HeaderValue::from_str(&n).ok()) {
        r.headers_mut().insert(NEXT_CURSOR_HEADER, v);
    }
    r
}

/// The query parameters the API reads: `limit`, `cursor`, `confirm`.
#[derive(Debug, Default)]
struct Query {
    limit: Option<usize>,
    cursor: Option<String>,
    confirm: Option<String>,
}

impl Query {
    fn parse(query: Option<&str>) -> ApiResult<Self> {
        let mut q = Self::default();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(&v.replace('+', " "));
            match k {
                "limit" => {
                    q.limit = Some(v.parse().map_err(|_| {
                        ApiError::new(400, "invalid_query", "limit is not a whole number")
                    })?)
                }
                "cursor" => q.cursor = Some(v),
                "confirm" => q.confirm = Some(v),
                _ => {
                    return Err(ApiError::new(
                        400,
                        "invalid_query",
                        "unknown query parameter: this API reads limit, cursor and confirm",
                    ))
                }
            }
        }
        Ok(q)
    }
}

impl Api {
    pub(crate) async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Reply {
        let Some(token) = &self.token else {
            return error(&ApiError::new(
                403,
                "api_disabled",
                "the admin API is disabled: start terminus with TERMINUS_TOKEN set or admin.token_file in the config",
            ));
        };
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        if !token.matches(presented) {
            return error(&ApiError::new(401, "unauthorized", "unauthorized"));
        }
        match self.route(req).await {
            Ok(reply) => reply,
            Err(e) => error(&e),
        }
    }

    async fn route(self: Arc<Self>, req: Request<Incoming>) -> ApiResult<Reply> {
        let method = req.method().clone();
        let path: Vec<String> = req
            .uri()
            .path()
            .trim_matches('/')
            .split('/')
            .map(percent_decode)
            .collect();
        let segments: Vec<&str> = path.iter().map(String::as_str).collect();
        let query = Query::parse(req.uri().query())?;
        let now = (self.now)();
        let c = self.control.clone();
        let ok = StatusCode::OK;
        let created = StatusCode::CREATED;
        match (segments.as_slice(), &method) {
            (["v1", "certs"], &Method::GET) => {
                blocking(move || c.certs(now, query.limit, query.cursor.as_deref()))
                    .await
                    .map(page)
            }
            (["v1", "certs"], &Method::POST) => {
                let up: CertUpload = self.body(req).await?;
                blocking(move || c.add_cert(up, now))
                    .await
                    .map(|v| json(created, &v))
            }
            (["v1", "certs", name], &Method::GET) => {
                let name = name.to_string();
                blocking(move || c.cert(&name, now))
                    .await
                    .map(|v| json(ok, &v))
            }
            (["v1", "certs", name], &Method::PATCH | &Method::PUT) => {
                let name = name.to_string();
                let up: CertReplace = self.body(req).await?;
                blocking(move || c.update_cert(&name, up, now))
                    .await
                    .map(|v| json(ok, &v))
            }
            (["v1", "certs", name], &Method::DELETE) => {
                let name = name.to_string();
                blocking(move || c.remove_cert(&name, query.confirm.as_deref(), now))
                    .await
                    .map(|v| json(ok, &v))
            }
            (["v1", "certs", name, "rollback"], &Method::POST) => {
                let name = name.to_string();
                blocking(move || c.rollback_cert(&name, now))
                    .await
                    .map(|v| json(ok, &v))
            }
            (["v1", "domains"], &Method::GET) => {
                blocking(move || c.domains(query.limit, query.cursor.as_deref()))
                    .await
                    .map(page)
            }
            (["v1", "domains"], &Method::POST) => {
                let req: DomainCreate = self.body(req).await?;
                blocking(move || c.add_domain(req, now))
                    .await
                    .map(|v| json(created, &v))
            }
            (["v1", "domains", host], &Method::PATCH | &Method::PUT) => {
                let host = host.to_string();
                let req: DomainUpdate = self.body(req).await?;
                blocking(move || c.update_domain(&host, req))
                    .await
                    .map(|v| json(ok, &v))
            }
            (["v1", "domains", host], &Method::DELETE) => {
                let host = host.to_string();
                blocking(move || c.remove_domain(&host))
                    .await
                    .map(|v| json(ok, &v))
            }
            (["v1", "apps"], &Method::GET) => {
                blocking(move || c.apps()).await.map(|v| json(ok, &v))
            }
            (["v1", "apps"], &Method::POST) => {
                let req: AppCreate = self.body(req).await?;
                blocking(move || c.create_app(req, now))
                    .await
                    .map(|v| json(created, &v))
            }
            (["v1", "apps", name], &Method::PATCH | &Method::PUT) => {
                let name = name.to_string();
                let req: AppUpdate = self.body(req).await?;
                blocking(move || c.update_app(&name, req))
                    .await
                    .map(|v| json(ok, &v))
            }
            (["v1", "apps", name], &Method::DELETE) => {
                let name = name.to_string();
                blocking(move || c.destroy_app(&name, query.confirm.as_deref()))
                    .await
                    .map(|v| json(ok, &v))
            }
            (["v1", "acm"], &Method::GET) => blocking(move || c.acm_status(None))
                .await
                .map(|v| json(ok, &v)),
            (["v1", "apps", app, "acm"], &Method::GET) => {
                let app = app.to_string();
                blocking(move || c.acm_status(Some(&app)))
                    .await
                    .map(|v| json(ok, &v))
            }
            (["v1", "apps", app, "acm"], &Method::POST) => {
                let app = app.to_string();
                blocking(move || c.acm_enable(&app, now))
                    .await
                    .map(|v| json(ok, &v))
            }
            (["v1", "apps", app, "acm"], &Method::DELETE) => {
                let app = app.to_string();
                blocking(move || c.acm_disable(&app))
                    .await
                    .map(|v| json(ok, &v))
            }
            (["v1", "apps", app, "acm", "refresh"], &Method::POST) => {
                let app = app.to_string();
                blocking(move || c.acm_refresh(&app, now))
                    .await
                    .map(|v| json(ok, &v))
            }
            (["v1", "acm"] | ["v1", "apps", _, "acm"] | ["v1", "apps", _, "acm", "refresh"], _) => {
                Err(ApiError::new(
                    405,
                    "method_not_allowed",
                    format!("{method} is not allowed here"),
                ))
            }
            (["v1", "reload"], &Method::POST) => match &self.reload {
                Some(r) => {
                    let r = r.clone();
                    blocking(move || r.reload()).await.map(|v| json(ok, &v))
                }
                None => Err(ApiError::conflict(
                    "no_config_file",
                    "this router was started from the command line (serve --listen ...), not from a config file: there is nothing to read again; restart it with other flags",
                )),
            },
            (["v1", "reload"], _) => Err(ApiError::new(
                405,
                "method_not_allowed",
                format!("{method} is not allowed here: POST /v1/reload"),
            )),
            (["v1", "certs"] | ["v1", "domains"] | ["v1", "apps"], _)
            | (["v1", "certs" | "domains" | "apps", _], _)
            | (["v1", "certs", _, "rollback"], _) => Err(ApiError::new(
                405,
                "method_not_allowed",
                format!("{method} is not allowed here"),
            )),
            _ => Err(ApiError::new(404, "not_found", "no such API route")),
        }
    }

    /// Reads and parses a JSON body, refusing more than `max_body` bytes (413) and unknown
    /// fields (400).
    async fn body<T: DeserializeOwned>(&self, req: Request<Incoming>) -> ApiResult<T> {
        let too_large = || {
            ApiError::new(
                413,
                "body_too_large",
                format!("the request body is over {} bytes", self.max_body),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > self.max_body) {
            return Err(too_large());
        }
        let bytes = Limited::new(req.into_body(), self.max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    too_large()
                } else {
                    ApiError::new(400, "bad_body", "the request body could not be read")
                }
            })?
            .to_bytes();
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            ApiError::new(
                400,
                "invalid_json",
                format!("the request body is not valid: {}", describe_json_error(&e)),
            )
        })
    }
}

/// A JSON error without the values it was about: serde's "invalid type: string \"...\""
/// would repeat what was sent, and what was sent in the wrong field may be a private key.
/// Field names are echoed only when they look like field names.
fn describe_json_error(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let inner = e.inner();
    let path = e.path().to_string();
    let at = if path.is_empty() || path == "." {
        String::new()
    } else if path.len() <= 64
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.[]".contains(&b))
    {
        format!("{path}: ")
    } else {
        "a field: ".into()
    };
    if inner.classify() != serde_json::error::Category::Data {
        // Syntax and end-of-input errors name a position, never a value.
        return inner.to_string();
    }
    let text = inner.to_string();
    let suffix = format!(" at line {} column {}", inner.line(), inner.column());
    let text = text.strip_suffix(&suffix).unwrap_or(&text);
    let expected = text
        .rfind(", expected ")
        .map(|i| &text[i + 2..])
        .filter(|x| !x.contains('"'));
    let what = if let Some(rest) = text.strip_prefix("invalid type: ") {
        let kind = rest.split([' ', ',']).next().unwrap_or("value");
        format!("{at}a {kind} is not allowed here")
    } else if text.starts_with("invalid value") || text.starts_with("invalid length") {
        format!("{at}the value is not allowed here")
    } else if let Some(field) = text
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
    {
        if field.len() <= 40
            && field
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            format!("unknown field `{field}`")
        } else {
            "an unknown field".into()
        }
    } else if text.starts_with("unknown variant") {
        format!("{at}the value is not one of the allowed ones")
    } else if text.starts_with("missing field") || text.starts_with("duplicate field") {
        return format!("{at}{text}");
    } else {
        format!("{at}the value is not allowed here")
    };
    match expected {
        Some(x) => format!("{what}: {x}"),
        None => what,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|_| {
        Err(ApiError::new(
            500,
            "internal",
            "the change did not complete",
        ))
    })
}

fn percent_decode(segment: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let b = segment.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        let t = Token::new("s3cret\n");
        assert!(t.matches(b"s3cret"));
        assert!(!t.matches(b"s3cre"));
        assert!(!t.matches(b""));
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%2A.example.com"), "*.example.com");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("plain"), "plain");
    }
}
