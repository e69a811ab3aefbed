//! One stored entry in one allocation: a 17-byte header, the expiry when there is one, the key
//! and the value, behind a thin (8-byte) pointer.
//!
//! ```text
//!   offset  bytes  field
//!   0       8      version (u64, little-endian)
//!   8       1      flags: LIVE (not a tombstone), EXPIRES, LARGE
//!   9       4      key length (u32)
//!   13      4      length of the value part (u32)
//!   17      0 | 8  expires_at (u64), only with EXPIRES
//!   ..      k      key
//!   ..      v      value part: the value's bytes; with LARGE, a pointer to a boxed `Bytes`
//! ```
//!
//! Values up to [`LARGE_VALUE_BYTES`] are stored inline: a read copies them (a `memcpy` of at
//! most 4 KiB, cheaper than the reference count and the second allocation sharing would
//! take). A larger value stays a `Bytes` of its own, so a read of a 512 MiB value shares it
//! instead of copying it. The copies are cut from a chunk of [`COPY_CHUNK_BYTES`] per thread
//! ([`copy_out`]): a read takes a reference on the chunk, not an allocation of its own.
//!
//! This is the store's only `unsafe` code (with [`prefetch`], a cache hint): a `Box<[u8]>` is
//! a fat pointer (16 bytes), and the ring index holds one pointer per key, so the record keeps
//! its length in its header and the index holds the thin pointer alone. Every `unsafe` block
//! but `prefetch`'s (a hint, which dereferences nothing) relies on one invariant, kept by
//! [`Record::new`] and [`Drop`]: `self.0` is the pointer of a leaked `Box<[u8]>` whose length
//! is the one the header spells, and with `LARGE`, the value part holds a pointer from a leaked
//! `Box<Bytes>`; both are freed only by `drop`, once.

use std::ptr::NonNull;

use bytes::Bytes;
use chordkv_protocol::Item;

use crate::store::Entry;

/// Values longer than this (bytes) are kept as a shared `Bytes` rather than inline.
pub const LARGE_VALUE_BYTES: usize = 4 * 1024;

/// The chunks the inline values read are copied into ([`copy_out`]): twice the largest inline
/// value, so a value kept long after its read keeps at most 8 KiB alive with it.
const COPY_CHUNK_BYTES: usize = 2 * LARGE_VALUE_BYTES;

/// A copy of `value` (at most [`LARGE_VALUE_BYTES`]) in the calling thread's current chunk: a
/// `Bytes` sharing the chunk, whose reference count is the copy's only cost besides the
/// `memcpy` (an allocation and a free of its own were a quarter of the instructions a GET
/// spends in the store, callgrind, one node, `redis-benchmark -P 16`). A chunk too full for
/// the value is left to the copies cut from it, and freed with the last of them.
fn copy_out(value: &[u8]) -> Bytes {
    thread_local! {
        static CHUNK: std::cell::RefCell<bytes::BytesMut> = std::cell::RefCell::new(bytes::BytesMut::new());
    }
    CHUNK.with(|chunk| {
        let mut chunk = chunk.borrow_mut();
        if chunk.capacity() - chunk.len() < value.len() {
            *chunk = bytes::BytesMut::with_capacity(COPY_CHUNK_BYTES.max(value.len()));
        }
        chunk.extend_from_slice(value);
        chunk.split().freeze()
    })
}

const FLAGS: usize = 8;
const KEY_LEN: usize = 9;
const VALUE_LEN: usize = 13;
const HEADER: usize = 17;
const EXPIRY: usize = 8;
const POINTER: usize = std::mem::size_of::<*mut Bytes>();

const LIVE: u8 = 1;
const EXPIRES: u8 = 2;
const LARGE: u8 = 4;

/// An owned entry with its key (see the module docs for the layout).
pub struct Record(NonNull<u8>);

// SAFETY: a `Record` owns its allocations (a `Box<[u8]>` and maybe a `Box<Bytes>`), which are
// `Send` and `Sync`; `&Record` gives only shared reads of them.
unsafe impl Send for Record {}
unsafe impl Sync for Record {}

/// Asks the CPU to start loading the cache line at `p` (a hint: no effect on the program's
/// results, and no fault whatever `p` is). A no-op where no prefetch instruction is wired in.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` needs SSE, which every x86_64 CPU has (it is in the target's
    // baseline), and a prefetch does not access memory: it cannot fault, even for an invalid
    // address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

fn u32_at(bytes: &[u8], at: usize) -> usize {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b) as usize
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

impl Record {
    /// A record of `key` and `entry`, its value copied (a value that arrived as a slice of a
    /// connection's read buffer must not keep that buffer alive).
    ///
    /// Keys are at most [`chordkv_protocol::MAX_KEY_BYTES`] and values at most
    /// [`chordkv_protocol::MAX_VALUE_BYTES`], so both lengths fit the header's `u32`s.
    pub fn new(key: &[u8], entry: &Entry) -> Record {
        let large = entry.value.as_ref().filter(|v| v.len() > LARGE_VALUE_BYTES);
        let mut flags = 0;
        let value_part = match &entry.value {
            None => 0,
            Some(_) if large.is_some() => POINTER,
            Some(v) => v.len(),
        };
        if entry.value.is_some() {
            flags |= LIVE;
        }
        if large.is_some() {
            flags |= LARGE;
        }
        if entry.expires_at != 0 {
            flags |= EXPIRES;
        }
        let expiry = if entry.expires_at != 0 { EXPIRY } else { 0 };
        let len = HEADER + expiry + key.len() + value_part;
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(&entry.version.to_le_bytes());
        buf.push(flags);
        buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
        buf.extend_from_slice(&(value_part as u32).to_le_bytes());
        if expiry != 0 {
            buf.extend_from_slice(&entry.expires_at.to_le_bytes());
        }
        buf.extend_from_slice(key);
        match (&entry.value, large) {
            (_, Some(_)) => buf.resize(len, 0),
            (Some(v), None) => buf.extend_from_slice(v),
            (None, None) => {}
        }
        debug_assert_eq!(buf.len(), len);
        let raw = Box::into_raw(buf.into_boxed_slice()) as *mut u8;
        if let Some(v) = large {
            let shared = Box::into_raw(Box::new(Bytes::copy_from_slice(v)));
            // SAFETY: the allocation is `len` bytes and the value part is its last `POINTER`
            // bytes; an unaligned write stores the pointer there.
            unsafe {
                raw.add(len - POINTER)
                    .cast::<*mut Bytes>()
                    .write_unaligned(shared)
            };
        }
        // A `Box<[u8]>` of at least `HEADER` bytes is a real allocation, never null.
        Record(NonNull::new(raw).expect("a box is never null"))
    }

    /// Starts loading the record's first cache line: its header, and for a short key and
    /// value all of it ([`prefetch`]).
    pub fn prefetch(&self) {
        prefetch(self.0.as_ptr());
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the allocation is at least `HEADER` bytes (the invariant in the module docs).
        let head = unsafe { std::slice::from_raw_parts(self.0.as_ptr(), HEADER) };
        let len = Self::len_of(head);
        // SAFETY: `len` is the allocation's length (the invariant).
        unsafe { std::slice::from_raw_parts(self.0.as_ptr(), len) }
    }

    fn len_of(head: &[u8]) -> usize {
        let expiry = if head[FLAGS] & EXPIRES != 0 { EXPIRY } else { 0 };
        HEADER + expiry + u32_at(head, KEY_LEN) + u32_at(head, VALUE_LEN)
    }

    fn flags(&self) -> u8 {
        self.bytes()[FLAGS]
    }

    fn key_at(&self) -> usize {
        HEADER + if self.flags() & EXPIRES != 0 { EXPIRY } else { 0 }
    }

    pub fn version(&self) -> u64 {
        u64_at(self.bytes(), 0)
    }

    /// When the value expires (ms since the Unix epoch), 0 for never.
    pub fn expires_at(&self) -> u64 {
        if self.flags() & EXPIRES != 0 {
            u64_at(self.bytes(), HEADER)
        } else {
            0
        }
    }

    /// Whether the record holds a value: not a tombstone.
    pub fn is_live(&self) -> bool {
        self.flags() & LIVE != 0
    }

    pub fn key(&self) -> &[u8] {
        let bytes = self.bytes();
        let at = self.key_at();
        &bytes[at..at + u32_at(bytes, KEY_LEN)]
    }

    /// The key's and value's bytes together ([`crate::store::Store::bytes`]).
    pub fn data_len(&self) -> usize {
        u32_at(self.bytes(), KEY_LEN) + self.value_len()
    }

    /// The value's length in bytes (0 for a tombstone).
    pub fn value_len(&self) -> usize {
        match self.large() {
            Some(v) => v.len(),
            None => u32_at(self.bytes(), VALUE_LEN),
        }
    }

    fn large(&self) -> Option<&Bytes> {
        if self.flags() & LARGE == 0 {
            return None;
        }
        let bytes = self.bytes();
        let at = bytes.len() - POINTER;
        // SAFETY: with LARGE, the last `POINTER` bytes hold the pointer of a leaked
        // `Box<Bytes>` that lives as long as the record (the invariant).
        Some(unsafe { &*bytes.as_ptr().add(at).cast::<*mut Bytes>().read_unaligned() })
    }

    /// The value: a copy of an inline one, a shared handle on a large one; none for a
    /// tombstone.
    pub fn value(&self) -> Option<Bytes> {
        if !self.is_live() {
            return None;
        }
        if let Some(v) = self.large() {
            return Some(v.clone());
        }
        let bytes = self.bytes();
        let at = self.key_at() + u32_at(bytes, KEY_LEN);
        Some(copy_out(&bytes[at..]))
    }

    pub fn entry(&self) -> Entry {
        Entry {
            version: self.version(),
            value: self.value(),
            expires_at: self.expires_at(),
        }
    }

    pub fn item(&self) -> Item {
        Item {
            key: Bytes::copy_from_slice(self.key()),
            version: self.version(),
            value: self.value(),
            expires_at: self.expires_at(),
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        let len = self.bytes().len();
        if self.flags() & LARGE != 0 {
            // SAFETY: the pointer of a leaked `Box<Bytes>` (the invariant), freed here once.
            unsafe {
                let shared = self
                    .0
                    .as_ptr()
                    .add(len - POINTER)
                    .cast::<*mut Bytes>()
                    .read_unaligned();
                drop(Box::from_raw(shared));
            }
        }
        // SAFETY: `self.0` and `len` are the leaked `Box<[u8]>`'s pointer and length (the
        // invariant), freed here once.
        unsafe {
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.0.as_ptr(),
                len,
            )))
        };
    }
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("key", &String::from_utf8_lossy(self.key()))
            .field("version", &self.version())
            .field("value_len", &self.value_len())
            .field("expires_at", &self.expires_at())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: u64, value: Option<Vec<u8>>, expires_at: u64) -> Entry {
        Entry {
            version,
            value: value.map(Bytes::from),
            expires_at,
        }
    }

    #[test]
    fn every_shape_reads_back_as_written() {
        let shapes = [
            (b"k".to_vec(), entry(1, Some(b"v".to_vec()), 0)),
            (Vec::new(), entry(u64::MAX, Some(Vec::new()), 0)),
            (b"key".to_vec(), entry(7, None, 0)),
            (b"key".to_vec(), entry(7, None, 123)),
            (vec![0xff; 300], entry(2, Some(vec![9; 4096]), u64::MAX)),
            (b"big".to_vec(), entry(3, Some(vec![1; 4097]), 0)),
            (b"big-expiring".to_vec(), entry(3, Some(vec![2; 100_000]), 99)),
        ];
        for (key, e) in shapes {
            let r = Record::new(&key, &e);
            assert_eq!(r.key(), &key[..]);
            assert_eq!(r.entry(), e, "{r:?}");
            assert_eq!(r.is_live(), e.is_live());
            assert_eq!(r.value_len(), e.value.as_ref().map_or(0, |v| v.len()));
            let item = r.item();
            assert_eq!(
                (&item.key[..], item.version, &item.value),
                (&key[..], e.version, &e.value)
            );
        }
    }

    /// Copies cut from the per-thread chunks hold their own bytes: through many chunks, with
    /// values of every inline size, each read (kept, or dropped at once) reads back as stored,
    /// and a record replaced after a read leaves the copy alone.
    #[test]
    fn inline_values_read_back_whole_across_chunks() {
        let mut kept = Vec::new();
        for i in 0..3_000usize {
            let len = [0, 1, 3, 100, 1_000, LARGE_VALUE_BYTES][i % 6];
            let want = vec![(i % 251) as u8; len];
            let r = Record::new(b"k", &entry(1, Some(want.clone()), 0));
            let got = r.value().unwrap();
            drop(r);
            assert_eq!(&got[..], &want[..]);
            if i % 3 == 0 {
                kept.push((got, want));
            }
        }
        for (got, want) in &kept {
            assert_eq!(&got[..], &want[..]);
        }
    }

    #[test]
    fn a_large_value_is_shared_not_copied_on_read() {
        let r = Record::new(b"k", &entry(1, Some(vec![5; 1 << 20]), 0));
        let (a, b) = (r.value().unwrap(), r.value().unwrap());
        assert_eq!(a.as_ptr(), b.as_ptr(), "two reads share one buffer");
        drop(r);
        assert_eq!(a.len(), 1 << 20, "a read outlives the record it came from");
    }
}
