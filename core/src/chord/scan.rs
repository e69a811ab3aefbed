//! Scans of the whole ring's keys: Redis' SCAN, KEYS and RANDOMKEY.
//!
//! The node a client asks (the entry) walks the ring in id order, one step per owner: a step
//! is a `ScanRange` routed to the owner of the position like a GET (lookups, redirects,
//! failover), which scans its primary range from there and answers the matching live keys and
//! where it stopped. The entry goes on from there, or past the owner's range.
//!
//! ```text
//!  SCAN c   ─► position P = c's 64 bits at the top of an id ─► owner(P): ScanRange { P }
//!           ◄─ keys, last scanned (id, key)  ─► the cursor of the last id's top 64 bits
//!  KEYS p   ─► the same from 0 until the walk wraps around the ring
//! ```
//!
//! The cursor is the top 64 bits of the ring position to go on from (Redis' cursors are 64-bit
//! integers, and clients parse them as such). A key is never skipped: every key present for
//! the whole scan is returned at least once, whatever joins and leaves happen meanwhile (the
//! positions are the keys' own ids, not a member's
//! place), which is Redis' promise for SCAN. A page holds exactly the keys whose ids lie between
//! its cursor's position and the next cursor's, so while the keyspace is stable each key comes
//! once, and a page goes on until the cursor advances, so the keys of one id (one hash tag)
//! always come in one page.

use std::collections::BTreeMap;

use bytes::Bytes;
use chordkv_protocol::{ErrorCode, Id, Message};

use super::node::{Millis, Node, ReplyTo};
use super::ops::ClientOp;
use super::store_wait::StoreWait;
use crate::command::glob_match;
use crate::store::{StoreError, StoreOp, StoreOutcome};

/// The reply address of a node's own sub-operations (steps of a scan): their replies come
/// back to the node ([`Node::on_internal_reply`]), never to a connection.
pub const INTERNAL: ReplyTo = ReplyTo(u64::MAX);

/// Entries a step scans when the client gave no COUNT (Redis' default is 10; one step per
/// owner keeps the round trips few), and the most KEYS collects before it refuses.
const DEFAULT_STEP: u32 = 64;
const KEYS_STEP: u32 = 1_024;
const MAX_KEYS: usize = 1_000_000;
/// Bytes of entries one step may scan.
const STEP_SCAN_BYTES: usize = 1024 * 1024;

/// Scans this node coordinates.
#[derive(Debug, Default)]
pub(super) struct Scans {
    jobs: BTreeMap<u64, ScanJob>,
    next_id: u64,
}

#[derive(Debug)]
struct ScanJob {
    to: ReplyTo,
    request_id: u64,
    mode: Mode,
    /// The cursor the page started from (its position's top 64 bits).
    start: u64,
    /// Where the next step starts: at `pos.0`, or strictly after `(pos.0, key)`.
    pos: (Id, Option<Bytes>),
    count: u32,
    pattern: Option<Bytes>,
    keys: Vec<Bytes>,
    /// Whether the walk has passed the top of the ring (RANDOMKEY goes on from 0).
    wrapped: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Page,
    All,
    Random,
}

/// The top 64 bits of an id: the cursor of a position.
fn cursor_of(id: &Id) -> u64 {
    u64::from_be_bytes(id.0[..8].try_into().unwrap_or_default())
}

/// The position of a cursor: its 64 bits at the top of an id.
fn position_of(cursor: u64) -> Id {
    let mut id = [0u8; 20];
    id[..8].copy_from_slice(&cursor.to_be_bytes());
    Id(id)
}

impl Node {
    /// A client's `ScanKeys`: starts the walk.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_scan(
        &mut self,
        now: Millis,
        to: ReplyTo,
        request_id: u64,
        cursor: u64,
        count: u32,
        pattern: Option<Bytes>,
        random: bool,
    ) {
        let (mode, start, step) = if random {
            (Mode::Random, cursor_of(&Id(self.random_id_bytes())), DEFAULT_STEP)
        } else if count == 0 {
            (Mode::All, 0, KEYS_STEP)
        } else {
            // One more than asked: the page ends below the last entry's slice (see below).
            (Mode::Page, cursor, count.clamp(1, 100_000) + 1)
        };
        let id = self.scans.next_id;
        self.scans.next_id += 1;
        self.scans.jobs.insert(
            id,
            ScanJob {
                to,
                request_id,
                mode,
                start,
                pos: (position_of(start), None),
                count: step,
                pattern,
                keys: Vec::new(),
                wrapped: false,
            },
        );
        self.scan_step(now, id);
    }

    fn random_id_bytes(&mut self) -> [u8; 20] {
        let mut b = [0u8; 20];
        for chunk in b.chunks_mut(8) {
            let r = self.rng.next_u64().to_be_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        b
    }

    /// Sends the job's next step to the owner of its position, as a client operation of our
    /// own (routed, retried and failed over like a GET).
    fn scan_step(&mut self, now: Millis, id: u64) {
        let Some(job) = self.scans.jobs.get(&id) else {
            return;
        };
        let message = Message::ScanRange {
            from: job.pos.0,
            after_key: job.pos.1.clone(),
            count: job.count,
            pattern: job.pattern.clone(),
        };
        let op = ClientOp::new(
            INTERNAL,
            id,
            message,
            job.pos.0,
            now + self.config.request_timeout_ms,
        );
        let op_id = self.client.next_id;
        self.client.next_id += 1;
        self.client.ops.insert(op_id, op);
        self.drive_op_now(now, op_id);
    }

    /// The reply to one of our own operations (a scan step).
    pub(super) fn on_internal_reply(&mut self, now: Millis, job: u64, msg: Message) {
        let Some(j) = self.scans.jobs.get_mut(&job) else {
            return;
        };
        let (keys, end, last) = match msg {
            Message::ScanRangeReply { keys, end, last, .. } => (keys, end, last),
            Message::Error { code, text, .. } => return self.fail_scan(job, code, &text),
            other => {
                let text = format!("a scan step answered {}", other.name());
                return self.fail_scan(job, ErrorCode::Internal, &text);
            }
        };
        let before = j.pos.0;
        j.keys.extend(keys);
        j.pos = match last.map(|last| *last) {
            Some((id, key)) => (id, Some(key)),
            None => (end.wrapping_add(&Id::from_u64(1)), None),
        };
        // Past the top of the ring: the position went down (or the owner's range ended there).
        let wrapped_now = j.pos.0 < before || (j.pos.1.is_none() && j.pos.0 == Id::ZERO);
        if j.mode == Mode::All && j.keys.len() > MAX_KEYS {
            let text = format!("KEYS matched over {MAX_KEYS} keys; use SCAN to walk them a page at a time");
            return self.fail_scan(job, ErrorCode::TooLarge, &text);
        }
        let done = match j.mode {
            Mode::All => wrapped_now,
            Mode::Page => wrapped_now || cursor_of(&j.pos.0) > j.start,
            Mode::Random => {
                let back_at_start = j.wrapped && cursor_of(&j.pos.0) >= j.start;
                !j.keys.is_empty() || back_at_start || (wrapped_now && j.wrapped)
            }
        };
        if wrapped_now {
            j.wrapped = true;
        }
        if !done {
            return self.scan_step(now, job);
        }
        let Some(j) = self.scans.jobs.remove(&job) else {
            return;
        };
        let mut keys = j.keys;
        let cursor = if wrapped_now || j.mode != Mode::Page {
            0
        } else {
            // Every id below `j.pos.0` has been scanned. The page ends at the start of that
            // position's slice (the next page's cursor): keys at or above it (in practice the
            // last one scanned, or the keys of its hash tag) come in the next page, so a key
            // comes once while the keyspace is stable.
            let next = cursor_of(&j.pos.0);
            let cut = position_of(next);
            keys.retain(|k| Id::of_key(k) < cut);
            next
        };
        if j.mode == Mode::Random {
            keys.truncate(1);
        }
        self.reply(j.to, j.request_id, Message::ScanKeysReply { cursor, keys });
    }

    fn fail_scan(&mut self, job: u64, code: ErrorCode, text: &str) {
        if let Some(j) = self.scans.jobs.remove(&job) {
            let msg = Message::Error {
                code,
                hops: 0,
                text: text.to_string(),
            };
            self.reply(j.to, j.request_id, msg);
        }
    }

    /// Serves a scan step at the owner of its position: the entries of `(from - 1, end]`
    /// (strictly after `(from, after_key)` when given), `end` being the range this node
    /// serves it as.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn serve_scan_range(
        &mut self,
        to: ReplyTo,
        request_id: u64,
        hops: u16,
        message: Message,
        end: Id,
    ) {
        let Message::ScanRange {
            from,
            after_key,
            count,
            pattern,
        } = message
        else {
            return;
        };
        // The walk goes up the ids from 0 to the top: a range that wraps past the top is
        // scanned up to the top only (its part from 0 was the walk's beginning).
        let end = if end < from { Id::MAX } else { end };
        let start = from.wrapping_sub(&Id::from_u64(1));
        let after = after_key.map(|k| (from, k));
        let op = StoreOp::Scan {
            start,
            end,
            after,
            limit: count.max(1) as usize,
            max_bytes: STEP_SCAN_BYTES,
        };
        let wait = StoreWait::ScanStep {
            to,
            request_id,
            hops,
            end,
            count,
            pattern,
        };
        self.store_op(op, wait);
    }

    /// A scan step's entries are read: the live, unexpired ones that match go back.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish_scan_step(
        &mut self,
        now: Millis,
        to: ReplyTo,
        request_id: u64,
        hops: u16,
        end: Id,
        _count: u32,
        pattern: Option<Bytes>,
        result: Result<StoreOutcome, StoreError>,
    ) {
        let msg = match result {
            Ok(StoreOutcome::Scanned { items, .. }) => {
                // A batch may have been cut by its count or its bytes: the range is done only
                // when a step finds nothing more (one extra step per owner, never a key
                // skipped).
                let last = items.last().map(|it| (Id::of_key(&it.key), it.key.clone()));
                let keys = items
                    .into_iter()
                    .filter(|it| it.value.is_some() && !crate::store::is_expired(it.expires_at, now))
                    .filter(|it| pattern.as_ref().is_none_or(|p| glob_match(p, &it.key)))
                    .map(|it| it.key)
                    .collect();
                Message::ScanRangeReply {
                    hops,
                    keys,
                    end,
                    last: last.map(Box::new),
                }
            }
            Ok(other) => Message::Error {
                code: ErrorCode::Internal,
                hops,
                text: format!("store answered {other:?}"),
            },
            Err(e) => Message::Error {
                code: ErrorCode::StoreFailed,
                hops,
                text: e.to_string(),
            },
        };
        self.reply(to, request_id, msg);
    }
}
