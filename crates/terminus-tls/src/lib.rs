//! TLS for terminus: PEM and X.509 intake, chain fix-up and trust check, the hot-swappable
//! certificate index with SNI selection, and the TLS policy. No HTTP here.
//!
//! - [`prepare`] turns an upload (certificate file, key file) into a validated chain and key.
//! - [`CertIndex`] holds what is served and picks a certificate per ClientHello.
//! - [`TlsPolicy`] builds the per-connection rustls `ServerConfig` around the chosen certificate.

mod caps;
mod challenges;
mod error;
mod index;
mod info;
mod pem;
mod policy;
mod prepare;
mod resolver;
#[cfg(test)]
mod testpki;
mod tickets;

pub use caps::ClientCaps;
pub use challenges::{only_acme_tls, AcmeChallenges, ACME_TLS_ALPN, HTTP01_PREFIX};
pub use error::{CertError, IndexError, KeyError, PolicyError};
pub use index::{
    CertEntry, CertIndex, InMemoryKey, KeySource, Resolved, SelectedBy, Without, DEFAULT_KEY_CACHE,
};
pub use info::{format_time, format_time_short, CertInfo, KeyKind};
pub use pem::{parse_pem, PemBundle};
pub use policy::{provider, TlsPolicy, ALPN_H2, ALPN_HTTP11};
pub use prepare::{
    is_trusted, prepare, DropReason, Dropped, PrepareOptions, Prepared, Roots, MIN_RSA_BITS,
};
pub use resolver::SniResolver;
pub use tickets::{TicketKey, TicketKeyError, TicketKeys, Ticketer, TICKET_ROTATION_SECS};

pub use rustls;
