//! Durable state: certificates, domains and apps in an embedded redb file.
//!
//! - Every change is one ACID transaction, durable when `write` returns.
//! - Private keys are sealed with AES-256-GCM under a master key kept outside the data
//!   directory ([`seal`]); nothing in the data directory alone reveals a key.
//! - Every stored certificate version carries a `SHA256:<hex>` checksum of its bundle; loading
//!   verifies it, and a mismatch quarantines that entry (R17) while everything else loads.
//! - A certificate keeps its previous version for rollback.
//! - Every record carries a checksum of its own bytes, and the file is opened with the engine's
//!   integrity check; a damaged file is an error ([`StoreError::is_corruption`]), never a panic
//!   (the engine's calls are guarded). [`check_store`] checks a store without writing it;
//!   [`recover`] salvages a damaged one into a new file.
//! - [`acme`] keeps automated certificate management's state (apps, domains, orders, account).
//! - Session-ticket keys and their rotation state are kept sealed too ([`tickets`]), so
//!   clients resume after a restart.
//! - [`load`] turns the config file's objects and stored records into what the router serves.

pub mod acme;
pub mod backend;
mod check;
mod checksum;
mod db;
mod engine;
mod error;
pub mod fleet;
pub mod load;
mod mirror;
pub mod names;
mod records;
mod recover;
pub mod seal;
mod sealed;
pub mod tickets;

pub use acme::{
    AcmStatus, AcmeAccountRecord, AcmeAppRecord, AcmeCertMark, AcmeDomainRecord, AcmeState,
};
pub use check::{check_store, StoreCheck};
pub use checksum::{parse as parse_checksum, sha256};
pub use db::{Reader, Store, Undecodable, Writer, STORE_FILE};
pub use error::{Result, StoreError};
pub use load::{
    app_backends, apply_config, domain_from, load_config, load_store, prepare_config, publish_app,
    publish_cert, publish_domain, CertFileError, ConfigCert, ConfigLoad, Interner, LoadReport,
    PreparedConfig, Quarantine, RecordError, Reserved, Skipped, R17,
};
pub use mirror::{Apply, Changed, RemoteKv};
pub use records::{kind_name, AppRecord, CertRecord, CertVersion, DomainRecord};
pub use recover::{recover, Lost, RecoverOutcome, Recovery};
pub use sealed::SealedKey;
pub use tickets::{load_ticket_keys, LoadedTicketKeys, TicketKeysOrigin};
