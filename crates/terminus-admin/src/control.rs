//! The control plane: validate, persist, then publish to the running resolver and route table.
//!
//! Every change holds one mutex (changes are rare; readers of the data plane never take it),
//! validates fully before writing, commits one durable store transaction, and only then
//! updates what the router serves. A failure at any step before the commit changes nothing.
//! Methods block on disk I/O: call them from a blocking task.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use crate::backends::Backends;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use terminus_api::{Affected, ErrorBody, SelectedBy as ApiSelectedBy};
use terminus_metrics::ControlMetrics;
use terminus_route::{HostPattern, RouteTable};
use terminus_store::{Store, StoreError};
use terminus_tls::{CertError, CertIndex, CertInfo, ClientCaps, Roots, SelectedBy, Without};

/// The audit log's tracing target: one line per change.
pub const AUDIT_TARGET: &str = "terminus::audit";

/// A certificate from the config file: served, listed, but not changeable through the API.
#[derive(Debug, Clone)]
pub struct StaticCert {
    pub info: CertInfo,
    pub chain: Vec<CertificateDer<'static>>,
}

/// What the config file (or the command line) defines: read-only for the API.
#[derive(Debug, Default, Clone)]
pub struct Statics {
    pub certs: HashMap<String, StaticCert>,
    pub apps: HashSet<String>,
    pub domains: HashMap<HostPattern, Option<String>>,
    /// `[router] default_app`: where hosts no domain covers go.
    pub default_app: Option<String>,
    /// The config came from the command line (`serve --backend`), not a file: its app is the
    /// implicit catch-all.
    pub command_line: bool,
}

/// An API error: HTTP status, a stable id, and a message saying what to do. Messages never
/// hold a value the client sent unless it validated as a name or host (a private key pasted
/// into the wrong field must not come back, nor reach the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub id: &'static str,
    pub message: String,
    /// For a refused destructive change: what it would affect.
    pub affected: Option<Vec<Affected>>,
}

impl ApiError {
    pub fn new(status: u16, id: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            id,
            message: message.into(),
            affected: None,
        }
    }

    pub fn unprocessable(id: &'static str, message: impl Into<String>) -> Self {
        Self::new(422, id, message)
    }

    pub fn conflict(id: &'static str, message: impl Into<String>) -> Self {
        Self::new(409, id, message)
    }

    /// `name` must have validated (a [`check_name`] name or a parsed host).
    pub fn not_found(what: &str, name: &str) -> Self {
        Self::new(404, "not_found", format!("no {what} named '{name}'"))
    }

    /// The JSON body clients see.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            id: self.id.to_owned(),
            message: self.message.clone(),
            affected: self.affected.clone(),
        }
    }
}

impl From<CertError> for ApiError {
    fn from(e: CertError) -> Self {
        Self::unprocessable(e.code(), e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if let StoreError::Conflict { .. } = e {
            return Self::conflict("conflict", e.to_string());
        }
        if e.is_unavailable() {
            tracing::warn!(error = %e, "change refused: the fleet store is unreachable");
            return Self::new(
                503,
                "store_unavailable",
                format!(
                    "{e}; nothing was changed: retry once etcd answers (the router keeps serving)"
                ),
            );
        }
        tracing::error!(error = %e, "store operation failed");
        Self::new(
            500,
            "store_error",
            format!("the store failed; nothing was changed: {e}"),
        )
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The store as the control plane holds it.
#[derive(Debug, Clone)]
enum StoreSlot {
    /// None configured, or it could not be used at start.
    None,
    Open(Arc<Store>),
    /// Released for a binary upgrade: the new process opens it (one process at a time holds
    /// the file). Changes are refused with 503 until it is taken back or this process exits.
    HandedOver,
}

pub struct Control {
    /// Behind a lock only to be swapped out for a binary upgrade; held for a clone of the Arc.
    store: RwLock<StoreSlot>,
    pub(crate) certs: Arc<CertIndex>,
    pub(crate) routes: Arc<RouteTable>,
    pub(crate) provider: Arc<CryptoProvider>,
    /// What "trusted" means: the Mozilla roots and `[tls] trusted_roots`.
    pub(crate) trust: Roots,
    /// Swapped whole by a config reload.
    statics: arc_swap::ArcSwap<Statics>,
    pub(crate) metrics: ControlMetrics,
    pub(crate) retention: Duration,
    pub(crate) backends: Backends,
    /// Automated certificates, when `[acme]` is configured.
    pub(crate) acme: Option<Arc<terminus_acme::Acme>>,
    write: Mutex<()>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("store", &self.slot())
            .field("certs", &self.certs)
            .finish_non_exhaustive()
    }
}

impl Control {
    pub fn new(
        store: Option<Arc<Store>>,
        certs: Arc<CertIndex>,
        routes: Arc<RouteTable>,
        statics: Statics,
        metrics: ControlMetrics,
        retention: Duration,
    ) -> Self {
        Self {
            provider: certs.provider().clone(),
            trust: Roots::default(),
            store: RwLock::new(store.map_or(StoreSlot::None, StoreSlot::Open)),
            certs,
            routes,
            statics: arc_swap::ArcSwap::from_pointee(statics),
            metrics,
            retention,
            backends: Backends::default(),
            acme: None,
            write: Mutex::new(()),
        }
    }

    /// Checks "trusted" against these roots (the Mozilla set plus an operator's private CA).
    pub fn with_roots(mut self, roots: Roots) -> Self {
        self.trust = roots;
        self
    }

    /// Serves automated certificates through `acme`.
    pub fn with_acme(mut self, acme: Option<Arc<terminus_acme::Acme>>) -> Self {
        self.acme = acme;
        self
    }

    /// Automated certificates, when `[acme]` is configured.
    pub fn acm(&self) -> Option<&Arc<terminus_acme::Acme>> {
        self.acme.as_ref()
    }

    fn slot(&self) -> StoreSlot {
        self.store.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The store, if one is open in this process now.
    pub fn store(&self) -> Option<Arc<Store>> {
        match self.slot() {
            StoreSlot::Open(store) => Some(store),
            StoreSlot::None | StoreSlot::HandedOver => None,
        }
    }

    /// The store for an API read: `None` without one, 503 while it is handed over.
    pub(crate) fn store_for_api(&self) -> ApiResult<Option<Arc<Store>>> {
        match self.slot() {
            StoreSlot::Open(store) => Ok(Some(store)),
            StoreSlot::None => Ok(None),
            StoreSlot::HandedOver => Err(handed_over()),
        }
    }

    /// What "trusted" is checked against.
    pub fn roots(&self) -> &Roots {
        &self.trust
    }

    /// What the config file defines now.
    pub fn statics(&self) -> Arc<Statics> {
        self.statics.load_full()
    }

    /// Publishes what a reloaded config file defines (the caller holds [`Control::write_lock`]
    /// and has already served it).
    pub fn set_statics(&self, statics: Statics) {
        self.statics.store(Arc::new(statics));
    }

    /// The store and the change lock, or 503 when there is no store to make changes durable.
    pub(crate) fn writable(&self) -> ApiResult<(Arc<Store>, MutexGuard<'_, ()>)> {
        // The change lock first: a change that holds it finishes against the store it began
        // with before [`Control::release_store`] can hand that store over.
        let lock = self.write_lock();
        match self.slot() {
            StoreSlot::Open(store) => Ok((store, lock)),
            StoreSlot::HandedOver => Err(handed_over()),
            StoreSlot::None => Err(ApiError::new(
                503,
                "no_store",
                "this router has no certificate store: start it with [store] in the config or --data-dir, so changes survive restarts",
            )),
        }
    }

    /// Lets go of the store for a binary upgrade, once no change is in flight: from now on
    /// changes (and reads of stored objects) answer 503 until [`Control::reinstate_store`].
    /// Returns the store so that the caller can wait until every reader has dropped it, which
    /// closes the file for the new process. Blocks while a change is in flight.
    pub fn release_store(&self) -> Option<Arc<Store>> {
        let _lock = self.write_lock();
        // ACM lets go of it too (its orders in flight fail and resume in the new process).
        if let Some(acme) = &self.acme {
            acme.release_store();
        }
        let mut slot = self.store.write().unwrap_or_else(|p| p.into_inner());
        match std::mem::replace(&mut *slot, StoreSlot::HandedOver) {
            StoreSlot::Open(store) => Some(store),
            StoreSlot::None => {
                // Nothing to hand over: this process had none to write to either.
                *slot = StoreSlot::None;
                None
            }
            StoreSlot::HandedOver => None,
        }
    }

    /// Takes the store back after an upgrade that did not happen (`None`: it could not be
    /// reopened; changes then answer 503 "no_store").
    pub fn reinstate_store(&self, store: Option<Arc<Store>>) {
        let _lock = self.write_lock();
        if let Some(acme) = &self.acme {
            acme.reinstate_store(store.clone());
        }
        *self.store.write().unwrap_or_else(|p| p.into_inner()) =
            store.map_or(StoreSlot::None, StoreSlot::Open);
    }

    /// Whether the store is handed over to a new process now.
    pub fn store_handed_over(&self) -> bool {
        matches!(self.slot(), StoreSlot::HandedOver)
    }

    /// The lock every change holds: API changes and config reloads never interleave.
    pub fn write_lock(&self) -> MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a change in the metrics and the audit log. `subject` is a validated name or
    /// host, or None when the request named nothing valid (nothing of it is written then).
    pub(crate) fn audit<T>(
        &self,
        kind: &'static str,
        subject: Option<&str>,
        result: &ApiResult<T>,
    ) {
        let subject = subject.unwrap_or("-");
        match result {
            Ok(_) => {
                self.metrics.change(kind, "ok");
                tracing::info!(target: AUDIT_TARGET, "at=info action={kind} subject={subject:?} result=ok");
            }
            Err(e) => {
                self.metrics.change(kind, e.id);
                tracing::warn!(target: AUDIT_TARGET, "at=warning action={kind} subject={subject:?} result=error id={} status={}", e.id, e.status);
            }
        }
    }

    /// The certificate a domain is served with now and how it was chosen, by the selection
    /// rule handshakes use.
    pub(crate) fn selection(&self, pattern: &HostPattern) -> Option<(String, ApiSelectedBy)> {
        self.selection_without(pattern, &Without::default())
    }

    /// The same, as it will be once `without` is gone.
    pub(crate) fn selection_without(
        &self,
        pattern: &HostPattern,
        without: &Without<'_>,
    ) -> Option<(String, ApiSelectedBy)> {
        let (entry, by) =
            self.certs
                .select_for_domain_without(pattern, &ClientCaps::ALL, without)?;
        Some((entry.name().to_owned(), selected_by(by)))
    }

    /// The certificate serving a domain (the default certificate does not count).
    pub(crate) fn cert_of_domain(&self, pattern: &HostPattern) -> Option<String> {
        self.selection(pattern)
            .filter(|(_, by)| *by != ApiSelectedBy::Default)
            .map(|(name, _)| name)
    }

    /// Certificate name → the domains it serves now, in one pass over the domains.
    pub(crate) fn domains_by_cert(&self) -> HashMap<String, Vec<String>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for d in self.routes.domains() {
            if let Some(name) = self.cert_of_domain(&d.pattern) {
                out.entry(name).or_default().push(d.pattern.to_string());
            }
        }
        out
    }

    /// What removing a certificate or an app's domains does to each domain it touches.
    pub(crate) fn impact(&self, without: &Without<'_>) -> Vec<Affected> {
        let mut out = Vec::new();
        for d in self.routes.domains() {
            let now = self.selection(&d.pattern);
            let removed_domain = without.app.is_some_and(|a| &*d.app == a);
            let loses_cert = without
                .cert
                .is_some_and(|c| now.as_ref().is_some_and(|(n, _)| n == c));
            if !removed_domain && !loses_cert {
                continue;
            }
            let then = self.selection_without(&d.pattern, without);
            let then_app = if removed_domain {
                match &d.pattern {
                    HostPattern::Exact(host) => self
                        .routes
                        .domain_for_where(host.as_str(), |o| {
                            without.app.is_none_or(|a| &*o.app != a)
                        })
                        .map(|o| o.app.to_string()),
                    HostPattern::Wildcard(_) => None,
                }
                .or_else(|| self.statics().default_app.clone())
            } else {
                Some(d.app.to_string())
            };
            out.push(Affected {
                hostname: d.pattern.to_string(),
                app: d.app.to_string(),
                cert: now.as_ref().map(|(n, _)| n.clone()),
                selected_by: now.map(|(_, b)| b),
                then_app,
                then_cert: then.as_ref().map(|(n, _)| n.clone()),
                then_selected_by: then.map(|(_, b)| b),
            });
        }
        out
    }
}

fn handed_over() -> ApiError {
    ApiError::new(
        503,
        "upgrading",
        "the store is being handed to a new terminus process (binary upgrade): retry in a moment, the new process answers once it is ready",
    )
}

pub(crate) fn selected_by(by: SelectedBy) -> ApiSelectedBy {
    match by {
        SelectedBy::Pinned => ApiSelectedBy::Pinned,
        SelectedBy::Exact => ApiSelectedBy::Exact,
        SelectedBy::Wildcard => ApiSelectedBy::Wildcard,
        SelectedBy::Default => ApiSelectedBy::Default,
    }
}

/// Names of certificates and apps, by the one rule the config file uses too
/// ([`terminus_config::Name`]). A refusal names the field and the problem, not the value: that
/// may be anything, a private key included.
pub(crate) fn check_name<'a>(kind: &str, field: &str, name: &'a str) -> ApiResult<&'a str> {
    match terminus_config::Name::parse(name) {
        Ok(_) => Ok(name),
        Err(e) => {
            let problem = match e.problem {
                // One character of the value says what to fix without giving the value away.
                terminus_config::NameProblem::Character(c) if c.is_ascii_graphic() || c == ' ' => {
                    format!("{c:?} is not allowed")
                }
                terminus_config::NameProblem::Character(_) => {
                    "it holds a character that is not allowed".into()
                }
                other => other.to_string(),
            };
            Err(ApiError::unprocessable(
                "invalid_name",
                format!("{field} is not a valid {kind} name ({problem}): use 1-64 of a-z, 0-9, '-' and '_', not starting with '-'"),
            ))
        }
    }
}

/// A domain as typed; a refusal says why without repeating the value.
pub(crate) fn parse_host(field: &str, host: &str) -> ApiResult<HostPattern> {
    HostPattern::parse(host).map_err(|e| {
        let terminus_route::NameError::Invalid { reason, .. } = e;
        ApiError::unprocessable(
            "invalid_domain",
            format!("{field} is not a valid domain ({reason}): write a host name such as www.example.com or *.example.com"),
        )
    })
}
