//! The scenarios: what runs against a proxy, and the figures taken from it.
//!
//! Every load generator runs pinned to the load CPU. The proxy's CPU time (utime + stime of its
//! whole process tree, from /proc) is sampled right before the load starts and right after it
//! ends; divided by the successful requests (or connections) it gives the proxy's own cost per
//! request, which still compares when the load generator is what saturates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use terminus_benches::procfs;

use crate::proxies::{KeyType, Running, HOST};
use terminus_benches::procs::{line_reader, pinned, run_bounded, Spawned, LOAD_CPU};
use terminus_benches::tools::Tools;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scenario {
    Ka,
    HsFull,
    HsFullRsa,
    HsResumed,
    H2,
    Lat,
    Idle,
    BulkDown,
    BulkUp,
    Ws,
    IdleH2,
}

/// Which backend a scenario's proxies forward to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// nginx: `200 ok` for everything, and a 1 MiB file under `/bulk/`.
    Nginx,
    /// The test suite's echo backend (`harness backend`): reads every request body to its end
    /// before it answers, and echoes WebSocket messages on `/ws`.
    Echo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Better {
    Higher,
    Lower,
}

impl Better {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Better::Higher => "higher",
            Better::Lower => "lower",
        }
    }
}

/// One figure a scenario produces: a row of the table.
#[derive(Debug, Clone)]
pub(crate) struct Metric {
    pub(crate) label: String,
    pub(crate) better: Better,
}

fn metric(label: &str, better: Better) -> Metric {
    Metric {
        label: label.to_owned(),
        better,
    }
}

/// Run lengths and loads.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) quick: bool,
    pub(crate) runs: usize,
    /// Seconds per measurement.
    pub(crate) duration: u64,
    pub(crate) idle_connections: usize,
    pub(crate) lat_rate: f64,
}

/// Connections in flight for the handshake scenarios, and keep-alive connections for `lat`.
const HS_CONCURRENCY: usize = 16;
const LAT_CONNECTIONS: usize = 16;
/// Keep-alive connections of the bulk scenarios, each moving one 1 MiB body at a time.
const BULK_CONNECTIONS: usize = 16;
/// The bulk body size.
pub(crate) const BULK_BYTES: usize = 1 << 20;
/// The file the backend serves for `bulk_down` (under its `/bulk/` location).
pub(crate) const BULK_PATH: &str = "/bulk/1m";
/// WebSocket connections, messages in flight on each, and the message size.
const WS_CONNECTIONS: usize = 32;
const WS_WINDOW: usize = 16;
const WS_MESSAGE_BYTES: usize = 64;

impl Scenario {
    pub(crate) const ALL: [Scenario; 11] = [
        Scenario::Ka,
        Scenario::HsFull,
        Scenario::HsFullRsa,
        Scenario::HsResumed,
        Scenario::H2,
        Scenario::Lat,
        Scenario::Idle,
        Scenario::IdleH2,
        Scenario::BulkDown,
        Scenario::BulkUp,
        Scenario::Ws,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Ka => "ka",
            Scenario::HsFull => "hs_full",
            Scenario::HsFullRsa => "hs_full_rsa",
            Scenario::HsResumed => "hs_resumed",
            Scenario::H2 => "h2",
            Scenario::Lat => "lat",
            Scenario::Idle => "idle",
            Scenario::IdleH2 => "idle_h2",
            Scenario::BulkDown => "bulk_down",
            Scenario::BulkUp => "bulk_up",
            Scenario::Ws => "ws",
        }
    }

    pub(crate) fn backend(self) -> Backend {
        match self {
            Scenario::BulkUp | Scenario::Ws => Backend::Echo,
            _ => Backend::Nginx,
        }
    }

    pub(crate) fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    pub(crate) fn key(self) -> KeyType {
        match self {
            Scenario::HsFullRsa => KeyType::Rsa,
            _ => KeyType::Ecdsa,
        }
    }

    /// The table rows this scenario fills, in the order of [`Measurement::values`].
    pub(crate) fn metrics(self, s: &Settings) -> Vec<Metric> {
        use Better::{Higher, Lower};
        match self {
            Scenario::Ka | Scenario::H2 => {
                vec![metric("req/s", Higher), metric("proxy cpu µs/req", Lower)]
            }
            Scenario::HsFull | Scenario::HsFullRsa => {
                vec![metric("conn/s", Higher), metric("proxy cpu µs/conn", Lower)]
            }
            Scenario::HsResumed => vec![
                metric("conn/s", Higher),
                metric("proxy cpu µs/conn", Lower),
                metric("resumed %", Higher),
            ],
            Scenario::Lat => vec![
                metric(&format!("p50 µs @{} req/s", s.lat_rate), Lower),
                metric("p99 µs", Lower),
                metric("p99.9 µs", Lower),
            ],
            Scenario::Idle => vec![metric(
                &format!("RSS KiB/conn (n={})", s.idle_connections),
                Lower,
            )],
            Scenario::IdleH2 => vec![metric(
                &format!("RSS KiB/conn h2 (n={})", s.idle_connections),
                Lower,
            )],
            Scenario::BulkDown | Scenario::BulkUp => {
                vec![metric("MiB/s", Higher), metric("proxy cpu µs/MiB", Lower)]
            }
            Scenario::Ws => vec![metric("msg/s", Higher), metric("proxy cpu µs/msg", Lower)],
        }
    }
}

/// CPU used during a measurement, in seconds, and its wall time.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Usage {
    pub(crate) wall: f64,
    pub(crate) proxy: f64,
    pub(crate) backend: f64,
    pub(crate) client: f64,
}

impl Usage {
    pub(crate) fn json(&self) -> Value {
        let pct = |cpu: f64| (cpu / self.wall.max(1e-9) * 1000.0).round() / 10.0;
        json!({
            "wall_s": self.wall,
            "proxy_cpu_s": self.proxy,
            "proxy_cpu_pct": pct(self.proxy),
            "backend_cpu_pct": pct(self.backend),
            "client_cpu_pct": pct(self.client),
        })
    }

    pub(crate) fn summary(&self) -> String {
        let pct = |cpu: f64| cpu / self.wall.max(1e-9) * 100.0;
        format!(
            "cpu: proxy {:.0}%, backend {:.0}%, client {:.0}%",
            pct(self.proxy),
            pct(self.backend),
            pct(self.client)
        )
    }
}

/// One scenario run against one proxy.
#[derive(Debug, Clone)]
pub(crate) struct Measurement {
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) values: Vec<f64>,
    pub(crate) usage: Usage,
    /// The load tool's own figures and error samples.
    pub(crate) detail: Value,
}

/// What the scenarios run with.
#[derive(Debug, Clone)]
pub(crate) struct Ctx<'a> {
    pub(crate) settings: &'a Settings,
    pub(crate) tools: &'a Tools,
    /// Where load tools' output goes.
    pub(crate) dir: &'a Path,
    /// This harness, which is also the TLS load client (`harness client ...`).
    pub(crate) exe: PathBuf,
    pub(crate) backend_pid: u32,
    pub(crate) ticks_per_second: f64,
}

impl Ctx<'_> {
    fn limit(&self) -> Duration {
        Duration::from_secs(self.settings.duration + 60)
    }

    /// Runs `load` and returns its result with the CPU each party used meanwhile. The load
    /// generator's CPU is this process's reaped-children time (the generator is the only child
    /// reaped in the window).
    fn sample<T>(
        &self,
        proxy_pid: u32,
        load: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<(T, Usage)> {
        let ticks = |pid| procfs::tree_cpu_ticks(pid) as f64;
        let children = || procfs::children_cpu_ticks().unwrap_or(0) as f64;
        let (p0, b0, c0) = (ticks(proxy_pid), ticks(self.backend_pid), children());
        let start = Instant::now();
        let out = load()?;
        let wall = start.elapsed().as_secs_f64();
        let (p1, b1, c1) = (ticks(proxy_pid), ticks(self.backend_pid), children());
        let s = self.ticks_per_second;
        let usage = Usage {
            wall,
            proxy: (p1 - p0) / s,
            backend: (b1 - b0) / s,
            client: (c1 - c0) / s,
        };
        Ok((out, usage))
    }

    fn client(&self, mode: &str, addr: SocketAddr) -> std::process::Command {
        let mut cmd = pinned(&self.tools.taskset, LOAD_CPU, &self.exe);
        cmd.args(["client", mode, "--addr", &addr.to_string(), "--host", HOST]);
        cmd
    }
}

/// Runs `scenario` against the running proxy.
pub(crate) fn measure(
    ctx: &Ctx<'_>,
    scenario: Scenario,
    proxy: &mut Running,
) -> anyhow::Result<Measurement> {
    let pid = proxy.process.pid();
    let addr = proxy.addr;
    let d = ctx.settings.duration;
    let url = format!("https://{HOST}:{}/", addr.port());
    match scenario {
        Scenario::Ka => {
            let mut cmd = pinned(&ctx.tools.taskset, LOAD_CPU, &ctx.tools.wrk);
            cmd.args(["-t1", "-c64", &format!("-d{d}s"), &url]);
            let (out, usage) = ctx.sample(pid, || run_bounded("wrk", cmd, ctx.dir, ctx.limit()))?;
            let w = parse_wrk(&out.stdout)?;
            Ok(per_request(w.ok, w.errors, w.rate, usage, w.detail))
        }
        Scenario::H2 => {
            let mut cmd = pinned(&ctx.tools.taskset, LOAD_CPU, &ctx.tools.h2load);
            cmd.args(["-t1", "-c32", "-m10", "-D", &d.to_string(), &url]);
            let (out, usage) =
                ctx.sample(pid, || run_bounded("h2load", cmd, ctx.dir, ctx.limit()))?;
            let h = parse_h2load(&out.stdout)?;
            Ok(per_request(h.ok, h.errors, h.rate, usage, h.detail))
        }
        Scenario::HsFull | Scenario::HsFullRsa | Scenario::HsResumed => {
            let mut cmd = ctx.client("handshake", addr);
            cmd.args(["-c", &HS_CONCURRENCY.to_string(), "-d", &d.to_string()]);
            if scenario == Scenario::HsResumed {
                cmd.arg("--resume");
            }
            let (out, usage) =
                ctx.sample(pid, || run_bounded("tlsload", cmd, ctx.dir, ctx.limit()))?;
            let r = last_json(&out.stdout)?;
            let (ok, errors) = (count(&r, "ok"), count(&r, "errors"));
            let mut m = per_request(ok, errors, number(&r, "rate"), usage, r.clone());
            if scenario == Scenario::HsResumed {
                m.values
                    .push(100.0 * count(&r, "resumed") as f64 / ok.max(1) as f64);
            }
            Ok(m)
        }
        Scenario::Lat => {
            let mut cmd = ctx.client("lat", addr);
            cmd.args([
                "-c",
                &LAT_CONNECTIONS.to_string(),
                "--rate",
                &ctx.settings.lat_rate.to_string(),
                "-d",
                &d.to_string(),
            ]);
            let (out, usage) =
                ctx.sample(pid, || run_bounded("tlsload", cmd, ctx.dir, ctx.limit()))?;
            let r = last_json(&out.stdout)?;
            Ok(Measurement {
                ok: count(&r, "ok"),
                errors: count(&r, "errors"),
                values: ["p50_us", "p99_us", "p999_us"]
                    .iter()
                    .map(|k| number(&r, k))
                    .collect(),
                usage,
                detail: r,
            })
        }
        Scenario::Idle => idle(ctx, proxy, false),
        Scenario::IdleH2 => idle(ctx, proxy, true),
        Scenario::BulkDown | Scenario::BulkUp => {
            let mut cmd = pinned(&ctx.tools.taskset, LOAD_CPU, &ctx.tools.wrk);
            cmd.args(["-t1", &format!("-c{BULK_CONNECTIONS}"), &format!("-d{d}s")]);
            let url = if scenario == Scenario::BulkUp {
                cmd.arg("-s").arg(upload_script(ctx.dir)?);
                format!("https://{HOST}:{}/up", addr.port())
            } else {
                format!("https://{HOST}:{}{BULK_PATH}", addr.port())
            };
            cmd.arg(url);
            let (out, usage) = ctx.sample(pid, || run_bounded("wrk", cmd, ctx.dir, ctx.limit()))?;
            let w = parse_wrk(&out.stdout)?;
            // One 1 MiB body per request: requests are MiB.
            Ok(per_request(w.ok, w.errors, w.rate, usage, w.detail))
        }
        Scenario::Ws => {
            let mut cmd = ctx.client("ws", addr);
            cmd.args([
                "-c",
                &WS_CONNECTIONS.to_string(),
                "--window",
                &WS_WINDOW.to_string(),
                "--size",
                &WS_MESSAGE_BYTES.to_string(),
                "-d",
                &d.to_string(),
            ]);
            let (out, usage) =
                ctx.sample(pid, || run_bounded("tlsload", cmd, ctx.dir, ctx.limit()))?;
            let r = last_json(&out.stdout)?;
            let (ok, errors) = (count(&r, "ok"), count(&r, "errors"));
            Ok(per_request(
                ok,
                errors,
                number(&r, "rate"),
                usage,
                r.clone(),
            ))
        }
    }
}

/// A wrk script that POSTs a [`BULK_BYTES`] body (wrk adds its Content-Length), written once
/// into `dir`.
fn upload_script(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("upload.lua");
    if !path.exists() {
        let script = format!(
            "wrk.method = \"POST\"\n\
             wrk.body = string.rep(\"x\", {BULK_BYTES})\n\
             wrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n"
        );
        std::fs::write(&path, script).context("write the upload script")?;
    }
    Ok(path)
}

/// Throughput and the proxy's CPU per successful request.
fn per_request(ok: u64, errors: u64, rate: f64, usage: Usage, detail: Value) -> Measurement {
    let cpu_us = if ok > 0 {
        usage.proxy * 1e6 / ok as f64
    } else {
        f64::NAN
    };
    Measurement {
        ok,
        errors,
        values: vec![rate, cpu_us],
        usage,
        detail,
    }
}

/// RSS of the proxy before and after N idle connections are open (HTTP/1.1, or HTTP/2 with
/// `h2`), per connection.
fn idle(ctx: &Ctx<'_>, proxy: &mut Running, h2: bool) -> anyhow::Result<Measurement> {
    let pid = proxy.process.pid();
    let n = ctx.settings.idle_connections;
    std::thread::sleep(Duration::from_millis(500));
    let before = procfs::tree_rss_kib(pid);
    let mut cmd = ctx.client("idle", proxy.addr);
    cmd.args(["-n", &n.to_string(), "--hold", "600"]);
    if h2 {
        cmd.arg("--h2");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut client = Spawned::start("tlsload idle", cmd, None)?;
    let lines = line_reader(client.take_stdout().context("client stdout")?);
    let limit = Duration::from_secs(60 + n as u64 / 20);
    // The CPU figures cover the opening (a handshake and one request per connection).
    let (line, usage) = ctx.sample(pid, || {
        lines.recv_timeout(limit).map_err(|_| {
            anyhow::anyhow!(
                "the idle client did not report within {} s",
                limit.as_secs()
            )
        })
    })?;
    let r: Value = serde_json::from_str(&line).context("idle client report")?;
    // Let the proxy finish with the last connections before reading its memory.
    std::thread::sleep(Duration::from_secs(1));
    let after = procfs::tree_rss_kib(pid);
    client.stop();
    let ok = count(&r, "ok");
    let per_conn = if ok > 0 {
        (after as f64 - before as f64) / ok as f64
    } else {
        f64::NAN
    };
    Ok(Measurement {
        ok,
        errors: count(&r, "errors"),
        values: vec![per_conn],
        usage,
        detail: json!({"rss_before_kib": before, "rss_after_kib": after, "client": r}),
    })
}

fn last_json(stdout: &str) -> anyhow::Result<Value> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("the load client printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("the load client printed {line:?}"))
}

fn count(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn number(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// A load tool's counts.
#[derive(Debug)]
struct Tally {
    ok: u64,
    errors: u64,
    rate: f64,
    detail: Value,
}

/// The numbers in a line, in order ("Socket errors: connect 0, read 2" → [0, 2]).
fn numbers(line: &str) -> Vec<f64> {
    line.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|t| t.parse().ok())
        .collect()
}

fn line_with<'a>(out: &'a str, needle: &str) -> Option<&'a str> {
    out.lines().map(str::trim).find(|l| l.contains(needle))
}

/// wrk: "N requests in 10.00s", "Non-2xx or 3xx responses: N", "Socket errors: ...",
/// "Requests/sec: X".
fn parse_wrk(out: &str) -> anyhow::Result<Tally> {
    let Some(total) = line_with(out, " requests in ").and_then(|l| numbers(l).first().copied())
    else {
        bail!("no request count in wrk's output: {out}");
    };
    let non2xx = line_with(out, "Non-2xx or 3xx responses:")
        .and_then(|l| numbers(l).last().copied())
        .unwrap_or(0.0);
    let socket: f64 = line_with(out, "Socket errors:")
        .map(|l| numbers(l).iter().sum())
        .unwrap_or(0.0);
    let rate = line_with(out, "Requests/sec:")
        .and_then(|l| numbers(l).last().copied())
        .unwrap_or(f64::NAN);
    Ok(Tally {
        ok: (total - non2xx).max(0.0) as u64,
        errors: (non2xx + socket) as u64,
        rate,
        detail: json!({"requests": total, "non_2xx": non2xx, "socket_errors": socket, "rate": rate}),
    })
}

/// h2load: "finished in 10.00s, X req/s, ...", "requests: N total, N started, N done,
/// N succeeded, N failed, N errored, N timeout", "status codes: N 2xx, N 3xx, N 4xx, N 5xx".
fn parse_h2load(out: &str) -> anyhow::Result<Tally> {
    let Some(requests) = line_with(out, "requests:").map(numbers) else {
        bail!("no request counts in h2load's output: {out}");
    };
    let codes = line_with(out, "status codes:")
        .map(numbers)
        .unwrap_or_default();
    let rate = line_with(out, "finished in")
        .and_then(|l| numbers(l).get(1).copied())
        .unwrap_or(f64::NAN);
    let get = |v: &[f64], i: usize| v.get(i).copied().unwrap_or(0.0);
    // "N 2xx, N 3xx, N 4xx, N 5xx" reads as [N, 2, N, 3, N, 4, N, 5].
    let ok_2xx = get(&codes, 0);
    let not_2xx: f64 = [2, 4, 6].iter().map(|&i| get(&codes, i)).sum();
    let failed = get(&requests, 4);
    Ok(Tally {
        ok: ok_2xx as u64,
        errors: (failed + not_2xx) as u64,
        rate,
        detail: json!({"requests": requests, "status_codes": codes, "rate": rate}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk() {
        let out = "Running 2s test @ https://localhost:1/\n  1 threads and 64 connections\n\
            \x20 71234 requests in 2.00s, 10.00MB read\n  Non-2xx or 3xx responses: 4\n\
            \x20 Socket errors: connect 0, read 2, write 0, timeout 1\n\
            Requests/sec:  35617.00\nTransfer/sec:      5.00MB\n";
        let t = parse_wrk(out).unwrap();
        assert_eq!((t.ok, t.errors), (71230, 7));
        assert_eq!(t.rate, 35617.0);
    }

    #[test]
    fn parses_h2load() {
        let out = "finished in 2.00s, 39071.70 req/s, 1.23MB/s\n\
            requests: 78143 total, 78463 started, 78143 done, 78140 succeeded, 3 failed, 3 errored, 0 timeout\n\
            status codes: 78140 2xx, 0 3xx, 0 4xx, 1 5xx\n";
        let t = parse_h2load(out).unwrap();
        assert_eq!((t.ok, t.errors), (78140, 4));
        assert_eq!(t.rate, 39071.7);
    }
}
