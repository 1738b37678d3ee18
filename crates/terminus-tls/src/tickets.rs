//! Session-ticket keys that can outlive the process and be shared by several routers.
//!
//! rustls' own ticketer keeps its keys in memory only, so every restart (or every router of a
//! fleet) would refuse the tickets it did not issue and clients would all fall back to full
//! handshakes at once. Here the key material is plain data ([`TicketKeys`]): whoever owns the
//! rotation (one router, holding the durable store or a fleet lease) creates and rotates it,
//! keeps it sealed in the store, and hands it to every [`Ticketer`], which only reads it
//! through an `ArcSwap`, so handshakes take no lock.
//!
//! Tickets are `key id (16) || nonce (12) || AES-256-GCM(state) || tag (16)`. A ticket
//! decrypts under the current key or the one before it, so after a rotation the tickets
//! already issued keep working for one more period and then stop: the lifetime is enforced by
//! erasing keys, as rustls asks of a ticketer, not by a date inside the ticket.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

/// How long a key issues tickets before the next one takes over (rustls' default, too).
pub const TICKET_ROTATION_SECS: i64 = 6 * 3600;

const ID_LEN: usize = 16;
const SECRET_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// The encoding version of [`TicketKeys::to_bytes`].
const FORMAT: u8 = 1;

/// One ticket key: an identifier sent in the clear at the front of each ticket, the AES-256
/// secret, and when it started issuing tickets (Unix seconds).
#[derive(Clone, PartialEq, Eq)]
pub struct TicketKey {
    id: [u8; ID_LEN],
    secret: [u8; SECRET_LEN],
    created_at: i64,
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKey")
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

impl TicketKey {
    fn generate(now: i64) -> Result<Self, TicketKeyError> {
        let rng = SystemRandom::new();
        let mut id = [0u8; ID_LEN];
        let mut secret = [0u8; SECRET_LEN];
        rng.fill(&mut id).map_err(|_| TicketKeyError::Random)?;
        rng.fill(&mut secret).map_err(|_| TicketKeyError::Random)?;
        Ok(Self {
            id,
            secret,
            created_at: now,
        })
    }

    pub fn created_at(&self) -> i64 {
        self.created_at
    }
}

/// The rotation state: the key issuing tickets now and the one before it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TicketKeys {
    pub current: TicketKey,
    pub previous: Option<TicketKey>,
}

/// Why ticket keys could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum TicketKeyError {
    #[error("the system random generator failed")]
    Random,
    #[error("stored ticket keys are malformed ({0})")]
    Malformed(&'static str),
}

impl TicketKeys {
    /// A fresh state with one new key.
    pub fn generate(now: i64) -> Result<Self, TicketKeyError> {
        Ok(Self {
            current: TicketKey::generate(now)?,
            previous: None,
        })
    }

    /// Whether the current key has issued tickets for a full period.
    pub fn rotation_due(&self, now: i64) -> bool {
        now.saturating_sub(self.current.created_at) >= TICKET_ROTATION_SECS
    }

    /// When the next rotation is due (Unix seconds).
    pub fn next_rotation(&self) -> i64 {
        self.current.created_at.saturating_add(TICKET_ROTATION_SECS)
    }

    /// The next state: a new current key; the current one becomes the previous, and the
    /// previous one is erased.
    pub fn rotated(&self, now: i64) -> Result<Self, TicketKeyError> {
        Ok(Self {
            current: TicketKey::generate(now)?,
            previous: Some(self.current.clone()),
        })
    }

    /// The secret encoding, to be sealed before it is stored anywhere.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + 2 * (ID_LEN + SECRET_LEN + 8));
        out.push(FORMAT);
        out.push(u8::from(self.previous.is_some()));
        for key in std::iter::once(&self.current).chain(&self.previous) {
            out.extend_from_slice(&key.id);
            out.extend_from_slice(&key.secret);
            out.extend_from_slice(&key.created_at.to_be_bytes());
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TicketKeyError> {
        const KEY_LEN: usize = ID_LEN + SECRET_LEN + 8;
        let (&format, rest) = bytes
            .split_first()
            .ok_or(TicketKeyError::Malformed("empty"))?;
        if format != FORMAT {
            return Err(TicketKeyError::Malformed("unknown format"));
        }
        let (&has_previous, rest) = rest
            .split_first()
            .ok_or(TicketKeyError::Malformed("truncated"))?;
        let count = 1 + usize::from(has_previous == 1);
        if has_previous > 1 || rest.len() != count * KEY_LEN {
            return Err(TicketKeyError::Malformed("wrong length"));
        }
        let key = |b: &[u8]| -> TicketKey {
            let mut id = [0u8; ID_LEN];
            let mut secret = [0u8; SECRET_LEN];
            let mut at = [0u8; 8];
            id.copy_from_slice(&b[..ID_LEN]);
            secret.copy_from_slice(&b[ID_LEN..ID_LEN + SECRET_LEN]);
            at.copy_from_slice(&b[ID_LEN + SECRET_LEN..KEY_LEN]);
            TicketKey {
                id,
                secret,
                created_at: i64::from_be_bytes(at),
            }
        };
        Ok(Self {
            current: key(&rest[..KEY_LEN]),
            previous: (count == 2).then(|| key(&rest[KEY_LEN..])),
        })
    }
}

/// The keys as the ticketer uses them, built once per change.
struct Keyring {
    current: ([u8; ID_LEN], LessSafeKey),
    previous: Option<([u8; ID_LEN], LessSafeKey)>,
}

impl Keyring {
    fn new(keys: &TicketKeys) -> Result<Self, TicketKeyError> {
        let build = |k: &TicketKey| -> Result<([u8; ID_LEN], LessSafeKey), TicketKeyError> {
            let key = UnboundKey::new(&AES_256_GCM, &k.secret)
                .map_err(|_| TicketKeyError::Malformed("key length"))?;
            Ok((k.id, LessSafeKey::new(key)))
        };
        Ok(Self {
            current: build(&keys.current)?,
            previous: keys.previous.as_ref().map(build).transpose()?,
        })
    }
}

/// A rustls ticketer whose keys are set from outside ([`Ticketer::set_keys`]).
pub struct Ticketer {
    keys: ArcSwap<Keyring>,
    rng: SystemRandom,
}

impl fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ticketer(<keys>)")
    }
}

impl Ticketer {
    pub fn new(keys: &TicketKeys) -> Result<Arc<Self>, TicketKeyError> {
        Ok(Arc::new(Self {
            keys: ArcSwap::from_pointee(Keyring::new(keys)?),
            rng: SystemRandom::new(),
        }))
    }

    /// Installs new keys (after a rotation, a restart, or a change from the fleet). Tickets
    /// under keys no longer present stop decrypting at once.
    pub fn set_keys(&self, keys: &TicketKeys) -> Result<(), TicketKeyError> {
        self.keys.store(Arc::new(Keyring::new(keys)?));
        Ok(())
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    /// A ticket decrypts for at most two rotation periods: under the current key, then as the
    /// previous one.
    fn lifetime(&self) -> u32 {
        u32::try_from(2 * TICKET_ROTATION_SECS).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys.load();
        let (id, key) = &keys.current;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(ID_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(id),
                &mut out[ID_LEN + NONCE_LEN..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < ID_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (id, rest) = cipher.split_at(ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let keys = self.keys.load();
        let key = [Some(&keys.current), keys.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|(kid, _)| kid.as_slice() == id)
            .map(|(_, key)| key)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain_len = key
            .open_in_place(nonce, Aad::from(id), &mut buf)
            .ok()?
            .len();
        buf.truncate(plain_len);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_decrypt_under_the_current_and_previous_key_only() {
        let keys = TicketKeys::generate(1_000).unwrap();
        let t = Ticketer::new(&keys).unwrap();
        let ticket = t.encrypt(b"session state").unwrap();
        assert_eq!(t.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));

        let once = keys.rotated(1_000 + TICKET_ROTATION_SECS).unwrap();
        t.set_keys(&once).unwrap();
        assert_eq!(t.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        let newer = t.encrypt(b"newer").unwrap();

        let twice = once.rotated(1_000 + 2 * TICKET_ROTATION_SECS).unwrap();
        t.set_keys(&twice).unwrap();
        assert_eq!(t.decrypt(&ticket), None, "erased with its key");
        assert_eq!(t.decrypt(&newer).as_deref(), Some(&b"newer"[..]));
    }

    #[test]
    fn tampered_truncated_and_foreign_tickets_are_refused() {
        let t = Ticketer::new(&TicketKeys::generate(0).unwrap()).unwrap();
        let other = Ticketer::new(&TicketKeys::generate(0).unwrap()).unwrap();
        let ticket = t.encrypt(b"state").unwrap();
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 1;
            assert_eq!(t.decrypt(&bad), None, "byte {i}");
        }
        assert_eq!(t.decrypt(&ticket[..ticket.len() - 1]), None);
        assert_eq!(t.decrypt(&[]), None);
        assert_eq!(other.decrypt(&ticket), None);
    }

    #[test]
    fn keys_round_trip_and_share_tickets() {
        let keys = TicketKeys::generate(5)
            .unwrap()
            .rotated(5 + TICKET_ROTATION_SECS)
            .unwrap();
        let back = TicketKeys::from_bytes(&keys.to_bytes()).unwrap();
        assert_eq!(back, keys);
        // Two routers holding the same keys accept each other's tickets.
        let a = Ticketer::new(&keys).unwrap();
        let b = Ticketer::new(&back).unwrap();
        let ticket = a.encrypt(b"resume me").unwrap();
        assert_eq!(b.decrypt(&ticket).as_deref(), Some(&b"resume me"[..]));
        assert!(TicketKeys::from_bytes(&[FORMAT, 0, 1, 2]).is_err());
        assert!(TicketKeys::from_bytes(&[]).is_err());
        assert!(!keys.rotation_due(5 + 2 * TICKET_ROTATION_SECS - 1));
        assert!(keys.rotation_due(5 + 2 * TICKET_ROTATION_SECS));
        assert!(!format!("{:?}", keys.current).contains("secret"));
    }
}
