/// Why a certificate and key were refused. Each message says what was wrong and what to do; none
/// ever contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("the {what} is not valid PEM ({detail}): each block must start with a -----BEGIN ...----- line and end with the matching -----END ...----- line")]
    MalformedPem { what: &'static str, detail: String },
    #[error("the {what} is DER (binary), not PEM: convert it first, e.g. `openssl x509 -inform der -in server.der -out server.crt`")]
    NotPem { what: &'static str },
    #[error(
        "no certificate found: the certificate file must hold a -----BEGIN CERTIFICATE----- block"
    )]
    NoCertificate,
    #[error("no private key found: the key file must hold an unencrypted -----BEGIN PRIVATE KEY----- (or RSA/EC PRIVATE KEY) block")]
    NoKey,
    #[error(
        "found {count} private keys: upload exactly one, the key the certificate was issued for"
    )]
    MultipleKeys { count: usize },
    #[error("the private key is protected by a passphrase: remove it first with `openssl rsa -in server.pass.key -out server.key` (for EC keys: `openssl pkey -in server.pass.key -out server.key`) and upload server.key")]
    EncryptedKey,
    #[error("the private key is not supported: {detail}")]
    UnsupportedKey { detail: String },
    #[error("the private key does not belong to any certificate in the upload: upload the key the certificate was issued for")]
    KeyMismatch,
    #[error("a certificate cannot be parsed: {detail}")]
    BadCertificate { detail: String },
    #[error("the certificate expired on {not_after}: renew it with your certificate provider and upload the new one")]
    Expired { not_after: String },
    #[error(
        "the certificate covers none of the requested domains ({requested}); it covers: {covered}"
    )]
    NoDomainCovered { requested: String, covered: String },
    #[error("with --bypass the chain is served exactly as uploaded, so the first certificate must be the one the key belongs to; put it first or drop --bypass")]
    BypassLeafNotFirst,
}

impl CertError {
    /// A stable machine-readable code for APIs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedPem { .. } => "malformed_pem",
            Self::NotPem { .. } => "not_pem",
            Self::NoCertificate => "no_certificate",
            Self::NoKey => "no_key",
            Self::MultipleKeys { .. } => "multiple_keys",
            Self::EncryptedKey => "encrypted_key",
            Self::UnsupportedKey { .. } => "unsupported_key",
            Self::KeyMismatch => "key_mismatch",
            Self::BadCertificate { .. } => "bad_certificate",
            Self::Expired { .. } => "expired",
            Self::NoDomainCovered { .. } => "no_domain_covered",
            Self::BypassLeafNotFirst => "bypass_leaf_not_first",
        }
    }
}

/// Why the index refused a change or could not build a served key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IndexError {
    #[error("a certificate named '{0}' already exists: choose another name or use certs:update")]
    DuplicateName(String),
    #[error("no certificate named '{0}'")]
    NotFound(String),
    #[error("certificate '{name}' cannot be loaded: {source}")]
    Load {
        name: String,
        #[source]
        source: KeyError,
    },
}

/// Why a certificate's private key could not be made ready for signing. Never holds key
/// material.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KeyError {
    #[error("the sealed private key does not open with the store key: it was sealed under another key or for another record, or it was altered")]
    DoesNotOpen,
    #[error("the sealed private key has an unknown format")]
    UnknownFormat,
    #[error("the private key cannot sign: {0}")]
    Unusable(#[source] rustls::Error),
}

/// Why the TLS policy could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("the TLS configuration was refused: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("session-ticket keys: {0}")]
    TicketKeys(#[from] crate::tickets::TicketKeyError),
}
