//! [`SeenWrites`]: the write hops an owner has served from the network, remembered until
//! their deadlines so that a second delivery of one (a retransmission, a replayed connection)
//! is dropped instead of stamped and applied again (see `Node::first_delivery`).
//!
//! Every write hop from another node passes through it: one membership test and insertion
//! when it arrives, and its memory dropped when its deadline passes. It was a pair of B-trees
//! (by fingerprint, and by `(deadline, fingerprint)` for expiry); at a few hundred thousand
//! writes a second, with a few seconds of deadline, each held hundreds of thousands of entries,
//! and their searches (a cache miss per level) were a tenth of the CPU of 8 nodes under
//! `redis-benchmark -P 16 -t set` (perf, `--replicas 0`). Then a binary heap of deadlines,
//! whose pops (a sift through a heap of a million entries) were still 1.6% of 8 nodes over
//! Redis. Then one hash set of every fingerprint with a list per slot for expiry: the set held
//! every hop of the last 10 s (a few MB a node), so its insert missed the cache twice (control
//! byte and slot) and each expiry's removal once more: 4-5% of 8 nodes' CPU under the same
//! load (perf: 60% of `serve`). Now a hash set per slot of deadlines:
//!
//! ```text
//!   slots   VecDeque<HashSet<u64>>   one set per SLOT_MS of deadlines, oldest first:
//!           [slot s][s+1][s+2] ...   a hop is looked up and recorded in its deadline's set
//!                                    only; a set is cleared whole once its slot has passed
//! ```
//!
//! The fingerprint covers the hop's deadline (the caller hashes it in), so a second delivery
//! has the same deadline and lands in the same set. Hops arriving together carry deadlines
//! close together (now plus the request timeout), so the sets they touch are the few newest,
//! small enough to stay in cache (64 ms of writes), and expiry touches no entry one by one.
//!
//! A fingerprint is remembered at least until its deadline and at most [`SLOT_MS`] longer.
//! Deadlines are after the clock and at most a bounded horizon ahead of it
//! (`Node::deadline_horizon_ms`), so the sets number at most that horizon over [`SLOT_MS`],
//! plus one; an empty one holds no allocation.
//!
//! Nothing iterates the hash sets, so their random hashing keys never reach the node's
//! behaviour: the node stays deterministic (see the crate docs). The memory is one entry per
//! write hop whose deadline has not passed, as before.

use std::collections::{HashSet, VecDeque};

use super::node::Millis;

/// Milliseconds of deadlines per slot (a power of two).
pub const SLOT_MS: u64 = 64;
/// Emptied sets kept for reuse, with their capacity, so a steady stream allocates nothing.
const SPARE_SETS: usize = 4;

/// Fingerprints of served write hops, each until its deadline: see the module docs.
#[derive(Debug, Default)]
pub struct SeenWrites {
    /// `slots[i]`: the fingerprints whose deadlines fall in slot `first_slot + i`.
    slots: VecDeque<HashSet<u64>>,
    first_slot: u64,
    spare: Vec<HashSet<u64>>,
}

impl SeenWrites {
    /// Forgets every fingerprint whose deadline is before `now` (ms on the node's clock), in
    /// whole slots: those of slots that ended at or before `now`.
    pub fn expire(&mut self, now: Millis) {
        while !self.slots.is_empty() && self.first_slot.saturating_add(1).saturating_mul(SLOT_MS) <= now {
            let mut set = self.slots.pop_front().expect("not empty");
            self.first_slot += 1;
            if set.capacity() > 0 && self.spare.len() < SPARE_SETS {
                set.clear();
                self.spare.push(set);
            }
        }
    }

    /// Records `fp`, remembered until `deadline` (ms); false when it is remembered already (a
    /// second delivery). `fp` must cover `deadline` (a second delivery has the same deadline,
    /// so it is found in the same slot). The slots between the oldest and the newest deadline
    /// remembered are kept, so the caller bounds how far apart deadlines are: `serve` takes
    /// only deadlines after its clock and at most a horizon ahead of it.
    pub fn first(&mut self, fp: u64, deadline: Millis) -> bool {
        let slot = deadline / SLOT_MS;
        if self.slots.is_empty() {
            self.first_slot = slot;
        }
        // A deadline before the oldest slot gets a slot of its own in front: joining the
        // oldest would keep it as long as that slot (up to the whole horizon, after one hop
        // with a long deadline arrived first).
        while slot < self.first_slot {
            self.slots.push_front(HashSet::new());
            self.first_slot -= 1;
        }
        let i = (slot - self.first_slot) as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, HashSet::new);
        }
        let set = &mut self.slots[i];
        if set.capacity() == 0 {
            if let Some(spare) = self.spare.pop() {
                *set = spare;
            }
        }
        set.insert(fp)
    }

    /// Fingerprints remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.iter().map(HashSet::len).sum()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_is_remembered_until_its_deadline_whatever_the_order_of_arrival() {
        let mut seen = SeenWrites::default();
        assert!(seen.first(1, 300));
        assert!(seen.first(2, 100));
        assert!(seen.first(3, 200));
        assert!(!seen.first(2, 100), "a second delivery");
        seen.expire(100);
        assert_eq!(seen.len(), 3, "a deadline is still open at its own millisecond");
        // Each in its slot: 100 in 64..128, 200 in 192..256, 300 in 256..320.
        seen.expire(127);
        assert_eq!(seen.len(), 3, "kept to the end of its slot, never shorter");
        seen.expire(128);
        assert_eq!(seen.len(), 2);
        seen.expire(256);
        assert_eq!(seen.len(), 1);
        seen.expire(320);
        assert!(seen.is_empty());
        assert!(seen.first(2, 400), "after its deadline, it is forgotten");
        assert!(seen.first(4, 4 * SLOT_MS + 1));
        assert!(seen.first(5, 9 * SLOT_MS));
        seen.expire(5 * SLOT_MS);
        assert_eq!(seen.len(), 2, "slot 4 passed");
        assert!(!seen.first(2, 400));
        seen.expire(7 * SLOT_MS);
        assert_eq!(seen.len(), 1, "slot 6 passed");
        seen.expire(10 * SLOT_MS);
        assert!(seen.is_empty());
    }

    /// A hop with a long deadline arriving first (a client's 120 s) does not keep the
    /// short-deadline hops after it for as long as itself. (From a review: it did, when a
    /// deadline before the oldest slot joined that slot.)
    #[test]
    fn a_long_deadline_first_does_not_hold_the_shorter_ones_after_it() {
        let mut seen = SeenWrites::default();
        assert!(seen.first(1, 1_000 + 120_000));
        for fp in 2..1_000 {
            assert!(seen.first(fp, 1_000 + 1_000));
        }
        seen.expire(1_000 + 1_000 + SLOT_MS);
        assert_eq!(
            seen.len(),
            1,
            "the short ones are forgotten once their slot passed"
        );
        assert!(!seen.first(1, 1_000 + 120_000));
        seen.expire(1_000 + 120_000 + SLOT_MS);
        assert!(seen.is_empty());
    }
}

/// The cost of a steady stream of write hops: 5,000,000 at 200 a millisecond with deadlines 5 s
/// ahead (a million remembered at once), each expiring what passed and recording itself. A
/// measurement, not a test: `cargo test --release -p chordkv-core seen_writes_stream --
/// --ignored --nocapture`.
#[cfg(test)]
mod probe {
    #[test]
    #[ignore]
    fn seen_writes_stream() {
        let mut seen = super::SeenWrites::default();
        let mut rng = crate::rng::Rng::new(3);
        let n = 5_000_000u64;
        let t = std::time::Instant::now();
        for i in 0..n {
            let now = i / 200;
            seen.expire(now);
            // Deadlines a little out of order, as hops from several senders arrive.
            assert!(seen.first(rng.next_u64(), now + 5_000 + rng.below(50)));
        }
        println!(
            "seen_writes_stream: {:.1} ns per write hop",
            t.elapsed().as_nanos() as f64 / n as f64
        );
    }
}
