//! Durable state: certificates, domains and apps in an embedded redb file.
//!
//! - Every change is one ACID transaction, durable when `write` returns.
//! - Private keys are sealed with AES-256-GCM under a master key kept outside the data
//!   directory ([`seal`]); nothing in the data directory alone reveals a key.
//! - Every stored certificate version carries a `SHA256:<hex>` checksum of its bundle; loading
//!   verifies it, and a mismatch quarantines that entry (R17) while everything else loads.
//! - A certificate keeps its previous version for rollback.

mod checksum;
mod db;
mod error;
mod load;
pub mod names;
mod records;
pub mod seal;

pub use checksum::{parse as parse_checksum, sha256};
pub use db::{Reader, Store, Undecodable, Writer};
pub use error::{Result, StoreError};
pub use load::{
    app_from, domain_from, Interner, LoadReport, Quarantine, RecordError, SealedKey, R17,
};
pub use records::{kind_name, AppRecord, CertRecord, CertVersion, DomainRecord};
