//! Each fuzz target over its seed corpus and a fixed number of deterministic mutations, on
//! stable Rust. The counts keep each target around two seconds in a debug build.
//! `TERMINUS_FUZZ_MUTATIONS=N` and `TERMINUS_FUZZ_SEED=N` change them for a longer local run.
//!
//! A failing input is written to `target/tmp/fuzz-smoke/<target>-<n>`; copy it into
//! `fuzz/corpus/<target>/` once the bug is fixed, so it stays a regression seed.

use std::panic::{catch_unwind, AssertUnwindSafe};

use terminus_fuzz::smoke::{corpus_dir, inputs, seeds};
use terminus_fuzz::{Target, TARGETS};

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn run(name: &str, mutations: u64) {
    let target: &Target = TARGETS
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no target {name}"));
    let dir = corpus_dir(target);
    let corpus = seeds(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    assert!(!corpus.is_empty(), "{}: no seeds", dir.display());
    let data: Vec<Vec<u8>> = corpus.into_iter().map(|(_, d)| d).collect();
    let mutations = env("TERMINUS_FUZZ_MUTATIONS").unwrap_or(mutations);
    let seed = env("TERMINUS_FUZZ_SEED").unwrap_or(0x7e2_u64 ^ name.len() as u64);
    let mut count = 0usize;
    for (n, input) in inputs(&data, target.tokens, mutations as usize, seed).enumerate() {
        if catch_unwind(AssertUnwindSafe(|| (target.run)(&input))).is_err() {
            let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-smoke");
            let file = dir.join(format!("{name}-{n}"));
            let saved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, &input));
            panic!(
                "{name}: input #{n} (seed {seed}) failed; saved to {} ({saved:?}): {:?}",
                file.display(),
                String::from_utf8_lossy(&input)
            );
        }
        count += 1;
    }
    assert_eq!(count, data.len() + mutations as usize);
}

#[test]
fn host_pattern() {
    run("host_pattern", 70_000);
}

#[test]
fn header_rewrite() {
    run("header_rewrite", 80_000);
}

#[test]
fn pem_intake() {
    run("pem_intake", 20_000);
}

#[test]
fn config_toml() {
    run("config_toml", 45_000);
}

#[test]
fn access_log() {
    run("access_log", 100_000);
}

#[test]
fn proxy_header() {
    run("proxy_header", 300_000);
}

#[test]
fn every_target_is_tested_here_and_has_a_binary() {
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
    let this = include_str!("smoke.rs");
    for t in TARGETS {
        assert!(
            this.contains(&format!("run(\"{}\"", t.name)),
            "{} is not run here",
            t.name
        );
        assert!(
            manifest.contains(&format!("name = \"{}\"", t.name)),
            "{} has no [[bin]] in fuzz/Cargo.toml",
            t.name
        );
        let body = std::fs::read_to_string(fuzz.join(format!("fuzz_targets/{}.rs", t.name)))
            .unwrap_or_else(|e| panic!("fuzz_targets/{}.rs: {e}", t.name));
        assert!(
            body.contains(&format!("terminus_fuzz::{}(", t.name)),
            "fuzz_targets/{}.rs does not call terminus_fuzz::{}",
            t.name,
            t.name
        );
    }
}
