//! `/readyz` answers 503 with the reason until the router says it is ready, then 200; `/healthz`
//! answers 200 all along; `/v1/` answers 503 until the API is turned on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use terminus_admin::{Admin, Limits, Readiness, Stage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

#[tokio::test]
async fn readyz_follows_the_stages_and_healthz_stays_alive() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let readiness = Arc::new(Readiness::new(Stage::LoadingCertificates));
    let admin = Admin::starting(
        terminus_metrics::MetricsRegistry::default(),
        readiness.clone(),
    );
    let (_stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(terminus_admin::serve(
        listener,
        admin.clone(),
        Limits::default(),
        rx,
    ));

    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("loading certificates"), "{body}");
    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
    let (status, body) = get(addr, "/v1/certs").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("starting"), "{body}");

    readiness.set(Stage::Binding);
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("listeners"), "{body}");

    readiness.set(Stage::Ready);
    admin.set_api(None);
    assert_eq!(get(addr, "/readyz").await, (200, "ready\n".into()));
    assert_eq!(get(addr, "/v1/certs").await.0, 404);

    readiness.set(Stage::Draining);
    let (status, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("shutting down"), "{body}");
    assert_eq!(get(addr, "/healthz").await.0, 200);
}
