//! The store as a rustls `ResolvesServerCert`, for a plain `ServerConfig` (in-memory tests,
//! benchmarks, embedders). The router itself selects before the handshake (see
//! terminus-proxy) so each connection knows the certificate it served; both paths share
//! [`CertIndex::resolve`].

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::caps::ClientCaps;
use crate::index::CertIndex;

#[derive(Debug, Clone)]
pub struct SniResolver(pub Arc<CertIndex>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // rustls has already narrowed the schemes to the suites both sides share.
        let caps = ClientCaps::from_parts(hello.signature_schemes(), hello.cipher_suites());
        self.0.resolve(hello.server_name(), &caps).map(|r| r.key)
    }
}
