//! What certs:add and certs:update refuse (each: a 4xx, a message saying what to do, nothing
//! changed), the API's own refusals, and chain fix-up.

use serde_json::{json, Value};
use terminus_test_support::{pki::san_names, Ca, KeyType, Leaf, TempDir};
use tokio::process::Command;

use crate::harness::{Builder, TestRouter};

fn upload(cert: &str, key: &str) -> Value {
    json!({ "certificate_chain": cert, "private_key": key })
}

async fn openssl(dir: &TempDir, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir.path())
        .output()
        .await
        .expect("openssl is required: apt-get install -y openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn read(dir: &TempDir, name: &str) -> String {
    std::fs::read_to_string(dir.path().join(name)).unwrap()
}

/// Everything an operator could see of the store and of what is served.
async fn snapshot(r: &TestRouter) -> (Value, Option<Vec<u8>>) {
    let (status, certs) = r.api("GET", "/v1/certs", None).await;
    assert_eq!(status, 200);
    (certs, r.served("www.example.com").await.map(|c| c.to_vec()))
}

#[tokio::test]
async fn every_refusal_names_the_problem_and_changes_nothing() {
    let mut b = Builder::new();
    b.with_store();
    let r = b.start().await;
    let (s, _) = r
        .api(
            "POST",
            "/v1/apps",
            Some(json!({"name": "web", "backends": []})),
        )
        .await;
    assert_eq!(s, 201);
    r.api(
        "POST",
        "/v1/domains",
        Some(json!({"hostname": "www.example.com", "app": "web"})),
    )
    .await;
    let good = r.ca.leaf(&["www.example.com"], KeyType::EcdsaP256);
    let (s, v) = r
        .api(
            "POST",
            "/v1/certs",
            Some(json!({
                "certificate_chain": good.cert_pem, "private_key": good.key_pem, "name": "site"
            })),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let before = snapshot(&r).await;
    assert!(before.1.is_some());

    let other = r.ca.leaf(&["other.example.com"], KeyType::EcdsaP256);
    let dir = TempDir::new("refusals");
    // An RSA-1024 certificate and a passphrase-protected key, made the way users make them.
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:1024",
            "-nodes",
            "-keyout",
            "small.key",
            "-out",
            "small.crt",
            "-days",
            "30",
            "-subj",
            "/CN=www.example.com",
        ],
    )
    .await;
    openssl(
        &dir,
        &[
            "pkcs8",
            "-topk8",
            "-in",
            "small.key",
            "-out",
            "enc.key",
            "-passout",
            "pass:secret",
        ],
    )
    .await;
    openssl(
        &dir,
        &[
            "rsa",
            "-in",
            "small.key",
            "-out",
            "legacy-enc.key",
            "-aes256",
            "-passout",
            "pass:secret",
            "-traditional",
        ],
    )
    .await;
    let small_crt = read(&dir, "small.crt").await;
    let small_key = read(&dir, "small.key").await;
    let enc_key = read(&dir, "enc.key").await;
    let legacy_enc_key = read(&dir, "legacy-enc.key").await;
    let expired =
        r.ca.leaf_with(&["www.example.com"], KeyType::EcdsaP256, |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        });

    let truncated = &good.cert_pem[..good.cert_pem.len() - 40];
    let cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        (
            "malformed PEM",
            upload(truncated, &good.key_pem),
            422,
            "malformed_pem",
            "-----END",
        ),
        (
            "no certificate",
            upload("", &good.key_pem),
            422,
            "no_certificate",
            "BEGIN CERTIFICATE",
        ),
        (
            "no key",
            upload(&good.cert_pem, ""),
            422,
            "no_key",
            "PRIVATE KEY",
        ),
        (
            "two keys",
            upload(
                &good.cert_pem,
                &format!("{}{}", good.key_pem, other.key_pem),
            ),
            422,
            "multiple_keys",
            "exactly one",
        ),
        (
            "wrong key",
            upload(&good.cert_pem, &other.key_pem),
            422,
            "key_mismatch",
            "the key the certificate was issued for",
        ),
        (
            "encrypted key",
            upload(&small_crt, &enc_key),
            422,
            "encrypted_key",
            "openssl rsa -in server.pass.key -out server.key",
        ),
        (
            "legacy encrypted key",
            upload(&small_crt, &legacy_enc_key),
            422,
            "encrypted_key",
            "passphrase",
        ),
        (
            "RSA 1024",
            upload(&small_crt, &small_key),
            422,
            "unsupported_key",
            "RSA key of 1024 bits; at least 2048",
        ),
        (
            "expired",
            upload(&expired.cert_pem, &expired.key_pem),
            422,
            "expired",
            "expired on 2021-01-01",
        ),
        (
            "covers no requested domain",
            json!({"certificate_chain": other.cert_pem, "private_key": other.key_pem, "domains": ["www.example.com"]}),
            422,
            "no_domain_covered",
            "it covers: other.example.com",
        ),
        (
            "duplicate name",
            json!({"certificate_chain": other.cert_pem, "private_key": other.key_pem, "name": "site"}),
            409,
            "duplicate_name",
            "certs:update",
        ),
        (
            "bad name",
            json!({"certificate_chain": other.cert_pem, "private_key": other.key_pem, "name": "Bad Name"}),
            422,
            "invalid_name",
            "a-z",
        ),
        (
            "checksum mismatch",
            json!({"certificate_chain": other.cert_pem, "private_key": other.key_pem, "checksum": format!("SHA256:{}", "0".repeat(64))}),
            422,
            "R17",
            "checksum error (R17)",
        ),
        (
            "malformed checksum",
            json!({"certificate_chain": other.cert_pem, "private_key": other.key_pem, "checksum": "MD5:abc"}),
            422,
            "invalid_checksum",
            "SHA256:",
        ),
        (
            "unknown field",
            json!({"certificate_chain": other.cert_pem, "private_key": other.key_pem, "passphrase": "x"}),
            400,
            "invalid_json",
            "unknown field `passphrase`",
        ),
        (
            "missing field",
            json!({"private_key": other.key_pem}),
            400,
            "invalid_json",
            "missing field `certificate_chain`",
        ),
        (
            "unknown domain",
            json!({"certificate_chain": other.cert_pem, "private_key": other.key_pem, "domains": ["other.example.com"]}),
            422,
            "unknown_domain",
            "domains:add",
        ),
    ];
    for (what, body, status, id, hint) in cases {
        let (s, v) = r.api("POST", "/v1/certs", Some(body.clone())).await;
        assert_eq!(s, status, "{what}: {v}");
        assert_eq!(v["id"], id, "{what}: {v}");
        let message = v["message"].as_str().unwrap();
        assert!(message.contains(hint), "{what}: {message}");
        // certs:update checks the same things (bar names and domains) the same way.
        if !matches!(
            id,
            "duplicate_name" | "invalid_name" | "no_domain_covered" | "unknown_domain"
        ) {
            let mut update = body;
            update.as_object_mut().unwrap().remove("name");
            update.as_object_mut().unwrap().remove("domains");
            let (s, v) = r.api("PATCH", "/v1/certs/site", Some(update)).await;
            assert_eq!(
                (s, v["id"].as_str().unwrap()),
                (status, id),
                "update, {what}: {v}"
            );
        }
        assert_eq!(snapshot(&r).await, before, "{what} changed something");
    }

    // A certificate that is not valid yet is accepted, with a warning.
    let future =
        r.ca.leaf_with(&["future.example.com"], KeyType::EcdsaP256, |p| {
            p.not_before = rcgen::date_time_ymd(2099, 1, 1);
            p.not_after = rcgen::date_time_ymd(2100, 1, 1);
        });
    let (s, v) = r
        .api(
            "POST",
            "/v1/certs",
            Some(upload(&future.cert_pem, &future.key_pem)),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .contains("not valid until 2099-01-01"),
        "{v}"
    );

    // Authentication, body size, routes.
    let (s, v) = r.api_as(None, "GET", "/v1/certs", None).await;
    assert_eq!(
        (s, v),
        (
            401,
            json!({"id": "unauthorized", "message": "unauthorized"})
        )
    );
    let (s, _) = r.api_as(Some("wrong"), "GET", "/v1/certs", None).await;
    assert_eq!(s, 401);
    let (s, v) = r
        .api_raw(
            Some(crate::harness::TOKEN),
            "POST",
            "/v1/certs",
            vec![b' '; 300 * 1024],
        )
        .await;
    assert_eq!(s, 413, "{v:?}");
    let (s, _) = r.api("DELETE", "/v1/certs", None).await;
    assert_eq!(s, 405);
    let (s, _) = r.api("GET", "/v1/nothing", None).await;
    assert_eq!(s, 404);
    let (s, v) = r.api("GET", "/v1/certs/nope", None).await;
    assert_eq!((s, v["id"].as_str()), (404, Some("not_found")));
    r.shutdown().await;
}

#[tokio::test]
async fn routes_refuse_bad_input() {
    let mut b = Builder::new();
    b.with_store();
    let r = b.start().await;
    let cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        (
            "POST",
            "/v1/apps",
            json!({"name": "web", "backends": ["localhost"]}),
            422,
            "invalid_backend",
        ),
        (
            "POST",
            "/v1/apps",
            json!({"name": "Web"}),
            422,
            "invalid_name",
        ),
        (
            "POST",
            "/v1/domains",
            json!({"hostname": "*.com", "app": "web"}),
            422,
            "invalid_domain",
        ),
        (
            "POST",
            "/v1/domains",
            json!({"hostname": "a.example.com", "app": "nope"}),
            422,
            "unknown_app",
        ),
        (
            "PATCH",
            "/v1/domains/a.example.com",
            json!({"cert": null}),
            404,
            "not_found",
        ),
        (
            "PATCH",
            "/v1/apps/nope",
            json!({"backends": []}),
            404,
            "not_found",
        ),
        ("DELETE", "/v1/apps/nope", json!(null), 404, "not_found"),
    ];
    for (method, path, body, status, id) in cases {
        let body = (!body.is_null()).then_some(body);
        let (s, v) = r.api(method, path, body).await;
        assert_eq!(
            (s, v["id"].as_str().unwrap_or("")),
            (status, id),
            "{method} {path}: {v}"
        );
    }
    let (s, _) = r
        .api(
            "POST",
            "/v1/apps",
            Some(json!({"name": "web", "backends": ["127.0.0.1:1"]})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, v) = r
        .api("POST", "/v1/apps", Some(json!({"name": "web"})))
        .await;
    assert_eq!((s, v["id"].as_str().unwrap()), (409, "duplicate_app"));
    let (s, _) = r
        .api(
            "POST",
            "/v1/domains",
            Some(json!({"hostname": "A.Example.com.", "app": "web"})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, v) = r
        .api(
            "POST",
            "/v1/domains",
            Some(json!({"hostname": "a.example.com", "app": "web"})),
        )
        .await;
    assert_eq!(
        (s, v["id"].as_str().unwrap()),
        (409, "duplicate_domain"),
        "names are case-insensitive, trailing dot ignored"
    );
    let wrong = r.ca.leaf(&["b.example.com"], KeyType::EcdsaP256);
    let (s, _) = r.api("POST", "/v1/certs", Some(json!({"certificate_chain": wrong.cert_pem, "private_key": wrong.key_pem, "name": "b"}))).await;
    assert_eq!(s, 201);
    let (s, v) = r
        .api(
            "PATCH",
            "/v1/domains/a.example.com",
            Some(json!({"cert": "b"})),
        )
        .await;
    assert_eq!(
        (s, v["id"].as_str().unwrap()),
        (422, "cert_does_not_cover_domain"),
        "{v}"
    );
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("covers b.example.com, not a.example.com"));
    r.shutdown().await;
}

struct Pki {
    root: Ca,
    inter: Ca,
    leaf: Leaf,
}

fn pki() -> Pki {
    let root = Ca::root("Chain Root");
    let inter = root.intermediate("Chain Intermediate");
    let leaf = inter.leaf(&["chain.example.com"], KeyType::EcdsaP256);
    Pki { root, inter, leaf }
}

async fn add(r: &TestRouter, chain: String, key: &str, bypass: bool) -> Value {
    let (s, v) = r
        .api(
            "POST",
            "/v1/certs",
            Some(json!({"certificate_chain": chain, "private_key": key, "bypass": bypass})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    v
}

async fn served_chain(r: &TestRouter) -> Vec<Vec<String>> {
    let conn = terminus_test_support::TlsClient::new(terminus_test_support::ClientOptions::sni(
        "chain.example.com",
    ))
    .connect(r.https())
    .await
    .unwrap();
    let mut out = vec![san_names(conn.served.as_ref().unwrap())];
    for c in &conn.intermediates {
        out.push(vec![subject_cn(c)]);
    }
    out
}

fn subject_cn(der: &[u8]) -> String {
    terminus_tls::CertInfo::parse(der).unwrap().subject
}

#[tokio::test]
async fn chains_are_put_in_order_and_reported() {
    let mut b = Builder::new();
    b.with_store();
    let r = b.start().await;
    let p = pki();
    let unrelated = Ca::root("Unrelated Root");

    // Shuffled, with the root, a duplicate intermediate and an unrelated certificate.
    let upload = format!(
        "{}{}{}{}{}",
        p.root.cert_pem, p.inter.cert_pem, unrelated.cert_pem, p.leaf.cert_pem, p.inter.cert_pem
    );
    let v = add(&r, upload, &p.leaf.key_pem, false).await;
    let mut dropped: Vec<(String, String)> = v["dropped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["subject"].as_str().unwrap().into(),
                d["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    dropped.sort();
    assert_eq!(
        dropped,
        [
            ("CN=Chain Intermediate".into(), "duplicate".into()),
            (
                "CN=Chain Root".into(),
                "root certificate (clients already hold it)".into()
            ),
            ("CN=Unrelated Root".into(), "not part of the chain".into()),
        ]
    );
    assert_eq!(
        v["certificate"]["trusted"], false,
        "a private root is not in the Mozilla set"
    );
    assert_eq!(
        served_chain(&r).await,
        [
            vec!["chain.example.com".to_owned()],
            vec!["CN=Chain Intermediate".into()]
        ]
    );
    let name = v["certificate"]["name"].as_str().unwrap().to_owned();
    r.api("DELETE", &format!("/v1/certs/{name}"), None).await;

    // Missing intermediate: accepted, untrusted, and the reply says what is missing.
    let v = add(&r, p.leaf.cert_pem.clone(), &p.leaf.key_pem, false).await;
    assert_eq!(v["certificate"]["trusted"], false);
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .contains("issued by 'CN=Chain Intermediate', which was not uploaded"),
        "{v}"
    );
    let name = v["certificate"]["name"].as_str().unwrap().to_owned();
    r.api("DELETE", &format!("/v1/certs/{name}"), None).await;

    // --bypass keeps the upload exactly, root and order included.
    let upload = format!("{}{}{}", p.leaf.cert_pem, p.root.cert_pem, p.inter.cert_pem);
    let v = add(&r, upload, &p.leaf.key_pem, true).await;
    assert!(v["dropped"].as_array().unwrap().is_empty());
    assert_eq!(v["certificate"]["bypass"], true);
    assert_eq!(
        served_chain(&r).await,
        [
            vec!["chain.example.com".to_owned()],
            vec!["CN=Chain Root".into()],
            vec!["CN=Chain Intermediate".into()]
        ]
    );
    r.shutdown().await;
}
