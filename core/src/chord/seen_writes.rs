//! [`SeenWrites`]: the write hops an owner has served from the network, remembered until
//! their deadlines so that a second delivery of one (a retransmission, a replayed connection)
//! is dropped instead of stamped and applied again (see `Node::first_delivery`).
//!
//! Every write hop from another node passes through it: one membership test and insertion
//! when it arrives, one removal when its deadline passes. It was a pair of B-trees (by
//! fingerprint, and by `(deadline, fingerprint)` for expiry); at a few hundred thousand writes a
//! second, with a few seconds of deadline, each held hundreds of thousands of entries, and their
//! searches (a cache miss per level) were a tenth of the CPU of 8 nodes under
//! `redis-benchmark -P 16 -t set` (perf, `--replicas 0`). Then a binary heap of deadlines,
//! whose pops (a sift through a heap of a million entries) were still 1.6% of 8 nodes over
//! Redis. Now:
//!
//! ```text
//!   fingerprints   HashSet<u64>               membership: O(1), 8 bytes and a control byte
//!   expiry         VecDeque<Vec<u64>>         one bucket per SLOT_MS of deadlines, oldest first:
//!                  [slot s][s+1][s+2] ...     a bucket is dropped whole once its slot has
//!                                             passed; 8 bytes per entry, appended in order
//! ```
//!
//! A fingerprint is remembered at least until its deadline and at most [`SLOT_MS`] longer (a
//! hop whose deadline is before the oldest bucket's slot gets buckets in front). Deadlines are
//! after the clock and at most a bounded horizon ahead of it (`Node::deadline_horizon_ms`), so
//! the buckets number at most that horizon over [`SLOT_MS`], plus one.
//!
//! Nothing iterates the hash set, so its random hashing keys never reach the node's behaviour:
//! the node stays deterministic (see the crate docs). The memory is one entry per write hop
//! whose deadline has not passed, as before.

use std::collections::{HashSet, VecDeque};

use super::node::Millis;

/// Milliseconds of deadlines per expiry bucket (a power of two).
pub const SLOT_MS: u64 = 64;

/// Fingerprints of served write hops, each until its deadline: see the module docs.
#[derive(Debug, Default)]
pub struct SeenWrites {
    fingerprints: HashSet<u64>,
    /// `expiry[i]`: the fingerprints whose deadlines fall in slot `first_slot + i`.
    expiry: VecDeque<Vec<u64>>,
    first_slot: u64,
    /// Emptied buckets kept for reuse (a few), so a steady stream allocates nothing.
    spare: Vec<Vec<u64>>,
}

impl SeenWrites {
    /// Forgets every fingerprint whose deadline is before `now` (ms on the node's clock), in
    /// whole slots: those of slots that ended at or before `now`.
    pub fn expire(&mut self, now: Millis) {
        while !self.expiry.is_empty() && self.first_slot.saturating_add(1).saturating_mul(SLOT_MS) <= now {
            let mut bucket = self.expiry.pop_front().expect("not empty");
            self.first_slot += 1;
            for fp in bucket.drain(..) {
                self.fingerprints.remove(&fp);
            }
            if self.spare.len() < 4 {
                self.spare.push(bucket);
            }
        }
    }

    /// Records `fp`, remembered until `deadline` (ms); false when it is remembered already (a
    /// second delivery). The slots between the oldest and the newest deadline remembered are
    /// kept, so the caller bounds how far apart deadlines are: `serve` takes only deadlines
    /// after its clock and at most a horizon ahead of it.
    pub fn first(&mut self, fp: u64, deadline: Millis) -> bool {
        if !self.fingerprints.insert(fp) {
            return false;
        }
        let slot = deadline / SLOT_MS;
        if self.expiry.is_empty() {
            self.first_slot = slot;
        }
        // A deadline before the oldest slot gets a slot of its own in front: joining the
        // oldest would keep it as long as that slot (up to the whole horizon, after one hop
        // with a long deadline arrived first).
        while slot < self.first_slot {
            let bucket = self.spare.pop().unwrap_or_default();
            self.expiry.push_front(bucket);
            self.first_slot -= 1;
        }
        let i = (slot - self.first_slot) as usize;
        while self.expiry.len() <= i {
            let bucket = self.spare.pop().unwrap_or_default();
            self.expiry.push_back(bucket);
        }
        self.expiry[i].push(fp);
        true
    }
    /// Fingerprints remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.fingerprints.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty()
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
        assert!(!seen.first(2, 900), "a second delivery");
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
