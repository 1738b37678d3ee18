//! Checksums in the seed's format, `SHA256:<lowercase hex>`.

use aws_lc_rs::digest::{Context, SHA256};

use crate::seal::encode_hex;

/// `SHA256:` + the hex SHA-256 of `parts` fed one after another.
pub fn sha256(parts: &[&[u8]]) -> String {
    let mut ctx = Context::new(&SHA256);
    for p in parts {
        ctx.update(p);
    }
    format!("SHA256:{}", encode_hex(ctx.finish().as_ref()))
}

/// Checks the form of a client-supplied checksum: `SHA256:` and 64 hex digits (either case).
/// Returns it normalized to lowercase hex.
pub fn parse(text: &str) -> Option<String> {
    let (alg, hex) = text.trim().split_once(':')?;
    (alg.eq_ignore_ascii_case("sha256")
        && hex.len() == 64
        && hex.bytes().all(|b| b.is_ascii_hexdigit()))
    .then(|| format!("SHA256:{}", hex.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_format() {
        // echo -n abc | shasum -a 256
        assert_eq!(
            sha256(&[b"a", b"bc"]),
            "SHA256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            parse("sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD")
                .as_deref(),
            Some("SHA256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(parse("MD5:abc"), None);
        assert_eq!(parse("SHA256:abc"), None);
    }
}
