//! The admin API of terminus as data: the request and answer types of every `/v1` route (shared
//! by the server in terminus-admin and every client), and [`Client`], a small HTTP/1.1 client
//! for them used by the CLI, `terminus health`, the end-to-end tests and the benchmarks.
//!
//! The JSON wire format is the README's "Admin API" section; these types are its definition.

mod client;
mod types;

pub use client::{encode, Blocking, Client, ClientError, Page};
pub use types::*;
