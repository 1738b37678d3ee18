//! PEM intake through `rustls::pki_types::pem::PemObject`: certificates and exactly one private
//! key, from a certificate file and a key file (either may hold both).

use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};

use crate::error::CertError;

/// Certificates in upload order, and the one private key.
#[derive(Debug)]
pub struct PemBundle {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// Reads every certificate and private key from both inputs.
pub fn parse_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<PemBundle, CertError> {
    let mut certs = Vec::new();
    let mut keys = Vec::new();
    for (what, data) in [("certificate", cert_pem), ("key", key_pem)] {
        sections(what, data, &mut certs, &mut keys)?;
    }
    if certs.is_empty() {
        return Err(CertError::NoCertificate);
    }
    let count = keys.len();
    let key = match (keys.pop(), count) {
        (None, _) => return Err(CertError::NoKey),
        (Some(key), 1) => key,
        (Some(_), count) => return Err(CertError::MultipleKeys { count }),
    };
    Ok(PemBundle { certs, key })
}

fn sections(
    what: &'static str,
    data: &[u8],
    certs: &mut Vec<CertificateDer<'static>>,
    keys: &mut Vec<PrivateKeyDer<'static>>,
) -> Result<(), CertError> {
    if data.is_empty() {
        return Ok(());
    }
    if contains(data, b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || contains(data, b"Proc-Type: 4,ENCRYPTED")
    {
        return Err(CertError::EncryptedKey);
    }
    if !contains(data, b"-----BEGIN ") {
        // DER starts with a SEQUENCE tag; anything else is simply not PEM.
        return Err(if data.first() == Some(&0x30) {
            CertError::NotPem { what }
        } else {
            CertError::MalformedPem {
                what,
                detail: "no -----BEGIN line found".into(),
            }
        });
    }
    for item in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(data) {
        let (kind, der) = item.map_err(|e| CertError::MalformedPem {
            what,
            detail: describe_pem_error(&e),
        })?;
        match kind {
            SectionKind::Certificate => certs.push(CertificateDer::from(der)),
            SectionKind::PrivateKey => keys.push(PrivatePkcs8KeyDer::from(der).into()),
            SectionKind::RsaPrivateKey => keys.push(PrivatePkcs1KeyDer::from(der).into()),
            SectionKind::EcPrivateKey => keys.push(PrivateSec1KeyDer::from(der).into()),
            // Public keys, CSRs, CRLs and the like carry nothing we serve.
            _ => {}
        }
    }
    Ok(())
}

const KNOWN_LABELS: [&str; 4] = [
    "CERTIFICATE",
    "PRIVATE KEY",
    "RSA PRIVATE KEY",
    "EC PRIVATE KEY",
];

/// The PEM error without echoing the input line: that line may be part of a private key.
fn describe_pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        // The label is whatever follows BEGIN on its line: a key pasted without its line
        // breaks puts the whole key there. Only labels we know are named.
        Error::MissingSectionEnd { end_marker } => {
            match KNOWN_LABELS.iter().find(|l| l.as_bytes() == end_marker) {
                Some(label) => format!("a -----BEGIN {label}----- block has no END line"),
                None => "a -----BEGIN line has no matching END line (are the line breaks missing?)"
                    .into(),
            }
        }
        Error::IllegalSectionStart { .. } => "a -----BEGIN line is malformed".into(),
        Error::Base64Decode(_) => "a block's base64 body is corrupt".into(),
        Error::SectionTooLarge => "a block is too large".into(),
        _ => "unreadable PEM".into(),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pki() -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.example.com".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn reads_cert_and_key_from_either_file() {
        let (cert, key) = pki();
        let b = parse_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(b.certs.len(), 1);
        let both = format!("{cert}{key}");
        let b = parse_pem(both.as_bytes(), b"").unwrap();
        assert_eq!(b.certs.len(), 1);
    }

    #[test]
    fn refusals_name_the_problem() {
        let (cert, key) = pki();
        assert_eq!(
            parse_pem(b"", key.as_bytes()).unwrap_err(),
            CertError::NoCertificate
        );
        assert_eq!(
            parse_pem(cert.as_bytes(), b"").unwrap_err(),
            CertError::NoKey
        );
        let two = format!("{key}{key}");
        assert_eq!(
            parse_pem(cert.as_bytes(), two.as_bytes()).unwrap_err(),
            CertError::MultipleKeys { count: 2 }
        );
        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert_eq!(
            parse_pem(cert.as_bytes(), enc.as_bytes()).unwrap_err(),
            CertError::EncryptedKey
        );
        let legacy = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: DES-EDE3-CBC,1\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        assert_eq!(
            parse_pem(cert.as_bytes(), legacy.as_bytes()).unwrap_err(),
            CertError::EncryptedKey
        );
        let truncated = &cert[..cert.len() - 30];
        assert!(matches!(
            parse_pem(truncated.as_bytes(), key.as_bytes()).unwrap_err(),
            CertError::MalformedPem {
                what: "certificate",
                ..
            }
        ));
        let corrupt = cert.replacen("MI", "M!", 1);
        let err = parse_pem(corrupt.as_bytes(), key.as_bytes()).unwrap_err();
        assert!(matches!(err, CertError::MalformedPem { .. }), "{err}");
        assert_eq!(
            parse_pem(&[0x30, 0x82, 0x01], key.as_bytes()).unwrap_err(),
            CertError::NotPem {
                what: "certificate"
            }
        );
        assert!(matches!(
            parse_pem(b"hello", key.as_bytes()).unwrap_err(),
            CertError::MalformedPem { .. }
        ));
    }

    #[test]
    fn errors_never_echo_key_material() {
        let (cert, key) = pki();
        let broken_key = key.replacen('A', "!", 3);
        let err = parse_pem(cert.as_bytes(), broken_key.as_bytes()).unwrap_err();
        let body: String = key.lines().nth(1).unwrap().chars().take(20).collect();
        assert!(!err.to_string().contains(&body), "{err}");
    }

    #[test]
    fn a_key_without_its_line_breaks_is_not_echoed() {
        // Pasted through a single-line field, the whole key ends up on the BEGIN line, and
        // the unmatched "label" is the key itself.
        let (cert, key) = pki();
        let one_line: String = key.lines().collect();
        let err = parse_pem(cert.as_bytes(), one_line.as_bytes()).unwrap_err();
        let body: String = key.lines().nth(1).unwrap().chars().take(20).collect();
        assert!(!err.to_string().contains(&body), "{err}");
        assert!(matches!(err, CertError::MalformedPem { what: "key", .. }));
        // A known label is still named.
        let truncated = format!("{}\n", key.lines().take(2).collect::<Vec<_>>().join("\n"));
        let err = parse_pem(cert.as_bytes(), truncated.as_bytes()).unwrap_err();
        assert!(
            err.to_string()
                .contains("-----BEGIN PRIVATE KEY----- block"),
            "{err}"
        );
    }
}
