//! # chordkv-harness
//!
//! What tests, benchmarks, loadgen and the `chordkv` command share to run and judge nodes, kept
//! apart from the node itself (as raft-rs keeps `harness/`):
//!
//! - [`sim`]: a simulated network that drives many of the core's state machines with seeded
//!   delays, loss, crashes, restarts, pauses, partitions, duplication, reordering and clock
//!   skew, with random fault schedules and oracles: the deterministic test bed, the lookup
//!   simulator behind `chordkv sim`, and the balance experiment behind `chordkv balance`
//!   (keys per host with virtual nodes).
//! - [`history`]: judges a recorded history of client operations (stale reads, lost writes,
//!   resurrected deletes) for the simulation tests and loadgen.
//! - [`cluster`]: runs a local ring of `chordkv node` processes, on loopback or each in its own
//!   network namespace ([`netns`]: partitions); [`cluster::chordkv_binary`] finds the binary.
//! - [`conformance`]: the behaviour every [`chordkv_core::store::Store`] driver must have.
//! - [`redis_server`]: a real `redis-server` child process for tests.
//! - [`zipfian`]: the one zipfian key sampler (the simulator's and loadgen's).
//!
//! Running a cluster or a namespace fails with the crate's [`Error`].

pub mod cluster;
pub mod conformance;
pub mod error;
pub mod history;
pub mod netns;
pub mod redis_server;
pub mod sim;
pub mod zipfian;

pub use error::{Error, Result};
