//! Hunts patterns that match other names than written, Display/parse mismatches and panics in host splitting.
//! The body, its input format and its invariants: crates/terminus-fuzz/src/host.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| terminus_fuzz::host_pattern(data));
