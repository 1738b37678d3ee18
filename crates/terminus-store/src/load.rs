//! From stored records to what the router serves: certificates into the resolver (each checked
//! against its stored checksum; a mismatch is quarantined with R17 and never blocks the rest),
//! domains and apps into the route table.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};
use terminus_route::{App, Domain, HostPattern};
use terminus_tls::{CertEntry, CertIndex, KeyError, KeySource, Prepared};

use crate::checksum;
use crate::db::Store;
use crate::error::{Result, StoreError};
use crate::records::{kind_name, AppRecord, CertRecord, CertVersion, DomainRecord};
use crate::seal::MasterKey;

/// Router code for a bundle whose checksum does not match (the seed's slug checksum error).
pub const R17: &str = "R17";

const FORMAT_PKCS8: u8 = 1;
const FORMAT_PKCS1: u8 = 2;
const FORMAT_SEC1: u8 = 3;

/// A private key kept sealed in memory and opened only when a handshake needs the certificate.
pub struct SealedKey {
    master: Arc<MasterKey>,
    sealed: Box<[u8]>,
    aad: Box<[u8]>,
}

impl fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealedKey(<sealed>)")
    }
}

impl KeySource for SealedKey {
    fn private_key(&self) -> Result<PrivateKeyDer<'static>, KeyError> {
        let mut plain = self
            .master
            .open(&self.sealed, &self.aad)
            .ok_or(KeyError::DoesNotOpen)?;
        let key = match plain.split_first() {
            Some((&FORMAT_PKCS8, der)) => Some(PrivatePkcs8KeyDer::from(der.to_vec()).into()),
            Some((&FORMAT_PKCS1, der)) => Some(PrivatePkcs1KeyDer::from(der.to_vec()).into()),
            Some((&FORMAT_SEC1, der)) => Some(PrivateSec1KeyDer::from(der.to_vec()).into()),
            _ => None,
        };
        plain.fill(0);
        key.ok_or(KeyError::UnknownFormat)
    }
}

impl Store {
    /// Seals a validated upload as version `version` of certificate `name`.
    pub fn seal_version(
        &self,
        name: &str,
        version: u32,
        prepared: &Prepared,
        bypass: bool,
        now: i64,
    ) -> Result<CertVersion> {
        let (format, der) = match &prepared.key {
            PrivateKeyDer::Pkcs8(k) => (FORMAT_PKCS8, k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => (FORMAT_PKCS1, k.secret_pkcs1_der()),
            PrivateKeyDer::Sec1(k) => (FORMAT_SEC1, k.secret_sec1_der()),
            _ => return Err(StoreError::Seal),
        };
        let mut plain = Vec::with_capacity(der.len() + 1);
        plain.push(format);
        plain.extend_from_slice(der);
        let sealed = self
            .master_key()
            .seal(&plain, &CertVersion::aad(name, version));
        plain.fill(0);
        let leaf = &prepared.leaf;
        let mut v = CertVersion {
            version,
            chain: prepared.chain.iter().map(|c| c.to_vec()).collect(),
            sealed_key: sealed?,
            checksum: String::new(),
            names: leaf.names.iter().map(|n| n.to_string()).collect(),
            common_names: leaf.common_names.clone(),
            subject: leaf.subject.clone(),
            issuer: leaf.issuer.clone(),
            serial: leaf.serial.clone(),
            not_before: leaf.not_before,
            not_after: leaf.not_after,
            key_kind: kind_name(prepared.key_kind),
            bypass,
            added_at: now,
            upload_checksum: None,
        };
        v.checksum = v.compute_checksum();
        Ok(v)
    }

    /// What the resolver serves for a record's current version, or why it must not be served.
    pub fn entry(
        &self,
        record: &CertRecord,
        interner: &mut Interner,
    ) -> Result<CertEntry, Quarantine> {
        entry_for(&record.name, &record.current, self.master_key(), interner)
    }

    /// Loads every stored certificate into `certs`. Entries that fail their checksum or cannot
    /// be decoded are quarantined (reported to `quarantined`) and the rest load.
    pub fn load_certs(
        &self,
        certs: &CertIndex,
        mut quarantined: impl FnMut(&Quarantine),
    ) -> Result<LoadReport> {
        let mut report = LoadReport::default();
        let mut interner = Interner::default();
        let reader = self.read()?;
        reader.each_cert(|item| {
            let entry = match item {
                Ok(record) => self.entry(&record, &mut interner),
                Err(bad) => Err(Quarantine {
                    name: bad.key,
                    code: R17,
                    reason: bad.error.to_string(),
                }),
            };
            match entry.map(|e| certs.replace(e)) {
                Ok(_) => report.loaded += 1,
                Err(q) => {
                    quarantined(&q);
                    report.quarantined.push(q);
                }
            }
        })?;
        Ok(report)
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

pub fn app_from(app: &AppRecord) -> Result<App, RecordError> {
    let backends = app
        .backends
        .iter()
        .map(|b| {
            b.parse::<SocketAddr>().map_err(|_| RecordError::Backend {
                app: app.name.clone(),
                backend: b.clone(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(App::new(&app.name, backends))
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

#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: usize,
    pub quarantined: Vec<Quarantine>,
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

fn entry_for(
    name: &str,
    v: &CertVersion,
    master: &Arc<MasterKey>,
    interner: &mut Interner,
) -> Result<CertEntry, Quarantine> {
    let quarantine = |reason: String| Quarantine {
        name: name.to_owned(),
        code: R17,
        reason,
    };
    if !v.checksum_ok() {
        return Err(quarantine(format!(
            "checksum error: the stored bundle hashes to {}, its record says {}",
            v.compute_checksum(),
            v.checksum
        )));
    }
    if checksum::parse(&v.checksum).is_none() {
        return Err(quarantine("the stored checksum is malformed".into()));
    }
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
        Box::new(SealedKey {
            master: master.clone(),
            sealed: v.sealed_key.clone().into_boxed_slice(),
            aad: CertVersion::aad(name, v.version).into_boxed_slice(),
        }),
    ))
}
