//! ACM in a fleet: the challenge answers every router serves, whichever router orders.
//!
//! The router holding a domain's order lock puts each answer in etcd (see
//! [`terminus_store::fleet::orders`]); every router's watch hands it to [`FleetChallenges`],
//! which serves it from its own [`AcmeChallenges`]. Nothing secret travels: an HTTP-01 answer
//! is the key authorization the CA fetches in the clear anyway, and a TLS-ALPN-01 answer is
//! only the key authorization's digest, from which each router makes its own self-signed
//! challenge certificate (RFC 8737 checks the extension, not the key).

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use terminus_store::fleet::orders::ChallengeSink;
use terminus_tls::AcmeChallenges;

const HTTP: &str = "http/";
const TLS_ALPN: &str = "tls-alpn/";

/// The key (under `challenges/`) and value of an HTTP-01 answer: `HOST KEY_AUTHORIZATION`
/// (neither holds a space).
pub(crate) fn http_answer(host: &str, token: &str, key_authorization: &str) -> (String, Vec<u8>) {
    (
        format!("{HTTP}{token}"),
        format!("{host} {key_authorization}").into_bytes(),
    )
}

/// The key and value of a TLS-ALPN-01 answer: the key authorization's SHA-256.
pub(crate) fn tls_alpn_answer(host: &str, digest: &[u8]) -> (String, Vec<u8>) {
    (format!("{TLS_ALPN}{host}"), digest.to_vec())
}

/// Serves the fleet's challenge answers on this router.
#[derive(Debug)]
pub struct FleetChallenges {
    challenges: Arc<AcmeChallenges>,
    provider: Arc<CryptoProvider>,
}

impl FleetChallenges {
    pub fn new(challenges: Arc<AcmeChallenges>, provider: Arc<CryptoProvider>) -> Arc<Self> {
        Arc::new(Self {
            challenges,
            provider,
        })
    }
}

impl ChallengeSink for FleetChallenges {
    fn put(&self, name: &str, value: &[u8]) {
        if let Some(token) = name.strip_prefix(HTTP) {
            let text = String::from_utf8_lossy(value);
            if let Some((host, ka)) = text.split_once(' ') {
                self.challenges.set_http(host, token, ka);
            }
        } else if let Some(host) = name.strip_prefix(TLS_ALPN) {
            match crate::answer::challenge_cert(host, value, &self.provider) {
                Ok(key) => self.challenges.set_tls_alpn(host, key),
                Err(e) => {
                    tracing::error!(domain = host, error = %e, "cannot make the TLS-ALPN-01 challenge certificate another router's order needs")
                }
            }
        }
    }

    fn remove(&self, name: &str) {
        if let Some(token) = name.strip_prefix(HTTP) {
            self.challenges.clear_http(token);
        } else if let Some(host) = name.strip_prefix(TLS_ALPN) {
            self.challenges.clear_tls_alpn(host);
        }
    }
}
