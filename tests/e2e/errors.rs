//! Backend failures: each answered with the documented status and logged with its code.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use terminus_test_support::{
    eventually, logs, send_h1, send_h2, unique_request_id, Backend, ClientOptions, KeyType, Reply,
    TlsClient,
};

use crate::harness::{Builder, TestRouter};

async fn router_for(backends: &[&Backend], tweak: impl FnOnce(&mut Builder)) -> TestRouter {
    let mut b = Builder::new();
    b.cert("wild", &["*.example.com"], KeyType::EcdsaP256);
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    b.app("web", &addrs).domain("*.example.com", "web", None);
    tweak(&mut b);
    b.start().await
}

/// Sends a GET with a unique request id; returns the reply and the request's log line.
async fn request(r: &TestRouter, path: &str) -> (Reply, String) {
    let id = unique_request_id("err");
    let conn = TlsClient::new(ClientOptions::sni("www.example.com").http1())
        .connect(r.https())
        .await
        .unwrap();
    let req = Request::get(path)
        .header("host", "www.example.com")
        .header("x-request-id", &id)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = send_h1(conn.stream, vec![req]).await.unwrap().remove(0);
    let line = logs::find(&id, Duration::from_secs(3))
        .await
        .expect("log line");
    (reply, line)
}

#[tokio::test]
async fn refused_is_503_h21() {
    let refusing = Backend::refusing().await;
    let r = router_for(&[&refusing], |_| {}).await;
    let (reply, line) = request(&r, "/").await;
    assert_eq!(reply.status, 503);
    assert!(reply.text().contains("H21"), "{}", reply.text());
    assert!(
        line.starts_with("at=error code=H21 desc=\"Backend connection refused\""),
        "{line}"
    );
    assert!(
        line.contains(&format!("backend={}", refusing.addr)),
        "{line}"
    );
    r.shutdown().await;
}

#[tokio::test]
async fn connect_timeout_is_503_h19() {
    let hole = Backend::blackhole().await;
    let r = router_for(&[&hole], |b| {
        b.timeout("connect = \"300ms\"");
    })
    .await;
    let (reply, line) = request(&r, "/").await;
    assert_eq!(reply.status, 503);
    assert!(line.starts_with("at=error code=H19 "), "{line}");
    r.shutdown().await;
}

#[tokio::test]
async fn a_refusing_backend_is_quarantined_and_the_next_one_serves() {
    let refusing = Backend::refusing().await;
    let good = Backend::echo("good").await;
    let r = router_for(&[&refusing, &good], |_| {}).await;
    for _ in 0..6 {
        let (reply, line) = request(&r, "/").await;
        assert_eq!(reply.status, 200, "{line}");
        assert_eq!(reply.header("x-backend"), Some("good"));
    }
    assert_eq!(good.requests(), 6);
    r.shutdown().await;
}

#[tokio::test]
async fn all_backends_quarantined_is_503_h34() {
    let a = Backend::refusing().await;
    let b = Backend::refusing().await;
    let r = router_for(&[&a, &b], |_| {}).await;
    let (first, line) = request(&r, "/").await;
    assert_eq!(first.status, 503);
    assert!(line.contains("code=H21"), "{line}");
    let (second, line) = request(&r, "/").await;
    assert_eq!(second.status, 503);
    assert!(line.contains("code=H34"), "{line}");
    r.shutdown().await;
}

#[tokio::test]
async fn no_first_byte_in_time_is_503_h12() {
    let silent = Backend::silent().await;
    let r = router_for(&[&silent], |b| {
        b.timeout("first_byte = \"500ms\"");
    })
    .await;
    let (reply, line) = request(&r, "/").await;
    assert_eq!(reply.status, 503);
    assert!(
        line.starts_with("at=error code=H12 desc=\"Request timeout\""),
        "{line}"
    );
    assert!(line.contains(" service=5"), "{line}");
    r.shutdown().await;
}

/// A 1 s first-byte timeout, and a 400 ms request-head window that makes the connection's
/// watchdog look every 200 ms, more often than the timeout.
async fn router_with_the_watchdog_shorter_than_first_byte(silent: &Backend) -> TestRouter {
    router_for(&[silent], |b| {
        b.timeout("first_byte = \"1s\"")
            .timeout("request_head = \"400ms\"");
    })
    .await
}

/// The log line is an H12 whose service time is the 1 s first-byte timeout, give or take.
fn assert_h12_at_the_1s_deadline(line: &str) {
    assert!(
        line.starts_with("at=error code=H12 desc=\"Request timeout\""),
        "{line}"
    );
    let service: u64 = line
        .split(" service=")
        .nth(1)
        .and_then(|v| v.split("ms").next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no service time: {line}"));
    assert!(
        (1000..1150).contains(&service),
        "H12 after {service} ms, not at the 1 s deadline: {line}"
    );
}

#[tokio::test]
async fn no_first_byte_in_time_is_h12_on_time_when_the_watchdog_arms_the_timer() {
    // A 400 ms request-head window makes the connection's watchdog look every 200 ms, less than
    // the first-byte timeout: the timer is then armed at a later poll of the request (woken by
    // the watchdog), not when the request is sent, and must still fire on time.
    let silent = Backend::silent().await;
    let r = router_with_the_watchdog_shorter_than_first_byte(&silent).await;
    let (reply, line) = request(&r, "/").await;
    assert_eq!(reply.status, 503);
    assert_h12_at_the_1s_deadline(&line);
    r.shutdown().await;
}

#[tokio::test]
async fn an_http2_request_gets_h12_on_time_with_the_watchdog_shorter_than_the_timeout() {
    // The case above over HTTP/2: a stream is polled on the client connection's task only when
    // something it waits on wakes it (the watchdog wakes the connection, not its streams), so an
    // HTTP/2 request's first-byte timer must be armed when the request is sent, never left to a
    // later poll (with it left, this request never gets an answer).
    let silent = Backend::silent().await;
    let r = router_with_the_watchdog_shorter_than_first_byte(&silent).await;
    let id = unique_request_id("h2-h12");
    let conn = TlsClient::new(ClientOptions::sni("www.example.com").http2())
        .connect(r.https())
        .await
        .unwrap();
    let req = Request::get("https://www.example.com/")
        .header("x-request-id", &id)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), send_h2(conn.stream, vec![req]))
        .await
        .expect("an answer within 5 s")
        .unwrap()
        .remove(0);
    assert_eq!(reply.status, 503);
    let line = logs::find(&id, Duration::from_secs(3))
        .await
        .expect("log line");
    assert_h12_at_the_1s_deadline(&line);
    r.shutdown().await;
}

#[tokio::test]
async fn closed_without_response_is_503_h13() {
    let closer = Backend::close_early().await;
    let r = router_for(&[&closer], |_| {}).await;
    let (reply, line) = request(&r, "/").await;
    assert_eq!(reply.status, 503);
    assert!(line.starts_with("at=error code=H13 "), "{line}");
    assert_eq!(
        closer.requests(),
        1,
        "not retried once the request was sent"
    );
    r.shutdown().await;
}

#[tokio::test]
async fn a_response_over_100_headers_is_502_h25() {
    // 90: the router adds a few of its own, and the test client also stops at 100.
    let under = Backend::many_headers(90).await;
    let r = router_for(&[&under], |_| {}).await;
    let (reply, _) = request(&r, "/").await;
    assert_eq!(reply.status, 200);
    r.shutdown().await;

    let over = Backend::many_headers(101).await;
    let r = router_for(&[&over], |_| {}).await;
    let (reply, line) = request(&r, "/").await;
    assert_eq!(reply.status, 502);
    assert!(line.starts_with("at=error code=H25 "), "{line}");
    r.shutdown().await;
}

#[tokio::test]
async fn closed_mid_response_is_logged_h18() {
    let closer = Backend::close_mid_body().await;
    let r = router_for(&[&closer], |_| {}).await;
    let id = unique_request_id("h18");
    let conn = TlsClient::new(ClientOptions::sni("www.example.com").http1())
        .connect(r.https())
        .await
        .unwrap();
    let req = Request::get("/")
        .header("host", "www.example.com")
        .header("x-request-id", &id)
        .body(Full::new(Bytes::new()))
        .unwrap();
    // The status line was already sent: the client sees a truncated body.
    assert!(send_h1(conn.stream, vec![req]).await.is_err());
    let line = logs::find(&id, Duration::from_secs(3))
        .await
        .expect("log line");
    assert!(line.starts_with("at=error code=H18 "), "{line}");
    assert!(line.contains(" status=200 bytes=10 "), "{line}");
    r.shutdown().await;
}

#[tokio::test]
async fn backend_idle_mid_body_is_logged_h15() {
    let echo = Backend::echo("slow").await;
    let r = router_for(&[&echo], |b| {
        b.timeout("idle = \"300ms\"");
    })
    .await;
    let id = unique_request_id("h15");
    let conn = TlsClient::new(ClientOptions::sni("www.example.com").http1())
        .connect(r.https())
        .await
        .unwrap();
    let req = Request::get("/stream?chunks=3&ms=1000")
        .header("host", "www.example.com")
        .header("x-request-id", &id)
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert!(send_h1(conn.stream, vec![req]).await.is_err());
    let line = logs::find(&id, Duration::from_secs(3))
        .await
        .expect("log line");
    assert!(line.starts_with("at=error code=H15 "), "{line}");
    r.shutdown().await;
}

#[tokio::test]
async fn client_gone_before_the_response_is_499_h27() {
    let echo = Backend::echo("slow").await;
    let r = router_for(&[&echo], |_| {}).await;
    let id = unique_request_id("h27");
    let conn = TlsClient::new(ClientOptions::sni("www.example.com").http1())
        .connect(r.https())
        .await
        .unwrap();
    let req = Request::get("/slow?ms=1500")
        .header("host", "www.example.com")
        .header("x-request-id", &id)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let pending = tokio::spawn(send_h1(conn.stream, vec![req]));
    // Gone once the request is at the backend, before its answer.
    echo.wait_for_requests(1).await;
    pending.abort();
    let line = logs::find(&id, Duration::from_secs(5))
        .await
        .expect("log line");
    assert!(line.starts_with("at=error code=H27 "), "{line}");
    assert!(line.contains(" status=499 "), "{line}");
    r.shutdown().await;
}

#[tokio::test]
async fn client_stalling_its_body_is_499_h28() {
    let echo = Backend::echo("web").await;
    let r = router_for(&[&echo], |b| {
        b.timeout("idle = \"300ms\"");
    })
    .await;
    let id = unique_request_id("h28");
    let mut conn = TlsClient::new(ClientOptions::sni("www.example.com").http1())
        .connect(r.https())
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: www.example.com\r\nx-request-id: {id}\r\ncontent-length: 100\r\n\r\n0123456789"
    );
    conn.stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        conn.stream.read_to_end(&mut response),
    )
    .await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 499"), "{response}");
    let line = logs::find(&id, Duration::from_secs(3))
        .await
        .expect("log line");
    assert!(
        line.starts_with("at=error code=H28 desc=\"Client connection idle\""),
        "{line}"
    );
}

#[tokio::test]
async fn a_pooled_connection_the_backend_closed_is_replaced_without_an_error() {
    // The backend closes each connection 50 ms after its response; the pool's reaper runs far
    // later, so the next request finds the closed connection in the pool.
    let backend = Backend::closes_idle(Duration::from_millis(50)).await;
    let r = router_for(&[&backend], |_| {}).await;
    for round in 1..=3 {
        let (reply, line) = request(&r, "/").await;
        assert_eq!(reply.status, 200, "round {round}: {line}");
        assert_eq!(
            backend.requests(),
            round,
            "one request per round reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    r.shutdown().await;
}

#[tokio::test]
async fn idle_backend_connections_are_closed_after_pool_idle() {
    let echo = Backend::echo("web").await;
    let r = router_for(&[&echo], |b| {
        b.timeout("pool_idle = \"300ms\"");
    })
    .await;
    let (reply, _) = request(&r, "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(r.router.shared.pooled_connections(), 1);
    let started = std::time::Instant::now();
    eventually(
        Duration::from_secs(5),
        "the idle pooled connection is closed",
        || r.router.shared.pooled_connections() == 0,
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "closed before pool_idle: {:?}",
        started.elapsed()
    );
    r.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_closed() {
    let echo = Backend::echo("web").await;
    let r = router_for(&[&echo], |b| {
        b.tls("handshake_timeout = \"300ms\"");
    })
    .await;
    use tokio::io::AsyncReadExt;
    let mut silent = tokio::net::TcpStream::connect(r.https()).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut buf))
        .await
        .expect("closed by the router")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(
        r.metric(r#"terminus_tls_handshakes_total{result="failed",version="",reason="timeout"}"#)
            .await,
        1.0
    );
    r.shutdown().await;
}

#[tokio::test]
async fn connections_that_say_nothing_are_closed_after_idle() {
    use tokio::io::AsyncReadExt;
    let echo = Backend::echo("web").await;
    let r = router_for(&[&echo], |b| {
        b.timeout("idle = \"300ms\"");
    })
    .await;
    async fn closed_within(mut s: impl tokio::io::AsyncRead + Unpin, limit: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(limit, s.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }
    // Plaintext: not even the first byte of a request.
    let plain = tokio::net::TcpStream::connect(r.http()).await.unwrap();
    // TLS with each ALPN, and none: a completed handshake, then silence.
    let h1 = TlsClient::new(ClientOptions::sni("www.example.com").http1())
        .connect(r.https())
        .await
        .unwrap();
    let h2 = TlsClient::new(ClientOptions::sni("www.example.com").http2())
        .connect(r.https())
        .await
        .unwrap();
    let mut none = ClientOptions::sni("www.example.com");
    none.alpn = Vec::new();
    let none = TlsClient::new(none).connect(r.https()).await.unwrap();
    let limit = Duration::from_secs(3);
    let (a, b, c, d) = tokio::join!(
        closed_within(plain, limit),
        closed_within(h1.stream, limit),
        closed_within(h2.stream, limit),
        closed_within(none.stream, limit)
    );
    assert_eq!((a, b, c, d), (true, true, true, true));
    r.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_with_h28() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = Backend::echo("web").await;
    let r = router_for(&[&echo], |b| {
        b.timeout("idle = \"500ms\"");
    })
    .await;
    let id = unique_request_id("stall");
    let mut conn = TlsClient::new(ClientOptions::sni("www.example.com").http1())
        .connect(r.https())
        .await
        .unwrap();
    let head = format!(
        "GET /bytes?n=50000000 HTTP/1.1\r\nhost: www.example.com\r\nx-request-id: {id}\r\n\r\n"
    );
    conn.stream.write_all(head.as_bytes()).await.unwrap();
    let mut first = vec![0u8; 1024];
    conn.stream.read_exact(&mut first).await.unwrap();
    // Stop reading; the router's writes back up and it must give up after the idle window.
    let line = logs::find(&id, Duration::from_secs(5))
        .await
        .expect("log line");
    assert!(line.starts_with("at=error code=H28 "), "{line}");
    assert!(line.contains(" status=200 "), "{line}");
    drop(conn);
    r.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stalls_first_is_h28_even_when_the_backend_gives_up() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The backend gives up 1 s after the router stopped reading it (because the client had
    // stopped reading the router); the client comes back after 4.5 s, past the idle window.
    let impatient = Backend::impatient(Duration::from_secs(1)).await;
    let r = router_for(&[&impatient], |b| {
        b.timeout("idle = \"4s\"");
    })
    .await;
    let id = unique_request_id("impatient");
    let mut conn = TlsClient::new(ClientOptions::sni("www.example.com").http1())
        .connect(r.https())
        .await
        .unwrap();
    let head = format!("GET / HTTP/1.1\r\nhost: www.example.com\r\nx-request-id: {id}\r\n\r\n");
    conn.stream.write_all(head.as_bytes()).await.unwrap();
    let mut first = vec![0u8; 1024];
    conn.stream.read_exact(&mut first).await.unwrap();
    // The stall itself is what is under test.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.stream.read_to_end(&mut rest))
        .await
        .expect("the router closed the connection");
    let line = logs::find(&id, Duration::from_secs(3))
        .await
        .expect("log line");
    assert!(line.starts_with("at=error code=H28 "), "{line}");
    assert!(rest.len() < 100_000_000, "the body was cut");
    r.shutdown().await;
}

#[tokio::test]
async fn a_slow_upload_does_not_count_against_the_first_byte_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = Backend::echo("web").await;
    let r = router_for(&[&echo], |b| {
        b.timeout("first_byte = \"400ms\"");
    })
    .await;
    let mut conn = TlsClient::new(ClientOptions::sni("www.example.com").http1())
        .connect(r.https())
        .await
        .unwrap();
    conn.stream
        .write_all(b"POST /upload HTTP/1.1\r\nhost: www.example.com\r\ncontent-length: 10\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    // Pacing, not waiting: a byte every 120 ms keeps the upload alive (idle is 55 s) while the
    // whole of it takes three times first_byte.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(120)).await;
        conn.stream.write_all(b"x").await.unwrap();
    }
    let mut response = Vec::new();
    conn.stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"body_len\":10"), "{response}");
    r.shutdown().await;
}
