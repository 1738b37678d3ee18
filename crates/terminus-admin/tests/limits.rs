//! The admin listener cannot be used to take the router down: connections over the cap are
//! closed at once, idle ones after their timeout, and /healthz answers once there is room.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use terminus_admin::{Admin, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// Waits for the server to close `tcp`: true if it did within `within`.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + within;
    loop {
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            tcp.read(&mut buf),
        )
        .await
        {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

async fn healthz(addr: std::net::SocketAddr) -> Option<String> {
    let mut tcp = TcpStream::connect(addr).await.ok()?;
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut out = Vec::new();
    timeout(Duration::from_secs(5), tcp.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn idle_and_excess_connections_are_closed_and_healthz_answers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = Limits {
        header_timeout: Duration::from_millis(800),
        idle_timeout: Duration::from_millis(800),
        max_connections: 8,
    };
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let admin = Admin::new(terminus_metrics::MetricsRegistry::default(), None);
    tokio::spawn(terminus_admin::serve(listener, admin, limits, rx));

    // One connection that made a request and then idles (keep-alive).
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 64];
    let n = kept.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));

    // Seven silent ones fill the cap; the next ones are closed as soon as they are accepted.
    let mut idle = Vec::new();
    for _ in 0..7 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let opened = Instant::now();
    for _ in 0..20 {
        let mut extra = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut extra, Duration::from_millis(500)).await,
            "a connection over the cap was kept open"
        );
    }
    assert!(
        opened.elapsed() < limits.header_timeout,
        "the refusals came before any idle connection was closed"
    );

    // The silent ones are closed once the header timeout passes, the kept one after idling.
    for tcp in idle.iter_mut().chain([&mut kept]) {
        assert!(
            closed_within(tcp, Duration::from_secs(5)).await,
            "an idle connection was never closed"
        );
    }
    let answer = healthz(addr).await.expect("healthz answers");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok\n"), "{answer}");
}
