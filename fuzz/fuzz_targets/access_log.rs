//! Hunts log injection: request fields that break the access log line or forge a key=value.
//! The body, its input format and its invariants: crates/terminus-fuzz/src/access_log.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| terminus_fuzz::access_log(data));
