//! Which certificate a live domain gets when exact and wildcard domains, pins and certificate
//! names meet, driven through the CLI as an operator would, and the guard on `certs:update`.

use std::path::PathBuf;

use terminus_test_support::{Backend, KeyType, Leaf};

use crate::harness::{Builder, TestRouter};

fn write(r: &TestRouter, stem: &str, leaf: &Leaf) -> (String, String) {
    let (crt, key): (PathBuf, PathBuf) = leaf.write(r.dir.path(), stem, &[]);
    (crt.display().to_string(), key.display().to_string())
}

async fn ok(r: &TestRouter, args: &[&str]) -> String {
    let (code, out, err) = r.cli(args).await;
    assert_eq!(code, 0, "terminus {args:?} failed: {err}{out}");
    out
}

async fn started_with_app(backend: &Backend) -> TestRouter {
    let mut b = Builder::new();
    b.with_store();
    let r = b.start().await;
    ok(
        &r,
        &["apps:create", "web", "--backend", &backend.addr.to_string()],
    )
    .await;
    r
}

/// A wildcard domain pinned to a wildcard certificate must not take over hosts that have a
/// domain entry of their own: the most specific domain entry decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_domains_pin_applies_only_where_it_is_the_most_specific_entry() {
    let web = Backend::echo("web").await;
    let r = started_with_app(&web).await;
    for host in ["www.example.com", "shop.example.com", "*.example.com"] {
        ok(&r, &["domains:add", host, "--app", "web"]).await;
    }
    let www = r.ca.leaf(&["www.example.com"], KeyType::EcdsaP256);
    let shop = r.ca.leaf(&["shop.example.com"], KeyType::EcdsaP256);
    let wild = r.ca.leaf(&["*.example.com"], KeyType::EcdsaP256);
    let (c, k) = write(&r, "www", &www);
    ok(
        &r,
        &[
            "certs:add",
            &c,
            &k,
            "--name",
            "www",
            "--domains",
            "www.example.com",
        ],
    )
    .await;
    let (c, k) = write(&r, "shop", &shop);
    ok(&r, &["certs:add", &c, &k, "--name", "shop"]).await;
    let (c, k) = write(&r, "wild", &wild);
    ok(
        &r,
        &[
            "certs:add",
            &c,
            &k,
            "--name",
            "wild",
            "--domains",
            "*.example.com",
        ],
    )
    .await;

    assert_eq!(
        r.served("www.example.com").await,
        Some(www.cert_der.clone())
    );
    assert_eq!(
        r.served("shop.example.com").await,
        Some(shop.cert_der.clone()),
        "shop.example.com has a domain entry of its own: the wildcard's pin must not apply"
    );
    assert_eq!(
        r.served("other.example.com").await,
        Some(wild.cert_der.clone()),
        "a host only the wildcard domain covers gets the wildcard's pin"
    );

    ok(&r, &["domains:update", "www.example.com", "--no-cert"]).await;
    assert_eq!(
        r.served("www.example.com").await,
        Some(www.cert_der.clone()),
        "unpinned, www.example.com is matched by certificate names: exact before wildcard"
    );

    // The listing tells the same story as the handshakes.
    let json: serde_json::Value =
        serde_json::from_str(&ok(&r, &["domains", "--json"]).await).unwrap();
    let cert_of = |host: &str| {
        json.as_array()
            .unwrap()
            .iter()
            .find(|d| d["hostname"] == host)
            .map(|d| (d["cert"].clone(), d["pinned"].clone()))
            .unwrap()
    };
    assert_eq!(cert_of("www.example.com"), ("www".into(), false.into()));
    assert_eq!(cert_of("shop.example.com"), ("shop".into(), false.into()));
    assert_eq!(cert_of("*.example.com"), ("wild".into(), true.into()));
    r.shutdown().await;
}

/// `certs:update` with a certificate that no longer covers the domains pinned to it is refused,
/// naming them, and changes nothing; `--force` does it anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_update_refuses_to_uncover_pinned_domains() {
    let web = Backend::echo("web").await;
    let r = started_with_app(&web).await;
    for host in ["www.example.com", "shop.example.com"] {
        ok(&r, &["domains:add", host, "--app", "web"]).await;
    }
    let v1 =
        r.ca.leaf(&["www.example.com", "shop.example.com"], KeyType::EcdsaP256);
    let (c, k) = write(&r, "v1", &v1);
    ok(
        &r,
        &[
            "certs:add",
            &c,
            &k,
            "--name",
            "site",
            "--domains",
            "www.example.com,shop.example.com",
        ],
    )
    .await;

    let v2 = r.ca.leaf(&["www.example.com"], KeyType::EcdsaP256);
    let (c2, k2) = write(&r, "v2", &v2);
    let (code, out, err) = r.cli(&["certs:update", "--name", "site", &c2, &k2]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("shop.example.com"), "{err}");
    assert!(!err.contains("www.example.com,"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(
        r.served("shop.example.com").await,
        Some(v1.cert_der.clone()),
        "a refused update changes nothing"
    );
    let (status, body) = r
        .api(
            "PATCH",
            "/v1/certs/site",
            Some(serde_json::json!({
                "certificate_chain": std::fs::read_to_string(&c2).unwrap(),
                "private_key": std::fs::read_to_string(&k2).unwrap(),
            })),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["id"], "cert_does_not_cover_domain");

    let out = ok(&r, &["certs:update", "--name", "site", &c2, &k2, "--force"]).await;
    assert!(out.contains("shop.example.com"), "{out}");
    assert_eq!(r.served("www.example.com").await, Some(v2.cert_der.clone()));
    r.shutdown().await;
}
