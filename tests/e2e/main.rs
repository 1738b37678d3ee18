//! End-to-end tests: the real router, real TLS clients (rustls, curl, openssl), real backends,
//! all on 127.0.0.1 with ports chosen by the OS.

// Helpers are `pub` for sibling modules; nothing here is a library.
#![allow(unreachable_pub, dead_code)]
// Test setup that fails should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod acme;
mod damage;
mod durability;
mod errors;
mod exhaustion;
mod guards;
mod harness;
mod hostile;
mod keepalive;
mod lifecycle;
mod listing;
mod process;
mod proxy;
mod proxy_protocol;
mod readme;
mod reload;
mod scale;
mod secrets;
mod selection;
mod shutdown;
mod sni;
mod spans;
mod swap;
mod tickets;
mod tls_edges;
mod tools;
mod upgrade;
mod validation;
mod websocket;
