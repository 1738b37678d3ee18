//! Shared by the criterion benchmarks: setup errors end the run with a message (no unwrap), and
//! a certificate minted for a name and taken through terminus's own intake (`prepare`).

use anyhow::Context;
use rcgen::{CertificateParams, KeyPair, SignatureAlgorithm};
use terminus_tls::{prepare, PrepareOptions, Prepared};

/// The value, or exit with the error: a benchmark whose setup failed has nothing to measure.
pub(crate) fn or_exit<T>(result: anyhow::Result<T>) -> T {
    match result {
        Ok(v) => v,
        Err(e) => {
            eprintln!("benchmark setup failed: {e:#}");
            std::process::exit(1)
        }
    }
}

/// A self-signed certificate for `name` (ECDSA P-256 or RSA-2048), validated by
/// `terminus_tls::prepare` as an upload would be.
pub(crate) fn prepared(name: &str, alg: &'static SignatureAlgorithm) -> anyhow::Result<Prepared> {
    let key = if alg == &rcgen::PKCS_RSA_SHA256 {
        KeyPair::generate_rsa_for(alg, rcgen::RsaKeySize::_2048)
    } else {
        KeyPair::generate_for(alg)
    }
    .context("key")?;
    let cert = CertificateParams::new(vec![name.to_owned()])
        .and_then(|p| p.self_signed(&key))
        .context("certificate")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("clock")?
        .as_secs();
    let provider = terminus_tls::provider(false);
    prepare(
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
        &PrepareOptions::default(),
        &provider,
        i64::try_from(now).unwrap_or(i64::MAX),
    )
    .context("prepare")
}
