//! Helpers shared by the simulation test files.
#![allow(dead_code)]

use std::collections::BTreeMap;

use bytes::Bytes;
use chordkv_core::rng::Rng;
use chordkv_harness::sim::Sim;
use chordkv_protocol::{Id, Message};

pub const STABILIZE_MS: u64 = 100;

/// Builds a ring by sequential joins, each through a random live node, and waits for it to be
/// consistent.
pub fn build_ring(s: &mut Sim, n: usize, rng: &mut Rng) {
    s.add_first();
    for _ in 1..n {
        let alive = s.alive();
        let via = alive[rng.below(alive.len() as u64) as usize];
        s.add_joining(via);
        s.run_for(2 * STABILIZE_MS);
    }
    assert!(
        s.run_until_consistent(STABILIZE_MS, 120_000),
        "ring did not converge: {:?}",
        s.ring_problem()
    );
}

/// The seeds to run: `SIM_SEEDS=1-200` (a range) overrides the defaults for a wider search.
/// Sends a client `PUT key value` through node `via` without waiting for the reply: the
/// reply's handle, the key and the value, as the tests' in-flight lists keep them.
pub fn send_put(s: &mut Sim, via: usize, key: String, value: String) -> (u64, String, String) {
    let msg = Message::Put {
        key: Bytes::from(key.clone()),
        value: Bytes::from(value.clone()),
    };
    (s.client_request(via, msg), key, value)
}

pub fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("SIM_SEEDS") {
        Ok(r) => {
            let (a, b) = r.split_once('-').unwrap_or((&r, &r));
            (a.parse().expect("SIM_SEEDS=A-B")..=b.parse().expect("SIM_SEEDS=A-B")).collect()
        }
        Err(_) => default.to_vec(),
    }
}

pub fn value_of(reply: &Option<Message>) -> Option<Bytes> {
    match reply {
        Some(Message::GetReply { value, .. }) => value.clone(),
        other => panic!("expected a GET reply, got {other:?}"),
    }
}

/// The state of the acknowledged writes: per key, the highest acknowledged version and value.
#[derive(Default)]
pub struct Acked(pub BTreeMap<String, (u64, String)>);

impl Acked {
    pub fn record(&mut self, key: &str, value: &str, reply: Option<Message>) {
        if let Some(Message::PutReply { version, .. }) = reply {
            let e = self.0.entry(key.to_string()).or_insert((0, String::new()));
            if version > e.0 {
                *e = (version, value.to_string());
            }
        }
    }
}

impl Acked {
    /// Reads every acknowledged key back through the live nodes in turn and panics unless each
    /// has its acknowledged value or a newer version (Jepsen's "lost" accounting).
    pub fn verify(&self, s: &mut Sim, seed: u64) {
        let alive = s.alive();
        for (i, (key, (version, value))) in self.0.iter().enumerate() {
            match s.get(alive[i % alive.len()], key) {
                Some(Message::GetReply {
                    version: got,
                    value: Some(v),
                    ..
                }) => {
                    assert!(
                        got >= *version,
                        "seed {seed}: {key} went back from version {version} to {got}"
                    );
                    if got == *version {
                        assert_eq!(v, Bytes::from(value.clone()), "seed {seed}: {key}");
                    }
                }
                other => {
                    let holders: Vec<usize> = alive
                        .iter()
                        .copied()
                        .filter(|&n| s.holds(n, key.as_bytes()).is_some())
                        .collect();
                    let owner = s.owner_of(&Id::of_key(key.as_bytes())).map(|o| o.addr);
                    panic!("seed {seed}: acknowledged write of {key} (v{version}) lost: {other:?}; holders {holders:?}, owner {owner:?}")
                }
            }
        }
    }
}
