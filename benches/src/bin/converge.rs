//! Convergence of a fleet: how long from the admin API's answer on one router until a new TLS
//! handshake on every router serves the change.
//!
//! Starts a 3-member etcd cluster and 3 `terminus` processes (fleet mode) on loopback ports,
//! adds one certificate, then replaces it `--changes` times, each time through the next router
//! in turn. After each 200, every router is probed with new handshakes (back to back, no pause)
//! until it serves the new leaf; the change's convergence time is the slowest router's. Prints
//! p50, p90, p99 and the maximum. Bounded: each change must converge within 10 s, the whole run
//! within 10 minutes. Needs `etcd` (Debian: etcd-server).
//!
//! `cargo run --release -p terminus-benches --bin converge -- [--changes 100] [--router PATH]`
//!
//! With `--preload N` it measures a router's start on a large fleet instead: N certificates
//! (`c{i}.scale.test`, ECDSA P-256, minted and sealed with the fleet key as the API would) are
//! written to etcd in transactions of 1,000, then one router starts on an empty mirror; printed
//! are the time from its spawn to the first handshake serving one of them, and its RSS then;
//! then the same router is restarted on the mirror it wrote (the usual restart) and timed again.
//! `--work DIR` keeps the etcd cluster's data (and its ports) in DIR, so a later run with the
//! same `--preload N` skips writing the certificates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use terminus_test_support::wait::{ready_file, reserve_port};
use terminus_test_support::{Ca, ClientOptions, KeyType, TempDir, TlsClient};

const TOKEN: &str = "converge-bench-token-0123456789";
const PER_CHANGE: Duration = Duration::from_secs(10);
const WHOLE_RUN: Duration = Duration::from_secs(600);
const HOST: &str = "www.converge.test";

struct Killed(Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Router {
    https: SocketAddr,
    api: terminus_api::Client,
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let changes: usize = arg("--changes").map_or(Ok(100), |s| s.parse())?;
    let router_bin = arg("--router").map_or_else(default_router, PathBuf::from);
    if !router_bin.exists() {
        bail!("{} does not exist: build it (cargo build --release --bin terminus) or pass --router PATH", router_bin.display());
    }
    if Command::new("etcd").arg("--version").output().is_err() {
        bail!("etcd is not installed: apt-get install -y etcd-server");
    }
    let started = Instant::now();
    let temp = TempDir::new("converge");
    let work = arg("--work").map(PathBuf::from);
    let dir = work.as_deref().unwrap_or(temp.path());
    std::fs::create_dir_all(dir)?;
    let mut children = Killed(Vec::new());
    let endpoints = start_etcd(dir, 3, &mut children).await?;
    std::fs::write(dir.join("fleet.key"), "7f".repeat(32))?;
    if let Some(n) = arg("--preload") {
        return scale(dir, &endpoints, n.parse()?, &router_bin, &mut children).await;
    }
    let ca = Ca::root("Converge Bench Root");
    let mut routers = Vec::new();
    for i in 0..3 {
        routers.push(start_router(dir, i, &endpoints, &router_bin, &mut children).await?);
    }
    let first = &routers[0];
    call(
        first,
        "POST",
        "/v1/apps",
        serde_json::json!({"name": "web", "backends": ["127.0.0.1:9"]}),
    )
    .await?;
    call(
        first,
        "POST",
        "/v1/domains",
        serde_json::json!({"hostname": HOST, "app": "web"}),
    )
    .await?;
    let leaf = ca.leaf(&[HOST], KeyType::EcdsaP256);
    call(first, "POST", "/v1/certs", serde_json::json!({"name": "www", "certificate_chain": leaf.cert_pem, "private_key": leaf.key_pem})).await?;
    let client = TlsClient::new(ClientOptions::sni(HOST).roots(vec![ca.cert_der.clone()]));
    for r in &routers {
        served_within(&client, r.https, leaf.cert_der.as_ref()).await?;
    }

    let mut times = Vec::with_capacity(changes);
    for n in 0..changes {
        if started.elapsed() > WHOLE_RUN {
            bail!("the run took longer than {WHOLE_RUN:?}");
        }
        let leaf = ca.leaf(&[HOST], KeyType::EcdsaP256);
        let via = &routers[n % routers.len()];
        call(
            via,
            "PUT",
            "/v1/certs/www",
            serde_json::json!({"certificate_chain": leaf.cert_pem, "private_key": leaf.key_pem}),
        )
        .await?;
        let answered = Instant::now();
        let waits = routers
            .iter()
            .map(|r| served_within(&client, r.https, leaf.cert_der.as_ref()));
        for w in futures_join(waits).await {
            w?;
        }
        times.push(answered.elapsed());
    }
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "fleet convergence: {changes} changes, 3 routers, 3 etcd members (router: {})",
        router_bin.display()
    );
    println!("from the API's answer to a new handshake serving the change on every router:");
    println!(
        "  p50 {:.1} ms   p90 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
        ms(pct(0.5)),
        ms(pct(0.9)),
        ms(pct(0.99)),
        ms(times[times.len() - 1])
    );
    println!(
        "  target p99 <= 1000 ms: {}",
        if pct(0.99) <= Duration::from_secs(1) {
            "met"
        } else {
            "MISSED"
        }
    );
    Ok(())
}

fn default_router() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    Path::new(&target).join("release/terminus")
}

/// Runs the futures concurrently and returns their outputs in order.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

fn served_within(
    client: &TlsClient,
    addr: SocketAddr,
    want: &[u8],
) -> impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static {
    let client = client.clone();
    let want = want.to_vec();
    async move {
        let deadline = Instant::now() + PER_CHANGE;
        loop {
            let served = client.connect(addr).await.ok().and_then(|c| c.served);
            if served
                .as_ref()
                .is_some_and(|c| c.as_ref() == want.as_slice())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{addr} did not serve the change within {PER_CHANGE:?}");
            }
        }
    }
}

async fn call(r: &Router, method: &str, path: &str, body: serde_json::Value) -> anyhow::Result<()> {
    let (status, _, reply) = r
        .api
        .send(
            method.parse()?,
            path,
            Bytes::from(serde_json::to_vec(&body)?),
            Some(TOKEN),
        )
        .await?;
    if !status.is_success() {
        bail!(
            "{method} {path}: {status} {}",
            String::from_utf8_lossy(&reply)
        );
    }
    Ok(())
}

async fn start_etcd(dir: &Path, n: usize, children: &mut Killed) -> anyhow::Result<Vec<String>> {
    // A member keeps its peers' addresses in its data: a reused --work directory reuses them.
    let ports_file = dir.join("etcd-ports");
    let ports: Vec<(u16, u16)> = match std::fs::read_to_string(&ports_file) {
        Ok(text) => text
            .split_whitespace()
            .map(|pair| {
                let (c, p) = pair.split_once(':').context("etcd-ports")?;
                Ok((c.parse()?, p.parse()?))
            })
            .collect::<anyhow::Result<_>>()?,
        Err(_) => {
            let ports: Vec<(u16, u16)> = (0..n)
                .map(|_| Ok((reserve_port()?.port(), reserve_port()?.port())))
                .collect::<std::io::Result<_>>()?;
            let text: Vec<String> = ports.iter().map(|(c, p)| format!("{c}:{p}")).collect();
            std::fs::write(&ports_file, text.join(" "))?;
            ports
        }
    };
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut endpoints = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let c = format!("http://127.0.0.1:{client}");
        let p = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(dir.join(format!("m{i}")))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args([
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
            ])
            .args([
                "--initial-cluster",
                &initial,
                "--initial-cluster-state",
                "new",
            ])
            // Room for --preload's transactions of 1,000 certificates and a large fleet.
            .args(["--max-txn-ops", "2000", "--max-request-bytes", "16777216"])
            .args(["--quota-backend-bytes", "8589934592"])
            .args(["--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn etcd")?;
        children.0.push(child);
        endpoints.push(c);
    }
    for (client, _) in &ports {
        wait_health(*client).await?;
    }
    Ok(endpoints)
}

/// Waits until a member says it is healthy (etcd's `/health` on its client port).
async fn wait_health(port: u16) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let _ = tcp
                .write_all(b"GET /health HTTP/1.1\r\nhost: etcd\r\nconnection: close\r\n\r\n")
                .await;
            let mut out = String::new();
            let _ = tcp.read_to_string(&mut out).await;
            if out.contains("\"health\":\"true\"") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("etcd on port {port} is not healthy after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_router(
    dir: &Path,
    i: usize,
    endpoints: &[String],
    bin: &Path,
    children: &mut Killed,
) -> anyhow::Result<Router> {
    Ok(spawn_router(dir, i, endpoints, bin, children).await?.0)
}

/// Starts router `i`; returns it with its pid.
async fn spawn_router(
    dir: &Path,
    i: usize,
    endpoints: &[String],
    bin: &Path,
    children: &mut Killed,
) -> anyhow::Result<(Router, u32)> {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let token = dir.join("token");
    std::fs::write(&token, TOKEN)?;
    let key = dir.join("fleet.key");
    let config = dir.join(format!("r{i}.toml"));
    std::fs::write(
        &config,
        format!(
            "[router]\naccess_log = false\n\n[[listener]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n\n[store]\ndir = \"{}\"\nkey_file = \"{}\"\nbackend = \"etcd\"\nendpoints = [{}]\n",
            token.display(),
            dir.join(format!("r{i}")).display(),
            key.display(),
            eps.join(", ")
        ),
    )?;
    let ready = dir.join(format!("r{i}.ready"));
    let log = dir.join(format!("r{i}.log"));
    let mut child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("spawn terminus")?;
    let pid = child.id();
    let mut exited = false;
    let r = ready_file(&ready, Duration::from_secs(600), || {
        exited = child.try_wait().is_ok_and(|s| s.is_some());
        if exited {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            eprintln!("converge: router {i} exited; its log:\n{text}");
        }
        exited
    })
    .await;
    children.0.push(child);
    Ok((
        Router {
            https: r.https(),
            api: terminus_api::Client::new(&format!("http://{}", r.admin), Some(TOKEN.into()))?,
        },
        pid,
    ))
}

/// `--preload N`: a router's start on a fleet of N certificates.
async fn scale(
    dir: &Path,
    endpoints: &[String],
    n: u64,
    bin: &Path,
    children: &mut Killed,
) -> anyhow::Result<()> {
    let ca = Ca::root("Converge Scale Root");
    let marker = dir.join(format!("preloaded-{n}"));
    let ca_file = dir.join("scale-ca.der");
    if marker.exists() {
        eprintln!(
            "converge: {n} certificates already in etcd ({})",
            dir.display()
        );
    } else {
        let began = Instant::now();
        preload(dir, endpoints, n, &ca).await?;
        std::fs::write(&ca_file, ca.cert_der.as_ref())?;
        std::fs::write(&marker, "")?;
        eprintln!(
            "converge: {n} certificates written to etcd in {:.1} s",
            began.elapsed().as_secs_f64()
        );
    }
    let root = std::fs::read(&ca_file).context("the scale CA (rerun without --work's data)")?;
    let _ = std::fs::remove_dir_all(dir.join("r0"));
    println!(
        "fleet start: {n} certificates in etcd (router: {})",
        bin.display()
    );
    use terminus_benches::procfs::{clock_ticks_per_second, cpu_ticks};
    let etcd_pids: Vec<u32> = children.0.iter().map(Child::id).collect();
    let etcd_cpu = || {
        etcd_pids
            .iter()
            .filter_map(|p| cpu_ticks(*p).ok())
            .sum::<u64>()
    };
    let seconds = |ticks: u64| ticks as f64 / clock_ticks_per_second() as f64;
    for what in ["an empty mirror", "its own mirror"] {
        let etcd_before = etcd_cpu();
        let (first, rss_kib, router_ticks) =
            start_and_probe(dir, endpoints, n, bin, &root, children).await?;
        println!(
            "  on {what}: spawn to first handshake serving one of them {:.1} s; RSS then {:.0} MiB, {:.2} KiB per certificate",
            first.as_secs_f64(),
            rss_kib / 1024.0,
            rss_kib / n.max(1) as f64
        );
        println!(
            "    CPU until then: router {:.1} s, etcd members {:.1} s",
            seconds(router_ticks),
            seconds(etcd_cpu() - etcd_before)
        );
        if let Some(pid) = children.0.last().map(Child::id) {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if let Ok(kib) = terminus_benches::procfs::rss_kib(pid) {
                println!(
                    "    RSS 5 s later: {:.0} MiB, {:.2} KiB per certificate",
                    kib as f64 / 1024.0,
                    kib as f64 / n.max(1) as f64
                );
            }
        }
        let log = std::fs::read_to_string(dir.join("r0.log")).unwrap_or_default();
        for phase in [
            "fleet store listed",
            "fleet store synchronised",
            "store loaded",
        ] {
            let took = log
                .lines()
                .find(|l| l.contains(phase))
                .and_then(|l| l.split("took_ms=").nth(1))
                .and_then(|v| v.split_whitespace().next());
            if let Some(ms) = took {
                println!("    {phase}: {ms} ms");
            }
        }
        // Stop the router; the next start finds the mirror it wrote.
        if let Some(mut child) = children.0.pop() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    Ok(())
}

/// Starts router 0 and times its spawn to the first handshake serving `c{n/2}`; returns that
/// time, its RSS (KiB) and its CPU ticks then. The router stays in `children`, last.
async fn start_and_probe(
    dir: &Path,
    endpoints: &[String],
    n: u64,
    bin: &Path,
    root: &[u8],
    children: &mut Killed,
) -> anyhow::Result<(Duration, f64, u64)> {
    let _ = std::fs::remove_file(dir.join("r0.ready"));
    let spawned = Instant::now();
    let (router, pid) = spawn_router(dir, 0, endpoints, bin, children).await?;
    let host = format!("c{}.scale.test", n / 2);
    let root = rustls::pki_types::CertificateDer::from(root.to_vec());
    let client = TlsClient::new(ClientOptions::sni(&host).roots(vec![root]));
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let served = client
            .connect(router.https)
            .await
            .ok()
            .and_then(|c| c.served);
        if served.is_some() {
            break;
        }
        if Instant::now() > deadline {
            bail!("no handshake for {host} within 300 s of the start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = spawned.elapsed();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    let ticks = terminus_benches::procfs::cpu_ticks(pid)?;
    Ok((first, rss_kib, ticks))
}

/// Writes `n` certificates to etcd through a store whose writes etcd decides, as the API does.
async fn preload(dir: &Path, endpoints: &[String], n: u64, ca: &Ca) -> anyhow::Result<()> {
    use terminus_store::{CertRecord, Store};
    let mut config = terminus_config::StoreConfig::in_dir(dir.join("seed"));
    config.key_file = dir.join("fleet.key");
    let store = std::sync::Arc::new(Store::open(&config)?);
    let etcd = terminus_store::fleet::Etcd::new(&terminus_config::EtcdConfig {
        endpoints: endpoints.to_vec(),
        prefix: terminus_config::DEFAULT_ETCD_PREFIX.into(),
        ca_file: None,
        cert_file: None,
        key_file: None,
        user: None,
        password_file: None,
    })?;
    store.set_remote(etcd);
    let provider = terminus_tls::provider(true);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let mut batch = Vec::with_capacity(1000);
    for i in 0..n {
        let host = format!("c{i}.scale.test");
        let leaf = ca.leaf(&[&host], KeyType::EcdsaP256);
        let prepared = terminus_tls::prepare(
            leaf.cert_pem.as_bytes(),
            leaf.key_pem.as_bytes(),
            &terminus_tls::PrepareOptions::default(),
            &provider,
            now,
        )?;
        let name = format!("c{i}");
        batch.push(CertRecord {
            current: store.seal_version(&name, 1, &prepared, false, now)?,
            name,
            previous: None,
            created_at: now,
        });
        if batch.len() == 1000 || i + 1 == n {
            let records = std::mem::take(&mut batch);
            let store = store.clone();
            tokio::task::spawn_blocking(move || {
                store.write(|w| {
                    for r in &records {
                        w.put_cert(r)?;
                    }
                    Ok(())
                })
            })
            .await??;
        }
    }
    Ok(())
}
