//! The store a simulated node's vnodes serve their clients' gets and writes on, as the server's
//! do ([`Host::serve_on_stores_inline`]): the vnode's memory partition, with a log of the
//! writes it applied and of the reads of the traced key. The simulator runs every other store
//! op itself ([`Output::Store`]) and gives its copy tracker and its key trace what each wrote;
//! the served ops never reach it as ops, so it takes them from this log after each of the
//! node's steps.
//!
//! [`Host::serve_on_stores_inline`]: chordkv_core::chord::Host::serve_on_stores_inline
//! [`Output::Store`]: chordkv_core::chord::Output::Store

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chordkv_core::store::{Entry, MemoryStore, PutOutcome, Result, ScanCursor, Store};
use chordkv_protocol::{Id, Item};

/// What a served op did, in the log of a [`ServedStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Served {
    /// A write of `version` of the key was applied.
    Applied(Bytes, u64),
    /// The traced key was read: the version held then, if any.
    TracedRead(Option<u64>),
}

/// A vnode's partition and what was served on it through this handle, oldest first, until
/// [`ServedStore::take_log`]: every write applied, and the reads of `trace_key`.
pub struct ServedStore {
    inner: Arc<MemoryStore>,
    trace_key: Option<Bytes>,
    log: Mutex<Vec<Served>>,
}

impl ServedStore {
    pub fn new(inner: Arc<MemoryStore>, trace_key: Option<Bytes>) -> ServedStore {
        ServedStore {
            inner,
            trace_key,
            log: Mutex::new(Vec::new()),
        }
    }

    /// What was served since the last call, oldest first.
    pub fn take_log(&self) -> Vec<Served> {
        std::mem::take(&mut *self.log.lock().expect("not poisoned"))
    }

    fn push(&self, served: Served) {
        self.log.lock().expect("not poisoned").push(served);
    }

    fn read(&self, key: &[u8], got: &Result<Option<Entry>>) {
        if self.trace_key.as_deref() == Some(key) {
            let held = got.as_ref().ok().and_then(|e| e.as_ref().map(|e| e.version));
            self.push(Served::TracedRead(held));
        }
    }

    fn wrote(&self, key: &Bytes, version: u64, outcome: &Result<PutOutcome>) {
        if outcome.as_ref().is_ok_and(|o| o.applied) {
            self.push(Served::Applied(key.clone(), version));
        }
    }
}

impl Store for ServedStore {
    fn get(&self, key: &[u8]) -> Result<Option<Entry>> {
        let got = self.inner.get(key);
        self.read(key, &got);
        got
    }
    fn get_with_id(&self, id: &Id, key: &[u8]) -> Result<Option<Entry>> {
        let got = self.inner.get_with_id(id, key);
        self.read(key, &got);
        got
    }
    fn put(&self, key: &Bytes, entry: Entry) -> Result<PutOutcome> {
        let version = entry.version;
        let outcome = self.inner.put(key, entry);
        self.wrote(key, version, &outcome);
        outcome
    }
    fn put_with_id(&self, id: &Id, key: &Bytes, entry: Entry) -> Result<PutOutcome> {
        let version = entry.version;
        let outcome = self.inner.put_with_id(id, key, entry);
        self.wrote(key, version, &outcome);
        outcome
    }
    fn delete(&self, key: &[u8], up_to_version: u64) -> Result<bool> {
        self.inner.delete(key, up_to_version)
    }
    fn scan(&self, start: &Id, end: &Id, after: Option<&ScanCursor>, limit: usize) -> Result<Vec<Item>> {
        self.inner.scan(start, end, after, limit)
    }
    fn len(&self) -> Result<u64> {
        self.inner.len()
    }
    fn is_blocking(&self) -> bool {
        false
    }
    fn name(&self) -> &'static str {
        self.inner.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: u64) -> Entry {
        Entry::new(version, Some(Bytes::from_static(b"v")))
    }

    /// The log holds the writes applied (not one an older version lost to) and the reads of
    /// the traced key only.
    #[test]
    fn the_log_holds_the_writes_applied_and_the_traced_reads() {
        let traced = Bytes::from_static(b"traced");
        let other = Bytes::from_static(b"other");
        let s = ServedStore::new(Arc::new(MemoryStore::new()), Some(traced.clone()));
        let id = |k: &Bytes| Id::of_key(k);
        s.put_with_id(&id(&traced), &traced, entry(20)).unwrap();
        s.put_with_id(&id(&traced), &traced, entry(10)).unwrap(); // older: not applied
        s.put_with_id(&id(&other), &other, entry(5)).unwrap();
        s.get_with_id(&id(&other), &other).unwrap();
        s.get_with_id(&id(&traced), &traced).unwrap();
        assert_eq!(
            s.take_log(),
            vec![
                Served::Applied(traced.clone(), 20),
                Served::Applied(other, 5),
                Served::TracedRead(Some(20)),
            ]
        );
        assert!(s.take_log().is_empty(), "taken");
        assert_eq!(s.inner.get(&traced).unwrap().map(|e| e.version), Some(20));
    }
}
