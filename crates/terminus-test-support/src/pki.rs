//! A throwaway PKI: a root CA, an optional intermediate, and leaves for any names and key type.
//! Everything here is a test fixture minted at run time; no key is ever written to the repository.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SignatureAlgorithm,
};
use rustls::pki_types::CertificateDer;

/// Key types for leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
}

impl KeyType {
    fn alg(self) -> &'static SignatureAlgorithm {
        match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Self::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

/// A certificate authority that can sign intermediates and leaves.
pub struct Ca {
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub name: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("name", &self.name).finish()
    }
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
}

impl Ca {
    /// A self-signed root.
    pub fn root(cn: &str) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let params = ca_params(cn);
        let cert = params.self_signed(&key).expect("root");
        Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            name: cn.into(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, cn: &str) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let params = ca_params(cn);
        let cert = params.signed_by(&key, &self.issuer).expect("intermediate");
        Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            name: cn.into(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (the first is also the CN).
    pub fn leaf(&self, names: &[&str], key: KeyType) -> Leaf {
        self.leaf_with(names, key, |_| {})
    }

    /// A leaf with its parameters adjusted (validity, subject...).
    pub fn leaf_with(
        &self,
        names: &[&str],
        key: KeyType,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let key = KeyPair::generate_for(key.alg()).expect("key");
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        adjust(&mut params);
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
        }
    }
}

/// A leaf certificate and its private key.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
}

impl Leaf {
    /// Writes `<stem>.crt` (leaf plus `chain`) and `<stem>.key` into `dir`.
    pub fn write(&self, dir: &Path, stem: &str, chain: &[&Ca]) -> (PathBuf, PathBuf) {
        let crt = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        let mut pem = self.cert_pem.clone();
        for ca in chain {
            pem.push_str(&ca.cert_pem);
        }
        std::fs::write(&crt, pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (crt, key)
    }
}

/// A self-signed leaf (its own issuer), for tests that need no CA.
pub fn self_signed(names: &[&str], key: KeyType) -> Leaf {
    let kp = KeyPair::generate_for(key.alg()).expect("key");
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    let cert = params.self_signed(&kp).expect("self-signed");
    Leaf {
        cert_pem: cert.pem(),
        key_pem: kp.serialize_pem(),
        cert_der: cert.der().clone(),
    }
}

/// The DNS names (SAN) of a DER certificate, for asserting which certificate was served.
pub fn san_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for gn in &san.value.general_names {
            if let GeneralName::DNSName(d) = gn {
                out.push(d.to_string());
            }
        }
    }
    out
}
