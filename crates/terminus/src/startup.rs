//! Turning a validated config into a running router: TLS policy, certificate index, route table,
//! metrics, the data-plane listeners and the admin listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use terminus_admin::{Admin, Api, Control, StaticCert, Statics, Token};
use terminus_config::Config;
use terminus_metrics::{
    ControlMetrics, ExpiryCollector, ExpirySource, MetricsRegistry, ProxyMetrics,
};
use terminus_proxy::{BoundListener, Drained, Proxy, Shared};
use terminus_route::{BackendAddr, Domain, RouteTable};
use terminus_store::Store;
use terminus_tls::{
    prepare, CertEntry, CertIndex, PrepareOptions, Roots, TlsPolicy, DEFAULT_KEY_CACHE,
};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The environment variable holding the admin API's bearer token.
pub const TOKEN_ENV: &str = "TERMINUS_TOKEN";
/// How often expired, unused certificates are looked for.
const CLEANUP_EVERY: Duration = Duration::from_secs(3600);

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{file}: tls: {source}")]
    Policy {
        file: String,
        #[source]
        source: terminus_tls::PolicyError,
    },
    #[error(transparent)]
    Bind(#[from] terminus_proxy::BindError),
    #[error("cannot listen on {address} (admin.address): {source}")]
    AdminBind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: store: {source}")]
    Store {
        file: String,
        #[source]
        source: Box<terminus_store::StoreError>,
    },
    #[error("{file}: tls.trusted_roots: {path}: {source}")]
    TrustedRoots {
        file: String,
        path: String,
        #[source]
        source: RootsError,
    },
    #[error("{file}: admin.token_file: cannot read {path}: {source}")]
    TokenFile {
        file: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why `[tls] trusted_roots` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("cannot read it: {0}")]
    Read(#[source] std::io::Error),
    #[error("{0}")]
    Invalid(#[source] terminus_tls::CertError),
}

/// The roots "trusted" is checked against: the Mozilla set, plus `[tls] trusted_roots`.
pub fn trusted_roots(config: &Config, origin: &str) -> Result<Roots, StartError> {
    let Some(path) = &config.tls.trusted_roots else {
        return Ok(Roots::default());
    };
    let fail = |source| StartError::TrustedRoots {
        file: origin.to_owned(),
        path: path.display().to_string(),
        source,
    };
    let pem = std::fs::read(path).map_err(|e| fail(RootsError::Read(e)))?;
    Roots::with_extra_pem(&pem).map_err(|e| fail(RootsError::Invalid(e)))
}

/// A certificate from the config that could not be loaded. The router starts without it.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key} '{name}': {message}")]
pub struct CertLoadError {
    pub file: String,
    /// `certificate[2]`.
    pub key: String,
    pub name: String,
    pub message: String,
}

/// A running router.
#[derive(Debug)]
pub struct Router {
    pub shared: Arc<Shared>,
    /// Bound data-plane addresses, in config order, with whether each is TLS.
    pub listeners: Vec<(SocketAddr, bool)>,
    pub admin: SocketAddr,
    /// Certificates from the config that were refused.
    pub cert_errors: Vec<CertLoadError>,
    /// Stored certificates that were not served (R17).
    pub quarantined: Vec<terminus_store::Quarantine>,
    pub control: Arc<Control>,
    proxy: Proxy,
    cleanup: tokio::task::JoinHandle<()>,
    resolve: tokio::task::JoinHandle<()>,
    admin_stop: watch::Sender<bool>,
    admin_task: tokio::task::JoinHandle<()>,
    grace: Duration,
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Starts the router described by `config`, registering its metrics into `registry`.
pub async fn start(config: &Config, mut registry: MetricsRegistry) -> Result<Router, StartError> {
    let origin = config.origin().display().to_string();
    let policy = TlsPolicy::new(&config.tls).map_err(|source| StartError::Policy {
        file: origin.clone(),
        source,
    })?;
    let metrics = ProxyMetrics::register(&mut registry);
    let control_metrics = ControlMetrics::register(&mut registry);
    let loaded = metrics.certificates_loaded.clone();
    let key_cache = config
        .store
        .as_ref()
        .map_or(DEFAULT_KEY_CACHE, |s| s.key_cache);
    let routes = Arc::new(RouteTable::default());
    let certs = Arc::new(
        CertIndex::new(policy.provider().clone(), key_cache)
            .with_domains(routes.clone())
            .on_change(move |n| {
                loaded.set(i64::try_from(n).unwrap_or(i64::MAX));
            })
            .on_quarantine(|name, why| {
                tracing::error!(
                    certificate = name,
                    reason = why,
                    "certificate taken out of service"
                );
            }),
    );

    let roots = trusted_roots(config, &origin)?;
    let (cert_errors, static_certs) = load_certificates(config, &certs, &roots, &origin);
    for e in &cert_errors {
        tracing::error!("{e}; the router serves without it");
    }
    let statics = load_static_routes(config, &certs, &routes, static_certs);

    // The store comes second: a name defined in the config file wins over a stored one.
    let (store, quarantined, stored_apps) = match &config.store {
        None => (None, Vec::new(), Vec::new()),
        Some(store_config) => {
            let store_error = |source| StartError::Store {
                file: origin.clone(),
                source: Box::new(source),
            };
            let store = Store::open(store_config).map_err(store_error)?;
            log_key_origin(&store);
            let loaded = load_store(&store, &certs, &routes, &statics, &control_metrics)
                .map_err(store_error)?;
            for p in loaded.problems {
                tracing::error!("{p}; skipped");
            }
            (Some(Arc::new(store)), loaded.quarantined, loaded.apps)
        }
    };
    certs.set_default(config.tls.default_certificate.as_deref());
    ExpiryCollector::register(
        &mut registry,
        CertsExpiry(certs.clone()),
        config.admin.expiry_metrics_limit,
        unix_now,
    );

    let token = read_token(config, &origin)?;
    if token.is_none() {
        tracing::warn!("admin API disabled: set {TOKEN_ENV} or admin.token_file to manage certificates, domains and apps");
    }
    let control = Arc::new(
        Control::new(
            store,
            certs.clone(),
            routes.clone(),
            statics,
            control_metrics,
            config
                .store
                .as_ref()
                .map_or(terminus_config::DEFAULT_EXPIRED_RETENTION, |s| {
                    s.expired_retention
                }),
        )
        .with_roots(roots),
    );
    let app_backends: Vec<(String, Vec<BackendAddr>)> = config
        .apps
        .iter()
        .map(|a| (a.name.to_string(), a.backends.clone()))
        .chain(stored_apps)
        .collect();
    {
        let control = control.clone();
        // Names resolve through getaddrinfo, which blocks.
        let _ = tokio::task::spawn_blocking(move || {
            for (name, specs) in app_backends {
                control.set_app_backends(&name, specs);
            }
        })
        .await;
    }

    let bound: Vec<BoundListener> = terminus_proxy::bind(&config.listeners).await?;
    let listeners = bound
        .iter()
        .filter_map(|l| l.local_addr().ok().map(|a| (a, l.is_tls())))
        .collect();
    let admin_listener = TcpListener::bind(config.admin.address)
        .await
        .map_err(|source| StartError::AdminBind {
            address: config.admin.address,
            source,
        })?;
    let admin = admin_listener.local_addr().unwrap_or(config.admin.address);

    let shared = Shared::new(
        terminus_proxy::Settings::from_config(config),
        certs,
        routes,
        policy,
        metrics,
    );
    let proxy = Proxy::start(shared.clone(), bound);
    let (admin_stop, admin_rx) = watch::channel(false);
    let api = Api {
        control: control.clone(),
        token,
        max_body: config.admin.max_body_bytes,
        now: unix_now,
    };
    let admin_task = tokio::spawn(terminus_admin::serve(
        admin_listener,
        Admin::new(registry, Some(api)),
        terminus_admin::Limits {
            header_timeout: config.admin.header_timeout,
            idle_timeout: config.admin.idle_timeout,
            max_connections: config.admin.max_connections,
        },
        admin_rx,
    ));
    let cleanup = tokio::spawn(cleanup_loop(control.clone()));
    let resolve = tokio::spawn(resolve_loop(control.clone(), config.proxy.resolve_interval));
    Ok(Router {
        shared,
        listeners,
        admin,
        cert_errors,
        quarantined,
        control,
        proxy,
        cleanup,
        resolve,
        admin_stop,
        admin_task,
        grace: config.timeouts.shutdown_grace,
    })
}

fn log_key_origin(store: &Store) {
    match store.key_origin() {
        terminus_store::seal::KeyOrigin::Environment => {
            tracing::info!(dir = %store.dir().display(), "store opened; key from {}", terminus_store::seal::KEY_ENV)
        }
        terminus_store::seal::KeyOrigin::File {
            path,
            created: true,
        } => tracing::warn!(
            dir = %store.dir().display(),
            key_file = %path,
            "store opened with a NEW key file: back it up apart from the data directory; without it stored private keys cannot be read"
        ),
        terminus_store::seal::KeyOrigin::File {
            path,
            created: false,
        } => {
            tracing::info!(dir = %store.dir().display(), key_file = %path, "store opened")
        }
    }
}

/// Loads the store's certificates, apps and domains (skipping names the config file defines).
fn load_store(
    store: &Store,
    certs: &CertIndex,
    routes: &RouteTable,
    statics: &Statics,
    metrics: &ControlMetrics,
) -> terminus_store::Result<StoreLoad> {
    let started = std::time::Instant::now();
    let mut problems = Vec::new();
    let mut report = terminus_store::LoadReport::default();
    let mut interner = terminus_store::Interner::default();
    store.read()?.each_cert(|item| {
        let entry = match item {
            Ok(record) if statics.certs.contains_key(&record.name) => {
                problems.push(format!(
                    "stored certificate '{}' has the name of a certificate in the config file, which wins",
                    record.name
                ));
                return;
            }
            Ok(record) => store.entry(&record, &mut interner),
            Err(bad) => Err(terminus_store::Quarantine {
                name: bad.key,
                code: terminus_store::R17,
                reason: bad.error.to_string(),
            }),
        };
        match entry {
            Ok(e) => {
                certs.replace(e);
                report.loaded += 1;
            }
            Err(q) => {
                tracing::error!(code = q.code, certificate = %q.name, "{q}; the other certificates are served");
                metrics.quarantined.inc();
                report.quarantined.push(q);
            }
        }
    })?;
    let reader = store.read()?;
    let mut apps = Vec::new();
    for app in reader.apps()? {
        if statics.apps.contains(&app.name) {
            problems.push(format!(
                "stored app '{}' has the name of an app in the config file, which wins",
                app.name
            ));
            continue;
        }
        let specs: Result<Vec<BackendAddr>, _> =
            app.backends.iter().map(|b| BackendAddr::parse(b)).collect();
        match specs {
            Ok(specs) => apps.push((app.name, specs)),
            Err(why) => problems.push(format!("stored app '{}': a backend {why}", app.name)),
        }
    }
    for d in reader.domains()? {
        match terminus_store::domain_from(&d) {
            Ok(domain) if statics.domains.contains_key(&domain.pattern) => problems.push(format!(
                "stored domain '{}' is also in the config file, which wins",
                d.host
            )),
            Ok(domain) => {
                routes.set_domain(domain);
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    tracing::info!(
        certificates = report.loaded,
        quarantined = report.quarantined.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "store loaded"
    );
    Ok(StoreLoad {
        quarantined: report.quarantined,
        apps,
        problems,
    })
}

/// What loading the store found.
struct StoreLoad {
    quarantined: Vec<terminus_store::Quarantine>,
    /// Stored apps and their backends, set once the control plane (which resolves names) runs.
    apps: Vec<(String, Vec<BackendAddr>)>,
    problems: Vec<String>,
}

fn load_static_routes(
    config: &Config,
    certs: &CertIndex,
    routes: &RouteTable,
    static_certs: std::collections::HashMap<String, StaticCert>,
) -> Statics {
    let mut statics = Statics {
        certs: static_certs,
        default_app: config.router.default_app.as_ref().map(|a| a.to_string()),
        command_line: config.source.is_none(),
        ..Statics::default()
    };
    for app in &config.apps {
        statics.apps.insert(app.name.to_string());
    }
    for d in &config.domains {
        routes.set_domain(Domain {
            pattern: d.pattern.clone(),
            app: d.app.as_str().into(),
            cert: d.certificate.as_deref().map(Into::into),
        });
        if let Some(cert) = &d.certificate {
            let covered = certs
                .get(cert)
                .is_some_and(|e| d.pattern.covered_by(e.names()));
            if !covered {
                tracing::warn!(domain = %d.pattern, certificate = %cert, "the pinned certificate does not cover this domain (or did not load): its requests will get 421");
            }
        }
        statics
            .domains
            .insert(d.pattern.clone(), d.certificate.clone().map(String::from));
    }
    statics
}

fn read_token(config: &Config, origin: &str) -> Result<Option<Token>, StartError> {
    if let Ok(token) = std::env::var(TOKEN_ENV) {
        if !token.trim().is_empty() {
            return Ok(Some(Token::new(&token)));
        }
    }
    let Some(path) = &config.admin.token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|source| StartError::TokenFile {
        file: origin.to_owned(),
        path: path.display().to_string(),
        source,
    })?;
    Ok((!text.trim().is_empty()).then(|| Token::new(&text)))
}

async fn cleanup_loop(control: Arc<Control>) {
    let mut tick = tokio::time::interval(CLEANUP_EVERY);
    loop {
        tick.tick().await;
        let c = control.clone();
        match tokio::task::spawn_blocking(move || c.cleanup_expired(unix_now())).await {
            Ok(Ok(deleted)) if !deleted.is_empty() => {
                tracing::info!(certificates = ?deleted, "expired certificates no domain uses were deleted")
            }
            Ok(Err(e)) => tracing::warn!(error = %e.message, "expired-certificate cleanup failed"),
            _ => {}
        }
    }
}

/// Resolves backend host names again every `interval` (only apps that have names do work).
async fn resolve_loop(control: Arc<Control>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let c = control.clone();
        let _ = tokio::task::spawn_blocking(move || c.refresh_backends()).await;
    }
}

/// Expiry of every served certificate, for the per-certificate gauge.
struct CertsExpiry(Arc<CertIndex>);

impl ExpirySource for CertsExpiry {
    fn each(&self, f: &mut dyn FnMut(&str, i64)) {
        for e in self.0.entries() {
            f(e.name(), e.not_after());
        }
    }

    fn count(&self) -> usize {
        self.0.len()
    }
}

/// Loads the config's certificate files into the resolver. A certificate that fails is reported
/// and skipped: one bad file never keeps the others from being served.
pub fn load_certificates(
    config: &Config,
    certs: &CertIndex,
    roots: &Roots,
    origin: &str,
) -> (
    Vec<CertLoadError>,
    std::collections::HashMap<String, StaticCert>,
) {
    let now = unix_now();
    let mut errors = Vec::new();
    let mut statics = std::collections::HashMap::new();
    for (i, files) in config.certificates.iter().enumerate() {
        let fail = |message: String| CertLoadError {
            file: origin.to_owned(),
            key: format!("certificate[{i}]"),
            name: files.name.to_string(),
            message,
        };
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| fail(format!("cannot read {}: {e}", path.display())))
        };
        let (cert_pem, key_pem) = match (read(&files.cert), read(&files.key)) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(e), _) | (_, Err(e)) => {
                errors.push(e);
                continue;
            }
        };
        let prepared = match prepare(
            &cert_pem,
            &key_pem,
            &PrepareOptions {
                roots: roots.clone(),
                ..PrepareOptions::default()
            },
            certs.provider(),
            now,
        ) {
            Ok(p) => p,
            Err(e) => {
                errors.push(fail(format!("{} ({})", e, files.cert.display())));
                continue;
            }
        };
        for w in &prepared.warnings {
            tracing::warn!(certificate = %files.name, "{w}");
        }
        let info = StaticCert {
            info: prepared.leaf.clone(),
            chain: prepared.chain.clone(),
        };
        match certs.insert(CertEntry::from_prepared(&files.name, prepared)) {
            Ok(_) => {
                statics.insert(files.name.to_string(), info);
            }
            Err(e) => errors.push(fail(e.to_string())),
        }
    }
    (errors, statics)
}

impl Router {
    /// The first TLS listener's address.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.listeners.iter().find(|(_, tls)| *tls).map(|(a, _)| *a)
    }

    /// The first plaintext listener's address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(_, tls)| !*tls)
            .map(|(a, _)| *a)
    }

    /// Stops accepting, drains connections for up to the configured grace period, then stops
    /// the admin listener.
    pub async fn shutdown(self) -> Drained {
        self.cleanup.abort();
        self.resolve.abort();
        let drained = self.proxy.shutdown(self.grace).await;
        let _ = self.admin_stop.send(true);
        let _ = self.admin_task.await;
        drained
    }
}
