//! The side-by-side load harness: terminus, HAProxy and nginx terminating TLS in front of the same
//! backend, one worker each, the proxy under test on CPU 0 and everything else on CPU 1.
//!
//! ```text
//! cargo run --release -p terminus-benches --bin harness -- [--quick] [--runs N]
//!     [--scenarios ka,hs_full,hs_full_rsa,hs_resumed,h2,lat,idle,idle_h2,bulk_down,bulk_up,ws]
//!     [--json PATH]
//! ```
//!
//! Exit status: 0 when every proxy started and every scenario had successful requests (the
//! figures themselves never fail it), 1 otherwise. `harness client ...` is the TLS load client
//! the harness runs (the same as the `tlsload` binary).

mod proxies;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use terminus_benches::client::{self, Mode};
use terminus_benches::procfs;

use crate::proxies::{Certs, Env, Proxy};
use crate::report::Report;
use crate::scenarios::{Backend, Ctx, Scenario, Settings};
use terminus_benches::procs::{TempDir, LOAD_CPU};

#[derive(Debug, Parser)]
#[command(
    name = "harness",
    about = "terminus vs HAProxy vs nginx as TLS terminators, side by side",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The TLS load client the harness runs on the load CPU.
    #[command(subcommand)]
    Client(Mode),
    /// Print the generated HAProxy, nginx and backend configs (example ports and paths).
    PrintConfigs,
    /// The echo backend of the `bulk_up` and `ws` scenarios (the test suite's echo server).
    #[command(hide = true)]
    Backend { addr: std::net::SocketAddr },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// One short run per scenario and proxy, 500 idle connections (about a minute or two): what
    /// the test suite runs so the harness never rots.
    #[arg(long)]
    quick: bool,
    /// Runs per scenario, interleaved across the proxies [default: 3, 1 with --quick].
    #[arg(long)]
    runs: Option<usize>,
    /// Scenarios to run, comma-separated [default: all].
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Proxies to run, comma-separated [default: terminus,haproxy,nginx].
    #[arg(long, value_delimiter = ',')]
    proxies: Vec<String>,
    /// Seconds per measurement [default: 10, 2 with --quick].
    #[arg(long)]
    duration: Option<u64>,
    /// Idle connections held open [default: 5000, 500 with --quick].
    #[arg(long)]
    idle_connections: Option<usize>,
    /// Request rate of the latency scenario.
    #[arg(long, default_value_t = 2000.0)]
    lat_rate: f64,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The terminus binary [default: release/terminus in this harness's target directory,
    /// built first].
    #[arg(long)]
    terminus: Option<PathBuf>,
    /// Do not build terminus; use the binary that is there.
    #[arg(long)]
    no_build: bool,
    /// Keep the temporary directory (certificates, configs, logs).
    #[arg(long)]
    keep_temp: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Client(mode)) => client::run(mode).map(|()| true),
        Some(Command::PrintConfigs) => {
            print_configs();
            Ok(true)
        }
        Some(Command::Backend { addr }) => echo_backend(addr).map(|()| true),
        None => run(cli.run),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("harness: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Serves the echo backend on `addr` until killed.
fn echo_backend(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async move {
        let _backend = terminus_test_support::Backend::echo_on(addr, "echo")
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        std::future::pending::<anyhow::Result<()>>().await
    })
}

fn print_configs() {
    let listen = "127.0.0.1:8443"
        .parse()
        .unwrap_or(([127, 0, 0, 1], 8443).into());
    let backend = "127.0.0.1:9000"
        .parse()
        .unwrap_or(([127, 0, 0, 1], 9000).into());
    let tmp = PathBuf::from("/tmp/terminus-bench-XXXX");
    let cert = proxies::CertFiles {
        cert: tmp.join("ecdsa.crt"),
        key: tmp.join("ecdsa.key"),
        bundle: tmp.join("ecdsa.pem"),
    };
    println!("# haproxy.cfg (haproxy -db -f haproxy.cfg)");
    println!("{}", proxies::haproxy_config(listen, backend, &cert.bundle));
    println!("# nginx.conf (nginx -p DIR/ -c DIR/nginx.conf -e DIR/error.log)");
    println!("{}", proxies::nginx_config(listen, backend, &cert));
    println!("# backend nginx.conf");
    println!("{}", proxies::backend_config(backend, &tmp.join("backend")));
    println!(
        "# terminus\nterminus serve --listen {listen} --cert {} --key {} --backend {backend} \
         --admin 127.0.0.1:PORT --threads 1 --no-access-log",
        cert.cert.display(),
        cert.key.display()
    );
}

fn settings(args: &RunArgs) -> Settings {
    let quick = args.quick;
    Settings {
        quick,
        runs: args.runs.unwrap_or(if quick { 1 } else { 3 }).max(1),
        duration: args.duration.unwrap_or(if quick { 2 } else { 10 }).max(1),
        idle_connections: args
            .idle_connections
            .unwrap_or(if quick { 500 } else { 5000 })
            .max(1),
        lat_rate: args.lat_rate,
    }
}

fn selection<T: Copy>(
    names: &[String],
    all: &[T],
    parse: impl Fn(&str) -> Option<T>,
    what: &str,
) -> anyhow::Result<Vec<T>> {
    if names.is_empty() {
        return Ok(all.to_vec());
    }
    names
        .iter()
        .map(|n| parse(n.trim()).with_context(|| format!("unknown {what} '{n}'")))
        .collect()
}

fn run(args: RunArgs) -> anyhow::Result<bool> {
    let settings = settings(&args);
    let scenarios = selection(&args.scenarios, &Scenario::ALL, Scenario::parse, "scenario")?;
    let proxies = selection(&args.proxies, &Proxy::ALL, Proxy::parse, "proxy")?;
    let tools = terminus_benches::tools::ensure()?;
    let terminus = terminus_benches::tools::terminus(args.terminus.as_deref(), args.no_build)?;
    let machine = terminus_benches::tools::describe(&tools, &terminus);
    if std::thread::available_parallelism().map_or(0, |n| n.get()) < 2 {
        bail!("the harness needs at least 2 CPUs (proxy on CPU 0, load on CPU 1)");
    }
    // From here on the harness itself (and so its helper threads) stays off the proxy's CPU.
    if let Err(e) = terminus_benches::procs::pin_self(&tools.taskset, LOAD_CPU) {
        eprintln!("harness: warning: cannot pin the harness to CPU {LOAD_CPU}: {e:#}");
    }

    // Declared first, dropped last: every process below is stopped before it is removed.
    let tmp = TempDir::new(args.keep_temp)?;
    let certs = Certs::generate(tmp.path())?;
    let exe = std::env::current_exe().context("the harness's own path")?;
    let (backend, backend_addr) = proxies::start_backend(&tools, tmp.path())?;
    // Only when a scenario needs it.
    let echo = if scenarios.iter().any(|s| s.backend() == Backend::Echo) {
        Some(proxies::start_echo(tmp.path(), &tools, &exe)?)
    } else {
        None
    };
    let env = Env {
        root: tmp.path(),
        tools: &tools,
        terminus: &terminus,
        certs: &certs,
    };
    let ctx = Ctx {
        settings: &settings,
        tools: &tools,
        dir: tmp.path(),
        exe,
        backend_pid: backend.pid(),
        ticks_per_second: procfs::clock_ticks_per_second() as f64,
    };
    let backend_of = |scenario: Scenario| match (scenario.backend(), &echo) {
        (Backend::Echo, Some((process, addr))) => (*addr, process.pid()),
        _ => (backend_addr, backend.pid()),
    };
    let started = Instant::now();
    let mut report = Report::new(&scenarios, &settings);
    let mut instance = 0;
    for &scenario in &scenarios {
        for run in 1..=settings.runs {
            // Rotated each run (t,h,n; h,n,t; n,t,h), so no proxy always goes first.
            let mut order = proxies.clone();
            let shift = (run - 1) % order.len().max(1);
            order.rotate_left(shift);
            let (addr, pid) = backend_of(scenario);
            let ctx = Ctx {
                backend_pid: pid,
                ..ctx.clone()
            };
            for &proxy in &order {
                instance += 1;
                let at = Target {
                    backend: addr,
                    run,
                    instance,
                };
                measure_one(&env, &ctx, &mut report, scenario, proxy, at);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    drop(echo);
    drop(backend);

    let notes = notes(&settings, &machine, &report);
    let summary = if settings.runs > 1 {
        format!("median (min–max) of {} interleaved runs", settings.runs)
    } else {
        "one run each".into()
    };
    println!(
        "\nterminus vs HAProxy vs nginx, one worker each: {summary}; ratios are terminus/peer \
         medians\n"
    );
    print!("{}", report.table(&proxies));
    println!();
    for note in &notes {
        println!("- {note}");
    }
    eprintln!("harness: done in {:.0} s", started.elapsed().as_secs_f64());
    if let Some(path) = &args.json {
        let json = report.json(machine, &settings, &notes);
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("harness: wrote {}", path.display());
    }
    if !report.failures.is_empty() {
        eprintln!("harness: FAILED:");
        for f in &report.failures {
            eprintln!("  {f}");
        }
    }
    Ok(report.failures.is_empty())
}

/// Where one measurement's proxy forwards to, which run it belongs to, its instance number.
#[derive(Debug, Clone, Copy)]
struct Target {
    backend: std::net::SocketAddr,
    run: usize,
    instance: usize,
}

/// Starts a fresh proxy, runs one scenario on it, records the outcome, stops the proxy.
fn measure_one(
    env: &Env<'_>,
    ctx: &Ctx<'_>,
    report: &mut Report,
    scenario: Scenario,
    proxy: Proxy,
    at: Target,
) {
    let Target {
        backend,
        run,
        instance,
    } = at;
    let label = format!(
        "[{} {run}/{}] {}",
        scenario.name(),
        ctx.settings.runs,
        proxy.name()
    );
    let mut running = match proxies::start(env, proxy, scenario.key(), backend, instance) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{label}: failed to start: {e:#}");
            report.fail(scenario, proxy, run, &format!("failed to start: {e:#}"));
            return;
        }
    };
    match scenarios::measure(ctx, scenario, &mut running) {
        Ok(m) => {
            let mut figures: Vec<String> = scenario
                .metrics(ctx.settings)
                .iter()
                .zip(&m.values)
                .map(|(metric, v)| format!("{} {v:.1}", metric.label))
                .collect();
            if let (Some(before), Some(after)) = (
                m.detail.get("rss_before_kib"),
                m.detail.get("rss_after_kib"),
            ) {
                figures.push(format!("rss {before} -> {after} KiB"));
            }
            eprintln!(
                "{label}: {} · ok {} errors {} · {}",
                figures.join(" · "),
                m.ok,
                m.errors,
                m.usage.summary()
            );
            report.record(scenario, proxy, run, &m);
        }
        Err(e) => {
            eprintln!("{label}: failed: {e:#}");
            report.fail(scenario, proxy, run, &format!("{e:#}"));
        }
    }
    if let Some(status) = running.process.exited() {
        let msg = format!(
            "exited during the run ({status}): {}",
            running.process.log_tail()
        );
        eprintln!("{label}: {msg}");
        report.fail(scenario, proxy, run, &msg);
    }
}

fn notes(settings: &Settings, machine: &serde_json::Value, report: &Report) -> Vec<String> {
    let get = |k: &str| machine[k].as_str().unwrap_or("?").to_owned();
    let mut notes = vec![
        format!(
            "{}; {} CPUs, {}, {} GiB; {}, kernel {}",
            get("date"),
            machine["cpus"],
            get("cpu"),
            machine["memory_gib"],
            get("os"),
            get("kernel")
        ),
        format!(
            "{}; {}; {}; {}; {}",
            get("terminus"),
            get("haproxy"),
            get("nginx"),
            get("wrk"),
            get("h2load")
        ),
        "proxy under test pinned to CPU 0 (taskset); load generator, backend (nginx `return 200`) \
         and harness on CPU 1; terminus --threads 1, HAProxy nbthread 1, nginx worker_processes 1; \
         a fresh proxy process per measurement"
            .into(),
        "proxy cpu = the proxy's own utime+stime (/proc/PID/stat, all its processes) during the \
         load, per successful request or connection; logs discarded for every proxy alike \
         (terminus --no-access-log, no HAProxy log, nginx access_log off)"
            .into(),
        format!(
            "ka: wrk -t1 -c64 -d{d}s; h2: h2load -t1 -c32 -m10 -D {d}; hs_*: rustls client, 16 \
             connections in flight, each a new TLS connection with one GET (hs_full*: no tickets or \
             session ids stored or offered; hs_resumed: one shared session cache); lat: open loop at \
             {rate} req/s over 16 keep-alive connections; idle (idle_h2): RSS growth with {n} idle \
             TLS connections, each made one HTTP/1.1 (HTTP/2) request; bulk_down (bulk_up): wrk \
             -c16 downloading (POSTing) 1 MiB bodies, streamed by every proxy (nginx: \
             proxy_request_buffering off, proxy_max_temp_file_size 0); ws: 32 WebSocket \
             connections echoing 64 B messages, 16 in flight on each, through to an echo backend",
            d = settings.duration,
            rate = settings.lat_rate,
            n = settings.idle_connections
        ),
        "the rustls client offers only X25519 (HAProxy and nginx on OpenSSL 3.0 cannot do \
         X25519MLKEM768) and does not verify certificates; servers keep their default resumption \
         settings"
            .into(),
    ];
    if settings.quick {
        notes.push(format!(
            "QUICK MODE: one {} s run per proxy and scenario, {} idle connections: a smoke test, \
             not a measurement",
            settings.duration, settings.idle_connections
        ));
    }
    notes.extend(report.warnings.iter().cloned());
    notes
}
