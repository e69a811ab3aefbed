//! The size limits of the protocol, in one module that imports nothing, so that the binary
//! frame codec ([`crate::frame`]), the RESP codec ([`crate::resp`]) and the node all enforce
//! the same numbers without depending on each other.
//!
//! A decoder compares every length it reads from the wire with one of these *before* it
//! allocates for it (a 20-byte frame that claims a key of 4 GiB or a list of a billion nodes
//! costs a comparison, not memory); an encoder refuses to write what a peer would refuse to
//! read.

/// The longest client timeout a write's deadline (`FLAG_DEADLINE`) may express, in ms: an
/// owner refuses a write hop whose deadline is further ahead of its clock than this (with
/// the size allowance and the clock offset it tolerates), since it remembers every write hop
/// until its deadline; clients cap the deadlines they send at it.
pub const MAX_CLIENT_TIMEOUT_MS: u64 = 120_000;

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 64 * 1024;
/// Longest value, in bytes: Redis' default `proto-max-bulk-len` (512 MiB). A node may be
/// configured lower (`--max-value-bytes`), never higher: every node must be able to carry what
/// any node of the ring accepted.
pub const MAX_VALUE_BYTES: usize = 512 * 1024 * 1024;
/// Longest payload (the bytes after the header) of one frame: the longest value with its key
/// and 64 MiB to spare. A batch (transfer, repair, a replicated transaction) stops before its
/// keys and values pass a budget of a few MiB unless it holds a single item, so every batch
/// fits one frame; a transaction whose writes or replies would not is refused before anything
/// is applied.
pub const MAX_FRAME_BYTES: usize = MAX_VALUE_BYTES + 64 * 1024 * 1024;
/// The most keys and values (in bytes) one batch of items (a transfer, a repair, a
/// replicated transaction) may hold besides a single item: what a frame has beyond the
/// longest value.
pub const MAX_BATCH_BYTES: usize = 32 * 1024 * 1024;
/// Longest error text or counter name, in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Longest password a `Login` carries, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Most entries in one list (node refs, items, counters) of one message.
pub const MAX_LIST_LEN: usize = 65_536;

// The encoder writes every length as a `u32` after checking it against these limits; were one
// of them to reach `u32::MAX` that cast could silently truncate.
const _: () = assert!(MAX_FRAME_BYTES < u32::MAX as usize);
const _: () = assert!(MAX_KEY_BYTES <= MAX_FRAME_BYTES && MAX_VALUE_BYTES <= MAX_FRAME_BYTES);
const _: () = assert!(MAX_TEXT_BYTES <= MAX_FRAME_BYTES && MAX_LIST_LEN <= MAX_FRAME_BYTES);
// The largest PUT (key, value, their two length prefixes) fits in one frame.
const _: () = assert!(MAX_KEY_BYTES + MAX_VALUE_BYTES + 8 <= MAX_FRAME_BYTES);
// A batch of items under the budget, plus one more of the largest key and value and their
// per-item fields, fits in one frame.
const _: () = assert!(MAX_BATCH_BYTES + MAX_KEY_BYTES + MAX_VALUE_BYTES + 1024 <= MAX_FRAME_BYTES);
