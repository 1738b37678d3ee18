//! Hunts spoofed X-Forwarded-*/X-Request-* headers, surviving hop-by-hop headers and a wrong X-Forwarded-For.
//! The body, its input format and its invariants: crates/terminus-fuzz/src/headers.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| terminus_fuzz::header_rewrite(data));
