//! Benchmarks for terminus: the side-by-side load harness and its clients.
