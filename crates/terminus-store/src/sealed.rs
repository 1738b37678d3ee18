//! Private keys as the store keeps them: sealed at rest (see [`crate::seal`]) with a one-byte
//! format tag, and opened only when a handshake first needs the certificate.

use std::fmt;
use std::sync::Arc;

use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use terminus_tls::{KeyError, KeySource, Prepared};

use crate::db::Store;
use crate::error::{Result, StoreError};
use crate::records::{kind_name, CertVersion};
use crate::seal::MasterKey;

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
}

impl Store {
    /// The current version's private key opens with this store's key (a fleet router holding
    /// another fleet key cannot open it, and must not serve the certificate).
    pub fn key_opens(&self, record: &crate::records::CertRecord) -> bool {
        SealedKey::of(self.master_key(), &record.name, &record.current)
            .private_key()
            .is_ok()
    }
}

impl SealedKey {
    /// The sealed key of version `v` of certificate `name`.
    pub(crate) fn of(master: &Arc<MasterKey>, name: &str, v: &CertVersion) -> Self {
        Self {
            master: master.clone(),
            sealed: v.sealed_key.clone().into_boxed_slice(),
            aad: CertVersion::aad(name, v.version).into_boxed_slice(),
        }
    }
}
