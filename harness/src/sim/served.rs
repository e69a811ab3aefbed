//! The store a simulated node's vnodes serve their clients' gets and writes on, as the server's
//! do ([`Host::serve_on_stores_inline`]): the vnode's memory partition, with a log of the
//! writes it applied. The simulator runs every other store op itself ([`Output::Store`]) and
//! gives its copy tracker and its key trace what each wrote; the served writes never reach it
//! as ops, so it takes them from this log after each of the node's steps.
//!
//! [`Host::serve_on_stores_inline`]: chordkv_core::chord::Host::serve_on_stores_inline
//! [`Output::Store`]: chordkv_core::chord::Output::Store

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chordkv_core::store::{Entry, MemoryStore, PutOutcome, Result, ScanCursor, Store};
use chordkv_protocol::{Id, Item};

/// A vnode's partition and the `(key, version)` of each write applied to it through this
/// handle, oldest first, until [`ServedStore::take_applied`].
pub struct ServedStore {
    inner: Arc<MemoryStore>,
    applied: Mutex<Vec<(Bytes, u64)>>,
}

impl ServedStore {
    pub fn new(inner: Arc<MemoryStore>) -> ServedStore {
        ServedStore {
            inner,
            applied: Mutex::new(Vec::new()),
        }
    }

    /// The writes applied since the last call, oldest first.
    pub fn take_applied(&self) -> Vec<(Bytes, u64)> {
        std::mem::take(&mut *self.applied.lock().expect("not poisoned"))
    }

    fn log(&self, key: &Bytes, version: u64, outcome: &Result<PutOutcome>) {
        if outcome.as_ref().is_ok_and(|o| o.applied) {
            self.applied
                .lock()
                .expect("not poisoned")
                .push((key.clone(), version));
        }
    }
}

impl Store for ServedStore {
    fn get(&self, key: &[u8]) -> Result<Option<Entry>> {
        self.inner.get(key)
    }
    fn get_with_id(&self, id: &Id, key: &[u8]) -> Result<Option<Entry>> {
        self.inner.get_with_id(id, key)
    }
    fn put(&self, key: &Bytes, entry: Entry) -> Result<PutOutcome> {
        let version = entry.version;
        let outcome = self.inner.put(key, entry);
        self.log(key, version, &outcome);
        outcome
    }
    fn put_with_id(&self, id: &Id, key: &Bytes, entry: Entry) -> Result<PutOutcome> {
        let version = entry.version;
        let outcome = self.inner.put_with_id(id, key, entry);
        self.log(key, version, &outcome);
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
