//! Range digests for anti-entropy (Merkle style, one level per exchange).
//!
//! A ring range is split into equal sub-ranges ([`Id::split_range`]); each sub-range's digest
//! is the XOR of a 64-bit hash of every `(key, version)` in it, tombstones included. XOR makes
//! the digest independent of order and cheap to compute in one scan; two replicas with the
//! same keys at the same versions have equal digests, and a differing sub-range is split again
//! or compared key by key.

use bytes::Bytes;
use chordkv_protocol::{in_half_open, Id};

use super::{KeyVersion, Result, ScanCursor, Store, SCAN_BATCH};

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 64-bit hash of one stored `(key, version)`.
pub fn item_hash(key_id: &Id, version: u64) -> u64 {
    let mut head = [0u8; 8];
    head.copy_from_slice(&key_id.0[..8]);
    mix(u64::from_be_bytes(head) ^ mix(version.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

/// Visits every entry in `(start, end]`, in ring order, without its value. The key's id is
/// not computed (one SHA-1 per entry: a scan of a million keys would spend most of its time
/// there); see [`for_each_entry_with_id`] when it is needed.
pub fn for_each_entry<S: Store + ?Sized>(
    store: &S,
    start: &Id,
    end: &Id,
    mut f: impl FnMut(&KeyVersion),
) -> Result<()> {
    let mut after: Option<ScanCursor> = None;
    loop {
        let batch = store.scan_versions(start, end, after.as_ref(), SCAN_BATCH)?;
        for kv in &batch {
            f(kv);
        }
        match batch.last() {
            Some(last) if batch.len() == SCAN_BATCH => {
                after = Some((Id::of_key(&last.key), last.key.clone()))
            }
            _ => return Ok(()),
        }
    }
}

/// [`for_each_entry`] with each entry's key id ([`Id::of_key`]).
pub fn for_each_entry_with_id<S: Store + ?Sized>(
    store: &S,
    start: &Id,
    end: &Id,
    mut f: impl FnMut(&Id, &KeyVersion),
) -> Result<()> {
    for_each_entry(store, start, end, |kv| f(&Id::of_key(&kv.key), kv))
}

/// The digest of each of `parts` equal sub-ranges of `(start, end]`.
pub fn range_digests(store: &dyn Store, start: &Id, end: &Id, parts: u32) -> Result<Vec<u64>> {
    let bounds = Id::split_range(start, end, parts);
    let mut digests = vec![0u64; bounds.len()];
    // Entries come in ring order, so the sub-range index only moves forward.
    let mut part = 0usize;
    let mut lo = *start;
    for_each_entry_with_id(store, start, end, |id, kv| {
        let version = kv.version;
        while part + 1 < bounds.len() && !in_half_open(id, &lo, &bounds[part]) {
            lo = bounds[part];
            part += 1;
        }
        digests[part] ^= item_hash(id, version);
    })?;
    Ok(digests)
}

/// Every `(key, version)` in `(start, end]`, tombstones included.
pub fn key_versions(store: &dyn Store, start: &Id, end: &Id) -> Result<Vec<(Bytes, u64)>> {
    let mut out = Vec::new();
    for_each_entry(store, start, end, |kv| out.push((kv.key.clone(), kv.version)))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Entry, MemoryStore};

    #[test]
    fn equal_contents_give_equal_digests_and_a_difference_shows_in_one_part() {
        let (a, b) = (MemoryStore::new(), MemoryStore::new());
        for i in 0..500 {
            let key = Bytes::from(format!("k{i}"));
            for s in [&a, &b] {
                s.put(
                    &key,
                    Entry {
                        version: 7,
                        value: Some(Bytes::from_static(b"v")),
                        expires_at: 0,
                    },
                )
                .unwrap();
            }
        }
        let start = Id::hash(b"start");
        let da = range_digests(&a, &start, &start, 16).unwrap();
        assert_eq!(da, range_digests(&b, &start, &start, 16).unwrap());
        b.put(
            &Bytes::from_static(b"k42"),
            Entry {
                version: 8,
                value: None,
                expires_at: 0,
            },
        )
        .unwrap();
        let db = range_digests(&b, &start, &start, 16).unwrap();
        assert_eq!(da.iter().zip(&db).filter(|(x, y)| x != y).count(), 1);
        assert_eq!(key_versions(&a, &start, &start).unwrap().len(), 500);
    }
}
