//! Config reload: `terminus reload` (POST /v1/reload) and SIGHUP read the file again and apply
//! apps, backends, domains, file certificates and settings; a broken file is rejected whole
//! and the running config keeps serving; a request in flight is not disturbed.

use std::time::Duration;

use terminus_test_support::wait::eventually_async;
use terminus_test_support::{get, send_h1, Backend, ClientOptions, KeyType, TlsClient};

use crate::harness::{Builder, TestRouter};

/// The reload counter's value for `result`.
async fn reloads(r: &TestRouter, result: &str) -> f64 {
    r.metric(&format!(
        "terminus_config_reloads_total{{result=\"{result}\"}}"
    ))
    .await
}

fn write_config(r: &TestRouter, toml: &str) {
    std::fs::write(r.dir.path().join("terminus.toml"), toml).expect("write config");
}

#[tokio::test]
async fn reload_applies_backends_domains_and_certificates_and_rejects_a_broken_file() {
    let one = Backend::echo("one").await;
    let two = Backend::echo("two").await;
    let mut b = Builder::new();
    b.cert("site", &["a.example.com"], KeyType::EcdsaP256);
    b.app("web", &[one.addr])
        .domain("a.example.com", "web", None);
    let before = b.toml();
    let r = b.start().await;
    assert_eq!(
        r.get("a.example.com", "a.example.com", "/")
            .await
            .header("x-backend"),
        Some("one")
    );
    assert_eq!(reloads(&r, "ok").await, 0.0);

    // Another backend, a new domain, and the certificate file replaced on disk by one that
    // also covers the new domain.
    let leaf =
        r.ca.leaf(&["a.example.com", "b.example.com"], KeyType::EcdsaP256);
    leaf.write(r.dir.path(), "site", &[]);
    let after = before.replace(&format!("\"{}\"", one.addr), &format!("\"{}\"", two.addr))
        + "[[domain]]\nhost = \"b.example.com\"\napp = \"web\"\n";
    write_config(&r, &after);
    let (code, out, err) = r.cli(&["reload"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Reloaded"), "{out}");

    assert_eq!(
        r.get("a.example.com", "a.example.com", "/")
            .await
            .header("x-backend"),
        Some("two"),
        "the next request goes to the new backend"
    );
    let reply = r.get("b.example.com", "b.example.com", "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        r.served("b.example.com").await.as_ref(),
        Some(&leaf.cert_der),
        "the next handshake gets the replaced certificate"
    );
    assert_eq!(reloads(&r, "ok").await, 1.0);
    assert!(
        r.metric("terminus_config_last_reload_success_timestamp_seconds")
            .await
            > 0.0
    );
    let (_, domains) = r.api("GET", "/v1/domains", None).await;
    assert!(
        domains.to_string().contains("b.example.com"),
        "the API lists the new domain: {domains}"
    );

    // A file that does not validate: 422 with the reason, nothing changes, counted.
    write_config(
        &r,
        &format!("{after}[[domain]]\nhost = \"c.example.com\"\napp = \"nope\"\n"),
    );
    let (status, body) = r.api("POST", "/v1/reload", None).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["id"], "config_rejected", "{body}");
    assert!(body["message"].as_str().unwrap().contains("nope"), "{body}");
    assert_eq!(reloads(&r, "rejected").await, 1.0);

    // A certificate that does not load rejects the whole file, even with other changes in it.
    std::fs::write(r.dir.path().join("site.crt"), "not a certificate").unwrap();
    write_config(&r, &before);
    let (code, out, err) = r.cli(&["reload"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("certificate"), "{err}");
    assert_eq!(reloads(&r, "rejected").await, 2.0);
    assert_eq!(
        r.get("a.example.com", "a.example.com", "/")
            .await
            .header("x-backend"),
        Some("two"),
        "the running config still serves"
    );
    assert_eq!(
        r.served("b.example.com").await.as_ref(),
        Some(&leaf.cert_der)
    );

    // Removing the domain from the file takes it out of service.
    leaf.write(r.dir.path(), "site", &[]);
    write_config(
        &r,
        &before.replace(&format!("\"{}\"", one.addr), &format!("\"{}\"", two.addr)),
    );
    let (status, body) = r.api("POST", "/v1/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"]["domains"], 1, "{body}");
    assert_eq!(
        body["needs_restart"].as_array().map(Vec::len),
        Some(0),
        "{body}"
    );
    let reply = r.get("b.example.com", "b.example.com", "/").await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    r.shutdown().await;
}

#[tokio::test]
async fn settings_that_need_a_restart_are_reported_and_the_rest_applies() {
    let one = Backend::echo("one").await;
    let two = Backend::echo("two").await;
    let mut b = Builder::new();
    b.cert("site", &["a.example.com"], KeyType::EcdsaP256);
    b.app("web", &[one.addr])
        .domain("a.example.com", "web", None);
    let before = b.toml();
    let r = b.start().await;
    // Twelve headers pass under the default limit of 100.
    let many = |n: usize| {
        let mut req = get("a.example.com", "/");
        for i in 0..n {
            let name: http::HeaderName = format!("x-extra-{i}").parse().unwrap();
            req.headers_mut().insert(name, "1".parse().unwrap());
        }
        req
    };
    let send = |req| async {
        let conn = r.client("a.example.com").connect(r.https()).await.unwrap();
        send_h1(conn.stream, vec![req]).await.unwrap().remove(0)
    };
    assert_eq!(send(many(12)).await.status, 200);

    // Limits apply live: fewer headers, one connection at a time on the TLS listener.
    let limited = before
        .replace(&format!("\"{}\"", one.addr), &format!("\"{}\"", two.addr))
        .replace("tls = true\n", "tls = true\nmax_connections = 1\n")
        + "[proxy]\nmax_headers = 8\n";
    write_config(&r, &limited);
    let (status, body) = r.api("POST", "/v1/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["needs_restart"].as_array().map(Vec::len),
        Some(0),
        "{body}"
    );
    assert_eq!(send(many(12)).await.status, 431, "from the next connection");
    let held = r.client("a.example.com").connect(r.https()).await.unwrap();
    assert!(
        r.client("a.example.com").connect(r.https()).await.is_err(),
        "a second connection is over the new max_connections"
    );
    drop(held);
    // The limit of 1 stays (the listener change below is not applied): wait for the slot.
    let gauge = format!("terminus_listener_connections{{address=\"{}\"}}", r.https());
    eventually_async(
        Duration::from_secs(5),
        "the held connection is gone",
        || async { r.metric(&gauge).await == 0.0 },
    )
    .await;

    // A listener change needs a restart: reported, and the listener stays as it was (no
    // PROXY header is asked for); the rest of the file applies.
    let changed = limited.replace(
        "max_connections = 1\n",
        "proxy_protocol = \"v1\"\nproxy_trusted = [\"127.0.0.1\"]\n",
    );
    write_config(&r, &changed);
    let (status, body) = r.api("POST", "/v1/reload", None).await;
    assert_eq!(status, 200, "{body}");
    let needs = body["needs_restart"].to_string();
    assert!(needs.contains("listener"), "{body}");
    let (code, out, _) = r.cli(&["reload"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("Needs a restart"), "{out}");
    assert_eq!(
        r.get("a.example.com", "a.example.com", "/")
            .await
            .header("x-backend"),
        Some("two")
    );
    r.shutdown().await;
}

#[tokio::test]
async fn sighup_reloads_the_binary_and_a_request_in_flight_completes() {
    let one = Backend::echo("one").await;
    let two = Backend::echo("two").await;
    let mut b = Builder::new();
    b.cert("site", &["a.example.com"], KeyType::EcdsaP256);
    b.app("web", &[one.addr])
        .domain("a.example.com", "web", None);
    let before = b.toml();
    let p = b.spawn("").await;
    let client = || {
        TlsClient::new(
            ClientOptions::sni("a.example.com")
                .http1()
                .roots(vec![p.ca.cert_der.clone()]),
        )
    };

    // A slow request is in flight at the old backend when the reload happens.
    let conn = client().connect(p.https).await.expect("handshake");
    let slow = tokio::spawn(send_h1(
        conn.stream,
        vec![get("a.example.com", "/slow?ms=1500")],
    ));
    one.wait_for_requests(1).await;

    // Another backend, a new domain, and the certificate replaced on disk to cover it.
    let leaf =
        p.ca.leaf(&["a.example.com", "b.example.com"], KeyType::EcdsaP256);
    leaf.write(p.dir.path(), "site", &[]);
    std::fs::write(
        p.dir.path().join("terminus.toml"),
        before.replace(&format!("\"{}\"", one.addr), &format!("\"{}\"", two.addr))
            + "[[domain]]\nhost = \"b.example.com\"\napp = \"web\"\n",
    )
    .unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &p.pid.to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    eventually_async(
        Duration::from_secs(10),
        "the SIGHUP reload is counted",
        || async {
            p.metric("terminus_config_reloads_total{result=\"ok\"}")
                .await
                >= 1.0
        },
    )
    .await;
    // The log line travels through a pipe the test reads on its own task: it may trail the
    // counter by a moment.
    eventually_async(Duration::from_secs(10), "the reload is logged", || async {
        !p.stderr_lines("config reloaded").is_empty()
    })
    .await;

    let conn = client().connect(p.https).await.expect("handshake");
    let fresh = send_h1(conn.stream, vec![get("a.example.com", "/")])
        .await
        .expect("request");
    assert_eq!(fresh[0].header("x-backend"), Some("two"));
    let b = TlsClient::new(
        ClientOptions::sni("b.example.com")
            .http1()
            .roots(vec![p.ca.cert_der.clone()]),
    )
    .connect(p.https)
    .await
    .expect("the new domain's handshake verifies");
    assert_eq!(
        b.served.as_ref(),
        Some(&leaf.cert_der),
        "the replaced certificate"
    );
    let reply = send_h1(b.stream, vec![get("b.example.com", "/")])
        .await
        .expect("request");
    assert_eq!(reply[0].header("x-backend"), Some("two"));

    let slow = slow
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(slow[0].status, 200);
    assert_eq!(slow[0].header("x-backend"), Some("one"));

    // A broken file: rejected, counted, and the router still serves.
    std::fs::write(p.dir.path().join("terminus.toml"), "[[listener]\n").unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &p.pid.to_string()])
        .status()
        .unwrap();
    eventually_async(
        Duration::from_secs(10),
        "the rejected reload is counted",
        || async {
            p.metric("terminus_config_reloads_total{result=\"rejected\"}")
                .await
                >= 1.0
        },
    )
    .await;
    eventually_async(
        Duration::from_secs(10),
        "the rejection is logged",
        || async { !p.stderr_lines("config reload rejected").is_empty() },
    )
    .await;
    let conn = client().connect(p.https).await.expect("handshake");
    let still = send_h1(conn.stream, vec![get("a.example.com", "/")])
        .await
        .expect("request");
    assert_eq!(still[0].header("x-backend"), Some("two"));
    p.stop().await;
}

#[tokio::test]
async fn the_file_still_wins_over_the_store_and_gives_names_back_to_it() {
    let one = Backend::echo("one").await;
    let stored = Backend::echo("stored").await;
    let file = Backend::echo("file").await;
    let mut b = Builder::new();
    b.with_store();
    b.cert("wild", &["*.example.com"], KeyType::EcdsaP256);
    b.app("web", &[one.addr])
        .domain("a.example.com", "web", None);
    let before = b.toml();
    let r = b.start().await;
    let (status, body) = r
        .api(
            "POST",
            "/v1/apps",
            Some(serde_json::json!({"name": "api", "backends": [stored.addr.to_string()]})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = r
        .api(
            "POST",
            "/v1/domains",
            Some(serde_json::json!({"hostname": "api.example.com", "app": "api"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(api_backend(&r).await.as_deref(), Some("stored"));

    // The file defines an app of that name: it wins, as at start.
    write_config(
        &r,
        &format!(
            "{before}[[app]]\nname = \"api\"\nbackends = [\"{}\"]\n",
            file.addr
        ),
    );
    let (status, body) = r.api("POST", "/v1/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(api_backend(&r).await.as_deref(), Some("file"));
    let (status, body) = r
        .api(
            "PATCH",
            "/v1/apps/api",
            Some(serde_json::json!({"backends": [one.addr.to_string()]})),
        )
        .await;
    assert_eq!(status, 409, "the API sees the file's app: {body}");

    // The file gives the name up: the stored app is served again.
    write_config(&r, &before);
    let (status, body) = r.api("POST", "/v1/reload", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(api_backend(&r).await.as_deref(), Some("stored"));
    r.shutdown().await;
}

async fn api_backend(r: &TestRouter) -> Option<String> {
    r.get("api.example.com", "api.example.com", "/")
        .await
        .header("x-backend")
        .map(str::to_owned)
}
