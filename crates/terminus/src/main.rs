//! `terminus serve` runs the router; `terminus check-config` validates a config and its
//! certificates; `terminus certs`, `certs:add`, `domains:update`, ... manage a running router
//! through its admin API. Exit codes: 0 ok, 1 failure (the server's message is printed), 2 bad
//! command-line usage, 64 bad configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use terminus_config::Config;

const EXIT_CONFIG: u8 = 64;

// jemalloc: per-thread caches make the many small per-request allocations (headers, futures,
// buffers) cheaper than glibc malloc; measured in benches/README.md.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(
    name = "terminus",
    version,
    about = "An edge router: TLS by SNI from certificates that change while it runs, HTTP to backends"
)]
struct Cli {
    #[command(flatten)]
    api: terminus::cli::ApiArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the router.
    Serve(ServeArgs),
    /// Validate a config file and load its certificates, then exit.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Exit 0 if the router's admin listener answers /healthz (for container health checks).
    Health {
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: SocketAddr,
    },
    #[command(flatten)]
    Client(terminus::cli::Command),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The config file. Without it, the quick-start flags below describe the router.
    #[arg(long, short, conflicts_with_all = ["listen", "cert", "key", "backend"])]
    config: Option<PathBuf>,
    /// Quick start: the TLS listener address.
    #[arg(long, requires = "backend")]
    listen: Option<SocketAddr>,
    /// Quick start: the certificate (PEM), served as the default to every client.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Quick start: the certificate's private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Quick start: a backend address; repeat for several.
    #[arg(long)]
    backend: Vec<SocketAddr>,
    /// The admin listener (metrics, health).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Runtime worker threads (0: one per CPU). Overrides the config.
    #[arg(long)]
    threads: Option<usize>,
    /// Do not write router log lines (metrics still count every request).
    #[arg(long)]
    no_access_log: bool,
    /// Quick start: keep certificates, domains and apps in this directory (the embedded store),
    /// managed through the admin API. The key that encrypts private keys goes next to it as
    /// DIR.key unless TERMINUS_STORE_KEY is set.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::CheckConfig { config } => {
            terminus::logging::init();
            check_config(config)
        }
        Command::Health { admin } => health(admin),
        Command::Serve(args) => {
            if matches.value_source("token") == Some(clap::parser::ValueSource::CommandLine) {
                eprintln!("error: serve reads the admin token from TERMINUS_TOKEN or admin.token_file, never from its command line (it would show in the process list)");
                return ExitCode::from(2);
            }
            terminus::logging::init();
            serve(args)
        }
        Command::Client(command) => match terminus::cli::run(command, &cli.api) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Why `serve`'s arguments describe no router.
#[derive(Debug, thiserror::Error)]
enum ServeConfigError {
    #[error(transparent)]
    File(#[from] terminus_config::ConfigError),
    #[error("serve needs --config FILE, or --listen ADDR --cert FILE --key FILE --backend ADDR")]
    NoConfig,
    #[error("<command line>: --listen needs --cert and --key, or --data-dir for certificates managed through the admin API")]
    NoCertificate,
}

fn load_config(args: &ServeArgs) -> Result<Config, ServeConfigError> {
    if let Some(path) = &args.config {
        return Ok(Config::load(path)?);
    }
    let Some(listen) = args.listen else {
        return Err(ServeConfigError::NoConfig);
    };
    let cert = args.cert.clone().zip(args.key.clone());
    if cert.is_none() && args.data_dir.is_none() {
        return Err(ServeConfigError::NoCertificate);
    }
    Ok(Config::quick_start(
        listen,
        cert,
        args.backend.clone(),
        args.admin,
        args.data_dir.clone(),
    ))
}

fn serve(args: ServeArgs) -> ExitCode {
    let mut config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(admin) = args.admin {
        config.admin.address = admin;
    }
    if args.no_access_log {
        config.router.access_log = false;
    }
    raise_fd_limit();
    let threads = args.threads.unwrap_or(config.router.threads);
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if threads > 1 {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(config));
    terminus::logging::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<QuickStartCert>() => ExitCode::from(EXIT_CONFIG),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard limit: every client and backend connection
/// is a descriptor, and distributions start services at a soft 1024. The listeners'
/// `max_connections` then decide, not an accident of the environment.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some() && limit.current == limit.maximum {
        return;
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(
            from = limit.current,
            to = limit.maximum,
            "raised the open files limit (RLIMIT_NOFILE) to its hard limit"
        ),
        Err(e) => tracing::warn!(
            limit = limit.current,
            error = %e,
            "cannot raise the open files limit (RLIMIT_NOFILE)"
        ),
    }
}

/// The quick start's certificate did not load (the reason was logged).
#[derive(Debug)]
struct QuickStartCert;

impl std::fmt::Display for QuickStartCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the --cert/--key certificate did not load")
    }
}

impl std::error::Error for QuickStartCert {}

async fn run(config: Config) -> anyhow::Result<()> {
    let registry = terminus_metrics::MetricsRegistry::default();
    let router = terminus::start(&config, registry).await?;
    if config.source.is_none() && !router.cert_errors.is_empty() {
        // The quick start has one certificate: without it there is nothing to serve.
        let _ = router.shutdown().await;
        return Err(anyhow::anyhow!(QuickStartCert));
    }
    for (addr, tls) in &router.listeners {
        tracing::info!(address = %addr, tls, "listening");
    }
    tracing::info!(address = %router.admin, certificates = router.shared.certs.len(), "admin listening");
    wait_for_signal()
        .await
        .context("cannot install signal handlers")?;
    tracing::info!("shutting down: no new connections, draining");
    let drained = router.shutdown().await;
    if drained.abandoned > 0 {
        tracing::warn!(
            connections = drained.abandoned,
            "grace period over; closing the remaining connections"
        );
    }
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn check_config(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let provider = std::sync::Arc::new(terminus_tls::provider(config.tls.post_quantum));
    let store = terminus_tls::CertIndex::new(provider, 16);
    let (errors, _) =
        terminus::startup::load_certificates(&config, &store, &path.display().to_string());
    for e in &errors {
        eprintln!("error: {e}");
    }
    if errors.is_empty() {
        println!(
            "{}: ok ({} certificates, {} apps, {} domains)",
            path.display(),
            store.len(),
            config.apps.len(),
            config.domains.len()
        );
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CONFIG)
    }
}

fn health(admin: SocketAddr) -> ExitCode {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(3);
    let probe = || -> std::io::Result<bool> {
        let mut tcp = std::net::TcpStream::connect_timeout(&admin, timeout)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: terminus\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 12];
        tcp.read_exact(&mut head)?;
        Ok(&head[9..12] == b"200")
    };
    match probe() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("unhealthy: {admin}/healthz did not answer 200");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("unhealthy: {admin}: {e}");
            ExitCode::FAILURE
        }
    }
}
