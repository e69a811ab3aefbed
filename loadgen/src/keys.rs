//! Key choice: which key index (`0..keys`) each operation touches, per [`Distribution`].
//!
//! Key index i is the key `k<i, zero-padded>` (see [`key_name`]); the ring hashes keys with
//! SHA-1, so neighbouring indices land on unrelated nodes and a popular rank is not a popular
//! node by construction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chordkv_core::rng::Rng;

use crate::workload::{Distribution, DEFAULT_THETA};

/// The key named by index `i`: `k` then `i` zero-padded to `key_bytes` in total.
pub fn key_name(i: u64, key_bytes: usize) -> String {
    format!("k{:0width$}", i, width = key_bytes.saturating_sub(1))
}

pub use chordkv_harness::zipfian::{zeta, Zipfian};

/// What a key is chosen for: under `latest`, a put writes the next new key (`Write`), and
/// gets and deletes touch recent ones (`Read`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Read,
    Write,
}

/// Chooses keys for one thread. Built by [`KeySpace::chooser`].
#[derive(Debug)]
pub struct KeyChooser {
    space: KeySpace,
    /// `sequential`: the next index of this thread.
    next: u64,
}

/// What the threads of a run share for key choice: the distribution, its precomputed
/// zipfian constants, and for `latest` the count of keys written so far.
#[derive(Clone, Debug)]
pub struct KeySpace {
    keys: u64,
    distribution: Distribution,
    zipfian: Option<Arc<Zipfian>>,
    latest: Arc<AtomicU64>,
}

impl KeySpace {
    /// Precomputes what the distribution needs (the zipfian zeta, once).
    pub fn new(keys: u64, distribution: Distribution) -> KeySpace {
        let zipfian = match distribution {
            Distribution::Zipfian { theta } => Some(Arc::new(Zipfian::new(keys, theta))),
            Distribution::Latest => Some(Arc::new(Zipfian::new(keys, DEFAULT_THETA))),
            _ => None,
        };
        KeySpace {
            keys,
            distribution,
            zipfian,
            latest: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// A chooser for thread `thread` of `threads` (sequential threads start evenly spread).
    pub fn chooser(&self, thread: usize, threads: usize) -> KeyChooser {
        let start = (self.keys as u128 * thread as u128 / threads.max(1) as u128) as u64;
        KeyChooser {
            space: self.clone(),
            next: start,
        }
    }
}

impl KeyChooser {
    /// The key index for the next operation.
    pub fn next(&mut self, purpose: Purpose, rng: &mut Rng) -> u64 {
        let keys = self.space.keys;
        match self.space.distribution {
            Distribution::Uniform => rng.below(keys),
            Distribution::Zipfian { .. } => self.zipfian().sample(rng),
            Distribution::Hotspot {
                hot_data_fraction,
                hot_op_fraction,
            } => {
                let hot = ((keys as f64 * hot_data_fraction) as u64).clamp(1, keys);
                if hot == keys || rng.unit() < hot_op_fraction {
                    rng.below(hot)
                } else {
                    hot + rng.below(keys - hot)
                }
            }
            Distribution::Hotkey => 0,
            Distribution::Sequential => {
                let i = self.next;
                self.next = (self.next + 1) % keys;
                i
            }
            Distribution::Latest => match purpose {
                Purpose::Write => self.space.latest.fetch_add(1, Ordering::Relaxed) % keys,
                Purpose::Read => {
                    let written = self.space.latest.load(Ordering::Relaxed).max(1);
                    let back = self.zipfian().sample(rng) % written.min(keys);
                    (written - 1 - back) % keys
                }
            },
        }
    }

    fn zipfian(&self) -> &Zipfian {
        self.space
            .zipfian
            .as_deref()
            .expect("KeySpace::new builds the zipfian for zipfian and latest") // faulty code
    }
}
