//! The intake pipeline shared by config files and the admin API: PEM → validated certificate
//! chain and key, with the chain put in serving order and what was dropped reported.

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor, UnixTime};
use terminus_route::HostPattern;
use webpki::{EndEntityCert, KeyUsage};

use crate::error::CertError;
use crate::info::{format_time, CertInfo, KeyKind};
use crate::pem::parse_pem;

/// Smallest RSA modulus we serve.
pub const MIN_RSA_BITS: u32 = 2048;

#[derive(Debug, Clone, Default)]
pub struct PrepareOptions {
    /// Keep the chain exactly as uploaded.
    pub bypass: bool,
    /// Domains the certificate is meant for; at least one must be covered when non-empty.
    pub domains: Vec<HostPattern>,
    /// What "trusted" is checked against.
    pub roots: Roots,
}

/// The roots a served chain is checked against for "Trusted": the Mozilla set (webpki-roots)
/// and, for operators with a private CA, the roots named by `[tls] trusted_roots`.
#[derive(Debug, Clone, Default)]
pub struct Roots {
    extra: Arc<[TrustAnchor<'static>]>,
}

impl Roots {
    /// The Mozilla set plus every certificate in `pem` (a private CA's roots).
    pub fn with_extra_pem(pem: &[u8]) -> Result<Self, CertError> {
        let mut extra = Vec::new();
        for item in CertificateDer::pem_slice_iter(pem) {
            let der = item.map_err(|_| CertError::MalformedPem {
                what: "trusted roots file",
                detail: "a CERTIFICATE block cannot be read".into(),
            })?;
            let anchor =
                webpki::anchor_from_trusted_cert(&der).map_err(|e| CertError::BadCertificate {
                    detail: format!("a trusted root cannot be used as a trust anchor: {e}"),
                })?;
            extra.push(anchor.to_owned());
        }
        if extra.is_empty() {
            return Err(CertError::NoCertificate);
        }
        Ok(Self {
            extra: extra.into(),
        })
    }

    /// How many roots were added to the Mozilla set.
    pub fn extra_len(&self) -> usize {
        self.extra.len()
    }

    /// Does the chain (leaf first) verify against these roots at `now`?
    pub fn is_trusted(
        &self,
        chain: &[CertificateDer<'_>],
        provider: &CryptoProvider,
        now: i64,
    ) -> bool {
        verifies(chain, webpki_roots::TLS_SERVER_ROOTS, provider, now)
            || (!self.extra.is_empty() && verifies(chain, &self.extra, provider, now))
    }
}

/// A certificate dropped from an upload, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub subject: String,
    pub reason: DropReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A self-signed CA: clients have it already; sending it wastes bytes on every handshake.
    Root,
    Duplicate,
    /// Not on the path from the leaf to a root.
    Unrelated,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Root => "root certificate (clients already hold it)",
            Self::Duplicate => "duplicate",
            Self::Unrelated => "not part of the chain",
        }
    }
}

/// A validated upload, ready to serve.
#[derive(Debug)]
pub struct Prepared {
    /// Leaf first, then intermediates in path order.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub leaf: CertInfo,
    pub key_kind: KeyKind,
    pub dropped: Vec<Dropped>,
    pub warnings: Vec<String>,
    /// The served chain verifies against the Mozilla root set now.
    pub trusted: bool,
}

/// Validates a certificate and key upload. `now` is Unix seconds.
pub fn prepare(
    cert_pem: &[u8],
    key_pem: &[u8],
    options: &PrepareOptions,
    provider: &CryptoProvider,
    now: i64,
) -> Result<Prepared, CertError> {
    let bundle = parse_pem(cert_pem, key_pem)?;
    let infos = bundle
        .certs
        .iter()
        .map(|c| CertInfo::parse(c.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;

    if let Some(bits) = rsa_key_bits(&bundle.key).filter(|b| *b < MIN_RSA_BITS) {
        return Err(small_rsa(bits));
    }
    let signing_key = provider
        .key_provider
        .load_private_key(bundle.key.clone_key())
        .map_err(|_| CertError::UnsupportedKey {
            detail: format!("it cannot be read (damaged, or of a type terminus does not serve); supported keys are ECDSA P-256/P-384, Ed25519 and RSA of at least {MIN_RSA_BITS} bits"),
        })?;
    let key_spki = signing_key
        .public_key()
        .ok_or_else(|| CertError::UnsupportedKey {
            detail: "its public half cannot be derived".into(),
        })?;
    let leaf_idx = infos
        .iter()
        .position(|i| i.spki == key_spki.as_ref())
        .ok_or(CertError::KeyMismatch)?;
    let leaf = &infos[leaf_idx];
    let key_kind = check_key_kind(leaf)?;

    let mut warnings = Vec::new();
    if leaf.not_after < now {
        return Err(CertError::Expired {
            not_after: format_time(leaf.not_after),
        });
    }
    if leaf.not_before > now {
        warnings.push(format!(
            "the certificate is not valid until {}: clients will refuse it before then",
            format_time(leaf.not_before)
        ));
    }
    check_domains(leaf, &options.domains, &mut warnings)?;

    let (order, dropped) = if options.bypass {
        if leaf_idx != 0 {
            return Err(CertError::BypassLeafNotFirst);
        }
        ((0..infos.len()).collect(), Vec::new())
    } else {
        build_path(&bundle.certs, &infos, leaf_idx)
    };
    let chain: Vec<CertificateDer<'static>> =
        order.iter().map(|&i| bundle.certs[i].clone()).collect();
    let trusted = options.roots.is_trusted(&chain, provider, now);
    if let Some(&last) = order.last() {
        let last = &infos[last];
        let reached_root = dropped.iter().any(|d| d.reason == DropReason::Root);
        // A chain that ends at an intermediate CA is complete: its root is left out on
        // purpose, as clients hold it. Only a leaf alone may be missing its intermediates.
        let ends_at_intermediate = order.len() > 1 && last.is_ca;
        if !trusted && !last.is_self_issued() && !reached_root && !ends_at_intermediate {
            warnings.push(format!(
                "the chain stops at a certificate issued by '{}', which was not uploaded: if that is an intermediate, add it, or clients may not trust this certificate",
                last.issuer
            ));
        }
    }
    Ok(Prepared {
        chain,
        key: bundle.key,
        leaf: infos[leaf_idx].clone(),
        key_kind,
        dropped,
        warnings,
        trusted,
    })
}

fn small_rsa(bits: u32) -> CertError {
    CertError::UnsupportedKey {
        detail: format!(
            "RSA key of {bits} bits; at least {MIN_RSA_BITS} are required: create a new key with `openssl genrsa -out server.key 2048` and have the certificate reissued"
        ),
    }
}

/// The modulus size of an RSA private key (PKCS#1, or PKCS#8 holding PKCS#1), read from its
/// DER without building the key: a key too small to load still gets a precise refusal.
fn rsa_key_bits(key: &PrivateKeyDer<'_>) -> Option<u32> {
    // rsaEncryption, 1.2.840.113549.1.1.1.
    const RSA_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let pkcs1 = match key {
        PrivateKeyDer::Pkcs1(k) => k.secret_pkcs1_der(),
        PrivateKeyDer::Pkcs8(k) => {
            let (0x30, info, _) = tlv(k.secret_pkcs8_der())? else {
                return None;
            };
            let (0x02, _, rest) = tlv(info)? else {
                return None;
            };
            let (0x30, alg, rest) = tlv(rest)? else {
                return None;
            };
            let (0x06, oid, _) = tlv(alg)? else {
                return None;
            };
            if oid != RSA_OID {
                return None;
            }
            let (0x04, inner, _) = tlv(rest)? else {
                return None;
            };
            inner
        }
        _ => return None,
    };
    let (0x30, seq, _) = tlv(pkcs1)? else {
        return None;
    };
    let (0x02, _, rest) = tlv(seq)? else {
        return None;
    };
    let (0x02, modulus, _) = tlv(rest)? else {
        return None;
    };
    let start = modulus.iter().position(|&b| b != 0)?;
    let digits = &modulus[start..];
    let top = u32::from(digits[0]);
    u32::try_from(digits.len() * 8)
        .ok()
        .map(|bits| bits - top.leading_zeros() + 24)
}

/// One DER tag-length-value: (tag, content, what follows).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, r) = rest.split_at_checked(n)?;
        rest = r;
        bytes.iter().fold(0usize, |a, &b| (a << 8) | usize::from(b))
    };
    let (content, rest) = rest.split_at_checked(len)?;
    Some((tag, content, rest))
}

fn check_key_kind(leaf: &CertInfo) -> Result<KeyKind, CertError> {
    match leaf.key {
        Some(KeyKind::Rsa { bits }) if bits < MIN_RSA_BITS => Err(small_rsa(bits)),
        Some(KeyKind::EcdsaP521) => Err(CertError::UnsupportedKey {
            detail: "ECDSA P-521 is not offered by TLS clients in practice: use P-256 or P-384".into(),
        }),
        Some(kind) => Ok(kind),
        None => Err(CertError::UnsupportedKey {
            detail: "the certificate's public key type is unknown: use ECDSA P-256/P-384, Ed25519 or RSA".into(),
        }),
    }
}

fn check_domains(
    leaf: &CertInfo,
    domains: &[HostPattern],
    warnings: &mut Vec<String>,
) -> Result<(), CertError> {
    if domains.is_empty() {
        return Ok(());
    }
    let uncovered: Vec<&HostPattern> = domains
        .iter()
        .filter(|d| !d.covered_by(&leaf.names))
        .collect();
    if uncovered.len() == domains.len() {
        return Err(CertError::NoDomainCovered {
            requested: join(domains.iter()),
            covered: join(leaf.names.iter()),
        });
    }
    if !uncovered.is_empty() {
        warnings.push(format!(
            "the certificate does not cover {}: HTTPS requests for those domains will fail",
            join(uncovered.into_iter())
        ));
    }
    Ok(())
}

fn join<'a, T: std::fmt::Display + 'a>(items: impl Iterator<Item = &'a T>) -> String {
    let v: Vec<String> = items.map(|i| i.to_string()).collect();
    if v.is_empty() {
        "no names".into()
    } else {
        v.join(", ")
    }
}

/// Orders the certificates from the leaf towards the root, dropping the root, duplicates and
/// anything not on the path.
fn build_path(
    certs: &[CertificateDer<'static>],
    infos: &[CertInfo],
    leaf_idx: usize,
) -> (Vec<usize>, Vec<Dropped>) {
    let n = certs.len();
    let mut duplicate_of = vec![None; n];
    for i in 0..n {
        if let Some(first) = (0..i).find(|&j| certs[j] == certs[i]) {
            duplicate_of[i] = Some(first);
        }
    }
    let leaf_idx = duplicate_of[leaf_idx].unwrap_or(leaf_idx);
    let mut used = vec![false; n];
    let mut dropped = Vec::new();
    let mut order = vec![leaf_idx];
    used[leaf_idx] = true;
    let mut current = leaf_idx;
    while !infos[current].is_self_issued() {
        let Some(next) = (0..n).find(|&j| {
            !used[j] && duplicate_of[j].is_none() && infos[current].issued_by(&infos[j])
        }) else {
            break;
        };
        used[next] = true;
        if infos[next].is_self_issued() {
            dropped.push(Dropped {
                subject: infos[next].subject.clone(),
                reason: DropReason::Root,
            });
            break;
        }
        order.push(next);
        current = next;
    }
    for j in 0..n {
        if used[j] {
            continue;
        }
        let reason = if duplicate_of[j].is_some() {
            DropReason::Duplicate
        } else {
            DropReason::Unrelated
        };
        dropped.push(Dropped {
            subject: infos[j].subject.clone(),
            reason,
        });
    }
    (order, dropped)
}

/// Does the chain (leaf first) verify against the Mozilla root set at `now`?
pub fn is_trusted(chain: &[CertificateDer<'_>], provider: &CryptoProvider, now: i64) -> bool {
    Roots::default().is_trusted(chain, provider, now)
}

/// Does the chain (leaf first) verify, for server authentication, up to one of `anchors`?
fn verifies(
    chain: &[CertificateDer<'_>],
    anchors: &[rustls::pki_types::TrustAnchor<'_>],
    provider: &CryptoProvider,
    now: i64,
) -> bool {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return false;
    };
    let Ok(ee) = EndEntityCert::try_from(leaf) else {
        return false;
    };
    let time = UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(now).unwrap_or(0)));
    ee.verify_for_usage(
        provider.signature_verification_algorithms.all,
        anchors,
        intermediates,
        time,
        KeyUsage::server_auth(),
        None,
        None,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testpki::{root, self_signed};
    use rcgen::{PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256};
    use rustls::pki_types::pem::PemObject;

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn run(cert: &str, key: &str, opts: &PrepareOptions) -> Result<Prepared, CertError> {
        prepare(
            cert.as_bytes(),
            key.as_bytes(),
            opts,
            &crate::provider(true),
            now(),
        )
    }

    fn subjects(p: &Prepared) -> Vec<String> {
        p.chain
            .iter()
            .map(|c| CertInfo::parse(c.as_ref()).unwrap().subject)
            .collect()
    }

    #[test]
    fn shuffled_chain_with_root_duplicate_and_unrelated_is_fixed() {
        let ca = root("Test Root");
        let inter = ca.intermediate("Test Intermediate");
        let (leaf, key) = inter.leaf(&["www.example.com"], &PKCS_ECDSA_P256_SHA256);
        let other = root("Unrelated Root");
        let upload = format!("{}{}{}{}{}", ca.pem, inter.pem, other.pem, leaf, inter.pem);
        let p = run(&upload, &key, &PrepareOptions::default()).unwrap();
        assert_eq!(subjects(&p), ["CN=www.example.com", "CN=Test Intermediate"]);
        let mut dropped: Vec<(String, DropReason)> = p
            .dropped
            .iter()
            .map(|d| (d.subject.clone(), d.reason))
            .collect();
        dropped.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            dropped,
            [
                ("CN=Test Intermediate".into(), DropReason::Duplicate),
                ("CN=Test Root".into(), DropReason::Root),
                ("CN=Unrelated Root".into(), DropReason::Unrelated),
            ]
        );
        // A private test root is not in the Mozilla set.
        assert!(!p.trusted);
    }

    #[test]
    fn missing_intermediate_is_untrusted_with_a_hint() {
        let ca = root("Test Root");
        let inter = ca.intermediate("Test Intermediate");
        let (leaf, key) = inter.leaf(&["www.example.com"], &PKCS_ECDSA_P256_SHA256);
        let p = run(&leaf, &key, &PrepareOptions::default()).unwrap();
        assert_eq!(subjects(&p), ["CN=www.example.com"]);
        assert!(!p.trusted);
        assert!(
            p.warnings.iter().any(|w| w.contains("Test Intermediate")),
            "{:?}",
            p.warnings
        );
    }

    /// The seed's advice: upload the intermediates, leave the root out. That chain is complete
    /// (no warning), and trusted once its root is among the configured roots.
    #[test]
    fn a_chain_ending_at_an_intermediate_is_complete() {
        let ca = root("Test Root");
        let inter = ca.intermediate("Test Intermediate");
        let (leaf, key) = inter.leaf(&["www.example.com"], &PKCS_ECDSA_P256_SHA256);
        let upload = format!("{leaf}{}", inter.pem);
        let p = run(&upload, &key, &PrepareOptions::default()).unwrap();
        assert_eq!(subjects(&p), ["CN=www.example.com", "CN=Test Intermediate"]);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert!(!p.trusted, "a private root is not in the Mozilla set");
        let opts = PrepareOptions {
            roots: Roots::with_extra_pem(ca.pem.as_bytes()).unwrap(),
            ..Default::default()
        };
        let p = run(&upload, &key, &opts).unwrap();
        assert!(p.trusted, "the configured root makes it trusted");
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        // Without the intermediate, the same root does not make the leaf trusted.
        let p = run(&leaf, &key, &opts).unwrap();
        assert!(!p.trusted);
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    }

    #[test]
    fn bypass_keeps_the_upload_as_is() {
        let ca = root("Test Root");
        let inter = ca.intermediate("Test Intermediate");
        let (leaf, key) = inter.leaf(&["www.example.com"], &PKCS_ECDSA_P256_SHA256);
        let upload = format!("{}{}{}", leaf, ca.pem, inter.pem);
        let opts = PrepareOptions {
            bypass: true,
            ..Default::default()
        };
        let p = run(&upload, &key, &opts).unwrap();
        assert_eq!(
            subjects(&p),
            ["CN=www.example.com", "CN=Test Root", "CN=Test Intermediate"]
        );
        assert!(p.dropped.is_empty());
        let wrong_order = format!("{}{}", inter.pem, leaf);
        assert_eq!(
            run(&wrong_order, &key, &opts).unwrap_err(),
            CertError::BypassLeafNotFirst
        );
    }

    #[test]
    fn key_mismatch_and_domain_checks() {
        let (cert, _) = self_signed(&["a.example.com"], &PKCS_ECDSA_P256_SHA256);
        let (_, other_key) = self_signed(&["b.example.com"], &PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            run(&cert, &other_key, &PrepareOptions::default()).unwrap_err(),
            CertError::KeyMismatch
        );
        let (cert, key) = self_signed(
            &["a.example.com", "*.b.example.com"],
            &PKCS_ECDSA_P256_SHA256,
        );
        let opts = |d: &[&str]| PrepareOptions {
            domains: d.iter().map(|s| HostPattern::parse(s).unwrap()).collect(),
            ..Default::default()
        };
        let err = run(&cert, &key, &opts(&["c.example.com"])).unwrap_err();
        assert_eq!(err.code(), "no_domain_covered");
        assert!(
            err.to_string().contains("a.example.com, *.b.example.com"),
            "{err}"
        );
        let p = run(&cert, &key, &opts(&["x.b.example.com", "c.example.com"])).unwrap();
        assert!(p.warnings[0].contains("c.example.com"));
        run(&cert, &key, &opts(&["*.b.example.com"])).unwrap();
    }

    #[test]
    fn a_complete_chain_verifies_to_its_root() {
        let ca = root("Test Root");
        let inter = ca.intermediate("Test Intermediate");
        let (leaf, _) = inter.leaf(&["www.example.com"], &PKCS_ECDSA_P256_SHA256);
        let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let root_der = der(&ca.pem);
        let anchor = webpki::anchor_from_trusted_cert(&root_der).unwrap();
        let provider = crate::provider(true);
        let full = [der(&leaf), der(&inter.pem)];
        assert!(verifies(
            &full,
            std::slice::from_ref(&anchor),
            &provider,
            now()
        ));
        assert!(
            !verifies(&full[..1], std::slice::from_ref(&anchor), &provider, now()),
            "missing intermediate"
        );
        assert!(
            !verifies(&full, &[anchor], &provider, 4_200_000_000_000),
            "after expiry"
        );
        assert!(
            !is_trusted(&full, &provider, now()),
            "a private root is not in the Mozilla set"
        );
    }

    #[test]
    fn rsa_key_is_accepted_and_typed() {
        let (cert, key) = self_signed(&["r.example.com"], &PKCS_RSA_SHA256);
        let p = run(&cert, &key, &PrepareOptions::default()).unwrap();
        assert_eq!(p.key_kind, KeyKind::Rsa { bits: 2048 });
        let der = crate::pem::parse_pem(cert.as_bytes(), key.as_bytes())
            .unwrap()
            .key;
        assert_eq!(rsa_key_bits(&der), Some(2048));
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let key = rcgen::KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["old.example.com".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        let err = run(
            &cert.pem(),
            &key.serialize_pem(),
            &PrepareOptions::default(),
        )
        .unwrap_err();
        assert_eq!(err.code(), "expired");
        assert!(err.to_string().contains("2021-01-01"), "{err}");

        params.not_before = rcgen::date_time_ymd(2099, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        let p = run(
            &cert.pem(),
            &key.serialize_pem(),
            &PrepareOptions::default(),
        )
        .unwrap();
        assert!(
            p.warnings[0].contains("not valid until 2099-01-01"),
            "{:?}",
            p.warnings
        );
    }
}
