//! The certificate lifecycle through the `terminus` CLI against a running router: every command,
//! its table and JSON output, and what handshakes see after each change.

use std::path::PathBuf;

use terminus_test_support::{get_h2, send_h2, Backend, ClientOptions, KeyType, Leaf, TlsClient};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_end_to_end() {
    let web = Backend::echo("web").await;
    let web2 = Backend::echo("web2").await;
    let mut b = Builder::new();
    b.with_store();
    let r = b.start().await;

    // Apps and domains.
    let out = ok(
        &r,
        &["apps:create", "web", "--backend", &web.addr.to_string()],
    )
    .await;
    assert_eq!(
        out.trim(),
        format!("Created web with backends {}", web.addr)
    );
    let out = ok(&r, &["domains:add", "www.example.com", "--app", "web"]).await;
    assert!(
        out.starts_with(
            "Added www.example.com to web\nConfigure your DNS to point www.example.com to "
        ),
        "{out}"
    );
    assert!(out.trim_end().ends_with(".terminusdns.test"), "{out}");
    ok(&r, &["domains:add", "shop.example.com", "--app", "web"]).await;

    // certs:add, pinned to www by --domains.
    let v1 =
        r.ca.leaf(&["www.example.com", "shop.example.com"], KeyType::EcdsaP256);
    let (crt1, key1) = write(&r, "v1", &v1);
    let out = ok(
        &r,
        &[
            "certs:add",
            &crt1,
            &key1,
            "--name",
            "site",
            "--domains",
            "www.example.com",
        ],
    )
    .await;
    assert!(out.starts_with("site added\n"), "{out}");
    assert!(
        out.contains("Serving www.example.com with this certificate"),
        "{out}"
    );
    assert!(
        out.contains("Certificate details:\nCommon Name(s): www.example.com\nExpires At:     "),
        "{out}"
    );
    assert!(
        out.contains("\nIssuer:         CN=Terminus Test Root\n"),
        "{out}"
    );
    assert!(
        out.contains("\nSubject:        CN=www.example.com\n"),
        "{out}"
    );
    assert!(out.contains("\nTrusted:        False\n"), "{out}");
    assert_eq!(r.served("www.example.com").await, Some(v1.cert_der.clone()));
    assert_eq!(
        r.served("shop.example.com").await,
        Some(v1.cert_der.clone())
    );

    // A request through the new certificate reaches the app.
    let conn = TlsClient::new(ClientOptions::sni("www.example.com").http2())
        .connect(r.https())
        .await
        .unwrap();
    let reply = send_h2(conn.stream, vec![get_h2("www.example.com", "/")])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-backend"), Some("web"));

    // certs: the Heroku table.
    let out = ok(&r, &["certs"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "Name  Common Name(s)   Expires               Trusted  Type  Domains"
    );
    assert_eq!(
        lines[1],
        "────  ───────────────  ────────────────────  ───────  ────  ───────"
    );
    assert!(lines[2].starts_with("site  www.example.com  "), "{out}");
    assert!(lines[2].ends_with(" UTC  False    SNI   2"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&r, &["certs", "--json"]).await).unwrap();
    assert_eq!(json[0]["name"], "site");
    assert_eq!(json[0]["trusted"], false);
    assert_eq!(json[0]["type"], "SNI");
    assert_eq!(json[0]["version"], 1);
    assert!(json[0]["checksum"].as_str().unwrap().starts_with("SHA256:"));

    // certs:info --show-domains: every name, key, serial, version, status, the checksum of the
    // files as uploaded (what `cat crt key | sha256sum` gives).
    let out = ok(&r, &["certs:info", "--name", "site", "--show-domains"]).await;
    assert!(
        out.contains("Domains:\n  shop.example.com\n  www.example.com\n"),
        "{out}"
    );
    assert!(
        out.contains("\nNames:          shop.example.com, www.example.com\n"),
        "{out}"
    );
    assert!(out.contains("\nKey Type:       ECDSA P-256\n"), "{out}");
    assert!(out.contains("\nSerial:         "), "{out}");
    assert!(out.contains("\nVersion:        1\n"), "{out}");
    assert!(out.contains("\nStatus:         served\n"), "{out}");
    let bundle = [std::fs::read(&crt1).unwrap(), std::fs::read(&key1).unwrap()].concat();
    let sha = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&bundle)?;
            child.wait_with_output()
        })
        .unwrap();
    let hex = String::from_utf8_lossy(&sha.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert!(
        out.contains(&format!("\nChecksum:       SHA256:{hex}\n")),
        "{out}"
    );

    // domains: the table shows the pin and the match.
    let out = ok(&r, &["domains"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("Domain            App  Certificate  Chosen By  DNS Target"),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("www.example.com   web  site         pinned     ")),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("shop.example.com  web  site         name       ")),
        "{out}"
    );

    // certs:update, then certs:rollback, each seen by new handshakes.
    let v2 =
        r.ca.leaf(&["www.example.com", "shop.example.com"], KeyType::EcdsaP256);
    let (crt2, key2) = write(&r, "v2", &v2);
    let out = ok(&r, &["certs:update", "--name", "site", &crt2, &key2]).await;
    assert!(out.starts_with("Updated certificate site\n"), "{out}");
    assert!(
        out.contains("Updated certificate details:\nCommon Name(s): www.example.com"),
        "{out}"
    );
    assert_eq!(r.served("www.example.com").await, Some(v2.cert_der.clone()));
    let out = ok(&r, &["certs:rollback", "--name", "site"]).await;
    assert!(
        out.starts_with("Rolled back certificate site to version 1\n"),
        "{out}"
    );
    assert_eq!(r.served("www.example.com").await, Some(v1.cert_der.clone()));

    // domains:update pins shop to another certificate; --no-cert unpins.
    let other = r.ca.leaf(&["*.example.com"], KeyType::EcdsaP256);
    let (crt3, key3) = write(&r, "other", &other);
    let out = ok(&r, &["certs:add", &crt3, &key3, "--json"]).await;
    let generated = serde_json::from_str::<serde_json::Value>(&out).unwrap()["certificate"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        generated.split('-').count(),
        3,
        "adjective-noun-12345: {generated}"
    );
    assert_eq!(
        r.served("shop.example.com").await,
        Some(v1.cert_der.clone()),
        "exact beats wildcard"
    );
    let out = ok(
        &r,
        &["domains:update", "shop.example.com", "--cert", &generated],
    )
    .await;
    assert_eq!(
        out.trim(),
        format!("Updated shop.example.com to use the {generated} certificate")
    );
    assert_eq!(
        r.served("shop.example.com").await,
        Some(other.cert_der.clone())
    );
    let out = ok(&r, &["domains"]).await;
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("shop.example.com  web  {generated}"))),
        "{out}"
    );
    ok(&r, &["domains:update", "shop.example.com", "--no-cert"]).await;
    assert_eq!(
        r.served("shop.example.com").await,
        Some(v1.cert_der.clone())
    );

    // A pin to a certificate that does not cover the domain is refused.
    let (code, _, err) = r
        .cli(&["domains:update", "shop.example.com", "--cert", "nope"])
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("no certificate named 'nope'"), "{err}");

    // certs:remove: without --confirm, the impact and how to confirm, nothing changed; the
    // domains fall back to SNI matching (the wildcard), then nothing.
    let (code, out, err) = r.cli(&["certs:remove", "--name", "site"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("--confirm site") && err.contains("2 domains"),
        "{err}"
    );
    let impact: Vec<&str> = out.lines().collect();
    assert!(impact[0].starts_with("Domain  "), "{out}");
    assert!(
        impact
            .iter()
            .any(|l| l.starts_with("www.example.com   web  site ")
                && l.ends_with(&format!("web       {generated}"))),
        "{out}"
    );
    assert_eq!(r.served("www.example.com").await, Some(v1.cert_der.clone()));
    let (code, out, _) = r.cli(&["certs:remove", "--name", "site", "--json"]).await;
    assert_eq!(code, 1);
    let body: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(body["id"], "confirmation_required");
    assert_eq!(body["affected"][1]["hostname"], "www.example.com");
    assert_eq!(body["affected"][1]["then_cert"], generated.as_str());
    assert_eq!(body["affected"][1]["then_selected_by"], "wildcard");
    let out = ok(&r, &["certs:remove", "--name", "site", "--confirm", "site"]).await;
    assert!(out.trim().ends_with("Removed certificate site"), "{out}");
    assert_eq!(
        r.served("www.example.com").await,
        Some(other.cert_der.clone())
    );
    ok(
        &r,
        &[
            "certs:remove",
            "--name",
            &generated,
            "--confirm",
            &generated,
        ],
    )
    .await;
    assert_eq!(r.served("www.example.com").await, None);

    // Apps: list, update, destroy (with its domains).
    let out = ok(&r, &["apps"]).await;
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("web   {}  2", web.addr))),
        "{out}"
    );
    let out = ok(
        &r,
        &["apps:update", "web", "--backend", &web2.addr.to_string()],
    )
    .await;
    assert_eq!(out.trim(), format!("Updated web: backends {}", web2.addr));
    let (code, _, err) = r.cli(&["apps:destroy", "web"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("--confirm web"), "{err}");
    let out = ok(&r, &["apps:destroy", "web", "--confirm", "web"]).await;
    assert!(
        out.trim()
            .ends_with("Destroyed web and its domains shop.example.com, www.example.com"),
        "{out}"
    );
    let out = ok(&r, &["domains"]).await;
    assert_eq!(out.lines().count(), 2, "only the headers are left: {out}");

    // Errors: the server's message, exit 1; with --json, the API's JSON and the same status.
    let (code, _, err) = r.cli(&["certs:info", "--name", "nope"]).await;
    assert_eq!(code, 1);
    assert_eq!(err.trim(), "error: no certificate named 'nope'");
    let (code, out, _) = r.cli(&["certs:info", "--name", "nope", "--json"]).await;
    assert_eq!(code, 1);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!({"id": "not_found", "message": "no certificate named 'nope'"})
    );
    let (code, _, err) = r.cli(&["certs:rollback", "--name", "nope"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("no certificate named 'nope'"), "{err}");
    r.shutdown().await;
}

#[tokio::test]
async fn cli_reports_unauthorized_and_unreachable() {
    let mut b = Builder::new();
    b.with_store();
    let r = b.start().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_terminus"))
        .args(["certs", "--url", &r.api_url(), "--token", "wrong"])
        .env_remove("TERMINUS_TOKEN")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: unauthorized (set TERMINUS_TOKEN or pass --token)"
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_terminus"))
        .args(["certs", "--url", "http://127.0.0.1:1"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot reach the admin API at http://127.0.0.1:1"));
    r.shutdown().await;
}

#[tokio::test]
async fn rollback_refuses_an_expired_previous_version() {
    use serde_json::json;
    let mut b = Builder::new();
    b.with_store();
    let r = b.start().await;
    let now = std::time::SystemTime::now();
    let soon =
        r.ca.leaf_with(&["exp.example.com"], KeyType::EcdsaP256, |p| {
            let in_two_seconds =
                now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 + 2;
            p.not_after = time::OffsetDateTime::from_unix_timestamp(in_two_seconds).unwrap();
        });
    let later = r.ca.leaf(&["exp.example.com"], KeyType::EcdsaP256);
    let (s, v) = r.api("POST", "/v1/certs", Some(json!({"certificate_chain": soon.cert_pem, "private_key": soon.key_pem, "name": "exp"}))).await;
    assert_eq!(s, 201, "{v}");
    let (s, _) = r
        .api(
            "PATCH",
            "/v1/certs/exp",
            Some(json!({"certificate_chain": later.cert_pem, "private_key": later.key_pem})),
        )
        .await;
    assert_eq!(s, 200);
    // Expired means past the not-after second.
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let (s, v) = r.api("POST", "/v1/certs/exp/rollback", None).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["id"], "previous_version_expired");
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("rolling back would serve an expired certificate"));
    assert_eq!(
        r.served("exp.example.com").await,
        Some(later.cert_der.clone())
    );
    r.shutdown().await;
}

#[tokio::test]
async fn expired_certificates_no_domain_uses_are_cleaned_up_after_the_retention() {
    use serde_json::json;
    let mut b = Builder::new();
    b.with_store();
    let r = b.start().await;
    r.api("POST", "/v1/apps", Some(json!({"name": "web"})))
        .await;
    r.api(
        "POST",
        "/v1/domains",
        Some(json!({"hostname": "used.example.com", "app": "web"})),
    )
    .await;
    let now = terminus::unix_now();
    for (name, host) in [
        ("unused", "unused.example.com"),
        ("used", "used.example.com"),
    ] {
        let leaf = r.ca.leaf_with(&[host], KeyType::EcdsaP256, |p| {
            p.not_after = time::OffsetDateTime::from_unix_timestamp(now + 86400).unwrap();
        });
        let (s, _) = r.api("POST", "/v1/certs", Some(json!({"certificate_chain": leaf.cert_pem, "private_key": leaf.key_pem, "name": name}))).await;
        assert_eq!(s, 201);
    }
    let control = r.router.control.clone();
    // Not expired yet, then expired but within the 30-day retention: nothing goes.
    assert!(control.cleanup_expired(now).unwrap().is_empty());
    assert!(control
        .cleanup_expired(now + 20 * 86400)
        .unwrap()
        .is_empty());
    // Expired for longer than the retention: only the one no domain uses is deleted.
    assert_eq!(
        control.cleanup_expired(now + 40 * 86400).unwrap(),
        ["unused"]
    );
    let (_, certs) = r.api("GET", "/v1/certs", None).await;
    let names: Vec<&str> = certs
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["used"]);
    r.shutdown().await;
}

#[tokio::test]
async fn expiry_and_change_metrics() {
    use serde_json::json;
    let mut b = Builder::new();
    b.with_store();
    let r = b.start().await;
    let leaf = r.ca.leaf(&["m.example.com"], KeyType::EcdsaP256);
    r.api(
        "POST",
        "/v1/certs",
        Some(json!({"certificate_chain": leaf.cert_pem, "private_key": leaf.key_pem, "name": "m"})),
    )
    .await;
    r.api(
        "POST",
        "/v1/certs",
        Some(json!({"certificate_chain": leaf.cert_pem, "private_key": "", "name": "x"})),
    )
    .await;
    let metrics = r.metrics().await;
    let expiry = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"terminus_certificate_expiry_seconds{name="m"} "#))
        .expect("expiry series")
        .parse::<f64>()
        .unwrap();
    assert!(expiry > 86400.0 * 300.0, "{expiry}");
    assert!(
        metrics.contains(r#"terminus_api_changes_total{kind="certs:add",result="ok"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"terminus_api_changes_total{kind="certs:add",result="no_key"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("terminus_certificates_loaded 1"),
        "{metrics}"
    );
    r.shutdown().await;
}
