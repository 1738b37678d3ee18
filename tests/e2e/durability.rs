//! The store under the real binary: `kill -9` at any moment loses no acknowledged change and
//! leaves no half-written certificate; a corrupted entry is quarantined (R17) while the rest
//! serve; private keys appear in no response, log line or metric.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use terminus_test_support::{
    ready_file, Backend, Ca, ClientOptions, KeyType, Leaf, TempDir, TlsClient,
};
use tokio::process::{Child, Command};

const TOKEN: &str = "durability-token-0123";

struct Router {
    child: Child,
    https: u16,
    admin: u16,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Router {
    /// Starts `terminus serve --data-dir` on ports the OS chooses and waits for its ready file.
    async fn start(dir: &Path, backend: &Backend, log: &str, run: usize) -> Self {
        let stdout = dir.join(format!("stdout.{run}"));
        let stderr = dir.join(format!("stderr.{run}"));
        let ready = dir.join(format!("ready.{run}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_terminus"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args([
                "--backend",
                &backend.addr.to_string(),
                "--admin",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--ready-file")
            .arg(&ready)
            .env("TERMINUS_TOKEN", TOKEN)
            .env("RUST_LOG", log)
            .stdout(Stdio::from(std::fs::File::create(&stdout).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut exited = false;
        let bound = tokio::time::timeout(
            Duration::from_secs(10),
            ready_file(&ready, Duration::from_secs(10), || {
                exited = matches!(child.try_wait(), Ok(Some(_)));
                exited
            }),
        )
        .await;
        let Ok(bound) = bound else {
            panic!(
                "router did not start (exited: {exited}): {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        assert_eq!(bound.store, "ready");
        Self {
            child,
            https: bound.https().port(),
            admin: bound.admin.port(),
            stdout,
            stderr,
        }
    }

    async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_terminus"))
            .args(args)
            .env("TERMINUS_URL", format!("http://127.0.0.1:{}", self.admin))
            .env("TERMINUS_TOKEN", TOKEN)
            .output()
            .await
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn certs(&self) -> Vec<Value> {
        let (code, out, err) = self.cli(&["certs", "--json"]).await;
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    async fn served(&self, sni: &str) -> Option<Vec<u8>> {
        TlsClient::new(ClientOptions::sni(sni))
            .connect(format!("127.0.0.1:{}", self.https).parse().unwrap())
            .await
            .ok()
            .and_then(|c| c.served.map(|d| d.to_vec()))
    }

    /// SIGKILL: no chance to flush or clean up.
    async fn kill9(mut self) -> (String, String) {
        self.child.start_kill().unwrap();
        let _ = self.child.wait().await;
        (
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        )
    }
}

fn files(dir: &Path, stem: &str, leaf: &Leaf) -> (String, String) {
    let (c, k) = leaf.write(dir, stem, &[]);
    (c.display().to_string(), k.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_kill_9_and_a_corrupted_entry_is_quarantined() {
    let dir = TempDir::new("durable");
    let backend = Backend::echo("web").await;
    let ca = Ca::root("Durability Root");
    let r = Router::start(dir.path(), &backend, "info", 0).await;
    assert_eq!(
        r.cli(&["apps:create", "web", "--backend", &backend.addr.to_string()])
            .await
            .0,
        0
    );
    let mut leaves = Vec::new();
    for i in 0..3 {
        let host = format!("c{i}.example.com");
        assert_eq!(r.cli(&["domains:add", &host, "--app", "web"]).await.0, 0);
        let leaf = ca.leaf(&[&host], KeyType::EcdsaP256);
        let (c, k) = files(dir.path(), &format!("c{i}"), &leaf);
        let (code, _, err) = r
            .cli(&["certs:add", &c, &k, "--name", &format!("c{i}")])
            .await;
        assert_eq!(code, 0, "{err}");
        leaves.push(leaf);
    }
    let v2 = ca.leaf(&["c0.example.com"], KeyType::EcdsaP256);
    let (c, k) = files(dir.path(), "c0v2", &v2);
    assert_eq!(r.cli(&["certs:update", "--name", "c0", &c, &k]).await.0, 0);

    // Keep adding certificates and kill the router in the middle of it, once a few adds have
    // been acknowledged (the adder reports each; more keep going while the kill lands).
    let (progress, mut acked) = tokio::sync::watch::channel(0usize);
    let adder = {
        let admin = r.admin;
        let dir = dir.path().to_path_buf();
        let ca_pem = ca.leaf(&["x.example.com"], KeyType::EcdsaP256);
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..200 {
                let name = format!("burst{i}");
                let (c, k) = files(&dir, &name, &ca_pem);
                let out = Command::new(env!("CARGO_BIN_EXE_terminus"))
                    .args(["certs:add", &c, &k, "--name", &name])
                    .env("TERMINUS_URL", format!("http://127.0.0.1:{admin}"))
                    .env("TERMINUS_TOKEN", TOKEN)
                    .output()
                    .await
                    .unwrap();
                if out.status.success() {
                    acknowledged.push(name);
                    progress.send_replace(acknowledged.len());
                } else {
                    break;
                }
            }
            acknowledged
        })
    };
    tokio::time::timeout(Duration::from_secs(30), acked.wait_for(|&n| n >= 5))
        .await
        .expect("adds are acknowledged")
        .unwrap();
    r.kill9().await;
    let acknowledged = adder.await.unwrap();
    assert!(
        !acknowledged.is_empty(),
        "some adds were acknowledged before the kill"
    );

    // Restart: every acknowledged change is there, nothing is half-written.
    let r = Router::start(dir.path(), &backend, "info", 1).await;
    let certs = r.certs().await;
    let names: Vec<&str> = certs.iter().map(|c| c["name"].as_str().unwrap()).collect();
    for name in ["c0", "c1", "c2"]
        .iter()
        .copied()
        .chain(acknowledged.iter().map(String::as_str))
    {
        assert!(
            names.contains(&name),
            "{name} lost after kill -9 ({} acknowledged)",
            acknowledged.len()
        );
    }
    assert!(
        certs.iter().all(|c| c["served"] == true),
        "every stored certificate loads: {certs:?}"
    );
    let c0 = certs.iter().find(|c| c["name"] == "c0").unwrap();
    assert_eq!(c0["version"], 2);
    assert_eq!(c0["previous"]["version"], 1);
    assert_eq!(r.served("c0.example.com").await, Some(v2.cert_der.to_vec()));
    assert_eq!(
        r.served("c1.example.com").await,
        Some(leaves[1].cert_der.to_vec())
    );
    let (_, domains, _) = r.cli(&["domains"]).await;
    assert!(domains.contains("c2.example.com  web"), "{domains}");
    let (_, stderr) = r.kill9().await;
    assert!(!stderr.contains("R17"), "{stderr}");

    // Damage one entry the way a bad disk or a mixed-up restore would (content changed,
    // checksum not): that entry is quarantined with R17, everything else serves.
    {
        let config = terminus_config::StoreConfig::in_dir(dir.path().join("data"));
        let store = terminus_store::Store::open(&config).unwrap();
        store
            .write(|w| {
                let mut rec = w.cert("c1")?.unwrap();
                rec.current.names = vec!["evil.example.com".into()];
                w.put_cert(&rec)?;
                // And a record that no longer decodes at all.
                w.put_raw_cert("c9", &[2, 0, 1, 2, 3])
            })
            .unwrap();
    }
    let r = Router::start(dir.path(), &backend, "info", 2).await;
    assert_eq!(r.served("c1.example.com").await, None);
    assert_eq!(r.served("evil.example.com").await, None);
    assert_eq!(
        r.served("c2.example.com").await,
        Some(leaves[2].cert_der.to_vec())
    );
    assert_eq!(r.served("c0.example.com").await, Some(v2.cert_der.to_vec()));
    let certs = r.certs().await;
    let c1 = certs.iter().find(|c| c["name"] == "c1").unwrap();
    assert_eq!(c1["served"], false);
    // The undecodable record is listed as quarantined, with its reason, not dropped.
    let c9 = certs
        .iter()
        .find(|c| c["name"] == "c9")
        .expect("an undecodable record is still listed");
    assert_eq!(c9["served"], false);
    let why = c9["quarantine"].as_str().unwrap();
    assert!(
        why.contains("R17") && why.contains("cannot be decoded"),
        "{why}"
    );
    let (code, info, err) = r.cli(&["certs:info", "--name", "c9"]).await;
    assert_eq!(code, 0, "{info}{err}");
    assert!(info.contains("cannot be decoded"), "{info}");
    let metrics = reqwest_metrics(r.admin).await;
    assert!(
        metrics.contains("terminus_store_quarantined_total 2"),
        "{metrics}"
    );
    let (_, stderr) = r.kill9().await;
    let line = stderr
        .lines()
        .find(|l| l.contains("R17") && l.contains("'c1'"))
        .expect("an R17 log line");
    assert!(
        line.contains("certificate 'c1' quarantined (R17): checksum error"),
        "{line}"
    );
    assert!(line.contains("ERROR"), "{line}");
}

async fn reqwest_metrics(admin: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", admin))
        .await
        .unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_key_appears_in_no_response_log_or_metric() {
    let dir = TempDir::new("secrets");
    let backend = Backend::echo("web").await;
    let ca = Ca::root("Secrets Root");
    // Debug logging for every crate: what an operator turns on while investigating.
    let r = Router::start(
        dir.path(),
        &backend,
        &std::env::var("SECRETS_TEST_LOG").unwrap_or_else(|_| "debug".into()),
        0,
    )
    .await;
    let leaf = ca.leaf(&["secret.example.com"], KeyType::EcdsaP256);
    let (c, k) = files(dir.path(), "secret", &leaf);
    let other = ca.leaf(&["secret.example.com"], KeyType::EcdsaP256);
    let (_, other_key) = files(dir.path(), "other", &other);

    let mut seen = String::new();
    for args in [
        vec!["apps:create", "web", "--backend", &backend.addr.to_string()],
        vec!["domains:add", "secret.example.com", "--app", "web"],
        vec![
            "certs:add",
            &c,
            &k,
            "--name",
            "secret",
            "--domains",
            "secret.example.com",
        ],
        vec!["certs:add", &c, &k, "--name", "secret", "--json"],
        vec!["certs", "--json"],
        vec!["certs:info", "--name", "secret", "--show-domains", "--json"],
        vec!["certs:update", "--name", "secret", &c, &other_key],
        vec!["certs:update", "--name", "secret", &c, &k, "--json"],
        vec!["certs:rollback", "--name", "secret", "--json"],
        vec!["domains", "--json"],
    ] {
        let (_, out, err) = r.cli(&args).await;
        seen.push_str(&out);
        seen.push_str(&err);
    }
    assert!(r.served("secret.example.com").await.is_some());
    seen.push_str(&reqwest_metrics(r.admin).await);
    let (stdout, stderr) = r.kill9().await;
    seen.push_str(&stdout);
    seen.push_str(&stderr);
    assert!(
        seen.contains("duplicate_name") || seen.contains("already exists"),
        "the refusals ran"
    );

    for key_pem in [&leaf.key_pem, &other.key_pem] {
        let der = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let der = der.secret_der();
        let at = der
            .windows(5)
            .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
            .unwrap()
            + 5;
        let scalar = &der[at..at + 32];
        let hex: String = scalar.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!seen.contains(&hex), "private scalar (hex) leaked");
        for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!seen.contains(line), "a line of the key PEM leaked: {line}");
        }
        let body: String = key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert!(
            !seen.contains(&body[10..40]),
            "part of the key's base64 leaked"
        );
    }
}

use rustls::pki_types::pem::PemObject;
