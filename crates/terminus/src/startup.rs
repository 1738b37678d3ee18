//! Turning a validated config into a running router: TLS policy, certificate store, route table,
//! metrics, the data-plane listeners and the admin listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use terminus_admin::Admin;
use terminus_config::Config;
use terminus_metrics::{MetricsRegistry, ProxyMetrics};
use terminus_proxy::{BoundListener, Drained, Proxy, Shared};
use terminus_route::{App, Domain, RouteTable};
use terminus_tls::{prepare, CertEntry, CertStore, PrepareOptions, TlsPolicy, DEFAULT_KEY_CACHE};
use tokio::net::TcpListener;
use tokio::sync::watch;

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
}

/// A certificate from the config that could not be loaded. The router starts without it.
#[derive(Debug, thiserror::Error)]
#[error("{file}: certificate '{name}': {message}")]
pub struct CertLoadError {
    pub file: String,
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
    proxy: Proxy,
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
    let loaded = metrics.certificates_loaded.clone();
    let certs = Arc::new(
        CertStore::new(policy.provider().clone(), DEFAULT_KEY_CACHE)
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
    let cert_errors = load_certificates(config, &certs, &origin);
    for e in &cert_errors {
        tracing::error!("{e}; the router serves without it");
    }
    certs.set_default(config.tls.default_certificate.as_deref());

    let routes = Arc::new(RouteTable::default());
    for app in &config.apps {
        routes.set_app(App::new(&app.name, app.backends.clone()));
    }
    for d in &config.domains {
        routes.set_domain(Domain {
            pattern: d.pattern.clone(),
            app: d.app.as_str().into(),
        });
        if let Some(cert) = &d.certificate {
            certs.pin(&d.pattern, cert);
        }
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
    let admin_task = tokio::spawn(terminus_admin::serve(
        admin_listener,
        Admin::new(registry),
        admin_rx,
    ));
    Ok(Router {
        shared,
        listeners,
        admin,
        cert_errors,
        proxy,
        admin_stop,
        admin_task,
        grace: config.timeouts.shutdown_grace,
    })
}

/// Loads the config's certificate files into the store. A certificate that fails is reported and
/// skipped: one bad file never keeps the others from being served.
pub fn load_certificates(config: &Config, certs: &CertStore, origin: &str) -> Vec<CertLoadError> {
    let now = unix_now();
    let mut errors = Vec::new();
    for files in &config.certificates {
        let fail = |message: String| CertLoadError {
            file: origin.to_owned(),
            name: files.name.clone(),
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
            &PrepareOptions::default(),
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
        if let Err(e) = certs.insert(CertEntry::from_prepared(&files.name, prepared)) {
            errors.push(fail(e.to_string()));
        }
    }
    errors
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
        let drained = self.proxy.shutdown(self.grace).await;
        let _ = self.admin_stop.send(true);
        let _ = self.admin_task.await;
        drained
    }
}
