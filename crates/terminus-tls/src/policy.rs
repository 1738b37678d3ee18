//! The TLS policy: versions, curated cipher suites, key-exchange groups, ALPN, resumption.
//!
//! Cipher suites, in preference order (the client's order decides among them, so clients without
//! AES hardware can pick ChaCha20):
//! - TLS 1.3: AES-128-GCM, AES-256-GCM, CHACHA20-POLY1305
//! - TLS 1.2: ECDHE-ECDSA and ECDHE-RSA, each with AES-128-GCM, AES-256-GCM, CHACHA20-POLY1305
//!
//! No CBC, no static RSA key exchange, no TLS 1.0/1.1. Key exchange: X25519, P-256, P-384, and
//! (unless `post_quantum = false`) the hybrid X25519MLKEM768, used when the client lists it
//! first, as current Chrome and Firefox do.

use std::sync::Arc;

use rustls::crypto::aws_lc_rs::{self, cipher_suite, kx_group};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use terminus_config::{TlsConfig, TlsVersion};

use crate::caps::ClientCaps;
use crate::error::PolicyError;
use crate::tickets::{TicketKeys, Ticketer};

pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The crypto provider with the curated suites and groups.
pub fn provider(post_quantum: bool) -> CryptoProvider {
    let mut kx_groups = Vec::with_capacity(4);
    if post_quantum {
        kx_groups.push(kx_group::X25519MLKEM768);
    }
    kx_groups.extend([kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1]);
    CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups,
        ..aws_lc_rs::default_provider()
    }
}

/// Builds one `ServerConfig` per connection around the certificate chosen for it. Every config
/// shares one ticketer and one stateful session cache, so a session resumes on any listener;
/// rustls refuses to resume a session under a different SNI name. The ticketer starts with
/// fresh keys; whoever keeps ticket keys durable (or shares them across routers) installs them
/// with [`Ticketer::set_keys`].
#[derive(Debug, Clone)]
pub struct TlsPolicy {
    provider: Arc<CryptoProvider>,
    tickets: Arc<Ticketer>,
    /// Server suite order.
    base: Arc<ServerConfig>,
    /// The same, following the client's suite order.
    chacha: Arc<ServerConfig>,
}

impl TlsPolicy {
    pub fn new(config: &TlsConfig) -> Result<Self, PolicyError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let tickets = Ticketer::new(&TicketKeys::generate(now)?)?;
        Self::with_tickets(config, tickets)
    }

    /// A policy for a reloaded `[tls]` that keeps this one's ticket keys, so clients holding
    /// tickets still resume after the reload.
    pub fn reconfigured(&self, config: &TlsConfig) -> Result<Self, PolicyError> {
        Self::with_tickets(config, self.tickets.clone())
    }

    fn with_tickets(config: &TlsConfig, tickets: Arc<Ticketer>) -> Result<Self, PolicyError> {
        let provider = Arc::new(provider(config.post_quantum));
        let versions: &[&rustls::SupportedProtocolVersion] = match config.min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let mut base = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(NoCertificate));
        base.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
        // Our suite order wins (AES-128-GCM first), as HAProxy does by default. Clients that
        // list AES-256-GCM first would otherwise make every handshake run its key schedule on
        // SHA-384, which costs ~15% of a full handshake on CPUs where SHA-512 has no fast path,
        // for no security an edge router's clients can use. Clients that put ChaCha20 first
        // (no AES hardware) get the `chacha` config instead, which follows their order.
        base.ignore_client_order = true;
        base.ticketer = tickets.clone();
        base.session_storage = if config.session_cache_size == 0 {
            Arc::new(rustls::server::NoServerSessionStorage {})
        } else {
            ServerSessionMemoryCache::new(config.session_cache_size)
        };
        // One ticket per full handshake: a client opens one connection at a time per origin in
        // practice, and each ticket costs an encryption and a record.
        base.send_tls13_tickets = 1;
        // 0-RTT data is replayable; a proxy cannot know which requests are safe to replay.
        base.max_early_data_size = 0;
        let mut chacha = base.clone();
        chacha.ignore_client_order = false;
        Ok(Self {
            provider,
            tickets,
            base: Arc::new(base),
            chacha: Arc::new(chacha),
        })
    }

    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// The session-ticket keys' holder, shared by every connection's config.
    pub fn tickets(&self) -> &Arc<Ticketer> {
        &self.tickets
    }

    /// The config for one connection, serving `key` to a client with `caps`.
    pub fn server_config(&self, key: Arc<CertifiedKey>, caps: &ClientCaps) -> Arc<ServerConfig> {
        let base = if caps.prefers_chacha {
            &self.chacha
        } else {
            &self.base
        };
        let mut config = (**base).clone();
        config.cert_resolver = Arc::new(Chosen(key));
        Arc::new(config)
    }
}

impl TlsPolicy {
    /// The config for a TLS-ALPN-01 validation (RFC 8737): the challenge certificate, ALPN
    /// `acme-tls/1` only, and no session ticket (the CA never resumes).
    pub fn acme_tls_config(&self, key: Arc<CertifiedKey>) -> Arc<ServerConfig> {
        let mut config = (*self.base).clone();
        config.cert_resolver = Arc::new(Chosen(key));
        config.alpn_protocols = vec![crate::ACME_TLS_ALPN.to_vec()];
        config.send_tls13_tickets = 0;
        Arc::new(config)
    }
}

/// The certificate chosen before the handshake continued.
#[derive(Debug)]
struct Chosen(Arc<CertifiedKey>);

impl ResolvesServerCert for Chosen {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The base config never serves: every connection gets its own resolver.
#[derive(Debug)]
struct NoCertificate;

impl ResolvesServerCert for NoCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}
