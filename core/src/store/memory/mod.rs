//! The in-memory driver: every entry in one allocation ([`record::Record`]), indexed once, in
//! ring order, by the first 64 bits of its key's id, behind one lock.
//!
//! ```text
//!   by_prefix: PrefixIndex<Slot>         prefix(id(key)) ──► Slot::One(record)
//!                                                        └─► Slot::Shared: look in `shared`
//!   shared:    BTreeMap<Id, {record}>    keys whose 64-bit prefix another key has too,
//!                                        by full id, then by key (no copy of the key)
//! ```
//!
//! One index serves both kinds of access. GET and SET come with the key's id, which the node
//! computed to route the request (`Store::get_with_id`), so a point operation is a lookup of
//! an integer in [`index::PrefixIndex`] (a directory of small sorted buckets of consecutive
//! prefixes over the arc the store holds: a cache miss or two, where a B-tree took one per level) and no SHA-1; a scan of a
//! ring range `(start, end]` is a range of prefixes, and only the entries whose prefix is that
//! of a bound are hashed to place them exactly. Ids are SHA-1 digests, so two keys share a
//! 64-bit prefix only when they share a hash tag (`{user}.a` and `{user}.b` have one id, by
//! design) or, among a million keys, with a probability of about 3·10⁻⁸; those keys are kept
//! in `shared`, ordered by `(id, key)`, so even a million keys under one hash tag cost a tree
//! lookup each.
//!
//! Per key this costs the record (17 bytes of header, the key, the value, 8 more with an
//! expiry) and a 16-byte `(prefix, pointer)` pair in a bucket, with the buckets' spare room and
//! directory about what a B-tree node's took; `results/memory.md` has the measured bytes per key
//! beside redis-server's (`bench/memory.sh`).
//!
//! Keys are network input, but they cannot crowd the index: they are placed by SHA-1, a client
//! that grinds keys into one bucket turns it into a B-tree, and one that grinds keys into one
//! prefix, or uses one hash tag, lands in `shared`, a B-tree: no input degrades a lookup below
//! O(log n). Nothing depends on a hash map's iteration order, so the simulator stays
//! deterministic.

mod index;
mod record;

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use chordkv_protocol::{Id, Item};
use parking_lot::RwLock;

use super::{
    Entry, KeyVersion, PrefetchPass, PutOutcome, RangeCounts, Result, ScanCursor, Store, SMALL_VALUE_BYTES,
};
use index::PrefixIndex;
use record::Record;

/// Entries indexed in ring order (see the module docs).
#[derive(Default)]
pub struct MemoryStore {
    inner: RwLock<Inner>,
    /// `inner.large` as of the last write, read without the lock.
    large: AtomicU64,
}

#[derive(Default)]
struct Inner {
    by_prefix: PrefixIndex<Slot>,
    shared: BTreeMap<Id, BTreeSet<ByKey>>,
    live: u64,
    /// Key and value bytes of every record, tombstones included ([`Store::bytes`]).
    bytes: u64,
    /// Records whose value is over [`SMALL_VALUE_BYTES`] ([`Store::values_all_small`]).
    large: u64,
    /// A prefix is the id's first `64 - shift` bits: 0 in use; tests shorten prefixes so that
    /// keys of different ids share them.
    shift: u32,
}

/// What the index holds for one 64-bit prefix (8 bytes: `Shared` is the pointer's niche).
enum Slot {
    /// The one key with this prefix.
    One(Record),
    /// Two or more keys have had this prefix: all of them are in `shared`.
    Shared,
}

/// A record ordered, and looked up, by its key alone (within one id's group in `shared`).
struct ByKey(Record);

impl Borrow<[u8]> for ByKey {
    fn borrow(&self) -> &[u8] {
        self.0.key()
    }
}

impl PartialEq for ByKey {
    fn eq(&self, other: &ByKey) -> bool {
        self.0.key() == other.0.key()
    }
}

impl Eq for ByKey {}

impl PartialOrd for ByKey {
    fn partial_cmp(&self, other: &ByKey) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByKey {
    fn cmp(&self, other: &ByKey) -> std::cmp::Ordering {
        self.0.key().cmp(other.0.key())
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// A store whose prefixes are the ids' first `bits` bits (1 to 64), so that tests can
    /// make keys of different ids share a prefix.
    #[cfg(test)]
    fn with_prefix_bits(bits: u32) -> MemoryStore {
        assert!((1..=64).contains(&bits));
        let store = MemoryStore::default();
        let mut inner = store.inner.write();
        inner.shift = 64 - bits;
        inner.by_prefix = PrefixIndex::new(bits);
        drop(inner);
        store
    }
}

impl Inner {
    /// The first bits of an id, which order ids as the id does (big-endian).
    fn prefix(&self, id: &Id) -> u64 {
        let mut head = [0u8; 8];
        head.copy_from_slice(&id.0[..8]);
        u64::from_be_bytes(head) >> self.shift
    }

    /// The lowest and the highest id with prefix `p`.
    fn prefix_ids(&self, p: u64) -> (Id, Id) {
        let low = p << self.shift;
        let high = low | ((1u64 << self.shift) - 1);
        let (mut lo, mut hi) = (Id::ZERO, Id::MAX);
        lo.0[..8].copy_from_slice(&low.to_be_bytes());
        hi.0[..8].copy_from_slice(&high.to_be_bytes());
        (lo, hi)
    }

    /// Counts a stored `entry` of `key` that replaced one of `previous` (live, expiry, bytes),
    /// or none.
    fn added(&mut self, key: &[u8], entry: &Entry, previous: Option<(bool, u64, usize)>) -> PutOutcome {
        let (previous_live, previous_expires_at, previous_bytes) = previous.unwrap_or((false, 0, 0));
        if previous_live {
            self.live -= 1;
        }
        let value_len = entry.value.as_ref().map_or(0, |v| v.len());
        self.bytes = self.bytes - previous_bytes as u64 + (key.len() + value_len) as u64;
        if previous.is_some() && previous_bytes - key.len() > SMALL_VALUE_BYTES {
            self.large -= 1;
        }
        if value_len > SMALL_VALUE_BYTES {
            self.large += 1;
        }
        if entry.is_live() {
            self.live += 1;
        }
        PutOutcome {
            applied: true,
            previous_live,
            previous_expires_at,
        }
    }

    /// [`Store::put_with_id`] under the write lock.
    fn merge(&mut self, id: &Id, key: &Bytes, entry: Entry) -> Result<PutOutcome> {
        let inner = self;
        let p = inner.prefix(id);
        // (previous_live, previous_expires_at, previous size) of a replaced entry; none for a
        // new key.
        let Some(slot) = inner
            .by_prefix
            .get_or_insert_with(p, || Slot::One(Record::new(key, &entry)))
        else {
            return Ok(inner.added(key, &entry, None));
        };
        let previous = match slot {
            Slot::One(stored) if stored.key() == &key[..] => {
                if stored.version() >= entry.version {
                    return Ok(not_applied(stored));
                }
                let previous = (stored.is_live(), stored.expires_at(), stored.data_len());
                *stored = Record::new(key, &entry);
                Some(previous)
            }
            Slot::One(_) => {
                // A second key with this prefix: from now on the prefix's keys are shared.
                if let Slot::One(other) = std::mem::replace(slot, Slot::Shared) {
                    let other_id = Id::of_key(other.key());
                    share(&mut inner.shared, other_id, other);
                }
                share(&mut inner.shared, *id, Record::new(key, &entry));
                None
            }
            Slot::Shared => {
                let stored = inner.shared.get(id).and_then(|group| group.get(&key[..]));
                let previous = match stored {
                    Some(stored) if stored.0.version() >= entry.version => return Ok(not_applied(&stored.0)),
                    Some(stored) => Some((stored.0.is_live(), stored.0.expires_at(), stored.0.data_len())),
                    None => None,
                };
                share(&mut inner.shared, *id, Record::new(key, &entry));
                previous
            }
        };
        Ok(inner.added(key, &entry, previous))
    }

    /// [`Store::delete`] under the write lock.
    fn delete(&mut self, key: &[u8], up_to_version: u64) -> Result<bool> {
        let id = Id::of_key(key);
        let inner = self;
        let p = inner.prefix(&id);
        let gone = match inner.by_prefix.get(p) {
            None => return Ok(false),
            Some(Slot::One(r)) => {
                if r.key() != key || r.version() > up_to_version {
                    return Ok(false);
                }
                let gone = (r.is_live(), r.data_len());
                inner.by_prefix.remove(p);
                gone
            }
            Some(Slot::Shared) => {
                let Some(group) = inner.shared.get_mut(&id) else {
                    return Ok(false);
                };
                let gone = match group.get(key) {
                    Some(r) if r.0.version() <= up_to_version => (r.0.is_live(), r.0.data_len()),
                    _ => return Ok(false),
                };
                group.remove(key);
                if group.is_empty() {
                    inner.shared.remove(&id);
                    let (lo, hi) = inner.prefix_ids(p);
                    if inner.shared.range(lo..=hi).next().is_none() {
                        inner.by_prefix.remove(p);
                    }
                }
                gone
            }
        };
        let (live, size) = gone;
        if live {
            inner.live -= 1;
        }
        inner.bytes -= size as u64;
        if size - key.len() > SMALL_VALUE_BYTES {
            inner.large -= 1;
        }
        Ok(true)
    }

    fn find(&self, id: &Id, key: &[u8]) -> Option<&Record> {
        match self.by_prefix.get(self.prefix(id))? {
            Slot::One(r) => (r.key() == key).then_some(r),
            Slot::Shared => self.shared.get(id)?.get(key).map(|k| &k.0),
        }
    }

    /// Visits the entries of `(start, end]` strictly after `after`, in ring order, while `f`
    /// returns true.
    fn visit(&self, start: &Id, end: &Id, after: Option<&ScanCursor>, mut f: impl FnMut(&Record) -> bool) {
        for segment in segments(start, end, after) {
            if !self.visit_segment(&segment, &mut f) {
                return;
            }
        }
    }

    fn visit_segment(&self, seg: &Segment, f: &mut impl FnMut(&Record) -> bool) -> bool {
        let from = match &seg.lower {
            Lower::Start => 0,
            Lower::Above(x) | Lower::After(x, _) => self.prefix(x),
        };
        let to = seg
            .upper
            .as_ref()
            .map_or(u64::MAX >> self.shift, |x| self.prefix(x));
        if from > to {
            return true;
        }
        for (p, slot) in self.by_prefix.range(from, to) {
            match slot {
                Slot::One(r) => {
                    // Only a bound's own prefix holds ids on both sides of it.
                    let on_bound =
                        (p == from && !matches!(seg.lower, Lower::Start)) || (p == to && seg.upper.is_some());
                    if on_bound && !seg.admits(&Id::of_key(r.key()), r.key()) {
                        continue;
                    }
                    if !f(r) {
                        return false;
                    }
                }
                Slot::Shared => {
                    let (lo, hi) = self.prefix_ids(p);
                    for (id, group) in self.shared.range(lo..=hi) {
                        if seg.upper.as_ref().is_some_and(|x| id > x) {
                            break;
                        }
                        let first: Bound<&[u8]> = match &seg.lower {
                            Lower::Start => Bound::Unbounded,
                            Lower::Above(x) if id > x => Bound::Unbounded,
                            Lower::Above(_) => continue,
                            Lower::After(x, _) if id > x => Bound::Unbounded,
                            Lower::After(x, key) if id == x => Bound::Excluded(&key[..]),
                            Lower::After(..) => continue,
                        };
                        for r in group.range::<[u8], _>((first, Bound::Unbounded)) {
                            if !f(&r.0) {
                                return false;
                            }
                        }
                    }
                }
            }
        }
        true
    }
}

/// Stores `record` under `id` in `shared`, replacing the record of the same key.
fn share(shared: &mut BTreeMap<Id, BTreeSet<ByKey>>, id: Id, record: Record) {
    shared.entry(id).or_default().replace(ByKey(record));
}

fn not_applied(stored: &Record) -> PutOutcome {
    PutOutcome {
        applied: false,
        previous_live: stored.is_live(),
        previous_expires_at: stored.expires_at(),
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Entry>> {
        self.get_with_id(&Id::of_key(key), key)
    }

    fn get_with_id(&self, id: &Id, key: &[u8]) -> Result<Option<Entry>> {
        debug_assert_eq!(*id, Id::of_key(key), "the caller's id is the key's");
        Ok(self.inner.read().find(id, key).map(Record::entry))
    }

    /// `Index` starts loading each id's bucket; `Entries` finds each entry in its bucket and
    /// starts loading its record.
    fn prefetch(&self, ids: &[Id], pass: PrefetchPass) {
        let inner = self.inner.read();
        for id in ids {
            let p = inner.prefix(id);
            match pass {
                PrefetchPass::Index => inner.by_prefix.prefetch(p),
                PrefetchPass::Entries => {
                    if let Some(Slot::One(r)) = inner.by_prefix.get(p) {
                        r.prefetch();
                    }
                }
            }
        }
    }

    fn put(&self, key: &Bytes, entry: Entry) -> Result<PutOutcome> {
        self.put_with_id(&Id::of_key(key), key, entry)
    }

    fn put_with_id(&self, id: &Id, key: &Bytes, entry: Entry) -> Result<PutOutcome> {
        debug_assert_eq!(*id, Id::of_key(key), "the caller's id is the key's");
        let mut inner = self.inner.write();
        let outcome = inner.merge(id, key, entry);
        self.large.store(inner.large, Ordering::Relaxed);
        outcome
    }

    fn delete(&self, key: &[u8], up_to_version: u64) -> Result<bool> {
        let mut inner = self.inner.write();
        let removed = inner.delete(key, up_to_version);
        self.large.store(inner.large, Ordering::Relaxed);
        removed
    }

    fn values_all_small(&self) -> bool {
        self.large.load(Ordering::Relaxed) == 0
    }

    fn scan(&self, start: &Id, end: &Id, after: Option<&ScanCursor>, limit: usize) -> Result<Vec<Item>> {
        self.scan_limited(start, end, after, limit, usize::MAX)
    }

    fn scan_limited(
        &self,
        start: &Id,
        end: &Id,
        after: Option<&ScanCursor>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Item>> {
        // As the trait's default, without copying the values it would drop.
        let mut out = Vec::new();
        let mut bytes = 0usize;
        self.inner.read().visit(start, end, after, |r| {
            bytes += r.key().len() + r.value_len();
            if out.len() == limit || (bytes > max_bytes && !out.is_empty()) {
                return false;
            }
            out.push(r.item());
            true
        });
        Ok(out)
    }

    fn scan_versions(
        &self,
        start: &Id,
        end: &Id,
        after: Option<&ScanCursor>,
        limit: usize,
    ) -> Result<Vec<KeyVersion>> {
        let mut out = Vec::new();
        self.inner.read().visit(start, end, after, |r| {
            if out.len() == limit {
                return false;
            }
            out.push(KeyVersion {
                key: Bytes::copy_from_slice(r.key()),
                version: r.version(),
                live: r.is_live(),
            });
            true
        });
        Ok(out)
    }

    fn count_range(&self, start: &Id, end: &Id) -> Result<u64> {
        let mut count = 0;
        self.inner.read().visit(start, end, None, |r| {
            count += r.is_live() as u64;
            true
        });
        Ok(count)
    }

    fn range_counts(&self, start: &Id, end: &Id, now: u64) -> Result<RangeCounts> {
        let mut counts = RangeCounts::default();
        self.inner.read().visit(start, end, None, |r| {
            counts.add(r.is_live(), r.expires_at(), now);
            true
        });
        Ok(counts)
    }

    fn len(&self) -> Result<u64> {
        Ok(self.inner.read().live)
    }

    fn bytes(&self) -> Result<Option<u64>> {
        Ok(Some(self.inner.read().bytes))
    }

    fn is_blocking(&self) -> bool {
        false
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

/// Where a segment of a scan starts.
enum Lower {
    /// At the segment's first id (0).
    Start,
    /// At ids above this one.
    Above(Id),
    /// Strictly after this `(id, key)` (a scan's cursor).
    After(Id, Bytes),
}

/// One contiguous stretch of ring order: ids from `lower` up to `upper` (inclusive; `None`:
/// to the top of the ring).
struct Segment {
    lower: Lower,
    upper: Option<Id>,
}

impl Segment {
    fn admits(&self, id: &Id, key: &[u8]) -> bool {
        let lower = match &self.lower {
            Lower::Start => true,
            Lower::Above(x) => id > x,
            Lower::After(x, k) => (id, key) > (x, &k[..]),
        };
        lower && self.upper.as_ref().is_none_or(|x| id <= x)
    }

    fn holds_id(&self, id: &Id) -> bool {
        let lower = match &self.lower {
            Lower::Start => true,
            Lower::Above(x) | Lower::After(x, _) => id > x,
        };
        lower && self.upper.as_ref().is_none_or(|x| id <= x)
    }
}

/// The segments, in ring order, that make up `(start, end]` after `after`.
///
/// ```text
///   start < end:   (start ........ end]                    one segment
///   start >= end:  (start ... MAX] [0 ... end]             two segments (wraps past zero)
/// ```
fn segments(start: &Id, end: &Id, after: Option<&ScanCursor>) -> Vec<Segment> {
    let mut segments = Vec::with_capacity(2);
    if start < end {
        segments.push(Segment {
            lower: Lower::Above(*start),
            upper: Some(*end),
        });
    } else {
        segments.push(Segment {
            lower: Lower::Above(*start),
            upper: None,
        });
        segments.push(Segment {
            lower: Lower::Start,
            upper: Some(*end),
        });
    }
    let Some((cid, ckey)) = after else { return segments };
    match segments.iter().position(|s| s.holds_id(cid)) {
        Some(pos) => {
            segments.drain(..pos);
            segments[0].lower = Lower::After(*cid, ckey.clone());
        }
        None => segments.clear(), // a cursor outside the range: nothing after it
    }
    segments
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use chordkv_protocol::in_half_open;

    /// The store against a plain ordered map of `(id, key)`: random merges, removals, reads
    /// and scans of random ring ranges with random cursors, with keys that share hash tags
    /// (one id for several keys) and, with short prefixes, ids that share a prefix.
    #[test]
    fn behaves_as_an_ordered_map_in_ring_order() {
        for (bits, seed) in [(64, 1), (64, 2), (6, 3), (12, 4), (1, 5)] {
            let s = MemoryStore::with_prefix_bits(bits);
            let mut model: BTreeMap<(Id, Bytes), Entry> = BTreeMap::new();
            let mut rng = Rng::new(seed);
            let key = |rng: &mut Rng| -> Bytes {
                let n = rng.below(300);
                Bytes::from(match rng.below(3) {
                    0 => format!("{{tag{}}}.{n}", n % 4),
                    _ => format!("key-{n}"),
                })
            };
            for step in 0..6_000 {
                let k = key(&mut rng);
                let id = Id::of_key(&k);
                match rng.below(10) {
                    0..=4 => {
                        let big = rng.chance(0.05);
                        let value = match rng.below(6) {
                            0 => None,
                            _ if big => Some(Bytes::from(vec![step as u8; record::LARGE_VALUE_BYTES + 1])),
                            _ => Some(Bytes::from(format!("v{step}"))),
                        };
                        let e = Entry {
                            version: rng.below(40),
                            value,
                            expires_at: if rng.chance(0.3) { rng.below(1000) } else { 0 },
                        };
                        let before = model.get(&(id, k.clone())).cloned();
                        let o = s.put_with_id(&id, &k, e.clone()).unwrap();
                        let newer = before.as_ref().is_none_or(|b| b.version < e.version);
                        assert_eq!(o.applied, newer, "step {step}");
                        assert_eq!(o.previous_live, before.as_ref().is_some_and(|b| b.is_live()));
                        assert_eq!(o.previous_expires_at, before.as_ref().map_or(0, |b| b.expires_at));
                        if newer {
                            model.insert((id, k), e);
                        }
                    }
                    5 | 6 => {
                        let up_to = rng.below(40);
                        let removes = model.get(&(id, k.clone())).is_some_and(|e| e.version <= up_to);
                        assert_eq!(s.delete(&k, up_to).unwrap(), removes, "step {step}");
                        if removes {
                            model.remove(&(id, k));
                        }
                    }
                    7 => {
                        // A prefetch (of this id, an absent one, any) changes nothing.
                        let mut other = Id::ZERO;
                        rng.fill(&mut other.0);
                        for pass in [PrefetchPass::Index, PrefetchPass::Entries] {
                            s.prefetch(&[id, other, Id::ZERO, Id::MAX], pass);
                        }
                        assert_eq!(
                            s.get_with_id(&id, &k).unwrap(),
                            model.get(&(id, k.clone())).cloned()
                        );
                    }
                    _ => {
                        let ids: Vec<Id> = model.keys().map(|(id, _)| *id).collect();
                        let pick = |rng: &mut Rng| -> Id {
                            match rng.below(4) {
                                0 if !ids.is_empty() => ids[rng.below(ids.len() as u64) as usize],
                                1 => Id::ZERO,
                                2 => Id::MAX,
                                _ => {
                                    let mut id = Id::ZERO;
                                    rng.fill(&mut id.0);
                                    id
                                }
                            }
                        };
                        let (start, end) = (pick(&mut rng), pick(&mut rng));
                        let cursor = match rng.below(3) {
                            0 => None,
                            1 => model
                                .keys()
                                .nth(rng.below(model.len() as u64 + 1) as usize)
                                .cloned(),
                            _ => Some((pick(&mut rng), k)),
                        };
                        let limit = 1 + rng.below(50) as usize;
                        let got: Vec<(Bytes, u64)> = s
                            .scan(&start, &end, cursor.as_ref(), limit)
                            .unwrap()
                            .into_iter()
                            .map(|it| (it.key, it.version))
                            .collect();
                        // Ring order from `start`: ids above it first, then from zero.
                        let rank = |id: &Id, key: &Bytes| (id <= &start, *id, key.clone());
                        let mut want: Vec<_> = model
                            .iter()
                            .filter(|((id, _), _)| in_half_open(id, &start, &end))
                            .filter(|((id, key), _)| match &cursor {
                                None => true,
                                Some((cid, ckey)) => {
                                    in_half_open(cid, &start, &end) && rank(id, key) > rank(cid, ckey)
                                }
                            })
                            .map(|((id, key), e)| (rank(id, key), (key.clone(), e.version)))
                            .collect();
                        want.sort();
                        let want: Vec<_> = want.into_iter().take(limit).map(|(_, kv)| kv).collect();
                        assert_eq!(
                            got, want,
                            "step {step}, bits {bits}: ({start:?}, {end:?}] after {cursor:?}"
                        );
                    }
                }
                let live = model.values().filter(|e| e.is_live()).count() as u64;
                assert_eq!(s.len().unwrap(), live, "step {step}");
                let bytes: usize = model
                    .iter()
                    .map(|((_, k), e)| k.len() + e.value.as_ref().map_or(0, |v| v.len()))
                    .sum();
                assert_eq!(s.bytes().unwrap(), Some(bytes as u64), "step {step}");
            }
            let whole = s.range_counts(&Id::ZERO, &Id::ZERO, 500).unwrap();
            let mut want = RangeCounts::default();
            for e in model.values() {
                want.add(e.is_live(), e.expires_at, 500);
            }
            assert_eq!(whole, want);
            assert_eq!(s.count_range(&Id::ZERO, &Id::ZERO).unwrap(), want.live);
        }
    }

    #[test]
    fn ranges_at_the_top_of_the_ring_never_panic() {
        let s = MemoryStore::new();
        s.put(
            &Bytes::from_static(b"k"),
            Entry {
                version: 1,
                value: Some(Bytes::new()),
                expires_at: 0,
            },
        )
        .unwrap();
        for (a, b) in [
            (Id::MAX, Id::MAX),
            (Id::MAX, Id::ZERO),
            (Id::ZERO, Id::MAX),
            (Id::ZERO, Id::ZERO),
        ] {
            let expect = chordkv_protocol::in_half_open(&Id::hash(b"k"), &a, &b) as usize;
            assert_eq!(s.scan(&a, &b, None, 10).unwrap().len(), expect, "({a:?}, {b:?}]");
            let cursor = (Id::hash(b"k"), Bytes::from_static(b"k"));
            assert!(s.scan(&a, &b, Some(&cursor), 10).unwrap().is_empty());
        }
    }

    #[test]
    fn the_map_and_the_ring_order_hold_the_same_keys() {
        let s = MemoryStore::new();
        let e = |version| Entry {
            version,
            value: Some(Bytes::from_static(b"v")),
            expires_at: 0,
        };
        let k = Bytes::from_static(b"k");
        s.put(&k, e(1)).unwrap();
        s.put(&k, e(2)).unwrap();
        let all = s.scan(&Id::ZERO, &Id::ZERO, None, 10).unwrap();
        assert_eq!(all.len(), 1, "an update adds no second ring entry");
        assert_eq!(all[0].version, 2);
        assert!(s.delete(&k, 2).unwrap());
        assert!(s.scan(&Id::ZERO, &Id::ZERO, None, 10).unwrap().is_empty());
        s.put(&k, e(3)).unwrap();
        assert_eq!(s.scan(&Id::ZERO, &Id::ZERO, None, 10).unwrap().len(), 1);
        assert_eq!(s.len().unwrap(), 1);
    }

    #[test]
    fn removing_most_keys_keeps_the_rest() {
        let s = MemoryStore::new();
        let key = |i: u32| Bytes::from(format!("key-{i}"));
        for i in 0..20_000 {
            s.put(
                &key(i),
                Entry {
                    version: 1,
                    value: Some(key(i)),
                    expires_at: 0,
                },
            )
            .unwrap();
        }
        // Past three-quarters removed, the table shrinks; the keys left must all be there.
        for i in 1_000..20_000 {
            assert!(s.delete(&key(i), 1).unwrap());
        }
        for i in 0..1_000 {
            assert_eq!(s.get(&key(i)).unwrap().and_then(|e| e.value), Some(key(i)));
        }
        assert_eq!(s.get(&key(1_000)).unwrap(), None);
        assert_eq!(s.len().unwrap(), 1_000);
        assert_eq!(s.scan(&Id::ZERO, &Id::ZERO, None, 100_000).unwrap().len(), 1_000);
    }
}
