//! A damaged store never takes the router down. For a byte flipped in each 4 KiB page of a small
//! store file in turn (one copy per page), the real router starts, completes a real TLS
//! handshake with the config file's certificate, and either serves the store or says it cannot
//! (API 503, `terminus_store_available 0`); `--store-recover` then salvages the readable
//! records. `check-config` flags the same damage with exit 64.

use std::path::{Path, PathBuf};
use std::time::Duration;

use terminus_store::{CertRecord, Store};
use terminus_test_support::{
    ready_file, Ca, ClientOptions, KeyType, Leaf, Ready, TempDir, TlsClient,
};
use terminus_tls::{prepare, PrepareOptions};

use crate::harness::{Builder, TestRouter};

const PAGE: usize = 4096;
const STORED: usize = 8;

/// A store with `STORED` certificates (`s{i}.example.com`) and one app and domain per
/// certificate, in `dir/data` with its key in `dir/data.key`.
fn pristine_store(dir: &Path) -> Vec<Leaf> {
    let config = terminus_config::StoreConfig::in_dir(dir.join("data"));
    let store = Store::open(&config).unwrap();
    let ca = Ca::root("Damage Root");
    let provider = terminus_tls::provider(true);
    let now = terminus::unix_now();
    let leaves: Vec<Leaf> = (0..STORED)
        .map(|i| ca.leaf(&[&format!("s{i}.example.com")], KeyType::EcdsaP256))
        .collect();
    store
        .write(|w| {
            for (i, leaf) in leaves.iter().enumerate() {
                let p = prepare(
                    leaf.cert_pem.as_bytes(),
                    leaf.key_pem.as_bytes(),
                    &PrepareOptions::default(),
                    &provider,
                    now,
                )
                .unwrap();
                let name = format!("s{i}");
                w.put_cert(&CertRecord {
                    current: store.seal_version(&name, 1, &p, false, now).unwrap(),
                    name,
                    previous: None,
                    created_at: now,
                })?;
                w.put_app(&terminus_store::AppRecord {
                    name: format!("app{i}"),
                    backends: vec!["127.0.0.1:9".into()],
                    created_at: now,
                })?;
                w.put_domain(&terminus_store::DomainRecord {
                    host: format!("s{i}.example.com"),
                    app: format!("app{i}"),
                    cert: None,
                    dns_target: format!("d{i}.terminusdns.test"),
                    created_at: now,
                })?;
            }
            Ok(())
        })
        .unwrap();
    leaves
}

/// A router whose config holds one certificate (`static.example.com`) and a store: a copy of
/// `pristine` with one byte flipped at `at` (none if `None`).
fn builder(pristine: &Path, at: Option<usize>) -> (Builder, Leaf) {
    let mut b = Builder::new();
    b.with_store();
    let leaf = b.cert("static", &["static.example.com"], KeyType::EcdsaP256);
    let data = b.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut bytes = std::fs::read(Store::file_in(&pristine.join("data"))).unwrap();
    if let Some(at) = at {
        bytes[at] ^= 0x5a;
    }
    std::fs::write(Store::file_in(&data), bytes).unwrap();
    std::fs::copy(pristine.join("data.key"), b.dir.path().join("data.key")).unwrap();
    (b, leaf)
}

fn store_len(pristine: &Path) -> usize {
    std::fs::metadata(Store::file_in(&pristine.join("data")))
        .unwrap()
        .len() as usize
}

/// The config's certificate is served, whatever became of the store.
async fn serves_config_cert(r: &TestRouter, leaf: &Leaf) {
    assert_eq!(
        r.served("static.example.com").await,
        Some(leaf.cert_der.clone())
    );
}

async fn stored_served(r: &TestRouter, leaves: &[Leaf]) -> usize {
    let mut n = 0;
    for (i, leaf) in leaves.iter().enumerate() {
        if r.served(&format!("s{i}.example.com")).await == Some(leaf.cert_der.clone()) {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_flipped_in_any_page_never_stops_the_config_certificates() {
    let pristine = TempDir::new("damage-pristine");
    let leaves = pristine_store(pristine.path());
    let len = store_len(pristine.path());
    let (mut unavailable, mut recovered_certs) = (0, 0);
    let flips: Vec<(usize, usize)> = (0..len.div_ceil(PAGE))
        .flat_map(|page| {
            [40, 1000, 2900]
                .into_iter()
                .map(move |o| (page, page * PAGE + (o + page * 389) % PAGE))
        })
        .filter(|&(_, at)| at < len)
        .collect();
    for &(page, at) in &flips {
        let (b, leaf) = builder(pristine.path(), Some(at));
        let r = b.start().await;
        serves_config_cert(&r, &leaf).await;
        match &r.router.store {
            terminus::StoreStatus::Ready => {
                assert_eq!(stored_served(&r, &leaves).await, STORED, "page {page}");
                assert_eq!(r.metric("terminus_store_available ").await, 1.0);
            }
            terminus::StoreStatus::Unavailable(e) => {
                unavailable += 1;
                assert!(e.is_corruption(), "page {page}: {e}");
                assert_eq!(r.metric("terminus_store_available ").await, 0.0);
                let (status, body) = r
                    .api(
                        "POST",
                        "/v1/apps",
                        Some(serde_json::json!({"name": "new", "backends": []})),
                    )
                    .await;
                assert_eq!(status, 503, "page {page}: {body}");

                // The same files, started with --store-recover.
                let dir = r.dir.path().to_path_buf();
                let TestRouter {
                    router, dir: keep, ..
                } = r;
                router.shutdown().await;
                let r = restart(keep, &dir, true).await;
                serves_config_cert(&r, &leaf).await;
                assert!(
                    matches!(r.router.store, terminus::StoreStatus::Ready),
                    "page {page}: {:?}",
                    r.router.store
                );
                let aside: Vec<_> = std::fs::read_dir(dir.join("data"))
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("terminus.redb.damaged-"))
                    .collect();
                assert_eq!(aside.len(), 1, "the damaged file is kept aside: {aside:?}");
                recovered_certs += stored_served(&r, &leaves).await;
                r.shutdown().await;
                continue;
            }
            terminus::StoreStatus::None => panic!("a store is configured"),
        }
        r.shutdown().await;
    }
    println!(
        "{} pages, {} flips: {unavailable} unavailable, {recovered_certs} stored certificates served after --store-recover",
        len.div_ceil(PAGE),
        flips.len()
    );
    assert!(unavailable > 0, "no flip was noticed");
    assert!(
        recovered_certs > 0,
        "--store-recover never salvaged a certificate"
    );
}

/// Starts a router again on the config and files already in `dir`.
async fn restart(keep: TempDir, dir: &Path, store_recover: bool) -> TestRouter {
    let config = terminus_config::Config::load(dir.join("terminus.toml")).unwrap();
    let router = terminus::start_with(
        &config,
        terminus_metrics::MetricsRegistry::default(),
        &terminus::StartOptions {
            store_recover,
            ..Default::default()
        },
    )
    .await
    .expect("router starts");
    TestRouter {
        router,
        ca: Ca::root("unused"),
        dir: keep,
    }
}

/// Flips a byte in every stored copy of one record (copy-on-write leaves old copies in free
/// pages; one of them is live), so a start cannot open the file. Returns the new bytes.
fn damage_one_record(file: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(file).unwrap();
    let needle = b"s3.example.com";
    let hits: Vec<usize> = (0..bytes.len() - needle.len())
        .filter(|&i| &bytes[i..i + needle.len()] == needle)
        .collect();
    assert!(!hits.is_empty());
    for i in hits {
        bytes[i] ^= 0x5a;
    }
    std::fs::write(file, &bytes).unwrap();
    bytes
}

/// Runs `terminus serve --config CONFIG [extra]` until its ready file appears; returns the
/// child and what it bound.
async fn serve(config: &Path, extra: &[&str]) -> (tokio::process::Child, Ready, PathBuf) {
    let dir = config.parent().unwrap();
    let ready = dir.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    let stderr = dir.join(format!("stderr{}", extra.len()));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_terminus"))
        .args(["serve", "--config"])
        .arg(config)
        .arg("--ready-file")
        .arg(&ready)
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let bound = ready_file(&ready, Duration::from_secs(10), || {
        matches!(child.try_wait(), Ok(Some(_)))
    })
    .await;
    (child, bound, stderr)
}

async fn stop(mut child: tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

async fn served_at(addr: std::net::SocketAddr, sni: &str) -> Option<Vec<u8>> {
    TlsClient::new(ClientOptions::sni(sni))
        .connect(addr)
        .await
        .ok()
        .and_then(|c| c.served.map(|d| d.to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_its_config_through_a_damaged_store_and_recovers_it() {
    let pristine = TempDir::new("damage-bin");
    let leaves = pristine_store(pristine.path());
    let (b, leaf) = builder(pristine.path(), None);
    let config = b.write_config();
    damage_one_record(&Store::file_in(&b.dir.path().join("data")));

    let (child, bound, stderr) = serve(&config, &[]).await;
    assert_eq!(bound.store, "unavailable");
    assert_eq!(
        served_at(bound.https(), "static.example.com").await,
        Some(leaf.cert_der.to_vec())
    );
    stop(child).await;
    let log = std::fs::read_to_string(&stderr).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("THE STORE CANNOT BE USED"))
        .unwrap_or_else(|| panic!("a loud line: {log}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("--store-recover"), "{line}");
    assert!(line.contains("backup"), "{line}");

    let (child, bound, stderr) = serve(&config, &["--store-recover"]).await;
    assert_eq!(bound.store, "ready");
    assert_eq!(
        served_at(bound.https(), "static.example.com").await,
        Some(leaf.cert_der.to_vec())
    );
    let mut salvaged = 0;
    for (i, leaf) in leaves.iter().enumerate() {
        let served = served_at(bound.https(), &format!("s{i}.example.com")).await;
        if served == Some(leaf.cert_der.to_vec()) {
            salvaged += 1;
        } else {
            assert_eq!(served, None, "s{i}: nothing else is served for it");
        }
    }
    assert!(salvaged > 0, "certificates in undamaged pages are salvaged");
    stop(child).await;
    let log = std::fs::read_to_string(&stderr).unwrap();
    assert!(
        log.contains("--store-recover: the damaged store was copied into a new file"),
        "{log}"
    );
}

fn check_config(config: &Path) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_terminus"))
        .args(["check-config", "--config"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_checks_the_store_and_says_what_to_do() {
    let pristine = TempDir::new("damage-check");
    pristine_store(pristine.path());
    let (b, _) = builder(pristine.path(), None);
    let config = b.write_config();
    let (code, stdout, stderr) = check_config(&config);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!(
            "{STORED} certificates, {STORED} apps, {STORED} domains"
        )),
        "{stdout}"
    );

    let file = Store::file_in(&b.dir.path().join("data"));
    let bytes = damage_one_record(&file);
    let (code, _, stderr) = check_config(&config);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("terminus.redb"), "{stderr}");
    assert!(stderr.contains("--store-recover"), "{stderr}");
    assert!(stderr.contains("backup"), "{stderr}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        bytes,
        "check-config wrote the file"
    );
}
