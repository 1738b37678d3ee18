//! WebSocket (and any `Upgrade`) passes through.

use futures_util::{SinkExt, StreamExt};
use terminus_test_support::{Backend, ClientOptions, KeyType, TlsClient};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::Builder;

#[tokio::test]
async fn websocket_upgrade_echoes_through_the_router() {
    let echo = Backend::echo("ws").await;
    let mut b = Builder::new();
    b.cert("wild", &["*.example.com"], KeyType::EcdsaP256);
    b.app("web", &[echo.addr])
        .domain("*.example.com", "web", None);
    let r = b.start().await;

    let conn = TlsClient::new(ClientOptions::sni("ws.example.com").http1())
        .connect(r.https())
        .await
        .unwrap();
    let (mut ws, response) =
        tokio_tungstenite::client_async("wss://ws.example.com/ws", conn.stream)
            .await
            .expect("websocket handshake through the router");
    assert_eq!(response.status(), 101);
    assert_eq!(
        response.headers().get("via").and_then(|v| v.to_str().ok()),
        Some("1.1 terminus")
    );
    for i in 0..5 {
        let text = format!("hello {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), text);
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_data().as_ref(),
        &[0u8, 1, 2, 255]
    );
    ws.close(None).await.unwrap();
    // While a tunnel is open it counts as a connection, and shutdown waits for it.
    assert!(
        r.metric(r#"terminus_open_connections{listener="https"}"#)
            .await
            >= 1.0
    );
    drop(ws);
    r.shutdown().await;
}

/// A tunnel with no byte either way for the idle window is closed, while one that keeps talking
/// within the window stays open.
#[tokio::test]
async fn an_idle_tunnel_is_closed_after_the_idle_window() {
    let echo = Backend::echo("ws").await;
    let mut b = Builder::new();
    b.cert("wild", &["*.example.com"], KeyType::EcdsaP256);
    b.app("web", &[echo.addr])
        .domain("*.example.com", "web", None)
        .timeout("idle = \"400ms\"");
    let r = b.start().await;
    let conn = TlsClient::new(ClientOptions::sni("ws.example.com").http1())
        .connect(r.https())
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("wss://ws.example.com/ws", conn.stream)
        .await
        .unwrap();
    // Talking every 200 ms keeps it open well past the window.
    for i in 0..6 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        ws.send(Message::text(format!("{i}"))).await.unwrap();
        ws.next().await.unwrap().unwrap();
    }
    // Then silence: the router closes it within a little over one window.
    let started = std::time::Instant::now();
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
        .await
        .expect("the idle tunnel is closed by the router");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_)))),
        "no data was expected: {end:?}"
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(400),
        "closed before the idle window: {:?}",
        started.elapsed()
    );
    r.shutdown().await;
}
