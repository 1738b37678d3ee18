//! Certificate upload intake: `terminus_tls::parse_pem` and `terminus_tls::prepare`.
//!
//! Bug class: panics in PEM, DER and X.509 handling of hostile uploads (truncated blocks, bad
//! base64, mismatched keys, chains in any order, duplicate and unrelated certificates), a served
//! chain that does not start with the key's certificate, certificates lost or invented by the
//! chain fix-up, and error messages that echo the upload back (they may be shown or logged; the
//! upload may hold a private key).
//!
//! Input: `CERT-FILE \0 KEY-FILE \0 OPTIONS`, where OPTIONS is `bypass` and/or domain patterns,
//! separated by spaces. Without a NUL the whole input is the certificate file.

use std::sync::OnceLock;

use terminus_route::HostPattern;
use terminus_tls::rustls::crypto::CryptoProvider;
use terminus_tls::{parse_pem, prepare, CertError, CertInfo, PrepareOptions, Prepared};

pub(crate) const TOKENS: &[&[u8]] = &[
    b"-----BEGIN CERTIFICATE-----\n",
    b"-----END CERTIFICATE-----\n",
    b"-----BEGIN PRIVATE KEY-----\n",
    b"-----END PRIVATE KEY-----\n",
    b"-----BEGIN EC PRIVATE KEY-----\n",
    b"-----BEGIN RSA PRIVATE KEY-----\n",
    b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n",
    b"Proc-Type: 4,ENCRYPTED\n",
    b"-----BEGIN ",
    b"-----END ",
    b"-----",
    b"\n",
    b"\r\n",
    b"=",
    b"\0",
    b"bypass",
    b"*.example.com",
];

/// The time certificates are judged at, fixed so that runs repeat: 2027-01-01T00:00:00Z.
const NOW: i64 = 1_798_761_600;
/// How long a run of base64 characters from the upload must be before an error message that
/// repeats it counts as echoing key material.
const ECHO_RUN: usize = 16;

fn provider() -> &'static CryptoProvider {
    static PROVIDER: OnceLock<CryptoProvider> = OnceLock::new();
    PROVIDER.get_or_init(|| terminus_tls::provider(true))
}

pub fn pem_intake(data: &[u8]) {
    let parts = crate::fields(data, 3);
    let (cert, key, opts) = (parts[0], parts[1], parts[2]);
    let options = options(&String::from_utf8_lossy(opts));

    match parse_pem(cert, key) {
        Ok(bundle) => assert!(!bundle.certs.is_empty(), "a bundle without certificates"),
        Err(e) => check_error(&e, cert, key),
    }
    match prepare(cert, key, &options, provider(), NOW) {
        Ok(p) => check_prepared(&p, cert, key, &options),
        Err(e) => check_error(&e, cert, key),
    }
}

/// `bypass` and domain patterns, separated by spaces; words that are neither are ignored.
pub(crate) fn options(text: &str) -> PrepareOptions {
    let words = text.split_whitespace();
    PrepareOptions {
        bypass: words.clone().any(|w| w == "bypass"),
        domains: words
            .filter(|&w| w != "bypass")
            .filter_map(|w| HostPattern::parse(w).ok())
            .collect(),
    }
}

/// What the pem_intake seed `data` makes of an upload: `Ok` or the error's code. For the test
/// that keeps each seed meaning what its name says.
pub fn pem_outcome(data: &[u8]) -> Result<(), &'static str> {
    let parts = crate::fields(data, 3);
    let options = options(&String::from_utf8_lossy(parts[2]));
    prepare(parts[0], parts[1], &options, provider(), NOW)
        .map(drop)
        .map_err(|e| e.code())
}

fn check_error(e: &CertError, cert: &[u8], key: &[u8]) {
    assert!(!e.code().is_empty());
    let message = e.to_string();
    assert!(!message.is_empty());
    for run in base64_runs(message.as_bytes()) {
        // Words of the messages themselves (x509-parser's `InvalidSignatureValue`) are letters
        // only, and libFuzzer splices them into inputs. Base64 of key bytes almost never goes
        // 16 characters without a digit, '+' or '/' ((52/64)^16 < 4%), so a real echo of a
        // line of key is still caught.
        for window in run
            .windows(ECHO_RUN)
            .filter(|w| !w.iter().all(u8::is_ascii_alphabetic))
        {
            for (what, input) in [("certificate", cert), ("key", key)] {
                assert!(
                    !contains(input, window),
                    "error `{message}` echoes {:?} from the {what} file",
                    String::from_utf8_lossy(window)
                );
            }
        }
    }
}

fn check_prepared(p: &Prepared, cert: &[u8], key: &[u8], options: &PrepareOptions) {
    let uploaded = match parse_pem(cert, key) {
        Ok(bundle) => bundle.certs,
        Err(e) => panic!("prepare accepted what parse_pem refuses: {e}"),
    };
    let leaf = match p.chain.first() {
        Some(der) => CertInfo::parse(der.as_ref()),
        None => panic!("an empty chain was prepared"),
    };
    assert_eq!(
        leaf.as_ref().ok(),
        Some(&p.leaf),
        "chain[0] is not the leaf"
    );
    assert!(
        p.leaf.not_after >= NOW,
        "an expired certificate was accepted"
    );
    for der in &p.chain {
        assert!(
            uploaded.contains(der),
            "the chain holds a certificate not uploaded"
        );
    }
    if options.bypass {
        assert_eq!(p.chain, uploaded, "--bypass changed the chain");
        assert!(p.dropped.is_empty());
    } else {
        assert_eq!(
            p.chain.len() + p.dropped.len(),
            uploaded.len(),
            "certificates lost or invented by the chain fix-up"
        );
        for (i, der) in p.chain.iter().enumerate() {
            assert!(!p.chain[..i].contains(der), "a duplicate is served");
        }
    }
    if !options.domains.is_empty() {
        let covered = options
            .domains
            .iter()
            .any(|d| p.leaf.names.contains(d) || p.leaf.covers(d.base().as_str()));
        assert!(covered, "accepted for domains it covers none of");
    }
}

/// Maximal runs of `[A-Za-z0-9+/]` at least [`ECHO_RUN`] long.
fn base64_runs(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|&b| !(b.is_ascii_alphanumeric() || b == b'+' || b == b'/'))
        .filter(|run| run.len() >= ECHO_RUN)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
