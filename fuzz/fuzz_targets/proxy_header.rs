//! Hunts panics, over-long or out-of-bounds header lengths and answers that change as bytes arrive in the PROXY protocol header reader.
//! The body, its input format and its invariants: crates/terminus-fuzz/src/proxy_header.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| terminus_fuzz::proxy_header(data));
