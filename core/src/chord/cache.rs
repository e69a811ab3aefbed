//! The location cache (`--cache ENTRIES`): owner ranges this node has learnt, tried before
//! routing.
//!
//! An entry is a range `(pred, owner]`: the owner's range as a lookup reply described it
//! (`FIND_SUCCESSOR` answers `Found` with the owner and, when the answering node knows it, the
//! node before the owner). When an operation's key falls in a cached range the entry sends it
//! straight to the cached owner with `FLAG_DIRECT`, one hop, instead of walking the fingers.
//!
//! A stale entry costs at most a hop, never a wrong answer: the cached owner serves the
//! operation only if it owns the key, and otherwise answers `REDIRECT`, which the entry
//! follows (and drops the entry); an owner that does not answer is marked dead and dropped.
//!
//! Eviction is least-recently-used. Everything is in ordered maps with a use counter for the
//! recency, so the same inputs give the same hits, misses and evictions.

use chordkv_protocol::NodeAddr;
use std::collections::BTreeMap;

use chordkv_protocol::{in_half_open, in_open, Id, NodeRef};

#[derive(Clone, Debug)]
struct Entry {
    pred: Id,
    owner: NodeRef,
    used: u64,
}

/// An LRU of owner ranges, keyed by the owner's id (the end of its range).
#[derive(Clone, Debug, Default)]
pub struct LocationCache {
    capacity: usize,
    entries: BTreeMap<Id, Entry>,
    /// Use counter -> owner id, oldest first.
    lru: BTreeMap<u64, Id>,
    clock: u64,
}

impl LocationCache {
    pub fn new(capacity: usize) -> LocationCache {
        LocationCache {
            capacity,
            ..LocationCache::default()
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cached owner of `target`, if a cached range holds it (and marks it used).
    pub fn lookup(&mut self, target: &Id) -> Option<NodeRef> {
        let (&key, entry) = self
            .entries
            .range(*target..)
            .next()
            .or_else(|| self.entries.iter().next())?;
        if !in_half_open(target, &entry.pred, &entry.owner.id) {
            return None;
        }
        let owner = entry.owner;
        self.touch(key);
        Some(owner)
    }

    fn touch(&mut self, key: Id) {
        self.clock += 1;
        let clock = self.clock;
        if let Some(e) = self.entries.get_mut(&key) {
            self.lru.remove(&e.used);
            e.used = clock;
            self.lru.insert(clock, key);
        }
    }

    /// Remembers that `owner` owns `(pred, owner]`. Entries for owners inside that range
    /// contradict it and are dropped (one of the two views is stale; the newer one wins).
    pub fn insert(&mut self, pred: Id, owner: NodeRef) {
        if self.capacity == 0 || pred == owner.id {
            return;
        }
        let stale: Vec<Id> = self
            .entries
            .keys()
            .filter(|k| in_open(*k, &pred, &owner.id))
            .copied()
            .collect();
        // Cheap in practice: a range holds no other owner unless the ring changed.
        for k in stale {
            self.remove_key(&k);
        }
        self.remove_key(&owner.id);
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.lru.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.clock += 1;
        self.entries.insert(
            owner.id,
            Entry {
                pred,
                owner,
                used: self.clock,
            },
        );
        self.lru.insert(self.clock, owner.id);
    }

    fn remove_key(&mut self, key: &Id) {
        if let Some(e) = self.entries.remove(key) {
            self.lru.remove(&e.used);
        }
    }

    /// Drops the entry whose range holds `target` (its owner redirected us).
    pub fn evict_target(&mut self, target: &Id) {
        let found = self
            .entries
            .range(*target..)
            .next()
            .or_else(|| self.entries.iter().next())
            .filter(|(_, e)| in_half_open(target, &e.pred, &e.owner.id))
            .map(|(k, _)| *k);
        if let Some(k) = found {
            self.remove_key(&k);
        }
    }

    /// Drops every entry naming the node at `addr` (it stopped answering).
    pub fn evict_node(&mut self, addr: &NodeAddr) {
        let gone: Vec<Id> = self
            .entries
            .iter()
            .filter(|(_, e)| e.owner.addr == *addr)
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            self.remove_key(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chord::test_support::node;

    #[test]
    fn ranges_hit_and_miss() {
        let mut c = LocationCache::new(4);
        c.insert(Id::from_u64(10), node(20));
        assert_eq!(c.lookup(&Id::from_u64(15)), Some(node(20)));
        assert_eq!(c.lookup(&Id::from_u64(20)), Some(node(20)));
        assert_eq!(c.lookup(&Id::from_u64(10)), None);
        assert_eq!(c.lookup(&Id::from_u64(21)), None);
        // A wrapping range.
        c.insert(Id::from_u64(90), node(5));
        assert_eq!(c.lookup(&Id::MAX), Some(node(5)));
        assert_eq!(c.lookup(&Id::from_u64(3)), Some(node(5)));
        c.evict_target(&Id::from_u64(15));
        assert_eq!(c.lookup(&Id::from_u64(15)), None);
        c.evict_node(&node(5).addr);
        assert!(c.is_empty());
    }

    #[test]
    fn least_recently_used_is_evicted_and_contradictions_dropped() {
        let mut c = LocationCache::new(2);
        c.insert(Id::from_u64(10), node(20));
        c.insert(Id::from_u64(20), node(30));
        assert!(c.lookup(&Id::from_u64(15)).is_some()); // 20 is now the most recent
        c.insert(Id::from_u64(30), node(40));
        assert_eq!(c.len(), 2);
        assert_eq!(
            c.lookup(&Id::from_u64(25)),
            None,
            "30 was the least recently used"
        );
        assert_eq!(c.lookup(&Id::from_u64(15)), Some(node(20)));
        // A node joined at 25: (20, 25] and the old (10, 20] do not contradict; (10, 40]
        // contradicts every entry inside it.
        c.insert(Id::from_u64(10), node(40));
        assert_eq!(c.len(), 1);
        assert_eq!(c.lookup(&Id::from_u64(15)), Some(node(40)));
        assert_eq!(LocationCache::new(0).lookup(&Id::ZERO), None);
    }
}
