//! `terminus serve` runs the router; `terminus check-config` validates a config and its
//! certificates; `terminus certs`, `certs:add`, `domains:update`, ... manage a running router
//! through its admin API. Exit codes: 0 ok, 1 failure (the server's message is printed), 2 bad
//! command-line usage, 64 bad configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
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
    about = "An edge router: TLS by SNI from certificates that change while it runs, HTTP to backends",
    after_help = "Run `terminus serve --config FILE` for the router; the other commands manage a running one through its admin API (TERMINUS_URL, TERMINUS_TOKEN).\n\nExit codes: 0 ok; 1 failure (the message says why); 2 bad command-line usage; 64 bad configuration."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the router.
    #[command(
        after_help = "Examples:\n  terminus serve --config config/terminus.toml\n  terminus serve --listen 127.0.0.1:8443 --cert c.pem --key k.pem --backend 127.0.0.1:9000\n  TERMINUS_TOKEN=... terminus serve --listen 127.0.0.1:8443 --backend 127.0.0.1:9000 --data-dir ./data\n\nThe admin API's token comes from TERMINUS_TOKEN or admin.token_file, never from the command line.\n\nSIGUSR2 upgrades without dropping a connection: the binary at the path this one was started from is started with the same arguments, takes over the listening sockets and the store, and this process drains and exits 0 (if the new one fails, this one keeps serving).\n\nExit codes: 0 stopped by SIGTERM/SIGINT after draining, or replaced by an upgrade; 1 could not start (e.g. a port in use); 2 bad command-line usage; 64 bad configuration."
    )]
    Serve(ServeArgs),
    /// Validate a config file and load its certificates, then exit.
    #[command(
        after_help = "Example:\n  terminus check-config --config config/terminus.toml\n\nExit codes: 0 valid, every certificate loads; 2 bad command-line usage; 64 bad configuration or a certificate that does not load."
    )]
    CheckConfig {
        /// The config file to check.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Exit 0 if the router's admin listener answers /healthz (for container health checks).
    #[command(
        after_help = "Examples:\n  terminus health --admin 127.0.0.1:9090\n  terminus health --config /etc/terminus/terminus.toml\n\nExit codes: 0 healthy; 1 no answer, or not 200; 2 bad command-line usage; 64 the config file is invalid."
    )]
    Health {
        /// The admin listener to probe; wins over --config.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Probe the `[admin] address` of this config file (without either: 127.0.0.1:9090).
        #[arg(long, short, env = "TERMINUS_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Upgrade a running router without downtime: SIGUSR2 to the pid in its ready file, then
    /// wait until the new process serves (or the old one gives up and serves on).
    #[command(
        after_help = "Example:\n  terminus upgrade --ready-file /run/terminus/ready.json\n\nThe running router starts the binary at the path it was started from (install the new one there first), hands it its sockets and store, drains and exits 0. Its log says why an upgrade failed.\n\nExit codes: 0 the new process serves; 1 the upgrade failed (the old process keeps serving), no outcome within --wait, or no router to signal; 2 bad command-line usage."
    )]
    Upgrade {
        /// The --ready-file the running router was started with.
        #[arg(long, value_name = "PATH")]
        ready_file: PathBuf,
        /// Seconds to wait for the outcome.
        #[arg(long, value_name = "SECONDS", default_value_t = 90)]
        wait: u64,
    },
    /// Print shell completions for bash, zsh, fish, elvish or powershell.
    #[command(
        after_help = "Example:\n  terminus completions bash > /etc/bash_completion.d/terminus\n\nExit codes: 0 printed; 2 bad command-line usage."
    )]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    #[command(
        after_help = "Example:\n  terminus man > /usr/local/share/man/man1/terminus.1\n\nExit codes: 0 printed; 2 bad command-line usage."
    )]
    Man,
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
    /// Quick start: a backend, IP:PORT or HOST:PORT; repeat for several. Every host goes to it.
    #[arg(long)]
    backend: Vec<String>,
    /// The admin listener (metrics, health, API). Overrides the config.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Runtime worker threads (0: one per CPU). Overrides the config.
    #[arg(long)]
    threads: Option<usize>,
    /// Do not write router log lines (metrics still count every request).
    #[arg(long)]
    no_access_log: bool,
    /// Keep certificates, domains and apps in this directory (the embedded store), managed
    /// through the admin API; with --config, instead of [store] dir. The key that encrypts
    /// private keys goes next to it as DIR.key unless TERMINUS_STORE_KEY is set.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// If the store is damaged, copy every readable record into a new store file before
    /// starting (the damaged file is kept aside, renamed with a timestamp) and report what was
    /// lost. A healthy store is left alone.
    #[arg(long)]
    store_recover: bool,
    /// Once every listener and the admin listener are bound, write their addresses to this file
    /// as JSON (written whole: a reader never sees half of it). Removed on a clean exit.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => {
            terminus::logging::init();
            check_config(config)
        }
        Command::Health { admin, config } => match health_address(admin, config) {
            Ok(admin) => health(admin),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Upgrade { ready_file, wait } => {
            let wait = std::time::Duration::from_secs(wait);
            match terminus::upgrade::request(&ready_file, wait) {
                Ok(terminus::upgrade::Requested::Upgraded { old, new }) => {
                    println!(
                        "upgraded: pid {new} serves; pid {old} drains its connections and exits"
                    );
                    ExitCode::SUCCESS
                }
                Ok(terminus::upgrade::Requested::Failed { pid }) => {
                    eprintln!("upgrade failed: pid {pid} keeps serving; its log says why");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "terminus",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Man => {
            let mut out = Vec::new();
            match clap_mangen::Man::new(Cli::command()).render(&mut out) {
                Ok(()) => {
                    use std::io::Write;
                    let _ = std::io::stdout().write_all(&out);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve(args) => {
            terminus::logging::init();
            serve(args)
        }
        Command::Client(command) => terminus::cli::run(command),
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
    #[error("<command line>: --backend {0}")]
    Backend(&'static str),
}

fn load_config(args: &ServeArgs) -> Result<Config, ServeConfigError> {
    if let Some(path) = &args.config {
        let mut config = Config::load(path)?;
        if let Some(dir) = &args.data_dir {
            config.store = Some(with_data_dir(config.store.take(), dir));
        }
        return Ok(config);
    }
    let Some(listen) = args.listen else {
        return Err(ServeConfigError::NoConfig);
    };
    let cert = args.cert.clone().zip(args.key.clone());
    if cert.is_none() && args.data_dir.is_none() {
        return Err(ServeConfigError::NoCertificate);
    }
    let backends = args
        .backend
        .iter()
        .map(|b| terminus_route::BackendAddr::parse(b).map_err(ServeConfigError::Backend))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Config::quick_start(
        listen,
        cert,
        backends,
        args.admin,
        args.data_dir.clone(),
    ))
}

/// How a reload reads the config: the file again, with this command line's overrides.
fn reload_source(args: &ServeArgs) -> Option<terminus::reload::ConfigSource> {
    let path = args.config.clone()?;
    let data_dir = args.data_dir.clone();
    let admin = args.admin;
    let no_access_log = args.no_access_log;
    Some(terminus::reload::ConfigSource::new(move || {
        let mut config = Config::load(&path)?;
        if let Some(dir) = &data_dir {
            config.store = Some(with_data_dir(config.store.take(), dir));
        }
        if let Some(admin) = admin {
            config.admin.address = admin;
        }
        if no_access_log {
            config.router.access_log = false;
        }
        Ok(config)
    }))
}

/// `--data-dir` over the file's `[store]`: the directory (and its key file) from the flag, the
/// other settings from the file.
fn with_data_dir(
    from_file: Option<terminus_config::StoreConfig>,
    dir: &std::path::Path,
) -> terminus_config::StoreConfig {
    let store = terminus_config::StoreConfig::in_dir(dir.to_path_buf());
    match from_file {
        Some(from_file) => terminus_config::StoreConfig {
            dir: dir.to_path_buf(),
            key_file: store.key_file,
            ..from_file
        },
        None => store,
    }
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
    let options = terminus::StartOptions {
        store_recover: args.store_recover,
        reload_from: reload_source(&args),
    };
    // Started by a running terminus to replace it: take its sockets first.
    let take_over = match terminus::upgrade::take_over() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(config, options, args.ready_file, take_over));
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

async fn run(
    config: Config,
    options: terminus::StartOptions,
    ready_file: Option<PathBuf>,
    take_over: Option<(terminus::upgrade::TakeOver, terminus::Inherited)>,
) -> anyhow::Result<()> {
    // The binary to run on an upgrade: the path this one was started from, read now (later,
    // once the file is replaced, the kernel names this process's image "... (deleted)").
    let exe = std::env::current_exe().context("cannot find the path of this binary")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let registry = terminus_metrics::MetricsRegistry::default();
    let (take_over, inherited) = take_over.unzip();
    let router =
        terminus::start_inheriting(&config, registry, &options, inherited.unwrap_or_default())
            .await?;
    if config.source.is_none() && !router.cert_errors.is_empty() {
        // The quick start has one certificate: without it there is nothing to serve.
        let _ = router.shutdown().await;
        return Err(anyhow::anyhow!(QuickStartCert));
    }
    for (addr, tls) in &router.listeners {
        tracing::info!(address = %addr, tls, "listening");
    }
    tracing::info!(address = %router.admin, certificates = router.shared.certs.len(), "admin listening");
    // Handlers first: whoever reads the ready file may send SIGTERM at once.
    let mut signals = Signals::install().context("cannot install signal handlers")?;
    if let Some(path) = &ready_file {
        if let Err(e) = terminus::startup::write_ready_file(path, &router) {
            let _ = router.shutdown().await;
            return Err(e).with_context(|| format!("cannot write --ready-file {}", path.display()));
        }
    }
    if let Some(take_over) = take_over {
        let from = take_over.from_pid;
        match take_over.ready() {
            Ok(()) => tracing::info!(
                from_pid = from,
                "upgrade: serving; the previous process drains and exits"
            ),
            // The previous process is gone (killed during the upgrade): this one serves. Had it
            // only given up waiting, it kills this process itself.
            Err(e) => tracing::warn!(
                from_pid = from,
                error = %e,
                "upgrade: the previous process did not take the ready answer; serving"
            ),
        }
    }
    loop {
        match signals.next().await {
            Event::Stop => break,
            Event::Reload => reload(router.reloader.as_ref()).await,
            Event::Upgrade => match terminus::upgrade::upgrade(&router, &exe, &args).await {
                Ok(pid) => {
                    tracing::info!(
                        new_pid = pid,
                        "upgrade: the new process serves; no new connections here, draining"
                    );
                    // The ready file is the new process's now: left in place.
                    let drained = router.hand_over().await;
                    log_drained(drained);
                    return Ok(());
                }
                Err(e) => {
                    tracing::error!(error = %e, "upgrade failed; this process keeps serving");
                    // The new process may have written the ready file before it failed.
                    if let Some(path) = &ready_file {
                        if let Err(e) = terminus::startup::write_ready_file(path, &router) {
                            tracing::warn!(error = %e, path = %path.display(), "cannot rewrite the ready file");
                        }
                    }
                }
            },
        }
    }
    if let Some(path) = &ready_file {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("shutting down: no new connections, draining");
    log_drained(router.shutdown().await);
    Ok(())
}

fn log_drained(drained: terminus_proxy::Drained) {
    if drained.abandoned > 0 {
        tracing::warn!(
            connections = drained.abandoned,
            "grace period over; closing the remaining connections"
        );
    } else {
        tracing::info!("drained; exiting");
    }
}

/// SIGHUP: reloads the config file (one at a time; signals that arrive during a reload are
/// merged into one more).
async fn reload(reloader: Option<&std::sync::Arc<terminus::reload::Reloader>>) {
    match reloader {
        Some(r) => {
            tracing::info!("SIGHUP: reloading the config file");
            let r = r.clone();
            // The outcome is logged and counted by the reload itself.
            let _ = tokio::task::spawn_blocking(move || r.reload()).await;
        }
        None => tracing::warn!(
            "SIGHUP ignored: started from the command line, there is no config file to read again"
        ),
    }
}

/// What a signal asks for.
enum Event {
    /// SIGTERM or SIGINT: drain and exit.
    Stop,
    /// SIGHUP: read the config file again.
    Reload,
    /// SIGUSR2: hand the sockets to a new process of the binary (see terminus::upgrade).
    Upgrade,
}

/// SIGTERM and SIGINT (stop), SIGHUP (reload), SIGUSR2 (upgrade), caught from the moment they
/// are installed.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    async fn next(&mut self) -> Event {
        tokio::select! {
            _ = self.term.recv() => Event::Stop,
            _ = self.int.recv() => Event::Stop,
            _ = self.hup.recv() => Event::Reload,
            _ = self.usr2.recv() => Event::Upgrade,
        }
    }
}

fn check_config(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let report = terminus::check::check_config(&config);
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    if report.ok() {
        println!("{}", report.summary);
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CONFIG)
    }
}

/// What `health` probes: `--admin`, else the config's admin address, else the default. A
/// wildcard address (`0.0.0.0:9090`, as in a container) is probed on loopback.
fn health_address(
    admin: Option<SocketAddr>,
    config: Option<PathBuf>,
) -> Result<SocketAddr, String> {
    let mut addr = match (admin, config) {
        (Some(admin), _) => return Ok(admin),
        (None, Some(path)) => {
            Config::load(&path)
                .map_err(|e| e.to_string())?
                .admin
                .address
        }
        (None, None) => terminus_config::DEFAULT_ADMIN_ADDRESS
            .parse()
            .map_err(|e| format!("{}: {e}", terminus_config::DEFAULT_ADMIN_ADDRESS))?,
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(addr)
}

fn health(admin: SocketAddr) -> ExitCode {
    let probe = terminus_api::Blocking::new(&format!("http://{admin}"), None).and_then(|b| {
        let b = b.with_timeout(std::time::Duration::from_secs(3));
        b.block_on(b.client().healthy())
    });
    match probe {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument of every command says what it is: adding a flag without a description
    /// fails here.
    #[test]
    fn every_argument_and_command_is_described() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && !path.trim().eq("terminus") {
                missing.push(format!("{path}: no description"));
            }
            if cmd.get_after_help().is_none() && !cmd.get_name().eq("help") {
                missing.push(format!("{path}: no example and exit codes (after_help)"));
            }
            for arg in cmd.get_arguments() {
                let builtin = ["help", "version"].contains(&arg.get_id().as_str());
                if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}: no description", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "", &mut missing);
        assert!(missing.is_empty(), "{missing:#?}");
    }

    /// `serve --help` lists what serve takes, not the client commands' --url/--token/--json.
    #[test]
    fn serve_takes_no_client_flags() {
        let cmd = Cli::command();
        let serve = cmd.find_subcommand("serve").unwrap();
        let ids: Vec<&str> = serve.get_arguments().map(|a| a.get_id().as_str()).collect();
        for leaked in ["url", "token", "json"] {
            assert!(!ids.contains(&leaked), "{ids:?}");
        }
        let certs = cmd.find_subcommand("certs").unwrap();
        assert!(certs.get_arguments().any(|a| a.get_id() == "url"));
    }
}
