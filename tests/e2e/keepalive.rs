//! HTTP/1.1 keep-alive over TLS. Between requests a connection holds no HTTP state (conn.rs
//! takes hyper's connection apart and starts a new one on the next bytes); none of that may
//! show: pipelined requests, a request split across the wait, a POST, an upgrade, a close by
//! either side, and the idle and request-head timeouts all behave as on one connection.

use std::time::Duration;

use terminus_test_support::{Backend, ClientOptions, TlsClient};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::harness::{web_router, TestRouter};

type Stream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(r: &TestRouter) -> Stream {
    let conn = TlsClient::new(ClientOptions::sni("www.example.com").http1())
        .connect(r.https())
        .await
        .unwrap();
    assert_eq!(conn.alpn.as_deref(), Some(&b"http/1.1"[..]));
    conn.stream
}

/// Waits until the router holds `n` connections with no HTTP state: past the quiet period
/// after a response (100 ms) in which a connection keeps it.
async fn stateless(r: &TestRouter, n: usize) {
    terminus_test_support::eventually(
        Duration::from_secs(3),
        "the connection waits without HTTP state",
        || r.router.shared.waiting_connections() == n,
    )
    .await;
}

/// A connection that made one request (`path`) and now waits without HTTP state; the bytes read
/// past that response.
async fn waiting_after(r: &TestRouter, path: &str) -> (Stream, Vec<u8>) {
    let mut s = connect(r).await;
    let mut pending = Vec::new();
    s.write_all(get(path).as_bytes()).await.unwrap();
    response(&mut s, &mut pending).await;
    stateless(r, 1).await;
    (s, pending)
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: www.example.com\r\n\r\n")
}

/// The next response is a 200 from the echo backend for `path` that keeps the connection.
async fn kept_echo(s: &mut (impl AsyncRead + Unpin), pending: &mut Vec<u8>, path: &str) {
    let (head, body) = response(s, pending).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    assert_eq!(uri(&body), path);
}

/// One response with a Content-Length body: its head (lowercased) and body. `pending` holds
/// bytes read past the previous response.
async fn response(s: &mut (impl AsyncRead + Unpin), pending: &mut Vec<u8>) -> (String, String) {
    let read = async {
        loop {
            if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&pending[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or_else(|| panic!("no content-length in {head}"));
                let total = end + 4 + len;
                while pending.len() < total {
                    let mut buf = [0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0, "closed mid-body");
                    pending.extend_from_slice(&buf[..n]);
                }
                let body = String::from_utf8_lossy(&pending[end + 4..total]).into_owned();
                pending.drain(..total);
                return (head, body);
            }
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before a response: {pending:?}");
            pending.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("a response within 5 s")
}

fn uri(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["uri"].as_str().unwrap().to_owned()
}

/// Reads until the router closes; whether it closed with a TLS close_notify.
async fn closed_politely(s: &mut Stream, within: Duration) -> bool {
    let mut rest = Vec::new();
    match tokio::time::timeout(within, s.read_to_end(&mut rest)).await {
        Ok(Ok(_)) => true,
        Ok(Err(_)) => false,
        Err(_) => panic!("still open after {within:?}"),
    }
}

#[tokio::test]
async fn requests_with_waits_between_them_are_served_on_one_connection() {
    let echo = Backend::echo("web").await;
    let r = web_router(echo.addr, |_| {}).await;
    let mut s = connect(&r).await;
    // Connected ahead of its first request, it waits the same way.
    stateless(&r, 1).await;
    let mut pending = Vec::new();
    for i in 0..5 {
        let path = format!("/wait/{i}");
        s.write_all(get(&path).as_bytes()).await.unwrap();
        kept_echo(&mut s, &mut pending, &path).await;
        stateless(&r, 1).await;
    }
    assert_eq!(echo.requests(), 5);
    r.shutdown().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let echo = Backend::echo("web").await;
    let r = web_router(echo.addr, |_| {}).await;
    // After a first exchange, so that the burst meets a connection that was waiting.
    let (mut s, mut pending) = waiting_after(&r, "/first").await;
    let burst: String = (0..20).map(|i| get(&format!("/p/{i}"))).collect();
    s.write_all(burst.as_bytes()).await.unwrap();
    for i in 0..20 {
        kept_echo(&mut s, &mut pending, &format!("/p/{i}")).await;
    }
    // And the connection is still good for more.
    s.write_all(get("/after").as_bytes()).await.unwrap();
    let (_, body) = response(&mut s, &mut pending).await;
    assert_eq!(uri(&body), "/after");
    r.shutdown().await;
}

#[tokio::test]
async fn a_request_split_across_the_wait_is_read_whole() {
    let echo = Backend::echo("web").await;
    let r = web_router(echo.addr, |_| {}).await;
    let (mut s, mut pending) = waiting_after(&r, "/one").await;
    for piece in [
        "G",
        "ET /two HT",
        "TP/1.1\r\nhost: www.exa",
        "mple.com\r\n",
        "\r\n",
    ] {
        s.write_all(piece.as_bytes()).await.unwrap();
        s.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let (head, body) = response(&mut s, &mut pending).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(uri(&body), "/two");
    r.shutdown().await;
}

#[tokio::test]
async fn requests_with_bodies_and_without_alternate_on_one_connection() {
    let echo = Backend::echo("web").await;
    let r = web_router(echo.addr, |_| {}).await;
    let mut s = connect(&r).await;
    let mut pending = Vec::new();
    for i in 0..3 {
        let post = format!(
            "POST /post/{i} HTTP/1.1\r\nhost: www.example.com\r\ncontent-length: 10\r\n\r\n0123456789"
        );
        s.write_all(post.as_bytes()).await.unwrap();
        let (head, body) = response(&mut s, &mut pending).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["body_len"], 10);
        // A request with a body keeps the connection whole until the next one without.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(r.router.shared.waiting_connections(), 0);
        s.write_all(get(&format!("/get/{i}")).as_bytes())
            .await
            .unwrap();
        let (_, body) = response(&mut s, &mut pending).await;
        assert_eq!(uri(&body), format!("/get/{i}"));
        stateless(&r, 1).await;
    }
    r.shutdown().await;
}

#[tokio::test]
async fn a_websocket_upgrade_after_a_request_on_the_same_connection() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let echo = Backend::echo("web").await;
    let r = web_router(echo.addr, |_| {}).await;
    let mut s = connect(&r).await;
    let mut pending = Vec::new();
    s.write_all(get("/before").as_bytes()).await.unwrap();
    let (_, body) = response(&mut s, &mut pending).await;
    assert_eq!(uri(&body), "/before");
    assert!(pending.is_empty());
    stateless(&r, 1).await;
    let (mut ws, response) = tokio_tungstenite::client_async("wss://www.example.com/ws", s)
        .await
        .expect("websocket handshake after a request");
    assert_eq!(response.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    let back = ws.next().await.unwrap().unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), "hello");
    ws.close(None).await.unwrap();
    drop(ws);
    r.shutdown().await;
}

#[tokio::test]
async fn connection_close_and_http_1_0_end_the_connection_politely() {
    let echo = Backend::echo("web").await;
    let r = web_router(echo.addr, |_| {}).await;
    for request in [
        "GET /close HTTP/1.1\r\nhost: www.example.com\r\nconnection: close\r\n\r\n",
        "GET /old HTTP/1.0\r\nhost: www.example.com\r\n\r\n",
    ] {
        let (mut s, mut pending) = waiting_after(&r, "/first").await;
        s.write_all(request.as_bytes()).await.unwrap();
        let (head, _) = response(&mut s, &mut pending).await;
        assert!(head.contains(" 200"), "{head}");
        assert!(
            closed_politely(&mut s, Duration::from_secs(3)).await,
            "no close_notify after {request:?}"
        );
    }
    r.shutdown().await;
}

#[tokio::test]
async fn a_client_closing_a_waiting_connection_gets_a_close_in_return() {
    let echo = Backend::echo("web").await;
    let r = web_router(echo.addr, |_| {}).await;
    let (mut s, _) = waiting_after(&r, "/one").await;
    // close_notify and FIN from the client; the router answers with its own and closes.
    s.shutdown().await.unwrap();
    assert!(closed_politely(&mut s, Duration::from_secs(3)).await);
    stateless(&r, 0).await;
    r.shutdown().await;
}

#[tokio::test]
async fn the_idle_and_request_head_timeouts_apply_after_a_request() {
    let echo = Backend::echo("web").await;
    let r = web_router(echo.addr, |b| {
        b.timeout("idle = \"400ms\"");
        b.timeout("request_head = \"300ms\"");
    })
    .await;
    // Idle after a response: closed politely within a little over the window.
    let mut s = connect(&r).await;
    let mut pending = Vec::new();
    s.write_all(get("/one").as_bytes()).await.unwrap();
    response(&mut s, &mut pending).await;
    let started = std::time::Instant::now();
    stateless(&r, 1).await;
    assert!(closed_politely(&mut s, Duration::from_secs(3)).await);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed after {:?}",
        started.elapsed()
    );
    // A head begun after a response and never finished: 408.
    let (mut s, _) = waiting_after(&r, "/one").await;
    s.write_all(b"GET /slow HTTP/1.1\r\nhost: www.exa")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 408"), "{rest}");
    r.shutdown().await;
}
