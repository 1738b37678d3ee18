//! Reading the config file again while the router runs (`SIGHUP`, `terminus reload`,
//! `POST /v1/reload`).
//!
//! Everything is built and checked before anything changes: the file must validate, every
//! certificate it names must load, the TLS policy must build, and the store records that come
//! back into service must be readable. Only then is the new state served: the file's
//! certificates, apps and domains through the same loader the start uses
//! ([`terminus_store::apply_config`]; the config file still wins over the store), then the
//! settings and TLS policy in one swap ([`terminus_proxy::Live`]) that each new connection
//! reads without a lock. A rejected file changes nothing.
//!
//! What cannot change in a running process (listener and admin addresses, the store, worker
//! threads, ...) is reported as needing a restart and otherwise left as it was started.

use std::sync::{Arc, Mutex};

use terminus_admin::{ApiError, ApiResult, Control};
use terminus_api::{ReloadCounts, ReloadReport};
use terminus_config::{Config, ConfigError};
use terminus_metrics::ControlMetrics;
use terminus_proxy::{Live, Settings};
use terminus_store::{CertFileError, Reserved, StoreError};

use crate::startup::{statics_of, unix_now};

/// Reads the config again: the file, with whatever `serve`'s command line overrides in it.
#[derive(Clone)]
pub struct ConfigSource(Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>);

impl ConfigSource {
    pub fn new(load: impl Fn() -> Result<Config, ConfigError> + Send + Sync + 'static) -> Self {
        Self(Arc::new(load))
    }

    fn load(&self) -> Result<Config, ConfigError> {
        (self.0)()
    }
}

impl std::fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigSource")
    }
}

/// Why a reload was rejected. The running config is unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{file}: tls: {source}")]
    Policy {
        file: String,
        #[source]
        source: terminus_tls::PolicyError,
    },
    #[error(transparent)]
    Certificate(#[from] CertFileError),
    #[error("the store could not be read: {0}")]
    Store(#[source] StoreError),
    #[error("the store is being handed to a new terminus process (binary upgrade): reload the new one once it serves")]
    Upgrading,
}

/// Applies the config file again; one at a time, and never during an API change.
#[derive(Debug)]
pub struct Reloader {
    source: ConfigSource,
    /// The config as started: what needs a restart is judged against it.
    started: Config,
    /// The names the config file defines now (they shadow the store's).
    reserved: Mutex<Reserved>,
    live: Live,
    control: Arc<Control>,
    metrics: ControlMetrics,
}

impl Reloader {
    pub fn new(
        source: ConfigSource,
        started: Config,
        reserved: Reserved,
        live: Live,
        control: Arc<Control>,
        metrics: ControlMetrics,
    ) -> Self {
        Self {
            source,
            started,
            reserved: Mutex::new(reserved),
            live,
            control,
            metrics,
        }
    }

    /// Reads and applies the config file, counting and logging the outcome. Blocks (disk, name
    /// resolution): call it from a blocking task.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let result = self.try_reload();
        match &result {
            Ok(report) => {
                for setting in &report.needs_restart {
                    tracing::warn!(
                        setting = %setting,
                        "config reload: this setting changed but applies only after a restart; the running value is kept"
                    );
                }
                tracing::info!(
                    file = %report.file,
                    certificates = report.applied.certificates,
                    apps = report.applied.apps,
                    domains = report.applied.domains,
                    needs_restart = report.needs_restart.len(),
                    "config reloaded"
                );
            }
            Err(e) => tracing::error!(
                error = %e,
                "config reload rejected; the running config is unchanged"
            ),
        }
        // Counted after the line is written: whoever sees the count finds the line.
        self.metrics.reload(result.is_ok(), unix_now());
        result
    }

    fn try_reload(&self) -> Result<ReloadReport, ReloadError> {
        // API changes and other reloads wait, so that none interleaves with this one.
        let _write = self.control.write_lock();
        // Without the store, names it defines could not be told from the file's.
        if self.control.store_handed_over() {
            return Err(ReloadError::Upgrading);
        }
        let config = self.source.load()?;
        let file = config.origin().display().to_string();
        let current = self.live.load();
        let policy =
            current
                .policy
                .reconfigured(&config.tls)
                .map_err(|source| ReloadError::Policy {
                    file: file.clone(),
                    source,
                })?;
        let prepared = terminus_store::prepare_config(
            &config,
            &current.certs,
            self.control.roots(),
            unix_now(),
        )?;
        let needs_restart = needs_restart(&self.started, &config);
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        let store = self.control.store();
        let mut loaded = terminus_store::apply_config(
            prepared,
            &config,
            &reserved,
            &current.certs,
            &current.routes,
            store.as_deref(),
        )
        .map_err(ReloadError::Store)?;
        current
            .certs
            .set_default(config.tls.default_certificate.as_deref());
        for name in std::mem::take(&mut loaded.removed_apps) {
            self.control.forget_backends(&name);
        }
        for (name, specs) in std::mem::take(&mut loaded.apps) {
            self.control.set_app_backends(&name, specs);
        }
        *reserved = loaded.reserved.clone();
        let applied = ReloadCounts {
            certificates: loaded.certs.len(),
            apps: config.apps.len(),
            domains: config.domains.len(),
        };
        self.control.set_statics(statics_of(&config, loaded));
        // Domains the file added to (or took from) an app with ACM on are ordered (or
        // retired), as through the API.
        if let Some(acme) = self.control.acm() {
            let domains: Vec<(String, String)> = current
                .routes
                .domains()
                .into_iter()
                .map(|d| (d.pattern.to_string(), d.app.to_string()))
                .collect();
            if let Err(e) = acme.reconcile(&domains, unix_now()) {
                tracing::error!(error = %e, "ACM: the reloaded domains could not be queued; certs:auto:refresh queues them");
            }
        }
        let mut settings = Settings::from_config(&config);
        if !same_listeners(&self.started, &config) {
            // The listeners stay as started, and so do their limits.
            settings.max_connections = current.settings.max_connections.clone();
        }
        self.live.reconfigure(settings, policy);
        Ok(ReloadReport {
            file,
            applied,
            needs_restart,
        })
    }
}

impl terminus_admin::Reload for Reloader {
    fn reload(&self) -> ApiResult<ReloadReport> {
        Reloader::reload(self).map_err(|e| match e {
            ReloadError::Upgrading => ApiError::new(503, "upgrading", e.to_string()),
            ReloadError::Store(_) => ApiError::new(
                500,
                "store_error",
                format!("{e}; the running config is unchanged"),
            ),
            _ => ApiError::unprocessable(
                "config_rejected",
                format!("{e}; the running config is unchanged"),
            ),
        })
    }
}

/// The settings that differ between the config as started and `new` but that a running
/// process cannot change: sockets it holds, the store it opened, its thread pool.
pub fn needs_restart(started: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |changed: bool, what: &str| {
        if changed {
            out.push(what.to_owned());
        }
    };
    check(
        !same_listeners(started, new),
        "[[listener]] (the list, address, tls, proxy_protocol, proxy_trusted)",
    );
    check(started.admin.address != new.admin.address, "admin.address");
    check(
        started.admin
            != terminus_config::AdminConfig {
                address: started.admin.address,
                ..new.admin.clone()
            },
        "[admin] (token_file, limits and timeouts)",
    );
    check(started.store != new.store, "[store]");
    check(
        started.router.threads != new.router.threads,
        "router.threads",
    );
    check(
        started.tls.trusted_roots != new.tls.trusted_roots,
        "tls.trusted_roots",
    );
    check(
        started.proxy.resolve_interval != new.proxy.resolve_interval,
        "proxy.resolve_interval",
    );
    out
}

/// The same listeners, but for `max_connections` (which a reload applies).
fn same_listeners(started: &Config, new: &Config) -> bool {
    started.listeners.len() == new.listeners.len()
        && started.listeners.iter().zip(&new.listeners).all(|(a, b)| {
            terminus_config::Listener {
                max_connections: a.max_connections,
                ..b.clone()
            } == *a
        })
}
