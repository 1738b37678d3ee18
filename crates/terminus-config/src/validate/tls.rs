use super::Checker;
use crate::raw::RawTls;
use crate::{CertificateFiles, Result, TlsConfig, TlsVersion};

pub(super) fn validate(
    c: &Checker<'_>,
    raw: &RawTls,
    certificates: &[CertificateFiles],
    has_store: bool,
) -> Result<TlsConfig> {
    let defaults = TlsConfig::default();
    let min_version = match raw.min_version.as_deref() {
        None | Some("1.2") => TlsVersion::Tls12,
        Some("1.3") => TlsVersion::Tls13,
        Some(other) => {
            return Err(c.err(
                "tls.min_version",
                format!(
                "'{other}' is not supported: use \"1.2\" or \"1.3\" (older versions are insecure)"
            ),
            ))
        }
    };
    let default_certificate = match &raw.default_certificate {
        None => None,
        Some(name) => {
            let name = c.name("tls.default_certificate", name)?;
            // With a store, the default may be a certificate added through the API.
            if !has_store && !certificates.iter().any(|f| f.name == name) {
                return Err(c.err(
                    "tls.default_certificate",
                    format!(
                        "certificate '{name}' is not defined: add a [[certificate]] with that name"
                    ),
                ));
            }
            Some(name)
        }
    };
    let session_cache_size = raw
        .session_cache_size
        .unwrap_or(defaults.session_cache_size);
    if session_cache_size > 10_000_000 {
        return Err(c.err("tls.session_cache_size", "must be at most 10000000 entries"));
    }
    Ok(TlsConfig {
        min_version,
        handshake_timeout: c.duration(
            "tls.handshake_timeout",
            raw.handshake_timeout.as_ref(),
            defaults.handshake_timeout,
        )?,
        default_certificate,
        session_cache_size,
        post_quantum: raw.post_quantum.unwrap_or(defaults.post_quantum),
        trusted_roots: raw.trusted_roots.as_deref().map(|p| c.path(p)),
    })
}
