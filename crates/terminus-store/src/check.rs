//! Checking a store without changing it (`terminus check-config`): the file is opened read-only
//! with the integrity check a start runs, every record is loaded as a start loads it, and every
//! stored private key is opened and parsed as its first handshake would.

use std::path::PathBuf;
use std::sync::Arc;

use terminus_config::StoreConfig;
use terminus_route::RouteTable;
use terminus_tls::rustls::crypto::CryptoProvider;
use terminus_tls::CertIndex;

use crate::db::Store;
use crate::error::StoreError;
use crate::load::{load_store, LoadReport, Quarantine, Reserved, R17};

/// What checking a store found.
#[derive(Debug)]
pub enum StoreCheck {
    /// No store file yet: the first start creates it.
    Missing { file: PathBuf },
    /// The store cannot be opened (damaged file, wrong key, unreadable disk).
    Unusable { file: PathBuf, error: StoreError },
    /// The store opened; what loading it found (keys that do not open are quarantined).
    Checked { file: PathBuf, report: LoadReport },
}

impl StoreCheck {
    /// Anything a start would not serve, or a file it could not open.
    pub fn is_damaged(&self) -> bool {
        match self {
            Self::Missing { .. } => false,
            Self::Unusable { .. } => true,
            Self::Checked { report, .. } => {
                report.interrupted.is_some()
                    || !report.quarantined.is_empty()
                    || report
                        .skipped
                        .iter()
                        .any(|s| !matches!(s, crate::load::Skipped::Shadowed { .. }))
            }
        }
    }
}

/// Checks the store of `config`, skipping the names the config file reserves.
pub fn check_store(
    config: &StoreConfig,
    reserved: &Reserved,
    provider: Arc<CryptoProvider>,
) -> StoreCheck {
    let file = Store::file_in(&config.dir);
    let store = match Store::open_read_only(config) {
        Ok(Some(store)) => store,
        Ok(None) => return StoreCheck::Missing { file },
        Err(error) => return StoreCheck::Unusable { file, error },
    };
    let certs = CertIndex::new(provider, 1);
    let routes = RouteTable::default();
    let mut report = load_store(&store, &certs, &routes, reserved);
    for entry in certs.entries() {
        if let Err(e) = certs.certified_key(&entry) {
            report.quarantined.push(Quarantine {
                name: entry.name().to_owned(),
                code: R17,
                reason: e.to_string(),
            });
        }
    }
    StoreCheck::Checked { file, report }
}
