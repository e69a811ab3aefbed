//! The in-memory driver: a hash map for point operations and a `BTreeSet` in ring order for
//! scans, behind one lock.
//!
//! ```text
//!   map:   key ──► entry              GET, PUT of a known key, DELETE: one hash lookup,
//!                                      no SHA-1, no copy of the key
//!   order: { (id(key), key) }         scans of a ring range; SHA-1 only when a key is new
//! ```
//!
//! The map is a `std` `HashMap`: its SipHash with per-process random keys keeps a client that
//! chooses keys from forcing collisions (keys are network input). Nothing iterates it, so its
//! order never reaches an output and the simulator stays deterministic.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;

use bytes::Bytes;
use chordkv_protocol::{Id, Item};
use parking_lot::RwLock;

use super::{Entry, PutOutcome, Result, ScanCursor, Store};

/// Table size (slots) above which removals shrink the map once it is three-quarters empty;
/// each shrink rehashes what is left, so it is kept for large tables and amortised.
const SHRINK_ABOVE_SLOTS: usize = 4_096;

/// Entries by key, and their keys in ring order `(id(key), key)`, so a ring range is one or
/// two set ranges. Both always hold the same keys.
#[derive(Default)]
pub struct MemoryStore {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Bytes, Entry>,
    order: BTreeSet<(Id, Bytes)>,
    live: u64,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

/// A value of our own: keys and values arrive as slices of a connection's read buffer, and
/// keeping a slice would keep the whole buffer alive.
fn own(entry: Entry) -> Entry {
    Entry {
        version: entry.version,
        value: entry.value.map(|v| Bytes::copy_from_slice(&v)),
        expires_at: entry.expires_at,
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Entry>> {
        Ok(self.inner.read().map.get(key).cloned())
    }

    fn put(&self, key: &Bytes, entry: Entry) -> Result<PutOutcome> {
        let live_now = entry.is_live();
        let mut inner = self.inner.write();
        let inner = &mut *inner;
        let (previous_live, previous_expires_at) = match inner.map.get_mut(&key[..]) {
            Some(stored) => {
                let previous_live = stored.is_live();
                let previous_expires_at = stored.expires_at;
                if stored.version >= entry.version {
                    return Ok(PutOutcome {
                        applied: false,
                        previous_live,
                        previous_expires_at,
                    });
                }
                // The stored key is kept: it is already our own copy.
                *stored = own(entry);
                if previous_live {
                    inner.live -= 1;
                }
                (previous_live, previous_expires_at)
            }
            None => {
                let key = Bytes::copy_from_slice(key);
                inner.order.insert((Id::of_key(&key), key.clone()));
                inner.map.insert(key, own(entry));
                (false, 0)
            }
        };
        if live_now {
            inner.live += 1;
        }
        Ok(PutOutcome {
            applied: true,
            previous_live,
            previous_expires_at,
        })
    }

    fn delete(&self, key: &[u8], up_to_version: u64) -> Result<bool> {
        let mut inner = self.inner.write();
        let inner = &mut *inner;
        match inner.map.get(key) {
            Some(e) if e.version <= up_to_version => {
                let live = e.is_live();
                if let Some((key, _)) = inner.map.remove_entry(key) {
                    inner.order.remove(&(Id::of_key(&key), key));
                }
                // A hash map keeps its table when emptied (a `BTreeMap` frees its nodes): give
                // the memory back once a handoff or a collection has removed most keys.
                if inner.map.capacity() > SHRINK_ABOVE_SLOTS && inner.map.len() < inner.map.capacity() / 4 {
                    inner.map.shrink_to_fit();
                }
                if live {
                    inner.live -= 1;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn scan(&self, start: &Id, end: &Id, after: Option<&ScanCursor>, limit: usize) -> Result<Vec<Item>> {
        let inner = self.inner.read();
        let mut out = Vec::new();
        for (lo, hi) in ring_segments(start, end, after) {
            for (_, key) in inner.order.range((lo, hi)) {
                if out.len() == limit {
                    return Ok(out);
                }
                // Always there: the map and the set hold the same keys.
                if let Some(e) = inner.map.get(key) {
                    out.push(Item {
                        key: key.clone(),
                        version: e.version,
                        value: e.value.clone(),
                        expires_at: e.expires_at,
                    });
                }
            }
        }
        Ok(out)
    }

    fn len(&self) -> Result<u64> {
        Ok(self.inner.read().live)
    }

    fn is_blocking(&self) -> bool {
        false
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

type KeyBound = Bound<(Id, Bytes)>;

/// The map ranges, in ring order, that make up `(start, end]` after `after`.
///
/// ```text
///   start < end:   (start ........ end]                    one segment
///   start >= end:  (start ... MAX] [0 ... end]             two segments (wraps past zero)
/// ```
fn ring_segments(start: &Id, end: &Id, after: Option<&ScanCursor>) -> Vec<(KeyBound, KeyBound)> {
    let one = Id::from_u64(1);
    // "id > x": every key of id x + 1 and up; nothing when x is the top of the ring.
    let above = |id: &Id| -> Option<KeyBound> {
        (*id != Id::MAX).then(|| Bound::Included((id.wrapping_add(&one), Bytes::new())))
    };
    // "id <= x".
    let up_to = |id: &Id| -> KeyBound {
        if *id == Id::MAX {
            Bound::Unbounded
        } else {
            Bound::Excluded((id.wrapping_add(&one), Bytes::new()))
        }
    };
    let mut segments: Vec<(KeyBound, KeyBound)> = Vec::with_capacity(2);
    if start < end {
        if let Some(lo) = above(start) {
            segments.push((lo, up_to(end)));
        }
    } else {
        if let Some(lo) = above(start) {
            segments.push((lo, Bound::Unbounded));
        }
        segments.push((Bound::Unbounded, up_to(end)));
    }
    let Some((cid, ckey)) = after else { return segments };
    let cursor = (*cid, ckey.clone());
    let holds = |(lo, hi): &(KeyBound, KeyBound)| -> bool {
        let lo_ok = match lo {
            Bound::Included(b) => &cursor >= b,
            Bound::Excluded(b) => &cursor > b,
            Bound::Unbounded => true,
        };
        let hi_ok = match hi {
            Bound::Included(b) => &cursor <= b,
            Bound::Excluded(b) => &cursor < b,
            Bound::Unbounded => true,
        };
        lo_ok && hi_ok
    };
    match segments.iter().position(holds) {
        Some(pos) => {
            segments.drain(..pos);
            segments[0].0 = Bound::Excluded(cursor);
        }
        None => segments.clear(), // a cursor outside the range: nothing after it
    }
    segments
}

#[cfg(test)]
mod tests {
    use super::*;

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
