//! The control plane: validate, persist, then publish to the running resolver and route table.
//!
//! Every change holds one mutex (changes are rare; readers of the data plane never take it),
//! validates fully before writing, commits one durable store transaction, and only then
//! updates what the router serves. A failure at any step before the commit changes nothing.
//! Methods block on disk I/O: call them from a blocking task.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use terminus_metrics::ControlMetrics;
use terminus_route::{HostPattern, RouteTable};
use terminus_store::{Store, StoreError};
use terminus_tls::{CertError, CertIndex, CertInfo, ClientCaps, SelectedBy};

/// The audit log's tracing target: one line per change.
pub const AUDIT_TARGET: &str = "terminus::audit";

/// A certificate from the config file: served, listed, but not changeable through the API.
#[derive(Debug, Clone)]
pub struct StaticCert {
    pub info: CertInfo,
    pub chain: Vec<CertificateDer<'static>>,
}

/// What the config file defines (read-only for the API).
#[derive(Debug, Default, Clone)]
pub struct Statics {
    pub certs: HashMap<String, StaticCert>,
    pub apps: HashSet<String>,
    pub domains: HashMap<HostPattern, Option<String>>,
}

/// An API error: HTTP status, a stable id, and a message saying what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub id: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, id: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            id,
            message: message.into(),
        }
    }

    pub fn unprocessable(id: &'static str, message: impl Into<String>) -> Self {
        Self::new(422, id, message)
    }

    pub fn conflict(id: &'static str, message: impl Into<String>) -> Self {
        Self::new(409, id, message)
    }

    pub fn not_found(what: &str, name: &str) -> Self {
        Self::new(404, "not_found", format!("no {what} named '{name}'"))
    }
}

impl From<CertError> for ApiError {
    fn from(e: CertError) -> Self {
        Self::unprocessable(e.code(), e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store operation failed");
        Self::new(
            500,
            "store_error",
            format!("the store failed; nothing was changed: {e}"),
        )
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Where an object comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Store,
    Config,
}

pub struct Control {
    pub(crate) store: Option<Arc<Store>>,
    pub(crate) certs: Arc<CertIndex>,
    pub(crate) routes: Arc<RouteTable>,
    pub(crate) provider: Arc<CryptoProvider>,
    pub(crate) statics: Statics,
    pub(crate) metrics: ControlMetrics,
    pub(crate) retention: Duration,
    write: Mutex<()>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("store", &self.store)
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
            store,
            certs,
            routes,
            statics,
            metrics,
            retention,
            write: Mutex::new(()),
        }
    }

    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// The store and the change lock, or 503 when there is no store to make changes durable.
    pub(crate) fn writable(&self) -> ApiResult<(&Store, MutexGuard<'_, ()>)> {
        let store = self.store.as_deref().ok_or_else(|| {
            ApiError::new(
                503,
                "no_store",
                "this router has no certificate store: start it with [store] in the config or --data-dir, so changes survive restarts",
            )
        })?;
        Ok((store, self.write.lock().unwrap_or_else(|p| p.into_inner())))
    }

    /// Records a change in the metrics and the audit log.
    pub(crate) fn audit<T>(&self, kind: &'static str, subject: &str, result: &ApiResult<T>) {
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

    /// The certificate a domain is served with and whether by its pin, by the selection rule
    /// handshakes use (the default certificate does not count).
    pub(crate) fn cert_of_domain(&self, pattern: &HostPattern) -> Option<(String, bool)> {
        let (entry, by) = self.certs.select_for_domain(pattern, &ClientCaps::ALL)?;
        (by != SelectedBy::Default).then(|| (entry.name().to_owned(), by == SelectedBy::Pinned))
    }

    /// Domain → certificate name for every domain, for listings.
    pub(crate) fn domain_certs(&self) -> Vec<(HostPattern, Option<(String, bool)>)> {
        self.routes
            .domains()
            .into_iter()
            .map(|d| {
                let cert = self.cert_of_domain(&d.pattern);
                (d.pattern.clone(), cert)
            })
            .collect()
    }
}

/// Names of certificates and apps: what an operator types on a command line.
pub(crate) fn check_name(kind: &str, name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "invalid_name",
            format!("'{name}' is not a valid {kind} name: use 1-64 of a-z, 0-9, '-' and '_', not starting with '-'"),
        ))
    }
}

pub(crate) fn parse_host(host: &str) -> ApiResult<HostPattern> {
    HostPattern::parse(host).map_err(|e| ApiError::unprocessable("invalid_domain", e.to_string()))
}
