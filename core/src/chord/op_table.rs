//! [`OpTable`]: the operations a node has in flight (client operations, store ops, replicated
//! writes), by the sequential id it gave each.
//!
//! Every request passes through two or three such tables: one insertion when it starts, one
//! removal when it ends, a few look-ups between. A `BTreeMap<u64, V>` did that in O(log n),
//! but each removal shifted the values after it in its leaf, and these values are large (a
//! client operation is some 380 bytes): in a profile of one node under `redis-benchmark -P 16`
//! the tables' B-tree work was a tenth of the node's instructions (`results/instructions.md`).
//!
//! Ids are handed out in increasing order and most operations end soon after they start, so
//! the live ids sit in a short window at the end of the id space. The table keeps that window
//! as a ring buffer of slots (`recent`, slot `i` holds id `base + i`): an insertion is a push at
//! the back, a removal empties its slot (the empty slots at the front are dropped a few dozen
//! at a time), a look-up is an index. An operation that outlives many younger ones (a slow
//! scan, a write waiting for a replica that is down) would hold the window open, so whenever
//! a new id makes the window more than twice as long as the live operations in it (plus
//! [`SLACK`]), the oldest are moved to an ordered map (`old`). The slots therefore stay within
//! `2 * live + SLACK + 1` of the live entries at the last insertion, plus the empty ones not
//! dropped yet; every operation is O(1) amortised (O(log n) for the few in `old`), and
//! iteration is in id order, as the B-tree's was: the node stays deterministic (see the crate
//! docs).

use std::collections::{BTreeMap, VecDeque};

/// Empty slots the window may hold beyond twice its live entries before the oldest entries
/// move to the ordered map.
pub const SLACK: usize = 64;

/// A map from increasing `u64` ids to `V`: see the module docs.
#[derive(Debug)]
pub struct OpTable<V> {
    /// Entries with ids `base`, `base + 1`, ...; `None`: ended (or never inserted).
    recent: VecDeque<Option<V>>,
    /// The id of `recent[0]`.
    base: u64,
    /// `recent[..head]` are empty: ended entries not dropped yet. They are dropped in bulk
    /// ([`DROP_EVERY`] at a time), because dropping one from the front moves it out, a copy of
    /// a whole slot, as large as a value.
    head: usize,
    /// The `Some` slots of `recent`.
    live_recent: usize,
    /// Entries older than `base + head`.
    old: BTreeMap<u64, V>,
}

/// Empty slots at the front of the window dropped at once.
const DROP_EVERY: usize = 32;

impl<V> Default for OpTable<V> {
    fn default() -> Self {
        OpTable {
            recent: VecDeque::new(),
            base: 0,
            head: 0,
            live_recent: 0,
            old: BTreeMap::new(),
        }
    }
}

impl<V> OpTable<V> {
    /// An empty table.
    pub fn new() -> OpTable<V> {
        OpTable::default()
    }

    /// Inserts `value` under `id`, replacing (and returning) a value already there. Ids are
    /// meant to be given in increasing order; an id below one inserted before is accepted too
    /// (kept in the ordered map).
    pub fn insert(&mut self, id: u64, value: V) -> Option<V> {
        // Every id in `old` is below `base + head`, which never decreases.
        let start = self.base + self.head as u64;
        if id < start {
            return self.old.insert(id, value);
        }
        let end = self.base + self.recent.len() as u64;
        if id < end {
            let slot = &mut self.recent[(id - self.base) as usize];
            if slot.is_none() {
                self.live_recent += 1;
            }
            return slot.replace(value);
        }
        if id - end > (2 * self.live_recent + SLACK) as u64 {
            // A jump far past the window: the window's entries are old now.
            self.retire_all();
            self.base = id;
        } else if id > end {
            // A gap in the ids: empty slots, which `head` moves past if nothing precedes them.
            let was_empty = self.head == self.recent.len();
            for _ in end..id {
                self.recent.push_back(None);
            }
            if was_empty {
                self.head = self.recent.len();
                self.drop_skipped();
            }
        }
        self.recent.push_back(Some(value));
        self.live_recent += 1;
        if self.recent.len() - self.head > 2 * self.live_recent + SLACK {
            self.retire_oldest();
        }
        None
    }

    /// The value under `id`.
    pub fn get(&self, id: &u64) -> Option<&V> {
        match self.slot(*id) {
            Some(i) => self.recent[i].as_ref(),
            None => self.old.get(id),
        }
    }

    /// The value under `id`, to change.
    pub fn get_mut(&mut self, id: &u64) -> Option<&mut V> {
        match self.slot(*id) {
            Some(i) => self.recent[i].as_mut(),
            None => self.old.get_mut(id),
        }
    }

    /// Removes and returns the value under `id`.
    pub fn remove(&mut self, id: &u64) -> Option<V> {
        let Some(i) = self.slot(*id) else {
            return self.old.remove(id);
        };
        // Taken out of its slot as it is (one move of the value, not two).
        let value = self.recent[i].take();
        if value.is_some() {
            self.live_recent -= 1;
            if i == self.head {
                self.skip_empty();
            }
        }
        value
    }

    /// How many entries the table holds.
    pub fn len(&self) -> usize {
        self.live_recent + self.old.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries in id order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &V)> + '_ {
        let base = self.base;
        self.old.iter().map(|(id, v)| (*id, v)).chain(
            self.recent
                .iter()
                .enumerate()
                .filter_map(move |(i, v)| v.as_ref().map(|v| (base + i as u64, v))),
        )
    }

    /// The values in id order.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.old.values().chain(self.recent.iter().flatten())
    }

    /// The index in `recent` of `id`, if it falls in the live part of the window.
    fn slot(&self, id: u64) -> Option<usize> {
        let i = id.checked_sub(self.base)?;
        (i >= self.head as u64 && i < self.recent.len() as u64).then_some(i as usize)
    }

    /// Moves `head` past the empty slots at the front, dropping them when there are enough.
    fn skip_empty(&mut self) {
        while self.head < self.recent.len() && self.recent[self.head].is_none() {
            self.head += 1;
        }
        self.drop_skipped();
    }

    /// Drops the empty slots before `head` once there are [`DROP_EVERY`] of them.
    fn drop_skipped(&mut self) {
        if self.head >= DROP_EVERY {
            self.recent.drain(..self.head);
            self.base += self.head as u64;
            self.head = 0;
        }
    }

    /// Moves the oldest entries to `old` until the window is dense enough.
    fn retire_oldest(&mut self) {
        while self.recent.len() - self.head > 2 * self.live_recent + SLACK {
            let id = self.base + self.head as u64;
            if let Some(value) = self.recent[self.head].take() {
                self.old.insert(id, value);
                self.live_recent -= 1;
            }
            self.head += 1;
        }
        self.skip_empty();
    }

    /// Moves every entry of the window to `old` and empties it.
    fn retire_all(&mut self) {
        for (i, slot) in self.recent.drain(..).enumerate() {
            if let Some(value) = slot {
                self.old.insert(self.base + i as u64, value);
            }
        }
        self.head = 0;
        self.live_recent = 0;
    }
}

impl<V> std::ops::Index<&u64> for OpTable<V> {
    type Output = V;

    /// # Panics
    /// When `id` is not in the table (as `BTreeMap`'s index).
    fn index(&self, id: &u64) -> &V {
        self.get(id).expect("no entry for this id in the OpTable")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Random inserts (mostly the next id, sometimes a jump or an old id), removals (mostly
    /// of young entries, some of the oldest), look-ups and iterations, checked against a
    /// `BTreeMap`; the window stays within its bound.
    #[test]
    fn behaves_as_an_ordered_map() {
        for seed in 0..40u64 {
            let mut rng = Rng::new(seed);
            let mut table = OpTable::new();
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            let mut next = rng.below(1_000);
            for step in 0..4_000u64 {
                match rng.below(10) {
                    0..=3 => {
                        let id = match rng.below(20) {
                            0 => next + rng.below(500),
                            1 if next > 0 => rng.below(next),
                            _ => next,
                        };
                        let newest = id >= next;
                        next = next.max(id + 1);
                        assert_eq!(table.insert(id, step), model.insert(id, step), "seed {seed}");
                        // Each new highest id checks the window's bound.
                        let window = table.recent.len() - table.head;
                        assert!(
                            !newest || window <= 2 * table.live_recent + SLACK + 1,
                            "seed {seed}"
                        );
                    }
                    4..=7 => {
                        // a young entry, or any
                        let id = if rng.below(4) == 0 || next < 8 {
                            rng.below(next.max(1) + 2)
                        } else {
                            next - 1 - rng.below(8)
                        };
                        assert_eq!(table.remove(&id), model.remove(&id), "seed {seed}");
                    }
                    8 => {
                        let id = rng.below(next + 2);
                        assert_eq!(table.get(&id), model.get(&id));
                        if let (Some(a), Some(b)) = (table.get_mut(&id), model.get_mut(&id)) {
                            *a += 1;
                            *b += 1;
                        }
                    }
                    _ => {
                        let got: Vec<(u64, u64)> = table.iter().map(|(k, v)| (k, *v)).collect();
                        let want: Vec<(u64, u64)> = model.iter().map(|(k, v)| (*k, *v)).collect();
                        assert_eq!(got, want, "seed {seed}");
                        assert!(table.values().copied().eq(model.values().copied()));
                    }
                }
                assert_eq!(table.len(), model.len());
                assert_eq!(table.is_empty(), model.is_empty());
                assert!(table.head < DROP_EVERY.max(1));
                assert!(table.recent.get(table.head).is_none_or(Option::is_some));
            }
        }
    }

    /// One entry that never ends does not hold the window open: the table stays small while
    /// a million younger entries come and go, and the old one is still found.
    #[test]
    fn a_long_lived_entry_does_not_grow_the_window() {
        let mut table = OpTable::new();
        table.insert(1, "slow");
        for id in 2..1_000_000u64 {
            table.insert(id, "quick");
            if id > 11 {
                assert_eq!(table.remove(&(id - 10)), Some("quick"));
            }
        }
        assert!(
            table.recent.len() <= 2 * 10 + SLACK + DROP_EVERY + 1,
            "{}",
            table.recent.len()
        );
        assert_eq!(table.get(&1), Some(&"slow"));
        assert_eq!(table.len(), 11);
        assert_eq!(table.remove(&1), Some("slow"));
    }
}
