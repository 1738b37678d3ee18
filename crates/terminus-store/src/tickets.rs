//! Session-ticket keys kept sealed in the store, so that clients resume their sessions after a
//! restart or a binary upgrade instead of all making full handshakes at once.
//!
//! The keys and their rotation state ([`TicketKeys`]) are one value in the `meta` table, sealed
//! with the master key as private keys are ([`crate::seal`]) and bound to their record name, so
//! nothing in the data directory alone reveals them. Stores written before this value existed
//! simply lack it: the first start creates it. A value that does not open or decode is replaced
//! by new keys (and logged by the caller), never a reason not to start: the cost of losing
//! ticket keys is one full handshake per client.

use redb::ReadableDatabase;
use terminus_tls::{TicketKeyError, TicketKeys, TICKET_ROTATION_SECS};

use crate::db::{Store, META};
use crate::engine::guard;
use crate::error::{Result, StoreError};

/// The `meta` key of the sealed ticket keys.
pub(crate) const TICKET_KEYS: &str = "ticket_keys";
/// The associated data they are sealed under: a sealed value copied from another record does
/// not open here.
const AAD: &[u8] = b"terminus:meta:ticket_keys";

/// Where the ticket keys a start uses came from.
#[derive(Debug)]
pub enum TicketKeysOrigin {
    /// The stored keys, whose rotation was not due yet.
    Stored,
    /// The stored keys, rotated because their period had ended, and written back.
    Rotated,
    /// None were stored (a new store, or one written by an earlier terminus): new keys.
    Created,
    /// The stored keys were older than two periods: every ticket under them has expired, so
    /// they were replaced by new keys.
    Expired,
    /// The stored value could not be used (why is kept): new keys replace it.
    Replaced(StoreError),
}

/// The keys a start serves with.
#[derive(Debug)]
pub struct LoadedTicketKeys {
    pub keys: TicketKeys,
    pub origin: TicketKeysOrigin,
    /// Writing new or rotated keys back failed: they serve from memory until the next
    /// rotation writes again, and a restart before then loses them.
    pub save_error: Option<StoreError>,
}

impl Store {
    /// The stored ticket keys; `None` if none were ever stored.
    pub fn ticket_keys(&self) -> Result<Option<TicketKeys>> {
        let sealed = guard(self.file(), "reading the ticket keys", || {
            let tx = self.db().begin_read()?;
            let meta = match tx.open_table(META) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let sealed = meta.get(TICKET_KEYS)?.map(|v| v.value().to_vec());
            Ok(sealed)
        })?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let mut plain = self
            .master_key()
            .open(&sealed, AAD)
            .ok_or(StoreError::TicketKeysSealed)?;
        let keys = TicketKeys::from_bytes(&plain).map_err(StoreError::TicketKeys);
        plain.fill(0);
        keys.map(Some)
    }

    /// Stores `keys` (sealed), replacing what was there, durably.
    pub fn put_ticket_keys(&self, keys: &TicketKeys) -> Result<()> {
        if self.is_read_only() {
            return Err(StoreError::ReadOnly);
        }
        let mut plain = keys.to_bytes();
        let sealed = self.master_key().seal(&plain, AAD);
        plain.fill(0);
        let sealed = sealed?;
        guard(self.file(), "writing the ticket keys", || {
            let tx = self.db().begin_write()?;
            tx.open_table(META)?
                .insert(TICKET_KEYS, sealed.as_slice())?;
            tx.commit()?;
            Ok(())
        })
    }
}

/// The ticket keys to start with at `now`: the stored ones if their rotation is not due;
/// rotated once if it is (the key that issued the tickets clients hold still opens them for
/// one more period); new ones if none are stored, if they are older than two periods (every
/// ticket under them has expired), or if the stored value cannot be used. New or rotated keys
/// are written back. Fails only if the system random generator does.
pub fn load_ticket_keys(store: &Store, now: i64) -> Result<LoadedTicketKeys, TicketKeyError> {
    let (keys, origin) = match store.ticket_keys() {
        Ok(Some(keys)) if !keys.rotation_due(now) => {
            return Ok(LoadedTicketKeys {
                keys,
                origin: TicketKeysOrigin::Stored,
                save_error: None,
            })
        }
        Ok(Some(keys))
            if now.saturating_sub(keys.current.created_at()) < 2 * TICKET_ROTATION_SECS =>
        {
            (keys.rotated(now)?, TicketKeysOrigin::Rotated)
        }
        Ok(Some(_)) => (TicketKeys::generate(now)?, TicketKeysOrigin::Expired),
        Ok(None) => (TicketKeys::generate(now)?, TicketKeysOrigin::Created),
        Err(e) => (TicketKeys::generate(now)?, TicketKeysOrigin::Replaced(e)),
    };
    let save_error = store.put_ticket_keys(&keys).err();
    Ok(LoadedTicketKeys {
        keys,
        origin,
        save_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use terminus_config::StoreConfig;

    fn store(dir: &std::path::Path) -> Store {
        Store::open(&StoreConfig::in_dir(dir.join("data"))).unwrap()
    }

    fn temp(tag: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("terminus-tickets-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn keys_survive_a_reopen_and_rotate_when_due() {
        let dir = temp("reopen");
        let t0 = 1_000_000;
        let first = {
            let s = store(&dir);
            assert!(s.ticket_keys().unwrap().is_none());
            let loaded = load_ticket_keys(&s, t0).unwrap();
            assert!(matches!(loaded.origin, TicketKeysOrigin::Created));
            assert!(loaded.save_error.is_none());
            loaded.keys
        };
        // A restart within the period keeps the keys.
        let s = store(&dir);
        let again = load_ticket_keys(&s, t0 + TICKET_ROTATION_SECS - 1).unwrap();
        assert!(matches!(again.origin, TicketKeysOrigin::Stored));
        assert_eq!(again.keys, first);
        // A restart after it rotates once: the old key stays as the previous one, and the
        // rotated state is what the next start reads.
        let rotated = load_ticket_keys(&s, t0 + TICKET_ROTATION_SECS).unwrap();
        assert!(matches!(rotated.origin, TicketKeysOrigin::Rotated));
        assert_eq!(rotated.keys.previous.as_ref(), Some(&first.current));
        assert_eq!(s.ticket_keys().unwrap().as_ref(), Some(&rotated.keys));
        // Two periods later nothing under them is valid: new keys.
        let later = t0 + 4 * TICKET_ROTATION_SECS;
        let fresh = load_ticket_keys(&s, later).unwrap();
        assert!(matches!(fresh.origin, TicketKeysOrigin::Expired));
        assert_eq!(fresh.keys.previous, None);
        assert_eq!(fresh.keys.current.created_at(), later);
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_or_foreign_record_is_replaced_not_fatal() {
        let dir = temp("damaged");
        let s = store(&dir);
        let write_raw = |bytes: &[u8]| {
            let tx = s.db().begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert(TICKET_KEYS, bytes)
                .unwrap();
            tx.commit().unwrap();
        };
        // Garbage, and a value sealed for another record: neither opens.
        let foreign = s
            .master_key()
            .seal(&[1u8; 50], b"terminus:cert:x:1")
            .unwrap();
        for bad in [&b"not sealed"[..], &foreign] {
            write_raw(bad);
            assert!(matches!(s.ticket_keys(), Err(StoreError::TicketKeysSealed)));
            let loaded = load_ticket_keys(&s, 5).unwrap();
            assert!(matches!(
                loaded.origin,
                TicketKeysOrigin::Replaced(StoreError::TicketKeysSealed)
            ));
            assert_eq!(s.ticket_keys().unwrap(), Some(loaded.keys));
        }
        // Sealed properly but not ticket keys.
        let malformed = s.master_key().seal(b"\x01\x00short", AAD).unwrap();
        write_raw(&malformed);
        assert!(matches!(s.ticket_keys(), Err(StoreError::TicketKeys(_))));
        assert!(matches!(
            load_ticket_keys(&s, 5).unwrap().origin,
            TicketKeysOrigin::Replaced(StoreError::TicketKeys(_))
        ));
        // The value in the file reveals nothing of the keys.
        let keys = s.ticket_keys().unwrap().unwrap();
        let plain = keys.to_bytes();
        drop(s);
        let file = std::fs::read(Store::file_in(&dir.join("data"))).unwrap();
        assert!(!file.windows(32).any(|w| w == &plain[18..50]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
