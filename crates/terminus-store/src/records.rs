//! What the store keeps, encoded compactly (postcard) behind a one-byte schema version and
//! followed by a checksum of its own bytes.
//!
//! The checksum lets each record be trusted on its own: the store file is verified page by
//! page when it opens, but a record salvaged from a damaged file (`--store-recover`) has only
//! its own checksum to prove it is what was written. Schema 1 records (before the checksum and
//! before certificate versions carried their upload checksum) still decode, unverified, and
//! are rewritten in the current schema when they change.

use aws_lc_rs::digest::{digest, SHA256};
use serde::{Deserialize, Serialize};
use terminus_tls::KeyKind;

use crate::checksum;
use crate::error::StoreError;

/// Records without a checksum of their own, certificate versions without `upload_checksum`.
const SCHEMA_V1: u8 = 1;
/// Records followed by [`RECORD_SUM`] bytes of SHA-256 over the schema byte and the body;
/// certificate versions carry the checksum of the upload as sent (`upload_checksum`).
const SCHEMA: u8 = 2;
/// 128 bits of SHA-256: damage goes unnoticed with odds of 2^-128.
const RECORD_SUM: usize = 16;

/// One version of a certificate: the chain as served and the sealed private key, plus the
/// fields shown to operators and needed for selection, so that loading needs no X.509 parsing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertVersion {
    pub version: u32,
    /// DER, leaf first, intermediates in path order.
    pub chain: Vec<Vec<u8>>,
    /// `nonce || AES-256-GCM(format byte || key DER) || tag`, bound to this name and version.
    pub sealed_key: Vec<u8>,
    /// `SHA256:<hex>` over this version's served chain, sealed key and selection fields.
    pub checksum: String,
    pub names: Vec<String>,
    pub common_names: Vec<String>,
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
    pub key_kind: String,
    pub bypass: bool,
    pub added_at: i64,
    /// `SHA256:<hex>` of the files as uploaded (certificate file bytes, then key file bytes),
    /// what an operator can recompute with `cat server.crt server.key | sha256sum`. Shown, not
    /// used for integrity (that is `checksum`); None for versions stored before schema 2.
    pub upload_checksum: Option<String>,
}

impl CertVersion {
    /// The checksum of what is stored: each field length-prefixed so no two bundles collide.
    pub fn compute_checksum(&self) -> String {
        let mut parts: Vec<Vec<u8>> = Vec::with_capacity(self.chain.len() + self.names.len() + 4);
        let mut push = |bytes: &[u8]| {
            let mut v = (bytes.len() as u64).to_be_bytes().to_vec();
            v.extend_from_slice(bytes);
            parts.push(v);
        };
        push(&(self.chain.len() as u64).to_be_bytes());
        for der in &self.chain {
            push(der);
        }
        push(&self.sealed_key);
        for name in &self.names {
            push(name.as_bytes());
        }
        push(&self.not_after.to_be_bytes());
        push(self.key_kind.as_bytes());
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        checksum::sha256(&refs)
    }

    pub fn checksum_ok(&self) -> bool {
        self.compute_checksum() == self.checksum
    }

    /// The associated data a version's key is sealed under.
    pub fn aad(name: &str, version: u32) -> Vec<u8> {
        format!("terminus:cert:{name}:{version}").into_bytes()
    }

    pub fn kind(&self) -> Option<KeyKind> {
        parse_kind(&self.key_kind)
    }
}

pub fn kind_name(kind: KeyKind) -> String {
    match kind {
        KeyKind::EcdsaP256 => "ecdsa-p256".into(),
        KeyKind::EcdsaP384 => "ecdsa-p384".into(),
        KeyKind::EcdsaP521 => "ecdsa-p521".into(),
        KeyKind::Ed25519 => "ed25519".into(),
        KeyKind::Rsa { bits } => format!("rsa-{bits}"),
    }
}

fn parse_kind(s: &str) -> Option<KeyKind> {
    Some(match s {
        "ecdsa-p256" => KeyKind::EcdsaP256,
        "ecdsa-p384" => KeyKind::EcdsaP384,
        "ecdsa-p521" => KeyKind::EcdsaP521,
        "ed25519" => KeyKind::Ed25519,
        rsa => KeyKind::Rsa {
            bits: rsa.strip_prefix("rsa-")?.parse().ok()?,
        },
    })
}

/// A certificate under its name: the served version and the one before it (for rollback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    pub name: String,
    pub current: CertVersion,
    pub previous: Option<CertVersion>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainRecord {
    /// The host pattern as typed (normalized): `www.example.com` or `*.example.com`.
    pub host: String,
    pub app: String,
    /// Pinned certificate name (`domains:update HOST --cert NAME`).
    pub cert: Option<String>,
    pub dns_target: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    pub name: String,
    /// `IP:PORT`.
    pub backends: Vec<String>,
    pub created_at: i64,
}

/// A stored type, with how to read it from an older schema.
pub(crate) trait Record: Serialize + for<'a> Deserialize<'a> {
    /// Decodes a schema 1 body.
    fn from_v1(body: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(body)
    }
}

impl Record for DomainRecord {}
impl Record for AppRecord {}

impl Record for CertRecord {
    fn from_v1(body: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes::<v1::CertRecord>(body).map(Into::into)
    }
}

/// Schema 1, kept to read records written by earlier versions.
mod v1 {
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub(super) struct CertVersion {
        version: u32,
        chain: Vec<Vec<u8>>,
        sealed_key: Vec<u8>,
        checksum: String,
        names: Vec<String>,
        common_names: Vec<String>,
        subject: String,
        issuer: String,
        serial: String,
        not_before: i64,
        not_after: i64,
        key_kind: String,
        bypass: bool,
        added_at: i64,
    }

    #[derive(Deserialize)]
    pub(super) struct CertRecord {
        name: String,
        current: CertVersion,
        previous: Option<CertVersion>,
        created_at: i64,
    }

    impl From<CertVersion> for super::CertVersion {
        fn from(v: CertVersion) -> Self {
            Self {
                version: v.version,
                chain: v.chain,
                sealed_key: v.sealed_key,
                checksum: v.checksum,
                names: v.names,
                common_names: v.common_names,
                subject: v.subject,
                issuer: v.issuer,
                serial: v.serial,
                not_before: v.not_before,
                not_after: v.not_after,
                key_kind: v.key_kind,
                bypass: v.bypass,
                added_at: v.added_at,
                upload_checksum: None,
            }
        }
    }

    impl From<CertRecord> for super::CertRecord {
        fn from(r: CertRecord) -> Self {
            Self {
                name: r.name,
                current: r.current.into(),
                previous: r.previous.map(Into::into),
                created_at: r.created_at,
            }
        }
    }
}

pub(crate) fn encode<T: Record>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![SCHEMA];
    out.extend(postcard::to_stdvec(value).map_err(StoreError::Encode)?);
    let sum = record_sum(&out);
    out.extend_from_slice(&sum);
    Ok(out)
}

fn record_sum(bytes: &[u8]) -> [u8; RECORD_SUM] {
    let mut sum = [0u8; RECORD_SUM];
    sum.copy_from_slice(&digest(&SHA256, bytes).as_ref()[..RECORD_SUM]);
    sum
}

/// Decodes a record, verifying its checksum (schema 2).
pub(crate) fn decode<T: Record>(bytes: &[u8]) -> Result<T, StoreError> {
    decode_with(bytes, true)
}

/// Decodes a record read from a file whose pages were all verified when it was opened (the
/// walk over every record at start): its own checksum would repeat that check, at about 1.6 µs
/// per certificate.
pub(crate) fn decode_from_verified_file<T: Record>(bytes: &[u8]) -> Result<T, StoreError> {
    decode_with(bytes, false)
}

fn decode_with<T: Record>(bytes: &[u8], verify: bool) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&SCHEMA, _)) => {
            let split = bytes
                .len()
                .checked_sub(RECORD_SUM)
                .filter(|&n| n > 1)
                .ok_or(StoreError::RecordChecksum)?;
            let (signed, sum) = bytes.split_at(split);
            if verify && record_sum(signed) != sum {
                return Err(StoreError::RecordChecksum);
            }
            postcard::from_bytes(&signed[1..]).map_err(StoreError::Decode)
        }
        Some((&SCHEMA_V1, body)) => T::from_v1(body).map_err(StoreError::Decode),
        Some((&version, _)) => Err(StoreError::UnknownSchema {
            version,
            known: SCHEMA,
        }),
        None => Err(StoreError::Empty),
    }
}

/// The record carries a checksum of its own (schema 2 and later).
pub(crate) fn is_verifiable(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|&v| v >= SCHEMA)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version() -> CertVersion {
        let mut v = CertVersion {
            version: 1,
            chain: vec![vec![1, 2, 3], vec![4]],
            sealed_key: vec![9; 40],
            checksum: String::new(),
            names: vec!["a.example.com".into()],
            common_names: vec!["a.example.com".into()],
            subject: "CN=a.example.com".into(),
            issuer: "CN=ca".into(),
            serial: "01".into(),
            not_before: 1,
            not_after: 2,
            key_kind: "ecdsa-p256".into(),
            bypass: false,
            added_at: 3,
            upload_checksum: Some(format!("SHA256:{}", "ab".repeat(32))),
        };
        v.checksum = v.compute_checksum();
        v
    }

    #[test]
    fn round_trip_and_checksum() {
        let rec = CertRecord {
            name: "brave-otter-12345".into(),
            current: version(),
            previous: None,
            created_at: 5,
        };
        let bytes = encode(&rec).unwrap();
        let back: CertRecord = decode(&bytes).unwrap();
        assert_eq!(back, rec);
        assert!(back.current.checksum_ok());
        let mut changed = back.current.clone();
        changed.names[0] = "b.example.com".into();
        assert!(!changed.checksum_ok(), "the names are covered");
        let mut changed = back.current;
        changed.chain[0][0] ^= 1;
        assert!(!changed.checksum_ok(), "the chain is covered");
    }

    /// A record as terminus wrote it before schema 2 (postcard of the schema 1 fields, behind
    /// the byte 1) still decodes, with no upload checksum, and its integrity checksum holds.
    #[test]
    fn schema_1_records_decode() {
        #[derive(Serialize)]
        struct V1Version<'a> {
            version: u32,
            chain: &'a [Vec<u8>],
            sealed_key: &'a [u8],
            checksum: &'a str,
            names: &'a [String],
            common_names: &'a [String],
            subject: &'a str,
            issuer: &'a str,
            serial: &'a str,
            not_before: i64,
            not_after: i64,
            key_kind: &'a str,
            bypass: bool,
            added_at: i64,
        }
        #[derive(Serialize)]
        struct V1Record<'a> {
            name: &'a str,
            current: V1Version<'a>,
            previous: Option<V1Version<'a>>,
            created_at: i64,
        }
        let v = version();
        fn old(v: &CertVersion) -> V1Version<'_> {
            V1Version {
                version: v.version,
                chain: &v.chain,
                sealed_key: &v.sealed_key,
                checksum: &v.checksum,
                names: &v.names,
                common_names: &v.common_names,
                subject: &v.subject,
                issuer: &v.issuer,
                serial: &v.serial,
                not_before: v.not_before,
                not_after: v.not_after,
                key_kind: &v.key_kind,
                bypass: v.bypass,
                added_at: v.added_at,
            }
        }
        let mut bytes = vec![1u8];
        bytes.extend(
            postcard::to_stdvec(&V1Record {
                name: "old-cert",
                current: old(&v),
                previous: Some(old(&v)),
                created_at: 7,
            })
            .unwrap(),
        );
        let back: CertRecord = decode(&bytes).unwrap();
        let want = CertVersion {
            upload_checksum: None,
            ..v
        };
        assert_eq!(back.name, "old-cert");
        assert_eq!(back.current, want);
        assert_eq!(back.previous.as_ref(), Some(&want));
        assert!(back.current.checksum_ok());
        assert_eq!(back.created_at, 7);
        // Domains and apps did not change shape.
        let mut bytes = vec![1u8];
        bytes.extend(postcard::to_stdvec(&("web", vec!["127.0.0.1:1".to_owned()], 9i64)).unwrap());
        let app: AppRecord = decode(&bytes).unwrap();
        assert_eq!(app.backends, ["127.0.0.1:1"]);
    }

    #[test]
    fn every_byte_of_a_record_is_covered() {
        let app = AppRecord {
            name: "web".into(),
            backends: vec!["127.0.0.1:9000".into()],
            created_at: 7,
        };
        let bytes = encode(&app).unwrap();
        assert_eq!(decode::<AppRecord>(&bytes).unwrap(), app);
        for i in 1..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x04;
            let e = decode::<AppRecord>(&damaged).unwrap_err();
            assert!(e.is_corruption(), "byte {i}: {e}");
        }
        let mut v1 = vec![SCHEMA_V1];
        v1.extend(postcard::to_stdvec(&app).unwrap());
        assert_eq!(
            decode::<AppRecord>(&v1).unwrap(),
            app,
            "schema 1 still reads"
        );
        assert!(!is_verifiable(&v1) && is_verifiable(&bytes));
    }

    #[test]
    fn unknown_schema_is_a_clear_error() {
        let err = decode::<AppRecord>(&[9, 0]).unwrap_err();
        assert!(err.to_string().contains("schema version 9"), "{err}");
        assert!(!err.is_corruption());
        assert!(decode::<AppRecord>(&[]).unwrap_err().is_corruption());
        assert!(decode::<AppRecord>(&[SCHEMA_V1, 200])
            .unwrap_err()
            .is_corruption());
    }

    #[test]
    fn kinds_round_trip() {
        for k in [
            KeyKind::EcdsaP256,
            KeyKind::EcdsaP384,
            KeyKind::Ed25519,
            KeyKind::Rsa { bits: 3072 },
        ] {
            assert_eq!(parse_kind(&kind_name(k)), Some(k));
        }
    }
}
