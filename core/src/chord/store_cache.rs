//! The answers to a host's read-only range ops (digests, counts), kept while its store does not
//! change, so that an idle node does not scan its whole store again and again.
//!
//! Anti-entropy asks for the digests of each vnode's range every round (`sync.rs`), and the
//! counters ask for key counts every stats refresh: each is a scan of every key in the range.
//! With the Redis driver a scan is a round trip per batch and work on the server, and the
//! digests hash every key again (the memory driver pays the hashing), so an idle 8-node ring of
//! 100,000 keys with 2 replicas kept one of its 2 cores about a third busy. Between two rounds
//! in which nothing was written the answers are the same: this cache gives them again.
//!
//! ```text
//!   op issued  ── write? ──► writes in flight + 1
//!              ── cacheable and kept at the current generation, no write in flight? ──► answer
//!              ── cacheable ──► remember (op, generation at issue)
//!   op done    ── write: in flight - 1; it changed something (or failed) ──► generation + 1
//!              ── failed (any op: a lost store, an unreachable one) ──► generation + 1
//!              ── cacheable, still the generation at issue ──► keep the answer
//! ```
//!
//! An answer is kept only if no write finished with a change between its op's issue and its
//! answer, and given again only while no write is in flight and none has changed the store
//! since: a write that ran alongside the scan either changed nothing or moved the generation
//! before the answer could be given. Writes are told apart by the op (every op that is not
//! read-only counts, whatever it is); one that changes nothing (a merge of an older version, a
//! tombstone collection that found none) keeps the answers. Errors clear every answer: a
//! store that lost its data reports it as an error first (`StoreError::Lost`). The store is
//! written only through its host's ops (a node's store is its own; the Redis driver keeps one
//! namespace per node and vnode), which is what makes the generation enough.
//!
//! Kept per vnode (the driver keeps one store partition per vnode) and op: digests
//! (`StoreOp::Digest`), range counts when no counted key has an expiry still ahead (their
//! remaining-life sums change with the clock); and two
//! collections an idle node repeats, when they found nothing: a clean anti-entropy round's
//! `CollectTombstones` that found no tombstone at all in its range (whatever its `before`, a
//! later one finds none either) and the stray-copy collection's `RetainRanges` that removed
//! nothing (with the same ranges to keep, it would remove nothing again). At most
//! [`MAX_ENTRIES`]; past it the cache starts again empty.
//!
//! An answer is given for at most `max_age_ms` after its op was issued (the host's: four
//! anti-entropy intervals): a store can lose its data without a write of ours (a Redis
//! restarted empty), which the next op that reaches it reports (`StoreError::Lost`), and the
//! cache must not stand for every such op of an idle node for long. A node whose Redis lost its
//! data while nothing reached it is found out within that age and an anti-entropy round
//! (before the cache: within a round), or at once by a client's request; `Count` and `Size`
//! (cheap, and what `GET_INFO`/`GET_STATS` ask first) are never cached.

use std::collections::BTreeMap;

use chordkv_protocol::Id;

use super::node::{Millis, StoreOpId};
use crate::store::{StoreError, StoreOp, StoreOutcome};

/// Answers kept at most (a vnode's round asks for its range's digests and for those of the
/// differing sub-ranges; a few per vnode).
pub const MAX_ENTRIES: usize = 1024;

/// What a cacheable op asks for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Digest {
        vnode: u16,
        start: Id,
        end: Id,
        parts: u32,
    },
    RangeCounts {
        vnode: u16,
        start: Id,
        end: Id,
    },
    CollectTombstones {
        vnode: u16,
        start: Id,
        end: Id,
    },
    RetainRanges {
        vnode: u16,
        keep: Vec<(Id, Id)>,
    },
}

/// Whether `op` may change the store (every op that is not known to only read counts), and
/// what it asks for when its answer may be kept: one match for both, on every store op.
fn classify(vnode: u16, op: &StoreOp) -> (bool, Option<Key>) {
    match op {
        StoreOp::Get { .. }
        | StoreOp::Scan { .. }
        | StoreOp::Count
        | StoreOp::Size
        | StoreOp::CountRange { .. }
        | StoreOp::KeyVersions { .. }
        | StoreOp::GetMany { .. } => (false, None),
        StoreOp::Put { .. } | StoreOp::PutMany { .. } | StoreOp::RemoveMany { .. } => (true, None),
        StoreOp::Digest { start, end, parts } => (
            false,
            Some(Key::Digest {
                vnode,
                start: *start,
                end: *end,
                parts: *parts,
            }),
        ),
        StoreOp::RangeCounts { start, end, .. } => (
            false,
            Some(Key::RangeCounts {
                vnode,
                start: *start,
                end: *end,
            }),
        ),
        StoreOp::CollectTombstones { start, end, .. } => (
            true,
            Some(Key::CollectTombstones {
                vnode,
                start: *start,
                end: *end,
            }),
        ),
        StoreOp::RetainRanges { keep } => (
            true,
            Some(Key::RetainRanges {
                vnode,
                keep: keep.clone(),
            }),
        ),
    }
}

/// Whether a write's outcome says it changed the store (anything unexpected counts).
fn changed(outcome: &StoreOutcome) -> bool {
    match outcome {
        StoreOutcome::Put(p) => p.applied,
        StoreOutcome::PutMany { applied } => *applied > 0,
        StoreOutcome::Removed(n) => *n > 0,
        StoreOutcome::Collected { removed, .. } => *removed > 0,
        _ => true,
    }
}

/// See the module docs.
#[derive(Debug)]
pub(super) struct StoreCache {
    max_age_ms: Millis,
    /// Moves on every finished write that changed the store and on every failed op.
    generation: u64,
    writes_in_flight: usize,
    /// Cacheable ops in flight (by the host's store op id), with the generation at issue (the
    /// collections among them count as writes as well).
    pending: BTreeMap<StoreOpId, (Key, u64, Millis)>,
    /// Answers with their generation and their op's issue time.
    entries: BTreeMap<Key, (u64, Millis, StoreOutcome)>,
}

impl StoreCache {
    /// An empty cache whose answers are given for `max_age_ms` after their op was issued.
    pub fn new(max_age_ms: Millis) -> StoreCache {
        StoreCache {
            max_age_ms,
            generation: 0,
            writes_in_flight: 0,
            pending: BTreeMap::new(),
            entries: BTreeMap::new(),
        }
    }

    /// `op` of `vnode` at `now`: its kept answer (`Err`), or the id it goes to the store as
    /// (`Ok`), which `id_of(write)` makes (`write`: the op may change the store).
    pub fn submit(
        &mut self,
        vnode: u16,
        op: &StoreOp,
        now: Millis,
        id_of: impl FnOnce(bool) -> StoreOpId,
    ) -> Result<StoreOpId, StoreOutcome> {
        let (write, key) = classify(vnode, op);
        if let Some(outcome) = key.as_ref().and_then(|k| self.kept(k, now)) {
            return Err(outcome);
        }
        let id = id_of(write);
        self.issue(id, write, key, now);
        Ok(id)
    }

    /// The kept answer for `key`, if it is still the store's at `now`.
    fn kept(&self, key: &Key, now: Millis) -> Option<StoreOutcome> {
        if self.writes_in_flight > 0 || self.entries.is_empty() {
            return None;
        }
        match self.entries.get(key) {
            Some((generation, at, outcome))
                if *generation == self.generation && now < at.saturating_add(self.max_age_ms) =>
            {
                Some(outcome.clone())
            }
            _ => None,
        }
    }

    fn issue(&mut self, id: StoreOpId, write: bool, key: Option<Key>, now: Millis) {
        if write {
            self.writes_in_flight += 1;
        }
        if let Some(key) = key {
            self.pending.insert(id, (key, self.generation, now));
        }
    }

    /// [`StoreCache::kept`] for `op` of `vnode`, without submitting it.
    #[cfg(test)]
    fn lookup(&self, vnode: u16, op: &StoreOp, now: Millis) -> Option<StoreOutcome> {
        classify(vnode, op).1.and_then(|k| self.kept(&k, now))
    }

    /// [`StoreCache::submit`]'s bookkeeping for `op` sent as `id`, with `write` given.
    #[cfg(test)]
    fn issued(&mut self, id: StoreOpId, vnode: u16, op: &StoreOp, write: bool, now: Millis) {
        self.issue(id, write, classify(vnode, op).1, now);
    }

    /// The op `id` finished (`write` as it was issued).
    pub fn finished(&mut self, id: StoreOpId, write: bool, result: &Result<StoreOutcome, StoreError>) {
        if write {
            self.writes_in_flight = self.writes_in_flight.saturating_sub(1);
        }
        // Most ops (gets, puts) are not cacheable: no lookup when none is pending.
        let pending = if self.pending.is_empty() {
            None
        } else {
            self.pending.remove(&id)
        };
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(_) => {
                self.clear();
                return;
            }
        };
        if write && changed(outcome) {
            self.generation += 1;
            return;
        }
        let Some((key, generation, at)) = pending else {
            return;
        };
        let keep = match outcome {
            StoreOutcome::RangeCounts(c) => c.expiring == 0,
            StoreOutcome::Collected { removed, younger } => *removed == 0 && *younger == 0,
            StoreOutcome::Removed(n) => *n == 0,
            _ => true,
        };
        if keep && generation == self.generation {
            if self.entries.len() >= MAX_ENTRIES {
                self.entries.clear();
            }
            self.entries.insert(key, (generation, at, outcome.clone()));
        }
    }

    /// The store changed outside the ops the cache saw (a vnode's write to its inline store):
    /// no answer kept before is given again.
    pub fn changed(&mut self) {
        self.generation += 1;
    }

    /// Forgets every answer.
    fn clear(&mut self) {
        self.generation += 1;
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digests(part: u64) -> StoreOutcome {
        StoreOutcome::Digest(crate::store::digest::RangeDigests {
            parts: vec![part],
            oldest_tombstone: None,
        })
    }
    use crate::store::{PutOutcome, RangeCounts};

    fn digest() -> StoreOp {
        StoreOp::Digest {
            start: Id::from_u64(1),
            end: Id::from_u64(9),
            parts: 4,
        }
    }

    fn put(applied: bool) -> Result<StoreOutcome, StoreError> {
        Ok(StoreOutcome::Put(PutOutcome {
            applied,
            previous_live: false,
            previous_expires_at: 0,
        }))
    }

    fn answer(c: &mut StoreCache, id: StoreOpId, vnode: u16, op: &StoreOp, value: u64) {
        assert_eq!(c.lookup(vnode, op, 0), None);
        c.issued(id, vnode, op, false, 0);
        c.finished(id, false, &Ok(digests(value)));
    }

    #[test]
    fn a_digest_is_given_again_until_a_write_changes_the_store() {
        let mut c = StoreCache::new(1_000);
        answer(&mut c, 1, 0, &digest(), 7);
        assert_eq!(c.lookup(0, &digest(), 0), Some(digests(7)));
        // Another vnode's partition, another range: not kept.
        assert_eq!(c.lookup(1, &digest(), 0), None);
        // A write that changed nothing keeps it; one in flight hides it.
        c.issued(2, 0, &StoreOp::PutMany { items: vec![] }, true, 0);
        assert_eq!(c.lookup(0, &digest(), 0), None);
        c.finished(2, true, &put(false));
        assert_eq!(c.lookup(0, &digest(), 0), Some(digests(7)));
        c.issued(3, 0, &StoreOp::PutMany { items: vec![] }, true, 0);
        c.finished(3, true, &put(true));
        assert_eq!(c.lookup(0, &digest(), 0), None);
    }

    #[test]
    fn an_answer_a_write_may_have_raced_is_not_kept() {
        let mut c = StoreCache::new(1_000);
        // The digest is issued, a write issued after it finishes with a change before it.
        c.issued(1, 0, &digest(), false, 0);
        c.issued(2, 0, &StoreOp::PutMany { items: vec![] }, true, 0);
        c.finished(2, true, &Ok(StoreOutcome::PutMany { applied: 1 }));
        c.finished(1, false, &Ok(digests(7)));
        assert_eq!(c.lookup(0, &digest(), 0), None);
        // A write still in flight when the answer comes: kept, but not given until it is done,
        // and then only if it changed nothing.
        c.issued(3, 0, &digest(), false, 0);
        c.issued(4, 0, &StoreOp::RemoveMany { keys: vec![] }, true, 0);
        c.finished(3, false, &Ok(digests(8)));
        assert_eq!(c.lookup(0, &digest(), 0), None);
        c.finished(4, true, &Ok(StoreOutcome::Removed(2)));
        assert_eq!(c.lookup(0, &digest(), 0), None);
    }

    #[test]
    fn an_error_forgets_every_answer() {
        let mut c = StoreCache::new(1_000);
        answer(&mut c, 1, 0, &digest(), 7);
        let get = StoreOp::Get {
            id: Id::from_u64(3),
            key: bytes::Bytes::from_static(b"k"),
        };
        c.issued(2, 0, &get, false, 0);
        c.finished(2, false, &Err(StoreError::Lost("flushed".into())));
        assert_eq!(c.lookup(0, &digest(), 0), None);
    }

    #[test]
    fn range_counts_with_expiring_keys_are_not_kept() {
        let mut c = StoreCache::new(1_000);
        let op = |now| StoreOp::RangeCounts {
            start: Id::from_u64(1),
            end: Id::from_u64(9),
            now,
        };
        c.issued(1, 0, &op(100), false, 0);
        let expiring = RangeCounts {
            live: 2,
            expiring: 1,
            ttl_ms_sum: 50,
        };
        c.finished(1, false, &Ok(StoreOutcome::RangeCounts(expiring)));
        assert_eq!(c.lookup(0, &op(200), 0), None);
        let settled = RangeCounts {
            live: 2,
            expiring: 0,
            ttl_ms_sum: 0,
        };
        c.issued(2, 0, &op(200), false, 0);
        c.finished(2, false, &Ok(StoreOutcome::RangeCounts(settled)));
        assert_eq!(c.lookup(0, &op(300), 0), Some(StoreOutcome::RangeCounts(settled)));
    }

    #[test]
    fn a_collection_that_found_nothing_is_answered_again_until_a_write() {
        let mut c = StoreCache::new(1_000);
        let collect = |before| StoreOp::CollectTombstones {
            start: Id::from_u64(1),
            end: Id::from_u64(9),
            before,
        };
        // Young tombstones left: a later `before` may collect them.
        c.issued(1, 0, &collect(10), true, 0);
        c.finished(
            1,
            true,
            &Ok(StoreOutcome::Collected {
                removed: 0,
                younger: 2,
            }),
        );
        assert_eq!(c.lookup(0, &collect(20), 0), None);
        // None at all: none later either, whatever `before`.
        c.issued(2, 0, &collect(20), true, 0);
        c.finished(
            2,
            true,
            &Ok(StoreOutcome::Collected {
                removed: 0,
                younger: 0,
            }),
        );
        assert_eq!(
            c.lookup(0, &collect(30), 0),
            Some(StoreOutcome::Collected {
                removed: 0,
                younger: 0
            })
        );
        let retain = |to| StoreOp::RetainRanges {
            keep: vec![(Id::from_u64(1), Id::from_u64(to))],
        };
        c.issued(3, 0, &retain(9), true, 0);
        c.finished(3, true, &Ok(StoreOutcome::Removed(0)));
        assert_eq!(c.lookup(0, &retain(9), 0), Some(StoreOutcome::Removed(0)));
        assert_eq!(c.lookup(0, &retain(8), 0), None);
        // A collection that removed something is a change.
        c.issued(4, 1, &collect(40), true, 0);
        c.finished(
            4,
            true,
            &Ok(StoreOutcome::Collected {
                removed: 1,
                younger: 0,
            }),
        );
        assert_eq!(c.lookup(0, &collect(50), 0), None);
        assert_eq!(c.lookup(0, &retain(9), 0), None);
    }

    #[test]
    fn an_answer_is_given_until_its_age_runs_out() {
        let mut c = StoreCache::new(1_000);
        c.issued(1, 0, &digest(), false, 500);
        c.finished(1, false, &Ok(digests(7)));
        assert_eq!(c.lookup(0, &digest(), 1_499), Some(digests(7)));
        assert_eq!(c.lookup(0, &digest(), 1_500), None);
    }

    #[test]
    fn every_op_is_a_read_or_a_write() {
        let may_write = |op: &StoreOp| classify(0, op).0;
        assert!(may_write(&StoreOp::CollectTombstones {
            start: Id::ZERO,
            end: Id::ZERO,
            before: 1
        }));
        assert!(may_write(&StoreOp::RetainRanges { keep: vec![] }));
        assert!(!may_write(&digest()));
    }
}
