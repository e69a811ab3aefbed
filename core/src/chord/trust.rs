//! Trusted copies: whether this node's copy of a range holds every write it acknowledged.
//!
//! Under the partition policy `consistent` a write is acknowledged once a majority `W` of the
//! range's preference list (`n` members) stored it, and a holder that gains a lease catches up
//! from the other copies before it serves (`lease.rs`). That is enough while every copy keeps
//! what it stored. A node whose store comes back empty (a memory store after a restart, a
//! Redis restarted without persistence) no longer holds writes it acknowledged: its copy is
//! *untrusted*, and it says so in every anti-entropy answer (`SYNC_DIGESTS_REPLY.trusted`).
//!
//! A catch-up is complete when the trusted copies it heard from are enough to meet every write
//! that may have been acknowledged: with `U` the copies known untrusted (answers that said so,
//! and ours if it is), a write's surviving holders can hide in any `W - |U|` of the others, so
//!
//! ```text
//!   trusted answers (ours included) >= n - max(W - 1, |U|)
//! ```
//!
//! (`n - W + 1` while at most `W - 1` copies are untrusted, as in a quorum read; every trusted
//! copy otherwise). Without this, a primary and a replica restarted empty one after the other
//! made a majority that had lost a write the third copy held, and the primary served reads
//! without it (long-mode seeds 103 and 29 others, `tests/faults.rs`).
//!
//! A copy becomes trusted again for a range when a holder with a caught-up lease compares
//! digests with it, having taken them after the loss (`SYNC_DIGESTS.holder_ms`, more than
//! `max_clock_offset_ms` after the loss on our clock, so a late or duplicated request from
//! before the loss does not count), and every digest matches: it then holds everything the
//! holder held. A holder whose own catch-up completes trusts its own copy of the range. A node
//! that creates a new ring, joins one for the first time (it acknowledged nothing yet), or
//! restarts on a store that kept its data, is trusted; a member the ring still lists that
//! restarts on an empty store is not (`rejoin_as_member`).

use chordkv_protocol::Id;

use super::node::Millis;

/// Most ranges remembered as refilled after a loss (a node is in the preference lists of its
/// own range and of `replicas` predecessors' ranges; ring changes add a few more).
const MAX_REFILLED: usize = 64;

/// Whether this node's copies hold every write it acknowledged, by range.
#[derive(Debug, Default)]
pub(super) struct Trust {
    /// When the store lost its copies (our clock, ms); `None`: never since the node started,
    /// or every range it keeps was refilled since.
    lost_at: Option<Millis>,
    /// Ranges `(start, end]` refilled since the loss, oldest first.
    refilled: Vec<(Id, Id)>,
}

impl Trust {
    /// The store lost what it held at `now` (or may have: it opened empty).
    pub fn lose(&mut self, now: Millis) {
        self.lost_at = Some(now);
        self.refilled.clear();
    }

    /// When the copies were lost, if they are not all refilled yet.
    pub fn lost_at(&self) -> Option<Millis> {
        self.lost_at
    }

    /// Whether our copy of `(start, end]` holds every write we acknowledged.
    pub fn trusts(&self, start: &Id, end: &Id) -> bool {
        self.lost_at.is_none() || self.refilled.iter().any(|(a, b)| contains(a, b, start, end))
    }

    /// Our copy of `(start, end]` holds every acknowledged write again.
    pub fn refilled(&mut self, start: Id, end: Id) {
        if self.trusts(&start, &end) {
            return;
        }
        self.refilled.retain(|(a, b)| !contains(&start, &end, a, b));
        if self.refilled.len() == MAX_REFILLED {
            self.refilled.remove(0);
        }
        self.refilled.push((start, end));
    }

    /// Forgets the loss once every range in `keep` (the ranges this node keeps copies of) is
    /// refilled.
    pub fn settle(&mut self, keep: &[(Id, Id)]) {
        if self.lost_at.is_some() && keep.iter().all(|(s, e)| self.trusts(s, e)) {
            self.lost_at = None;
            self.refilled.clear();
        }
    }
}

/// Trusted answers a catch-up needs among `copies` (the preference list's length, `n`) when
/// `untrusted` copies (`|U|`, ours included) are known to have lost theirs:
/// `n - max(W - 1, |U|)`, with `W` the write quorum, a majority.
pub(super) fn catch_up_quorum(copies: usize, untrusted: usize) -> usize {
    let w = copies / 2 + 1;
    copies.saturating_sub((w - 1).max(untrusted))
}

/// Whether the ring range `(a, b]` contains `(s, e]` (`a == b`, or `s == e`: the whole ring).
fn contains(a: &Id, b: &Id, s: &Id, e: &Id) -> bool {
    if a == b {
        return true;
    }
    if s == e {
        return false;
    }
    let (ds, de, db) = (a.distance_to(s), a.distance_to(e), a.distance_to(b));
    ds < de && de <= db
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(v: u64) -> Id {
        Id::from_u64(v)
    }

    #[test]
    fn catch_up_needs_enough_trusted_copies_to_meet_every_write_quorum() {
        // Three copies, W = 2: two trusted answers while at most one copy is untrusted ...
        assert_eq!(catch_up_quorum(3, 0), 2);
        assert_eq!(catch_up_quorum(3, 1), 2);
        // ... and the one trusted copy left when two lost theirs (seed 103's case).
        assert_eq!(catch_up_quorum(3, 2), 1);
        assert_eq!(catch_up_quorum(3, 3), 0);
        // Two copies, W = 2: either trusted copy holds every acknowledged write.
        assert_eq!(catch_up_quorum(2, 0), 1);
        assert_eq!(catch_up_quorum(2, 1), 1);
        // One copy: our own, if trusted.
        assert_eq!(catch_up_quorum(1, 0), 1);
        // Five copies, W = 3: three trusted answers until three copies lost theirs.
        assert_eq!(catch_up_quorum(5, 2), 3);
        assert_eq!(catch_up_quorum(5, 3), 2);
    }

    #[test]
    fn containment_on_the_circle() {
        assert!(contains(&id(10), &id(20), &id(10), &id(20)));
        assert!(contains(&id(10), &id(20), &id(12), &id(15)));
        assert!(!contains(&id(10), &id(20), &id(5), &id(15)));
        assert!(!contains(&id(10), &id(20), &id(15), &id(25)));
        assert!(!contains(&id(10), &id(20), &id(20), &id(10)));
        // Wrapping ranges.
        assert!(contains(&id(20), &id(10), &id(30), &id(5)));
        assert!(!contains(&id(20), &id(10), &id(5), &id(30)));
        // The whole ring contains everything and only it contains the whole ring.
        assert!(contains(&id(7), &id(7), &id(1), &id(3)));
        assert!(!contains(&id(1), &id(3), &id(7), &id(7)));
    }

    #[test]
    fn lost_copies_are_untrusted_until_refilled_then_settle() {
        let mut t = Trust::default();
        assert!(t.trusts(&id(1), &id(2)));
        t.lose(100);
        assert_eq!(t.lost_at(), Some(100));
        assert!(!t.trusts(&id(10), &id(20)));
        t.refilled(id(10), id(20));
        assert!(t.trusts(&id(10), &id(20)) && t.trusts(&id(12), &id(18)));
        assert!(!t.trusts(&id(5), &id(20)));
        t.settle(&[(id(10), id(20)), (id(5), id(10))]);
        assert_eq!(t.lost_at(), Some(100));
        t.refilled(id(5), id(10));
        t.settle(&[(id(10), id(20)), (id(5), id(10))]);
        assert_eq!(t.lost_at(), None);
        assert!(t.trusts(&id(0), &id(1)));
    }

    #[test]
    fn refilled_ranges_stay_bounded() {
        let mut t = Trust::default();
        t.lose(0);
        for i in 0..1000 {
            t.refilled(id(2 * i), id(2 * i + 1));
        }
        assert_eq!(t.refilled.len(), MAX_REFILLED);
        assert!(t.trusts(&id(1998), &id(1999)));
    }
}
