//! Session-ticket keys kept in the store: a client resumes its session after the router
//! restarts on the same store, for TLS 1.3 and TLS 1.2 tickets; without a store the keys live
//! in memory and a restart means a full handshake.

use terminus_test_support::{get, send_h1, Backend, ClientOptions, KeyType, TlsClient};

use crate::harness::Builder;
use crate::process::{metric, serve};

const HOST: &str = "app.example.com";

/// A client that keeps its sessions, verifying against the test CA.
fn resuming(b: &Builder, options: ClientOptions) -> TlsClient {
    TlsClient::new(ClientOptions {
        resumption: true,
        ..options.http1().roots(vec![b.ca.cert_der.clone()])
    })
}

async fn restart_and_resume(with_store: bool) -> (Vec<bool>, f64) {
    let backend = Backend::echo("web").await;
    let mut b = Builder::new();
    if with_store {
        b.with_store();
    }
    b.cert("web", &[HOST], KeyType::EcdsaP256);
    b.app("web", &[backend.addr]).domain(HOST, "web", None);
    let config = b.write_config();
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_terminus"));
    let clients = [
        resuming(&b, ClientOptions::sni(HOST)),
        resuming(&b, ClientOptions::sni(HOST).tls12()),
    ];

    let first = serve(exe, &config, b.dir.path(), "1").await;
    for client in &clients {
        let conn = client.connect(first.ready.https()).await.unwrap();
        assert!(!conn.resumed, "a first connection is a full handshake");
        // A request and its answer: the TLS 1.3 ticket arrives after the handshake.
        let reply = send_h1(conn.stream, vec![get(HOST, "/")]).await.unwrap();
        assert_eq!(reply[0].status, 200);
    }
    assert_eq!(first.stop().await, Some(0));

    let second = serve(exe, &config, b.dir.path(), "2").await;
    let mut resumed = Vec::new();
    for client in &clients {
        let conn = client.connect(second.ready.https()).await.unwrap();
        resumed.push(conn.resumed);
        let reply = send_h1(conn.stream, vec![get(HOST, "/")]).await.unwrap();
        assert_eq!(reply[0].status, 200);
    }
    let counted = metric(second.ready.admin, "terminus_tls_resumed_handshakes_total").await;
    let log = second.log_text();
    if with_store {
        assert!(
            log.contains("session-ticket keys loaded from the store"),
            "{log}"
        );
    }
    assert_eq!(second.stop().await, Some(0));
    (resumed, counted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_after_a_restart_on_the_same_store() {
    let (resumed, counted) = restart_and_resume(true).await;
    assert_eq!(resumed, [true, true], "TLS 1.3 and TLS 1.2 resume");
    assert_eq!(counted, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_store_a_restart_means_full_handshakes() {
    let (resumed, counted) = restart_and_resume(false).await;
    assert_eq!(resumed, [false, false]);
    assert_eq!(counted, 0.0);
}
