//! Records → what the router serves. The one place that turns the config file's certificates,
//! apps and domains and the store's records into [`CertEntry`], [`App`] and [`Domain`] values and
//! applies them to the certificate index and the route table: at start ([`load_config`], then
//! [`load_store`]) and for one changed record while the router runs ([`publish_cert`],
//! [`publish_app`], [`publish_domain`]).
//!
//! Stored certificates are checked against their stored checksum; a mismatch is quarantined with
//! R17 and never blocks the rest. Nothing here parses X.509 for stored records: each version
//! carries the fields selection needs, and its key stays sealed until a handshake needs it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use terminus_config::Config;
use terminus_route::{App, BackendAddr, Domain, HostPattern, RouteTable};
use terminus_tls::{
    prepare, CertEntry, CertError, CertIndex, CertInfo, IndexError, PrepareOptions, Roots,
};

use crate::checksum;
use crate::db::{decode_cert, Reader, Store, Undecodable};
use crate::error::{Result, StoreError};
use crate::records::{AppRecord, CertRecord, CertVersion, DomainRecord};
use crate::seal::MasterKey;
use crate::sealed::SealedKey;

/// Router code for a bundle whose checksum does not match (the seed's slug checksum error).
pub const R17: &str = "R17";

/// A certificate from the config file as the API shows it (it is served from the index).
#[derive(Debug, Clone)]
pub struct ConfigCert {
    pub info: CertInfo,
    pub chain: Vec<CertificateDer<'static>>,
}

/// Names the config file defines. A stored object with one of these names is not loaded: the
/// file wins.
#[derive(Debug, Default, Clone)]
pub struct Reserved {
    pub certs: HashSet<String>,
    pub apps: HashSet<String>,
    pub domains: HashSet<HostPattern>,
}

/// A certificate in the config file that could not be loaded. The router starts without it.
#[derive(Debug, thiserror::Error)]
pub enum CertFileError {
    #[error("{file}: certificate[{index}] '{name}': cannot read {path}: {source}")]
    Read {
        file: PathBuf,
        index: usize,
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: certificate[{index}] '{name}': {source} ({path})")]
    Invalid {
        file: PathBuf,
        index: usize,
        name: String,
        path: PathBuf,
        #[source]
        source: Box<CertError>,
    },
    #[error("{file}: certificate[{index}] '{name}': {source}")]
    Index {
        file: PathBuf,
        index: usize,
        name: String,
        #[source]
        source: Box<IndexError>,
    },
}

/// What loading the config file's objects did.
#[derive(Debug, Default)]
pub struct ConfigLoad {
    /// The certificates that are served, by name.
    pub certs: HashMap<String, ConfigCert>,
    /// The certificates that are not, and why.
    pub errors: Vec<CertFileError>,
    pub reserved: Reserved,
    /// Every app's backends as written: names among them are resolved by whoever publishes
    /// apps (the control plane), which also re-resolves them.
    pub apps: Vec<(String, Vec<BackendAddr>)>,
    /// Apps a reload took out of service (the file no longer defines them, the store has none).
    pub removed_apps: Vec<String>,
}

/// Loads the config file's certificates into `certs` and its apps and domains into `routes`.
/// A certificate that fails is reported and skipped: one bad file never keeps the others from
/// being served.
pub fn load_config(
    config: &Config,
    certs: &CertIndex,
    routes: &RouteTable,
    roots: &Roots,
    now: i64,
) -> ConfigLoad {
    let mut out = ConfigLoad::default();
    let origin = config.origin();
    for (index, files) in config.certificates.iter().enumerate() {
        match load_cert_files(&origin, index, files, certs, roots, now) {
            Ok(cert) => {
                out.reserved.certs.insert(files.name.to_string());
                out.certs.insert(files.name.to_string(), cert);
            }
            Err(e) => out.errors.push(e),
        }
    }
    for app in &config.apps {
        routes.set_app(app_with_literal_addresses(&app.name, &app.backends));
        out.reserved.apps.insert(app.name.to_string());
        out.apps.push((app.name.to_string(), app.backends.clone()));
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
        out.reserved.domains.insert(d.pattern.clone());
    }
    out
}

fn load_cert_files(
    origin: &std::path::Path,
    index: usize,
    files: &terminus_config::CertificateFiles,
    certs: &CertIndex,
    roots: &Roots,
    now: i64,
) -> Result<ConfigCert, CertFileError> {
    let (entry, shown) = prepare_cert_files(origin, index, files, certs, roots, now)?;
    certs.insert(entry).map_err(|source| CertFileError::Index {
        file: origin.to_path_buf(),
        index,
        name: files.name.to_string(),
        source: Box::new(source),
    })?;
    Ok(shown)
}

/// Reads and checks one `[[certificate]]` of the config file: what the index would serve, and
/// what the API shows of it.
fn prepare_cert_files(
    origin: &std::path::Path,
    index: usize,
    files: &terminus_config::CertificateFiles,
    certs: &CertIndex,
    roots: &Roots,
    now: i64,
) -> Result<(CertEntry, ConfigCert), CertFileError> {
    let name = || files.name.to_string();
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| CertFileError::Read {
            file: origin.to_path_buf(),
            index,
            name: name(),
            path: path.clone(),
            source,
        })
    };
    let (cert_pem, key_pem) = (read(&files.cert)?, read(&files.key)?);
    let prepared = prepare(
        &cert_pem,
        &key_pem,
        &PrepareOptions {
            roots: roots.clone(),
            ..PrepareOptions::default()
        },
        certs.provider(),
        now,
    )
    .map_err(|source| CertFileError::Invalid {
        file: origin.to_path_buf(),
        index,
        name: name(),
        path: files.cert.clone(),
        source: Box::new(source),
    })?;
    for w in &prepared.warnings {
        tracing::warn!(certificate = %files.name, "{w}");
    }
    let shown = ConfigCert {
        info: prepared.leaf.clone(),
        chain: prepared.chain.clone(),
    };
    Ok((CertEntry::from_prepared(&files.name, prepared), shown))
}

/// A reloaded config file's certificates, every one read and checked: nothing of the reload
/// is applied unless all of them load.
#[derive(Debug)]
pub struct PreparedConfig {
    certs: Vec<(CertEntry, String, ConfigCert)>,
}

/// Reads and checks every certificate of a reloaded config file; the first that fails rejects
/// the reload (at start, a failing certificate is skipped instead: there is no running config
/// to keep).
pub fn prepare_config(
    config: &Config,
    certs: &CertIndex,
    roots: &Roots,
    now: i64,
) -> Result<PreparedConfig, CertFileError> {
    let origin = config.origin();
    let mut prepared = Vec::with_capacity(config.certificates.len());
    for (index, files) in config.certificates.iter().enumerate() {
        let (entry, shown) = prepare_cert_files(&origin, index, files, certs, roots, now)?;
        prepared.push((entry, files.name.to_string(), shown));
    }
    Ok(PreparedConfig { certs: prepared })
}

/// Serves a reloaded config file's certificates, apps and domains in place of the running
/// config's (`before`: the names it defined). The config file still wins over the store; a
/// name the file no longer defines goes back to the store's record of that name if there is
/// one, else stops being served. Each certificate joins under its name before the one it
/// replaces leaves, so a handshake always finds one.
pub fn apply_config(
    prepared: PreparedConfig,
    config: &Config,
    before: &Reserved,
    certs: &CertIndex,
    routes: &RouteTable,
    store: Option<&Store>,
) -> Result<ConfigLoad> {
    let mut out = ConfigLoad::default();
    for (_, name, _) in &prepared.certs {
        out.reserved.certs.insert(name.clone());
    }
    out.reserved.apps = config.apps.iter().map(|a| a.name.to_string()).collect();
    out.reserved.domains = config.domains.iter().map(|d| d.pattern.clone()).collect();
    // What the store holds under the names the file gives up, read before anything changes:
    // a store that fails here rejects the reload with nothing applied.
    let fallback = Fallback::read(store, before, &out.reserved)?;
    for (entry, name, shown) in prepared.certs {
        certs.replace(entry);
        out.certs.insert(name, shown);
    }
    for app in &config.apps {
        routes.set_app(app_with_literal_addresses(&app.name, &app.backends));
        out.apps.push((app.name.to_string(), app.backends.clone()));
    }
    for d in &config.domains {
        routes.set_domain(Domain {
            pattern: d.pattern.clone(),
            app: d.app.as_str().into(),
            cert: d.certificate.as_deref().map(Into::into),
        });
    }
    for (name, stored) in fallback.certs {
        match stored {
            Some(e) => {
                certs.replace(e);
            }
            None => {
                certs.remove(&name);
            }
        }
    }
    for (name, stored) in fallback.apps {
        match stored.map(|record| publish_app(routes, &record)) {
            Some(Ok(specs)) => out.apps.push((name, specs)),
            _ => {
                routes.remove_app(&name);
                out.removed_apps.push(name);
            }
        }
    }
    for (pattern, stored) in fallback.domains {
        if stored.is_none_or(|record| publish_domain(routes, &record).is_err()) {
            routes.remove_domain(&pattern);
        }
    }
    Ok(out)
}

/// The store's records under the names a reloaded config file no longer defines (`None`: the
/// store has none, or it cannot be served).
#[derive(Default)]
struct Fallback {
    certs: Vec<(String, Option<CertEntry>)>,
    apps: Vec<(String, Option<AppRecord>)>,
    domains: Vec<(HostPattern, Option<DomainRecord>)>,
}

impl Fallback {
    fn read(store: Option<&Store>, before: &Reserved, after: &Reserved) -> Result<Self> {
        let mut out = Self::default();
        let reader = store.map(Store::read).transpose()?;
        let mut interner = Interner::default();
        for name in before.certs.difference(&after.certs) {
            let stored = match (&reader, store) {
                (Some(r), Some(s)) => r
                    .cert(name)?
                    .and_then(|record| entry(s.master_key(), &record, &mut interner).ok()),
                _ => None,
            };
            out.certs.push((name.clone(), stored));
        }
        for name in before.apps.difference(&after.apps) {
            let stored = match &reader {
                Some(r) => r.app(name)?,
                None => None,
            };
            out.apps.push((name.clone(), stored));
        }
        for pattern in before.domains.difference(&after.domains) {
            let stored = match &reader {
                Some(r) => r.domain(&pattern.to_string())?,
                None => None,
            };
            out.domains.push((pattern.clone(), stored));
        }
        Ok(out)
    }
}

/// A stored app or domain that decodes but cannot be served as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("stored app '{app}': backend '{backend}' is not IP:PORT")]
    Backend { app: String, backend: String },
    #[error("stored domain '{host}': {source}")]
    Host {
        host: String,
        #[source]
        source: terminus_route::NameError,
    },
}

/// A stored certificate that is not served, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    pub name: String,
    pub code: &'static str,
    pub reason: String,
}

impl fmt::Display for Quarantine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate '{}' quarantined ({}): {}",
            self.name, self.code, self.reason
        )
    }
}

/// A stored app or domain that was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum Skipped {
    #[error("stored {kind} '{name}' has the name of one in the config file, which wins")]
    Shadowed { kind: &'static str, name: String },
    #[error(transparent)]
    Unusable(#[from] RecordError),
    #[error("stored {kind} '{key}' cannot be decoded: {source}")]
    Undecodable {
        kind: &'static str,
        key: String,
        #[source]
        source: StoreError,
    },
}

/// What loading the store did.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub certs: usize,
    pub apps: usize,
    pub domains: usize,
    /// Stored certificates not served (R17).
    pub quarantined: Vec<Quarantine>,
    /// Stored apps and domains not loaded, and stored certificates shadowed by the config.
    pub skipped: Vec<Skipped>,
    /// The walk over the store stopped here: what was read before it is served, the rest is
    /// not.
    pub interrupted: Option<StoreError>,
    /// Stored apps' backends as written (see [`ConfigLoad::apps`]).
    pub app_backends: Vec<(String, Vec<BackendAddr>)>,
}

/// Loads every stored certificate, app and domain whose name the config file does not reserve.
/// Per-record problems are reported and skipped; a failure of the store itself stops the walk
/// ([`LoadReport::interrupted`]) and keeps what was loaded before it.
pub fn load_store(
    store: &Store,
    certs: &CertIndex,
    routes: &RouteTable,
    reserved: &Reserved,
) -> LoadReport {
    let mut report = LoadReport::default();
    if let Err(e) = walk(store, certs, routes, reserved, &mut report) {
        report.interrupted = Some(e);
    }
    report
}

fn walk(
    store: &Store,
    certs: &CertIndex,
    routes: &RouteTable,
    reserved: &Reserved,
    report: &mut LoadReport,
) -> Result<()> {
    let reader = store.read()?;
    load_certs(&reader, store.master_key(), certs, reserved, report)?;
    reader.each_app(|item| match item {
        Ok(app) if reserved.apps.contains(&app.name) => report.skipped.push(Skipped::Shadowed {
            kind: "app",
            name: app.name,
        }),
        Ok(app) => match publish_app(routes, &app) {
            Ok(specs) => {
                report.apps += 1;
                report.app_backends.push((app.name, specs));
            }
            Err(e) => report.skipped.push(e.into()),
        },
        Err(bad) => report.skipped.push(undecodable("app", bad)),
    })?;
    reader.each_domain(|item| match item {
        Ok(d) => match domain_from(&d) {
            Ok(domain) if reserved.domains.contains(&domain.pattern) => {
                report.skipped.push(Skipped::Shadowed {
                    kind: "domain",
                    name: d.host,
                })
            }
            Ok(domain) => {
                routes.set_domain(domain);
                report.domains += 1;
            }
            Err(e) => report.skipped.push(e.into()),
        },
        Err(bad) => report.skipped.push(undecodable("domain", bad)),
    })?;
    Ok(())
}

fn undecodable(kind: &'static str, bad: Undecodable) -> Skipped {
    Skipped::Undecodable {
        kind,
        key: bad.key,
        source: bad.error,
    }
}

/// Serves a stored certificate's current version, replacing what is served under its name;
/// or says why it must not be served.
pub fn publish_cert(
    store: &Store,
    certs: &CertIndex,
    record: &CertRecord,
) -> Result<(), Quarantine> {
    let e = entry(store.master_key(), record, &mut Interner::default())?;
    certs.replace(e);
    Ok(())
}

/// Serves a stored app (replacing the one of that name) with the backends given as addresses,
/// and returns all its backends as written: the caller resolves the names among them.
pub fn publish_app(
    routes: &RouteTable,
    record: &AppRecord,
) -> Result<Vec<BackendAddr>, RecordError> {
    let specs = app_backends(record)?;
    routes.set_app(app_with_literal_addresses(&record.name, &specs));
    Ok(specs)
}

/// An app served by the backends that are addresses already; names join once resolved.
fn app_with_literal_addresses(name: &str, specs: &[BackendAddr]) -> App {
    let literal = specs
        .iter()
        .filter_map(|b| match b {
            BackendAddr::Ip(a) => Some(*a),
            BackendAddr::Name { .. } => None,
        })
        .collect();
    App::new(name, literal)
}

/// Serves a stored domain (replacing the one with that pattern), with its pin.
pub fn publish_domain(routes: &RouteTable, record: &DomainRecord) -> Result<(), RecordError> {
    routes.set_domain(domain_from(record)?);
    Ok(())
}

/// A stored app's backends (`IP:PORT` or `HOST:PORT`).
pub fn app_backends(app: &AppRecord) -> Result<Vec<BackendAddr>, RecordError> {
    app.backends
        .iter()
        .map(|b| {
            BackendAddr::parse(b).map_err(|_| RecordError::Backend {
                app: app.name.clone(),
                backend: b.clone(),
            })
        })
        .collect()
}

pub fn domain_from(d: &DomainRecord) -> Result<Domain, RecordError> {
    let pattern = HostPattern::parse(&d.host).map_err(|source| RecordError::Host {
        host: d.host.clone(),
        source,
    })?;
    Ok(Domain {
        pattern,
        app: d.app.as_str().into(),
        cert: d.cert.as_deref().map(Into::into),
    })
}

impl Store {
    /// What the index serves for a record's current version, or why it must not be served
    /// ([`publish_cert`] also serves it).
    pub fn entry(
        &self,
        record: &CertRecord,
        interner: &mut Interner,
    ) -> Result<CertEntry, Quarantine> {
        entry(self.master_key(), record, interner)
    }
}

/// What the index serves for a record's current version, or why it must not be served.
pub(crate) fn entry(
    master: &Arc<MasterKey>,
    record: &CertRecord,
    interner: &mut Interner,
) -> Result<CertEntry, Quarantine> {
    let name = &record.name;
    let v = &record.current;
    let quarantine = |reason: String| Quarantine {
        name: name.clone(),
        code: R17,
        reason,
    };
    verify_version(v).map_err(quarantine)?;
    let kind = v
        .kind()
        .ok_or_else(|| quarantine(format!("unknown key type '{}'", v.key_kind)))?;
    let names = v
        .names
        .iter()
        .map(|n| HostPattern::parse(n))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| quarantine(e.to_string()))?;
    let (leaf, rest) = v
        .chain
        .split_first()
        .ok_or_else(|| quarantine("the stored chain is empty".into()))?;
    Ok(CertEntry::new(
        name,
        CertificateDer::from(leaf.clone()),
        interner.intern(rest),
        names,
        kind,
        v.not_after,
        Box::new(SealedKey::of(master, name, v)),
    ))
}

/// The stored checksum matches what is stored.
pub(crate) fn verify_version(v: &CertVersion) -> Result<(), String> {
    if !v.checksum_ok() {
        return Err(format!(
            "checksum error: the stored bundle hashes to {}, its record says {}",
            v.compute_checksum(),
            v.checksum
        ));
    }
    if checksum::parse(&v.checksum).is_none() {
        return Err("the stored checksum is malformed".into());
    }
    Ok(())
}

/// What one loading thread found.
#[derive(Default)]
struct CertsLoaded {
    certs: usize,
    quarantined: Vec<Quarantine>,
    shadowed: Vec<String>,
}

/// Records per batch handed to a loading thread.
const LOAD_BATCH: usize = 1024;

/// Loads the stored certificates into `certs`. One thread reads the table; the records are
/// decoded, checked against their checksums and indexed on as many threads as there are
/// cores (at most four): at a million certificates that work is most of a start.
fn load_certs(
    reader: &Reader,
    master: &Arc<MasterKey>,
    certs: &CertIndex,
    reserved: &Reserved,
    report: &mut LoadReport,
) -> Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let (send, receive) = std::sync::mpsc::sync_channel::<Vec<(String, Vec<u8>)>>(threads * 2);
    let receive = std::sync::Mutex::new(receive);
    let load = || {
        let mut out = CertsLoaded::default();
        let mut interner = Interner::default();
        loop {
            let batch = receive.lock().unwrap_or_else(|p| p.into_inner()).recv();
            let Ok(batch) = batch else { return out };
            for (key, bytes) in batch {
                match decode_cert(&bytes) {
                    Ok(record) if reserved.certs.contains(&record.name) => {
                        out.shadowed.push(record.name)
                    }
                    Ok(record) => match entry(master, &record, &mut interner) {
                        Ok(e) => {
                            certs.replace(e);
                            out.certs += 1;
                        }
                        Err(q) => out.quarantined.push(q),
                    },
                    Err(error) => out.quarantined.push(Quarantine {
                        name: key,
                        code: R17,
                        reason: error.to_string(),
                    }),
                }
            }
        }
    };
    let (walked, parts) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads).map(|_| scope.spawn(load)).collect();
        let walked = reader.each_cert_encoded(LOAD_BATCH, |batch| {
            // The workers end only when the sender is dropped: a send cannot fail.
            let _ = send.send(batch);
        });
        drop(send);
        let parts: Vec<CertsLoaded> = workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect();
        (walked, parts)
    });
    let mut quarantined = Vec::new();
    let mut shadowed = Vec::new();
    for part in parts {
        report.certs += part.certs;
        quarantined.extend(part.quarantined);
        shadowed.extend(part.shadowed);
    }
    // In the table's order, as one thread would have found them.
    quarantined.sort_by(|a, b| a.name.cmp(&b.name));
    shadowed.sort();
    report.quarantined.extend(quarantined);
    report
        .skipped
        .extend(shadowed.into_iter().map(|name| Skipped::Shadowed {
            kind: "certificate",
            name,
        }));
    walked
}

/// Shares identical intermediate chains between entries (many certificates from one CA).
#[derive(Debug, Default)]
pub struct Interner {
    chains: HashMap<Vec<u8>, Arc<[CertificateDer<'static>]>>,
}

impl Interner {
    fn intern(&mut self, chain: &[Vec<u8>]) -> Arc<[CertificateDer<'static>]> {
        let key: Vec<u8> = chain
            .iter()
            .flat_map(|c| {
                (c.len() as u32)
                    .to_be_bytes()
                    .into_iter()
                    .chain(c.iter().copied())
            })
            .collect();
        self.chains
            .entry(key)
            .or_insert_with(|| {
                chain
                    .iter()
                    .map(|c| CertificateDer::from(c.clone()))
                    .collect()
            })
            .clone()
    }
}
