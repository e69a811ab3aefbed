//! Benchmarks live in benches/main.rs; this crate has no library code.
