//! Test-only helpers for terminus: a PKI minted at run time, backends on port 0 that signal
//! each request's arrival, a recording TLS client, a TLS client driven record by record, a
//! capture of router log lines, and waiting on events (a condition with a deadline, the
//! router's ready file) instead of sleeping. Nothing here is used by the router itself.

// Test-only: a setup step that fails should stop the test loudly, so expect() is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod backend;
pub mod client;
pub mod logs;
pub mod pebble;
pub mod pki;
pub mod raw_tls;
pub mod tempdir;
pub mod wait;

pub use backend::Backend;
pub use client::{
    get, get_h2, send_h1, send_h2, Accept, AnyNameSessions, ClientOptions, Connected, Reply,
    TlsClient,
};
pub use pki::{self_signed, Ca, KeyType, Leaf};
pub use tempdir::TempDir;
pub use wait::{eventually, eventually_async, ready_file, reserve_port, reserve_udp_port, Ready};

/// A request id unique to this process, valid as an `X-Request-Id` (20–200 safe bytes), for
/// finding a request's log line.
pub fn unique_request_id(tag: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "test-{tag}-{:08}-{:012}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
