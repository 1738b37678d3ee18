//! What an operator sees of a certificate (the seed's "Certificate details"), and what selection
//! and chain building need: names, validity, key type, subject/issuer identifiers.

use std::fmt;

use terminus_route::HostPattern;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::X509Name;

use crate::error::CertError;

/// The public key type of a certificate: what decides which clients can use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    EcdsaP521,
    Rsa { bits: u32 },
    Ed25519,
}

impl KeyKind {
    pub fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa { .. })
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EcdsaP256 => f.write_str("ECDSA P-256"),
            Self::EcdsaP384 => f.write_str("ECDSA P-384"),
            Self::EcdsaP521 => f.write_str("ECDSA P-521"),
            Self::Rsa { bits } => write!(f, "RSA {bits}"),
            Self::Ed25519 => f.write_str("Ed25519"),
        }
    }
}

/// Parsed fields of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// `C=US; ST=CA; L=SF; O=Heroku; CN=www.example.com`, as the seed prints it.
    pub subject: String,
    pub issuer: String,
    pub common_names: Vec<String>,
    /// The DNS names the certificate is valid for: its SAN dNSNames, or its CNs when it has no
    /// SAN extension (legacy certificates).
    pub names: Vec<HostPattern>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub serial: String,
    pub key: Option<KeyKind>,
    pub is_ca: bool,
    pub subject_raw: Vec<u8>,
    pub issuer_raw: Vec<u8>,
    pub subject_key_id: Option<Vec<u8>>,
    pub authority_key_id: Option<Vec<u8>>,
    pub spki: Vec<u8>,
}

impl CertInfo {
    pub fn parse(der: &[u8]) -> Result<Self, CertError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| CertError::BadCertificate {
            detail: e.to_string(),
        })?;
        let common_names: Vec<String> = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
            .collect();
        let mut san_present = false;
        let mut names = Vec::new();
        let mut subject_key_id = None;
        let mut authority_key_id = None;
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    san_present = true;
                    for gn in &san.general_names {
                        if let GeneralName::DNSName(dns) = gn {
                            if let Ok(p) = HostPattern::parse(dns) {
                                names.push(p);
                            }
                        }
                    }
                }
                ParsedExtension::SubjectKeyIdentifier(ki) => subject_key_id = Some(ki.0.to_vec()),
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    authority_key_id = aki.key_identifier.as_ref().map(|k| k.0.to_vec());
                }
                _ => {}
            }
        }
        if !san_present {
            names.extend(
                common_names
                    .iter()
                    .filter_map(|cn| HostPattern::parse(cn).ok()),
            );
        }
        names.sort();
        names.dedup();
        Ok(Self {
            subject: format_name(cert.subject()),
            issuer: format_name(cert.issuer()),
            common_names,
            names,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            serial: cert.raw_serial_as_string(),
            key: key_kind(&cert),
            is_ca: cert.is_ca(),
            subject_raw: cert.subject().as_raw().to_vec(),
            issuer_raw: cert.issuer().as_raw().to_vec(),
            subject_key_id,
            authority_key_id,
            spki: cert.public_key().raw.to_vec(),
        })
    }

    pub fn is_self_issued(&self) -> bool {
        self.subject_raw == self.issuer_raw
    }

    /// Could `issuer` have issued this certificate? Names must match; key identifiers must
    /// match where both are present.
    pub fn issued_by(&self, issuer: &CertInfo) -> bool {
        self.issuer_raw == issuer.subject_raw
            && match (&self.authority_key_id, &issuer.subject_key_id) {
                (Some(aki), Some(ski)) => aki == ski,
                _ => true,
            }
    }

    /// Does any name of this certificate cover `host` (normalized)?
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|p| p.matches(host))
    }
}

fn key_kind(cert: &X509Certificate<'_>) -> Option<KeyKind> {
    let spki = cert.public_key();
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())?;
        return match curve {
            c if c == OID_EC_P256 => Some(KeyKind::EcdsaP256),
            c if c == OID_NIST_EC_P384 => Some(KeyKind::EcdsaP384),
            c if c == OID_NIST_EC_P521 => Some(KeyKind::EcdsaP521),
            _ => None,
        };
    }
    if *alg == OID_PKCS1_RSAENCRYPTION || *alg == OID_PKCS1_RSASSAPSS {
        return match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => Some(KeyKind::Rsa {
                bits: u32::try_from(rsa.key_size()).unwrap_or(0),
            }),
            _ => None,
        };
    }
    if *alg == OID_SIG_ED25519 {
        return Some(KeyKind::Ed25519);
    }
    None
}

/// `C=US; ST=CA; L=SF; O=Heroku; CN=www.example.com`.
fn format_name(name: &X509Name<'_>) -> String {
    let mut parts = Vec::new();
    for rdn in name.iter() {
        for attr in rdn.iter() {
            let key = x509_parser::objects::oid2abbrev(
                attr.attr_type(),
                x509_parser::objects::oid_registry(),
            )
            .map(str::to_owned)
            .unwrap_or_else(|_| attr.attr_type().to_id_string());
            let value = attr
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|_| "?".into());
            parts.push(format!("{key}={value}"));
        }
    }
    parts.join("; ")
}

/// `2022-08-18 21:53:18 GMT`, the seed's "Expires At" form.
pub fn format_time(unix: i64) -> String {
    match OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} GMT",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => unix.to_string(),
    }
}

/// `2022-02-03 19:53 UTC`, the seed's table form.
pub fn format_time_short(unix: i64) -> String {
    match OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => unix.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_a_minted_certificate() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["www.example.com".into(), "*.example.com".into()])
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CountryName, "US");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Heroku");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "www.example.com");
        let cert = params.self_signed(&key).unwrap();
        let info = CertInfo::parse(cert.der()).unwrap();
        assert_eq!(info.subject, "C=US; O=Heroku; CN=www.example.com");
        assert_eq!(info.subject, info.issuer);
        assert!(info.is_self_issued());
        assert_eq!(info.common_names, ["www.example.com"]);
        let names: Vec<String> = info.names.iter().map(|n| n.to_string()).collect();
        assert_eq!(names, ["www.example.com", "*.example.com"]);
        assert_eq!(info.key, Some(KeyKind::EcdsaP256));
        assert!(info.covers("www.example.com"));
        assert!(info.covers("api.example.com"));
        assert!(!info.covers("example.com"));
    }

    #[test]
    fn rsa_size_is_read() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["r.example.com".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let info = CertInfo::parse(cert.der()).unwrap();
        assert_eq!(info.key, Some(KeyKind::Rsa { bits: 2048 }));
    }

    #[test]
    fn time_formats() {
        assert_eq!(format_time(1_660_859_598), "2022-08-18 21:53:18 GMT");
        assert_eq!(format_time_short(1_660_859_598), "2022-08-18 21:53 UTC");
    }

    #[test]
    fn garbage_is_a_clear_error() {
        assert!(matches!(
            CertInfo::parse(b"\x30\x03\x02\x01\x01"),
            Err(CertError::BadCertificate { .. })
        ));
    }
}
