//! Storage: one [`Store`] trait, the in-memory driver, and the operations the Chord core asks
//! of it. The Redis driver, which does network I/O, is the server crate's
//! (`chordkv_server::store::RedisStore`).
//!
//! The core never calls a store: it emits a [`StoreOp`] with an id and later receives the
//! [`StoreOutcome`]. The server decides where an op runs: inline on the event loop for a
//! store that never blocks (memory), on worker threads for one that does (Redis), so a slow
//! driver never stalls the loop. [`execute`] is the one place an op meets a driver.
//!
//! Every write is a *merge*: the stored entry is replaced only by a higher version, and a
//! delete is a tombstone (an entry with no value). So ops may run in any order on any thread,
//! and a stale copy arriving late (a transfer, a retry) can never overwrite newer data.
//!
//! Keys are kept in ring order, `(id(key), key)`, so the keys of a ring range `(start, end]`
//! can be scanned in batches for handoff.
//!
//! # Lost data
//!
//! A store behind a service can lose everything it held while the node keeps running: a Redis
//! restarted without persistence, a flushed database, evicted keys. Answering from what is left
//! would be wrong ("not found" for a key the node should hold), so a driver that can tell
//! reports it: see [`StoreError::Lost`] and [`Store::loss_epoch`] for the contract, and
//! [`execute_since`] for the way to run ops that closes the window between a loss and the
//! caller learning of it.

pub mod digest;
pub mod memory;

use bytes::Bytes;
use chordkv_protocol::{Id, Item};

pub use memory::MemoryStore;

/// A stored value and its version; `value: None` is a tombstone.
///
/// `expires_at`: when the value expires, in milliseconds since the Unix epoch on the clock of
/// the owner that wrote it (Redis' `PXAT` time); 0 for never. It is part of the version: a
/// new expiry is a new version of the entry, replicated, handed off and repaired with it. An
/// entry whose time has come is read as absent ([`Entry::value_at`]) until its owner replaces
/// it with a tombstone (the expiry sweep).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub version: u64,
    pub value: Option<Bytes>,
    pub expires_at: u64,
}

impl Entry {
    /// A live value that never expires, or a tombstone (`value: None`).
    pub fn new(version: u64, value: Option<Bytes>) -> Entry {
        Entry {
            version,
            value,
            expires_at: 0,
        }
    }

    /// Whether the entry holds a value (expired or not): not a tombstone.
    pub fn is_live(&self) -> bool {
        self.value.is_some()
    }

    /// Whether the entry's expiry time has come at `now` (milliseconds since the Unix epoch).
    pub fn is_expired(&self, now: u64) -> bool {
        is_expired(self.expires_at, now)
    }

    /// The value as a read at `now` sees it: none for a tombstone or an expired value.
    pub fn value_at(&self, now: u64) -> Option<&Bytes> {
        self.value.as_ref().filter(|_| !self.is_expired(now))
    }

    /// [`Entry::value_at`], taking the value out of the entry: no clone of a `Bytes` (a
    /// store's fresh copy would be promoted to a shared one, an allocation, only to be dropped
    /// here).
    pub fn into_value_at(self, now: u64) -> Option<Bytes> {
        let expired = self.is_expired(now);
        self.value.filter(|_| !expired)
    }
}

/// Whether an expiry time (`0`: none) has come at `now`, both in milliseconds since the Unix
/// epoch. Redis' rule: a key expires when its time is reached.
pub fn is_expired(expires_at: u64, now: u64) -> bool {
    expires_at != 0 && expires_at <= now
}

/// What a merge did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    /// The entry was newer than the stored one and replaced it.
    pub applied: bool,
    /// A live (non-tombstone) value was stored before...
    pub previous_live: bool,
    /// ...with this expiry (0: none, or nothing stored).
    pub previous_expires_at: u64,
}

/// A position in ring order, for resuming a scan after it.
pub type ScanCursor = (Id, Bytes);

/// An entry without its value: what digests, key lists and collections need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyVersion {
    pub key: Bytes,
    pub version: u64,
    /// False for a tombstone.
    pub live: bool,
}

/// Entries read per round trip by whole-range operations (counts, digests).
pub const SCAN_BATCH: usize = 1_024;

/// Why a store operation failed: the core's [`crate::Error`], under the name the [`Store`]
/// contract uses (a driver returns [`StoreError::Unavailable`] or [`StoreError::Lost`]).
pub use crate::error::Error as StoreError;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A storage driver. Implementations are shared across worker threads.
///
/// # Lost data
///
/// A driver that can detect that its backing service lost the entries it held reports each
/// loss in two ways:
///
/// - **The error**: every operation that finds the store in the lost state fails with
///   [`StoreError::Lost`] and changes nothing. The driver then marks the store as found again,
///   so operations after that succeed on whatever the store still holds (maybe nothing). Ops
///   running at that moment on other threads may see the loss too: a loss is reported by at
///   least one operation, possibly by several.
/// - **The epoch**: [`Store::loss_epoch`] counts the losses detected since the store was
///   opened. It is raised before the store is marked found again, so an operation that
///   succeeded on the emptied store returns after the raise: a caller that reads the epoch
///   after an operation returned, and finds it where it was when the caller last handled a
///   loss, knows that the result was not read from a store that had lost data since.
///   [`execute_since`] does exactly that.
///
/// What to do about a loss (refill from replicas, refuse to answer until refilled) is the
/// caller's. A driver that cannot lose data behind the node's back (memory) never reports one.
/// Losses before the store was opened are not reported: a store opened empty is just empty.
pub trait Store: Send + Sync {
    /// The entry for `key`, tombstones included.
    fn get(&self, key: &[u8]) -> Result<Option<Entry>>;
    /// Stores `entry` unless the stored version is the same or higher.
    fn put(&self, key: &Bytes, entry: Entry) -> Result<PutOutcome>;
    /// [`Store::get`] for a caller that has the key's id already (the node computed it to
    /// route the request): `id` must be [`Id::of_key`] of `key`. A driver that places keys by
    /// id uses it instead of hashing the key again; the default ignores it.
    fn get_with_id(&self, id: &Id, key: &[u8]) -> Result<Option<Entry>> {
        let _ = id;
        self.get(key)
    }
    /// [`Store::put`] with the key's id, as [`Store::get_with_id`].
    fn put_with_id(&self, id: &Id, key: &Bytes, entry: Entry) -> Result<PutOutcome> {
        let _ = id;
        self.put(key, entry)
    }
    /// Hints that point operations (`get_with_id`, `put_with_id`) on these key ids come next,
    /// as a pipeline's GETs and SETs do: a driver that holds its entries in memory starts
    /// loading them into the CPU cache, so that the cache misses of a batch overlap instead of
    /// following one another (the batched key prefetching of Valkey 8's command execution).
    /// A caller with a batch for several stores gives each its ids with
    /// [`PrefetchPass::Index`], then each again with [`PrefetchPass::Entries`]. Changes
    /// nothing that can be observed; the default does nothing.
    fn prefetch(&self, ids: &[Id], pass: PrefetchPass) {
        let _ = (ids, pass);
    }
    /// Whether no value the store holds is longer than [`SMALL_VALUE_BYTES`], so that a read
    /// returns at most that many bytes of value. The event loop hands a connection's requests
    /// to the core in batches only then: a batch's replies meet the connection's output marks
    /// only after it, and must not add up to more than a few MiB. The default, for a store
    /// that does not keep count: false.
    fn values_all_small(&self) -> bool {
        false
    }
    /// Removes `key` for good if its stored version is at most `up_to_version` (a newer write
    /// that raced with the removal survives). Returns whether something was removed.
    fn delete(&self, key: &[u8], up_to_version: u64) -> Result<bool>;
    /// Up to `limit` entries (tombstones included) whose key ids are in the ring range
    /// `(start, end]`, in ring order starting clockwise from `start`, strictly after `after`.
    /// `start == end` means the whole ring.
    fn scan(&self, start: &Id, end: &Id, after: Option<&ScanCursor>, limit: usize) -> Result<Vec<Item>>;
    /// The longest value this store can keep, in bytes, when it is below the protocol's
    /// [`chordkv_protocol::MAX_VALUE_BYTES`] (a Redis server's `proto-max-bulk-len` less the
    /// driver's header); `None`: any value.
    fn max_value_bytes(&self) -> Option<usize> {
        None
    }
    /// Merges many entries (a transfer or replication batch); returns how many were applied.
    /// Drivers with round trips should pipeline this.
    fn put_many(&self, items: Vec<Item>) -> Result<usize> {
        let mut applied = 0;
        for item in items {
            applied += self
                .put(
                    &item.key,
                    Entry {
                        version: item.version,
                        value: item.value,
                        expires_at: item.expires_at,
                    },
                )?
                .applied as usize;
        }
        Ok(applied)
    }
    /// Removes many keys, each up to a version (see [`Store::delete`]); returns how many went.
    fn delete_many(&self, keys: Vec<(Bytes, u64)>) -> Result<usize> {
        let mut removed = 0;
        for (key, version) in keys {
            removed += self.delete(&key, version)? as usize;
        }
        Ok(removed)
    }
    /// Live keys whose ids are in the ring range `(start, end]`.
    fn count_range(&self, start: &Id, end: &Id) -> Result<u64> {
        let mut count = 0;
        digest::for_each_entry(self, start, end, |kv| count += kv.live as u64)?;
        Ok(count)
    }
    /// The live keys of the ring range `(start, end]` (as [`Store::count_range`]), and how
    /// many of them expire after `now` (ms since the epoch) with the sum of their remaining
    /// lives: what Redis' INFO keyspace reports as `expires` and `avg_ttl`. The default scans
    /// the entries; a driver with round trips should read only what it needs.
    fn range_counts(&self, start: &Id, end: &Id, now: u64) -> Result<RangeCounts> {
        let mut counts = RangeCounts::default();
        let mut after: Option<ScanCursor> = None;
        loop {
            let batch = self.scan(start, end, after.as_ref(), SCAN_BATCH)?;
            for it in &batch {
                counts.add(it.value.is_some(), it.expires_at, now);
            }
            match batch.last() {
                Some(last) if batch.len() == SCAN_BATCH => {
                    after = Some((Id::of_key(&last.key), last.key.clone()))
                }
                _ => return Ok(counts),
            }
        }
    }
    /// [`Store::scan`] that stops before the keys and values returned would exceed `max_bytes`
    /// (the first entry always comes, so a scan makes progress). The default trims a whole
    /// scan; a driver with round trips should stop early instead.
    fn scan_limited(
        &self,
        start: &Id,
        end: &Id,
        after: Option<&ScanCursor>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Item>> {
        let mut items = self.scan(start, end, after, limit)?;
        let mut bytes = 0usize;
        for (i, it) in items.iter().enumerate() {
            bytes += it.key.len() + it.value.as_ref().map_or(0, |v| v.len());
            if bytes > max_bytes && i > 0 {
                items.truncate(i);
                break;
            }
        }
        Ok(items)
    }
    /// [`Store::scan`] without the values. Anti-entropy and collection use it; a driver with
    /// round trips should not ship values for it.
    fn scan_versions(
        &self,
        start: &Id,
        end: &Id,
        after: Option<&ScanCursor>,
        limit: usize,
    ) -> Result<Vec<KeyVersion>> {
        Ok(self
            .scan(start, end, after, limit)?
            .into_iter()
            .map(|it| KeyVersion {
                live: it.value.is_some(),
                key: it.key,
                version: it.version,
            })
            .collect())
    }
    /// Live keys (tombstones not counted).
    fn len(&self) -> Result<u64>;
    /// Bytes the store holds for its entries, tombstones included, as the driver can tell:
    /// none when it cannot (the default). The memory store counts key and value bytes exactly
    /// (not its allocator's overhead: see results/memory.md for RSS per key); the Redis driver
    /// reports Redis' `MEMORY USAGE` of its namespace's keys (Redis' own estimate, sampled).
    /// Asked once per `GET_STATS`, never per request.
    fn bytes(&self) -> Result<Option<u64>> {
        Ok(None)
    }
    /// Whether the store holds no live key.
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Losses of data detected since the store was opened (see the trait's docs); never
    /// decreases. The default, for drivers that cannot lose data behind the node's back, is 0.
    fn loss_epoch(&self) -> u64 {
        0
    }
    /// Whether the store opened holding the data of an earlier run (a node restarted on it
    /// still holds the writes it acknowledged). The default, for stores that start empty with
    /// every process, is false.
    fn kept_data(&self) -> bool {
        false
    }
    /// The ring position saved with this store partition ([`Store::save_position`]), if
    /// any: a virtual node restarted on a store that kept its data takes back the position
    /// its keys belong to. The default, for stores that start empty, is none.
    fn saved_position(&self) -> Result<Option<Id>> {
        Ok(None)
    }

    /// Saves the ring position of the virtual node this partition belongs to. The default,
    /// for stores that start empty, keeps nothing.
    fn save_position(&self, _position: &Id) -> Result<()> {
        Ok(())
    }

    /// Whether calls may block (network I/O): such a store runs on worker threads. The server
    /// hands a store that does not to its host, which runs its ops inside the input that made
    /// them (`Host::run_stores_inline`): it must answer at once and be a function of its calls.
    fn is_blocking(&self) -> bool;
    /// A short name for logs and stats ("memory", "redis").
    fn name(&self) -> &'static str;
}

/// An operation the Chord core asks of its store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// Read one entry; `id` is [`Id::of_key`] of `key`, computed once by the node.
    Get { id: Id, key: Bytes },
    /// Merge one entry (a client write is a merge with a fresh version); `id` as for `Get`.
    Put { id: Id, key: Bytes, entry: Entry },
    /// Merge many entries (an incoming transfer batch).
    PutMany { items: Vec<Item> },
    /// Scan a ring range, in ring order, after a cursor.
    Scan {
        start: Id,
        end: Id,
        after: Option<ScanCursor>,
        limit: usize,
        max_bytes: usize,
    },
    /// Remove entries whose versions are at most the given ones (after a transfer).
    RemoveMany { keys: Vec<(Bytes, u64)> },
    /// Count live keys.
    Count,
    /// Count live keys and the bytes held ([`Store::len`], [`Store::bytes`]).
    Size,
    /// Count live keys in the ring range `(start, end]`.
    CountRange { start: Id, end: Id },
    /// [`Store::range_counts`] of the ring range `(start, end]` at `now` (ms since the epoch).
    RangeCounts { start: Id, end: Id, now: u64 },
    /// Digests of `parts` equal sub-ranges of `(start, end]` (see [`digest`]).
    Digest { start: Id, end: Id, parts: u32 },
    /// Every `(key, version)` in `(start, end]`.
    KeyVersions { start: Id, end: Id },
    /// The entries (tombstones included) of the given keys that exist.
    GetMany { keys: Vec<Bytes> },
    /// Remove the tombstones in `(start, end]` whose version is at most `before`.
    CollectTombstones { start: Id, end: Id, before: u64 },
    /// Remove every entry whose key id is in none of the ring ranges `keep` (copies this node
    /// is no longer responsible for), each only at the version scanned.
    RetainRanges { keep: Vec<(Id, Id)> },
}

impl StoreOp {
    /// Whether the op changes the store.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            StoreOp::Put { .. } | StoreOp::PutMany { .. } | StoreOp::RemoveMany { .. }
        )
    }
}

/// The result of a [`StoreOp`], variant by variant.
/// Counts of a ring range for INFO keyspace ([`Store::range_counts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeCounts {
    /// Live keys (tombstones not counted).
    pub live: u64,
    /// Live keys with an expiry still ahead.
    pub expiring: u64,
    /// The sum of those keys' remaining lives, in milliseconds (saturating).
    pub ttl_ms_sum: u64,
}

impl RangeCounts {
    /// Counts one entry: `live` (it has a value), expiring at `expires_at` (0: never).
    pub fn add(&mut self, live: bool, expires_at: u64, now: u64) {
        if !live {
            return;
        }
        self.live += 1;
        if expires_at > now {
            self.expiring += 1;
            self.ttl_ms_sum = self.ttl_ms_sum.saturating_add(expires_at - now);
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOutcome {
    Got(Option<Entry>),
    Put(PutOutcome),
    PutMany {
        applied: usize,
    },
    /// `more`: the scan stopped at `limit` or `max_bytes` and may have more to give.
    Scanned {
        items: Vec<Item>,
        more: bool,
    },
    Removed(usize),
    Count(u64),
    /// Live keys and bytes held ([`StoreOp::Size`]).
    Size {
        keys: u64,
        bytes: Option<u64>,
    },
    RangeCounts(RangeCounts),
    /// [`StoreOp::CollectTombstones`]: the tombstones removed, and those left because they
    /// are younger than its `before`.
    Collected {
        removed: usize,
        younger: usize,
    },
    Digest(digest::RangeDigests),
    KeyVersions(Vec<(Bytes, u64)>),
    Items(Vec<Item>),
}

/// Runs `op` like [`execute`] for a caller that has handled the store's losses up to epoch
/// `handled` (see [`Store`]: Lost data): fails with [`StoreError::Lost`] when the store has
/// detected a loss the caller has not handled yet, checked after the op ran, so that no result
/// read from a store that lost data reaches the caller as if nothing happened. A caller that
/// learns of a loss (this error, with [`Store::loss_epoch`] above `handled`) takes the new
/// epoch as handled once it has reacted, e.g. once it no longer trusts the store's answers
/// until it has refilled it.
pub fn execute_since(store: &dyn Store, op: StoreOp, handled: u64) -> Result<StoreOutcome> {
    let result = execute(store, op);
    let epoch = store.loss_epoch();
    match result {
        Ok(_) if epoch > handled => Err(StoreError::Lost(format!(
            "{} store: loss {epoch} detected, losses up to {handled} handled",
            store.name()
        ))),
        other => other,
    }
}

/// The longest value [`Store::values_all_small`] counts as small (bytes).
pub const SMALL_VALUE_BYTES: usize = 64 * 1024;

/// The two passes of [`Store::prefetch`] over a batch: what a lookup reads first, then (once
/// that has had the other ids' time to arrive) what it reads next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefetchPass {
    /// The index slots of the ids (for the memory store, their buckets).
    Index,
    /// The entries the index points to (read from the slots the first pass loaded).
    Entries,
}

/// Runs one op against a driver.
pub fn execute(store: &dyn Store, op: StoreOp) -> Result<StoreOutcome> {
    Ok(match op {
        StoreOp::Get { id, key } => StoreOutcome::Got(store.get_with_id(&id, &key)?),
        StoreOp::Put { id, key, entry } => StoreOutcome::Put(store.put_with_id(&id, &key, entry)?),
        StoreOp::PutMany { items } => StoreOutcome::PutMany {
            applied: store.put_many(items)?,
        },
        StoreOp::Scan {
            start,
            end,
            after,
            limit,
            max_bytes,
        } => {
            let limit = limit.max(1);
            let items = store.scan_limited(&start, &end, after.as_ref(), limit, max_bytes)?;
            // A batch cut by the budget or the limit may have more behind it; at worst the next
            // scan comes back empty.
            let more = !items.is_empty();
            StoreOutcome::Scanned { items, more }
        }
        StoreOp::RemoveMany { keys } => StoreOutcome::Removed(store.delete_many(keys)?),
        StoreOp::Count => StoreOutcome::Count(store.len()?),
        StoreOp::Size => StoreOutcome::Size {
            keys: store.len()?,
            bytes: store.bytes()?,
        },
        StoreOp::CountRange { start, end } => StoreOutcome::Count(store.count_range(&start, &end)?),
        StoreOp::RangeCounts { start, end, now } => {
            StoreOutcome::RangeCounts(store.range_counts(&start, &end, now)?)
        }
        StoreOp::Digest { start, end, parts } => {
            StoreOutcome::Digest(digest::range_digests(store, &start, &end, parts)?)
        }
        StoreOp::KeyVersions { start, end } => {
            StoreOutcome::KeyVersions(digest::key_versions(store, &start, &end)?)
        }
        StoreOp::CollectTombstones { start, end, before } => {
            let mut dead = Vec::new();
            let mut younger = 0;
            digest::for_each_entry(store, &start, &end, |kv| {
                if !kv.live && kv.version <= before {
                    dead.push((kv.key.clone(), kv.version));
                } else if !kv.live {
                    younger += 1;
                }
            })?;
            StoreOutcome::Collected {
                removed: store.delete_many(dead)?,
                younger,
            }
        }
        StoreOp::RetainRanges { keep } => {
            // Only the parts of the ring outside `keep` are scanned: a store holds next to
            // nothing there, where a scan of the whole store read every key it holds.
            let mut gone = Vec::new();
            for (start, end) in digest::uncovered(&keep) {
                digest::for_each_entry_with_id(store, &start, &end, |id, kv| {
                    if !keep.iter().any(|(s, e)| chordkv_protocol::in_half_open(id, s, e)) {
                        gone.push((kv.key.clone(), kv.version));
                    }
                })?;
            }
            StoreOutcome::Removed(store.delete_many(gone)?)
        }
        StoreOp::GetMany { keys } => {
            let mut items = Vec::with_capacity(keys.len());
            for key in keys {
                if let Some(e) = store.get(&key)? {
                    items.push(Item {
                        key,
                        version: e.version,
                        value: e.value,
                        expires_at: e.expires_at,
                    });
                }
            }
            StoreOutcome::Items(items)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A memory store whose loss epoch the test sets, and which counts the entries its scans
    /// return.
    #[derive(Default)]
    struct Probe {
        inner: MemoryStore,
        epoch: AtomicU64,
        scanned: AtomicU64,
    }

    impl Store for Probe {
        fn get(&self, key: &[u8]) -> Result<Option<Entry>> {
            self.inner.get(key)
        }
        fn put(&self, key: &Bytes, entry: Entry) -> Result<PutOutcome> {
            self.inner.put(key, entry)
        }
        fn delete(&self, key: &[u8], up_to_version: u64) -> Result<bool> {
            self.inner.delete(key, up_to_version)
        }
        fn scan(&self, start: &Id, end: &Id, after: Option<&ScanCursor>, limit: usize) -> Result<Vec<Item>> {
            let items = self.inner.scan(start, end, after, limit)?;
            self.scanned.fetch_add(items.len() as u64, Ordering::SeqCst);
            Ok(items)
        }
        fn len(&self) -> Result<u64> {
            self.inner.len()
        }
        fn loss_epoch(&self) -> u64 {
            self.epoch.load(Ordering::SeqCst)
        }
        fn is_blocking(&self) -> bool {
            false
        }
        fn name(&self) -> &'static str {
            "probe"
        }
    }

    #[test]
    fn execute_since_fails_until_the_loss_is_handled() {
        let s = Probe::default();
        assert_eq!(execute_since(&s, StoreOp::Count, 0), Ok(StoreOutcome::Count(0)));
        s.epoch.store(1, Ordering::SeqCst);
        let err = execute_since(&s, StoreOp::Count, 0).unwrap_err();
        assert!(matches!(err, StoreError::Lost(_)), "{err}");
        assert!(!err.is_retryable());
        assert_eq!(execute_since(&s, StoreOp::Count, 1), Ok(StoreOutcome::Count(0)));
    }

    /// A stray-copy collection reads the entries outside the kept ranges, not the whole store
    /// (it read every entry, every anti-entropy interval, to find next to nothing).
    #[test]
    fn retain_ranges_reads_only_the_entries_outside_the_kept_ranges() {
        let s = Probe::default();
        let keys: Vec<Bytes> = (0..2_000).map(|i| Bytes::from(format!("k{i}"))).collect();
        for k in &keys {
            let entry = Entry {
                version: 1,
                value: Some(Bytes::from_static(b"v")),
                expires_at: 0,
            };
            s.put(k, entry).unwrap();
        }
        // Two kept ranges, one across the top of the ring.
        let keep = vec![(Id::hash(b"a"), Id::hash(b"b")), (Id::hash(b"c"), Id::hash(b"d"))];
        let kept = |k: &Bytes| {
            keep.iter()
                .any(|(a, b)| chordkv_protocol::in_half_open(&Id::of_key(k), a, b))
        };
        let strays = keys.iter().filter(|k| !kept(k)).count();
        assert!(strays > 0 && strays < keys.len(), "{strays} strays");
        let outcome = execute(&s, StoreOp::RetainRanges { keep: keep.clone() }).unwrap();
        assert_eq!(outcome, StoreOutcome::Removed(strays));
        assert_eq!(s.scanned.load(Ordering::SeqCst), strays as u64, "entries read");
        for k in &keys {
            assert_eq!(s.get(k).unwrap().is_some(), kept(k), "{k:?}");
        }
    }
}
