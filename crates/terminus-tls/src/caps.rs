//! Which certificate key types a client can use, read from its ClientHello before the handshake
//! goes on, so that a name with both an ECDSA and an RSA certificate serves the one the client
//! can verify.

use rustls::server::ClientHello;
use rustls::{CipherSuite, SignatureScheme};

use crate::info::KeyKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCaps {
    pub ecdsa_p256: bool,
    pub ecdsa_p384: bool,
    pub ed25519: bool,
    pub rsa: bool,
    /// The client lists ChaCha20-Poly1305 before any AES-GCM suite: the sign of a device without
    /// AES hardware, which then gets ChaCha20 although the server otherwise prefers AES-128-GCM.
    pub prefers_chacha: bool,
}

impl ClientCaps {
    /// A client that accepts everything (for tests and tools).
    pub const ALL: Self = Self {
        ecdsa_p256: true,
        ecdsa_p384: true,
        ed25519: true,
        rsa: true,
        prefers_chacha: false,
    };

    pub fn from_hello(hello: &ClientHello<'_>) -> Self {
        Self::from_parts(hello.signature_schemes(), hello.cipher_suites())
    }

    /// In TLS 1.3 the signature schemes alone decide. A TLS 1.2-only client also needs a
    /// cipher suite for the key type: ECDHE_ECDSA for ECDSA keys, ECDHE_RSA for RSA keys.
    pub fn from_parts(schemes: &[SignatureScheme], suites: &[CipherSuite]) -> Self {
        let offers_tls13 = suites.iter().any(|s| {
            matches!(
                s,
                CipherSuite::TLS13_AES_128_GCM_SHA256
                    | CipherSuite::TLS13_AES_256_GCM_SHA384
                    | CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
            )
        });
        let tls12_ecdsa = offers_tls13
            || suites.iter().any(|s| {
                matches!(
                    s,
                    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                        | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                )
            });
        let tls12_rsa = offers_tls13
            || suites.iter().any(|s| {
                matches!(
                    s,
                    CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
                        | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
                )
            });
        let has = |s: SignatureScheme| schemes.contains(&s);
        let pss = schemes.iter().any(|s| {
            matches!(
                s,
                SignatureScheme::RSA_PSS_SHA256
                    | SignatureScheme::RSA_PSS_SHA384
                    | SignatureScheme::RSA_PSS_SHA512
            )
        });
        let pkcs1 = schemes.iter().any(|s| {
            matches!(
                s,
                SignatureScheme::RSA_PKCS1_SHA256
                    | SignatureScheme::RSA_PKCS1_SHA384
                    | SignatureScheme::RSA_PKCS1_SHA512
            )
        });
        Self {
            ecdsa_p256: tls12_ecdsa && has(SignatureScheme::ECDSA_NISTP256_SHA256),
            ecdsa_p384: tls12_ecdsa && has(SignatureScheme::ECDSA_NISTP384_SHA384),
            // rustls signs with Ed25519 in TLS 1.2 too, under the ECDSA suites.
            ed25519: tls12_ecdsa && has(SignatureScheme::ED25519),
            // TLS 1.3 (which a 1.3-capable client gets) allows only RSA-PSS for handshake
            // signatures; TLS 1.2 also allows PKCS#1.
            rsa: if offers_tls13 {
                pss
            } else {
                tls12_rsa && (pss || pkcs1)
            },
            prefers_chacha: prefers_chacha(suites),
        }
    }

    pub fn supports(&self, kind: KeyKind) -> bool {
        match kind {
            KeyKind::EcdsaP256 => self.ecdsa_p256,
            KeyKind::EcdsaP384 => self.ecdsa_p384,
            KeyKind::EcdsaP521 => false,
            KeyKind::Ed25519 => self.ed25519,
            KeyKind::Rsa { .. } => self.rsa,
        }
    }
}

/// Whether the first AEAD suite the client lists is ChaCha20-Poly1305.
fn prefers_chacha(suites: &[CipherSuite]) -> bool {
    suites
        .iter()
        .find_map(|s| match *s {
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Some(true),
            CipherSuite::TLS13_AES_128_GCM_SHA256
            | CipherSuite::TLS13_AES_256_GCM_SHA384
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Some(false),
            _ => None,
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chacha_preference_is_the_first_aead_listed() {
        use CipherSuite as S;
        assert!(prefers_chacha(&[
            S::TLS_EMPTY_RENEGOTIATION_INFO_SCSV,
            S::TLS13_CHACHA20_POLY1305_SHA256,
            S::TLS13_AES_128_GCM_SHA256,
        ]));
        assert!(!prefers_chacha(&[
            S::TLS13_AES_256_GCM_SHA384,
            S::TLS13_CHACHA20_POLY1305_SHA256,
        ]));
        assert!(!prefers_chacha(&[]));
    }

    #[test]
    fn tls13_client_uses_schemes_only() {
        let caps = ClientCaps::from_parts(
            &[SignatureScheme::ECDSA_NISTP256_SHA256],
            &[CipherSuite::TLS13_AES_128_GCM_SHA256],
        );
        assert!(caps.supports(KeyKind::EcdsaP256));
        assert!(!caps.supports(KeyKind::Rsa { bits: 2048 }));
    }

    #[test]
    fn tls13_rsa_needs_pss() {
        let caps = ClientCaps::from_parts(
            &[SignatureScheme::RSA_PKCS1_SHA256],
            &[
                CipherSuite::TLS13_AES_128_GCM_SHA256,
                CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            ],
        );
        assert!(!caps.supports(KeyKind::Rsa { bits: 2048 }));
    }

    #[test]
    fn tls12_client_needs_a_suite_for_the_key_type() {
        let schemes = [
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::RSA_PSS_SHA256,
        ];
        let caps = ClientCaps::from_parts(
            &schemes,
            &[CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256],
        );
        assert!(!caps.supports(KeyKind::EcdsaP256));
        assert!(caps.supports(KeyKind::Rsa { bits: 2048 }));
    }
}
