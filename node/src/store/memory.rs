//! The in-memory driver: a `BTreeMap` in ring order behind a lock.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;
use chordkv_protocol::{Id, Item};
use parking_lot::RwLock;

use super::{Entry, PutOutcome, Result, ScanCursor, Store};

/// Keys sorted by `(id(key), key)`, so a ring range is one or two map ranges.
#[derive(Default)]
pub struct MemoryStore {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    map: BTreeMap<(Id, Bytes), Entry>,
    live: u64,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Entry>> {
        let k = (Id::hash(key), Bytes::copy_from_slice(key));
        Ok(self.inner.read().map.get(&k).cloned())
    }

    fn put(&self, key: &Bytes, entry: Entry) -> Result<PutOutcome> {
        // Keys and values arrive as slices of a connection's read buffer; keeping a slice would
        // keep the whole buffer alive, so the store keeps copies of its own.
        let key = Bytes::copy_from_slice(key);
        let entry = Entry {
            version: entry.version,
            value: entry.value.map(|v| Bytes::copy_from_slice(&v)),
        };
        let mut inner = self.inner.write();
        let inner = &mut *inner;
        let live_now = entry.is_live();
        let slot = inner.map.entry((Id::hash(&key), key));
        let outcome = match slot {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(entry);
                PutOutcome {
                    applied: true,
                    previous_live: false,
                }
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                let previous_live = o.get().is_live();
                if o.get().version >= entry.version {
                    return Ok(PutOutcome {
                        applied: false,
                        previous_live,
                    });
                }
                o.insert(entry);
                if previous_live {
                    inner.live -= 1;
                }
                PutOutcome {
                    applied: true,
                    previous_live,
                }
            }
        };
        if live_now {
            inner.live += 1;
        }
        Ok(outcome)
    }

    fn delete(&self, key: &[u8], up_to_version: u64) -> Result<bool> {
        let mut inner = self.inner.write();
        let k = (Id::hash(key), Bytes::copy_from_slice(key));
        match inner.map.get(&k) {
            Some(e) if e.version <= up_to_version => {
                let live = e.is_live();
                inner.map.remove(&k);
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
            for ((_, key), e) in inner.map.range((lo, hi)) {
                if out.len() == limit {
                    return Ok(out);
                }
                out.push(Item {
                    key: key.clone(),
                    version: e.version,
                    value: e.value.clone(),
                });
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
}
