//! The pem_intake seeds mean what their names say: each reaches the outcome it was minted for
//! (fuzz/mint-pem-seeds.sh), so the corpus keeps covering every refusal and every chain shape.

use terminus_fuzz::pem_outcome;
use terminus_fuzz::smoke::{corpus_dir, seeds};

#[test]
fn pem_seeds_reach_their_outcomes() {
    let expected = [
        ("bypass", Ok(())),
        ("bypass-leaf-not-first", Err("bypass_leaf_not_first")),
        ("chain-in-order", Ok(())),
        ("chain-shuffled-with-root-and-duplicate", Ok(())),
        ("der-not-pem", Err("not_pem")),
        ("domains-not-covered", Err("no_domain_covered")),
        ("ed25519", Ok(())),
        ("encrypted-key", Err("encrypted_key")),
        ("expired", Err("expired")),
        ("key-in-cert-file", Ok(())),
        ("key-mismatch", Err("key_mismatch")),
        ("legacy-cn-only", Ok(())),
        ("missing-intermediate", Ok(())),
        ("no-key", Err("no_key")),
        ("p384", Ok(())),
        ("p521", Err("unsupported_key")),
        ("rsa-1024", Err("unsupported_key")),
        ("rsa-pkcs1", Ok(())),
        ("rsa-pkcs8", Ok(())),
        ("sec1-key", Ok(())),
        ("two-keys", Err("multiple_keys")),
    ];
    let target = terminus_fuzz::TARGETS
        .iter()
        .find(|t| t.name == "pem_intake")
        .unwrap();
    let dir = corpus_dir(target);
    let mut checked = 0;
    for (path, data) in seeds(&dir).unwrap() {
        let name = path.file_name().unwrap().to_string_lossy();
        let Some((_, want)) = expected.iter().find(|(n, _)| *n == name) else {
            continue; // a regression seed added later: the smoke run covers it
        };
        assert_eq!(pem_outcome(&data), *want, "{name}");
        checked += 1;
    }
    assert_eq!(
        checked,
        expected.len(),
        "a minted seed is missing from {}",
        dir.display()
    );
}
