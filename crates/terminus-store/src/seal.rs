//! Private keys at rest: AES-256-GCM under a master key that lives outside the data directory
//! (a 0600 file created on first start, or `TERMINUS_STORE_KEY`). Each sealed value carries its
//! own random nonce and is bound (as associated data) to the record it belongs to, so a sealed
//! key copied into another record does not open.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use crate::error::StoreError;

/// The environment variable that supplies the master key (64 hex characters).
pub const KEY_ENV: &str = "TERMINUS_STORE_KEY";

pub struct MasterKey {
    key: LessSafeKey,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// Why the master key could not be had. Never holds key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{KEY_ENV} must be 64 hex characters")]
    BadEnvironment,
    #[error("{path} must hold 64 hex characters")]
    BadFile { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the system random generator failed")]
    Random,
}

/// Where the master key came from, for log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    Environment,
    File { path: String, created: bool },
}

impl MasterKey {
    /// `None` unless `bytes` is 32 bytes long.
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).ok()?;
        Some(Self {
            key: LessSafeKey::new(unbound),
        })
    }

    /// The key from `TERMINUS_STORE_KEY`, else from `path`, creating the file (mode 0600) with a
    /// new random key if it does not exist.
    pub fn load(path: &Path) -> Result<(Self, KeyOrigin), KeyFileError> {
        if let Ok(hex) = std::env::var(KEY_ENV) {
            let key = decode_hex(hex.trim())
                .and_then(|bytes| Self::from_bytes(&bytes))
                .ok_or(KeyFileError::BadEnvironment)?;
            return Ok((key, KeyOrigin::Environment));
        }
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let key = decode_hex(text.trim())
                    .and_then(|bytes| Self::from_bytes(&bytes))
                    .ok_or_else(|| KeyFileError::BadFile { path: path.into() })?;
                let origin = KeyOrigin::File {
                    path: path.display().to_string(),
                    created: false,
                };
                Ok((key, origin))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut bytes)
                    .map_err(|_| KeyFileError::Random)?;
                let key = Self::from_bytes(&bytes).ok_or(KeyFileError::Random)?;
                write_key_file(path, &encode_hex(&bytes)).map_err(|source| {
                    KeyFileError::Create {
                        path: path.into(),
                        source,
                    }
                })?;
                bytes.fill(0);
                let origin = KeyOrigin::File {
                    path: path.display().to_string(),
                    created: true,
                };
                Ok((key, origin))
            }
            Err(source) => Err(KeyFileError::Read {
                path: path.into(),
                source,
            }),
        }
    }

    /// `nonce || ciphertext || tag`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| StoreError::Seal)?;
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .map_err(|_| StoreError::Seal)?;
        out.extend_from_slice(&body);
        body.fill(0);
        Ok(out)
    }

    /// The plaintext of a sealed value, or `None` if it was sealed under another key, for
    /// another record, or altered.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN + 16 {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let len = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut body)
            .ok()?
            .len();
        body.truncate(len);
        Some(body)
    }
}

fn write_key_file(path: &Path, hex: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(hex.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok(())
}

pub(crate) fn encode_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

pub(crate) fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_is_bound_to_its_record() {
        let key = MasterKey::from_bytes(&[7u8; 32]).unwrap();
        let sealed = key.seal(b"secret key der", b"cert:a:1").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(key.open(&sealed, b"cert:a:1").unwrap(), b"secret key der");
        assert!(key.open(&sealed, b"cert:b:1").is_none());
        let other = MasterKey::from_bytes(&[8u8; 32]).unwrap();
        assert!(other.open(&sealed, b"cert:a:1").is_none());
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert!(key.open(&tampered, b"cert:a:1").is_none());
    }

    #[test]
    fn key_file_is_created_0600_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("terminus-seal-{}", std::process::id()));
        let path = dir.join("data.key");
        let _ = std::fs::remove_dir_all(&dir);
        let (k1, origin) = MasterKey::load(&path).unwrap();
        assert!(matches!(origin, KeyOrigin::File { created: true, .. }));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (k2, origin) = MasterKey::load(&path).unwrap();
        assert!(matches!(origin, KeyOrigin::File { created: false, .. }));
        let sealed = k1.seal(b"x", b"").unwrap();
        assert_eq!(k2.open(&sealed, b"").unwrap(), b"x");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hex() {
        assert_eq!(encode_hex(&[0, 255, 16]), "00ff10");
        assert_eq!(decode_hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(decode_hex("0g"), None);
        assert_eq!(decode_hex("abc"), None);
    }
}
