//! Which stores held each version of each key, so that a test can tell a write the system
//! lost from one the faults destroyed: every copy of it wiped by crashes that lost their
//! stores, more than any replication scheme survives.
//!
//! With `--replicas r` under the partition policy `consistent`, an acknowledged write is on at
//! least a majority `W` of its `r + 1` copies. A schedule may wipe more stores than that
//! within one preference list (a paused copy and two restarted empty, say): when the last
//! store holding a version is wiped and that version had reached at least `W` stores, it is
//! *destroyed*, and the oracle judges it as a write that may or may not have happened. A
//! version that never reached `W` stores is not excused: acknowledging it was the system's
//! fault.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use chordkv_protocol::Id;

use chordkv_core::store::{MemoryStore, Store, StoreOp};

/// Copies of each `(key, version)` ever stored, by node index.
#[derive(Debug, Default)]
pub struct CopyTracker {
    holders: BTreeMap<(Bytes, u64), BTreeSet<usize>>,
    destroyed: Vec<(Bytes, u64)>,
}

impl CopyTracker {
    /// The `(key, version)` pairs a store op may write, to check after it ran.
    pub fn written_by(op: &StoreOp) -> Vec<(Bytes, u64)> {
        match op {
            StoreOp::Put { key, entry, .. } => vec![(key.clone(), entry.version)],
            StoreOp::PutMany { items } => items.iter().map(|it| (it.key.clone(), it.version)).collect(),
            _ => Vec::new(),
        }
    }

    /// After a store op of node `i` ran: the versions it wrote that `store` now holds.
    pub fn stored(&mut self, i: usize, store: &MemoryStore, written: Vec<(Bytes, u64)>) {
        for (key, version) in written {
            if store
                .get(&key)
                .ok()
                .flatten()
                .is_some_and(|e| e.version == version)
            {
                self.holders.entry((key, version)).or_default().insert(i);
            }
        }
    }

    /// Node `i`'s store now holds `version` of `key` (a write it served on its store, which
    /// reports the writes it applied).
    pub fn held(&mut self, i: usize, key: Bytes, version: u64) {
        self.holders.entry((key, version)).or_default().insert(i);
    }

    /// Node `i`'s store `wiped` is gone (a restart on an empty store); `others` are every
    /// other node's stores. Records each version whose last copy this was and that had
    /// reached at least `quorum` stores.
    pub fn wiped<'a>(
        &mut self,
        wiped: &MemoryStore,
        others: impl Iterator<Item = &'a MemoryStore>,
        quorum: usize,
    ) {
        let items = wiped
            .scan(&Id::ZERO, &Id::ZERO, None, usize::MAX)
            .unwrap_or_default();
        if items.is_empty() {
            return;
        }
        let others: Vec<&MemoryStore> = others.collect();
        for it in items {
            let newest_elsewhere = others
                .iter()
                .filter_map(|s| s.get(&it.key).ok().flatten().map(|e| e.version))
                .max()
                .unwrap_or(0);
            if newest_elsewhere >= it.version {
                continue;
            }
            // Every version above what survives, up to what was wiped, is gone.
            let lo = (it.key.clone(), newest_elsewhere + 1);
            let hi = (it.key.clone(), it.version);
            for ((key, version), holders) in self.holders.range(lo..=hi) {
                if holders.len() >= quorum {
                    self.destroyed.push((key.clone(), *version));
                }
            }
        }
    }

    /// The `(key, version)` pairs destroyed so far, in the order found.
    pub fn destroyed(&self) -> &[(Bytes, u64)] {
        &self.destroyed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chordkv_core::store::Entry;

    fn put(store: &MemoryStore, key: &str, version: u64) -> StoreOp {
        let op = StoreOp::Put {
            id: chordkv_protocol::Id::of_key(key.as_bytes()),
            key: Bytes::from(key.to_string()),
            entry: Entry {
                version,
                value: Some(Bytes::from_static(b"v")),
                expires_at: 0,
            },
        };
        chordkv_core::store::execute(store as &dyn Store, op.clone()).unwrap();
        op
    }

    #[test]
    fn a_version_is_destroyed_only_when_its_last_copy_goes_after_it_reached_a_quorum() {
        let stores: Vec<MemoryStore> = (0..3).map(|_| MemoryStore::new()).collect();
        let mut t = CopyTracker::default();
        // k1 v10 on stores 0 and 1 (a quorum of 2 of 3); k2 v20 on store 0 only.
        for (i, key, v) in [(0, "k1", 10), (1, "k1", 10), (0, "k2", 20)] {
            let op = put(&stores[i], key, v);
            t.stored(i, &stores[i], CopyTracker::written_by(&op));
        }
        // Wiping store 0: k1 survives on store 1; k2 is gone but never had a quorum.
        t.wiped(&stores[0], stores[1..].iter(), 2);
        assert!(t.destroyed().is_empty());
        // Wiping store 1 too (store 0 counted as wiped: an empty stand-in).
        let empty = MemoryStore::new();
        t.wiped(&stores[1], [&empty, &stores[2]].into_iter(), 2);
        assert_eq!(t.destroyed(), &[(Bytes::from_static(b"k1"), 10)]);
    }
}
