//! # loadgen
//!
//! chordkv's load generator: replays a YAML workload against a cluster (one it starts
//! locally, or one given by address), measures latency with HdrHistogram, and checks every
//! acknowledged write at the end. Layers, bottom-up:
//!
//! 1. [`workload`]: the workload file (serde, YAML), its defaults and checks.
//! 2. [`keys`]: key choice per distribution (uniform, YCSB zipfian, hotspot, hot key,
//!    sequential, latest).
//! 3. [`verify`]: Jepsen set-checker accounting (acknowledged, lost, unexpected, recovered);
//!    [`oplog`]: every operation's times and write, for the real-time checker
//!    ([`chordkv_harness::history`]: stale reads, resurrected deletes).
//! 4. [`hgrm`] and [`report`]: the files a run writes (`summary.json`, `.hgrm`,
//!    `timeline.csv`); [`plot`]: `latency.svg` and `timeline.svg`.
//! 5. [`faults`]: failure injection (the `faults:` schedule, partitions included) and the
//!    live entry nodes.
//! 6. [`run`]: the cluster, the load threads (closed or open loop), the verification;
//!    [`remote`]: faults on a cluster deployed over ssh (`--inventory`, deploy/cluster.sh).
//! 7. [`sweep`]: the data-loss experiment (a workload with `sweep:`): kill f of n nodes at
//!    once for each replica count N, and compare the keys lost with C(f, N+1) / C(n, N+1);
//!    [`kill_rate`]: one kill every T seconds; [`fault_sweep`]: one partition or pause of
//!    length L, for each ack and partition policy (lost writes and stale reads).

pub mod ceiling;
pub mod error;
pub mod fault_sweep;
pub mod faults;
pub mod hgrm;
pub mod interrupt;
pub mod keys;
pub mod kill_rate;
pub mod oplog;
pub mod plot;
pub mod progress;
pub mod remote;
pub mod report;
pub mod run;
pub mod sweep;
pub mod verify;
pub mod workload;

pub use error::{Error, Result};
