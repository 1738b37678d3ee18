//! Benchmarks for terminus: the side-by-side load harness and its clients.
//!
//! - [`client`]: the TLS load client (`tlsload`, also `harness client`): full or resumed
//!   handshakes per request, open-loop latency over keep-alive connections, idle connections.
//! - [`tls`]: the client's rustls configuration and a blocking readiness probe.
//! - [`http1`]: just enough HTTP/1.1 to send `GET /` and find where a response ends.
//! - [`procfs`]: CPU time and resident memory of a process tree, from `/proc`.
//! - [`procs`]: child processes pinned to a CPU and stopped when dropped, free ports, a
//!   temporary directory.
//! - [`stats`]: medians and percentiles.
//! - [`tools`]: the programs the benchmarks need, the terminus binary, the machine's description.
//!
//! The harness itself is the `harness` binary (`src/bin/harness/`); the criterion
//! micro-benchmarks are in `benches/`.

pub mod client;
pub mod http1;
pub mod procfs;
pub mod procs;
pub mod stats;
pub mod tls;
pub mod tools;
