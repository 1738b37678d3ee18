//! Automated certificate management state: which apps have ACM on, each ACM domain's status and
//! order in progress, and the ACME account per directory.
//!
//! One table, `acme`, keyed by kind: `app:NAME`, `domain:HOST`, `account:DIRECTORY`. Each change
//! is one durable transaction like every other record, so an order's URL and the key its CSR
//! was made with are on disk before the CA is asked to validate or finalize: a restart resumes
//! that order instead of opening a second one. Secrets (the account key, a pending
//! certificate key) are sealed under the store's master key, bound to their record.

use serde::{Deserialize, Serialize};

use crate::db::{Reader, Store, Writer};
use crate::error::{Result, StoreError};
use crate::records::{decode, encode, Record};

/// A domain's ACM status, in Heroku's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AcmStatus {
    /// Queued: an order will start when a slot is free.
    Waiting,
    /// An order is open with the CA; its challenges are being answered.
    InProgress,
    /// The CA validated the domain; the certificate is being finalized.
    DnsVerified,
    /// A certificate is served; renewal is scheduled.
    CertIssued,
    /// The last attempt failed; another comes at `next_retry`.
    Failing,
    /// Given up (the CA refused the name for good): `certs:auto:refresh` starts again.
    Failed,
}

impl AcmStatus {
    pub const ALL: [Self; 6] = [
        Self::Waiting,
        Self::InProgress,
        Self::DnsVerified,
        Self::CertIssued,
        Self::Failing,
        Self::Failed,
    ];

    /// As Heroku shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "Waiting",
            Self::InProgress => "In Progress",
            Self::DnsVerified => "DNS Verified",
            Self::CertIssued => "Cert issued",
            Self::Failing => "Failing",
            Self::Failed => "Failed",
        }
    }

    /// A metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::InProgress => "in_progress",
            Self::DnsVerified => "dns_verified",
            Self::CertIssued => "cert_issued",
            Self::Failing => "failing",
            Self::Failed => "failed",
        }
    }
}

/// An app with ACM on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeAppRecord {
    pub app: String,
    pub enabled_at: i64,
}

/// One domain of an ACM app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeDomainRecord {
    pub host: String,
    pub app: String,
    pub status: AcmStatus,
    /// Why the last attempt failed (the CA's problem detail, or ours).
    pub reason: Option<String>,
    /// Unix time of the next attempt when failing.
    pub next_retry: Option<i64>,
    pub last_updated: i64,
    /// Failed attempts in a row (the backoff's exponent).
    pub failures: u32,
    /// The order in progress, resumed after a restart.
    pub order_url: Option<String>,
    /// The private key the order's CSR was made from, sealed (PKCS#8), so a certificate the CA
    /// issues after a crash can still be used.
    pub pending_key: Option<Vec<u8>>,
    /// The stored certificate serving this domain.
    pub cert_name: Option<String>,
    /// Unix time at which to renew the certificate.
    pub renew_at: Option<i64>,
    /// Unix time the served certificate expires.
    pub not_after: Option<i64>,
}

impl AcmeDomainRecord {
    /// A domain just put under ACM: queued.
    pub fn waiting(host: &str, app: &str, now: i64) -> Self {
        Self {
            host: host.to_owned(),
            app: app.to_owned(),
            status: AcmStatus::Waiting,
            reason: None,
            next_retry: None,
            last_updated: now,
            failures: 0,
            order_url: None,
            pending_key: None,
            cert_name: None,
            renew_at: None,
            not_after: None,
        }
    }

    /// The associated data a pending key is sealed under.
    pub fn pending_key_aad(host: &str) -> Vec<u8> {
        format!("terminus:acme-order:{host}").into_bytes()
    }
}

/// The ACME account for one directory: its credentials (the account key and URL, as the client
/// library serializes them) sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeAccountRecord {
    pub directory: String,
    pub sealed_credentials: Vec<u8>,
    pub created_at: i64,
}

impl AcmeAccountRecord {
    pub fn aad(directory: &str) -> Vec<u8> {
        format!("terminus:acme-account:{directory}").into_bytes()
    }
}

/// A certificate ACM issued: it shows as Type `ACM` for as long as it exists, also after ACM
/// is disabled for its app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeCertMark {
    pub name: String,
    pub host: String,
}

impl Record for AcmeCertMark {}
impl Record for AcmeAppRecord {}
impl Record for AcmeDomainRecord {}
impl Record for AcmeAccountRecord {}

fn app_key(app: &str) -> String {
    format!("app:{app}")
}

fn domain_key(host: &str) -> String {
    format!("domain:{host}")
}

fn cert_key(name: &str) -> String {
    format!("cert:{name}")
}

fn account_key(directory: &str) -> String {
    format!("account:{directory}")
}

/// An ACM record salvaged from a damaged store decodes as what its key says it is (which
/// verifies its own checksum); else why not.
pub(crate) fn verify_raw(key: &str, bytes: &[u8]) -> Result<(), String> {
    let checked = match key.split_once(':').map(|(kind, _)| kind) {
        Some("app") => decode::<AcmeAppRecord>(bytes).map(drop),
        Some("domain") => decode::<AcmeDomainRecord>(bytes).map(drop),
        Some("account") => decode::<AcmeAccountRecord>(bytes).map(drop),
        Some("cert") => decode::<AcmeCertMark>(bytes).map(drop),
        _ => return Err("not a known kind of ACM record".into()),
    };
    checked.map_err(|e| e.to_string())
}

/// Everything ACM keeps, read in one snapshot.
#[derive(Debug, Default, Clone)]
pub struct AcmeState {
    pub apps: Vec<AcmeAppRecord>,
    pub domains: Vec<AcmeDomainRecord>,
}

impl Reader {
    /// Every ACM app and domain. A record that does not decode is an error: ACM state is small
    /// and a damaged entry must be seen, not skipped.
    pub fn acme_state(&self) -> Result<AcmeState> {
        let mut out = AcmeState::default();
        self.each_acme(|key, bytes| {
            if key.starts_with("app:") {
                out.apps.push(decode(bytes)?);
            } else if key.starts_with("domain:") {
                out.domains.push(decode(bytes)?);
            }
            Ok(())
        })?;
        Ok(out)
    }

    pub fn acme_domain(&self, host: &str) -> Result<Option<AcmeDomainRecord>> {
        self.acme_get(&domain_key(host))
    }

    pub fn acme_app(&self, app: &str) -> Result<Option<AcmeAppRecord>> {
        self.acme_get(&app_key(app))
    }

    pub fn acme_account(&self, directory: &str) -> Result<Option<AcmeAccountRecord>> {
        self.acme_get(&account_key(directory))
    }

    /// Names of the certificates ACM issued (Type `ACM`).
    pub fn acme_cert_names(&self) -> Result<std::collections::HashSet<String>> {
        let mut out = std::collections::HashSet::new();
        self.each_acme(|key, bytes| {
            if key.starts_with("cert:") {
                out.insert(decode::<AcmeCertMark>(bytes)?.name);
            }
            Ok(())
        })?;
        Ok(out)
    }

    pub fn acme_cert_mark(&self, name: &str) -> Result<Option<AcmeCertMark>> {
        self.acme_get(&cert_key(name))
    }
}

impl Writer<'_> {
    pub fn acme_app(&self, app: &str) -> Result<Option<AcmeAppRecord>> {
        self.acme_get(&app_key(app))
    }

    pub fn put_acme_app(&mut self, record: &AcmeAppRecord) -> Result<()> {
        self.acme_put(&app_key(&record.app), &encode(record)?)
    }

    pub fn delete_acme_app(&mut self, app: &str) -> Result<bool> {
        self.acme_delete(&app_key(app))
    }

    pub fn acme_domain(&self, host: &str) -> Result<Option<AcmeDomainRecord>> {
        self.acme_get(&domain_key(host))
    }

    pub fn put_acme_domain(&mut self, record: &AcmeDomainRecord) -> Result<()> {
        self.acme_put(&domain_key(&record.host), &encode(record)?)
    }

    pub fn delete_acme_domain(&mut self, host: &str) -> Result<bool> {
        self.acme_delete(&domain_key(host))
    }

    pub fn put_acme_cert_mark(&mut self, mark: &AcmeCertMark) -> Result<()> {
        self.acme_put(&cert_key(&mark.name), &encode(mark)?)
    }

    pub fn delete_acme_cert_mark(&mut self, name: &str) -> Result<bool> {
        self.acme_delete(&cert_key(name))
    }

    pub fn put_acme_account(&mut self, record: &AcmeAccountRecord) -> Result<()> {
        self.acme_put(&account_key(&record.directory), &encode(record)?)
    }
}

impl Store {
    /// Seals a secret (an account key, a pending certificate key) bound to `aad`.
    pub fn seal_secret(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        self.master_key().seal(plaintext, aad)
    }

    /// Opens what [`Store::seal_secret`] sealed under the same `aad`.
    pub fn open_secret(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        self.master_key()
            .open(sealed, aad)
            .ok_or(StoreError::RecordChecksum)
    }

    /// Reads one ACM domain in its own snapshot.
    pub fn acme_domain(&self, host: &str) -> Result<Option<AcmeDomainRecord>> {
        self.read()?.acme_domain(host)
    }

    /// Reads, changes and writes one ACM domain in one transaction; `None` when it is gone
    /// (retired meanwhile), and then nothing is written.
    pub fn update_acme_domain(
        &self,
        host: &str,
        f: impl FnOnce(&mut AcmeDomainRecord),
    ) -> Result<Option<AcmeDomainRecord>> {
        self.write(|w| {
            let Some(mut d) = w.acme_domain(host)? else {
                return Ok(None);
            };
            f(&mut d);
            w.put_acme_domain(&d)?;
            Ok(Some(d))
        })
    }
}

// The raw table access lives beside the other tables (db.rs); these wrap it with the file
// guard and the record encoding.
impl Reader {
    fn acme_get<T: Record>(&self, key: &str) -> Result<Option<T>> {
        let raw = self.acme_raw(key)?;
        raw.map(|b| decode(&b)).transpose()
    }
}

impl Writer<'_> {
    fn acme_get<T: Record>(&self, key: &str) -> Result<Option<T>> {
        let raw = self.acme_raw(key)?;
        raw.map(|b| decode(&b)).transpose()
    }
}
