//! A private key sent where it does not belong (swapped arguments in a script) never comes back
//! in an answer and never reaches a log line: every field of every route, path segments and
//! query parameters included.

use serde_json::{json, Value};
use terminus_test_support::{logs, KeyType};

use crate::harness::{Builder, TOKEN};

#[tokio::test]
async fn key_material_in_any_field_is_never_echoed_nor_logged() {
    let mut b = Builder::new();
    b.with_store();
    let r = b.start().await;
    let leaf = r.ca.leaf(&["www.example.com"], KeyType::EcdsaP256);
    let secret_leaf = r.ca.leaf(&["secret.example.com"], KeyType::EcdsaP256);
    let key = secret_leaf.key_pem.clone();
    // A line of the key's base64 body: what must never appear anywhere.
    let body_line = key.lines().nth(1).unwrap().to_owned();
    assert!(body_line.len() > 40, "{key}");

    for (method, path, body) in [
        ("POST", "/v1/apps", json!({"name": "web", "backends": []})),
        (
            "POST",
            "/v1/domains",
            json!({"hostname": "www.example.com", "app": "web"}),
        ),
        (
            "POST",
            "/v1/certs",
            json!({"certificate_chain": leaf.cert_pem, "private_key": leaf.key_pem, "name": "site"}),
        ),
    ] {
        let (s, v) = r.api(method, path, Some(body)).await;
        assert!(s < 300, "{method} {path}: {v}");
    }

    let good_cert = json!({"certificate_chain": leaf.cert_pem, "private_key": leaf.key_pem});
    let with = |base: &Value, field: &str, value: Value| {
        let mut v = base.clone();
        v[field] = value;
        v
    };
    let k = || Value::String(key.clone());
    let mut calls: Vec<(&str, String, Value)> = Vec::new();
    for field in [
        "certificate_chain",
        "private_key",
        "name",
        "domains",
        "bypass",
        "checksum",
        "encoding",
    ] {
        calls.push(("POST", "/v1/certs".into(), with(&good_cert, field, k())));
        if field == "domains" {
            calls.push((
                "POST",
                "/v1/certs".into(),
                with(&good_cert, field, json!([key])),
            ));
        }
        if field != "name" && field != "domains" {
            calls.push((
                "PATCH",
                "/v1/certs/site".into(),
                with(&good_cert, field, k()),
            ));
        }
    }
    calls.push((
        "PATCH",
        "/v1/certs/site".into(),
        with(&good_cert, "force", k()),
    ));
    calls.push(("POST", "/v1/certs".into(), with(&good_cert, &key, json!(1))));
    for field in ["hostname", "app"] {
        let base = json!({"hostname": "new.example.com", "app": "web"});
        calls.push(("POST", "/v1/domains".into(), with(&base, field, k())));
    }
    calls.push((
        "PATCH",
        "/v1/domains/www.example.com".into(),
        json!({"cert": key}),
    ));
    calls.push((
        "POST",
        "/v1/apps".into(),
        json!({"name": key, "backends": []}),
    ));
    calls.push((
        "POST",
        "/v1/apps".into(),
        json!({"name": "api", "backends": [key]}),
    ));
    calls.push((
        "POST",
        "/v1/apps".into(),
        json!({"name": "api", "backends": key}),
    ));
    calls.push(("PATCH", "/v1/apps/web".into(), json!({"backends": [key]})));
    let seg = terminus_api::encode(&key);
    for (method, path) in [
        ("GET", format!("/v1/certs/{seg}")),
        ("PATCH", format!("/v1/certs/{seg}")),
        ("DELETE", format!("/v1/certs/{seg}")),
        ("POST", format!("/v1/certs/{seg}/rollback")),
        ("PATCH", format!("/v1/domains/{seg}")),
        ("DELETE", format!("/v1/domains/{seg}")),
        ("PATCH", format!("/v1/apps/{seg}")),
        ("DELETE", format!("/v1/apps/{seg}")),
        ("DELETE", format!("/v1/certs/site?confirm={seg}")),
        ("DELETE", format!("/v1/apps/web?confirm={seg}")),
        ("GET", format!("/v1/domains?cursor={seg}")),
        ("GET", format!("/v1/certs?limit={seg}")),
        ("GET", format!("/v1/certs?{seg}=1")),
        ("GET", format!("/v1/apps/{seg}/acm")),
        ("POST", format!("/v1/apps/{seg}/acm")),
        ("POST", format!("/v1/apps/{seg}/acm/refresh")),
        ("DELETE", format!("/v1/apps/{seg}/acm")),
    ] {
        let body = match method {
            "PATCH" if path.starts_with("/v1/certs") => good_cert.clone(),
            "PATCH" if path.starts_with("/v1/domains") => json!({"cert": null}),
            "PATCH" => json!({"backends": []}),
            _ => Value::Null,
        };
        calls.push((method, path, body));
    }

    for (method, path, body) in &calls {
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(body).unwrap()
        };
        let (status, answer) = r.api_raw(Some(TOKEN), method, path, bytes).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(status >= 400, "{method} {path} was accepted: {answer}");
        assert!(
            !answer.contains(&body_line) && !answer.contains("PRIVATE KEY"),
            "{method} {path} ({status}) echoed key material: {answer}"
        );
    }
    // The CLI with swapped arguments: the key file as the certificate name.
    let key_file = r.dir.path().join("swapped.key");
    std::fs::write(&key_file, &key).unwrap();
    let (crt, _) = leaf.write(r.dir.path(), "swapped", &[]);
    let (code, out, err) = r
        .cli(&[
            "certs:add",
            &crt.display().to_string(),
            &key_file.display().to_string(),
            &format!("--name={key}"),
        ])
        .await;
    assert_eq!(code, 1);
    assert!(
        !out.contains(&body_line) && !err.contains(&body_line),
        "{out}{err}"
    );

    let lines = logs::all();
    assert!(
        lines.iter().any(|l| l.contains("terminus::audit")),
        "the audit log is captured"
    );
    for line in &lines {
        assert!(
            !line.contains(&body_line) && !line.contains("PRIVATE KEY"),
            "a log line holds key material: {line}"
        );
    }
    r.shutdown().await;
}
