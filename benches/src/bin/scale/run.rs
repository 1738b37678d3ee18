//! One router on one dataset: start time, memory, handshake rates with one name and with names
//! drawn over the whole store, API change latency, and what an unknown name costs.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use terminus_benches::procfs;
use terminus_benches::procs::{free_port, pinned, run_bounded, Spawned, LOAD_CPU, PROXY_CPU};
use terminus_benches::stats::median;
use terminus_benches::tls::{client_config, AcceptAnyCertificate};
use terminus_test_support::{self_signed, KeyType};

use crate::admin::Admin;
use crate::generate::{data_dir, host, HOST_PATTERN};

const TOKEN: &str = "scale-benchmark-token";
/// Longest the router may take to serve its first handshake before the run gives up.
const START_LIMIT: Duration = Duration::from_secs(300);
/// The metric sample counting handshakes refused for an unknown name.
const UNKNOWN_SNI: &str =
    r#"terminus_tls_handshakes_total{result="failed",version="",reason="unknown_sni"}"#;

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) terminus: PathBuf,
    pub(crate) taskset: PathBuf,
    /// Seconds per handshake run.
    pub(crate) duration: f64,
    /// Handshake runs per kind (one name, random names), interleaved.
    pub(crate) runs: usize,
    /// certs:add and certs:update repetitions.
    pub(crate) changes: usize,
}

/// Everything measured on one dataset, as JSON (the table reads it).
pub(crate) fn run(dir: &Path, count: u64, s: &Settings) -> anyhow::Result<Value> {
    let work = dir.join("run");
    fs::create_dir_all(&work)?;
    let listen = free_port()?;
    let admin = Admin::new(free_port()?, TOKEN)?;
    let log = work.join("terminus.log");
    let mut cmd = pinned(&s.taskset, PROXY_CPU, &s.terminus);
    cmd.arg("serve")
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--data-dir")
        .arg(data_dir(dir))
        .arg("--admin")
        .arg(admin.addr.to_string())
        // No request is proxied here; the quick-start form wants a backend all the same.
        .args([
            "--backend",
            "127.0.0.1:9",
            "--threads",
            "1",
            "--no-access-log",
        ])
        .env("TERMINUS_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).context("log file")?);

    let probe = Probe::new(listen)?;
    let last = host(count - 1);
    let started = Instant::now();
    let mut router = Spawned::start("terminus", cmd, Some(log))?;
    let pid = router.pid();
    loop {
        if probe.served(&last).is_ok() {
            break;
        }
        if let Some(status) = router.exited() {
            bail!("terminus exited ({status}): {}", router.log_tail());
        }
        if started.elapsed() > START_LIMIT {
            bail!(
                "terminus did not serve {last} within {} s",
                START_LIMIT.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(2));
    }
    let start_s = started.elapsed().as_secs_f64();
    let rss_serving = procfs::rss_kib(pid)?;
    eprintln!(
        "scale: {count} certificates: first handshake after {start_s:.2} s, RSS {} MiB",
        rss_serving / 1024
    );

    let load = Load {
        exe: std::env::current_exe()?,
        taskset: s.taskset.clone(),
        addr: listen,
        pid,
        dir: work.clone(),
        duration: s.duration,
    };
    let (mut one, mut spread) = (Vec::new(), Vec::new());
    for _ in 0..s.runs.max(1) {
        one.push(load.handshakes(&host(0), None)?);
        spread.push(load.handshakes(HOST_PATTERN, Some(count))?);
    }
    let rss_loaded = procfs::rss_kib(pid)?;

    // Names no earlier run used; removed again below so the dataset keeps its size.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let added = |k: usize| format!("added-{stamp}-{k}");
    let add = changes(&probe, &admin, s.changes, |k| {
        let name = added(k);
        let host = format!("{name}.scale.test");
        (name, host, false)
    })?;
    for k in 0..s.changes.max(1) {
        admin.remove(&added(k))?;
    }
    let update = changes(&probe, &admin, s.changes, |k| {
        let i = (k as u64 * 7919) % count;
        (format!("c{i}"), host(i), true)
    })?;

    let unknown_before = admin.metric(UNKNOWN_SNI)?;
    let io_before = procfs::storage_read_bytes(pid)?;
    let unknown = load.handshakes("u{}.unknown.test", Some(1_000_000_000))?;
    let io_after = procfs::storage_read_bytes(pid)?;
    let unknown_after = admin.metric(UNKNOWN_SNI)?;

    let rss_end = procfs::rss_kib(pid)?;
    router.stop();
    let pick = |runs: &[Value], key: &str| {
        median(
            &runs
                .iter()
                .filter_map(|r| r[key].as_f64())
                .collect::<Vec<_>>(),
        )
    };
    Ok(json!({
        "certificates": count,
        "start_s": start_s,
        "rss_serving_kib": rss_serving,
        "rss_loaded_kib": rss_loaded,
        "rss_end_kib": rss_end,
        "one": {"rate": pick(&one, "rate"), "cpu_us": pick(&one, "cpu_us"), "runs": one},
        "spread": {"rate": pick(&spread, "rate"), "cpu_us": pick(&spread, "cpu_us"), "runs": spread},
        "add": add,
        "update": update,
        "unknown": {
            "attempts": unknown["errors"],
            "counted": unknown_after - unknown_before,
            "cpu_us": unknown["cpu_us_per_attempt"],
            "read_bytes": io_after.saturating_sub(io_before),
        },
    }))
}

/// Blocking handshakes that report which certificate the router served.
struct Probe {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
}

impl Probe {
    fn new(addr: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            addr,
            config: client_config(false, AcceptAnyCertificate::new())?,
        })
    }

    /// One full handshake asking for `name`; the leaf certificate served (DER).
    fn served(&self, name: &str) -> anyhow::Result<Vec<u8>> {
        let server_name = ServerName::try_from(name.to_owned()).context("server name")?;
        let mut conn = rustls::ClientConnection::new(self.config.clone(), server_name)?;
        let mut tcp = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        tcp.set_nodelay(true)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)?;
        }
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .context("no certificate served")?
            .to_vec();
        conn.send_close_notify();
        let _ = conn.complete_io(&mut tcp);
        Ok(leaf)
    }
}

/// `certs:add` or `certs:update` through the API, `n` times: how long the API took to answer,
/// and how long after its answer a new handshake for the name got the new certificate.
fn changes(
    probe: &Probe,
    admin: &Admin,
    n: usize,
    what: impl Fn(usize) -> (String, String, bool),
) -> anyhow::Result<Value> {
    let (mut api_ms, mut visible_ms) = (Vec::new(), Vec::new());
    for k in 0..n.max(1) {
        let (name, host, update) = what(k);
        let leaf = self_signed(&[&host], KeyType::EcdsaP256);
        let sent = Instant::now();
        let answer = admin.upload(&name, update, &leaf.cert_pem, &leaf.key_pem);
        let answered = Instant::now();
        answer.with_context(|| {
            format!("certs:{} of {name}", if update { "update" } else { "add" })
        })?;
        loop {
            if probe.served(&host).ok().as_deref() == Some(leaf.cert_der.as_ref()) {
                break;
            }
            if answered.elapsed() > Duration::from_secs(5) {
                bail!("{host} was not served the new certificate 5 s after the API answered");
            }
        }
        api_ms.push(ms(answered - sent));
        visible_ms.push(ms(answered.elapsed()));
    }
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    Ok(json!({
        "api_ms": median(&api_ms),
        "api_ms_max": max(&api_ms),
        "visible_ms": median(&visible_ms),
        "visible_ms_max": max(&visible_ms),
    }))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Handshake load from this binary's `client` mode, pinned to the load CPU.
struct Load {
    exe: PathBuf,
    taskset: PathBuf,
    addr: SocketAddr,
    pid: u32,
    dir: PathBuf,
    duration: f64,
}

impl Load {
    /// Full handshakes (no request) for `host`, or for names drawn from `host` with `{}` over
    /// `spread` numbers; the client's report plus the router's CPU per handshake.
    fn handshakes(&self, host: &str, spread: Option<u64>) -> anyhow::Result<Value> {
        let mut cmd: Command = pinned(&self.taskset, LOAD_CPU, &self.exe);
        cmd.args(["client", "handshake", "--handshake-only", "-c", "16"])
            .args(["--addr", &self.addr.to_string(), "--host", host])
            .args(["-d", &self.duration.to_string()]);
        if let Some(n) = spread {
            cmd.args(["--spread", &n.to_string()]);
        }
        let ticks0 = procfs::cpu_ticks(self.pid)?;
        let limit = Duration::from_secs_f64(self.duration + 30.0);
        let done = run_bounded("handshakes", cmd, &self.dir, limit)?;
        let ticks = procfs::cpu_ticks(self.pid)? - ticks0;
        let mut report: Value = done
            .stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .context("the load client printed no report")?;
        let cpu_us = ticks as f64 * 1e6 / procfs::clock_ticks_per_second() as f64;
        let ok = report["ok"].as_f64().unwrap_or(0.0);
        let attempts = ok + report["errors"].as_f64().unwrap_or(0.0);
        report["cpu_us"] = json!(if ok > 0.0 { cpu_us / ok } else { f64::NAN });
        report["cpu_us_per_attempt"] = json!(cpu_us / attempts.max(1.0));
        Ok(report)
    }
}
