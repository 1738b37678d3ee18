//! Replacing a certificate while fresh handshakes run: every handshake succeeds and sees the old
//! or the new certificate, never an error, and once `replace` returns the old one is never
//! served again.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use terminus_test_support::{ClientOptions, KeyType, TlsClient};
use terminus_tls::{prepare, CertEntry, PrepareOptions};

use crate::harness::Builder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_under_a_load_of_fresh_handshakes() {
    let mut b = Builder::new();
    let first = b.cert("site", &["swap.example.com"], KeyType::EcdsaP256);
    let r = b.start().await;
    let store = r.router.shared.certs.clone();

    // Four generations of the certificate, rotated while clients connect.
    let generations: Vec<_> = (0..4)
        .map(|_| r.ca.leaf(&["swap.example.com"], KeyType::EcdsaP256))
        .collect();
    let mut all = vec![first.cert_der.clone()];
    all.extend(generations.iter().map(|g| g.cert_der.clone()));
    let all = Arc::new(all);
    // Index (into `all`) of the newest certificate whose `replace` has returned.
    let published = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let handshakes = Arc::new(AtomicUsize::new(0));

    let mut clients = Vec::new();
    for _ in 0..8 {
        let (all, published, stop, handshakes) = (
            all.clone(),
            published.clone(),
            stop.clone(),
            handshakes.clone(),
        );
        let addr = r.https();
        clients.push(tokio::spawn(async move {
            let client = TlsClient::new(ClientOptions::sni("swap.example.com"));
            while !stop.load(Ordering::SeqCst) {
                let floor = published.load(Ordering::SeqCst);
                let conn = client
                    .connect(addr)
                    .await
                    .expect("every handshake succeeds");
                let served = conn.served.expect("a certificate");
                let index = all
                    .iter()
                    .position(|c| *c == served)
                    .expect("a known certificate");
                assert!(
                    index >= floor,
                    "certificate {index} served after certificate {floor} was published"
                );
                handshakes.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // Each generation serves a share of the handshakes before the next replaces it, however
    // fast or slow this machine is.
    let ran = |at_least: usize| {
        let handshakes = handshakes.clone();
        async move {
            while handshakes.load(Ordering::Relaxed) < at_least {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    for (i, leaf) in generations.iter().enumerate() {
        ran(40 * (i + 1)).await;
        let prepared = prepare(
            leaf.cert_pem.as_bytes(),
            leaf.key_pem.as_bytes(),
            &PrepareOptions::default(),
            store.provider(),
            terminus::unix_now(),
        )
        .unwrap();
        store.replace(CertEntry::from_prepared("site", prepared));
        published.store(i + 1, Ordering::SeqCst);
    }
    ran(40 * (generations.len() + 1)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("no client failed");
    }
    let total = handshakes.load(Ordering::Relaxed);
    assert!(total >= 200, "only {total} handshakes ran");
    // The server counts a handshake when it has read the client's Finished, a moment after
    // the client is done: wait for the count to catch up.
    let mut counted = 0;
    for _ in 0..100 {
        counted = r
            .metric(r#"terminus_tls_handshakes_total{result="ok",version="tls1.3",reason="none"}"#)
            .await as usize;
        if counted == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(counted, total);
    assert_eq!(store.len(), 1);
    r.shutdown().await;
}

#[tokio::test]
async fn connections_keep_their_certificate_after_a_swap() {
    let mut b = Builder::new();
    let web = terminus_test_support::Backend::echo("web").await;
    let old = b.cert("site", &["keep.example.com"], KeyType::EcdsaP256);
    b.app("web", &[web.addr])
        .domain("keep.example.com", "web", None);
    let r = b.start().await;
    let conn = TlsClient::new(ClientOptions::sni("keep.example.com").http1())
        .connect(r.https())
        .await
        .unwrap();
    assert_eq!(conn.served.as_ref(), Some(&old.cert_der));
    let (mut sender, driver) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(conn.stream))
            .await
            .unwrap();
    tokio::spawn(driver);

    // Swap to a certificate for another name: the open connection still has the old one,
    // and its requests are still judged against the old certificate's names.
    let new = r.ca.leaf(&["other.example.com"], KeyType::EcdsaP256);
    let store = r.router.shared.certs.clone();
    let prepared = prepare(
        new.cert_pem.as_bytes(),
        new.key_pem.as_bytes(),
        &PrepareOptions::default(),
        store.provider(),
        terminus::unix_now(),
    )
    .unwrap();
    store.replace(CertEntry::from_prepared("site", prepared));
    let resp = sender
        .send_request(terminus_test_support::get("keep.example.com", "/"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // New handshakes for the old name find nothing.
    assert!(TlsClient::new(ClientOptions::sni("keep.example.com"))
        .connect(r.https())
        .await
        .is_err());
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_update_under_a_load_of_handshakes_and_h2_requests() {
    use serde_json::json;
    use terminus_test_support::{get_h2, send_h2, Backend};
    let web = Backend::echo("web").await;
    let mut b = Builder::new();
    b.with_store();
    let r = b.start().await;
    r.api(
        "POST",
        "/v1/apps",
        Some(json!({"name": "web", "backends": [web.addr.to_string()]})),
    )
    .await;
    r.api(
        "POST",
        "/v1/domains",
        Some(json!({"hostname": "swap.example.com", "app": "web"})),
    )
    .await;
    let leaves: Vec<_> = (0..4)
        .map(|_| r.ca.leaf(&["swap.example.com"], KeyType::EcdsaP256))
        .collect();
    let (s, v) = r
        .api("POST", "/v1/certs", Some(json!({"certificate_chain": leaves[0].cert_pem, "private_key": leaves[0].key_pem, "name": "site"})))
        .await;
    assert_eq!(s, 201, "{v}");

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..6 {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), r.https());
        clients.push(tokio::spawn(async move {
            let client = TlsClient::new(ClientOptions::sni("swap.example.com").http2());
            while !stop.load(Ordering::SeqCst) {
                let result = async {
                    let conn = client.connect(addr).await.map_err(|e| e.to_string())?;
                    let replies = send_h2(
                        conn.stream,
                        vec![
                            get_h2("swap.example.com", "/"),
                            get_h2("swap.example.com", "/b"),
                        ],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    if replies.iter().all(|r| r.status == 200) {
                        Ok(())
                    } else {
                        Err(format!(
                            "{:?}",
                            replies.iter().map(|r| r.status).collect::<Vec<_>>()
                        ))
                    }
                }
                .await;
                match result {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("failure: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for i in 0..12 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let leaf = &leaves[(i + 1) % leaves.len()];
        let (s, v) = r
            .api(
                "PATCH",
                "/v1/certs/site",
                Some(json!({"certificate_chain": leaf.cert_pem, "private_key": leaf.key_pem})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            r.served("swap.example.com").await,
            Some(leaf.cert_der.clone()),
            "served at once after the API answered"
        );
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} failures out of {}", ok + failed);
    assert!(ok > 50, "only {ok} connections ran");
    r.shutdown().await;
}
