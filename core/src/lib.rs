//! # chordkv-core
//!
//! The deterministic heart of a chordkv node, with no I/O: `cargo tree -p chordkv-core` shows
//! neither mio nor redis, and nothing here opens a socket, starts a thread or reads a clock.
//!
//! - [`chord`]: the Chord protocol (SIGCOMM'01 sections 4-5, with replication, leases,
//!   handoff and anti-entropy) as a state machine: inputs with the current time in, outputs
//!   (messages, replies, store operations) out. The server crate drives it over TCP, the
//!   harness crate's simulator over a simulated network.
//! - [`store`]: the [`store::Store`] trait every driver implements, the store operations the
//!   core emits ([`store::StoreOp`]) and the one function that runs them ([`store::execute`]),
//!   the in-memory driver, and range digests for anti-entropy. Every write is a merge by version.
//! - [`options`]: a node's tunables, declared once for the command line and YAML, and checked
//!   together into a [`chord::Config`].
//! - [`rng`]: the seeded PRNG of the core, the simulator and loadgen.
//! - [`tokens`]: ring positions for virtual nodes: random ones (Chord section 6.9), ones
//!   allocated to even out each host's share of the ring, and the shares themselves.
//!
//! Failures are the crate's one [`Error`]: a store operation that failed (the `Store`
//! contract calls it [`store::StoreError`]) or options that cannot run together.

pub mod chord;
pub mod command;
pub mod error;
pub mod options;
pub mod rng;
pub mod store;
pub mod tokens;

pub use error::{Error, Result};
