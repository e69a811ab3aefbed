//! # chordkv-node
//!
//! One chordkv node, in layers you can read bottom-up:
//!
//! 1. [`store`]: the [`store::Store`] trait, its drivers (in-memory, Redis), and the store operations
//!    the core emits. Every write is a merge by version.
//! 2. [`chord`]: the Chord protocol as a deterministic state machine: ring, fingers, successor
//!    list, stabilize, routing, key handoff. No sockets, threads or clock.
//! 3. [`sim`]: a simulated network that drives many state machines with seeded delays, loss,
//!    crashes, restarts, pauses, partitions, duplication, reordering and clock skew, with
//!    random fault schedules and oracles: the deterministic test bed (and the simulator).
//! 4. [`server`]: the mio event loop that drives one state machine over TCP in production.
//! 5. [`cluster`], which runs a local ring of `chordkv node` processes, on loopback or each
//!    in its own network namespace ([`netns`]: partitions). The `chordkv` command is built on
//!    these and on the `chordkv-client` crate (the blocking client, client-side routing and
//!    the ring walk).
//!
//! Opening a store and running the server fail with the crate's [`Error`] (what failed, on
//! which address or URL, and why).
//!
//! Beside them, [`history`] judges a recorded history of client operations (stale reads,
//! lost writes, resurrected deletes) for the simulation tests and loadgen.

pub mod chord;
pub mod cluster;
pub mod error;
pub mod history;
pub mod netns;
pub mod options;
pub mod rng;
pub mod server;
pub mod sim;
pub mod store;

pub use error::{Error, Result};

pub use chordkv_protocol as protocol;
