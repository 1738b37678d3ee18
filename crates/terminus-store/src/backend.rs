//! The seam between the store and where a write is decided.
//!
//! Every record lives under a key (`certs/NAME`, `domains/HOST`, `apps/NAME`, `acme/...`) at a
//! revision:
//! the revision of the write that last changed it. A write is a compare-and-set: it commits
//! only if every key it changes is still at the revision this store last saw for it, so a
//! change read at revision R is written only if the record is still at R, and the loser of a
//! race gets [`StoreError::Conflict`] instead of silently overwriting the winner.
//!
//! One router (the default) decides alone: its revision is a counter in the redb file, and its
//! change lock already orders writes. A fleet decides in etcd ([`Remote`]): the transaction
//! carries the comparisons, etcd's revision becomes the records' revision, and the redb file
//! is the router's local mirror of etcd.

use std::fmt;

use crate::error::Result;

/// A store revision: etcd's revision in a fleet, a counter of the file for one router.
pub type Revision = u64;

/// The kinds of records, as the first segment of their keys.
pub(crate) const CERTS_KEY: &str = "certs/";
pub(crate) const DOMAINS_KEY: &str = "domains/";
pub(crate) const APPS_KEY: &str = "apps/";
/// Automated certificate management's records: `acme/` then the key of the local `acme` table
/// (`acme/app:NAME`, `acme/domain:HOST`, `acme/account:DIRECTORY`, `acme/cert:NAME`), so a
/// mirror stores them under the same key as one router's own store.
pub(crate) const ACME_KEY: &str = "acme/";

/// One change of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// `certs/NAME`, `domains/HOST` or `apps/NAME`.
    pub key: String,
    /// The encoded record; `None` deletes it.
    pub value: Option<Vec<u8>>,
}

/// Where a fleet's writes are decided (etcd).
pub trait Remote: Send + Sync + fmt::Debug {
    /// Commits `ops` in one transaction if every key is still at its revision in `expect`
    /// (0: the key must not exist), and returns the revision of the commit. A failed
    /// comparison is [`StoreError::Conflict`]; a store that cannot be reached fails fast.
    ///
    /// [`StoreError::Conflict`]: crate::StoreError::Conflict
    fn commit(&self, ops: &[Op], expect: &[(String, Revision)]) -> Result<Revision>;

    /// Why writes cannot be made now (the store is unreachable), or `None` when they can.
    fn unready(&self) -> Option<String>;
}

/// The key of a record of kind `prefix` (one of the `*_KEY` constants).
pub(crate) fn key(prefix: &str, name: &str) -> String {
    format!("{prefix}{name}")
}

/// A key as operators name it: `certs/web` is "certificate 'web'".
pub(crate) fn describe(key: &str) -> String {
    for (prefix, kind) in [
        (CERTS_KEY, "certificate"),
        (DOMAINS_KEY, "domain"),
        (APPS_KEY, "app"),
        ("acme/app:", "ACM app"),
        ("acme/domain:", "ACM domain"),
        ("acme/account:", "ACME account"),
        ("acme/cert:", "ACM certificate mark"),
    ] {
        if let Some(name) = key.strip_prefix(prefix) {
            return format!("{kind} '{name}'");
        }
    }
    format!("'{key}'")
}
