//! The bodies of terminus' fuzz targets, one `pub fn(&[u8])` per target, written once and run two
//! ways: by cargo-fuzz (`fuzz/`, nightly, libFuzzer) and by this crate's stable smoke test, which
//! runs each body over its seed corpus (`fuzz/corpus/<target>/`) and over deterministic
//! mutations of it (see [`smoke`]), so `cargo test --workspace` exercises them too.
//!
//! A target reports a failure by panicking: either the code under test panicked, or an invariant
//! the target checks does not hold. Both fuzzers record the input that did it.

mod access_log;
mod config;
mod headers;
mod host;
mod pem;
mod proxy_header;
pub mod smoke;

pub use access_log::access_log;
pub use config::config_toml;
pub use headers::header_rewrite;
pub use host::host_pattern;
pub use pem::{pem_intake, pem_outcome};
pub use proxy_header::proxy_header;

/// A fuzz target: its name (also its cargo-fuzz binary and corpus directory), its body, and
/// tokens the smoke test's mutator splices in (libFuzzer finds such tokens on its own).
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub tokens: &'static [&'static [u8]],
}

/// Every target, in the order the smoke test runs them.
pub const TARGETS: [Target; 6] = [
    Target {
        name: "host_pattern",
        run: host_pattern,
        tokens: host::TOKENS,
    },
    Target {
        name: "header_rewrite",
        run: header_rewrite,
        tokens: headers::TOKENS,
    },
    Target {
        name: "pem_intake",
        run: pem_intake,
        tokens: pem::TOKENS,
    },
    Target {
        name: "config_toml",
        run: config_toml,
        tokens: config::TOKENS,
    },
    Target {
        name: "access_log",
        run: access_log,
        tokens: access_log::TOKENS,
    },
    Target {
        name: "proxy_header",
        run: proxy_header,
        tokens: proxy_header::TOKENS,
    },
];

/// Splits `data` at NUL bytes into at most `n` fields (the last keeps any further NULs). Seeds
/// stay readable text, and a mutation that adds or removes a NUL moves bytes between fields.
fn fields(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = data.splitn(n, |&b| b == 0).collect();
    out.resize(n, &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_pads_and_keeps_the_tail() {
        assert_eq!(fields(b"a\0b\0c\0d", 3), [&b"a"[..], b"b", b"c\0d"]);
        assert_eq!(fields(b"a", 3), [&b"a"[..], b"", b""]);
    }
}
