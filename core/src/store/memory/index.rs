//! The memory store's index: 64-bit id prefixes to values, in ring order, for point lookups
//! with one or two cache misses instead of a B-tree's one per level.
//!
//! ```text
//!   buckets: [b0][b1][b2] ... [b(2^bits - 1)]     bucket = the prefix's top `bits` bits
//!              │
//!              └─► Small: sorted Vec<(prefix, value)>   (at most SMALL_MAX entries)
//!                  Large: BTreeMap<prefix, value>       (a bucket keys were ground into)
//! ```
//!
//! The bucket of a prefix is its top bits, so the buckets in order hold the prefixes in order
//! and a range of prefixes is a run of buckets (an order-preserving hash; ids are SHA-1
//! digests, uniform over the ring, so buckets fill evenly). The directory doubles when the
//! buckets average [`GROW_LOAD`] entries and halves below [`SHRINK_LOAD`], so a lookup reads
//! the directory slot, a bucket of a few entries (one or two cache lines), then the record. A
//! client that grinds keys whose ids share top bits (2^bits SHA-1s per key) fills one bucket:
//! past [`SMALL_MAX`] entries it becomes a B-tree, so no input makes an operation worse than
//! O(log n).
//!
//! The cost per key is about what the B-tree it replaces took (16 bytes per entry, the
//! buckets' spare capacity and a 32-byte directory slot per [`GROW_LOAD`]..[`SHRINK_LOAD`]
//! entries); `results/memory.md` has the measured bytes per key. A doubling moves every entry
//! once (amortised O(1) per insert; a pause of O(n) at the doubling itself, for the store's
//! share of the node's keys: with 8 vnodes, an eighth of them).

use std::collections::btree_map::{self, BTreeMap};

/// The directory doubles when it holds more than this many entries per bucket.
const GROW_LOAD: usize = 8;
/// And halves when it holds fewer than this many per bucket.
const SHRINK_LOAD: usize = 2;
/// A bucket with more entries than this is a B-tree (keys ground to share top bits).
const SMALL_MAX: usize = 64;
/// A B-tree bucket that falls to this many entries is a sorted vector again.
const SMALL_AGAIN: usize = SMALL_MAX / 2;

/// Values by 64-bit prefix, in prefix order (see the module docs).
pub(super) struct PrefixIndex<V> {
    /// The directory: `1 << bits` buckets once no resize is under way.
    buckets: Vec<Bucket<V>>,
    bits: u32,
    /// Prefixes are below `2^width` (the store's prefix length; tests shorten it).
    width: u32,
    len: usize,
    /// A doubling or halving under way: the directory it is moving from.
    resize: Option<Resize<V>>,
}

/// A resize moves the entries a few units at a time, in prefix order, so no insert or removal
/// pays for all of them (as Redis rehashes its dicts). A unit is a bucket of the coarser of
/// the two directories: one old bucket that splits in two when doubling, two old buckets that
/// merge into one when halving. Units below `moved` are in the new directory (`buckets`,
/// which grows by push as they arrive), the rest in `old`.
struct Resize<V> {
    old: Vec<Bucket<V>>,
    old_bits: u32,
    moved: usize,
}

/// Units a resize moves at each insert or removal: it finishes long before the next one is
/// due (a doubling takes `2^(bits-1)` units over the `4 * 2^bits` inserts before the next).
const UNITS_PER_WRITE: usize = 2;

enum Bucket<V> {
    Small(Vec<(u64, V)>),
    Large(BTreeMap<u64, V>),
}

impl<V> Bucket<V> {
    #[cfg(test)]
    fn len(&self) -> usize {
        match self {
            Bucket::Small(v) => v.len(),
            Bucket::Large(m) => m.len(),
        }
    }

    fn get(&self, k: u64) -> Option<&V> {
        match self {
            Bucket::Small(v) => v.binary_search_by_key(&k, |e| e.0).ok().map(|i| &v[i].1),
            Bucket::Large(m) => m.get(&k),
        }
    }

    fn get_mut(&mut self, k: u64) -> Option<&mut V> {
        match self {
            Bucket::Small(v) => match v.binary_search_by_key(&k, |e| e.0) {
                Ok(i) => Some(&mut v[i].1),
                Err(_) => None,
            },
            Bucket::Large(m) => m.get_mut(&k),
        }
    }

    /// Inserts or replaces; returns the value replaced.
    fn insert(&mut self, k: u64, value: V) -> Option<V> {
        match self {
            Bucket::Small(v) => match v.binary_search_by_key(&k, |e| e.0) {
                Ok(i) => Some(std::mem::replace(&mut v[i].1, value)),
                Err(i) => {
                    if v.len() == SMALL_MAX {
                        let mut m: BTreeMap<u64, V> = std::mem::take(v).into_iter().collect();
                        m.insert(k, value);
                        *self = Bucket::Large(m);
                        return None;
                    }
                    if v.len() == v.capacity() {
                        // A quarter more, not double: the spare capacity is memory per key.
                        v.reserve_exact((v.len() / 4).max(2));
                    }
                    v.insert(i, (k, value));
                    None
                }
            },
            Bucket::Large(m) => m.insert(k, value),
        }
    }

    fn remove(&mut self, k: u64) -> Option<V> {
        match self {
            Bucket::Small(v) => {
                let i = v.binary_search_by_key(&k, |e| e.0).ok()?;
                let (_, value) = v.remove(i);
                if v.capacity() > 2 * v.len() + 4 {
                    v.shrink_to(v.len() + v.len() / 4);
                }
                Some(value)
            }
            Bucket::Large(m) => {
                let value = m.remove(&k)?;
                if m.len() <= SMALL_AGAIN {
                    *self = Bucket::small(std::mem::take(m).into_iter().collect());
                }
                Some(value)
            }
        }
    }

    fn small(mut v: Vec<(u64, V)>) -> Bucket<V> {
        v.shrink_to(v.len() + v.len() / 4);
        Bucket::Small(v)
    }

    /// The bucket as two: prefixes below `at`, and the rest.
    fn split(self, at: u64) -> (Bucket<V>, Bucket<V>) {
        match self {
            Bucket::Small(mut v) => {
                let i = v.partition_point(|e| e.0 < at);
                let upper = v.split_off(i);
                (Bucket::small(v), Bucket::small(upper))
            }
            Bucket::Large(mut m) => {
                let upper = m.split_off(&at);
                (Bucket::from_map(m), Bucket::from_map(upper))
            }
        }
    }

    /// Two neighbouring buckets as one (`upper`'s prefixes all above `self`'s).
    fn merge(self, upper: Bucket<V>) -> Bucket<V> {
        match (self, upper) {
            (Bucket::Small(mut a), Bucket::Small(b)) if a.len() + b.len() <= SMALL_MAX => {
                a.extend(b);
                Bucket::small(a)
            }
            (a, b) => {
                // The larger map takes the smaller's entries (they do not overlap), so halving
                // next to a bucket keys were ground into costs the small one's size.
                let (mut a, b) = (a.into_map(), b.into_map());
                if a.len() < b.len() {
                    let mut b = b;
                    b.extend(a);
                    a = b;
                } else {
                    a.extend(b);
                }
                Bucket::from_map(a)
            }
        }
    }

    fn from_map(m: BTreeMap<u64, V>) -> Bucket<V> {
        if m.len() <= SMALL_AGAIN {
            Bucket::small(m.into_iter().collect())
        } else {
            Bucket::Large(m)
        }
    }

    fn into_map(self) -> BTreeMap<u64, V> {
        match self {
            Bucket::Small(v) => v.into_iter().collect(),
            Bucket::Large(m) => m,
        }
    }

    fn range(&self, from: u64, to: u64) -> BucketRange<'_, V> {
        match self {
            Bucket::Small(v) => {
                let lo = v.partition_point(|e| e.0 < from);
                let hi = v.partition_point(|e| e.0 <= to);
                BucketRange::Small(v[lo..hi.max(lo)].iter())
            }
            Bucket::Large(m) => BucketRange::Large(m.range(from..=to)),
        }
    }
}

enum BucketRange<'a, V> {
    Small(std::slice::Iter<'a, (u64, V)>),
    Large(btree_map::Range<'a, u64, V>),
}

impl<'a, V> Iterator for BucketRange<'a, V> {
    type Item = (u64, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            BucketRange::Small(it) => it.next().map(|(k, v)| (*k, v)),
            BucketRange::Large(it) => it.next().map(|(k, v)| (*k, v)),
        }
    }
}

impl<V> Default for PrefixIndex<V> {
    /// Full 64-bit prefixes.
    fn default() -> Self {
        PrefixIndex::new(64)
    }
}

impl<V> PrefixIndex<V> {
    /// An empty index of prefixes below `2^width` (1 to 64 bits).
    pub(super) fn new(width: u32) -> PrefixIndex<V> {
        assert!((1..=64).contains(&width), "a prefix of 1 to 64 bits");
        PrefixIndex {
            buckets: vec![Bucket::Small(Vec::new())],
            bits: 0,
            width,
            len: 0,
            resize: None,
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The top `bits` bits of prefix `k`.
    fn top(&self, k: u64, bits: u32) -> usize {
        debug_assert!(
            self.width == 64 || k >> self.width == 0,
            "prefix {k:#x} over {} bits",
            self.width
        );
        if bits == 0 {
            0
        } else {
            (k >> (self.width - bits)) as usize
        }
    }

    /// Bits of the unit a resize moves at once (the coarser directory's); the directory's
    /// own when none is under way.
    fn unit_bits(&self) -> u32 {
        self.resize
            .as_ref()
            .map_or(self.bits, |r| r.old_bits.min(self.bits))
    }

    /// Where prefix `k` is: in the old directory (`true`) or the new, and the bucket's index.
    fn locate(&self, k: u64) -> (bool, usize) {
        match &self.resize {
            Some(r) if self.top(k, self.unit_bits()) >= r.moved => (true, self.top(k, r.old_bits)),
            _ => (false, self.top(k, self.bits)),
        }
    }

    fn bucket(&self, k: u64) -> &Bucket<V> {
        match self.locate(k) {
            (true, b) => &self.resize.as_ref().expect("a resize under way").old[b],
            (false, b) => &self.buckets[b],
        }
    }

    fn bucket_mut(&mut self, k: u64) -> &mut Bucket<V> {
        match self.locate(k) {
            (true, b) => &mut self.resize.as_mut().expect("a resize under way").old[b],
            (false, b) => &mut self.buckets[b],
        }
    }

    pub(super) fn get(&self, k: u64) -> Option<&V> {
        self.bucket(k).get(k)
    }

    pub(super) fn get_mut(&mut self, k: u64) -> Option<&mut V> {
        self.bucket_mut(k).get_mut(k)
    }

    /// Inserts `value` under `k`; returns the value it replaced.
    pub(super) fn insert(&mut self, k: u64, value: V) -> Option<V> {
        self.move_units(UNITS_PER_WRITE);
        let replaced = self.bucket_mut(k).insert(k, value);
        if replaced.is_none() {
            self.len += 1;
            let buckets = 1usize << self.bits;
            if self.len > GROW_LOAD * buckets && self.bits < self.width.min(usize::BITS - 2) {
                self.start_resize(self.bits + 1);
            }
        }
        replaced
    }

    pub(super) fn remove(&mut self, k: u64) -> Option<V> {
        self.move_units(UNITS_PER_WRITE);
        let value = self.bucket_mut(k).remove(k)?;
        self.len -= 1;
        if self.bits > 0 && self.len < SHRINK_LOAD * (1usize << self.bits) {
            self.start_resize(self.bits - 1);
        }
        Some(value)
    }

    /// The entries with prefixes in `from..=to`, in order.
    pub(super) fn range(&self, from: u64, to: u64) -> impl Iterator<Item = (u64, &V)> + '_ {
        let unit_bits = self.unit_bits();
        let units = if from <= to {
            self.top(from, unit_bits)..self.top(to, unit_bits) + 1
        } else {
            0..0
        };
        units
            .flat_map(move |u| self.unit(u).iter())
            .flat_map(move |b| b.range(from, to))
    }

    /// The buckets that hold unit `u` (of `1 << unit_bits()`), in prefix order.
    fn unit(&self, u: usize) -> &[Bucket<V>] {
        let Some(r) = &self.resize else {
            return &self.buckets[u..=u];
        };
        let doubling = self.bits > r.old_bits;
        match (u < r.moved, doubling) {
            (true, true) => &self.buckets[2 * u..2 * u + 2],
            (true, false) => &self.buckets[u..=u],
            (false, true) => &r.old[u..=u],
            (false, false) => &r.old[2 * u..2 * u + 2],
        }
    }

    /// Starts moving to a directory of `1 << bits` buckets (one more or one fewer bit), once
    /// any resize under way has finished.
    fn start_resize(&mut self, bits: u32) {
        if self.resize.is_some() {
            self.move_units(usize::MAX);
        }
        let old = std::mem::take(&mut self.buckets);
        self.buckets = Vec::with_capacity(1 << bits);
        self.resize = Some(Resize {
            old,
            old_bits: self.bits,
            moved: 0,
        });
        self.bits = bits;
    }

    /// Moves up to `n` units of the resize under way into the new directory.
    fn move_units(&mut self, n: usize) {
        let Some(r) = self.resize.as_mut() else {
            return;
        };
        let doubling = self.bits > r.old_bits;
        let units = if doubling { r.old.len() } else { r.old.len() / 2 };
        let shift = self.width - self.bits.max(r.old_bits);
        for _ in 0..n {
            if r.moved == units {
                break;
            }
            let u = r.moved;
            if doubling {
                // Old bucket `u` splits on the new bit into buckets `2u` and `2u + 1`.
                let bucket = std::mem::replace(&mut r.old[u], Bucket::Small(Vec::new()));
                let (lower, upper) = bucket.split(((2 * u as u64) | 1) << shift);
                self.buckets.push(lower);
                self.buckets.push(upper);
            } else {
                let lower = std::mem::replace(&mut r.old[2 * u], Bucket::Small(Vec::new()));
                let upper = std::mem::replace(&mut r.old[2 * u + 1], Bucket::Small(Vec::new()));
                self.buckets.push(lower.merge(upper));
            }
            r.moved += 1;
        }
        if r.moved == units {
            self.resize = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn check(index: &PrefixIndex<u64>, model: &BTreeMap<u64, u64>, rng: &mut Rng, top: u64) {
        assert_eq!(index.len(), model.len());
        let old = index.resize.as_ref().map_or(&[][..], |r| &r.old[..]);
        if index.resize.is_none() {
            assert_eq!(index.buckets.len(), 1 << index.bits);
        }
        let held = index.buckets.iter().chain(old).map(Bucket::len).sum::<usize>();
        assert_eq!(held, model.len());
        for _ in 0..20 {
            let (a, b) = (rng.below(top), rng.below(top));
            let got: Vec<(u64, u64)> = index.range(a, b).map(|(k, v)| (k, *v)).collect();
            let want: Vec<(u64, u64)> = if a <= b {
                model.range(a..=b).map(|(k, v)| (*k, *v)).collect()
            } else {
                Vec::new()
            };
            assert_eq!(got, want, "range {a}..={b}");
        }
        let all: Vec<(u64, u64)> = index.range(0, top - 1).map(|(k, v)| (k, *v)).collect();
        let want: Vec<(u64, u64)> = model.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(all, want);
    }

    /// The index against a `BTreeMap`: inserts, replacements, removals, point reads and ranges
    /// through growth to thousands of buckets and back down to one, with full-width prefixes,
    /// short ones (few distinct prefixes), and keys ground into one bucket (it becomes a
    /// B-tree, and splits and merges as one).
    #[test]
    fn behaves_as_an_ordered_map() {
        for (width, seed, ground) in [
            (64, 1, false),
            (64, 2, true),
            (10, 3, false),
            (3, 4, true),
            (1, 5, false),
        ] {
            let top = if width == 64 { u64::MAX } else { 1u64 << width };
            let mut index: PrefixIndex<u64> = PrefixIndex::new(width);
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            let mut rng = Rng::new(seed);
            let key = |rng: &mut Rng| -> u64 {
                if !(ground && rng.chance(0.3)) {
                    rng.below(top)
                } else if width == 64 {
                    // The same top 16 bits.
                    0x5a5a << 48 | rng.below(1 << 48)
                } else {
                    // The top bit set.
                    1 << (width - 1) | rng.below(1 << (width - 1))
                }
            };
            for phase in 0..3 {
                let (inserts, steps) = match phase {
                    0 => (8, 40_000), // grow
                    1 => (5, 20_000), // churn
                    _ => (1, 60_000), // shrink
                };
                for step in 0..steps {
                    let r = rng.below(10);
                    if r < inserts {
                        let k = key(&mut rng);
                        assert_eq!(index.insert(k, step), model.insert(k, step));
                    } else {
                        // Mostly keys that are there.
                        let k = match model.range(key(&mut rng)..).next() {
                            Some((k, _)) if rng.chance(0.9) => *k,
                            _ => key(&mut rng),
                        };
                        assert_eq!(index.remove(k), model.remove(&k));
                    }
                    let k = key(&mut rng);
                    assert_eq!(index.get(k), model.get(&k));
                    if let Some(v) = index.get_mut(k) {
                        *v += 1;
                        *model.get_mut(&k).expect("in both") += 1;
                    }
                    if step % 5_000 == 0 {
                        check(&index, &model, &mut rng, top);
                    }
                }
                check(&index, &model, &mut rng, top);
                if width == 64 && phase == 0 {
                    assert!(
                        index.bits >= 10,
                        "grew: {} bits for {} entries",
                        index.bits,
                        index.len()
                    );
                    if ground {
                        let old = index.resize.as_ref().map_or(&[][..], |r| &r.old[..]);
                        let mut all = index.buckets.iter().chain(old);
                        assert!(all.any(|b| matches!(b, Bucket::Large(_))));
                    }
                }
            }
            assert!(
                index.bits <= 3,
                "shrank: {} bits for {} entries",
                index.bits,
                index.len()
            );
        }
    }
}
/// The longest single insert while one index grows to 3,000,000 entries (through doublings
/// at 2^k * 8): what a resize costs the event loop at once. A measurement, not a test:
/// `cargo test --release -p chordkv-core worst_insert -- --ignored --nocapture`.
#[cfg(test)]
mod probe {
    #[test]
    #[ignore]
    fn worst_insert_while_growing() {
        let mut index: super::PrefixIndex<u64> = super::PrefixIndex::new(64);
        let mut rng = crate::rng::Rng::new(9);
        let mut worst = (std::time::Duration::ZERO, 0usize);
        for i in 0..3_000_000usize {
            let k = rng.below(u64::MAX);
            let t = std::time::Instant::now();
            index.insert(k, i as u64);
            let took = t.elapsed();
            if took > worst.0 {
                worst = (took, i);
            }
        }
        println!("worst insert: {:?} at entry {}", worst.0, worst.1);
    }
}
