//! Listings at scale: 20,000 domains page through the API in host order, each exactly once,
//! and `terminus domains` lists them all; certificates page the same way.

use std::collections::BTreeSet;

use terminus_store::{AppRecord, DomainRecord, Store};
use terminus_test_support::KeyType;

use crate::harness::Builder;

const DOMAINS: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_domains_page_in_order() {
    let mut b = Builder::new();
    b.with_store();
    // Written straight into the store in one transaction, as if added over months.
    let dir = b.dir.path().join("data");
    {
        let store = Store::open(&terminus_config::StoreConfig::in_dir(dir)).unwrap();
        store
            .write(|w| {
                w.put_app(&AppRecord {
                    name: "web".into(),
                    backends: vec!["127.0.0.1:9".into()],
                    created_at: 0,
                })?;
                for i in 0..DOMAINS {
                    w.put_domain(&DomainRecord {
                        host: format!("d{i:05}.example.com"),
                        app: "web".into(),
                        cert: None,
                        dns_target: format!("t{i}.terminusdns.test"),
                        created_at: 0,
                    })?;
                }
                Ok(())
            })
            .unwrap();
    }
    let r = b.start().await;
    let leaf = r.ca.leaf(&["*.example.com"], KeyType::EcdsaP256);
    let (s, v) = r
        .api(
            "POST",
            "/v1/certs",
            Some(serde_json::json!({"certificate_chain": leaf.cert_pem, "private_key": leaf.key_pem, "name": "wild"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    let client = r.api_client();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = client
            .domains_page(Some(1000), cursor.as_deref())
            .await
            .unwrap();
        pages += 1;
        assert!(page.items.len() <= 1000);
        seen.extend(page.items.into_iter().map(|d| {
            assert_eq!(d.cert.as_deref(), Some("wild"));
            d.hostname
        }));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, DOMAINS / 1000);
    assert_eq!(seen.len(), DOMAINS);
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "host order, no repeats"
    );
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), DOMAINS);

    // The CLI pages through all of it, or stops at --limit.
    let (code, out, err) = r.cli(&["domains"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), DOMAINS + 2);
    let (code, out, _) = r.cli(&["domains", "--limit", "1500"]).await;
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1500 + 2);
    let (_, out, _) = r.cli(&["certs"]).await;
    assert!(
        out.lines()
            .nth(2)
            .unwrap()
            .ends_with(&format!("SNI   {DOMAINS}")),
        "{out}"
    );
    r.shutdown().await;
}

#[tokio::test]
async fn certificates_page_by_name() {
    let mut b = Builder::new();
    b.with_store();
    b.cert("from-config", &["c.example.com"], KeyType::EcdsaP256);
    let r = b.start().await;
    for name in ["a", "b", "d", "e"] {
        let leaf =
            r.ca.leaf(&[&format!("{name}.example.com")], KeyType::EcdsaP256);
        let (s, v) = r
            .api(
                "POST",
                "/v1/certs",
                Some(serde_json::json!({"certificate_chain": leaf.cert_pem, "private_key": leaf.key_pem, "name": name})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    let client = r.api_client();
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = client.certs_page(Some(2), cursor.as_deref()).await.unwrap();
        names.extend(page.items.into_iter().map(|c| c.name));
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(names, ["a", "b", "d", "e", "from-config"]);
    let all = client.certs(1000, None).await.unwrap();
    assert_eq!(all.len(), 5);
    r.shutdown().await;
}
