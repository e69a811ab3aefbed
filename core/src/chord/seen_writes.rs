//! [`SeenWrites`]: the write hops an owner has served from the network, remembered until
//! their deadlines so that a second delivery of one (a retransmission, a replayed connection)
//! is dropped instead of stamped and applied again (see `Node::first_delivery`).
//!
//! Every write hop from another node passes through it: one membership test and insertion
//! when it arrives, one removal when its deadline passes. It was a pair of B-trees (by
//! fingerprint, and by `(deadline, fingerprint)` for expiry); at a few hundred thousand writes a
//! second, with a few seconds of deadline, each held hundreds of thousands of entries, and their
//! searches (a cache miss per level) were a tenth of the CPU of 8 nodes under
//! `redis-benchmark -P 16 -t set` (perf, `--replicas 0`). Now:
//!
//! ```text
//!   fingerprints   HashSet<u64>                       membership: O(1), 8 bytes and a control
//!                                                     byte per entry
//!   expiry         BinaryHeap<Reverse<(deadline, fp)>>  the earliest deadline on top: 16 bytes
//!                                                     per entry in one array; hops arrive with
//!                                                     deadlines that mostly increase, so a push
//!                                                     rarely climbs
//! ```
//!
//! Nothing iterates the hash set, so its random hashing keys never reach the node's behaviour:
//! the node stays deterministic (see the crate docs). The memory is one entry per write hop
//! whose deadline has not passed, as before.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use super::node::Millis;

/// Fingerprints of served write hops, each until its deadline: see the module docs.
#[derive(Debug, Default)]
pub struct SeenWrites {
    fingerprints: HashSet<u64>,
    expiry: BinaryHeap<Reverse<(Millis, u64)>>,
}

impl SeenWrites {
    /// Forgets every fingerprint whose deadline is before `now` (ms on the node's clock).
    pub fn expire(&mut self, now: Millis) {
        while let Some(&Reverse((deadline, fp))) = self.expiry.peek() {
            if deadline >= now {
                break;
            }
            self.expiry.pop();
            self.fingerprints.remove(&fp);
        }
    }

    /// Records `fp`, remembered until `deadline` (ms); false when it is remembered already (a
    /// second delivery).
    pub fn first(&mut self, fp: u64, deadline: Millis) -> bool {
        if !self.fingerprints.insert(fp) {
            return false;
        }
        self.expiry.push(Reverse((deadline, fp)));
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
        seen.expire(101);
        assert_eq!(seen.len(), 2);
        assert!(
            seen.first(2, 400),
            "after its deadline, the fingerprint is forgotten"
        );
        assert!(!seen.first(3, 400));
        seen.expire(10_000);
        assert!(seen.is_empty());
    }
}
