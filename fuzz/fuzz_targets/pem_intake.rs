//! Hunts panics in PEM/X.509 intake, chains that lose or invent certificates, and errors echoing key material.
//! The body, its input format and its invariants: crates/terminus-fuzz/src/pem.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| terminus_fuzz::pem_intake(data));
