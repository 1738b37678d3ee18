//! One request: checks, SNI/Host rule, routing, header rewriting, forwarding with retries on
//! connect failure, and the response (or a small error response with its H-code).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::FutureExt;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, EXPECT, HOST, UPGRADE, VIA};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use terminus_route::{host_of_authority, normalize, App, Route};
use tokio::time::Instant;
use tracing::Instrument;

use crate::access_log::AccessLog;
use crate::body::{ClientBodyState, RequestBody, ResponseBody};
use crate::fault::Fault;
use crate::headers::{self, Forwarding, X_REQUEST_ID};
use crate::info::ConnInfo;
use crate::pool::{Conn, Runs};
use crate::state::Shared;

/// Longest request line and longest header line accepted.
pub(crate) const MAX_LINE: usize = 8192;

/// A request's whole handling: `respond` under the request's span, then what the connection
/// learns from the response. Built from combinators rather than as an `async fn` awaiting
/// `respond(..).instrument(..)`: that kept room for `respond`'s future twice (5.2 KB in all for
/// a 2.6 KB future; 2.7 KB now), and the whole of it is boxed, so copied, for every request.
pub(crate) fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send {
    let http1 = req.version() != Version::HTTP_2;
    let connection = ConnectionTokens::of(req.headers());
    let upgrade = req.version() == Version::HTTP_11
        && connection.upgrade
        && req.headers().contains_key(UPGRADE);
    // Whether hyper keeps an HTTP/1.1 connection open after this exchange, judged as it does
    // and no further: a request with a body may not have been read to its end.
    let reusable = req.version() == Version::HTTP_11
        && hyper::body::Body::is_end_stream(req.body())
        && req.method() != Method::CONNECT
        && !connection.close
        && !connection.upgrade;
    // Its id and host are recorded by `respond` once known. The span covers routing, the
    // backend attempts and the response head; the body streams under the connection's span.
    let span = tracing::debug_span!(
        parent: &conn.span,
        "request",
        id = tracing::field::Empty,
        method = %req.method(),
        host = tracing::field::Empty,
        path = req.uri().path(),
    );
    respond(shared.clone(), conn.clone(), req, upgrade)
        .instrument(span)
        .map(move |response| {
            let Ok(mut response) = response;
            // Draining after an upgrade: this HTTP/1 connection closes after this response,
            // and the client knows before it sends another request (the new process serves
            // that one).
            if http1
                && shared.handing_over()
                && response.status() != StatusCode::SWITCHING_PROTOCOLS
            {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            if reusable
                && response.status() != StatusCode::SWITCHING_PROTOCOLS
                && !response.headers().contains_key(CONNECTION)
            {
                conn.activity.reusable(true);
            }
            Ok(response)
        })
}

/// `upgrade`: the request asks for a protocol upgrade (WebSocket).
async fn respond(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
    upgrade: bool,
) -> Result<Response<ResponseBody>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let in_flight = conn.activity.request();
    let request_id = headers::request_id(&parts.headers);
    let authority = request_authority(&parts);
    let mut log = Box::new(AccessLog {
        requests: shared.metrics.requests.clone(),
        emitted: false,
        write: shared.settings.access_log,
        method: Some(parts.method.clone()),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into()),
        host: authority
            .as_ref()
            .ok()
            .and_then(|a| a.to_str().ok())
            .and_then(host_of_authority)
            .unwrap_or_default()
            .to_owned(),
        request_id: request_id.clone(),
        fwd: forwarded_client(&conn, &parts.headers),
        dyno: None,
        backend: None,
        connect: None,
        forwarded_at: None,
        status: 0,
        bytes: 0,
        version: parts.version,
        tls_version: conn.tls.as_ref().map(|t| t.version),
        fault: None,
    });
    if tracing::enabled!(tracing::Level::DEBUG) {
        let span = tracing::Span::current();
        span.record("id", request_id.to_str().unwrap_or_default());
        span.record("host", log.host.as_str());
        tracing::debug!(version = ?parts.version, "request head read");
    }
    // HTTP-01 (RFC 8555 §8.3): answered on plain HTTP before routing, for a host with a
    // pending challenge only; every other request routes as before.
    if conn.tls.is_none() && parts.method == Method::GET {
        if let Some(answer) = shared.challenges.http_answer(&log.host, parts.uri.path()) {
            return Ok(challenge_response(answer, log, &shared, in_flight));
        }
    }
    let app = match check(&shared, &conn, &parts, &authority) {
        Ok(app) => app,
        Err(fault) => return Ok(error_response(fault, log, &shared, in_flight)),
    };

    let client_upgrade = if upgrade {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    let request_start_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let via = if parts.version == Version::HTTP_2 {
        &shared.settings.via_h2
    } else {
        &shared.settings.via_h1
    };
    headers::rewrite_request(
        &mut parts.headers,
        &Forwarding {
            client: &conn.client,
            trusted: conn.trusted,
            proto: conn.proto,
            port: &conn.port,
            request_start_ms,
            request_id: &request_id,
            via,
            upgrade,
            real_ip: shared.settings.set_x_real_ip.then_some(log.fwd),
        },
    );
    // The backend sees the host that was routed and checked against the certificate: an
    // absolute-form request's authority replaces whatever Host it also carried.
    if let Ok(authority) = &authority {
        parts.headers.insert(HOST, authority.clone());
    }
    parts.uri = origin_form(&parts.uri);
    parts.version = Version::HTTP_11;

    let client_state = Arc::new(ClientBodyState::default());
    let body = RequestBody::new(body, shared.settings.idle_timeout, client_state.clone());
    let request = Request::from_parts(parts, body);

    let (mut response, mut backend) =
        match forward(&shared, &app, request, &client_state, &mut log).await {
            Ok(ok) => ok,
            Err(fault) => {
                let fault = client_state.fault().unwrap_or(fault);
                tracing::debug!(code = fault.code(), "no response from a backend");
                return Ok(error_response(fault, log, &shared, in_flight));
            }
        };

    let status = response.status();
    log.status = status.as_u16();
    tracing::debug!(
        status = log.status,
        backend = log.backend.map(tracing::field::display),
        "response head from the backend"
    );
    let switching = upgrade && status == StatusCode::SWITCHING_PROTOCOLS;
    headers::rewrite_response(
        response.headers_mut(),
        &shared.settings.via_h1,
        switching,
        log.version,
    );
    if switching {
        let backend_upgrade = hyper::upgrade::on(&mut response);
        backend.detach();
        if let Some(client_upgrade) = client_upgrade {
            crate::upgrade::spawn_tunnel(client_upgrade, backend_upgrade, &shared, conn.clone());
        }
        let (parts, body) = response.into_parts();
        let body = ResponseBody::backend(
            body,
            log,
            None,
            client_state,
            shared.settings.idle_timeout,
            in_flight,
        );
        return Ok(Response::from_parts(parts, body));
    }
    let (parts, body) = response.into_parts();
    let body = ResponseBody::backend(
        body,
        log,
        Some(backend),
        client_state,
        shared.settings.idle_timeout,
        in_flight,
    );
    Ok(Response::from_parts(parts, body))
}

/// The client address for the log line: the peer, or, behind a trusted proxy, the address
/// that proxy appended last to X-Forwarded-For.
fn forwarded_client(conn: &ConnInfo, headers: &http::HeaderMap) -> std::net::IpAddr {
    if conn.trusted {
        let last = headers
            .get_all(&headers::X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|ip| ip.trim().parse().ok())
            .next_back();
        if let Some(ip) = last {
            return ip;
        }
    }
    conn.peer.ip()
}

/// The request's authority: `:authority`/absolute-form URI, else the single Host header.
fn request_authority(parts: &http::request::Parts) -> Result<HeaderValue, Fault> {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Fault::BadRequest("duplicate_host"));
    }
    match (parts.uri.authority(), host) {
        (Some(auth), Some(host)) if parts.version == Version::HTTP_2 => {
            if auth
                .as_str()
                .as_bytes()
                .eq_ignore_ascii_case(host.as_bytes())
            {
                Ok(host.clone())
            } else {
                Err(Fault::BadRequest("host_authority_mismatch"))
            }
        }
        (Some(auth), _) => {
            HeaderValue::from_str(auth.as_str()).map_err(|_| Fault::BadRequest("invalid_host"))
        }
        (None, Some(host)) => Ok(host.clone()),
        (None, None) => Err(Fault::BadRequest("missing_host")),
    }
}

/// Everything decided before a backend is contacted. Returns the app to forward to.
fn check(
    shared: &Shared,
    conn: &ConnInfo,
    parts: &http::request::Parts,
    authority: &Result<HeaderValue, Fault>,
) -> Result<Arc<App>, Fault> {
    if parts.method == Method::CONNECT {
        return Err(Fault::MethodNotAllowed);
    }
    let authority = authority.as_ref().map_err(|f| *f)?;
    let size = HeadSize::of(parts);
    if size.request_line > MAX_LINE {
        return Err(Fault::BadRequest("request_line_too_long"));
    }
    if parts.headers.len() > shared.settings.max_headers {
        return Err(Fault::HeadersTooLarge("too_many_headers"));
    }
    if size.longest_header > MAX_LINE {
        return Err(Fault::HeadersTooLarge("header_line_too_long"));
    }
    if size.total > shared.settings.max_request_head {
        return Err(Fault::HeadersTooLarge("head_too_large"));
    }
    if let Some(expect) = parts.headers.get(EXPECT) {
        if !expect.as_bytes().eq_ignore_ascii_case(b"100-continue") {
            return Err(Fault::ExpectationFailed);
        }
    }
    let host = authority
        .to_str()
        .ok()
        .and_then(host_of_authority)
        .ok_or(Fault::BadRequest("invalid_host"))?;
    let host = normalize(host);
    if let Some(tls) = &conn.tls {
        if !tls.cert.covers(&host) {
            return Err(Fault::Misdirected);
        }
    }
    let app = match shared.routes.route(&host) {
        Route::App(app) => app,
        Route::UnknownHost | Route::UnknownApp(_) => shared
            .settings
            .default_app
            .as_deref()
            .and_then(|name| shared.routes.app(name))
            .ok_or(Fault::UnknownHost)?,
    };
    if app.backends().is_empty() {
        return Err(Fault::NoBackends);
    }
    Ok(app)
}

/// The size of a request head as HTTP/1 sends it, measured in one pass over the headers.
/// hyper's own limit on the head (its read buffer) can be overrun by what one read brings in
/// past it; this one is exact, and applies to HTTP/2 requests as well.
#[derive(Debug, PartialEq, Eq)]
struct HeadSize {
    /// `METHOD SP path SP HTTP/1.1`.
    request_line: usize,
    /// `name: value`, the longest one.
    longest_header: usize,
    /// Every line with its CRLF, and the blank line.
    total: usize,
}

impl HeadSize {
    fn of(parts: &http::request::Parts) -> Self {
        let request_line = parts.method.as_str().len()
            + parts.uri.path_and_query().map_or(1, |p| p.as_str().len())
            + 10;
        let mut total = request_line + 2 + 2;
        let mut longest_header = 0;
        for (name, value) in &parts.headers {
            let line = name.as_str().len() + 2 + value.len();
            total += line + 2;
            longest_header = longest_header.max(line);
        }
        Self {
            request_line,
            longest_header,
            total,
        }
    }
}

/// The `close` and `upgrade` options of a request's `Connection` header, found in one pass.
#[derive(Debug, Default, PartialEq, Eq)]
struct ConnectionTokens {
    close: bool,
    upgrade: bool,
}

impl ConnectionTokens {
    fn of(headers: &http::HeaderMap) -> Self {
        let mut found = Self::default();
        for token in headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
        {
            let token = token.trim();
            found.close |= token.eq_ignore_ascii_case("close");
            found.upgrade |= token.eq_ignore_ascii_case("upgrade");
        }
        found
    }
}

/// The service hyper calls for each request of a connection.
#[derive(Clone)]
pub(crate) struct Svc {
    pub shared: Arc<Shared>,
    pub conn: Arc<ConnInfo>,
}

impl hyper::service::Service<Request<Incoming>> for Svc {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    // Boxed: hyper moves the request's future several times on its way to being polled (into
    // its HTTP/2 stream, that into the executor); a pointer moves cheaper than the whole state.
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        // Until its response says otherwise, a request in progress keeps the connection whole.
        self.conn.activity.reusable(false);
        Box::pin(handle(self.shared.clone(), self.conn.clone(), req))
    }
}

fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(_) if uri.scheme().is_none() && uri.authority().is_none() => uri.clone(),
        Some(pq) => Uri::from_maybe_shared(Bytes::copy_from_slice(pq.as_str().as_bytes()))
            .unwrap_or_else(|_| Uri::from_static("/")),
        None => Uri::from_static("/"),
    }
}

/// Sends the request to the app's backends in round-robin order. A backend that refuses or
/// times out on connect is quarantined and the next one is tried; nothing is retried once
/// request bytes may have reached a backend.
async fn forward(
    shared: &Shared,
    app: &App,
    mut request: Request<RequestBody>,
    body: &ClientBodyState,
    log: &mut AccessLog,
) -> Result<(Response<Incoming>, Conn<RequestBody>), Fault> {
    let backends = app.backends();
    let n = backends.len();
    let start = app.next_start();
    let attempts = shared.settings.connect_attempts.min(n);
    let mut tried = 0;
    let mut last = Fault::AllQuarantined;
    for i in 0..n {
        if tried == attempts {
            break;
        }
        let index = (start + i) % n;
        let addr = backends[index];
        // A single backend is always tried: skipping it would only turn a refusal into H34.
        if n > 1 && shared.pool.is_quarantined(addr) {
            continue;
        }
        tried += 1;
        log.dyno = Some((app.name().into(), index + 1));
        log.backend = Some(addr);
        tracing::debug!(backend = %addr, "sending to the backend");
        match send(shared, addr, request, body, log).await {
            Ok(ok) => return Ok(ok),
            Err(Attempt::Failed(fault)) => return Err(fault),
            Err(Attempt::ConnectFailed(fault, req)) => {
                tracing::warn!(backend = %addr, app = app.name(), code = fault.code(), "backend quarantined after connect failure");
                shared.pool.quarantine(addr);
                last = fault;
                request = *req;
            }
        }
    }
    Err(last)
}

enum Attempt {
    /// Nothing was sent: the request comes back for the next backend.
    ConnectFailed(Fault, Box<Request<RequestBody>>),
    Failed(Fault),
}

/// One backend: a pooled connection (replaced by a fresh one if it turns out closed before the
/// request was written), then the response head within the first-byte timeout, counted from
/// when the request body has been sent completely (a slow upload is the idle timer's business).
async fn send(
    shared: &Shared,
    addr: SocketAddr,
    mut request: Request<RequestBody>,
    body: &ClientBodyState,
    log: &mut AccessLog,
) -> Result<(Response<Incoming>, Conn<RequestBody>), Attempt> {
    let metrics = &shared.metrics;
    // The log carries the client's HTTP version (the request's is HTTP/1.1 by now).
    let runs = if log.version == Version::HTTP_2 {
        Runs::OwnTask
    } else {
        Runs::Inline
    };
    for attempt in 0..2 {
        let checkout = if attempt == 0 {
            shared.pool.checkout(addr, runs).await
        } else {
            let started = Instant::now();
            shared
                .pool
                .connect(addr, runs)
                .await
                .map(|c| (c, Some(started.elapsed())))
        };
        let (mut conn, connect_time) = match checkout {
            Ok(ok) => ok,
            Err(fault) => return Err(Attempt::ConnectFailed(fault, Box::new(request))),
        };
        if let Some(t) = connect_time {
            metrics.backend_connect.observe(t.as_secs_f64());
        }
        log.connect = Some(connect_time.unwrap_or_default());
        let sent_at = Instant::now();
        log.forwarded_at = Some(sent_at.into_std());
        let reused = conn.reused;
        let response = conn.sender.try_send_request(request);
        tokio::pin!(response);
        let first_byte = shared.settings.first_byte_timeout;
        // An HTTP/1 client's connection task is woken by its watchdog at least every interval
        // while a request is in flight, and hyper polls the request whenever its connection is
        // polled: so a request sent whole, with the interval shorter than the timeout, arms
        // its timer only at the first poll after the one that sent it that finds no response.
        // A response already there by then (most are) never costs a timer.
        let deadline = (runs == Runs::Inline
            && body.finished()
            && crate::conn::limits(shared).interval() < first_byte)
            .then(|| sent_at + first_byte);
        let timeout = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => {
                    body.wait_finished().await;
                    tokio::time::sleep(first_byte).await;
                }
            }
        };
        tokio::pin!(timeout);
        let mut sent = false;
        let result = std::future::poll_fn(|cx| {
            let polled = if sent {
                conn.poll_through(cx, |cx| response.as_mut().poll(cx))
            } else {
                sent = true;
                let polled = conn.poll_after(cx, |cx| response.as_mut().poll(cx));
                if polled.is_pending() && deadline.is_some() {
                    return Poll::Pending;
                }
                polled
            };
            if let Poll::Ready(r) = polled {
                return Poll::Ready(Some(r));
            }
            timeout.as_mut().poll(cx).map(|()| None)
        })
        .await;
        match result {
            None => return Err(Attempt::Failed(Fault::FirstByteTimeout)),
            Some(Ok(response)) => {
                metrics
                    .backend_response
                    .observe(sent_at.elapsed().as_secs_f64());
                return Ok((response, conn));
            }
            Some(Err(mut e)) => match e.take_message() {
                // The pooled connection was closed before our request went out: try a fresh one.
                Some(req) if reused => request = req,
                Some(req) => {
                    return Err(Attempt::ConnectFailed(Fault::ConnectRefused, Box::new(req)))
                }
                None => return Err(Attempt::Failed(classify(e.error()))),
            },
        }
    }
    Err(Attempt::Failed(Fault::ClosedWithoutResponse))
}

fn classify(e: &hyper::Error) -> Fault {
    if e.is_parse_too_large() {
        Fault::ResponseTooLarge
    } else if e.is_parse() || e.is_parse_status() {
        Fault::BadResponse
    } else if e.is_user() {
        // Our request body failed: the client side (the handler reads which way).
        Fault::ClientGone
    } else {
        Fault::ClosedWithoutResponse
    }
}

fn error_response(
    fault: Fault,
    mut log: Box<AccessLog>,
    shared: &Arc<Shared>,
    in_flight: crate::activity::InFlight,
) -> Response<ResponseBody> {
    let status = fault.status();
    log.fault = Some(fault);
    let mut response = local_response(
        status,
        "text/plain; charset=utf-8",
        Bytes::from(fault.body()),
        log,
        shared,
        in_flight,
    );
    if matches!(fault, Fault::BadRequest(_) | Fault::HeadersTooLarge(_)) {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    if status.canonical_reason().is_none() {
        response
            .extensions_mut()
            .insert(hyper::ext::ReasonPhrase::from_static(
                crate::fault::CLIENT_CLOSED_REASON.as_bytes(),
            ));
    }
    response
}

/// A response the router writes itself (an error, a challenge answer): its status, body and
/// type, with the request id and Via every answer carries.
fn local_response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    mut log: Box<AccessLog>,
    shared: &Arc<Shared>,
    in_flight: crate::activity::InFlight,
) -> Response<ResponseBody> {
    log.status = status.as_u16();
    let request_id = log.request_id.clone();
    let body = ResponseBody::local(body, log, shared.settings.idle_timeout, in_flight);
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(X_REQUEST_ID, request_id);
    h.insert(VIA, shared.settings.via_h1.clone());
    response
}

/// The key authorization of a pending HTTP-01 challenge, as RFC 8555 §8.3 asks: 200,
/// `application/octet-stream`, the bytes alone.
fn challenge_response(
    answer: Box<str>,
    log: Box<AccessLog>,
    shared: &Arc<Shared>,
    in_flight: crate::activity::InFlight,
) -> Response<ResponseBody> {
    local_response(
        StatusCode::OK,
        "application/octet-stream",
        Bytes::from(answer.into_string()),
        log,
        shared,
        in_flight,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_options_are_found_in_every_line_and_any_case() {
        let tokens = |lines: &[&str]| {
            let mut h = http::HeaderMap::new();
            for l in lines {
                h.append(CONNECTION, HeaderValue::from_str(l).unwrap());
            }
            ConnectionTokens::of(&h)
        };
        let none = ConnectionTokens::default();
        assert_eq!(tokens(&[]), none);
        assert_eq!(tokens(&["keep-alive"]), none);
        assert_eq!(tokens(&["upgraded, closed"]), none);
        assert_eq!(
            tokens(&["keep-alive, Upgrade"]),
            ConnectionTokens {
                close: false,
                upgrade: true
            }
        );
        assert_eq!(
            tokens(&["x", " CLOSE "]),
            ConnectionTokens {
                close: true,
                upgrade: false
            }
        );
    }

    #[test]
    fn head_size_counts_what_http1_sends() {
        let (parts, ()) = Request::get("/abc?x=1")
            .header("host", "www.example.com")
            .header("x-a", "1")
            .body(())
            .unwrap()
            .into_parts();
        let raw = "GET /abc?x=1 HTTP/1.1\r\nhost: www.example.com\r\nx-a: 1\r\n\r\n";
        assert_eq!(
            HeadSize::of(&parts),
            HeadSize {
                request_line: "GET /abc?x=1 HTTP/1.1".len(),
                longest_header: "host: www.example.com".len(),
                total: raw.len(),
            }
        );
    }
}
