//! The behaviour every [`Store`] driver must have, as one suite of checks. Each driver's tests
//! call [`run_all`] on a fresh, empty store (the memory driver below; the Redis driver against
//! a real `redis-server`).

use bytes::Bytes;
use chordkv_protocol::Id;

use chordkv_core::store::{execute, execute_since, Entry, Store, StoreOp, StoreOutcome};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn live(version: u64, v: &str) -> Entry {
    Entry {
        version,
        value: Some(b(v)),
        expires_at: 0,
    }
}

/// Runs every check in order on an empty store; panics with the failing check's name.
pub fn run_all(store: &dyn Store) {
    put_get_and_versions(store);
    tombstones(store);
    delete_up_to_version(store);
    scan_ring_ranges(store);
    scan_in_batches_with_byte_budget(store);
    no_loss_without_one(store);
}

fn put_get_and_versions(s: &dyn Store) {
    assert_eq!(s.get(b"a").unwrap(), None, "get of a missing key");
    let o = s.put(&b("a"), live(10, "one")).unwrap();
    assert!(o.applied && !o.previous_live);
    assert_eq!(s.get(b"a").unwrap(), Some(live(10, "one")));
    let o = s.put(&b("a"), live(5, "older")).unwrap();
    assert!(
        !o.applied && o.previous_live,
        "an older version must not overwrite"
    );
    let o = s.put(&b("a"), live(10, "same")).unwrap();
    assert!(!o.applied, "an equal version must not overwrite");
    let o = s.put(&b("a"), live(11, "two")).unwrap();
    assert!(o.applied && o.previous_live);
    assert_eq!(s.get(b"a").unwrap(), Some(live(11, "two")));
    assert_eq!(s.len().unwrap(), 1);
    // Binary keys and empty values.
    let key = Bytes::from_static(&[0, 255, 10, 13]);
    s.put(
        &key,
        Entry {
            version: 1,
            value: Some(Bytes::new()),
            expires_at: 0,
        },
    )
    .unwrap();
    assert_eq!(
        s.get(&key).unwrap(),
        Some(Entry {
            version: 1,
            value: Some(Bytes::new()),
            expires_at: 0
        })
    );
    assert_eq!(s.len().unwrap(), 2);
    assert!(s.delete(&key, u64::MAX).unwrap());
    // An expiry is kept with the value, read back by get and scan, and reported when the
    // entry is replaced.
    let expiring = Entry {
        version: 12,
        value: Some(b("three")),
        expires_at: 1_700_000_000_123,
    };
    s.put(&b("a"), expiring.clone()).unwrap();
    assert_eq!(s.get(b"a").unwrap(), Some(expiring.clone()));
    let scanned = s.scan(&Id::ZERO, &Id::ZERO, None, 10).unwrap();
    assert_eq!(scanned.len(), 1);
    assert_eq!(scanned[0].expires_at, expiring.expires_at);
    assert_eq!(scanned[0].value, expiring.value);
    let o = s.put(&b("a"), live(13, "four")).unwrap();
    assert!(o.applied && o.previous_live);
    assert_eq!(o.previous_expires_at, expiring.expires_at);
    assert_eq!(s.get(b"a").unwrap(), Some(live(13, "four")));
    assert!(s.delete(b"a", u64::MAX).unwrap());
    assert_eq!(s.len().unwrap(), 0);
}

fn tombstones(s: &dyn Store) {
    s.put(&b("t"), live(1, "v")).unwrap();
    let o = s
        .put(
            &b("t"),
            Entry {
                version: 2,
                value: None,
                expires_at: 0,
            },
        )
        .unwrap();
    assert!(o.applied && o.previous_live);
    assert_eq!(s.len().unwrap(), 0, "tombstones are not counted");
    assert_eq!(
        s.get(b"t").unwrap(),
        Some(Entry {
            version: 2,
            value: None,
            expires_at: 0
        })
    );
    let o = s.put(&b("t"), live(1, "resurrect")).unwrap();
    assert!(!o.applied, "an older value must not resurrect a deleted key");
    assert!(s.delete(b"t", 2).unwrap());
    assert_eq!(s.get(b"t").unwrap(), None);
}

fn delete_up_to_version(s: &dyn Store) {
    s.put(&b("d"), live(7, "v")).unwrap();
    assert!(!s.delete(b"d", 6).unwrap(), "a newer write survives a removal");
    assert!(s.get(b"d").unwrap().is_some());
    assert!(s.delete(b"d", 7).unwrap());
    assert!(!s.delete(b"d", 7).unwrap());
}

fn scan_ring_ranges(s: &dyn Store) {
    let keys: Vec<String> = (0..200).map(|i| format!("key-{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        s.put(&b(k), live(i as u64 + 1, k)).unwrap();
    }
    let mut ids: Vec<(Id, &String)> = keys.iter().map(|k| (Id::of_key(k.as_bytes()), k)).collect();
    ids.sort();
    let whole = s.scan(&ids[0].0, &ids[0].0, None, 1_000).unwrap();
    assert_eq!(whole.len(), 200, "start == end scans the whole ring");
    // Ring order from just after ids[0]: ids[1], ..., ids[199], ids[0].
    assert_eq!(whole[0].key, b(ids[1].1));
    assert_eq!(whole[199].key, b(ids[0].1));
    // A range that wraps past zero: (ids[150], ids[20]] holds 49 + 21 = 70 keys.
    let wrap = s.scan(&ids[150].0, &ids[20].0, None, 1_000).unwrap();
    assert_eq!(wrap.len(), 70);
    assert_eq!(wrap[0].key, b(ids[151].1));
    assert_eq!(wrap.last().unwrap().key, b(ids[20].1));
    for it in &wrap {
        assert!(chordkv_protocol::in_half_open(
            &Id::of_key(&it.key),
            &ids[150].0,
            &ids[20].0
        ));
    }
    // A range that does not wrap.
    assert_eq!(s.scan(&ids[10].0, &ids[19].0, None, 1_000).unwrap().len(), 9);
    // Resume after a cursor, across the wrap point.
    let mut got = Vec::new();
    let mut after = None;
    loop {
        let batch = s.scan(&ids[150].0, &ids[20].0, after.as_ref(), 7).unwrap();
        if batch.is_empty() {
            break;
        }
        let last = batch.last().unwrap();
        after = Some((Id::of_key(&last.key), last.key.clone()));
        got.extend(batch);
    }
    assert_eq!(got, wrap, "batched scan equals one scan");
    // scan_versions is scan without the values.
    let versions = s.scan_versions(&ids[150].0, &ids[20].0, None, 1_000).unwrap();
    let expected: Vec<chordkv_core::store::KeyVersion> = wrap
        .iter()
        .map(|it| chordkv_core::store::KeyVersion {
            key: it.key.clone(),
            version: it.version,
            live: it.value.is_some(),
        })
        .collect();
    assert_eq!(versions, expected, "scan_versions matches scan");
    for k in &keys {
        assert!(s.delete(k.as_bytes(), u64::MAX).unwrap());
    }
    assert_eq!(s.len().unwrap(), 0);
}

fn scan_in_batches_with_byte_budget(s: &dyn Store) {
    for i in 0..10 {
        s.put(
            &b(&format!("big-{i}")),
            Entry {
                version: 1,
                value: Some(Bytes::from(vec![7u8; 1000])),
                expires_at: 0,
            },
        )
        .unwrap();
    }
    let any = Id::hash(b"anything");
    let op = StoreOp::Scan {
        start: any,
        end: any,
        after: None,
        limit: 100,
        max_bytes: 2_500,
    };
    match execute(s, op).unwrap() {
        StoreOutcome::Scanned { items, more } => {
            assert_eq!(items.len(), 2, "the byte budget cuts the batch");
            assert!(more);
        }
        other => panic!("unexpected {other:?}"),
    }
    let op = StoreOp::Scan {
        start: any,
        end: any,
        after: None,
        limit: 100,
        max_bytes: 10,
    };
    match execute(s, op).unwrap() {
        StoreOutcome::Scanned { items, more } => assert!(items.len() == 1 && more, "one item always fits"),
        other => panic!("unexpected {other:?}"),
    }
    for i in 0..10 {
        s.delete(format!("big-{i}").as_bytes(), u64::MAX).unwrap();
    }
}

/// A store that lost nothing reports no loss (see [`Store`]: Lost data): its epoch is 0 after
/// every check above, and [`execute_since`] passes its answers through.
fn no_loss_without_one(s: &dyn Store) {
    assert_eq!(s.loss_epoch(), 0, "a loss reported while nothing was lost");
    s.put(&b("kept"), live(1, "v")).unwrap();
    let got = execute_since(
        s,
        StoreOp::Get {
            id: Id::of_key(b"kept"),
            key: b("kept"),
        },
        0,
    )
    .unwrap();
    assert_eq!(got, StoreOutcome::Got(Some(live(1, "v"))));
    assert!(s.delete(b"kept", 1).unwrap());
    assert_eq!(s.loss_epoch(), 0);
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_store_passes_the_suite() {
        super::run_all(&chordkv_core::store::MemoryStore::new());
    }
}
