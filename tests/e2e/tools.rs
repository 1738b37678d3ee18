//! The router driven by the tools operators use: curl, openssl s_client, and the `terminus`
//! binary itself (quick start, SIGTERM). The test command installs curl and openssl.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use terminus_test_support::{ready_file, Backend, KeyType};
use tokio::process::Command;

use crate::harness::{Builder, TestRouter};

fn require(tool: &str) {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is required: run the README's test command, or apt-get install -y {tool}"
    );
}

async fn router() -> (TestRouter, Backend) {
    let echo = Backend::echo("web").await;
    let mut b = Builder::new();
    b.cert("wild", &["*.example.com"], KeyType::EcdsaP256);
    b.cert("rsa", &["rsa.example.com"], KeyType::Rsa2048);
    b.app("web", &[echo.addr])
        .domain("*.example.com", "web", None);
    b.domain("rsa.example.com", "web", None);
    let r = b.start().await;
    (r, echo)
}

fn write_ca(r: &TestRouter, dir: &Path) -> String {
    let path = dir.join("ca.pem");
    std::fs::write(&path, &r.ca.cert_pem).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn curl_over_http1_and_http2_verifies_and_reaches_the_backend() {
    require("curl");
    let (r, echo) = router().await;
    let dir = terminus_test_support::TempDir::new("curl");
    let ca = write_ca(&r, dir.path());
    let port = r.https().port();
    for flag in ["--http1.1", "--http2"] {
        let out = Command::new("curl")
            .args(["-sS", flag, "--cacert", &ca])
            .arg("--resolve")
            .arg(format!("www.example.com:{port}:127.0.0.1"))
            .args([
                "-H",
                "X-Forwarded-For: 9.9.9.9",
                "-w",
                "\n%{http_code} %{http_version}",
            ])
            .arg(format!("https://www.example.com:{port}/curl?x=1"))
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (body, status) = stdout.rsplit_once('\n').unwrap();
        let want = if flag == "--http2" {
            "200 2"
        } else {
            "200 1.1"
        };
        assert_eq!(status, want);
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["uri"], "/curl?x=1");
        let xff: Vec<&str> = json["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h[0] == "x-forwarded-for")
            .map(|h| h[1].as_str().unwrap())
            .collect();
        assert_eq!(xff, ["9.9.9.9, 127.0.0.1"]);
    }
    assert_eq!(echo.requests(), 2);
    r.shutdown().await;
}

async fn s_client(port: u16, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        // Debian's system config would stop the client itself from offering TLS 1.0/1.1.
        .env("OPENSSL_CONF", "/dev/null")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let established = text.contains("Cipher is ") && !text.contains("Cipher is (NONE)");
    (established, text)
}

#[tokio::test]
async fn openssl_s_client_sees_the_policy() {
    require("openssl");
    let (r, _echo) = router().await;
    let dir = terminus_test_support::TempDir::new("openssl");
    let ca = write_ca(&r, dir.path());
    let port = r.https().port();

    let (ok, text) = s_client(
        port,
        &[
            "-servername",
            "www.example.com",
            "-CAfile",
            &ca,
            "-verify_return_error",
        ],
    )
    .await;
    assert!(ok, "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");
    assert!(text.contains("subject=CN = *.example.com"), "{text}");

    let (ok, text) = s_client(port, &["-servername", "WWW.Example.COM.", "-tls1_2"]).await;
    assert!(ok, "case and trailing dot are ignored: {text}");
    assert!(text.contains("subject=CN = *.example.com"), "{text}");

    // The server's suite order wins: AES-128-GCM even for a client that lists AES-256 first;
    // AES-256-GCM (still in the policy) for a client that offers only that; ChaCha20 for a
    // client that lists it first (no AES hardware).
    for (offered, chosen) in [
        (
            "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256",
            "TLS_AES_128_GCM_SHA256",
        ),
        ("TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384"),
        (
            "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256",
            "TLS_CHACHA20_POLY1305_SHA256",
        ),
    ] {
        let args = ["-servername", "www.example.com", "-ciphersuites", offered];
        let (ok, text) = s_client(port, &args).await;
        assert!(ok, "{text}");
        assert!(text.contains(chosen), "{offered} -> {chosen}: {text}");
    }

    // ECDHE-RSA for the RSA certificate over TLS 1.2.
    let (ok, text) = s_client(
        port,
        &[
            "-servername",
            "rsa.example.com",
            "-tls1_2",
            "-cipher",
            "ECDHE-RSA-AES128-GCM-SHA256",
        ],
    )
    .await;
    assert!(ok, "{text}");
    assert!(text.contains("ECDHE-RSA-AES128-GCM-SHA256"), "{text}");

    for (args, what) in [
        (vec!["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"], "TLS 1.0"),
        (vec!["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"], "TLS 1.1"),
        (
            vec!["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"],
            "CBC suite",
        ),
        (
            vec!["-tls1_2", "-cipher", "AES128-GCM-SHA256"],
            "static RSA suite",
        ),
        (
            vec!["-tls1_2", "-cipher", "ECDHE-ECDSA-AES256-SHA384"],
            "CBC-SHA384 suite",
        ),
    ] {
        let mut all = vec!["-servername", "www.example.com"];
        all.extend(args);
        let (ok, text) = s_client(port, &all).await;
        assert!(!ok, "{what} must be refused: {text}");
        assert!(
            text.contains("alert"),
            "{what}: refused with an alert: {text}"
        );
    }
    assert_eq!(
        r.metric(
            r#"terminus_tls_handshakes_total{result="failed",version="",reason="protocol_version"}"#
        )
        .await,
        2.0
    );

    // No certificate for the name and no default: refused with unrecognized_name (112).
    let (ok, text) = s_client(port, &["-servername", "nobody.test"]).await;
    assert!(!ok);
    assert!(
        text.contains("alert number 112") || text.contains("unrecognized name"),
        "{text}"
    );
    r.shutdown().await;
}

#[tokio::test]
async fn the_binary_quick_start_serves_and_drains_on_sigterm() {
    require("curl");
    let echo = Backend::echo("quick").await;
    let dir = terminus_test_support::TempDir::new("bin");
    let ca = terminus_test_support::Ca::root("Quick Start CA");
    let leaf = ca.leaf(&["localhost"], KeyType::EcdsaP256);
    let (crt, key) = leaf.write(dir.path(), "localhost", &[]);
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca.cert_pem).unwrap();

    // Ports chosen by the OS, reported in the ready file: nothing to race for.
    let ready = dir.path().join("ready.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_terminus"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--cert")
        .arg(&crt)
        .arg("--key")
        .arg(&key)
        .args([
            "--backend",
            &echo.addr.to_string(),
            "--admin",
            "127.0.0.1:0",
        ])
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let bound = ready_file(&ready, Duration::from_secs(10), || {
        matches!(child.try_wait(), Ok(Some(_)))
    })
    .await;
    assert_eq!(bound.pid, child.id().unwrap());
    assert_eq!(bound.store, "none");
    let port = bound.https().port();
    assert_ne!(port, 0);
    assert_ne!(bound.admin.port(), 0);

    let url = format!("https://localhost:{port}/slow?ms=800");
    let slow = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&ca_path)
        .args(["-o", "/dev/null", "-w", "%{http_code}", &url])
        .output();
    let slow = tokio::spawn(slow);
    // SIGTERM once the request is in flight: the backend has it.
    echo.wait_for_requests(1).await;
    let pid = child.id().unwrap().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after draining")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!ready.exists(), "the ready file is removed on a clean exit");
    let out = slow.await.unwrap().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The router log line went to stdout.
    let mut stdout = String::new();
    use tokio::io::AsyncReadExt;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .await
        .unwrap();
    assert!(
        stdout.contains("at=info method=GET path=\"/slow?ms=800\" host=localhost"),
        "{stdout}"
    );
}

#[tokio::test]
async fn bad_config_exits_64_naming_file_and_key() {
    let dir = terminus_test_support::TempDir::new("badcfg");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[tls]\nmin_version = \"1.0\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_terminus"))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: tls.min_version: '1.0' is not supported",
            path.display()
        )),
        "{err}"
    );
}

/// The allocator settings in `.cargo/config.toml` reach the binary (they are read when jemalloc
/// is built): jemalloc prints its options when asked to at exit.
#[tokio::test]
async fn the_binary_carries_its_allocator_settings() {
    let out = Command::new(env!("CARGO_BIN_EXE_terminus"))
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stderr);
    for option in [
        "opt.background_thread: true",
        "opt.tcache_nslots_small_min: 64",
        "opt.tcache_nslots_small_max: 512",
        "opt.tcache_gc_incr_bytes: 1048576",
        "opt.tcache_gc_delay_bytes: 1048576",
    ] {
        assert!(stats.contains(option), "{option} missing from:\n{stats}");
    }
}

#[tokio::test]
async fn completions_man_page_and_per_command_help() {
    let run = |args: &'static [&'static str]| {
        Command::new(env!("CARGO_BIN_EXE_terminus"))
            .args(args)
            .output()
    };
    for shell in ["bash", "zsh", "fish"] {
        let out = run(match shell {
            "bash" => &["completions", "bash"],
            "zsh" => &["completions", "zsh"],
            _ => &["completions", "fish"],
        })
        .await
        .unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("certs:add") && text.contains("--confirm"),
            "{shell}: {text}"
        );
    }
    let out = run(&["man"]).await.unwrap();
    assert!(out.status.success());
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(
        man.starts_with(".ie") || man.contains(".TH terminus"),
        "{man}"
    );
    let out = run(&["serve", "--help"]).await.unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--data-dir") && help.contains("Exit codes:"),
        "{help}"
    );
    assert!(
        !help.contains("--url") && !help.contains("--token"),
        "{help}"
    );
    let out = run(&["certs:remove", "--help"]).await.unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--confirm") && help.contains("Example:") && help.contains("--url"),
        "{help}"
    );
    // serve takes no token on its command line: it would show in the process list.
    let out = run(&["serve", "--token", "x"]).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn health_probes_the_admin_address_its_config_gives() {
    let (r, _echo) = router().await;
    let dir = terminus_test_support::TempDir::new("health");
    let config = |name: &str, admin: String| {
        let path = dir.path().join(name);
        let text =
            format!("[[listener]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"{admin}\"\n");
        std::fs::write(&path, text).unwrap();
        path
    };
    let port = r.router.admin.port();
    let up = config("up.toml", r.router.admin.to_string());
    // A container's config listens on every interface; the probe goes to loopback.
    let wildcard = config("wildcard.toml", format!("0.0.0.0:{port}"));
    let down = config(
        "down.toml",
        terminus_test_support::reserve_port().unwrap().to_string(),
    );
    let health = |args: Vec<String>, env: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_terminus"));
        cmd.arg("health").args(args).env_remove("TERMINUS_CONFIG");
        if let Some(path) = env {
            cmd.env("TERMINUS_CONFIG", path);
        }
        async move {
            let out = cmd.output().await.unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let flag = |path: &Path| vec!["--config".to_owned(), path.display().to_string()];

    assert_eq!(health(flag(&up), None).await.0, Some(0));
    assert_eq!(health(flag(&wildcard), None).await.0, Some(0));
    assert_eq!(health(vec![], Some(&up)).await.0, Some(0));
    let (code, err) = health(flag(&down), None).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("unhealthy: 127.0.0.1:"), "{err}");
    // --admin wins over the config, from the environment or not.
    let admin = vec!["--admin".to_owned(), r.router.admin.to_string()];
    assert_eq!(health(admin, Some(&down)).await.0, Some(0));
    let (code, err) = health(flag(&dir.path().join("missing.toml")), None).await;
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("missing.toml"), "{err}");
}
