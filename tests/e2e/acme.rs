//! Automated certificates against a real ACME server: Debian's `pebble`, with its DNS pointed
//! at `pebble-challtestsrv` (every name answers 127.0.0.1 unless a test says otherwise) and its
//! HTTP-01 / TLS-ALPN-01 ports set to the router's listeners. Both run on loopback ports for
//! the test and are killed (by their own pid) when it ends. Without pebble installed the tests
//! skip with a message (`./scripts/test.sh` installs it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::json;
use terminus_test_support::pebble::{have_pebble, Pebble, PebblePorts};
use terminus_test_support::{get, send_h1, Backend, ClientOptions, KeyType, TlsClient};

use crate::harness::{Builder, TestRouter};

/// How long an issuance may take against pebble (with PEBBLE_VA_NOSLEEP it takes ~1 s).
const ISSUE: Duration = Duration::from_secs(60);

/// A router with the store, an app `web` in front of an echo backend, and `[acme]` on pebble.
pub async fn router_with_pebble(extra: &str) -> Option<(TestRouter, Pebble, Backend)> {
    if !have_pebble() {
        return None;
    }
    let ports = PebblePorts::new();
    let echo = Backend::echo("acme-backend").await;
    let mut b = Builder::new();
    b.with_store();
    b.raw(&ports.acme_toml(extra));
    let r = b.start().await;
    let (status, _) = r
        .api(
            "POST",
            "/v1/apps",
            Some(json!({"name": "web", "backends": [echo.addr.to_string()]})),
        )
        .await;
    assert_eq!(status, 201);
    let pebble = ports.start(r.http().port(), r.https().port()).await;
    Some((r, pebble, echo))
}

/// Waits until `host`'s ACM status is `want`; returns its view.
pub async fn wait_status(r: &TestRouter, app: &str, host: &str, want: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + ISSUE;
    loop {
        let (status, list) = r.api("GET", &format!("/v1/apps/{app}/acm"), None).await;
        assert_eq!(status, 200, "{list}");
        let d = list
            .as_array()
            .and_then(|l| l.iter().find(|d| d["hostname"] == host).cloned());
        if let Some(d) = &d {
            if d["status"] == want {
                return d.clone();
            }
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{host} did not reach '{want}' within {ISSUE:?}: {d:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A handshake for `sni` that verifies the served chain against `root`, then one request.
pub async fn https_get(
    r: &TestRouter,
    root: &rustls::pki_types::CertificateDer<'static>,
    sni: &str,
) -> terminus_test_support::Reply {
    let conn = TlsClient::new(ClientOptions::sni(sni).http1().roots(vec![root.clone()]))
        .connect(r.https())
        .await
        .unwrap_or_else(|e| panic!("verified handshake for {sni}: {e}"));
    send_h1(conn.stream, vec![get(sni, "/")])
        .await
        .expect("request")
        .remove(0)
}

fn no_secrets(what: &str, text: &str) {
    for needle in [
        "PRIVATE KEY",
        "key_pkcs8",
        "sealed_credentials",
        "pending_key",
    ] {
        assert!(!text.contains(needle), "{what} holds '{needle}'");
    }
}

#[tokio::test]
async fn http01_issues_a_certificate_served_with_pebbles_chain() {
    let Some((r, pebble, _echo)) = router_with_pebble("challenges = [\"http-01\"]").await else {
        return;
    };
    let root = pebble.root().await;
    let (s, v) = r
        .api(
            "POST",
            "/v1/domains",
            Some(json!({"hostname": "www.acme.test", "app": "web"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (code, out, err) = r.cli(&["certs:auto:enable", "--app", "web"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Enabled Automatic Certificate Management for web"),
        "{out}"
    );
    let d = wait_status(&r, "web", "www.acme.test", "Cert issued").await;
    let cert = d["cert"].as_str().expect("cert name").to_owned();

    // A real handshake verifying the chain to pebble's root, then the app answers.
    let reply = https_get(&r, &root, "www.acme.test").await;
    assert_eq!(reply.status, 200);

    // Listed as Type ACM, through the same store (checksum, version, expiry metric).
    let (_, certs) = r.api("GET", "/v1/certs", None).await;
    let listed = certs
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == cert.as_str())
        .expect("ACM certificate listed");
    assert_eq!(listed["type"], "ACM");
    assert_eq!(listed["version"], 1);
    let (code, table, _) = r.cli(&["certs"]).await;
    assert_eq!(code, 0);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&cert) && l.contains("ACM")),
        "{table}"
    );
    let (code, table, _) = r.cli(&["certs:auto", "--app", "web"]).await;
    assert_eq!(code, 0);
    assert!(
        table.contains("www.acme.test") && table.contains("Cert issued"),
        "{table}"
    );
    let metrics = r.metrics().await;
    assert!(
        metrics.contains("terminus_acme_orders_total{result=\"issued\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("terminus_acme_domains{status=\"cert_issued\"}"));

    // Conflict rules: an upload for a domain of the ACM app, and removing the ACM
    // certificate, are refused with what to do.
    let leaf = r.ca.leaf(&["www.acme.test"], KeyType::EcdsaP256);
    let (s, v) = r
        .api(
            "POST",
            "/v1/certs",
            Some(json!({"certificate_chain": leaf.cert_pem, "private_key": leaf.key_pem})),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("certs:auto:disable --app web"),
        "{v}"
    );
    let (s, v) = r
        .api("DELETE", &format!("/v1/certs/{cert}?confirm={cert}"), None)
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("disable ACM first"),
        "{v}"
    );

    // Secrets: the account key and certificate keys appear in no answer, log line or metric.
    for path in ["/v1/certs", "/v1/acm", "/v1/apps/web/acm", "/v1/domains"] {
        let (_, body) = r
            .api_raw(Some(crate::harness::TOKEN), "GET", path, Vec::new())
            .await;
        no_secrets(path, &String::from_utf8_lossy(&body));
    }
    no_secrets("/metrics", &metrics);
    no_secrets("the log", &terminus_test_support::logs::all().join("\n"));

    // Disable: the certificate stays served; then it may be removed.
    let (code, out, err) = r.cli(&["certs:auto:disable", "--app", "web"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(https_get(&r, &root, "www.acme.test").await.status, 200);
    let (s, v) = r
        .api("DELETE", &format!("/v1/certs/{cert}?confirm={cert}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    drop(pebble);
}

#[tokio::test]
async fn a_failing_validation_shows_pebbles_reason_then_issues_once_fixed() {
    let Some((r, pebble, _echo)) = router_with_pebble("challenges = [\"http-01\"]").await else {
        return;
    };
    let root = pebble.root().await;
    // The name resolves where nothing listens: validation must fail.
    pebble
        .challtest(
            "/add-a",
            json!({"host": "broken.acme.test.", "addresses": ["127.0.0.2"]}),
        )
        .await;
    let (s, _) = r
        .api(
            "POST",
            "/v1/domains",
            Some(json!({"hostname": "broken.acme.test", "app": "web"})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, v) = r.api("POST", "/v1/apps/web/acm", None).await;
    assert_eq!(s, 200, "{v}");
    let d = wait_status(&r, "web", "broken.acme.test", "Failing").await;
    let reason = d["reason"].as_str().expect("reason");
    assert!(reason.contains("127.0.0.2"), "pebble's reason: {reason}");
    assert!(d["next_retry"].is_string(), "{d}");
    let (_, table, _) = r.cli(&["certs:auto"]).await;
    assert!(
        table.contains("broken.acme.test Failing (next try") && table.contains("127.0.0.2"),
        "{table}"
    );
    // Still no certificate for it.
    assert!(
        TlsClient::new(ClientOptions::sni("broken.acme.test").roots(vec![root.clone()]))
            .connect(r.https())
            .await
            .is_err()
    );

    // Fixed: the name points at the router again, and refresh orders at once.
    pebble
        .challtest("/clear-a", json!({"host": "broken.acme.test."}))
        .await;
    let (code, out, err) = r.cli(&["certs:auto:refresh", "--app", "web"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let d = wait_status(&r, "web", "broken.acme.test", "Cert issued").await;
    assert!(d["reason"].is_null(), "{d}");
    assert_eq!(https_get(&r, &root, "broken.acme.test").await.status, 200);
    let metrics = r.metrics().await;
    assert!(
        metrics.contains("terminus_acme_orders_total{result=\"invalid\"} 1"),
        "{metrics}"
    );
}

/// A refresh sent while the domain's order runs is not lost when that order then fails: the
/// domain is ordered again at once, not after the backoff (10 minutes here).
#[tokio::test]
async fn a_refresh_during_a_failing_order_orders_again_right_after_it() {
    if !have_pebble() {
        return;
    }
    let ports = PebblePorts::new();
    let dir = ports.dir.path().to_owned();
    let hook = dir.join("sticky-hook.sh");
    let echo = Backend::echo("acme-sticky").await;
    let mut b = Builder::new();
    b.with_store();
    b.raw(&ports.acme_toml(&format!(
        "challenges = [\"dns-01\"]\ndns_hook = \"{}\"\ndns_hook_timeout = \"20s\"\nretry_min = \"10m\"",
        hook.display()
    )));
    let r = b.start().await;
    let pebble = ports.start(r.http().port(), r.https().port()).await;
    // The hook says when it is called (the order is running), waits while `hold` exists, and
    // publishes a wrong TXT value once while `fail` exists: pebble's validation fails.
    let (entered, hold, fail) = (dir.join("entered"), dir.join("hold"), dir.join("fail"));
    std::fs::write(
        &hook,
        format!(
            r#"#!/bin/sh
set -eu
touch "{entered}"
while [ -e "{hold}" ]; do sleep 0.05; done
value="${{3:-}}"
if [ "$1" = set ] && [ -e "{fail}" ]; then rm -f "{fail}"; value=wrong; fi
case "$1" in
  set) curl -sSf -X POST -d "{{\"host\":\"$2.\",\"value\":\"$value\"}}" "{url}/set-txt" ;;
  clear) curl -sSf -X POST -d "{{\"host\":\"$2.\"}}" "{url}/clear-txt" ;;
esac
"#,
            entered = entered.display(),
            hold = hold.display(),
            fail = fail.display(),
            url = pebble.challtest_url()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(&hold, "").unwrap();
    std::fs::write(&fail, "").unwrap();
    let root = pebble.root().await;
    let (s, _) = r
        .api(
            "POST",
            "/v1/apps",
            Some(json!({"name": "web", "backends": [echo.addr.to_string()]})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, v) = r
        .api(
            "POST",
            "/v1/domains",
            Some(json!({"hostname": "sticky.acme.test", "app": "web"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = r.api("POST", "/v1/apps/web/acm", None).await;
    assert_eq!(s, 200, "{v}");
    // The order is open and waits in the hook: refresh now, then let it go on (and fail).
    let deadline = tokio::time::Instant::now() + ISSUE;
    while !entered.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hook was never called"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, out, err) = r.cli(&["certs:auto:refresh", "--app", "web"]).await;
    assert_eq!(code, 0, "{out}{err}");
    std::fs::remove_file(&hold).unwrap();
    let d = wait_status(&r, "web", "sticky.acme.test", "Cert issued").await;
    assert!(d["reason"].is_null(), "{d}");
    assert!(
        !fail.exists(),
        "the first validation ran with the wrong value"
    );
    let metrics = r.metrics().await;
    assert!(
        metrics.contains("terminus_acme_orders_total{result=\"invalid\"} 1"),
        "the first order failed validation: {}\n{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("terminus_acme_orders_total"))
            .collect::<Vec<_>>()
            .join("\n"),
        // What the order's failure said, if it was not the validation's.
        terminus_test_support::logs::all()
            .iter()
            .filter(|l| l.contains("sticky.acme.test")
                && !l.starts_with("DEBUG")
                && !l.starts_with("TRACE"))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(https_get(&r, &root, "sticky.acme.test").await.status, 200);
}

#[tokio::test]
async fn domains_added_later_are_ordered_and_removed_ones_retired() {
    let Some((r, pebble, _echo)) = router_with_pebble("").await else {
        return;
    };
    let root = pebble.root().await;
    let (s, v) = r.api("POST", "/v1/apps/web/acm", None).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .contains("no domains yet"),
        "{v}"
    );
    let (s, _) = r
        .api(
            "POST",
            "/v1/domains",
            Some(json!({"hostname": "later.acme.test", "app": "web"})),
        )
        .await;
    assert_eq!(s, 201);
    let d = wait_status(&r, "web", "later.acme.test", "Cert issued").await;
    let cert = d["cert"].as_str().unwrap().to_owned();
    assert_eq!(https_get(&r, &root, "later.acme.test").await.status, 200);
    let (s, _) = r.api("DELETE", "/v1/domains/later.acme.test", None).await;
    assert_eq!(s, 200);
    let (s, _) = r.api("GET", &format!("/v1/certs/{cert}"), None).await;
    assert_eq!(s, 404, "the certificate is retired with its domain");
    let (_, list) = r.api("GET", "/v1/apps/web/acm", None).await;
    assert_eq!(list, json!([]));

    // A wildcard cannot validate without a DNS hook: Failed at once, saying what to set.
    let (s, _) = r
        .api(
            "POST",
            "/v1/domains",
            Some(json!({"hostname": "*.nohook.acme.test", "app": "web"})),
        )
        .await;
    assert_eq!(s, 201);
    let d = wait_status(&r, "web", "*.nohook.acme.test", "Failed").await;
    assert!(
        d["reason"].as_str().unwrap().contains("acme.dns_hook"),
        "{d}"
    );
    assert!(d["next_retry"].is_null(), "{d}");
}

#[tokio::test]
async fn tls_alpn01_issues_and_acme_tls_never_gets_a_served_certificate() {
    let Some((r, pebble, _echo)) = router_with_pebble("challenges = [\"tls-alpn-01\"]").await
    else {
        return;
    };
    let root = pebble.root().await;
    let (s, _) = r
        .api(
            "POST",
            "/v1/domains",
            Some(json!({"hostname": "alpn.acme.test", "app": "web"})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, v) = r.api("POST", "/v1/apps/web/acm", None).await;
    assert_eq!(s, 200, "{v}");
    wait_status(&r, "web", "alpn.acme.test", "Cert issued").await;
    assert_eq!(https_get(&r, &root, "alpn.acme.test").await.status, 200);
    assert!(r.metrics().await.contains(
        "terminus_tls_handshakes_total{result=\"ok\",version=\"\",reason=\"acme_tls_alpn\"}"
    ));

    // With no challenge pending, a client offering only acme-tls/1 is refused, even for a
    // name that has a certificate; offering it beside h2 is an ordinary handshake.
    let mut only_acme = ClientOptions::sni("alpn.acme.test");
    only_acme.alpn = vec![b"acme-tls/1".to_vec()];
    assert!(TlsClient::new(only_acme).connect(r.https()).await.is_err());
    let mut with_h2 = ClientOptions::sni("alpn.acme.test").roots(vec![root.clone()]);
    with_h2.alpn = vec![b"acme-tls/1".to_vec(), b"h2".to_vec()];
    let conn = TlsClient::new(with_h2)
        .connect(r.https())
        .await
        .expect("handshake");
    assert_eq!(conn.alpn.as_deref(), Some(b"h2".as_slice()));
}

/// A DNS-01 hook talking to challtestsrv: `HOOK set|clear FQDN VALUE`. While the file
/// `<dir>/hold` exists it waits before acting (to stop a router mid-order); a name containing
/// `nozone` fails with a message on stderr.
pub fn write_hook(pebble: &Pebble) -> PathBuf {
    let dir = pebble.dir.path();
    let hook = dir.join("dns-hook.sh");
    let hold = dir.join("hold");
    std::fs::write(
        &hook,
        format!(
            r#"#!/bin/sh
set -eu
while [ -e "{hold}" ]; do sleep 0.05; done
case "$2" in *nozone*) echo "no DNS zone is delegated for $2" >&2; exit 3;; esac
case "$1" in
  set) curl -sSf -X POST -d "{{\"host\":\"$2.\",\"value\":\"$3\"}}" "{url}/set-txt" ;;
  clear) curl -sSf -X POST -d "{{\"host\":\"$2.\"}}" "{url}/clear-txt" ;;
  *) echo "unknown action $1" >&2; exit 2 ;;
esac
"#,
            hold = hold.display(),
            url = pebble.challtest_url()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    hook
}

#[tokio::test]
async fn dns01_through_the_hook_issues_a_wildcard_and_reports_the_hooks_failure() {
    if !have_pebble() {
        return;
    }
    let ports = PebblePorts::new();
    // The hook's path must be in the config before pebble (and challtestsrv) start: it is
    // written once their address is known, before any order runs.
    let hook = ports.dir.path().join("dns-hook.sh");
    let echo = Backend::echo("acme-dns").await;
    let mut b = Builder::new();
    b.with_store();
    b.raw(&ports.acme_toml(&format!(
        "challenges = [\"http-01\", \"dns-01\"]\ndns_hook = \"{}\"\ndns_hook_timeout = \"20s\"",
        hook.display()
    )));
    let r = b.start().await;
    let pebble = ports.start(r.http().port(), r.https().port()).await;
    assert_eq!(write_hook(&pebble), hook);
    let root = pebble.root().await;
    let (s, _) = r
        .api(
            "POST",
            "/v1/apps",
            Some(json!({"name": "web", "backends": [echo.addr.to_string()]})),
        )
        .await;
    assert_eq!(s, 201);
    for host in ["*.wild.acme.test", "*.nozone.acme.test"] {
        let (s, v) = r
            .api(
                "POST",
                "/v1/domains",
                Some(json!({"hostname": host, "app": "web"})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = r.api("POST", "/v1/apps/web/acm", None).await;
    assert_eq!(s, 200, "{v}");
    wait_status(&r, "web", "*.wild.acme.test", "Cert issued").await;
    let reply = https_get(&r, &root, "anything.wild.acme.test").await;
    assert_eq!(reply.status, 200);
    let d = wait_status(&r, "web", "*.nozone.acme.test", "Failing").await;
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("no DNS zone is delegated for _acme-challenge.nozone.acme.test")
            && reason.contains("exit"),
        "the hook's stderr and status: {reason}"
    );
}

#[tokio::test]
async fn renewal_swaps_the_served_certificate_under_fresh_handshakes_with_zero_failures() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let Some((r, pebble, _echo)) = router_with_pebble("challenges = [\"http-01\"]").await else {
        return;
    };
    let root = pebble.root().await;
    let (s, _) = r
        .api(
            "POST",
            "/v1/domains",
            Some(json!({"hostname": "renew.acme.test", "app": "web"})),
        )
        .await;
    assert_eq!(s, 201);
    r.api("POST", "/v1/apps/web/acm", None).await;
    let d = wait_status(&r, "web", "renew.acme.test", "Cert issued").await;
    let name = d["cert"].as_str().unwrap().to_owned();
    let first = r.served("renew.acme.test").await.expect("served");

    // Fresh handshakes, each verifying the chain to pebble's root, until told to stop (at
    // most 60 s: bounded whatever happens).
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let https = r.https();
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, seen, root) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            seen.clone(),
            root.clone(),
        );
        load.push(tokio::spawn(async move {
            let client = TlsClient::new(ClientOptions::sni("renew.acme.test").roots(vec![root]));
            let until = tokio::time::Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < until {
                match client.connect(https).await {
                    Ok(c) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if let Some(leaf) = c.served {
                            seen.lock().unwrap().insert(leaf.to_vec());
                        }
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let (code, out, err) = r.cli(&["certs:auto:refresh", "--app", "web"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let deadline = tokio::time::Instant::now() + ISSUE;
    loop {
        let (_, v) = r.api("GET", &format!("/v1/certs/{name}"), None).await;
        let renewed = v["version"] == 2 && seen.lock().unwrap().len() >= 2;
        if renewed {
            assert_eq!(v["previous"]["version"], 1, "{v}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not renewed: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before_stop = ok.load(Ordering::Relaxed);
    // A few more handshakes after the swap, then stop.
    while ok.load(Ordering::Relaxed) < before_stop + 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "handshakes failed during renewal"
    );
    assert!(ok.load(Ordering::Relaxed) > 20);
    let now = r.served("renew.acme.test").await.expect("served");
    assert_ne!(now, first, "the renewed certificate is served");
    wait_status(&r, "web", "renew.acme.test", "Cert issued").await;
}

/// A `renew_before` longer than the CA's lifetime renews by itself, a third into the lifetime
/// (not the moment it is issued): pebble issues certificates valid for 24 s here.
#[tokio::test]
async fn renew_before_longer_than_the_lifetime_renews_a_third_into_it() {
    if !have_pebble() {
        return;
    }
    let mut ports = PebblePorts::new();
    ports.validity = Some(24);
    let echo = Backend::echo("acme-short").await;
    let mut b = Builder::new();
    b.with_store();
    b.raw(&ports.acme_toml("challenges = [\"http-01\"]\nrenew_before = \"30d\""));
    let r = b.start().await;
    let pebble = ports.start(r.http().port(), r.https().port()).await;
    let root = pebble.root().await;
    let (s, _) = r
        .api(
            "POST",
            "/v1/apps",
            Some(json!({"name": "web", "backends": [echo.addr.to_string()]})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, _) = r
        .api(
            "POST",
            "/v1/domains",
            Some(json!({"hostname": "short.acme.test", "app": "web"})),
        )
        .await;
    assert_eq!(s, 201);
    r.api("POST", "/v1/apps/web/acm", None).await;
    let d = wait_status(&r, "web", "short.acme.test", "Cert issued").await;
    let issued = tokio::time::Instant::now();
    let name = d["cert"].as_str().unwrap().to_owned();
    let first = r.served("short.acme.test").await.expect("served");
    // No refresh: the renewal time alone orders the next certificate.
    let deadline = issued + Duration::from_secs(20);
    loop {
        let (_, v) = r.api("GET", &format!("/v1/certs/{name}"), None).await;
        if v["version"] == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not renewed: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = issued.elapsed();
    // A third of 24 s, less up to 1/30 of it of jitter (and the time the order took).
    assert!(
        after >= Duration::from_secs(5),
        "renewed after {after:?}: too soon"
    );
    let renewed = r.served("short.acme.test").await.expect("served");
    assert_ne!(renewed, first, "the renewed certificate is served");
    assert_eq!(https_get(&r, &root, "short.acme.test").await.status, 200);
    wait_status(&r, "web", "short.acme.test", "Cert issued").await;
}

/// `terminus serve` as a process of its own, for `kill -9`.
struct Served {
    child: tokio::process::Child,
    admin: SocketAddr,
    https: SocketAddr,
    log: PathBuf,
}

impl Served {
    async fn start(config: &std::path::Path, dir: &std::path::Path, run: usize) -> Self {
        let ready = dir.join(format!("ready.{run}"));
        let log = dir.join(format!("log.{run}"));
        let out = std::fs::File::create(&log).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_terminus"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut exited = false;
        let bound = terminus_test_support::ready_file(&ready, Duration::from_secs(20), || {
            exited = matches!(child.try_wait(), Ok(Some(_)));
            exited
        })
        .await;
        Self {
            child,
            admin: bound.admin,
            https: bound.https(),
            log,
        }
    }

    fn api(&self) -> terminus_api::Client {
        terminus_api::Client::new(
            &format!("http://{}", self.admin),
            Some(crate::harness::TOKEN.into()),
        )
        .unwrap()
    }

    async fn status(&self, host: &str) -> Option<terminus_api::AcmDomainView> {
        self.api()
            .acm_status(Some("web"))
            .await
            .unwrap()
            .into_iter()
            .find(|d| d.hostname == host)
    }

    async fn wait_status(&self, host: &str, want: &str) -> terminus_api::AcmDomainView {
        let deadline = tokio::time::Instant::now() + ISSUE;
        loop {
            let d = self.status(host).await;
            if let Some(d) = d.as_ref().filter(|d| d.status == want) {
                return d.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{host} not '{want}': {d:?}\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn kill9(mut self) -> String {
        self.child.start_kill().unwrap();
        let _ = self.child.wait().await;
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[tokio::test]
async fn kill_9_mid_order_then_restart_resumes_the_same_order() {
    if !have_pebble() {
        return;
    }
    let ports = PebblePorts::new();
    let hook = ports.dir.path().join("dns-hook.sh");
    let echo = Backend::echo("acme-kill").await;
    let mut b = Builder::new();
    b.with_store();
    b.raw(&ports.acme_toml(&format!(
        "challenges = [\"dns-01\"]\ndns_hook = \"{}\"",
        hook.display()
    )));
    b.app("web", &[echo.addr]);
    b.domain("resume.acme.test", "web", None);
    let config = b.write_config();
    let run1 = Served::start(&config, b.dir.path(), 1).await;
    let pebble = ports.start(1, 1).await;
    assert_eq!(write_hook(&pebble), hook);
    let root = pebble.root().await;
    // The hook waits while `hold` exists: the order is open and its challenge unanswered
    // when the router is killed.
    let hold = pebble.dir.path().join("hold");
    std::fs::write(&hold, "").unwrap();
    run1.api().acm_enable("web").await.unwrap();
    run1.wait_status("resume.acme.test", "In Progress").await;
    let log1 = run1.kill9().await;
    assert!(!log1.contains("ACM certificate issued"), "{log1}");

    let run2 = Served::start(&config, b.dir.path(), 2).await;
    std::fs::remove_file(&hold).unwrap();
    run2.wait_status("resume.acme.test", "Cert issued").await;
    let log2 = std::fs::read_to_string(&run2.log).unwrap();
    assert!(
        log2.contains("resuming the ACME order in progress"),
        "the stored order was resumed, not duplicated: {log2}"
    );
    let conn = TlsClient::new(ClientOptions::sni("resume.acme.test").roots(vec![root]))
        .connect(run2.https)
        .await
        .expect("verified handshake after the restart");
    assert!(conn.served.is_some());
    run2.kill9().await;
}

/// Adds `count` domains to `web` (ACM on) as fast as the API takes them; returns when all are
/// issued, checking on the way that no more than `in_flight` orders ever run at once.
async fn burst(r: &TestRouter, count: usize, in_flight: usize, within: Duration) -> Duration {
    let started = tokio::time::Instant::now();
    let api = r.api_client();
    for i in 0..count {
        api.add_domain(&terminus_api::DomainCreate {
            hostname: format!("d{i}.burst.acme.test"),
            app: "web".into(),
        })
        .await
        .unwrap();
    }
    let deadline = started + within;
    loop {
        let list = api.acm_status(Some("web")).await.unwrap();
        let running = list
            .iter()
            .filter(|d| d.status == "In Progress" || d.status == "DNS Verified")
            .count();
        assert!(
            running <= in_flight,
            "{running} orders at once, limit {in_flight}"
        );
        let issued = list
            .iter()
            .filter(|d| d.hostname.ends_with(".burst.acme.test") && d.status == "Cert issued")
            .count();
        if count > 100 {
            eprintln!("{:?}: {issued} of {count} issued", started.elapsed());
        }
        if issued == count {
            return started.elapsed();
        }
        let stuck: Vec<_> = list.iter().filter(|d| d.reason.is_some()).collect();
        assert!(stuck.is_empty(), "failures: {stuck:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "{issued} of {count} issued within {within:?}"
        );
        // Each look lists every domain: look less often when there are many.
        tokio::time::sleep(Duration::from_millis(if count > 100 { 1000 } else { 100 })).await;
    }
}

#[tokio::test]
async fn a_burst_of_domains_is_issued_with_bounded_orders_in_flight() {
    let Some((r, pebble, _echo)) =
        router_with_pebble("challenges = [\"http-01\"]\nmax_in_flight = 3").await
    else {
        return;
    };
    let root = pebble.root().await;
    r.api("POST", "/v1/apps/web/acm", None).await;
    burst(&r, 30, 3, Duration::from_secs(120)).await;
    for i in [0, 29] {
        let host = format!("d{i}.burst.acme.test");
        assert_eq!(https_get(&r, &root, &host).await.status, 200);
    }
}

/// The README's figures: enable → first handshake serving the issued certificate, and the
/// issuance rate for 1,000 domains, against pebble on this machine. Run on purpose:
/// `cargo test --test e2e acme::bench -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn bench_enable_to_first_handshake_and_1000_domains() {
    let Some((r, pebble, _echo)) =
        router_with_pebble("challenges = [\"http-01\"]\nmax_in_flight = 16").await
    else {
        return;
    };
    let root = pebble.root().await;
    r.api(
        "POST",
        "/v1/domains",
        Some(json!({"hostname": "first.acme.test", "app": "web"})),
    )
    .await;
    let started = tokio::time::Instant::now();
    r.api("POST", "/v1/apps/web/acm", None).await;
    let client = TlsClient::new(ClientOptions::sni("first.acme.test").roots(vec![root]));
    while client.connect(r.https()).await.is_err() {
        assert!(started.elapsed() < ISSUE);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first = started.elapsed();
    let n = 1000;
    let took = burst(&r, n, 16, Duration::from_secs(1800)).await;
    println!(
        "enable -> first verified handshake: {} ms; {n} domains issued in {:.1} s ({:.1}/s)",
        first.as_millis(),
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
}

#[tokio::test]
async fn an_unreadable_directory_root_stops_the_start_and_check_config() {
    let mut b = Builder::new();
    b.with_store();
    b.raw("[acme]\ndirectory = \"https://localhost:1/dir\"\nterms_accepted = true\ndirectory_roots = \"missing-ca.pem\"\n");
    let path = b.write_config();
    let config = terminus_config::Config::load(&path).unwrap();
    let e = terminus::start(&config, terminus_metrics::MetricsRegistry::default())
        .await
        .expect_err("the start fails");
    let text = e.to_string();
    assert!(
        text.contains("acme.directory_roots") && text.contains("missing-ca.pem"),
        "{text}"
    );
    let report = terminus::check::check_config(&config);
    assert!(
        report
            .errors
            .iter()
            .any(|l| l.contains("acme.directory_roots")),
        "{:?}",
        report.errors
    );
}

/// A stand-in for ARI (RFC 9773) in front of pebble, which offers none: it serves pebble's
/// directory with a `renewalInfo` URL added, and answers that URL with a fixed window. Every
/// other request goes to pebble itself, as the directory's other URLs point there.
/// With `rate_limited`, it also takes pebble's `newOrder` and refuses every order with a
/// `rateLimited` problem and `Retry-After: 120`.
struct AriStandIn {
    addr: SocketAddr,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    window: (i64, i64),
}

impl AriStandIn {
    async fn start(ports: &PebblePorts, window: (i64, i64)) -> Self {
        Self::start_with(ports, window, false).await
    }

    async fn start_with(ports: &PebblePorts, window: (i64, i64), rate_limited: bool) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let leaf = ports.ca.leaf(&["localhost"], KeyType::EcdsaP256);
        let cert = rustls::pki_types::CertificateDer::from(leaf.cert_der.to_vec());
        use rustls::pki_types::pem::PemObject;
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(terminus_tls::provider(false)))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let pebble = ports.listen;
        let ca = ports.ca.cert_der.clone();
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, hits, ca) = (acceptor.clone(), counted.clone(), ca.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (hits, ca) = (hits.clone(), ca.clone());
                            async move {
                                let path = req.uri().path().to_owned();
                                let (body, retry) = if path == "/dir" {
                                    let conn = TlsClient::new(
                                        ClientOptions::sni("localhost").http1().roots(vec![ca]),
                                    )
                                    .connect(pebble)
                                    .await
                                    .unwrap();
                                    let dir = send_h1(
                                        conn.stream,
                                        vec![get(&format!("localhost:{}", pebble.port()), "/dir")],
                                    )
                                    .await
                                    .unwrap()
                                    .remove(0);
                                    let mut v: serde_json::Value =
                                        serde_json::from_str(&dir.text()).unwrap();
                                    v["renewalInfo"] = json!(format!(
                                        "https://localhost:{}/renewal-info",
                                        addr.port()
                                    ));
                                    if rate_limited {
                                        v["newOrder"] = json!(format!(
                                            "https://localhost:{}/new-order",
                                            addr.port()
                                        ));
                                    }
                                    (v.to_string(), None)
                                } else if path == "/new-order" {
                                    let problem = json!({
                                        "type": "urn:ietf:params:acme:error:rateLimited",
                                        "detail": "too many new orders recently",
                                        "status": 429
                                    });
                                    let mut rsp = http::Response::new(Full::new(Bytes::from(
                                        problem.to_string(),
                                    )));
                                    *rsp.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
                                    let h = rsp.headers_mut();
                                    h.insert(
                                        "content-type",
                                        "application/problem+json".parse().unwrap(),
                                    );
                                    h.insert("retry-after", "120".parse().unwrap());
                                    h.insert("replay-nonce", "stand-in-nonce".parse().unwrap());
                                    return Ok::<_, std::convert::Infallible>(rsp);
                                } else {
                                    hits.fetch_add(1, Ordering::SeqCst);
                                    let fmt = |t: i64| {
                                        time::OffsetDateTime::from_unix_timestamp(t)
                                            .unwrap()
                                            .format(&time::format_description::well_known::Rfc3339)
                                            .unwrap()
                                    };
                                    (
                                    json!({"suggestedWindow": {"start": fmt(window.0), "end": fmt(window.1)}}).to_string(),
                                    Some("3600"),
                                )
                                };
                                let mut rsp = http::Response::new(Full::new(Bytes::from(body)));
                                rsp.headers_mut()
                                    .insert("content-type", "application/json".parse().unwrap());
                                if let Some(r) = retry {
                                    rsp.headers_mut().insert("retry-after", r.parse().unwrap());
                                }
                                Ok::<_, std::convert::Infallible>(rsp)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self { addr, hits, window }
    }
}

#[tokio::test]
async fn ari_window_sets_the_renewal_time_and_renewals_ask_it() {
    use std::sync::atomic::Ordering;
    if !have_pebble() {
        return;
    }
    let ports = PebblePorts::new();
    let now = terminus::unix_now();
    let ari = AriStandIn::start(&ports, (now + 10 * 86_400, now + 11 * 86_400)).await;
    let echo = Backend::echo("acme-ari").await;
    let mut b = Builder::new();
    b.with_store();
    b.raw(&format!(
        "[acme]\ndirectory = \"https://localhost:{}/dir\"\nterms_accepted = true\ndirectory_roots = \"{}\"\nchallenges = [\"http-01\"]\n",
        ari.addr.port(),
        ports.listener_ca().display()
    ));
    b.app("web", &[echo.addr]);
    b.domain("ari.acme.test", "web", None);
    let r = b.start().await;
    let pebble = ports.start(r.http().port(), r.https().port()).await;
    let root = pebble.root().await;
    r.api("POST", "/v1/apps/web/acm", None).await;
    let d = wait_status(&r, "web", "ari.acme.test", "Cert issued").await;
    assert!(
        ari.hits.load(Ordering::SeqCst) >= 1,
        "the window was asked for"
    );
    // The renewal time is inside the window the CA suggested, not the lifetime rule's.
    let deadline = tokio::time::Instant::now() + ISSUE;
    loop {
        let at = r
            .metric("terminus_acme_next_renewal_timestamp_seconds")
            .await as i64;
        if at != 0 {
            assert!(
                (ari.window.0..=ari.window.1).contains(&at),
                "{at} {:?} {d}",
                ari.window
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no renewal scheduled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A renewal asks for the window of the certificate it replaces (and names it in the order).
    let before = ari.hits.load(Ordering::SeqCst);
    r.api("POST", "/v1/apps/web/acm/refresh", None).await;
    let cert = d["cert"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + ISSUE;
    loop {
        let (_, v) = r.api("GET", &format!("/v1/certs/{cert}"), None).await;
        if v["version"] == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not renewed: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ari.hits.load(Ordering::SeqCst) >= before + 2);
    assert_eq!(https_get(&r, &root, "ari.acme.test").await.status, 200);
}

#[tokio::test]
async fn a_rate_limited_order_waits_for_the_cas_retry_after() {
    if !have_pebble() {
        return;
    }
    let ports = PebblePorts::new();
    let now = terminus::unix_now();
    let standin = AriStandIn::start_with(&ports, (now, now + 1), true).await;
    let echo = Backend::echo("acme-ratelimit").await;
    let mut b = Builder::new();
    b.with_store();
    // retry_min is 1 s: only the CA's Retry-After (120 s) can push the next try that far.
    b.raw(&format!(
        "[acme]\ndirectory = \"https://localhost:{}/dir\"\nterms_accepted = true\ndirectory_roots = \"{}\"\nretry_min = \"1s\"\nretry_max = \"10s\"\n",
        standin.addr.port(),
        ports.listener_ca().display()
    ));
    b.app("web", &[echo.addr]);
    b.domain("limited.acme.test", "web", None);
    let r = b.start().await;
    let _pebble = ports.start(r.http().port(), r.https().port()).await;
    let before = terminus::unix_now();
    r.api("POST", "/v1/apps/web/acm", None).await;
    let d = wait_status(&r, "web", "limited.acme.test", "Failing").await;
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("rateLimited: too many new orders"),
        "{d}"
    );
    let metrics = r.metrics().await;
    assert!(
        metrics.contains("terminus_acme_orders_total{result=\"rate_limited\"} 1"),
        "{metrics}"
    );
    // The next try is the CA's 120 s away, not retry_min's 1 s.
    let next = d["next_retry_at"].as_i64().unwrap();
    assert!(
        next >= before + 120 && next <= terminus::unix_now() + 121,
        "next try at {next}, {} s after the order",
        next - before
    );
}

#[tokio::test]
async fn a_domain_added_by_a_config_reload_is_ordered() {
    if !have_pebble() {
        return;
    }
    let ports = PebblePorts::new();
    let echo = Backend::echo("acme-reload").await;
    let mut b = Builder::new();
    b.with_store();
    b.raw(&ports.acme_toml("challenges = [\"http-01\"]"));
    b.app("web", &[echo.addr]);
    let r = b.start().await;
    let pebble = ports.start(r.http().port(), r.https().port()).await;
    let root = pebble.root().await;
    let (s, v) = r.api("POST", "/v1/apps/web/acm", None).await;
    assert_eq!(s, 200, "{v}");
    let path = r.dir.path().join("terminus.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[[domain]]\nhost = \"reloaded.acme.test\"\napp = \"web\"\n");
    std::fs::write(&path, text).unwrap();
    let (s, v) = r.api("POST", "/v1/reload", None).await;
    assert_eq!(s, 200, "{v}");
    wait_status(&r, "web", "reloaded.acme.test", "Cert issued").await;
    assert_eq!(https_get(&r, &root, "reloaded.acme.test").await.status, 200);
}

/// Latencies of fresh TLS handshakes (TCP connect included) and of one request on each, to
/// a domain on a certificate from the config, for `for_` or `max` samples, whichever is first.
async fn sample_latencies(
    https: SocketAddr,
    root: &rustls::pki_types::CertificateDer<'static>,
    for_: Duration,
    max: usize,
) -> (Vec<Duration>, Vec<Duration>, usize) {
    let client = TlsClient::new(
        ClientOptions::sni("static.bench.test")
            .http1()
            .roots(vec![root.clone()]),
    );
    let (mut handshakes, mut requests, mut failures) = (Vec::new(), Vec::new(), 0);
    let until = tokio::time::Instant::now() + for_;
    while tokio::time::Instant::now() < until && handshakes.len() < max {
        let t0 = tokio::time::Instant::now();
        let Ok(conn) = client.connect(https).await else {
            failures += 1;
            continue;
        };
        let t1 = tokio::time::Instant::now();
        match send_h1(conn.stream, vec![get("static.bench.test", "/")]).await {
            Ok(r) if r[0].status == 200 => {
                handshakes.push(t1 - t0);
                requests.push(t1.elapsed());
            }
            _ => failures += 1,
        }
        // About 50 samples a second: a steady probe, not a load of its own.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (handshakes, requests, failures)
}

fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1000.0;
    format!(
        "p50 {:.2} ms, p99 {:.2} ms (n = {})",
        at(0.50),
        at(0.99),
        v.len()
    )
}

/// The README's burst figures: 10,000 domains of an ACM app added through the API as fast as it
/// takes them (default `max_in_flight`), while a probe measures fresh handshakes and requests
/// to an unrelated domain on a certificate from the config, before and during the burst. The
/// router runs as its own process. Bounded: the probe stops 2 minutes into the burst (the
/// queue need not drain). Run on purpose:
/// `cargo test --release --test e2e acme::bench_burst -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_burst_of_10000_domains_against_handshake_and_request_latency() {
    if !have_pebble() {
        return;
    }
    let ports = PebblePorts::new();
    let echo = Backend::echo("acme-bench").await;
    let mut b = Builder::new();
    b.with_store();
    b.cert("static", &["static.bench.test"], KeyType::EcdsaP256);
    b.app("front", &[echo.addr]);
    b.app("web", &[echo.addr]);
    b.domain("static.bench.test", "front", Some("static"));
    b.raw(&ports.acme_toml("challenges = [\"http-01\"]"));
    let p = b.spawn("").await;
    let root = p.ca.cert_der.clone();
    let pebble = ports.start(p.http.port(), p.https.port()).await;
    let api = terminus_api::Client::new(
        &format!("http://{}", p.admin),
        Some(crate::harness::TOKEN.into()),
    )
    .unwrap();
    api.acm_enable("web").await.unwrap();

    let (hs, rq, failed) = sample_latencies(p.https, &root, Duration::from_secs(20), 500).await;
    assert_eq!(failed, 0);
    println!(
        "before: handshakes {}; requests {}",
        percentiles(hs),
        percentiles(rq)
    );

    let count = 10_000;
    let window = Duration::from_secs(120);
    let started = tokio::time::Instant::now();
    let added = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut adders = Vec::new();
    for t in 0..4 {
        let (api, added) = (api.clone(), added.clone());
        adders.push(tokio::spawn(async move {
            for i in (t..count).step_by(4) {
                api.add_domain(&terminus_api::DomainCreate {
                    hostname: format!("d{i}.burst.acme.test"),
                    app: "web".into(),
                })
                .await
                .unwrap();
                added.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    let (hs, rq, failed) = sample_latencies(p.https, &root, window, usize::MAX).await;
    let added_by_end = added.load(std::sync::atomic::Ordering::Relaxed);
    let all_added = adders.iter().all(|a| a.is_finished());
    for a in &adders {
        a.abort();
    }
    let list = api.acm_status(Some("web")).await.unwrap();
    let issued = list.iter().filter(|d| d.status == "Cert issued").count();
    let failing: Vec<_> = list.iter().filter(|d| d.reason.is_some()).take(3).collect();
    println!(
        "during the burst ({:.0} s): handshakes {}; requests {}; {failed} failed",
        started.elapsed().as_secs_f64(),
        percentiles(hs),
        percentiles(rq)
    );
    println!(
        "{added_by_end} of {count} domains added ({}), {issued} issued, failing: {failing:?}",
        if all_added { "all" } else { "still adding" }
    );
    // With `RUST_LOG=info,terminus_acme=debug`: what the scheduler's passes cost.
    let mut passes: Vec<u64> = p
        .stderr_lines("ACM scheduler pass")
        .iter()
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("took_us="))
                .and_then(|v| v.parse().ok())
        })
        .collect();
    if !passes.is_empty() {
        passes.sort_unstable();
        println!(
            "{} scheduler passes: p50 {} us, max {} us, {:.1} s in all",
            passes.len(),
            passes[passes.len() / 2],
            passes[passes.len() - 1],
            passes.iter().sum::<u64>() as f64 / 1e6
        );
    }
    assert_eq!(failed, 0, "handshakes or requests failed during the burst");
    drop(pebble);
    p.stop().await;
}
