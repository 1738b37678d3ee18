//! Turning a validated config into a running router: TLS policy, certificate index, route table,
//! metrics, the data-plane listeners and the admin listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use terminus_admin::{Admin, Api, Control, Readiness, Stage, StaticCert, Statics, Token};
use terminus_config::{Config, StoreBackend, StoreConfig};
use terminus_metrics::{
    AcmeMetrics, ControlMetrics, ExpiryCollector, ExpirySource, MetricsRegistry, ProxyMetrics,
};
use terminus_proxy::{BoundListener, Drained, Proxy, Shared};
use terminus_route::{BackendAddr, RouteTable};
use terminus_store::{ConfigLoad, RecoverOutcome, Reserved, Store, StoreError};
use terminus_tls::{CertIndex, Roots, TicketKeys, Ticketer, TlsPolicy, DEFAULT_KEY_CACHE};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::reload::{ConfigSource, Reloader};

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
    #[error("{file}: store: etcd ({endpoints}) cannot be reached and {dir} holds no snapshot of the fleet's store to serve meanwhile: start this router once while etcd answers, or fix the endpoints ({source})")]
    FleetNoSnapshot {
        file: String,
        endpoints: String,
        dir: String,
        #[source]
        source: Box<terminus_store::fleet::FleetError>,
    },
    #[error("{file}: store: {source}")]
    Fleet {
        file: String,
        #[source]
        source: Box<terminus_store::fleet::FleetError>,
    },
    #[error("{file}: tls.trusted_roots: {path}: {source}")]
    TrustedRoots {
        file: String,
        path: String,
        #[source]
        source: RootsError,
    },
    #[error("{file}: {source}")]
    Acme {
        file: String,
        #[source]
        source: Box<terminus_acme::AcmeError>,
    },
    #[error("cannot keep a copy of the listener {address} for upgrades: {source}")]
    Handoff {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make session-ticket keys: {0}")]
    TicketKeys(#[source] terminus_tls::TicketKeyError),
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
pub type CertLoadError = terminus_store::CertFileError;

/// What `serve` asks of a start beyond the config.
#[derive(Debug, Default, Clone)]
pub struct StartOptions {
    /// `--store-recover`: if the store is damaged, salvage it into a new file first.
    pub store_recover: bool,
    /// How a reload reads the config again; default: the file the config came from.
    pub reload_from: Option<ConfigSource>,
}

/// The store as this start found it.
#[derive(Debug)]
pub enum StoreStatus {
    /// None is configured.
    None,
    /// Opened and loaded; the API changes it.
    Ready,
    /// Damaged or unreadable: the config file's objects (and whatever of the store could be
    /// read) are served, and the API refuses changes with 503 until it is fixed.
    Unavailable(Box<terminus_store::StoreError>),
}

/// A running router.
#[derive(Debug)]
pub struct Router {
    /// What the data plane started with. Its certificate index, route table and backend pool
    /// are the ones every later generation shares; its settings and TLS policy are those of
    /// the start (a reload publishes new ones to new connections).
    pub shared: Arc<Shared>,
    /// Bound data-plane addresses, in config order, with whether each is TLS.
    pub listeners: Vec<(SocketAddr, bool)>,
    pub admin: SocketAddr,
    /// Certificates from the config that were refused.
    pub cert_errors: Vec<CertLoadError>,
    /// Stored certificates that were not served (R17).
    pub quarantined: Vec<terminus_store::Quarantine>,
    pub store: StoreStatus,
    pub control: Arc<Control>,
    /// Applies the config file again (SIGHUP, `POST /v1/reload`); `None` for the quick start.
    pub reloader: Option<Arc<Reloader>>,
    /// What `/readyz` answers.
    pub readiness: Arc<Readiness>,
    proxy: Proxy,
    cleanup: tokio::task::JoinHandle<()>,
    resolve: tokio::task::JoinHandle<()>,
    acme_task: Option<tokio::task::JoinHandle<()>>,
    tickets: tokio::task::JoinHandle<()>,
    admin_stop: watch::Sender<bool>,
    admin_task: tokio::task::JoinHandle<()>,
    /// A fleet router's watch on etcd.
    fleet: Option<tokio::task::JoinHandle<()>>,
    /// A fleet router's watch on the fleet's ACME challenge answers.
    fleet_challenges: Option<tokio::task::JoinHandle<()>>,
    /// Copies of the listening sockets for an upgrade; closed as the router stops, so that a
    /// stopped router refuses connections rather than leaving them in the backlog.
    pub(crate) handoff: Handoff,
    /// To open the store again after an upgrade that did not happen.
    pub(crate) store_config: Option<StoreConfig>,
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Starts the router described by `config`, registering its metrics into `registry`.
pub async fn start(config: &Config, registry: MetricsRegistry) -> Result<Router, StartError> {
    start_with(config, registry, &StartOptions::default()).await
}

/// [`start`] with the options of `serve`.
///
/// The admin listener comes up first, so that `/healthz` answers and `/readyz` says what the
/// router is waiting for (certificates, then listeners) while a large store loads.
pub async fn start_with(
    config: &Config,
    registry: MetricsRegistry,
    options: &StartOptions,
) -> Result<Router, StartError> {
    start_inheriting(config, registry, options, Inherited::default()).await
}

/// Listening sockets handed over by the process this one replaces (a binary upgrade, see
/// [`crate::upgrade`]).
#[derive(Debug, Default)]
pub struct Inherited {
    pub listeners: Vec<std::net::TcpListener>,
    pub admin: Option<std::net::TcpListener>,
}

impl Inherited {
    /// Takes the inherited listener for `wanted`: the same address, or, where the config asks
    /// for port 0 (any port), the first one on the same IP, in the order handed over.
    fn take(
        list: &mut Vec<std::net::TcpListener>,
        wanted: SocketAddr,
    ) -> Option<std::net::TcpListener> {
        Self::take_exact(list, wanted).or_else(|| Self::take_any_port(list, wanted))
    }

    fn take_exact(
        list: &mut Vec<std::net::TcpListener>,
        wanted: SocketAddr,
    ) -> Option<std::net::TcpListener> {
        let at = list
            .iter()
            .position(|l| l.local_addr().is_ok_and(|have| have == wanted))?;
        Some(list.remove(at))
    }

    fn take_any_port(
        list: &mut Vec<std::net::TcpListener>,
        wanted: SocketAddr,
    ) -> Option<std::net::TcpListener> {
        if wanted.port() != 0 {
            return None;
        }
        let at = list
            .iter()
            .position(|l| l.local_addr().is_ok_and(|have| have.ip() == wanted.ip()))?;
        Some(list.remove(at))
    }
}

/// Copies of the listening sockets, kept to hand them to a new process on an upgrade.
#[derive(Debug)]
pub(crate) struct Handoff {
    pub(crate) listeners: Vec<(SocketAddr, std::os::fd::OwnedFd)>,
    pub(crate) admin: (SocketAddr, std::os::fd::OwnedFd),
}

fn dup(
    address: SocketAddr,
    fd: std::os::fd::BorrowedFd<'_>,
) -> Result<std::os::fd::OwnedFd, StartError> {
    rustix::io::fcntl_dupfd_cloexec(fd, 0).map_err(|e| StartError::Handoff {
        address,
        source: e.into(),
    })
}

/// Binds the listeners, or adopts the inherited sockets for the same addresses.
async fn listen(
    config: &Config,
    inherited: Vec<std::net::TcpListener>,
) -> Result<Vec<BoundListener>, StartError> {
    let wanted: Vec<SocketAddr> = config.listeners.iter().map(|l| l.address).collect();
    let (sockets, left) = match_inherited(&wanted, inherited);
    let mut bound = Vec::with_capacity(config.listeners.len());
    for (socket, l) in sockets.into_iter().zip(&config.listeners) {
        bound.push(match socket {
            Some(socket) => {
                tracing::info!(address = ?socket.local_addr().ok(), "listener taken over from the previous process");
                BoundListener::adopt(socket, l)?
            }
            None => BoundListener::bind(l).await?,
        });
    }
    for left in &left {
        tracing::warn!(address = ?left.local_addr().ok(), "a listener handed over is not in the config any more: closed");
    }
    Ok(bound)
}

/// The handed-over socket for each wanted address (exact addresses first, so that a `:0`
/// listener cannot take a socket another listener names by its port; then `:0` ones by IP,
/// in the order handed over), and the sockets nothing wants.
fn match_inherited(
    wanted: &[SocketAddr],
    mut inherited: Vec<std::net::TcpListener>,
) -> (
    Vec<Option<std::net::TcpListener>>,
    Vec<std::net::TcpListener>,
) {
    let mut sockets: Vec<Option<std::net::TcpListener>> = wanted
        .iter()
        .map(|&address| Inherited::take_exact(&mut inherited, address))
        .collect();
    for (socket, &address) in sockets.iter_mut().zip(wanted) {
        if socket.is_none() {
            *socket = Inherited::take_any_port(&mut inherited, address);
        }
    }
    (sockets, inherited)
}

/// Binds the admin listener, or adopts the inherited one if it is for the same address (then
/// `true`).
async fn listen_admin(
    config: &Config,
    inherited: Option<std::net::TcpListener>,
) -> Result<(TcpListener, bool), StartError> {
    let address = config.admin.address;
    let fail = |source| StartError::AdminBind { address, source };
    let mut list: Vec<_> = inherited.into_iter().collect();
    if let Some(socket) = Inherited::take(&mut list, address) {
        tracing::info!(address = ?socket.local_addr().ok(), "admin listener taken over from the previous process");
        socket.set_nonblocking(true).map_err(fail)?;
        return Ok((TcpListener::from_std(socket).map_err(fail)?, true));
    }
    for left in &list {
        tracing::warn!(address = ?left.local_addr().ok(), "the admin listener handed over is not the configured one: closed");
    }
    Ok((TcpListener::bind(address).await.map_err(fail)?, false))
}

/// The admin listener, served from the start, or (when it was handed over) once this process
/// is ready.
enum AdminServing {
    Started(tokio::task::JoinHandle<()>),
    Deferred(TcpListener),
}

/// [`start_with`] on sockets handed over by the process this one replaces.
pub async fn start_inheriting(
    config: &Config,
    mut registry: MetricsRegistry,
    options: &StartOptions,
    mut inherited: Inherited,
) -> Result<Router, StartError> {
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
            .on_quarantine(crate::fleet::report_quarantine(
                matches!(
                    config.store.as_ref().map(|s| &s.backend),
                    Some(StoreBackend::Etcd(_))
                ),
                &control_metrics,
            )),
    );
    ExpiryCollector::register(
        &mut registry,
        CertsExpiry(certs.clone()),
        config.admin.expiry_metrics_limit,
        unix_now,
    );
    let acme_metrics = AcmeMetrics::register(&mut registry);
    let roots = trusted_roots(config, &origin)?;
    let token = read_token(config, &origin)?;

    let readiness = Arc::new(Readiness::new(Stage::LoadingCertificates));
    let (admin_listener, admin_inherited) = listen_admin(config, inherited.admin.take()).await?;
    let admin = admin_listener.local_addr().unwrap_or(config.admin.address);
    let admin_dup = (
        admin,
        dup(admin, std::os::fd::AsFd::as_fd(&admin_listener))?,
    );
    let admin_server = Admin::starting(registry, readiness.clone());
    // Dropping the sender (a start that fails below) stops the admin listener too.
    let (admin_stop, admin_rx) = watch::channel(false);
    let limits = terminus_admin::Limits {
        header_timeout: config.admin.header_timeout,
        idle_timeout: config.admin.idle_timeout,
        max_connections: config.admin.max_connections,
    };
    let admin_for_serving = admin_server.clone();
    let spawn_admin = move |listener| {
        tokio::spawn(terminus_admin::serve(
            listener,
            admin_for_serving.clone(),
            limits,
            admin_rx.clone(),
        ))
    };
    // A socket handed over by the process this one replaces is served only once this one is
    // ready: until then that process answers on it, and this one would only say "not ready".
    let admin_serving = if admin_inherited {
        AdminServing::Deferred(admin_listener)
    } else {
        AdminServing::Started(spawn_admin(admin_listener))
    };

    let mut from_config = terminus_store::load_config(config, &certs, &routes, &roots, unix_now());
    let mut app_backends = std::mem::take(&mut from_config.apps);
    let cert_errors = std::mem::take(&mut from_config.errors);
    for e in &cert_errors {
        tracing::error!("{e}; the router serves without it");
    }
    // The store comes second: a name defined in the config file wins over a stored one.
    let fleet = match config.store.as_ref().map(|s| &s.backend) {
        Some(StoreBackend::Etcd(etcd)) => Some(crate::fleet::open(config, etcd, &origin).await?),
        _ => None,
    };
    let (store, status, quarantined, stored_apps) = match &config.store {
        None => (None, StoreStatus::None, Vec::new(), Vec::new()),
        Some(store_config) => {
            let opened = open_store(
                store_config,
                options,
                fleet.as_ref().map(|f| f.store.clone()),
                &certs,
                &routes,
                &from_config.reserved,
                &control_metrics,
            );
            opened.map_err(|source| StartError::Store {
                file: origin.clone(),
                source: Box::new(source),
            })?
        }
    };
    app_backends.extend(stored_apps);
    let ticket_keys = start_ticket_keys(store.as_deref(), unix_now())?;
    policy
        .tickets()
        .set_keys(&ticket_keys)
        .map_err(StartError::TicketKeys)?;
    let ticketer = policy.tickets().clone();
    let rotations = metrics.ticket_key_rotations.clone();
    let reserved = from_config.reserved.clone();
    let statics = statics_of(config, from_config);
    certs.set_default(config.tls.default_certificate.as_deref());

    let challenges = Arc::new(terminus_tls::AcmeChallenges::default());
    let acme = match (&config.acme, &store) {
        (Some(acme_config), Some(store)) => {
            terminus_acme::check_config(acme_config, certs.provider().clone()).map_err(
                |source| StartError::Acme {
                    file: origin.clone(),
                    source: Box::new(source),
                },
            )?;
            let acme = terminus_acme::Acme::new(terminus_acme::Parts {
                config: acme_config.clone(),
                store: store.clone(),
                certs: certs.clone(),
                challenges: challenges.clone(),
                metrics: acme_metrics,
                fleet: fleet.as_ref().map(|f| f.etcd.clone()),
            });
            let domains: Vec<(String, String)> = routes
                .domains()
                .into_iter()
                .map(|d| (d.pattern.to_string(), d.app.to_string()))
                .collect();
            if let Err(e) = acme.reconcile(&domains, unix_now()) {
                tracing::error!(error = %e, "ACM: cannot reconcile its state with the domains");
            }
            tracing::info!(directory = acme.directory(), "automated certificates on");
            Some(acme)
        }
        (Some(_), None) => {
            tracing::error!("automated certificates are configured but the store is unavailable: ACM is off until it is fixed");
            None
        }
        _ => None,
    };
    if token.is_none() {
        tracing::warn!("admin API disabled: set {TOKEN_ENV} or admin.token_file to manage certificates, domains and apps");
    }
    let control = Arc::new(
        Control::new(
            store,
            certs.clone(),
            routes.clone(),
            statics,
            control_metrics.clone(),
            config
                .store
                .as_ref()
                .map_or(terminus_config::DEFAULT_EXPIRED_RETENTION, |s| {
                    s.expired_retention
                }),
        )
        .with_roots(roots)
        .with_acme(acme.clone()),
    );
    resolve_backends(&control, app_backends).await;

    readiness.set(Stage::Binding);
    let bound = listen(config, std::mem::take(&mut inherited.listeners)).await?;
    let listeners: Vec<(SocketAddr, bool)> = bound
        .iter()
        .filter_map(|l| l.local_addr().ok().map(|a| (a, l.is_tls())))
        .collect();
    let mut handed = Vec::with_capacity(bound.len());
    for (l, &(address, _)) in bound.iter().zip(&listeners) {
        handed.push((address, dup(address, std::os::fd::AsFd::as_fd(l))?));
    }
    let handoff = Handoff {
        listeners: handed,
        admin: admin_dup,
    };

    let fleet_answers = fleet
        .as_ref()
        .map(|_| terminus_acme::FleetChallenges::new(challenges.clone(), certs.provider().clone()));
    let shared = Shared::new(
        terminus_proxy::Settings::from_config(config),
        certs.clone(),
        routes,
        policy,
        metrics,
        challenges,
    );
    let proxy = Proxy::start(shared.clone(), bound);
    let reloader = reload_source(config, options).map(|source| {
        Arc::new(Reloader::new(
            source,
            config.clone(),
            reserved,
            proxy.live(),
            control.clone(),
            control_metrics.clone(),
        ))
    });
    control_metrics.config_last_reload.set(unix_now());
    admin_server.set_api(Some(Api {
        control: control.clone(),
        token,
        max_body: config.admin.max_body_bytes,
        now: unix_now,
        reload: reloader
            .clone()
            .map(|r| r as Arc<dyn terminus_admin::Reload>),
    }));
    let fleet_sync = fleet.as_ref().map(|f| {
        let watch = terminus_store::fleet::sync::run(
            f.etcd.clone(),
            f.store.clone(),
            control.clone(),
            f.revision,
        );
        let certs = certs.clone();
        tokio::spawn(async move {
            // Opening every stored key takes seconds at a million certificates, so it runs
            // once serving has begun; a certificate whose key does not open cannot complete a
            // handshake meanwhile (its key is opened on first use), and the watch waits for
            // the scan so that no change it brings is taken out of service by mistake.
            let scan =
                tokio::task::spawn_blocking(move || crate::fleet::quarantine_foreign_keys(&certs));
            let _ = scan.await;
            watch.await
        })
    });
    // Every router of a fleet answers the CA's challenges, whichever router orders (the CA
    // reaches the one its load balancer picks), also a router without [acme] itself.
    let fleet_challenges = fleet.as_ref().zip(fleet_answers).map(|(f, answers)| {
        tokio::spawn(terminus_store::fleet::orders::watch_challenges(
            f.etcd.clone(),
            answers,
        ))
    });
    let acme_task = acme.as_ref().map(|a| a.spawn());
    let cleanup = tokio::spawn(cleanup_loop(control.clone()));
    let resolve = tokio::spawn(resolve_loop(control.clone(), config.proxy.resolve_interval));
    // A fleet shares its ticket keys through etcd (one router rotates them under a lease);
    // one router keeps its own in its store.
    let tickets = match &fleet {
        Some(f) => tokio::spawn(terminus_store::fleet::tickets::run(
            f.etcd.clone(),
            f.store.master_key().clone(),
            ticketer,
        )),
        None => tokio::spawn(rotate_ticket_keys(
            control.clone(),
            ticketer,
            ticket_keys,
            rotations,
        )),
    };
    let admin_task = match admin_serving {
        AdminServing::Started(task) => task,
        AdminServing::Deferred(listener) => spawn_admin(listener),
    };
    readiness.set(Stage::Ready);
    Ok(Router {
        shared,
        listeners,
        admin,
        cert_errors,
        quarantined,
        store: status,
        control,
        reloader,
        readiness,
        proxy,
        cleanup,
        resolve,
        acme_task,
        tickets,
        admin_stop,
        admin_task,
        fleet: fleet_sync,
        fleet_challenges,
        handoff,
        store_config: config.store.clone(),
    })
}

/// Where a reload reads the config from: `serve`'s own loader (the file with its command-line
/// overrides), else the file the config came from; none for the command-line quick start.
fn reload_source(config: &Config, options: &StartOptions) -> Option<ConfigSource> {
    if let Some(source) = &options.reload_from {
        return Some(source.clone());
    }
    let path = config.source.clone()?;
    Some(ConfigSource::new(move || Config::load(&path)))
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

type Opened = (
    Option<Arc<Store>>,
    StoreStatus,
    Vec<terminus_store::Quarantine>,
    Vec<(String, Vec<BackendAddr>)>,
);

/// Opens and loads the store. A damaged or unreadable store never stops the start: the router
/// serves without it (the config file's objects, and whatever of the store could be read) and
/// says so loudly. Only a wrong or unreadable store key, or a data directory that cannot be
/// created, stop it: those are configuration mistakes, and starting would hide them.
fn open_store(
    config: &StoreConfig,
    options: &StartOptions,
    mirror: Option<Arc<Store>>,
    certs: &CertIndex,
    routes: &RouteTable,
    reserved: &Reserved,
    metrics: &ControlMetrics,
) -> Result<Opened, StoreError> {
    if options.store_recover && mirror.is_none() {
        recover_store(config);
    }
    let opened = match mirror {
        Some(m) => Ok(m),
        None => Store::open(config).map(Arc::new),
    };
    let store = match opened {
        Ok(store) => store,
        Err(
            e @ (StoreError::MasterKey(_)
            | StoreError::WrongMasterKey { .. }
            | StoreError::CreateDir { .. }),
        ) => return Err(e),
        Err(e) => {
            store_unavailable(config, &e);
            return Ok((
                None,
                StoreStatus::Unavailable(Box::new(e)),
                Vec::new(),
                Vec::new(),
            ));
        }
    };
    log_key_origin(&store);
    let started = std::time::Instant::now();
    let report = terminus_store::load_store(&store, certs, routes, reserved);
    for q in &report.quarantined {
        tracing::error!(code = q.code, certificate = %q.name, "{q}; the other certificates are served");
        metrics.quarantined.inc();
    }
    for s in &report.skipped {
        tracing::error!("{s}; skipped");
    }
    tracing::info!(
        certificates = report.certs,
        apps = report.apps,
        domains = report.domains,
        quarantined = report.quarantined.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "store loaded"
    );
    match report.interrupted {
        Some(e) => {
            store_unavailable(config, &e);
            Ok((
                None,
                StoreStatus::Unavailable(Box::new(e)),
                report.quarantined,
                report.app_backends,
            ))
        }
        None => {
            metrics.store_available.set(1);
            Ok((
                Some(store),
                StoreStatus::Ready,
                report.quarantined,
                report.app_backends,
            ))
        }
    }
}

/// The loud part of serving without the store: what happened, what is served, what to do.
fn store_unavailable(config: &StoreConfig, e: &StoreError) {
    let remedy = if e.is_io() {
        "check the disk and the permissions of the data directory, then restart"
    } else {
        "restore the data directory from its backup, or restart with `terminus serve --store-recover`, which copies every readable record into a new store file and keeps the damaged one aside"
    };
    tracing::error!(
        dir = %config.dir.display(),
        error = %e,
        "THE STORE CANNOT BE USED: serving the config file's certificates, apps and domains (and what of the store could be read); the admin API refuses changes with 503 until it is fixed. To fix: {remedy}"
    );
}

/// `--store-recover`: salvage a damaged store before opening it.
fn recover_store(config: &StoreConfig) {
    match terminus_store::recover(config) {
        Ok(RecoverOutcome::NoStore) => {
            tracing::info!(dir = %config.dir.display(), "--store-recover: no store yet, nothing to recover")
        }
        Ok(RecoverOutcome::Healthy) => {
            tracing::info!(dir = %config.dir.display(), "--store-recover: the store is healthy, nothing to recover")
        }
        Ok(RecoverOutcome::Recovered(r)) => {
            for lost in &r.lost {
                tracing::error!("--store-recover: {lost}");
            }
            for e in &r.unreadable {
                tracing::error!(error = %e, "--store-recover: part of the damaged file could not be read; the records in it are lost");
            }
            tracing::warn!(
                certificates = r.certs,
                apps = r.apps,
                domains = r.domains,
                lost = r.lost.len(),
                unreadable_parts = r.unreadable.len(),
                damaged_file = %r.damaged_file.display(),
                damage = %r.damage.as_ref().map(ToString::to_string).unwrap_or_default(),
                "--store-recover: the damaged store was copied into a new file; the damaged file is kept aside. Apps and domains carry no checksum of their own: review them (terminus apps, terminus domains)"
            );
        }
        Err(e) => {
            tracing::error!(dir = %config.dir.display(), error = %e, "--store-recover: cannot recover this store")
        }
    }
}

/// What the config file defines, for the API (read-only there).
pub(crate) fn statics_of(config: &Config, loaded: ConfigLoad) -> Statics {
    let mut statics = Statics {
        certs: loaded
            .certs
            .into_iter()
            .map(|(name, c)| {
                (
                    name,
                    StaticCert {
                        info: c.info,
                        chain: c.chain,
                    },
                )
            })
            .collect(),
        default_app: config.router.default_app.as_ref().map(|a| a.to_string()),
        command_line: config.source.is_none(),
        ..Statics::default()
    };
    statics.apps = loaded.reserved.apps;
    for d in &config.domains {
        statics.domains.insert(
            d.pattern.clone(),
            d.certificate.as_ref().map(ToString::to_string),
        );
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

/// Publishes every app with its backends resolved (names through getaddrinfo, which blocks).
async fn resolve_backends(control: &Arc<Control>, apps: Vec<(String, Vec<BackendAddr>)>) {
    let control = control.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for (name, specs) in apps {
            control.set_app_backends(&name, specs);
        }
    })
    .await;
}

/// The session-ticket keys to start with: with a store, the stored ones (rotated if due, see
/// [`terminus_store::tickets`]), so clients resume across a restart or an upgrade; without one,
/// new keys kept in memory only, as a store-less router keeps everything.
fn start_ticket_keys(store: Option<&Store>, now: i64) -> Result<TicketKeys, StartError> {
    use terminus_store::TicketKeysOrigin as Origin;
    let Some(store) = store else {
        return TicketKeys::generate(now).map_err(StartError::TicketKeys);
    };
    let loaded = terminus_store::load_ticket_keys(store, now).map_err(StartError::TicketKeys)?;
    let next_rotation = loaded.keys.next_rotation();
    match &loaded.origin {
        Origin::Stored => tracing::info!(next_rotation, "session-ticket keys loaded from the store"),
        Origin::Rotated => tracing::info!(next_rotation, "session-ticket keys loaded from the store and rotated (their period had ended)"),
        Origin::Created => tracing::info!(next_rotation, "session-ticket keys created and stored"),
        Origin::Expired => tracing::info!(next_rotation, "stored session-ticket keys were older than the ticket lifetime; new keys created and stored"),
        Origin::Replaced(e) => tracing::warn!(error = %e, "stored session-ticket keys cannot be used; new keys created and stored (clients make one full handshake)"),
    }
    if let Some(e) = &loaded.save_error {
        tracing::warn!(error = %e, "cannot store the session-ticket keys: they are used from memory, and a restart before the next rotation loses them");
    }
    Ok(loaded.keys)
}

/// Rotates the session-ticket keys when their period ends: the new state is written to the
/// store first (when this process holds one), so that a restart finds the key its tickets are
/// under, then installed in the ticketer.
async fn rotate_ticket_keys(
    control: Arc<Control>,
    ticketer: Arc<Ticketer>,
    mut keys: TicketKeys,
    rotations: terminus_metrics::Counter,
) {
    loop {
        let wait = keys.next_rotation().saturating_sub(unix_now()).max(1);
        tokio::time::sleep(Duration::from_secs(u64::try_from(wait).unwrap_or(1))).await;
        let now = unix_now();
        if !keys.rotation_due(now) {
            continue;
        }
        let next = match keys.rotated(now) {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "cannot rotate the session-ticket keys; trying again in a minute");
                tokio::time::sleep(Duration::from_secs(60)).await;
                continue;
            }
        };
        if let Some(store) = control.store() {
            let stored = next.clone();
            let saved = tokio::task::spawn_blocking(move || store.put_ticket_keys(&stored)).await;
            if let Ok(Err(e)) = saved {
                tracing::warn!(error = %e, "cannot store the rotated session-ticket keys: they are used from memory");
            }
        }
        if let Err(e) = ticketer.set_keys(&next) {
            tracing::error!(error = %e, "cannot install the rotated session-ticket keys");
            continue;
        }
        rotations.inc();
        tracing::info!(
            next_rotation = next.next_rotation(),
            "session-ticket keys rotated"
        );
        keys = next;
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

/// The ready file's content: what the router bound, for whoever started it.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Ready {
    pub pid: u32,
    pub listeners: Vec<ReadyListener>,
    pub admin: SocketAddr,
    /// `ready`, `unavailable` (damaged or unreadable: serving without it) or `none`.
    pub store: String,
}

#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ReadyListener {
    pub address: SocketAddr,
    pub tls: bool,
}

/// Writes the ready file: to a temporary name beside it, synced, then renamed over `path`, so
/// a reader sees no file or the whole file.
pub fn write_ready_file(path: &std::path::Path, router: &Router) -> std::io::Result<()> {
    use std::io::Write;
    let ready = Ready {
        pid: std::process::id(),
        listeners: router
            .listeners
            .iter()
            .map(|&(address, tls)| ReadyListener { address, tls })
            .collect(),
        admin: router.admin,
        store: match router.store {
            StoreStatus::None => "none",
            StoreStatus::Ready => "ready",
            StoreStatus::Unavailable(_) => "unavailable",
        }
        .to_owned(),
    };
    let json = serde_json::to_vec_pretty(&ready).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&json)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
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
        drop(self.handoff);
        self.readiness.set(Stage::Draining);
        self.cleanup.abort();
        self.resolve.abort();
        if let Some(t) = &self.acme_task {
            t.abort();
        }
        if let Some(acme) = self.control.acm() {
            acme.stop();
        }
        self.tickets.abort();
        if let Some(t) = &self.fleet_challenges {
            t.abort();
        }
        if let Some(sync) = self.fleet {
            sync.abort();
            // Once it is gone, nothing of it holds the store file: a router started again in
            // this process can open it.
            let _ = sync.await;
        }
        let grace = self.proxy.live().load().settings.shutdown_grace;
        let drained = self.proxy.shutdown(grace).await;
        let _ = self.admin_stop.send(true);
        let _ = self.admin_task.await;
        drained
    }

    /// After a binary upgrade: the new process serves on the same sockets now. Stops the admin
    /// listener at once (the new process answers the API), stops accepting, and drains for up
    /// to the grace period without closing an HTTP/1 connection while a request may be on its
    /// way (see [`terminus_proxy::Proxy::hand_over`]).
    pub async fn hand_over(self) -> Drained {
        drop(self.handoff);
        self.cleanup.abort();
        self.resolve.abort();
        self.tickets.abort();
        if let Some(t) = &self.fleet_challenges {
            t.abort();
        }
        self.readiness.set(Stage::Draining);
        let _ = self.admin_stop.send(true);
        let _ = self.admin_task.await;
        let grace = self.proxy.live().load().settings.shutdown_grace;
        self.proxy.hand_over(grace).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handed_sockets_match_exact_addresses_first_then_port_zero_in_order() {
        let bind = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (a, b, c) = (bind(), bind(), bind());
        let [pa, pb, pc] = [&a, &b, &c].map(|l| l.local_addr().unwrap());
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let elsewhere: SocketAddr = "127.0.0.2:0".parse().unwrap();
        // `:0` first in the config, yet the exact address keeps its socket.
        let (got, left) = match_inherited(&[any, pb, any, elsewhere, any], vec![a, b, c]);
        let got: Vec<Option<SocketAddr>> = got
            .iter()
            .map(|s| s.as_ref().map(|s| s.local_addr().unwrap()))
            .collect();
        assert_eq!(got, [Some(pa), Some(pb), Some(pc), None, None]);
        assert!(left.is_empty());

        let d = bind();
        let pd = d.local_addr().unwrap();
        let (got, left) = match_inherited(&["127.0.0.1:1".parse().unwrap()], vec![d]);
        assert!(got[0].is_none(), "a fixed port takes only its own socket");
        assert_eq!(left[0].local_addr().unwrap(), pd);
    }

    /// A rotation that falls due while running is written to the store before it is
    /// installed, so a restart finds the key the latest tickets are under.
    #[tokio::test]
    async fn a_due_rotation_is_stored_and_installed() {
        let dir = std::env::temp_dir().join(format!("terminus-rotation-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Arc::new(Store::open(&StoreConfig::in_dir(dir.join("data"))).unwrap());
        let mut registry = MetricsRegistry::default();
        let provider = Arc::new(terminus_tls::provider(true));
        let control = Arc::new(Control::new(
            Some(store.clone()),
            Arc::new(CertIndex::new(provider, 1)),
            Arc::new(RouteTable::default()),
            Statics::default(),
            ControlMetrics::register(&mut registry),
            Duration::from_secs(1),
        ));
        // Keys whose period ends within a second.
        let keys =
            TicketKeys::generate(unix_now() - terminus_tls::TICKET_ROTATION_SECS + 1).unwrap();
        store.put_ticket_keys(&keys).unwrap();
        let ticketer = Ticketer::new(&keys).unwrap();
        let ticket = rustls::server::ProducesTickets::encrypt(&*ticketer, b"state").unwrap();
        let rotations = terminus_metrics::Counter::default();
        let task = tokio::spawn(rotate_ticket_keys(
            control,
            ticketer.clone(),
            keys.clone(),
            rotations.clone(),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while rotations.get() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no rotation");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        task.abort();
        let stored = store.ticket_keys().unwrap().unwrap();
        assert_ne!(stored.current, keys.current);
        assert_eq!(stored.previous.as_ref(), Some(&keys.current));
        // Installed: new tickets are under the new key, the old ticket still opens.
        let fresh = rustls::server::ProducesTickets::encrypt(&*ticketer, b"new").unwrap();
        assert_ne!(fresh[..16], ticket[..16]);
        assert!(rustls::server::ProducesTickets::decrypt(&*ticketer, &ticket).is_some());
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
