//! Requests a hostile (or broken) client sends: malformed bodies, heads that never finish, heads
//! over the size limit, spoofed X-Real-IP, plain HTTP on the TLS port.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use terminus_test_support::{
    logs, send_h1, send_h2, unique_request_id, Backend, ClientOptions, TlsClient,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::harness::{web_router, TestRouter};

/// Writes `bytes`, then reads until the router closes (at most `limit`).
async fn exchange(
    mut io: impl AsyncRead + AsyncWrite + Unpin,
    bytes: &[u8],
    limit: Duration,
) -> String {
    io.write_all(bytes).await.unwrap();
    io.flush().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, io.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn tls_h1(r: &TestRouter) -> impl AsyncRead + AsyncWrite + Unpin {
    TlsClient::new(ClientOptions::sni("www.example.com").http1())
        .connect(r.https())
        .await
        .unwrap()
        .stream
}

#[tokio::test]
async fn a_malformed_chunked_body_is_400_h26_and_its_backend_connection_is_not_reused() {
    let echo = Backend::echo("web").await;
    let r = web_router(echo.addr, |_| {}).await;
    // A pooled backend connection, which the bad request will take.
    assert_eq!(
        r.get("www.example.com", "www.example.com", "/")
            .await
            .status,
        200
    );
    assert_eq!(r.router.shared.pooled_connections(), 1);
    let id = unique_request_id("chunk");
    let mut conn = tls_h1(&r).await;
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: www.example.com\r\nx-request-id: {id}\r\n\
         transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.flush().await.unwrap();
    // The head has reached the backend before the body goes wrong.
    let deadline = Instant::now() + Duration::from_secs(5);
    while echo.requests() < 2 {
        assert!(Instant::now() < deadline, "the head reached the backend");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let response = exchange(conn, b"zz\r\n\r\n", Duration::from_secs(5)).await;
    assert!(
        response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{response}"
    );
    assert!(response.contains("bad_chunk"), "{response}");
    let line = logs::find(&id, Duration::from_secs(3))
        .await
        .expect("log line");
    assert!(
        line.starts_with("at=error code=H26 desc=\"Request error\" cause=bad_chunk "),
        "{line}"
    );
    assert!(line.contains(" status=400 "), "{line}");
    // The backend connection that carried half a request is closed, not pooled again.
    assert_eq!(r.router.shared.pooled_connections(), 0);
    let reply = r.get("www.example.com", "www.example.com", "/").await;
    assert_eq!(reply.status, 200);
    r.shutdown().await;
}

#[tokio::test]
async fn a_head_that_does_not_arrive_in_time_is_408_and_keep_alive_waits_on_idle() {
    let echo = Backend::echo("web").await;
    let r = web_router(echo.addr, |b| {
        b.timeout("request_head = \"500ms\"")
            .timeout("idle = \"5s\"");
    })
    .await;
    let before = r
        .metric(r#"terminus_http_requests_total{status="408",code="H26"}"#)
        .await;
    // Slowloris, plaintext and TLS: the head starts and never ends.
    for tls in [false, true] {
        let started = Instant::now();
        let partial = b"GET / HTTP/1.1\r\nhost: www.exa";
        let response = if tls {
            exchange(tls_h1(&r).await, partial, Duration::from_secs(4)).await
        } else {
            let tcp = tokio::net::TcpStream::connect(r.http()).await.unwrap();
            exchange(tcp, partial, Duration::from_secs(4)).await
        };
        let took = started.elapsed();
        assert!(
            response.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "tls={tls}: {response:?}"
        );
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_millis(2500),
            "tls={tls}: answered after {took:?}"
        );
    }
    let line = logs::find("cause=request_head_timeout", Duration::from_secs(3))
        .await
        .expect("log line");
    assert!(
        line.starts_with(
            "at=error code=H26 desc=\"Request error\" cause=request_head_timeout method= path=\"\""
        ),
        "{line}"
    );
    assert!(line.contains(" status=408 "), "{line}");
    assert_eq!(
        r.metric(r#"terminus_http_requests_total{status="408",code="H26"}"#)
            .await,
        before + 2.0
    );

    // Waiting for the next request on a kept-alive connection is idle time, not head time.
    let conn = TlsClient::new(ClientOptions::sni("www.example.com").http1())
        .connect(r.https())
        .await
        .unwrap();
    let (mut sender, driver) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(conn.stream))
            .await
            .unwrap();
    tokio::spawn(driver);
    let get = || {
        Request::get("/")
            .header("host", "www.example.com")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(sender.send_request(get()).await.unwrap().status(), 200);
    // Longer than request_head, shorter than idle: the pause is the point of the test.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sender.send_request(get()).await.unwrap().status(), 200);
    r.shutdown().await;
}

#[tokio::test]
async fn heads_over_max_request_head_are_431_on_http1_and_http2() {
    let echo = Backend::echo("web").await;
    let r = web_router(echo.addr, |_| {}).await;
    // Header lines under the 8 KiB line limit, 40 KiB in all: over the 32 KiB default.
    let request = |version: http::Version, kib: usize| {
        let mut req = if version == http::Version::HTTP_2 {
            Request::get("https://www.example.com/").version(version)
        } else {
            Request::get("/").header("host", "www.example.com")
        };
        for i in 0..kib / 4 {
            req = req.header(format!("x-fill-{i}"), "f".repeat(4000));
        }
        req.body(Full::new(Bytes::new())).unwrap()
    };
    let h1 = |kib| {
        let addr = r.https();
        async move {
            let conn = TlsClient::new(ClientOptions::sni("www.example.com").http1())
                .connect(addr)
                .await
                .unwrap();
            send_h1(conn.stream, vec![request(http::Version::HTTP_11, kib)])
                .await
                .unwrap()
                .remove(0)
                .status
        }
    };
    let h2 = |kib| {
        let addr = r.https();
        async move {
            let conn = TlsClient::new(ClientOptions::sni("www.example.com").http2())
                .connect(addr)
                .await
                .unwrap();
            send_h2(conn.stream, vec![request(http::Version::HTTP_2, kib)])
                .await
                .unwrap()
                .remove(0)
                .status
        }
    };
    assert_eq!(h1(28).await, 200);
    assert_eq!(h1(40).await, 431);
    assert_eq!(h2(28).await, 200);
    assert_eq!(h2(40).await, 431);
    assert_eq!(echo.requests(), 2, "oversized heads never reach a backend");
    r.shutdown().await;
}

#[tokio::test]
async fn a_client_x_real_ip_is_removed_or_replaced_by_the_client_address() {
    let echo = Backend::echo("web").await;
    let spoofed = |r: &TestRouter| {
        let addr = r.https();
        async move {
            let conn = TlsClient::new(ClientOptions::sni("www.example.com").http1())
                .connect(addr)
                .await
                .unwrap();
            let req = Request::get("/")
                .header("host", "www.example.com")
                .header("x-real-ip", "6.6.6.6")
                .header("x_real_ip", "6.6.6.6")
                .body(Full::new(Bytes::new()))
                .unwrap();
            send_h1(conn.stream, vec![req]).await.unwrap().remove(0)
        }
    };
    let r = web_router(echo.addr, |_| {}).await;
    let reply = spoofed(&r).await;
    assert!(reply.echoed("x-real-ip").is_empty(), "{}", reply.text());
    assert!(reply.echoed("x_real_ip").is_empty(), "{}", reply.text());
    r.shutdown().await;

    let r = web_router(echo.addr, |b| {
        b.proxy("set_x_real_ip = true");
    })
    .await;
    let reply = spoofed(&r).await;
    assert_eq!(reply.echoed("x-real-ip"), ["127.0.0.1"]);
    r.shutdown().await;
}

#[tokio::test]
async fn plain_http_on_the_tls_port_gets_a_readable_400() {
    let echo = Backend::echo("web").await;
    let r = web_router(echo.addr, |_| {}).await;
    let tcp = tokio::net::TcpStream::connect(r.https()).await.unwrap();
    let response = exchange(
        tcp,
        b"GET / HTTP/1.1\r\nhost: www.example.com\r\nuser-agent: test\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(
        response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{response:?}"
    );
    assert!(
        response.ends_with("\r\n\r\n400 Bad Request: plain HTTP request sent to HTTPS port\n"),
        "{response:?}"
    );
    assert_eq!(
        r.metric(
            r#"terminus_tls_handshakes_total{result="failed",version="",reason="plain_http"}"#
        )
        .await,
        1.0
    );
    // Anything else that is not TLS still gets the alert, and TLS still works.
    let tcp = tokio::net::TcpStream::connect(r.https()).await.unwrap();
    let answer = exchange(tcp, b"\x00\x01\x02\x03\x04\x05", Duration::from_secs(3)).await;
    assert!(!answer.contains("HTTP/1.1"), "{answer:?}");
    let reply = r.get("www.example.com", "www.example.com", "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(echo.requests(), 1);
    r.shutdown().await;
}
