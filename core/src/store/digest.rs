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

/// The 64-bit hash of one stored `(key, version)`, from the key's bytes (its length, then 8
/// bytes at a time, each step mixed), not its ring id: keys of one hash tag (`{t}a`, `{t}b`)
/// share their id, and an Execute writes them at one version, so hashes of the id alone were
/// equal and cancelled in the XOR: a copy holding both (live, or as tombstones) had the digest
/// of a copy holding neither, and anti-entropy saw nothing to repair.
pub fn item_hash(key: &[u8], version: u64) -> u64 {
    let mut h = mix((key.len() as u64).wrapping_add(0x9e37_79b9_7f4a_7c15));
    for chunk in key.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = mix(h ^ u64::from_le_bytes(word));
    }
    mix(h ^ mix(version.wrapping_add(0x9e37_79b9_7f4a_7c15)))
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

/// The digests of a ring range ([`range_digests`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeDigests {
    /// The digest of each of the equal sub-ranges, in ring order.
    pub parts: Vec<u64>,
    /// The lowest version among the range's tombstones (`None`: it holds none). Taken in the
    /// same scan, so anti-entropy knows without another scan whether a tombstone collection
    /// would find anything old enough to remove.
    pub oldest_tombstone: Option<u64>,
}

/// The digest of each of `parts` equal sub-ranges of `(start, end]`, and the oldest tombstone
/// in it, in one scan.
pub fn range_digests(store: &dyn Store, start: &Id, end: &Id, parts: u32) -> Result<RangeDigests> {
    let bounds = Id::split_range(start, end, parts);
    let mut digests = vec![0u64; bounds.len()];
    let mut oldest_tombstone: Option<u64> = None;
    // Entries come in ring order, so the sub-range index only moves forward.
    let mut part = 0usize;
    let mut lo = *start;
    for_each_entry_with_id(store, start, end, |id, kv| {
        let version = kv.version;
        while part + 1 < bounds.len() && !in_half_open(id, &lo, &bounds[part]) {
            lo = bounds[part];
            part += 1;
        }
        digests[part] ^= item_hash(&kv.key, version);
        if !kv.live {
            oldest_tombstone = Some(oldest_tombstone.map_or(version, |v| v.min(version)));
        }
    })?;
    Ok(RangeDigests {
        parts: digests,
        oldest_tombstone,
    })
}

/// The parts of the ring in none of `ranges` (each `(start, end]`; `start == end` is the whole
/// ring), as `(start, end]` ranges in ring order, adjacent parts merged: empty when `ranges`
/// cover the ring, the whole ring `(ZERO, ZERO]` when there are no ranges.
///
/// A node's store holds its primary range and the ranges it is a replica of; what lies
/// outside them is stray copies, so a stray-copy collection scans only these parts instead of
/// the whole store (`StoreOp::RetainRanges`).
pub fn uncovered(ranges: &[(Id, Id)]) -> Vec<(Id, Id)> {
    if ranges.is_empty() {
        return vec![(Id::ZERO, Id::ZERO)];
    }
    if ranges.iter().any(|(s, e)| s == e) {
        return Vec::new();
    }
    let mut points: Vec<Id> = ranges.iter().flat_map(|(s, e)| [*s, *e]).collect();
    points.sort_unstable();
    points.dedup();
    // Between two neighbouring boundaries no range starts or ends, so the segment
    // `(lo, hi]` lies wholly inside a range or wholly outside every one, and `hi` tells which.
    let mut gaps: Vec<(Id, Id)> = Vec::new();
    for j in 0..points.len() {
        let (lo, hi) = (points[j], points[(j + 1) % points.len()]);
        if ranges.iter().any(|(s, e)| in_half_open(&hi, s, e)) {
            continue;
        }
        match gaps.last_mut() {
            Some(g) if g.1 == lo => g.1 = hi,
            _ => gaps.push((lo, hi)),
        }
    }
    // The last gap may run on into the first across the lowest boundary.
    if gaps.len() >= 2 && gaps[gaps.len() - 1].1 == gaps[0].0 {
        let last = gaps.pop().expect("two or more gaps"); // faulty code
        gaps[0].0 = last.0;
    }
    gaps
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

    /// Keys of one hash tag share their ring id and, written by one Execute (`MSET {t}a 1
    /// {t}b 2`, `DEL {t}a {t}b`), their version: a copy holding two such tombstones must not
    /// digest like a copy holding nothing, or anti-entropy never repairs the difference and a
    /// clean round collects the tombstones while another copy keeps the live values.
    #[test]
    fn two_keys_of_one_tag_at_one_version_show_in_the_digests() {
        let (a, b) = (MemoryStore::new(), MemoryStore::new());
        for k in [&b"{t}a"[..], b"{t}b"] {
            a.put(&Bytes::copy_from_slice(k), Entry::new(5 << 16, None))
                .unwrap();
        }
        let da = range_digests(&a, &Id::ZERO, &Id::ZERO, 64).unwrap();
        let db = range_digests(&b, &Id::ZERO, &Id::ZERO, 64).unwrap();
        assert_ne!(
            da.parts, db.parts,
            "a copy with two tombstones digests like an empty one"
        );
    }

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
        assert_eq!(da.oldest_tombstone, None);
        let da = da.parts;
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
        assert_eq!(db.oldest_tombstone, Some(8));
        let db = db.parts;
        assert_eq!(da.iter().zip(&db).filter(|(x, y)| x != y).count(), 1);
        assert_eq!(key_versions(&a, &start, &start).unwrap().len(), 500);
    }

    #[test]
    fn uncovered_is_exactly_the_ring_outside_the_ranges() {
        let seed = 0x5eed_u64;
        let mut rng = crate::rng::Rng::new(seed);
        // Few distinct boundary values, so ranges share ends, wrap and nest.
        let pick = |rng: &mut crate::rng::Rng| {
            let mut b = [0u8; 20];
            b[0] = rng.below(8) as u8 * 32;
            Id(b)
        };
        for case in 0..2_000 {
            let n = rng.below(5);
            let ranges: Vec<(Id, Id)> = (0..n).map(|_| (pick(&mut rng), pick(&mut rng))).collect();
            let gaps = uncovered(&ranges);
            for probe in 0..=255u8 {
                let mut b = [0u8; 20];
                b[0] = probe;
                b[19] = probe.wrapping_mul(7);
                for x in [Id(b), Id([probe; 20])] {
                    let kept = ranges.iter().any(|(s, e)| in_half_open(&x, s, e));
                    let in_gaps = gaps.iter().filter(|(s, e)| in_half_open(&x, s, e)).count();
                    assert_eq!(
                        in_gaps,
                        usize::from(!kept),
                        "seed {seed} case {case}: {x:?} in {ranges:?}, gaps {gaps:?}"
                    );
                }
            }
        }
        assert_eq!(uncovered(&[]), vec![(Id::ZERO, Id::ZERO)]);
    }
}
