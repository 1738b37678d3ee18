//! Fleet mode against a real 3-member etcd cluster on loopback ports, with routers sharing it:
//! convergence, conflicts, a killed leader, etcd entirely down (serving goes on, writes 503,
//! recovery without restart), a router restarted while etcd is down, a compaction past a
//! router's watch, and etcd's data holding no key material. Each test starts and stops its own
//! cluster; without the `etcd` binary (Debian: etcd-server) the tests say so and pass.

// Test setup that fails should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub, dead_code)]

mod etcd;
mod pebble;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use terminus_test_support::wait::eventually_async;
use terminus_test_support::{Ca, ClientOptions, KeyType, Leaf, TempDir, TlsClient};

const TOKEN: &str = "fleet-test-token-0123456789";
/// The fleet key every router of a test shares (a test value, never a real one).
const FLEET_KEY: &str = "5f1e7d0c2b3a49586776858493a2b1c0d0e0f1021324354657687980a1b2c3d4";
/// How long a change may take to reach every router in these tests (the target is 1 s; this
/// leaves room for a loaded 2-core machine).
const CONVERGE: Duration = Duration::from_secs(10);

macro_rules! require_etcd {
    () => {
        if !etcd::available() {
            eprintln!("SKIPPED: the etcd server is not installed (Debian: apt-get install etcd-server); fleet tests need a real cluster");
            return;
        }
    };
}

/// One router of the fleet, started in this process on its own data directory.
struct Node {
    router: Option<terminus::Router>,
    config: PathBuf,
}

/// One fleet at a time: three etcd members and three routers are enough for two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Fleet {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    dir: TempDir,
    ca: Ca,
    etcd: etcd::Cluster,
}

impl Fleet {
    async fn start() -> Fleet {
        terminus_test_support::logs::capture();
        let turn = ONE_AT_A_TIME.lock().await;
        Fleet {
            _turn: turn,
            dir: TempDir::new("fleet"),
            ca: Ca::root("Fleet Test Root"),
            etcd: etcd::Cluster::start(3).await,
        }
    }

    /// Writes router `name`'s config, reaching the given etcd `endpoints` with `key`.
    fn config(&self, name: &str, endpoints: &[String], key: &str) -> PathBuf {
        self.config_with(name, endpoints, key, "")
    }

    /// As [`Fleet::config`], with `extra` appended (an `[acme]` section).
    fn config_with(&self, name: &str, endpoints: &[String], key: &str, extra: &str) -> PathBuf {
        let key_file = self.dir.path().join(format!("{name}.fleet.key"));
        std::fs::write(&key_file, format!("{key}\n")).unwrap();
        let token_file = self.dir.path().join("admin.token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let endpoints: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\ntls = true\n\n[[listener]]\naddress = \"127.0.0.1:0\"\ntls = false\n\n[admin]\naddress = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n\n[store]\ndir = \"{}\"\nkey_file = \"{}\"\nbackend = \"etcd\"\nendpoints = [{}]\nprefix = \"/fleet-test/\"\n",
            token_file.display(),
            self.dir.path().join(name).display(),
            key_file.display(),
            endpoints.join(", "),
        );
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, format!("{text}{extra}")).unwrap();
        path
    }

    async fn router(&self, name: &str) -> Node {
        Node::start(self.config(name, &self.etcd.endpoints(), FLEET_KEY)).await
    }

    fn leaf(&self, host: &str) -> Leaf {
        self.ca.leaf(&[host], KeyType::EcdsaP256)
    }
}

async fn start(config: &Path) -> Result<terminus::Router, terminus::StartError> {
    let config = terminus_config::Config::load(config).expect("valid config");
    terminus::start(&config, terminus_metrics::MetricsRegistry::default()).await
}

impl Node {
    async fn start(config: PathBuf) -> Node {
        let router = start(&config).await.expect("router starts");
        Node {
            router: Some(router),
            config,
        }
    }

    fn r(&self) -> &terminus::Router {
        self.router.as_ref().expect("running")
    }

    async fn stop(&mut self) {
        if let Some(r) = self.router.take() {
            r.shutdown().await;
        }
    }

    /// Stops the router and starts it again on the same config and data directory. The old
    /// router's admin connections end on their own tasks just after its shutdown and hold the
    /// store file until then: the start is retried while the file is still held.
    async fn restart(&mut self) {
        self.stop().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match start(&self.config).await {
                Ok(r) => {
                    self.router = Some(r);
                    return;
                }
                Err(e) if e.to_string().contains("already open") => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the store stays held: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("router starts again: {e}"),
            }
        }
    }

    async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let client =
            terminus_api::Client::new(&format!("http://{}", self.r().admin), Some(TOKEN.into()))
                .unwrap();
        let body = body
            .map(|b| serde_json::to_vec(&b).unwrap())
            .unwrap_or_default();
        let (status, _, body) = client
            .send(
                method.parse().unwrap(),
                path,
                Bytes::from(body),
                Some(TOKEN),
            )
            .await
            .expect("api call");
        (
            status.as_u16(),
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }

    async fn admin_get(&self, path: &str) -> (u16, String) {
        admin_get(self.r().admin, path).await
    }

    fn https(&self) -> SocketAddr {
        self.r().https_addr().expect("https")
    }

    /// The leaf a new handshake for `sni` is served now (None: refused).
    async fn served(&self, sni: &str, ca: &Ca) -> Option<Vec<u8>> {
        TlsClient::new(ClientOptions::sni(sni).roots(vec![ca.cert_der.clone()]))
            .connect(self.https())
            .await
            .ok()
            .and_then(|c| c.served)
            .map(|c| c.as_ref().to_vec())
    }
}

async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("admin");
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Waits until every node serves `leaf` for `sni` on a new handshake.
async fn converged(nodes: &[&Node], sni: &str, leaf: &Leaf, ca: &Ca) {
    for (i, n) in nodes.iter().enumerate() {
        eventually_async(
            CONVERGE,
            &format!("router {i} serves the change for {sni}"),
            || async { n.served(sni, ca).await.as_deref() == Some(leaf.cert_der.as_ref()) },
        )
        .await;
    }
}

fn upload(leaf: &Leaf, name: Option<&str>) -> Value {
    let mut v = json!({"certificate_chain": leaf.cert_pem, "private_key": leaf.key_pem});
    if let Some(n) = name {
        v["name"] = json!(n);
    }
    v
}

/// Adds app `web` (an unused backend), domain `host` and certificate `name` through `node`.
async fn seed(node: &Node, name: &str, host: &str, leaf: &Leaf) {
    let (s, v) = node
        .api(
            "POST",
            "/v1/apps",
            Some(json!({"name": "web", "backends": ["127.0.0.1:9"]})),
        )
        .await;
    assert!(s == 201 || s == 409, "{s} {v}");
    let (s, v) = node
        .api(
            "POST",
            "/v1/domains",
            Some(json!({"hostname": host, "app": "web"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = node
        .api("POST", "/v1/certs", Some(upload(leaf, Some(name))))
        .await;
    assert_eq!(s, 201, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_router_reaches_all_conflicts_get_409_and_a_killed_leader_is_survived() {
    require_etcd!();
    let mut fleet = Fleet::start().await;
    let a = fleet.router("a").await;
    let b = fleet.router("b").await;
    let c = fleet.router("c").await;
    let host = "www.fleet.test";
    let first = fleet.leaf(host);
    seed(&a, "www", host, &first).await;
    converged(&[&a, &b, &c], host, &first, &fleet.ca).await;

    // A replacement through another router reaches every router.
    let second = fleet.leaf(host);
    let (s, v) = b
        .api("PUT", "/v1/certs/www", Some(upload(&second, None)))
        .await;
    assert_eq!(s, 200, "{v}");
    converged(&[&a, &b, &c], host, &second, &fleet.ca).await;

    // Two routers replacing one certificate at once: never both applied blindly. Each round
    // either serialises (both 200, the second having seen the first) or one loses with 409;
    // the certificate served everywhere is always one whose update was accepted.
    let mut conflicts = 0;
    for _ in 0..20 {
        let (x, y) = (fleet.leaf(host), fleet.leaf(host));
        let ((sx, vx), (sy, vy)) = tokio::join!(
            a.api("PUT", "/v1/certs/www", Some(upload(&x, None))),
            c.api("PUT", "/v1/certs/www", Some(upload(&y, None))),
        );
        assert!(
            sx == 200 || sy == 200,
            "one update wins: {sx} {vx} / {sy} {vy}"
        );
        for (s, v) in [(sx, &vx), (sy, &vy)] {
            if s == 409 {
                conflicts += 1;
                assert_eq!(v["id"], "conflict", "{v}");
                let m = v["message"].as_str().unwrap();
                assert!(
                    m.contains("certificate 'www' was changed by another router"),
                    "{m}"
                );
            } else {
                assert_eq!(s, 200, "{v}");
            }
        }
        let (_, view) = b.api("GET", "/v1/certs/www", None).await;
        let winner = if sx == 200 && sy != 200 {
            &x
        } else if sy == 200 && sx != 200 {
            &y
        } else {
            // Both accepted, one after the other: the one stored last is served.
            let serial_x = fleet_serial(&x);
            if view["serial"].as_str() == Some(serial_x.as_str()) {
                &x
            } else {
                &y
            }
        };
        converged(&[&a, &b, &c], host, winner, &fleet.ca).await;
        if conflicts > 0 {
            break;
        }
    }
    assert!(
        conflicts > 0,
        "concurrent updates of one certificate produced no conflict in 20 rounds"
    );

    // The leader dies: once the others elect a new one, writes work again and converge.
    let leader = fleet.etcd.leader().await;
    fleet.etcd.kill(leader).await;
    let third = fleet.leaf(host);
    eventually_async(
        Duration::from_secs(20),
        "a write succeeds after the election",
        || async {
            a.api("PUT", "/v1/certs/www", Some(upload(&third, None)))
                .await
                .0
                == 200
        },
    )
    .await;
    converged(&[&a, &b, &c], host, &third, &fleet.ca).await;

    // Nothing etcd keeps on disk holds a usable private key.
    let keys: Vec<Vec<u8>> = [&first, &second, &third]
        .iter()
        .map(|l| key_der(&l.key_pem))
        .collect();
    fleet.etcd.kill_all().await;
    assert_no_key_material(&fleet.etcd.data_dir(), &keys);
    for mut n in [a, b, c] {
        n.stop().await;
    }
}

/// The serial the API shows for a leaf (upper-case hex, colon-free, as certs:info prints it).
fn fleet_serial(leaf: &Leaf) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.cert_der.as_ref()).unwrap();
    cert.raw_serial_as_string().replace(':', "").to_uppercase()
}

fn key_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

/// No file under `dir` holds a private key: not as PEM, not as the DER of any test key, not
/// the raw scalar (the longest run of bytes an EC key could leak as).
fn assert_no_key_material(dir: &Path, keys: &[Vec<u8>]) {
    let mut files = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let bytes = std::fs::read(&p).unwrap();
            files += 1;
            assert!(
                !contains(&bytes, b"PRIVATE KEY"),
                "{} holds a PEM private key",
                p.display()
            );
            for k in keys {
                assert!(
                    !contains(&bytes, k),
                    "{} holds a private key's DER",
                    p.display()
                );
                // The PKCS#8 DER of a P-256 key carries its 32-byte scalar after 36 bytes.
                assert!(
                    !contains(&bytes, &k[36..68]),
                    "{} holds a private key's scalar",
                    p.display()
                );
            }
        }
    }
    assert!(files > 3, "etcd's data directory was read ({files} files)");
}

fn logged(needle: &str) -> bool {
    terminus_test_support::logs::all()
        .iter()
        .any(|l| l.contains(needle))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_down_routers_serve_refuse_writes_and_catch_up_without_a_restart() {
    require_etcd!();
    let mut fleet = Fleet::start().await;
    let mut a = fleet.router("a").await;
    let b = fleet.router("b").await;
    let host = "down.fleet.test";
    let leaf = fleet.leaf(host);
    seed(&a, "down", host, &leaf).await;
    converged(&[&a, &b], host, &leaf, &fleet.ca).await;
    assert_eq!(a.admin_get("/readyz").await, (200, "ready\n".into()));

    fleet.etcd.kill_all().await;
    // Serving goes on; writes fail fast with 503 naming etcd; liveness stays ok while
    // readiness says why.
    converged(&[&a, &b], host, &leaf, &fleet.ca).await;
    let other = fleet.leaf(host);
    let started = std::time::Instant::now();
    let (s, v) = b
        .api("PUT", "/v1/certs/down", Some(upload(&other, None)))
        .await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["id"], "store_unavailable", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("etcd (http://127.0.0.1:"),
        "{v}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the refusal is fast"
    );
    assert_eq!(b.admin_get("/healthz").await.0, 200);
    eventually_async(CONVERGE, "readyz says the store is unreachable", || async {
        let (s, body) = b.admin_get("/readyz").await;
        s == 503 && body.contains("fleet store is unreachable")
    })
    .await;
    eventually_async(CONVERGE, "the store-available gauge drops to 0", || async {
        let (_, metrics) = b.admin_get("/metrics").await;
        metrics.lines().any(|l| l == "terminus_store_available 0")
    })
    .await;

    // A router restarted while etcd is down serves its snapshot, and says so.
    a.restart().await;
    converged(&[&a], host, &leaf, &fleet.ca).await;
    let (s, body) = a.admin_get("/readyz").await;
    assert_eq!(s, 503, "{body}");
    // A router with no snapshot refuses to start, saying what to do.
    let config = fleet.config("fresh", &fleet.etcd.endpoints(), FLEET_KEY);
    let e = start(&config)
        .await
        .expect_err("no snapshot, no etcd: no start")
        .to_string();
    assert!(e.contains("holds no snapshot of the fleet's store"), "{e}");
    assert!(
        e.contains("start this router once while etcd answers"),
        "{e}"
    );

    // etcd returns: both catch up without a restart, and writes work again.
    fleet.etcd.restart_all().await;
    for n in [&a, &b] {
        eventually_async(Duration::from_secs(20), "ready again", || async {
            n.admin_get("/readyz").await.0 == 200
        })
        .await;
    }
    let (s, v) = b
        .api("PUT", "/v1/certs/down", Some(upload(&other, None)))
        .await;
    assert_eq!(s, 200, "{v}");
    converged(&[&a, &b], host, &other, &fleet.ca).await;
    for mut n in [a, b] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_behind_a_compaction_resyncs_to_the_right_state() {
    require_etcd!();
    let mut fleet = Fleet::start().await;
    let a = fleet.router("a").await;
    let mut c = fleet.router("c").await;
    let (kept, dropped) = ("kept.fleet.test", "dropped.fleet.test");
    let (kept_1, dropped_1) = (fleet.leaf(kept), fleet.leaf(dropped));
    seed(&a, "kept", kept, &kept_1).await;
    let (s, v) = a
        .api(
            "POST",
            "/v1/domains",
            Some(json!({"hostname": dropped, "app": "web"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = a
        .api(
            "POST",
            "/v1/certs",
            Some(upload(&dropped_1, Some("dropped"))),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    converged(&[&a, &c], kept, &kept_1, &fleet.ca).await;
    converged(&[&a, &c], dropped, &dropped_1, &fleet.ca).await;

    // Router c is away while one certificate is replaced, one removed, and etcd's history is
    // compacted past what c last saw.
    c.stop().await;
    let kept_2 = fleet.leaf(kept);
    let (s, v) = a
        .api("PUT", "/v1/certs/kept", Some(upload(&kept_2, None)))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = a
        .api("DELETE", "/v1/certs/dropped?confirm=dropped", None)
        .await;
    assert_eq!(s, 200, "{v}");
    let mut etcd = fleet.etcd.client().await;
    let revision = etcd
        .get("/fleet-test/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    etcd.compact(
        revision,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .unwrap();

    // c comes back while etcd is down: it serves its snapshot (the old state, whole)...
    fleet.etcd.kill_all().await;
    c.restart().await;
    converged(&[&c], kept, &kept_1, &fleet.ca).await;
    converged(&[&c], dropped, &dropped_1, &fleet.ca).await;
    // ...and once etcd answers, its watch from that snapshot finds the history compacted: it
    // reads everything again and serves the new state.
    fleet.etcd.restart_all().await;
    eventually_async(
        Duration::from_secs(20),
        "router c is ready again",
        || async { c.admin_get("/readyz").await.0 == 200 },
    )
    .await;
    eventually_async(CONVERGE, "the resync is logged", || async {
        logged("read again after a compaction")
    })
    .await;
    converged(&[&c], kept, &kept_2, &fleet.ca).await;
    eventually_async(
        CONVERGE,
        "the removed certificate is gone from c",
        || async {
            c.served(dropped, &fleet.ca).await.as_deref() != Some(dropped_1.cert_der.as_ref())
        },
    )
    .await;

    // A router holding another fleet key serves none of the fleet's certificates, loudly. The
    // scan that says so runs once serving has begun, so a handshake may find the key first:
    // either way the quarantine is logged and counted, once.
    let wrong = "00".repeat(32);
    let mut x = Node::start(fleet.config("x", &fleet.etcd.endpoints(), &wrong)).await;
    assert!(
        x.served(kept, &fleet.ca).await.is_none(),
        "nothing it cannot sign with is served"
    );
    eventually_async(CONVERGE, "the quarantine is logged", || async {
        logged("does not open with this router's fleet key")
    })
    .await;
    let (_, metrics) = x.admin_get("/metrics").await;
    assert!(
        metrics.contains("terminus_store_quarantined_total 1\n"),
        "{metrics}"
    );
    x.stop().await;
    for mut n in [a, c] {
        n.stop().await;
    }
}

/// TLS 1.3 tickets arrive after the handshake: give the client a moment to read them.
async fn read_tickets(mut conn: terminus_test_support::Connected) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_millis(100), conn.stream.read(&mut buf)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_made_on_one_router_resumes_on_another() {
    require_etcd!();
    let fleet = Fleet::start().await;
    let a = fleet.router("a").await;
    let b = fleet.router("b").await;
    let host = "resume.fleet.test";
    let leaf = fleet.leaf(host);
    seed(&a, "resume", host, &leaf).await;
    converged(&[&a, &b], host, &leaf, &fleet.ca).await;
    for tls12 in [false, true] {
        let what = format!("a session from router a resumes on router b (tls12={tls12})");
        eventually_async(CONVERGE, &what, || async {
            let mut options = ClientOptions::sni(host).roots(vec![fleet.ca.cert_der.clone()]);
            options.shared_sessions = Some(std::sync::Arc::new(
                terminus_test_support::AnyNameSessions::default(),
            ));
            if tls12 {
                options = options.tls12();
            }
            let client = TlsClient::new(options);
            let first = client.connect(a.https()).await.unwrap();
            assert!(!first.resumed);
            read_tickets(first).await;
            let other = client.connect(b.https()).await.unwrap();
            other.resumed
        })
        .await;
    }
    // The keys in etcd are sealed: the raw value is no ticket key.
    let mut etcd = fleet.etcd.client().await;
    let stored = etcd.get("/fleet-test/tickets", None).await.unwrap();
    let sealed = stored.kvs()[0].value();
    assert!(terminus_tls::TicketKeys::from_bytes(sealed).is_err());
    for mut n in [a, b] {
        n.stop().await;
    }
}

/// Over TLS (the members' certificate checked against `tls_ca_file`, a client certificate
/// required) and with etcd authentication: a router with the right password serves and writes;
/// one with a wrong password refuses to start, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_reaches_etcd_over_tls_with_a_client_certificate_and_a_password() {
    require_etcd!();
    terminus_test_support::logs::capture();
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = TempDir::new("fleet-tls");
    let ca = Ca::root("etcd test CA");
    let server = ca.leaf(&["127.0.0.1", "localhost"], KeyType::EcdsaP256);
    let client_leaf = ca.leaf(&["terminus"], KeyType::EcdsaP256);
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_pem = file("ca.pem", &ca.cert_pem);
    let (server_pem, server_key) = (
        file("server.pem", &server.cert_pem),
        file("server.key", &server.key_pem),
    );
    let (client_pem, client_key) = (
        file("client.pem", &client_leaf.cert_pem),
        file("client.key", &client_leaf.key_pem),
    );
    let port = terminus_test_support::reserve_port().unwrap().port();
    let peer = terminus_test_support::reserve_port().unwrap().port();
    let endpoint = format!("https://127.0.0.1:{port}");
    let _etcd = tokio::process::Command::new("etcd")
        .args(["--name", "tls0", "--log-level", "warn"])
        .arg("--data-dir")
        .arg(dir.path().join("etcd"))
        .args([
            "--listen-client-urls",
            &endpoint,
            "--advertise-client-urls",
            &endpoint,
        ])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ])
        .args([
            "--initial-cluster",
            &format!("tls0=http://127.0.0.1:{peer}"),
        ])
        .arg("--cert-file")
        .arg(&server_pem)
        .arg("--key-file")
        .arg(&server_key)
        .arg("--trusted-ca-file")
        .arg(&ca_pem)
        .arg("--client-cert-auth")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn etcd");
    let tls = || {
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(ca.cert_pem.clone()))
            .identity(etcd_client::Identity::from_pem(
                client_leaf.cert_pem.clone(),
                client_leaf.key_pem.clone(),
            ))
    };
    eventually_async(Duration::from_secs(30), "etcd answers over TLS", || {
        let options = etcd_client::ConnectOptions::new().with_tls(tls());
        let endpoint = endpoint.clone();
        async move {
            match etcd_client::Client::connect([endpoint], Some(options)).await {
                Ok(mut c) => c.get("probe", None).await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    let mut root = etcd_client::Client::connect(
        [endpoint.clone()],
        Some(etcd_client::ConnectOptions::new().with_tls(tls())),
    )
    .await
    .unwrap();
    root.user_add("root", "root-password", None).await.unwrap();
    root.user_grant_role("root", "root").await.unwrap();
    root.role_add("fleet").await.unwrap();
    root.role_grant_permission(
        "fleet",
        etcd_client::Permission::read_write("/fleet-test/").with_prefix(),
    )
    .await
    .unwrap();
    root.user_add("router", "router-password", None)
        .await
        .unwrap();
    root.user_grant_role("router", "fleet").await.unwrap();
    root.auth_enable().await.unwrap();

    let config = |name: &str, password: &str| {
        let password_file = file(&format!("{name}.password"), password);
        let key_file = file(&format!("{name}.key"), FLEET_KEY);
        let token_file = file("admin.token", TOKEN);
        file(
            &format!("{name}.toml"),
            &format!(
                "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n\n[store]\ndir = \"{}\"\nkey_file = \"{}\"\nbackend = \"etcd\"\nendpoints = [\"{endpoint}\"]\nprefix = \"/fleet-test/\"\ntls_ca_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\nuser = \"router\"\npassword_file = \"{}\"\n",
                token_file.display(),
                dir.path().join(name).display(),
                key_file.display(),
                ca_pem.display(),
                client_pem.display(),
                client_key.display(),
                password_file.display(),
            ),
        )
    };
    let mut good = Node::start(config("good", "router-password")).await;
    let (s, v) = good
        .api(
            "POST",
            "/v1/apps",
            Some(json!({"name": "web", "backends": ["127.0.0.1:9"]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let mut root_auth = etcd_client::Client::connect(
        [endpoint.clone()],
        Some(
            etcd_client::ConnectOptions::new()
                .with_tls(tls())
                .with_user("root", "root-password"),
        ),
    )
    .await
    .unwrap();
    let stored = root_auth.get("/fleet-test/apps/web", None).await.unwrap();
    assert_eq!(stored.kvs().len(), 1, "the app is in etcd");

    let e = start(&config("bad", "wrong-password"))
        .await
        .expect_err("a wrong password: no start")
        .to_string();
    assert!(e.contains("authentication failed"), "{e}");
    good.stop().await;
}

/// The number of orders a router finished with a certificate.
async fn issued_orders(node: &Node) -> u64 {
    let (_, metrics) = node.admin_get("/metrics").await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("terminus_acme_orders_total{result=\"issued\"} "))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// `host`'s ACM status as `node` shows it.
async fn acm_status(node: &Node, host: &str) -> String {
    let (_, list) = node.api("GET", "/v1/apps/web/acm", None).await;
    list.as_array()
        .and_then(|l| l.iter().find(|d| d["hostname"] == host))
        .and_then(|d| d["status"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Three routers, two with `[acme]` (a and c), and pebble validating `challenge` only on b,
/// which orders nothing: whichever router orders, the answer must reach b through etcd. One
/// domain's lock is held at first by a "router" that died (a lease nobody renews): that domain
/// is ordered only once the lease has expired, by a router that takes it over.
async fn acm_in_a_fleet(challenge: &str) {
    require_etcd!();
    if !pebble::available() {
        return;
    }
    let fleet = Fleet::start().await;
    let ports = pebble::Ports::new();
    let acme = pebble::acme_toml(&ports, challenge);
    let endpoints = fleet.etcd.endpoints();
    let a = Node::start(fleet.config_with("a", &endpoints, FLEET_KEY, &acme)).await;
    let b = fleet.router("b").await;
    let c = Node::start(fleet.config_with("c", &endpoints, FLEET_KEY, &acme)).await;
    let http = b.r().http_addr().expect("http listener");
    let pebble = ports.start(http.port(), b.https().port()).await;
    let root = pebble.root().await;

    let hosts = ["one.acm-fleet.test", "two.acm-fleet.test"];
    let (s, v) = a
        .api(
            "POST",
            "/v1/apps",
            Some(json!({"name": "web", "backends": ["127.0.0.1:9"]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    for host in hosts {
        let (s, v) = a
            .api(
                "POST",
                "/v1/domains",
                Some(json!({"hostname": host, "app": "web"})),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    eventually_async(CONVERGE, "router c has the domains", || async {
        let (_, list) = c.api("GET", "/v1/domains", None).await;
        list.as_array().is_some_and(|l| l.len() == hosts.len())
    })
    .await;

    // The second domain's lock, held under a 5 s lease that nobody renews.
    let mut etcd = fleet.etcd.client().await;
    let lease = etcd.lease_grant(5, None).await.unwrap().id();
    let locked = etcd
        .put(
            format!("/fleet-test/locks/acme/{}", hosts[1]),
            "a router that died",
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    let lock_taken = std::time::Instant::now();
    assert!(locked.header().is_some());

    // ACM on through the other router: the fleet shares it.
    let (s, v) = c.api("POST", "/v1/apps/web/acm", None).await;
    assert_eq!(s, 200, "{v}");

    let issue = Duration::from_secs(90);
    eventually_async(
        issue,
        "the first domain issued, as every ACM router shows it",
        || async {
            acm_status(&a, hosts[0]).await == "Cert issued"
                && acm_status(&c, hosts[0]).await == "Cert issued"
        },
    )
    .await;
    assert_ne!(
        acm_status(&a, hosts[1]).await,
        "Cert issued",
        "the second domain waits for its lock"
    );
    eventually_async(
        issue,
        "the second domain issued once its lock expired",
        || async {
            acm_status(&a, hosts[1]).await == "Cert issued"
                && acm_status(&c, hosts[1]).await == "Cert issued"
        },
    )
    .await;
    assert!(
        lock_taken.elapsed() >= Duration::from_secs(4),
        "the held lock was respected"
    );

    // Every router serves both certificates, verified to pebble's root.
    for host in hosts {
        for (i, n) in [&a, &b, &c].iter().enumerate() {
            eventually_async(CONVERGE, &format!("router {i} serves {host}"), || async {
                TlsClient::new(ClientOptions::sni(host).roots(vec![root.clone()]))
                    .connect(n.https())
                    .await
                    .is_ok()
            })
            .await;
        }
    }

    // One order per domain across the fleet, and pebble validated only through b.
    let orders = issued_orders(&a).await + issued_orders(&c).await;
    assert_eq!(
        orders,
        hosts.len() as u64,
        "one order per domain: {}",
        pebble.log()
    );
    drop(pebble);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acm_orders_each_domain_once_and_another_router_answers_http01() {
    acm_in_a_fleet("http-01").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acm_orders_each_domain_once_and_another_router_answers_tls_alpn01() {
    acm_in_a_fleet("tls-alpn-01").await;
}

/// The order URL stored in `host`'s shared ACM record (a postcard record: the URL's bytes sit
/// in it as they are).
async fn stored_order_url(fleet: &Fleet, host: &str) -> Option<String> {
    let mut etcd = fleet.etcd.client().await;
    let resp = etcd
        .get(format!("/fleet-test/acme/domain:{host}"), None)
        .await
        .ok()?;
    let raw = resp.kvs().first()?.value().to_vec();
    let text = String::from_utf8_lossy(&raw);
    let start = text.find("https://localhost:")?;
    Some(
        text[start..]
            .chars()
            .take_while(|c| c.is_ascii_graphic())
            .collect(),
    )
}

/// A router stops mid-order (its DNS-01 hook held): its lock goes, and another router resumes
/// the same stored order and finishes it; one certificate, issued once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acm_an_order_left_by_a_stopped_router_is_finished_by_another() {
    require_etcd!();
    if !pebble::available() {
        return;
    }
    let fleet = Fleet::start().await;
    let ports = pebble::Ports::new();
    let acme = pebble::acme_dns_toml(&ports);
    let hold = pebble::hold(&ports);
    std::fs::write(&hold, "").unwrap();
    let endpoints = fleet.etcd.endpoints();
    let mut a = Node::start(fleet.config_with("a", &endpoints, FLEET_KEY, &acme)).await;
    let b = fleet.router("b").await;
    let http = b.r().http_addr().expect("http listener");
    let pebble = ports.start(http.port(), b.https().port()).await;
    let root = pebble.root().await;

    let host = "takeover.acm-fleet.test";
    let (s, v) = a
        .api(
            "POST",
            "/v1/apps",
            Some(json!({"name": "web", "backends": ["127.0.0.1:9"]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = a
        .api(
            "POST",
            "/v1/domains",
            Some(json!({"hostname": host, "app": "web"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = a.api("POST", "/v1/apps/web/acm", None).await;
    assert_eq!(s, 200, "{v}");

    // a holds the lock and its order is open, its hook waiting.
    eventually_async(Duration::from_secs(30), "a's order is open", || async {
        stored_order_url(&fleet, host).await.is_some()
    })
    .await;
    let order = stored_order_url(&fleet, host).await.unwrap();
    let mut etcd = fleet.etcd.client().await;
    let lock_key = format!("/fleet-test/locks/acme/{host}");
    assert_eq!(
        etcd.get(lock_key.clone(), None).await.unwrap().kvs().len(),
        1
    );

    // c joins, finds the order held, and leaves it alone while a works.
    let c = Node::start(fleet.config_with("c", &endpoints, FLEET_KEY, &acme)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(acm_status(&c, host).await, "In Progress");
    assert_eq!(issued_orders(&c).await, 0);

    // a stops mid-order; c takes the order over and finishes it.
    a.stop().await;
    std::fs::remove_file(&hold).unwrap();
    eventually_async(Duration::from_secs(90), "c finishes the order", || async {
        acm_status(&c, host).await == "Cert issued"
    })
    .await;
    assert_eq!(issued_orders(&c).await, 1);
    // One order at the CA: the one a opened, finalized by c.
    let log = pebble.log();
    let id = order.rsplit('/').next().unwrap();
    // Counted where pebble stores an order: a request it answers with badNonce (5 % of them,
    // on purpose) is retried and logged twice without opening a second order.
    assert_eq!(log.matches("Added order").count(), 1, "{log}");
    assert!(
        log.contains(&format!("for order {id}")),
        "pebble issued for the order a opened ({order}): {log}"
    );
    for (i, n) in [&b, &c].iter().enumerate() {
        eventually_async(CONVERGE, &format!("router {i} serves {host}"), || async {
            TlsClient::new(ClientOptions::sni(host).roots(vec![root.clone()]))
                .connect(n.https())
                .await
                .is_ok()
        })
        .await;
    }
    assert_eq!(
        etcd.get(lock_key, None).await.unwrap().kvs().len(),
        0,
        "lock released"
    );
    drop(pebble);
}
