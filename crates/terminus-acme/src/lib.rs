//! Automated certificate management (ACM): certificates ordered from an ACME CA (RFC 8555)
//! through `instant-acme`, validated by challenges the router answers itself, stored and
//! served like uploads, renewed before they expire.
//!
//! - [`Acme`] holds the operator's actions (enable, disable, refresh, a domain added or
//!   removed) and runs the scheduler that orders certificates for due domains.
//! - Challenges: HTTP-01 and TLS-ALPN-01 answers go to [`terminus_tls::AcmeChallenges`], which
//!   the data plane reads without locks; DNS-01 runs the operator's hook.
//! - A fleet ([`terminus_store::fleet`]): one router orders each domain, under the domain's
//!   etcd lock, and every router serves the challenge answers ([`FleetChallenges`]).
//! - [`timing`]: when to renew and when to retry, as pure functions.

mod answer;
mod error;
mod fleet;
mod http;
mod manager;
mod order;
pub mod timing;

pub use error::{AcmeError, Result};

/// Checks what `[acme]` names on disk (the directory's extra roots) as a start would use it,
/// so a bad file stops the start instead of failing every order later.
pub fn check_config(
    config: &terminus_config::AcmeConfig,
    provider: std::sync::Arc<rustls::crypto::CryptoProvider>,
) -> Result<()> {
    http::AcmeHttp::new(provider, config.directory_roots.as_deref()).map(drop)
}
pub use fleet::FleetChallenges;
pub use manager::{unix_now, Acme, Parts};
