//! Hunts panics in config parsing and validation, and errors that do not name the file.
//! The body, its input format and its invariants: crates/terminus-fuzz/src/config.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| terminus_fuzz::config_toml(data));
