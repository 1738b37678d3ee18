//! Answers to pending ACME challenges, which the data plane serves itself: HTTP-01 key
//! authorizations by token, TLS-ALPN-01 certificates (RFC 8737) by name.
//!
//! The writer is the ACME scheduler (a few entries per order); the readers are every plain-HTTP
//! request under `/.well-known/acme-challenge/` and every ClientHello offering only
//! `acme-tls/1`. Reads are one sharded hash lookup, as the certificate index's: no lock is held
//! across anything else and no I/O happens. A map that is empty (no order in flight) costs an
//! atomic load.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use rustls::sign::CertifiedKey;
use terminus_route::normalize;

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// Where HTTP-01 answers live (RFC 8555 §8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

#[derive(Default)]
pub struct AcmeChallenges {
    /// token → (host, key authorization).
    http: DashMap<Box<str>, (Box<str>, Box<str>)>,
    /// host → the challenge certificate.
    tls_alpn: DashMap<Box<str>, Arc<CertifiedKey>>,
    /// Entries in both maps: lets the common case (nothing pending) skip the lookups.
    pending: AtomicUsize,
}

impl std::fmt::Debug for AcmeChallenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeChallenges")
            .field("http", &self.http.len())
            .field("tls_alpn", &self.tls_alpn.len())
            .finish()
    }
}

impl AcmeChallenges {
    /// Answers `token` with `key_authorization`, for requests to `host` only.
    pub fn set_http(&self, host: &str, token: &str, key_authorization: &str) {
        let old = self.http.insert(
            token.into(),
            (
                normalize(host).into_owned().into(),
                key_authorization.into(),
            ),
        );
        if old.is_none() {
            self.pending.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn clear_http(&self, token: &str) {
        if self.http.remove(token).is_some() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The key authorization for a request to `host` for `path`, when `path` is an HTTP-01
    /// challenge pending for that host.
    pub fn http_answer(&self, host: &str, path: &str) -> Option<Box<str>> {
        if self.pending.load(Ordering::Acquire) == 0 {
            return None;
        }
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        let entry = self.http.get(token)?;
        let (for_host, answer) = entry.value();
        (**for_host == *normalize(host)).then(|| answer.clone())
    }

    /// Serves `key` to TLS-ALPN-01 handshakes for `host`.
    pub fn set_tls_alpn(&self, host: &str, key: Arc<CertifiedKey>) {
        if self
            .tls_alpn
            .insert(normalize(host).into_owned().into(), key)
            .is_none()
        {
            self.pending.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn clear_tls_alpn(&self, host: &str) {
        if self.tls_alpn.remove(&*normalize(host)).is_some() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The challenge certificate for `host`, if a TLS-ALPN-01 challenge is pending for it.
    pub fn tls_alpn(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        if self.pending.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.tls_alpn.get(&*normalize(host)).map(|e| e.clone())
    }

    /// Challenges pending now (both kinds).
    pub fn len(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The client offers exactly `acme-tls/1` and nothing else: RFC 8737 §3 says the server must
/// then answer with the challenge certificate, and no other client may get it.
pub fn only_acme_tls<'a>(mut alpn: impl Iterator<Item = &'a [u8]>) -> bool {
    alpn.next() == Some(ACME_TLS_ALPN) && alpn.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_answers_only_for_the_pending_host_and_token() {
        let c = AcmeChallenges::default();
        assert_eq!(
            c.http_answer("a.test", "/.well-known/acme-challenge/t1"),
            None
        );
        c.set_http("A.test", "t1", "t1.thumb");
        assert_eq!(
            c.http_answer("a.test.", "/.well-known/acme-challenge/t1")
                .as_deref(),
            Some("t1.thumb")
        );
        assert_eq!(
            c.http_answer("b.test", "/.well-known/acme-challenge/t1"),
            None
        );
        assert_eq!(
            c.http_answer("a.test", "/.well-known/acme-challenge/t2"),
            None
        );
        assert_eq!(c.http_answer("a.test", "/t1"), None);
        c.clear_http("t1");
        assert!(c.is_empty());
        assert_eq!(
            c.http_answer("a.test", "/.well-known/acme-challenge/t1"),
            None
        );
    }

    #[test]
    fn only_a_lone_acme_tls_offer_counts() {
        assert!(only_acme_tls([ACME_TLS_ALPN].into_iter()));
        assert!(!only_acme_tls(
            [b"h2".as_slice(), ACME_TLS_ALPN].into_iter()
        ));
        assert!(!only_acme_tls(
            [ACME_TLS_ALPN, b"h2".as_slice()].into_iter()
        ));
        assert!(!only_acme_tls(std::iter::empty()));
    }
}
