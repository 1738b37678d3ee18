//! The redb file: four tables (certs, domains, apps, meta: the key check and the sealed
//! session-ticket keys, see [`crate::tickets`]), every change one ACID transaction
//! committed with `Durability::Immediate` (fsync before `commit` returns), so an acknowledged
//! change survives `kill -9` and a crash never leaves half a record. Every engine call runs
//! under [`engine::guard`]: a damaged file is an error, never a panic.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use terminus_config::StoreConfig;

use crate::backend::{self, Op, Remote, Revision, ACME_KEY, APPS_KEY, CERTS_KEY, DOMAINS_KEY};
use crate::engine::{self, guard};
use crate::error::{Result, StoreError};
use crate::records::{
    decode, decode_from_verified_file, encode, AppRecord, CertRecord, DomainRecord,
};
use crate::seal::{KeyOrigin, MasterKey};

pub(crate) type Table = TableDefinition<'static, &'static str, &'static [u8]>;
pub(crate) const CERTS: Table = TableDefinition::new("certs");
pub(crate) const DOMAINS: Table = TableDefinition::new("domains");
pub(crate) const APPS: Table = TableDefinition::new("apps");
pub(crate) const META: Table = TableDefinition::new("meta");
/// Each record's revision, by key (`certs/NAME`, ...): what a write compares against.
pub(crate) const REVS: TableDefinition<'static, &'static str, u64> = TableDefinition::new("revs");
/// The file's own revision counter (one router), big-endian u64 in META.
const REVISION: &str = "revision";
/// Automated certificate management: apps, domains, accounts (see [`crate::acme`]).
pub(crate) const ACME: Table = TableDefinition::new("acme");

pub(crate) const KEY_CHECK: &str = "key_check";
pub(crate) const KEY_CHECK_PLAINTEXT: &[u8] = b"terminus store key check";
/// The store file inside the data directory.
pub const STORE_FILE: &str = "terminus.redb";

/// The durable store.
pub struct Store {
    db: Database,
    key: Arc<MasterKey>,
    dir: PathBuf,
    file: Arc<Path>,
    key_origin: KeyOrigin,
    dns_zone: String,
    /// Opened by [`Store::open_read_only`]: writes are refused.
    read_only: bool,
    /// A fleet's shared store: writes are decided there, and this file is its mirror.
    remote: OnceLock<Arc<dyn Remote>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("key_origin", &self.key_origin)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store described by `config`, verifying every page of the file
    /// and that the master key opens it.
    pub fn open(config: &StoreConfig) -> Result<Self> {
        let dir = config.dir.clone();
        create_private_dir(&dir).map_err(|source| StoreError::CreateDir {
            dir: dir.clone(),
            source,
        })?;
        let (key, key_origin) = MasterKey::load(&config.key_file)?;
        let file = Self::file_in(&dir);
        let db = engine::open(&file)?;
        let store = Self {
            db,
            key: Arc::new(key),
            dir,
            file: file.into(),
            key_origin,
            dns_zone: config.dns_zone.clone(),
            read_only: false,
            remote: OnceLock::new(),
        };
        store.check_key()?;
        Ok(store)
    }

    /// Opens an existing store without changing anything on disk (no key file is created, the
    /// store file is not written), with the same integrity and key checks as [`Store::open`].
    /// `None` when the data directory holds no store file yet.
    pub fn open_read_only(config: &StoreConfig) -> Result<Option<Self>> {
        let file = Self::file_in(&config.dir);
        if !file.exists() {
            return Ok(None);
        }
        let (key, key_origin) = MasterKey::load_existing(&config.key_file)?;
        let db = engine::open_read_only(&file, true)?;
        let store = Self {
            db,
            key: Arc::new(key),
            dir: config.dir.clone(),
            file: file.into(),
            key_origin,
            dns_zone: config.dns_zone.clone(),
            read_only: true,
            remote: OnceLock::new(),
        };
        let sealed = guard(&store.file, "checking the store key", || {
            let tx = store.db.begin_read()?;
            let meta = match tx.open_table(META) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let sealed = meta.get(KEY_CHECK)?.map(|v| v.value().to_vec());
            Ok(sealed)
        })?;
        if sealed.is_some_and(|s| !key_check_opens(&store.key, &s)) {
            return Err(StoreError::WrongMasterKey {
                dir: config.dir.clone(),
            });
        }
        Ok(Some(store))
    }

    /// The store file of a data directory.
    pub fn file_in(dir: &Path) -> PathBuf {
        dir.join(STORE_FILE)
    }

    /// Creates the tables on first use and proves the master key opens this directory.
    fn check_key(&self) -> Result<()> {
        guard(&self.file, "checking the store key", || {
            let tx = self.db.begin_write()?;
            {
                let mut meta = tx.open_table(META)?;
                for t in [CERTS, DOMAINS, APPS, ACME] {
                    tx.open_table(t)?;
                }
                tx.open_table(REVS)?;
                let existing = meta.get(KEY_CHECK)?.map(|v| v.value().to_vec());
                match existing {
                    Some(sealed) => {
                        if !key_check_opens(&self.key, &sealed) {
                            return Err(StoreError::WrongMasterKey {
                                dir: self.dir.clone(),
                            });
                        }
                    }
                    None => {
                        let sealed = self.key.seal(KEY_CHECK_PLAINTEXT, KEY_CHECK.as_bytes())?;
                        meta.insert(KEY_CHECK, sealed.as_slice())?;
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    pub fn master_key(&self) -> &Arc<MasterKey> {
        &self.key
    }

    pub fn key_origin(&self) -> &KeyOrigin {
        &self.key_origin
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn dns_zone(&self) -> &str {
        &self.dns_zone
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    pub(crate) fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// A consistent snapshot for reading.
    pub fn read(&self) -> Result<Reader> {
        let tx = guard(&self.file, "reading", || Ok(self.db.begin_read()?))?;
        Ok(Reader {
            tx,
            file: self.file.clone(),
        })
    }

    /// Makes this store a fleet's mirror: from now on writes are decided by `remote`. Set
    /// once, at start; a second call is ignored.
    pub fn set_remote(&self, remote: Arc<dyn Remote>) {
        let _ = self.remote.set(remote);
    }

    /// The fleet's shared store, if this is a mirror.
    pub fn remote(&self) -> Option<&Arc<dyn Remote>> {
        self.remote.get()
    }

    /// Runs `f` in one write transaction and commits durably if it returns `Ok`; on `Err`
    /// nothing is written. The changes `f` makes are a compare-and-set on the revisions of
    /// the records they touch (see [`crate::backend`]): in a fleet they are committed to etcd
    /// first, and a record another router changed meanwhile fails the whole write with
    /// [`StoreError::Conflict`].
    pub fn write<T>(&self, f: impl FnOnce(&mut Writer<'_>) -> Result<T>) -> Result<T> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        guard(&self.file, "writing", || {
            let tx = self.db.begin_write()?;
            let (out, ops) = {
                let mut w = Writer {
                    certs: tx.open_table(CERTS)?,
                    domains: tx.open_table(DOMAINS)?,
                    apps: tx.open_table(APPS)?,
                    revs: tx.open_table(REVS)?,
                    ops: Vec::new(),
                    acme: tx.open_table(ACME)?,
                };
                let out = f(&mut w)?;
                (out, std::mem::take(&mut w.ops))
            };
            if !ops.is_empty() {
                let mut revs = tx.open_table(REVS)?;
                let revision = match self.remote.get() {
                    Some(remote) => {
                        let mut expect = Vec::with_capacity(ops.len());
                        for op in &ops {
                            let at = revs.get(op.key.as_str())?.map_or(0, |v| v.value());
                            expect.push((op.key.clone(), at));
                        }
                        remote.commit(&ops, &expect)?
                    }
                    None => {
                        let mut meta = tx.open_table(META)?;
                        let next = meta
                            .get(REVISION)?
                            .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
                            .map_or(0, u64::from_be_bytes)
                            + 1;
                        meta.insert(REVISION, next.to_be_bytes().as_slice())?;
                        next
                    }
                };
                for op in &ops {
                    match op.value {
                        Some(_) => revs.insert(op.key.as_str(), revision)?,
                        None => revs.remove(op.key.as_str())?,
                    };
                }
            }
            tx.commit()?;
            Ok(out)
        })
    }
}

/// The sealed key-check value opens with `key`.
pub(crate) fn key_check_opens(key: &MasterKey, sealed: &[u8]) -> bool {
    key.open(sealed, KEY_CHECK.as_bytes()).as_deref() == Some(KEY_CHECK_PLAINTEXT)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// A read snapshot.
pub struct Reader {
    tx: redb::ReadTransaction,
    file: Arc<Path>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reader")
    }
}

/// One stored record that could not be decoded, by key.
#[derive(Debug)]
pub struct Undecodable {
    pub key: String,
    pub error: StoreError,
}

/// A record from [`Reader::each_cert_encoded`], decoded as [`Reader::each_cert`] does.
pub(crate) fn decode_cert(bytes: &[u8]) -> Result<CertRecord> {
    decode_from_verified_file(bytes)
}

impl Reader {
    /// A certificate with the revision it was read at: write it back with
    /// [`Writer::expect_cert`] so that a change made meanwhile is not overwritten.
    pub fn cert_at(&self, name: &str) -> Result<Option<(CertRecord, Revision)>> {
        let Some(record) = self.cert(name)? else {
            return Ok(None);
        };
        let revision = guard(&self.file, "reading", || {
            let revs = match self.tx.open_table(REVS) {
                Ok(t) => t,
                // A file written before revisions were kept: every record is at 0.
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
                Err(e) => return Err(e.into()),
            };
            let key = backend::key(CERTS_KEY, name);
            Ok(revs.get(key.as_str())?.map_or(0, |v| v.value()))
        })?;
        Ok(Some((record, revision)))
    }

    pub fn cert(&self, name: &str) -> Result<Option<CertRecord>> {
        guard(&self.file, "reading", || {
            let t = self.tx.open_table(CERTS)?;
            t.get(name)?.map(|v| decode(v.value())).transpose()
        })
    }

    pub fn cert_count(&self) -> Result<u64> {
        guard(&self.file, "reading", || {
            Ok(self.tx.open_table(CERTS)?.len()?)
        })
    }

    /// Every certificate record in name order, streamed: a record that does not decode is
    /// handed over as such, and the walk goes on.
    pub fn each_cert(&self, f: impl FnMut(Result<CertRecord, Undecodable>)) -> Result<()> {
        self.each(CERTS, f)
    }

    /// Every certificate record still encoded, in batches of `size` (key, bytes), for a
    /// caller that decodes them on several threads; decode each with [`decode_cert`].
    pub(crate) fn each_cert_encoded(
        &self,
        size: usize,
        mut f: impl FnMut(Vec<(String, Vec<u8>)>),
    ) -> Result<()> {
        guard(&self.file, "reading", || {
            let t = self.tx.open_table(CERTS)?;
            let mut batch = Vec::with_capacity(size);
            for item in t.iter()? {
                let (k, v) = item?;
                batch.push((k.value().to_owned(), v.value().to_vec()));
                if batch.len() == size {
                    f(std::mem::replace(&mut batch, Vec::with_capacity(size)));
                }
            }
            if !batch.is_empty() {
                f(batch);
            }
            Ok(())
        })
    }

    /// Every app record, streamed as [`Reader::each_cert`].
    pub fn each_app(&self, f: impl FnMut(Result<AppRecord, Undecodable>)) -> Result<()> {
        self.each(APPS, f)
    }

    /// Every domain record, streamed as [`Reader::each_cert`].
    pub fn each_domain(&self, f: impl FnMut(Result<DomainRecord, Undecodable>)) -> Result<()> {
        self.each(DOMAINS, f)
    }

    /// Streams a table. Records are not checked against their own checksum here: the walk
    /// reads what the integrity check at open has just verified page by page.
    fn each<T: crate::records::Record>(
        &self,
        table: Table,
        mut f: impl FnMut(Result<T, Undecodable>),
    ) -> Result<()> {
        guard(&self.file, "reading", || {
            let t = self.tx.open_table(table)?;
            for item in t.iter()? {
                let (k, v) = item?;
                f(
                    decode_from_verified_file(v.value()).map_err(|error| Undecodable {
                        key: k.value().to_owned(),
                        error,
                    }),
                );
            }
            Ok(())
        })
    }

    pub fn domains(&self) -> Result<Vec<DomainRecord>> {
        guard(&self.file, "reading", || {
            all(&self.tx.open_table(DOMAINS)?)
        })
    }

    pub fn app(&self, name: &str) -> Result<Option<AppRecord>> {
        let t = self.tx.open_table(APPS)?;
        t.get(name)?.map(|v| decode(v.value())).transpose()
    }

    pub fn domain(&self, host: &str) -> Result<Option<DomainRecord>> {
        let t = self.tx.open_table(DOMAINS)?;
        t.get(host)?.map(|v| decode(v.value())).transpose()
    }

    /// Up to `limit` domain records in host order, after `after` (a host; None: from the
    /// start). One range read: a page costs its own size, whatever the store's.
    pub fn domains_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<DomainRecord>> {
        let t = self.tx.open_table(DOMAINS)?;
        let mut out = Vec::new();
        let range = match after {
            Some(a) => {
                t.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))?
            }
            None => t.range::<&str>(..)?,
        };
        for item in range.take(limit) {
            let (_, v) = item?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// Certificate records in name order after `after`, streamed like [`Reader::each_cert`],
    /// until `f` returns false.
    pub fn certs_after(
        &self,
        after: Option<&str>,
        mut f: impl FnMut(Result<CertRecord, Undecodable>) -> bool,
    ) -> Result<()> {
        let t = self.tx.open_table(CERTS)?;
        let range = match after {
            Some(a) => {
                t.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))?
            }
            None => t.range::<&str>(..)?,
        };
        for item in range {
            let (k, v) = item?;
            let record = decode(v.value()).map_err(|error| Undecodable {
                key: k.value().to_owned(),
                error,
            });
            if !f(record) {
                break;
            }
        }
        Ok(())
    }

    pub fn apps(&self) -> Result<Vec<AppRecord>> {
        guard(&self.file, "reading", || all(&self.tx.open_table(APPS)?))
    }

    /// One raw ACM record (an older store has no `acme` table yet: nothing).
    pub(crate) fn acme_raw(&self, key: &str) -> Result<Option<Vec<u8>>> {
        guard(&self.file, "reading", || {
            let t = match self.tx.open_table(ACME) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            Ok(t.get(key)?.map(|v| v.value().to_vec()))
        })
    }

    /// Every raw ACM record, in key order.
    pub(crate) fn each_acme(&self, mut f: impl FnMut(&str, &[u8]) -> Result<()>) -> Result<()> {
        guard(&self.file, "reading", || {
            let t = match self.tx.open_table(ACME) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            for item in t.iter()? {
                let (k, v) = item?;
                f(k.value(), v.value())?;
            }
            Ok(())
        })
    }
}

fn all<T: crate::records::Record>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for item in t.iter()? {
        let (_, v) = item?;
        out.push(decode(v.value())?);
    }
    Ok(out)
}

/// The tables inside one write transaction.
pub struct Writer<'tx> {
    certs: redb::Table<'tx, &'static str, &'static [u8]>,
    domains: redb::Table<'tx, &'static str, &'static [u8]>,
    apps: redb::Table<'tx, &'static str, &'static [u8]>,
    revs: redb::Table<'tx, &'static str, u64>,
    /// The changes made, one per key (the last one wins), for the revision check and a
    /// fleet's transaction.
    ops: Vec<Op>,
    acme: redb::Table<'tx, &'static str, &'static [u8]>,
}

impl std::fmt::Debug for Writer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

macro_rules! crud {
    ($table:ident, $prefix:ident, $ty:ty, $get:ident, $put:ident, $delete:ident, $key:ident) => {
        pub fn $get(&self, key: &str) -> Result<Option<$ty>> {
            self.$table.get(key)?.map(|v| decode(v.value())).transpose()
        }

        pub fn $put(&mut self, record: &$ty) -> Result<()> {
            let bytes = encode(record)?;
            self.$table.insert(record.$key.as_str(), bytes.as_slice())?;
            self.record_op(backend::key($prefix, &record.$key), Some(bytes));
            Ok(())
        }

        /// Removes the record; true if it existed.
        pub fn $delete(&mut self, key: &str) -> Result<bool> {
            let existed = self.$table.remove(key)?.is_some();
            if existed {
                self.record_op(backend::key($prefix, key), None);
            }
            Ok(existed)
        }
    };
}

impl Writer<'_> {
    crud!(
        certs,
        CERTS_KEY,
        CertRecord,
        cert,
        put_cert,
        delete_cert,
        name
    );
    crud!(
        domains,
        DOMAINS_KEY,
        DomainRecord,
        domain,
        put_domain,
        delete_domain,
        host
    );
    crud!(apps, APPS_KEY, AppRecord, app, put_app, delete_app, name);

    fn record_op(&mut self, key: String, value: Option<Vec<u8>>) {
        match self.ops.iter_mut().find(|op| op.key == key) {
            Some(op) => op.value = value,
            None => self.ops.push(Op { key, value }),
        }
    }

    /// Fails with [`StoreError::Conflict`] unless certificate `name` is still at `revision`
    /// (read with [`Reader::cert_at`]): the compare half of a read-modify-write.
    pub fn expect_cert(&self, name: &str, revision: Revision) -> Result<()> {
        let key = backend::key(CERTS_KEY, name);
        let now = self.revs.get(key.as_str())?.map_or(0, |v| v.value());
        let exists = self.certs.get(name)?.is_some();
        if now != revision || !exists {
            return Err(StoreError::Conflict {
                what: format!("certificate '{name}'"),
            });
        }
        Ok(())
    }

    pub fn domains(&self) -> Result<Vec<DomainRecord>> {
        all(&self.domains)
    }

    pub(crate) fn acme_raw(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.acme.get(key)?.map(|v| v.value().to_vec()))
    }

    /// ACM records are written like every other record (compare-and-set, and in a fleet
    /// through etcd), so a fleet shares its ACM state.
    pub(crate) fn acme_put(&mut self, key: &str, bytes: &[u8]) -> Result<()> {
        self.acme.insert(key, bytes)?;
        self.record_op(backend::key(ACME_KEY, key), Some(bytes.to_vec()));
        Ok(())
    }

    pub(crate) fn acme_delete(&mut self, key: &str) -> Result<bool> {
        let existed = self.acme.remove(key)?.is_some();
        if existed {
            self.record_op(backend::key(ACME_KEY, key), None);
        }
        Ok(existed)
    }

    /// Writes raw bytes under a certificate's key, bypassing encoding. Only for tests and tools
    /// that need to simulate a damaged record.
    #[doc(hidden)]
    pub fn put_raw_cert(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.certs.insert(name, bytes)?;
        self.record_op(backend::key(CERTS_KEY, name), Some(bytes.to_vec()));
        Ok(())
    }
}
