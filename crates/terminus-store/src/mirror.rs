//! The redb file as a fleet router's mirror of etcd: what the watch delivers and what a
//! resync reads are written here, each key with its etcd revision, so that the router can
//! start from this file while etcd is down and compare-and-set against what it last saw.

use redb::{ReadableDatabase, ReadableTable};

use crate::backend::{Revision, ACME_KEY, APPS_KEY, CERTS_KEY, DOMAINS_KEY};
use crate::db::{Store, ACME, APPS, CERTS, DOMAINS, META, REVS};
use crate::engine::guard;
use crate::error::{Result, StoreError};
use crate::records::{decode, AppRecord, CertRecord, DomainRecord};

/// The etcd revision the mirror was last brought to (META, big-endian u64). Absent: this
/// file never held a fleet's snapshot.
const FLEET_REVISION: &str = "fleet_revision";

/// A key of the shared store (without the fleet's prefix) at a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteKv {
    /// `certs/NAME`, `domains/HOST` or `apps/NAME`.
    pub key: String,
    /// The encoded record; `None`: deleted.
    pub value: Option<Vec<u8>>,
    /// The revision of the change (etcd's `mod_revision`).
    pub revision: Revision,
}

/// How a batch of keys from etcd is written to the mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// Watch events up to this revision: applied when newer than what the mirror holds (this
    /// router's own writes come back through the watch), committed durably with the revision.
    Events(Revision),
    /// A window of a resync: any difference of revision is applied (a resync after a
    /// compaction or a restored cluster). Not durable and no revision recorded: the resync's
    /// last commit ([`Store::drop_remote_except`]) is durable and records the revision, so a
    /// crash or an etcd failure mid-resync leaves the mirror at its previous snapshot's
    /// revision, never claiming one it does not wholly hold. With `report` false nothing
    /// is decoded and nothing is returned: a start loads the mirror whole afterwards.
    Window { report: bool },
}

/// A record the mirror changed: what the router must now serve under that name (or stop
/// serving, for `None`).
#[derive(Debug)]
pub enum Changed {
    Cert(String, Option<Box<CertRecord>>),
    Domain(String, Option<DomainRecord>),
    App(String, Option<AppRecord>),
    /// An ACM record (`acme/...`) changed: the ACM scheduler looks again.
    Acme(String),
    /// A record that does not decode: it is kept in the mirror but not served.
    Undecodable {
        key: String,
        error: StoreError,
    },
}

/// Which table (0 certs, 1 domains, 2 apps, 3 acme) a key belongs to, and its name.
fn table_of(key: &str) -> Option<(usize, &str)> {
    [CERTS_KEY, DOMAINS_KEY, APPS_KEY, ACME_KEY]
        .into_iter()
        .enumerate()
        .find_map(|(i, prefix)| {
            key.strip_prefix(prefix)
                .filter(|n| !n.is_empty())
                .map(|n| (i, n))
        })
}

/// What a changed key now serves.
fn changed(key: &str, value: Option<&[u8]>) -> Option<Changed> {
    table_of(key)?;
    let undecodable = |error| Changed::Undecodable {
        key: key.to_owned(),
        error,
    };
    if key.starts_with(ACME_KEY) {
        return Some(Changed::Acme(key.to_owned()));
    }
    Some(if let Some(name) = key.strip_prefix(CERTS_KEY) {
        let name = name.to_owned();
        match value.map(decode::<CertRecord>).transpose() {
            Ok(r) => Changed::Cert(name, r.map(Box::new)),
            Err(e) => undecodable(e),
        }
    } else if let Some(name) = key.strip_prefix(DOMAINS_KEY) {
        let name = name.to_owned();
        match value.map(decode::<DomainRecord>).transpose() {
            Ok(r) => Changed::Domain(name, r),
            Err(e) => undecodable(e),
        }
    } else {
        let name = key.strip_prefix(APPS_KEY).unwrap_or(key).to_owned();
        match value.map(decode::<AppRecord>).transpose() {
            Ok(r) => Changed::App(name, r),
            Err(e) => undecodable(e),
        }
    })
}

impl Store {
    /// The etcd revision of the last snapshot or event written to this mirror; `None` if this
    /// file never held a fleet's snapshot.
    pub fn fleet_revision(&self) -> Result<Option<Revision>> {
        guard(self.file(), "reading", || {
            let tx = self.db().begin_read()?;
            let meta = match tx.open_table(META) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let value = meta.get(FLEET_REVISION)?;
            Ok(value
                .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
                .map(u64::from_be_bytes))
        })
    }

    /// The keys of `listing` (key and etcd revision) the mirror does not hold at that revision:
    /// what a resync must read.
    pub fn stale(&self, listing: &[(String, Revision)]) -> Result<Vec<String>> {
        guard(self.file(), "reading", || {
            let tx = self.db().begin_read()?;
            let revs = match tx.open_table(REVS) {
                Ok(t) => Some(t),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            for (key, revision) in listing {
                let held = match &revs {
                    Some(t) => t.get(key.as_str())?.map(|v| v.value()),
                    None => None,
                };
                if held != Some(*revision) {
                    out.push(key.clone());
                }
            }
            Ok(out)
        })
    }

    /// Writes changes from etcd (a watch's events, or a window of a resync) in one
    /// transaction, as `how` says. Returns what changed.
    pub fn apply_remote(&self, kvs: &[RemoteKv], how: Apply) -> Result<Vec<Changed>> {
        let (exact, report) = match how {
            Apply::Events(_) => (false, true),
            Apply::Window { report } => (true, report),
        };
        guard(self.file(), "writing", || {
            let mut tx = self.db().begin_write()?;
            if exact {
                // Cannot fail: no persistent savepoint is taken in this transaction.
                let _ = tx.set_durability(redb::Durability::None);
            }
            let mut out = Vec::new();
            {
                let mut revs = tx.open_table(REVS)?;
                let mut tables = [
                    tx.open_table(CERTS)?,
                    tx.open_table(DOMAINS)?,
                    tx.open_table(APPS)?,
                    tx.open_table(ACME)?,
                ];
                for kv in kvs {
                    let Some((index, name)) = table_of(&kv.key) else {
                        continue;
                    };
                    let held = revs.get(kv.key.as_str())?.map(|v| v.value());
                    let stale = match held {
                        Some(h) if exact => h != kv.revision || kv.value.is_none(),
                        Some(h) => h < kv.revision,
                        None => kv.value.is_some(),
                    };
                    if !stale {
                        continue;
                    }
                    let t = &mut tables[index];
                    match &kv.value {
                        Some(v) => {
                            t.insert(name, v.as_slice())?;
                            revs.insert(kv.key.as_str(), kv.revision)?;
                        }
                        None => {
                            t.remove(name)?;
                            revs.remove(kv.key.as_str())?;
                        }
                    }
                    if report {
                        out.extend(changed(&kv.key, kv.value.as_deref()));
                    }
                }
                if let Apply::Events(revision) = how {
                    let mut meta = tx.open_table(META)?;
                    meta.insert(FLEET_REVISION, revision.to_be_bytes().as_slice())?;
                }
            }
            tx.commit()?;
            Ok(out)
        })
    }

    /// After a resync read every key at `revision`: removes from the mirror every record
    /// `keep` does not hold (deleted in etcd while this router was not watching).
    pub fn drop_remote_except(
        &self,
        keep: &std::collections::HashSet<String>,
        revision: Revision,
    ) -> Result<Vec<Changed>> {
        guard(self.file(), "writing", || {
            let tx = self.db().begin_write()?;
            let mut out = Vec::new();
            {
                let mut revs = tx.open_table(REVS)?;
                for (prefix, table) in [
                    (CERTS_KEY, CERTS),
                    (DOMAINS_KEY, DOMAINS),
                    (APPS_KEY, APPS),
                    (ACME_KEY, ACME),
                ] {
                    let mut t = tx.open_table(table)?;
                    let mut gone = Vec::new();
                    for item in t.iter()? {
                        let (k, _) = item?;
                        let key = format!("{prefix}{}", k.value());
                        if !keep.contains(&key) {
                            gone.push(key);
                        }
                    }
                    for key in gone {
                        t.remove(&key[prefix.len()..])?;
                        revs.remove(key.as_str())?;
                        out.extend(changed(&key, None));
                    }
                }
                let mut meta = tx.open_table(META)?;
                meta.insert(FLEET_REVISION, revision.to_be_bytes().as_slice())?;
            }
            tx.commit()?;
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::encode;
    use std::collections::HashSet;

    fn app(name: &str, backend: &str) -> Vec<u8> {
        encode(&AppRecord {
            name: name.into(),
            backends: vec![backend.into()],
            created_at: 1,
        })
        .unwrap()
    }

    fn kv(key: &str, value: Option<Vec<u8>>, revision: Revision) -> RemoteKv {
        RemoteKv {
            key: key.into(),
            value,
            revision,
        }
    }

    fn backends(store: &Store) -> Vec<(String, String)> {
        let mut out = Vec::new();
        store
            .read()
            .unwrap()
            .each_app(|a| {
                let a = a.unwrap();
                out.push((a.name, a.backends[0].clone()));
            })
            .unwrap();
        out
    }

    /// Events apply in revision order per key: an event older than what the mirror holds
    /// (this router's own write coming back through the watch) changes nothing; a resync
    /// replaces any record whose revision differs and drops what etcd no longer has.
    #[test]
    fn the_mirror_follows_revisions_and_a_resync_replaces_names_whole() {
        let dir = std::env::temp_dir().join(format!("terminus-mirror-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&terminus_config::StoreConfig::in_dir(dir.join("data"))).unwrap();
        assert_eq!(store.fleet_revision().unwrap(), None, "no snapshot yet");

        let changed = store
            .apply_remote(
                &[
                    kv("apps/web", Some(app("web", "127.0.0.1:1")), 5),
                    kv("apps/api", Some(app("api", "127.0.0.1:2")), 6),
                ],
                Apply::Events(6),
            )
            .unwrap();
        assert_eq!(changed.len(), 2);
        assert_eq!(store.fleet_revision().unwrap(), Some(6));

        // An older or equal revision is not applied again.
        let changed = store
            .apply_remote(
                &[kv("apps/web", Some(app("web", "127.0.0.1:9")), 5)],
                Apply::Events(7),
            )
            .unwrap();
        assert!(changed.is_empty());
        // A newer one is, and a deletion removes the record.
        let changed = store
            .apply_remote(
                &[
                    kv("apps/web", Some(app("web", "127.0.0.1:3")), 8),
                    kv("apps/api", None, 9),
                ],
                Apply::Events(9),
            )
            .unwrap();
        assert!(
            matches!(&changed[0], Changed::App(n, Some(a)) if n == "web" && a.backends == ["127.0.0.1:3"])
        );
        assert!(matches!(&changed[1], Changed::App(n, None) if n == "api"));
        assert_eq!(backends(&store), [("web".into(), "127.0.0.1:3".into())]);

        // A resync at 20: "web" at another revision is replaced, "new" arrives, and a record
        // etcd no longer holds is dropped.
        store
            .apply_remote(
                &[kv("apps/old", Some(app("old", "127.0.0.1:4")), 10)],
                Apply::Events(10),
            )
            .unwrap();
        let page = [
            kv("apps/new", Some(app("new", "127.0.0.1:5")), 15),
            kv("apps/web", Some(app("web", "127.0.0.1:6")), 12),
        ];
        store
            .apply_remote(&page, Apply::Window { report: true })
            .unwrap();
        assert_eq!(
            store.fleet_revision().unwrap(),
            Some(10),
            "a window claims no revision: only the resync's last commit does"
        );
        let keep: HashSet<String> = page.iter().map(|k| k.key.clone()).collect();
        let dropped = store.drop_remote_except(&keep, 20).unwrap();
        assert!(matches!(&dropped[..], [Changed::App(n, None)] if n == "old"));
        assert_eq!(
            backends(&store),
            [
                ("new".into(), "127.0.0.1:5".into()),
                ("web".into(), "127.0.0.1:6".into())
            ]
        );
        assert_eq!(store.fleet_revision().unwrap(), Some(20));

        // A record that does not decode is kept out of service, named.
        let changed = store
            .apply_remote(
                &[kv("certs/bad", Some(vec![2, 0, 1]), 21)],
                Apply::Events(21),
            )
            .unwrap();
        assert!(matches!(&changed[..], [Changed::Undecodable { key, .. }] if key == "certs/bad"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// ACM records travel as `acme/` + the local table's key: the mirror stores them where one
    /// router's own store keeps them, says they changed (the scheduler looks again), and a
    /// resync drops those etcd no longer holds. Keys of other kinds (locks, challenge answers)
    /// are not records and are left out.
    #[test]
    fn acm_records_are_mirrored_under_their_local_keys() {
        let dir = std::env::temp_dir().join(format!("terminus-mirror-acme-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&terminus_config::StoreConfig::in_dir(dir.join("data"))).unwrap();
        let domain = crate::AcmeDomainRecord::waiting("www.example.com", "web", 1);
        let changed = store
            .apply_remote(
                &[
                    kv(
                        "acme/domain:www.example.com",
                        Some(encode(&domain).unwrap()),
                        3,
                    ),
                    kv("locks/acme/www.example.com", Some(b"held".to_vec()), 4),
                    kv(
                        "challenges/http/token",
                        Some(b"www.example.com ka".to_vec()),
                        5,
                    ),
                ],
                Apply::Events(5),
            )
            .unwrap();
        assert!(
            matches!(&changed[..], [Changed::Acme(k)] if k == "acme/domain:www.example.com"),
            "{changed:?}"
        );
        assert_eq!(store.acme_domain("www.example.com").unwrap(), Some(domain));

        // A local ACM write is a fleet op on the same key (its revision is recorded).
        store
            .write(|w| {
                w.put_acme_app(&crate::AcmeAppRecord {
                    app: "web".into(),
                    enabled_at: 1,
                })
            })
            .unwrap();
        assert!(store
            .stale(&[("acme/app:web".into(), 6)])
            .unwrap()
            .contains(&"acme/app:web".to_owned()));

        let dropped = store.drop_remote_except(&HashSet::new(), 9).unwrap();
        assert_eq!(dropped.len(), 2, "{dropped:?}");
        assert_eq!(store.acme_domain("www.example.com").unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
