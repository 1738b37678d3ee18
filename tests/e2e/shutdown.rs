//! Graceful shutdown: stop accepting, finish what is in flight, then stop. The binary's own
//! SIGTERM handling is exercised in tools.rs.

use std::time::Duration;

use terminus_test_support::{
    get, get_h2, send_h1, send_h2, Backend, ClientOptions, KeyType, TlsClient,
};

use crate::harness::Builder;

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_refuses_new_connections() {
    let echo = Backend::echo("web").await;
    let mut b = Builder::new();
    b.cert("wild", &["*.example.com"], KeyType::EcdsaP256);
    b.app("web", &[echo.addr])
        .domain("*.example.com", "web", None);
    let r = b.start().await;
    let addr = r.https();

    let h1 = TlsClient::new(ClientOptions::sni("a.example.com").http1())
        .connect(addr)
        .await
        .unwrap();
    let h2 = TlsClient::new(ClientOptions::sni("a.example.com").http2())
        .connect(addr)
        .await
        .unwrap();
    let slow_h1 = tokio::spawn(send_h1(
        h1.stream,
        vec![get("a.example.com", "/slow?ms=700")],
    ));
    let slow_h2 = tokio::spawn(send_h2(
        h2.stream,
        vec![get_h2("a.example.com", "/slow?ms=700")],
    ));
    // Both requests are in flight once the backend has them.
    echo.wait_for_requests(2).await;

    let started = std::time::Instant::now();
    r.shutdown().await;
    let took = started.elapsed();

    let h1_reply = slow_h1
        .await
        .unwrap()
        .expect("in-flight HTTP/1.1 request completes");
    assert_eq!(h1_reply[0].status, 200);
    let h2_reply = slow_h2
        .await
        .unwrap()
        .expect("in-flight HTTP/2 request completes");
    assert_eq!(h2_reply[0].status, 200);
    assert!(
        took >= Duration::from_millis(300),
        "shutdown waited for the requests ({took:?})"
    );
    assert!(took < Duration::from_secs(5), "and no longer ({took:?})");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn readyz_is_ready_once_started_and_not_while_draining() {
    let echo = Backend::echo("web").await;
    let mut b = Builder::new();
    b.cert("wild", &["*.example.com"], KeyType::EcdsaP256);
    b.app("web", &[echo.addr])
        .domain("*.example.com", "web", None);
    let r = b.start().await;
    let admin = r.router.admin;
    assert_eq!(
        crate::harness::admin_get(admin, "/readyz").await.unwrap(),
        (200, "ready\n".to_owned())
    );

    // A request in flight keeps the router draining, and the admin listener up, for a while.
    let h1 = TlsClient::new(ClientOptions::sni("a.example.com").http1())
        .connect(r.https())
        .await
        .unwrap();
    let slow = tokio::spawn(send_h1(
        h1.stream,
        vec![get("a.example.com", "/slow?ms=1500")],
    ));
    echo.wait_for_requests(1).await;
    let stopping = tokio::spawn(r.shutdown());
    terminus_test_support::eventually_async(
        Duration::from_secs(5),
        "/readyz answers 503 while draining",
        || async {
            crate::harness::admin_get(admin, "/readyz")
                .await
                .is_ok_and(|(status, body)| status == 503 && body.contains("shutting down"))
        },
    )
    .await;
    assert_eq!(
        crate::harness::admin_get(admin, "/healthz")
            .await
            .unwrap()
            .0,
        200,
        "still alive while draining"
    );
    assert_eq!(slow.await.unwrap().unwrap()[0].status, 200);
    stopping.await.unwrap();
}
