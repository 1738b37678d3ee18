//! Salvaging a damaged store (`terminus serve --store-recover`).
//!
//! Every record that can still be read and passes the checks a start makes is copied into a NEW
//! store file; the damaged file is kept aside under a timestamped name and never written. What
//! cannot be read or fails its checks is reported and counted, not copied. A healthy store is
//! left alone, and a store opened with the wrong key is never "recovered" (that would copy
//! keys no one can open).

use std::ops::Bound;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable};
use terminus_config::StoreConfig;

use crate::db::{key_check_opens, Store, Table, ACME, APPS, CERTS, DOMAINS, KEY_CHECK, META};
use crate::engine::{self, guard};
use crate::error::{Result, StoreError};
use crate::load::{app_backends, domain_from, verify_version};
use crate::records::{decode, encode, is_verifiable, AppRecord, CertRecord, DomainRecord};
use crate::seal::MasterKey;

/// Records written per transaction into the new file.
const BATCH: usize = 10_000;

/// What `recover` found.
#[derive(Debug)]
pub enum RecoverOutcome {
    /// No store file: nothing to recover.
    NoStore,
    /// The store opens and verifies: left as it is.
    Healthy,
    Recovered(Box<Recovery>),
}

/// What was salvaged from a damaged store.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Where the damaged file now is (kept for forensics or a later restore).
    pub damaged_file: PathBuf,
    /// Why the store did not open.
    pub damage: Option<StoreError>,
    pub certs: usize,
    pub apps: usize,
    pub domains: usize,
    /// Records found but not copied.
    pub lost: Vec<Lost>,
    /// Parts of the file that could not be read at all (the records in them are not counted).
    pub unreadable: Vec<StoreError>,
    /// Records copied that were written before records carried a checksum of their own: they
    /// decode and pass the other checks, but cannot be proven undamaged. Review them.
    pub unverified: Vec<(&'static str, String)>,
}

/// A record left behind, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub kind: &'static str,
    pub key: String,
    pub reason: String,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} '{}' not recovered: {}",
            self.kind, self.key, self.reason
        )
    }
}

/// Recovers the store of `config` if, and only if, it is damaged.
pub fn recover(config: &StoreConfig) -> Result<RecoverOutcome> {
    let file = Store::file_in(&config.dir);
    if !file.exists() {
        return Ok(RecoverOutcome::NoStore);
    }
    let (key, _) = MasterKey::load_existing(&config.key_file)?;
    let damage = match engine::open_read_only(&file, true) {
        Ok(db) => {
            check_key(&file, &db, &key, &config.dir)?;
            return Ok(RecoverOutcome::Healthy);
        }
        Err(e) if e.is_corruption() => e,
        Err(e) => return Err(e),
    };

    let mut recovery = Recovery {
        damage: Some(damage),
        ..Recovery::default()
    };
    let salvaging = with_suffix(&file, ".recovering");
    let _ = std::fs::remove_file(&salvaging);
    match engine::open_read_only(&file, false) {
        Ok(old) => {
            let salvaged = check_key(&file, &old, &key, &config.dir).and_then(|()| {
                let new = engine::open(&salvaging)?;
                salvage(&file, &old, &new, &key, &mut recovery)?;
                engine::close(&salvaging, new)
            });
            // Closing commits allocator state, which in a damaged file may itself be damaged
            // (it goes to memory only: the file is opened through the read-only view).
            if let Err(e) = engine::close(&file, old) {
                recovery.unreadable.push(e);
            }
            salvaged?;
        }
        Err(e) => {
            // Nothing readable: the new store starts empty (with this key).
            recovery.unreadable.push(e);
            engine::open(&salvaging)?;
        }
    }
    recovery.damaged_file = aside_name(&file);
    std::fs::rename(&file, &recovery.damaged_file).map_err(|e| io(&file, e))?;
    std::fs::rename(&salvaging, &file).map_err(|e| io(&salvaging, e))?;
    std::fs::File::open(&config.dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(&config.dir, e))?;
    Ok(RecoverOutcome::Recovered(Box::new(recovery)))
}

/// Refuses to go on when the file's key check does not open with `key`.
fn check_key(file: &Path, db: &Database, key: &MasterKey, dir: &Path) -> Result<()> {
    let sealed = guard(file, "checking the store key", || {
        let tx = db.begin_read()?;
        let meta = tx.open_table(META)?;
        let sealed = meta.get(KEY_CHECK)?.map(|v| v.value().to_vec());
        Ok(sealed)
    });
    match sealed {
        Ok(Some(sealed)) if !key_check_opens(key, &sealed) => {
            Err(StoreError::WrongMasterKey { dir: dir.into() })
        }
        // Unreadable: each certificate's sealed key is checked on its own instead.
        _ => Ok(()),
    }
}

fn salvage(
    file: &Path,
    old: &Database,
    new: &Database,
    key: &MasterKey,
    recovery: &mut Recovery,
) -> Result<()> {
    let tx = guard(file, "salvaging", || Ok(old.begin_read()?))?;
    let mut out = Batcher::new(file, new);
    let sealed = key.seal(crate::db::KEY_CHECK_PLAINTEXT, KEY_CHECK.as_bytes())?;
    out.put(META, KEY_CHECK.to_owned(), sealed)?;
    for (table, kind) in [(CERTS, "certificate"), (APPS, "app"), (DOMAINS, "domain")] {
        let (records, errors) = read_table(file, &tx, table);
        recovery.unreadable.extend(errors);
        for (k, bytes) in records {
            match keep(kind, &k, &bytes, key) {
                Ok(kept) => {
                    if !is_verifiable(&bytes) {
                        recovery.unverified.push((kind, k.clone()));
                    }
                    out.put(table, k, kept)?;
                    match kind {
                        "certificate" => recovery.certs += 1,
                        "app" => recovery.apps += 1,
                        _ => recovery.domains += 1,
                    }
                }
                Err(reason) => recovery.lost.push(Lost {
                    kind,
                    key: k,
                    reason,
                }),
            }
        }
    }
    // ACM state (stores written before it existed have no such table).
    let has_acme = guard(file, "salvaging", || match tx.open_table(ACME) {
        Ok(_) => Ok(true),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
        Err(e) => Err(e.into()),
    });
    if has_acme.unwrap_or(true) {
        let (records, errors) = read_table(file, &tx, ACME);
        recovery.unreadable.extend(errors);
        for (k, bytes) in records {
            match crate::acme::verify_raw(&k, &bytes) {
                Ok(()) => out.put(ACME, k, bytes)?,
                Err(reason) => recovery.lost.push(Lost {
                    kind: "ACM record",
                    key: k,
                    reason,
                }),
            }
        }
    }
    out.flush()
}

/// The record's bytes to copy (encoded afresh, with a checksum), or why it is left behind: it
/// must decode (which verifies its own checksum), sit under its own name, and pass what a start
/// checks (a certificate's checksum and sealed key; an app's backends; a domain's host).
fn keep(kind: &str, key: &str, bytes: &[u8], master: &MasterKey) -> Result<Vec<u8>, String> {
    let wrong_key = |name: &str| format!("stored under '{key}' but names itself '{name}'");
    match kind {
        "certificate" => {
            let mut rec: CertRecord = decode(bytes).map_err(|e| e.to_string())?;
            if rec.name != key {
                return Err(wrong_key(&rec.name));
            }
            verify_version(&rec.current)?;
            let aad = crate::records::CertVersion::aad(&rec.name, rec.current.version);
            if master.open(&rec.current.sealed_key, &aad).is_none() {
                return Err("its private key does not open with the store key".into());
            }
            // A damaged previous version is dropped; the current one is what is served.
            if rec
                .previous
                .as_ref()
                .is_some_and(|p| verify_version(p).is_err())
            {
                rec.previous = None;
            }
            encode(&rec).map_err(|e| e.to_string())
        }
        "app" => {
            let rec: AppRecord = decode(bytes).map_err(|e| e.to_string())?;
            if rec.name != key {
                return Err(wrong_key(&rec.name));
            }
            app_backends(&rec).map_err(|e| e.to_string())?;
            encode(&rec).map_err(|e| e.to_string())
        }
        _ => {
            let rec: DomainRecord = decode(bytes).map_err(|e| e.to_string())?;
            if rec.host != key {
                return Err(wrong_key(&rec.host));
            }
            domain_from(&rec).map_err(|e| e.to_string())?;
            encode(&rec).map_err(|e| e.to_string())
        }
    }
}

type Records = Vec<(String, Vec<u8>)>;

/// Every record of `table` that can be read: forwards from the first key until the engine
/// fails, then backwards from the last key down to where the forward walk stopped, so one
/// damaged page loses only the records in it.
fn read_table(file: &Path, tx: &redb::ReadTransaction, table: Table) -> (Records, Vec<StoreError>) {
    let mut front: Records = Vec::new();
    let mut back: Records = Vec::new();
    let mut errors = Vec::new();
    let forward = guard(file, "salvaging", || {
        let t = tx.open_table(table)?;
        for item in t.iter()? {
            let (k, v) = item?;
            front.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(())
    });
    if let Err(e) = forward {
        errors.push(e);
        let after = front.last().map(|(k, _)| k.clone());
        let backward = guard(file, "salvaging", || {
            let t = tx.open_table(table)?;
            let lower = match &after {
                Some(k) => Bound::Excluded(k.as_str()),
                None => Bound::Unbounded,
            };
            for item in t.range::<&str>((lower, Bound::Unbounded))?.rev() {
                let (k, v) = item?;
                back.push((k.value().to_owned(), v.value().to_vec()));
            }
            Ok(())
        });
        if let Err(e) = backward {
            errors.push(e);
        }
    }
    front.extend(back.into_iter().rev());
    (front, errors)
}

/// Writes records into the new file in batches of [`BATCH`] per transaction.
struct Batcher<'a> {
    file: &'a Path,
    db: &'a Database,
    pending: Vec<(Table, String, Vec<u8>)>,
}

impl<'a> Batcher<'a> {
    fn new(file: &'a Path, db: &'a Database) -> Self {
        Self {
            file,
            db,
            pending: Vec::new(),
        }
    }

    fn put(&mut self, table: Table, key: String, value: Vec<u8>) -> Result<()> {
        self.pending.push((table, key, value));
        if self.pending.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        guard(self.file, "writing the recovered store", || {
            let tx = self.db.begin_write()?;
            for t in [META, CERTS, APPS, DOMAINS, ACME] {
                tx.open_table(t)?;
            }
            for (table, key, value) in &pending {
                tx.open_table(*table)?
                    .insert(key.as_str(), value.as_slice())?;
            }
            tx.commit()?;
            Ok(())
        })
    }
}

fn with_suffix(file: &Path, suffix: &str) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// UTC, e.g. `20261130T101500Z`.
fn timestamp() -> String {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_else(|_| "unknown-time".to_owned())
}

fn io(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::File {
        path: path.to_path_buf(),
        source,
    }
}

/// `<file>.damaged-<UTC time>`, numbered if an earlier recovery took that name this second.
fn aside_name(file: &Path) -> PathBuf {
    let base = with_suffix(file, &format!(".damaged-{}", timestamp()));
    (1..)
        .map(|n| match n {
            1 => base.clone(),
            n => with_suffix(&base, &format!("-{n}")),
        })
        .find(|p| !p.exists())
        .unwrap_or(base)
}
