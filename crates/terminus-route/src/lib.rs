//! Host names and host patterns as pure values, a concurrent map keyed by them, and the routing
//! table (host → app → backends) built on it.
//!
//! Matching rules, shared by SNI certificate selection and `Host` routing: names compare
//! case-insensitively and ignore one trailing dot; `*.example.com` matches exactly one label
//! (`a.example.com`, not `example.com`, not `a.b.example.com`); an exact name beats a wildcard.
//! No I/O happens here.

mod backend;
mod error;
mod map;
mod name;
mod table;

pub use backend::BackendAddr;
pub use error::NameError;
pub use map::{HostMap, MatchKind};
pub use name::{
    host_of_authority, normalize, wildcard_suffix, HostName, HostPattern, MAX_NAME_LEN,
};
pub use table::{App, Domain, Route, RouteTable};
