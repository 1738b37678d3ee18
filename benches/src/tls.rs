//! The load client's rustls configuration, and a blocking readiness probe.
//!
//! The client is a load tool: it accepts any certificate and skips the handshake signature check,
//! so its CPU goes into driving load (the server's work is the same either way). It offers only
//! X25519 for key exchange: HAProxy and nginx on OpenSSL 3.0 cannot do X25519MLKEM768, so every
//! proxy does the same key exchange.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, NamedGroup, SignatureScheme};

use crate::http1;

/// Accepts every certificate and signature. rustls resumes a session only under the verifier
/// that made it, so connections that should resume must share one `Arc` of this.
#[derive(Debug)]
pub struct AcceptAnyCertificate {
    schemes: Vec<SignatureScheme>,
}

impl AcceptAnyCertificate {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            schemes: provider()
                .signature_verification_algorithms
                .supported_schemes(),
        })
    }
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// aws-lc-rs with X25519 as the only key exchange group.
pub fn provider() -> CryptoProvider {
    CryptoProvider {
        kx_groups: vec![aws_lc_rs::kx_group::X25519],
        ..aws_lc_rs::default_provider()
    }
}

/// A client config speaking HTTP/1.1 (ALPN), TLS 1.2 and 1.3. With `resume`, sessions are kept
/// in a [`SessionCache`] and offered again; without it the client neither stores nor offers
/// tickets or session ids, so every handshake is a full one.
pub fn client_config(
    resume: bool,
    verifier: Arc<AcceptAnyCertificate>,
) -> anyhow::Result<Arc<ClientConfig>> {
    client_config_with(provider(), resume, verifier)
}

/// [`client_config`] with another crypto provider (other key exchange groups).
pub fn client_config_with(
    provider: CryptoProvider,
    resume: bool,
    verifier: Arc<AcceptAnyCertificate>,
) -> anyhow::Result<Arc<ClientConfig>> {
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = if resume {
        Resumption::store(Arc::new(SessionCache::default()))
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(config))
}

/// `config` offering HTTP/2 only (ALPN `h2`), for clients that speak HTTP/2.
pub fn h2_only(config: &ClientConfig) -> Arc<ClientConfig> {
    let mut config = config.clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// One HTTPS/1.1 `GET /` with `Connection: close`; returns the response status.
pub fn probe(addr: SocketAddr, server_name: &str, timeout: Duration) -> anyhow::Result<u16> {
    let config = client_config(false, AcceptAnyCertificate::new())?;
    let name = ServerName::try_from(server_name.to_owned()).context("server name")?;
    let conn = rustls::ClientConnection::new(config, name).context("TLS client")?;
    let tcp = TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("{addr}"))?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(&http1::get(server_name, true))
        .with_context(|| format!("TLS request to {addr}"))?;
    http1::read_response_blocking(&mut tls).with_context(|| format!("response from {addr}"))
}

/// Most TLS 1.3 tickets kept per server name.
const MAX_TICKETS: usize = 4096;

/// A client session store shared by all of the client's connections. rustls' own
/// `ClientSessionMemoryCache` keeps 8 TLS 1.3 tickets per server: with 16 connections in flight
/// (each takes a ticket when it starts and gets a new one after its handshake) it runs dry and
/// a fifth of the "resumed" handshakes would be full ones, more so against servers that send
/// one ticket per handshake (terminus) than two (OpenSSL's default).
#[derive(Debug, Default)]
pub struct SessionCache {
    servers: Mutex<HashMap<ServerName<'static>, Sessions>>,
}

#[derive(Debug, Default)]
struct Sessions {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
}

impl SessionCache {
    fn with<T>(&self, name: &ServerName<'_>, f: impl FnOnce(&mut Sessions) -> T) -> T {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        let key = name.to_owned();
        f(servers.entry(key).or_default())
    }
}

impl ClientSessionStore for SessionCache {
    fn set_kx_hint(&self, name: ServerName<'static>, group: NamedGroup) {
        self.with(&name, |s| s.kx_hint = Some(group));
    }

    fn kx_hint(&self, name: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(name, |s| s.kx_hint)
    }

    fn set_tls12_session(&self, name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.with(&name, |s| s.tls12 = Some(value));
    }

    fn tls12_session(&self, name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.with(name, |s| s.tls12.clone())
    }

    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.with(name, |s| s.tls12 = None);
    }

    fn insert_tls13_ticket(&self, name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.with(&name, |s| {
            if s.tls13.len() >= MAX_TICKETS {
                s.tls13.pop_front();
            }
            s.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        // The newest ticket: the least likely to have expired.
        self.with(name, |s| s.tls13.pop_back())
    }
}
