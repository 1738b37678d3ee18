//! A full TLS handshake in memory, no sockets: the client's flight goes to a rustls `Acceptor`,
//! the certificate is resolved from a `CertIndex` by the ClientHello's SNI and capabilities,
//! the per-connection `ServerConfig` comes from `TlsPolicy::server_config`, and the handshake
//! runs to completion, the session ticket included, as terminus does per connection. Both
//! sides' CPU is in the figure.
//!
//! The client is the load client's config (X25519 only, no certificate verification), except
//! `full_ecdsa_mlkem`, which offers X25519MLKEM768 as current browsers do.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use criterion::{criterion_group, criterion_main, Criterion};
use rustls::crypto::aws_lc_rs::kx_group;
use rustls::pki_types::ServerName;
use rustls::server::Acceptor;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ServerConnection};
use terminus_benches::tls::{client_config, client_config_with, AcceptAnyCertificate};
use terminus_config::TlsConfig;
use terminus_tls::{CertEntry, CertIndex, ClientCaps, TlsPolicy};

use common::{or_exit, prepared};

struct Server {
    store: CertIndex,
    policy: TlsPolicy,
}

fn server(alg: &'static rcgen::SignatureAlgorithm) -> anyhow::Result<Server> {
    let policy = TlsPolicy::new(&TlsConfig::default()).context("policy")?;
    let store = CertIndex::new(policy.provider().clone(), 16);
    let entry = CertEntry::from_prepared("localhost", prepared("localhost", alg)?);
    store.insert(entry).context("insert")?;
    Ok(Server { store, policy })
}

/// Moves everything `from` has to send into `to`, processing it.
fn server_to_client(
    server: &mut ServerConnection,
    client: &mut ClientConnection,
    buf: &mut Vec<u8>,
) -> anyhow::Result<()> {
    buf.clear();
    while server.wants_write() {
        server.write_tls(buf)?;
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        client.read_tls(&mut rd)?;
        client.process_new_packets()?;
    }
    Ok(())
}

fn client_to_server(
    client: &mut ClientConnection,
    server: &mut ServerConnection,
    buf: &mut Vec<u8>,
) -> anyhow::Result<()> {
    buf.clear();
    while client.wants_write() {
        client.write_tls(buf)?;
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        server.read_tls(&mut rd)?;
        server.process_new_packets()?;
    }
    Ok(())
}

/// One connection's handshake, as terminus runs it.
fn handshake(client_config: &Arc<ClientConfig>, s: &Server) -> anyhow::Result<HandshakeKind> {
    let name = ServerName::try_from("localhost").context("name")?;
    let mut client = ClientConnection::new(client_config.clone(), name)?;
    let mut buf = Vec::with_capacity(8192);
    while client.wants_write() {
        client.write_tls(&mut buf)?;
    }
    let mut acceptor = Acceptor::default();
    let mut rd = &buf[..];
    let accepted = loop {
        acceptor.read_tls(&mut rd)?;
        if let Some(accepted) = acceptor.accept().map_err(|(e, _)| anyhow!(e))? {
            break accepted;
        }
        anyhow::ensure!(!rd.is_empty(), "incomplete ClientHello");
    };
    let hello = accepted.client_hello();
    let caps = ClientCaps::from_hello(&hello);
    let resolved = s
        .store
        .resolve(hello.server_name(), &caps)
        .context("no certificate")?;
    let config = s.policy.server_config(resolved.key, &caps);
    let mut server = accepted
        .into_connection(config)
        .map_err(|(e, _)| anyhow!(e))?;
    while server.is_handshaking() || client.is_handshaking() {
        server_to_client(&mut server, &mut client, &mut buf)?;
        client_to_server(&mut client, &mut server, &mut buf)?;
    }
    // The session ticket(s) the server sends after the handshake.
    server_to_client(&mut server, &mut client, &mut buf)?;
    client.handshake_kind().context("no handshake kind")
}

fn bench_handshake(c: &mut Criterion) {
    let ecdsa = or_exit(server(&rcgen::PKCS_ECDSA_P256_SHA256));
    let rsa = or_exit(server(&rcgen::PKCS_RSA_SHA256));
    let verifier = AcceptAnyCertificate::new();
    let full = or_exit(client_config(false, verifier.clone()));
    let resume = or_exit(client_config(true, verifier.clone()));
    let mlkem_provider = rustls::crypto::CryptoProvider {
        kx_groups: vec![kx_group::X25519MLKEM768],
        ..terminus_benches::tls::provider()
    };
    let mlkem = or_exit(client_config_with(mlkem_provider, false, verifier.clone()));

    // Prime the session cache and check that resumption happens at all.
    or_exit(handshake(&resume, &ecdsa));
    let kind = or_exit(handshake(&resume, &ecdsa));
    if kind != HandshakeKind::Resumed {
        eprintln!("handshake: warning: the second handshake was {kind:?}, not resumed");
    }

    let mut group = c.benchmark_group("handshake");
    for (label, client, server) in [
        ("full_ecdsa", &full, &ecdsa),
        ("full_rsa", &full, &rsa),
        ("resumed_ecdsa", &resume, &ecdsa),
        ("full_ecdsa_mlkem", &mlkem, &ecdsa),
    ] {
        group.bench_function(label, |b| {
            b.iter(|| black_box(or_exit(handshake(client, server))))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = bench_handshake
}
criterion_main!(benches);
