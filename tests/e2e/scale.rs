//! Many certificates in one router, in miniature: keys are built on a name's first handshake
//! into a bounded cache, evicted and rebuilt; a bad entry among many is quarantined while the
//! rest load. (The million-certificate figures are in benches/, see the README.)

use serde_json::json;
use terminus_store::{CertRecord, Store};
use terminus_test_support::{Ca, KeyType};
use terminus_tls::{prepare, PrepareOptions};

use crate::harness::{Builder, TestRouter};

/// Writes `n` certificates (`n{i}.example.com`, one name each) into the router's store directory
/// through the API's validation and sealing code, in one transaction.
fn fill(b: &Builder, ca: &Ca, n: usize) {
    let config = terminus_config::StoreConfig::in_dir(b.dir.path().join("data"));
    let store = Store::open(&config).unwrap();
    let provider = terminus_tls::provider(true);
    let now = terminus::unix_now();
    let records: Vec<CertRecord> = (0..n)
        .map(|i| {
            let leaf = ca.leaf(&[&format!("n{i}.example.com")], KeyType::EcdsaP256);
            let p = prepare(
                leaf.cert_pem.as_bytes(),
                leaf.key_pem.as_bytes(),
                &PrepareOptions::default(),
                &provider,
                now,
            )
            .unwrap();
            let name = format!("n{i}");
            CertRecord {
                current: store.seal_version(&name, 1, &p, false, now).unwrap(),
                name,
                previous: None,
                created_at: now,
            }
        })
        .collect();
    store
        .write(|w| {
            for r in &records {
                w.put_cert(r)?;
            }
            Ok(())
        })
        .unwrap();
}

async fn start(n: usize, cache: usize, damage: Option<&str>) -> TestRouter {
    let mut b = Builder::new();
    b.with_store().store_line(&format!("key_cache = {cache}"));
    let ca = Ca::root("Scale Root");
    fill(&b, &ca, n);
    if let Some(name) = damage {
        let config = terminus_config::StoreConfig::in_dir(b.dir.path().join("data"));
        let store = Store::open(&config).unwrap();
        store
            .write(|w| {
                let mut rec = w.cert(name)?.unwrap();
                rec.current.chain[0][40] ^= 0xff;
                w.put_cert(&rec)
            })
            .unwrap();
    }
    b.start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_names_are_built_on_first_handshake_evicted_and_rebuilt() {
    let r = start(300, 8, None).await;
    let certs = r.router.shared.certs.clone();
    assert_eq!(certs.len(), 300);
    assert_eq!(
        certs.built_keys(),
        0,
        "nothing is built before a handshake asks for it"
    );

    // A cold name's first handshake succeeds and builds exactly its key.
    assert!(r.served("n123.example.com").await.is_some());
    assert_eq!(certs.built_keys(), 1);

    // More names than the cache holds: every handshake succeeds, the cache stays bounded.
    for i in 0..40 {
        assert!(
            r.served(&format!("n{i}.example.com")).await.is_some(),
            "n{i}"
        );
    }
    assert!(
        certs.built_keys() <= 16,
        "cache bounded: {}",
        certs.built_keys()
    );
    // The first names were evicted; asking again rebuilds them.
    for i in 0..5 {
        assert!(
            r.served(&format!("n{i}.example.com")).await.is_some(),
            "rebuilt n{i}"
        );
    }
    // Unknown names touch nothing and are counted.
    assert!(r.served("n300.example.com").await.is_none());
    assert_eq!(
        r.metric(
            r#"terminus_tls_handshakes_total{result="failed",version="",reason="unknown_sni"}"#
        )
        .await,
        1.0
    );
    // A change to one name among many reaches handshakes at once.
    let leaf = r.ca.leaf(&["fresh.example.com"], KeyType::EcdsaP256);
    let (s, _) = r
        .api(
            "POST",
            "/v1/certs",
            Some(json!({"certificate_chain": leaf.cert_pem, "private_key": leaf.key_pem})),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(
        r.served("fresh.example.com").await,
        Some(leaf.cert_der.clone())
    );
    r.shutdown().await;
}

#[tokio::test]
async fn one_bad_entry_among_many_is_quarantined_and_the_rest_serve() {
    let r = start(200, 64, Some("n77")).await;
    assert_eq!(r.router.shared.certs.len(), 199);
    assert_eq!(r.router.quarantined.len(), 1);
    assert_eq!(r.router.quarantined[0].name, "n77");
    assert_eq!(r.router.quarantined[0].code, "R17");
    assert!(r.served("n77.example.com").await.is_none());
    assert!(r.served("n76.example.com").await.is_some());
    assert!(r.served("n78.example.com").await.is_some());
    assert_eq!(r.metric("terminus_store_quarantined_total").await, 1.0);
    r.shutdown().await;
}
