//! PROXY protocol listeners: the header's client address reaches X-Forwarded-For and the access
//! log; untrusted sources and missing or malformed headers are closed before TLS and counted;
//! and HAProxy in TCP mode (`send-proxy`, `send-proxy-v2`) in front of the router.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use terminus_test_support::{logs, send_h1, Backend, ClientOptions, KeyType, TlsClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Builder, TestRouter};

const CLIENT: &str = "203.0.113.9";

/// A router whose listeners take PROXY headers in `mode` from `trusted`.
async fn router(mode: &str, trusted: &str, echo: &Backend) -> TestRouter {
    let mut b = Builder::new();
    b.listener(&format!("proxy_protocol = \"{mode}\""))
        .listener(&format!("proxy_trusted = [\"{trusted}\"]"));
    b.cert("site", &["www.example.com"], KeyType::EcdsaP256);
    b.app("web", &[echo.addr])
        .domain("www.example.com", "web", None);
    b.start().await
}

fn v1(client: &str) -> Vec<u8> {
    format!("PROXY TCP4 {client} 127.0.0.1 50123 443\r\n").into_bytes()
}

/// A v2 PROXY (or LOCAL) header for an IPv4 client, with an ALPN and an authority TLV that
/// must not matter.
fn v2(local: bool, client: [u8; 4]) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(if local { 0x20 } else { 0x21 });
    out.push(0x11);
    let mut body = client.to_vec();
    body.extend_from_slice(&[127, 0, 0, 1]);
    body.extend_from_slice(&50123u16.to_be_bytes());
    body.extend_from_slice(&443u16.to_be_bytes());
    body.extend_from_slice(&[0x01, 0x00, 0x08]);
    body.extend_from_slice(b"http/1.1");
    body.extend_from_slice(&[0x02, 0x00, 0x10]);
    body.extend_from_slice(b"evil.example.org");
    out.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn request(id: &str) -> http::Request<Full<Bytes>> {
    http::Request::get("/")
        .header("host", "www.example.com")
        .header("x-request-id", id)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("pp-{what}-{nanos}")
}

/// Sends `header` on a new connection to `addr`, then a TLS GET: the backend's X-Forwarded-For
/// and the access log line, or the handshake's error.
async fn tls_get(addr: SocketAddr, header: &[u8]) -> std::io::Result<(Vec<String>, String)> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(header).await?;
    let conn = TlsClient::new(ClientOptions::sni("www.example.com").http1())
        .handshake(tcp)
        .await?;
    let id = unique("tls");
    let reply = send_h1(conn.stream, vec![request(&id)])
        .await
        .map_err(std::io::Error::other)?
        .remove(0);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let line = logs::find(&id, Duration::from_secs(3))
        .await
        .expect("access log line");
    Ok((reply.echoed("x-forwarded-for"), line))
}

/// The connection is closed without a byte back (before TLS).
async fn closed_before_tls(addr: SocketAddr, first: &[u8]) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(first).await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("closed within the timeout")
        .unwrap_or(0);
    assert_eq!(n, 0, "got {:?}", &buf[..n]);
}

async fn rejected(r: &TestRouter, reason: &str) -> f64 {
    r.metric(&format!(
        "terminus_proxy_protocol_rejected_total{{reason=\"{reason}\"}}"
    ))
    .await
}

#[tokio::test]
async fn v1_header_feeds_forwarded_for_and_the_log() {
    let echo = Backend::echo("web").await;
    let r = router("v1", "127.0.0.1/32", &echo).await;
    let (xff, line) = tls_get(r.https(), &v1(CLIENT)).await.unwrap();
    assert_eq!(xff, vec![CLIENT.to_owned()]);
    assert!(line.contains(&format!("fwd=\"{CLIENT}\"")), "{line}");

    // A plaintext listener reads it too.
    let mut tcp = TcpStream::connect(r.http()).await.unwrap();
    tcp.write_all(&v1("198.51.100.4")).await.unwrap();
    let reply = send_h1(tcp, vec![request(&unique("plain"))])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(reply.echoed("x-forwarded-for"), vec!["198.51.100.4"]);

    // v1 only: a v2 header, no header, a malformed one: closed before TLS, counted.
    closed_before_tls(r.https(), &v2(false, [203, 0, 113, 9])).await;
    closed_before_tls(r.https(), &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0]).await;
    closed_before_tls(r.https(), b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n").await;
    assert_eq!(rejected(&r, "wrong_version").await, 1.0);
    assert_eq!(rejected(&r, "missing").await, 1.0);
    assert_eq!(rejected(&r, "malformed").await, 1.0);
    r.shutdown().await;
}

#[tokio::test]
async fn v2_header_and_local_command() {
    let echo = Backend::echo("web").await;
    let r = router("v2", "127.0.0.0/8", &echo).await;
    let (xff, _) = tls_get(r.https(), &v2(false, [203, 0, 113, 9]))
        .await
        .unwrap();
    assert_eq!(xff, vec![CLIENT.to_owned()]);
    // LOCAL (a load balancer's own health check): the connection's address stands.
    let (xff, _) = tls_get(r.https(), &v2(true, [203, 0, 113, 9]))
        .await
        .unwrap();
    assert_eq!(xff, vec!["127.0.0.1".to_owned()]);
    closed_before_tls(r.https(), &v1(CLIENT)).await;
    assert_eq!(rejected(&r, "wrong_version").await, 1.0);
    r.shutdown().await;
}

#[tokio::test]
async fn untrusted_sources_are_closed_and_optional_takes_both() {
    let echo = Backend::echo("web").await;
    let r = router("optional", "10.0.0.0/8", &echo).await;
    closed_before_tls(r.https(), &v1(CLIENT)).await;
    assert_eq!(rejected(&r, "untrusted").await, 1.0);
    r.shutdown().await;

    let r = router("optional", "127.0.0.1", &echo).await;
    let (xff, _) = tls_get(r.https(), &v1(CLIENT)).await.unwrap();
    assert_eq!(xff, vec![CLIENT.to_owned()]);
    let (xff, _) = tls_get(r.https(), &v2(false, [198, 51, 100, 7]))
        .await
        .unwrap();
    assert_eq!(xff, vec!["198.51.100.7".to_owned()]);
    let (xff, _) = tls_get(r.https(), b"").await.unwrap();
    assert_eq!(xff, vec!["127.0.0.1".to_owned()]);
    r.shutdown().await;
}

#[tokio::test]
async fn a_header_that_never_completes_is_cut_at_the_handshake_timeout() {
    let echo = Backend::echo("web").await;
    let mut b = Builder::new();
    b.listener("proxy_protocol = \"v1\"")
        .listener("proxy_trusted = [\"127.0.0.1\"]")
        .tls("handshake_timeout = \"300ms\"");
    b.cert("site", &["www.example.com"], KeyType::EcdsaP256);
    b.app("web", &[echo.addr])
        .domain("www.example.com", "web", None);
    let r = b.start().await;
    let started = std::time::Instant::now();
    closed_before_tls(r.https(), b"PROXY TCP4 203.0.").await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(rejected(&r, "timeout").await, 1.0);
    r.shutdown().await;
}

/// HAProxy in TCP mode in front of the router, started on loopback ports and stopped after.
struct HaProxy {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl HaProxy {
    /// None (with a message) when haproxy is not installed.
    async fn start(dir: &std::path::Path, router: SocketAddr, send: &str) -> Option<Self> {
        if std::process::Command::new("haproxy")
            .arg("-v")
            .output()
            .is_err()
        {
            eprintln!(
                "SKIPPED: haproxy is not installed (./scripts/ensure-packages.sh haproxy:haproxy)"
            );
            return None;
        }
        let addr = terminus_test_support::reserve_port().unwrap();
        let config = dir.join(format!("haproxy-{send}.cfg"));
        std::fs::write(
            &config,
            format!(
                "global\n  maxconn 64\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\nfrontend front\n  bind {addr}\n  default_backend router\nbackend router\n  server terminus {router} {send}\n"
            ),
        )
        .unwrap();
        let child = tokio::process::Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .kill_on_drop(true)
            .spawn()
            .expect("start haproxy");
        terminus_test_support::eventually_async(
            Duration::from_secs(10),
            "haproxy listens",
            || async { TcpStream::connect(addr).await.is_ok() },
        )
        .await;
        Some(Self { child, addr })
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

#[tokio::test]
async fn haproxy_send_proxy_and_send_proxy_v2() {
    let echo = Backend::echo("web").await;
    // Required headers: a connection that reached the backend carried one.
    for (mode, send) in [("v1", "send-proxy"), ("v2", "send-proxy-v2")] {
        let r = router(mode, "127.0.0.1/32", &echo).await;
        let Some(haproxy) = HaProxy::start(r.dir.path(), r.https(), send).await else {
            return;
        };
        for _ in 0..3 {
            let (xff, line) = tls_get(haproxy.addr, b"").await.unwrap();
            // The client is on 127.0.0.1 too: the address is the client's as HAProxy saw it.
            assert_eq!(xff, vec!["127.0.0.1".to_owned()], "{send}");
            assert!(line.contains("fwd=\"127.0.0.1\""), "{line}");
        }
        for reason in ["missing", "malformed", "wrong_version", "untrusted"] {
            assert_eq!(rejected(&r, reason).await, 0.0, "{send}: {reason}");
        }
        haproxy.stop().await;
        r.shutdown().await;
    }
}
