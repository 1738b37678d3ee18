//! Destructive changes show their impact and wait for confirmation; backends named by host;
//! the command line's catch-all app.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use terminus_test_support::{Backend, KeyType};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::harness::Builder;

#[tokio::test]
async fn removals_report_what_falls_back_where() {
    let a = Backend::echo("a").await;
    let mut b = Builder::new();
    b.with_store();
    b.cert("fallback", &["fallback.test"], KeyType::EcdsaP256);
    b.default_cert("fallback");
    let r = b.start().await;
    for (method, path, body) in [
        (
            "POST",
            "/v1/apps",
            json!({"name": "one", "backends": [a.addr.to_string()]}),
        ),
        (
            "POST",
            "/v1/apps",
            json!({"name": "two", "backends": [a.addr.to_string()]}),
        ),
        (
            "POST",
            "/v1/domains",
            json!({"hostname": "a.example.com", "app": "one"}),
        ),
        (
            "POST",
            "/v1/domains",
            json!({"hostname": "*.example.com", "app": "two"}),
        ),
    ] {
        let (s, v) = r.api(method, path, Some(body)).await;
        assert!(s < 300, "{v}");
    }
    let exact = r.ca.leaf(&["a.example.com"], KeyType::EcdsaP256);
    let wild = r.ca.leaf(&["*.example.com"], KeyType::EcdsaP256);
    for (name, leaf) in [("exact", &exact), ("wild", &wild)] {
        let (s, v) = r.api("POST", "/v1/certs", Some(json!({"certificate_chain": leaf.cert_pem, "private_key": leaf.key_pem, "name": name}))).await;
        assert_eq!(s, 201, "{v}");
    }

    // Removing `exact`: a.example.com falls back to the wildcard certificate.
    let (s, v) = r.api("DELETE", "/v1/certs/exact", None).await;
    assert_eq!(
        (s, v["id"].as_str()),
        (409, Some("confirmation_required")),
        "{v}"
    );
    assert_eq!(
        v["affected"],
        json!([{"hostname": "a.example.com", "app": "one", "cert": "exact", "selected_by": "exact",
                "then_app": "one", "then_cert": "wild", "then_selected_by": "wildcard"}])
    );
    let (s, _) = r.api("DELETE", "/v1/certs/exact?confirm=exac", None).await;
    assert_eq!(s, 409, "a confirmation must repeat the name exactly");
    assert_eq!(
        r.served("a.example.com").await,
        Some(exact.cert_der.clone())
    );
    // Removing `wild` would leave both domains to the default certificate.
    let (_, v) = r.api("DELETE", "/v1/certs/wild", None).await;
    let then: Vec<(&str, &str, &str)> = v["affected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["hostname"].as_str().unwrap(),
                a["then_cert"].as_str().unwrap(),
                a["then_selected_by"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(then, [("*.example.com", "fallback", "default")]);

    // Destroying `one`: a.example.com then routes to `two` through the wildcard, and keeps
    // its exact certificate by name.
    let (s, v) = r.api("DELETE", "/v1/apps/one", None).await;
    assert_eq!(s, 409);
    assert_eq!(
        v["affected"],
        json!([{"hostname": "a.example.com", "app": "one", "cert": "exact", "selected_by": "exact",
                "then_app": "two", "then_cert": "exact", "then_selected_by": "exact"}])
    );
    let (s, v) = r.api("DELETE", "/v1/apps/one?confirm=one", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["app"]["name"], "one");
    assert_eq!(v["affected"][0]["then_app"], "two");
    let reply = r.get("a.example.com", "a.example.com", "/").await;
    assert_eq!(reply.status, 200, "now served by app two");
    r.shutdown().await;
}

/// `localhost:PORT` as a backend, in the config file and through the API: resolved (to
/// 127.0.0.1, and ::1 where localhost has it) and served.
#[tokio::test]
async fn backends_by_host_name() {
    let web = Backend::echo("web").await;
    let port = web.addr.port();
    // Where localhost also means ::1, a backend there too, on the same port if it is free.
    let v6 = Backend::echo_on(format!("[::1]:{port}").parse().unwrap(), "web6")
        .await
        .ok();
    let mut b = Builder::new();
    b.with_store();
    b.proxy("resolve_interval = \"1s\"");
    b.cert("wild", &["*.example.com"], KeyType::EcdsaP256);
    let mut toml_app = String::new();
    toml_app.push_str(&format!(
        "[[app]]\nname = \"named\"\nbackends = [\"localhost:{port}\"]\n\n"
    ));
    b.raw(&toml_app);
    b.domain("config.example.com", "named", None);
    let r = b.start().await;
    let (s, v) = r
        .api(
            "POST",
            "/v1/apps",
            Some(json!({"name": "api", "backends": [format!("localhost:{port}")]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["backends"], json!([format!("localhost:{port}")]));
    let addresses: Vec<String> = serde_json::from_value(v["addresses"].clone()).unwrap();
    assert!(
        addresses.contains(&format!("127.0.0.1:{port}")),
        "{addresses:?}"
    );
    assert!(
        addresses
            .iter()
            .all(|a| a == &format!("127.0.0.1:{port}") || a == &format!("[::1]:{port}")),
        "{addresses:?}"
    );
    let (s, _) = r
        .api(
            "POST",
            "/v1/domains",
            Some(json!({"hostname": "api.example.com", "app": "api"})),
        )
        .await;
    assert_eq!(s, 201);
    for host in ["api.example.com", "config.example.com"] {
        for _ in 0..4 {
            let reply = r.get(host, host, "/").await;
            assert_eq!(reply.status, 200, "{host}");
        }
    }
    assert!(web.requests() + v6.as_ref().map_or(0, |b| b.requests()) >= 8);
    let (_, apps) = r.api("GET", "/v1/apps", None).await;
    let named = apps
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "named")
        .unwrap();
    assert_eq!(named["backends"], json!([format!("localhost:{port}")]));
    assert_eq!(named["source"], "config");
    r.shutdown().await;
}

/// `serve --backend` without a config file: `terminus apps` lists the catch-all as such, and
/// changing it names the command line, not a config file.
#[tokio::test]
async fn the_command_line_catch_all_app() {
    let echo = Backend::echo("quick").await;
    let dir = terminus_test_support::TempDir::new("catchall");
    let token = "catch-all-token-0123456789";
    let mut child = Command::new(env!("CARGO_BIN_EXE_terminus"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--backend", &echo.addr.to_string(), "--data-dir"])
        .arg(dir.path().join("data"))
        .env("TERMINUS_TOKEN", token)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let admin = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("admin listening") {
                return line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("address="))
                    .map(str::to_owned);
            }
        }
        None
    })
    .await
    .unwrap()
    .unwrap();
    let cli = |args: &'static [&'static str]| {
        Command::new(env!("CARGO_BIN_EXE_terminus"))
            .args(args)
            .env("TERMINUS_URL", format!("http://{admin}"))
            .env("TERMINUS_TOKEN", token)
            .output()
    };
    let out = cli(&["apps"]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let row = text.lines().find(|l| l.starts_with("default ")).unwrap();
    assert!(row.ends_with("command line"), "{text}");
    assert!(
        text.contains("default: catch-all from `serve --backend`"),
        "{text}"
    );
    let out = cli(&["apps:update", "default", "--backend", "127.0.0.1:1"])
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("comes from the command line"), "{err}");
    assert!(!err.contains("config file"), "{err}");

    // The container's health check, through the same client.
    let health = |addr: String| {
        Command::new(env!("CARGO_BIN_EXE_terminus"))
            .args(["health", "--admin", &addr])
            .output()
    };
    assert_eq!(health(admin.clone()).await.unwrap().status.code(), Some(0));
    let out = health("127.0.0.1:1".into()).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("unhealthy: 127.0.0.1:1"));
}
