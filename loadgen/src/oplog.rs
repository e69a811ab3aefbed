//! The run's operation log, for the real-time checker ([`chordkv_harness::history`]): every
//! operation of a run (the preload, the load, the final reads) with the time it was invoked
//! and the time it completed, on one clock ([`RunClock`]: microseconds since the run started),
//! its key index and the write it wrote or read (a value names its write: see
//! [`crate::verify::value_for`]).
//!
//! ```text
//!   load thread t: OpLog (32 bytes an operation) ─┐
//!   preload threads: OpLog ───────────────────────┼─> History<key index> + final reads -> check
//!   final reads (verify_all) ─────────────────────┘
//! ```
//!
//! A write that was acknowledged ends when its acknowledgement arrived. One that failed ends
//! when it can no longer take effect: [`failed_write_end`], bounded by the deadline every
//! request carries. A hot-key run of 10 s is about
//! 500,000 operations, so an entry is four `u64`s: 16 MB for such a run.

use std::time::{Duration, Instant};

use chordkv_client::ClientError;
use chordkv_harness::history::{History, Time};

/// The id recorded for a value that names no write of its key (malformed, or another key's):
/// the checker finds no such write and counts the read as unexpected. Real ids have the
/// writer in their top bits, far below this.
pub const UNKNOWN_WRITE: u64 = u64::MAX;

/// The id of the write a value read from key `key` names: [`UNKNOWN_WRITE`] when it names
/// none of this key's (a read during the run checks the header only; the final read checks
/// every byte).
pub fn write_named_by(value: &[u8], key: u64) -> u64 {
    match crate::verify::parse_value(value) {
        Some((id, k)) if k == key => id,
        _ => UNKNOWN_WRITE,
    }
}

/// The clock of one run: microseconds since it started, for every operation of the run.
#[derive(Clone, Copy, Debug)]
pub struct RunClock {
    start: Instant,
}

impl RunClock {
    pub fn start() -> RunClock {
        RunClock {
            start: Instant::now(),
        }
    }

    /// `t` on this clock (0 for a time before the start).
    pub fn at(&self, t: Instant) -> Time {
        t.saturating_duration_since(self.start).as_micros() as Time
    }
}

/// Added to a deadline taken from this process's clocks: the client rounds the wall-clock
/// deadline it sends down to a millisecond.
const DEADLINE_MARGIN: Duration = Duration::from_millis(1);

/// What the attempts of one operation leave open after it failed, for [`failed_write_end`]:
/// the last moment one of them may still take effect.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attempts {
    /// The latest moment an attempt may take effect, if one went out.
    pub last_effect: Option<Instant>,
}

impl Attempts {
    /// Notes how one attempt failed, at `now`, with the client's request `timeout`.
    ///
    /// Every request carries a deadline, its send time plus the client's timeout, and a node
    /// never starts a write past it (nor within its `max_clock_offset_ms` of it, so clocks
    /// that differ within that bound agree), and never applies one after answering it with
    /// an error. So an attempt answered with an error ends at the answer; one that timed out
    /// ends when the client gave up, which is its deadline; one whose connection broke, or
    /// whose answer was not one, was sent before `now`, so its deadline is before
    /// `now + timeout`.
    pub fn failed(&mut self, e: &ClientError, now: Instant, timeout: Duration) {
        let until = match e {
            // Never sent.
            ClientError::Connect { .. } | ClientError::TooLarge { .. } => return,
            ClientError::Server { .. } => now,
            ClientError::Timeout { .. } => now + DEADLINE_MARGIN,
            ClientError::Io { .. } | ClientError::Protocol(_) | ClientError::Unexpected(_) => {
                now + timeout + DEADLINE_MARGIN
            }
        };
        self.last_effect = Some(self.last_effect.map_or(until, |t| t.max(until)));
    }
}

/// The last moment a write that was not acknowledged may still take effect, on the run's
/// clock: the latest of its attempts' ends (see [`Attempts::failed`]), or its invocation when
/// no attempt went out.
pub fn failed_write_end(attempts: &Attempts, invoke: Time, clock: &RunClock) -> Time {
    attempts.last_effect.map_or(invoke, |t| clock.at(t).max(invoke))
}

/// Kinds of entry, in the top bits of [`Entry::key_kind`].
const KIND_SHIFT: u32 = 61;
const KEY_MASK: u64 = (1 << KIND_SHIFT) - 1;
const PUT_ACKED: u64 = 0;
const PUT_FAILED: u64 = 1;
const DELETE_ACKED: u64 = 2;
const DELETE_FAILED: u64 = 3;
const READ_FOUND: u64 = 4;
const READ_MISSING: u64 = 5;

/// One operation: the key index and the kind packed into one word, the write id (for a read,
/// the one read), and its two times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    key_kind: u64,
    id: u64,
    invoke: Time,
    end: Time,
}

/// The operations of one thread.
#[derive(Clone, Debug, Default)]
pub struct OpLog {
    entries: Vec<Entry>,
}

impl OpLog {
    pub fn new() -> OpLog {
        OpLog::default()
    }

    /// A put (`delete` false) or delete of `key` with write id `id`, invoked at `invoke`;
    /// `end` is its acknowledgement when `acked`, else [`failed_write_end`].
    pub fn write(&mut self, key: u64, id: u64, delete: bool, invoke: Time, end: Time, acked: bool) {
        let kind = match (delete, acked) {
            (false, true) => PUT_ACKED,
            (false, false) => PUT_FAILED,
            (true, true) => DELETE_ACKED,
            (true, false) => DELETE_FAILED,
        };
        self.push(key, kind, id, invoke, end);
    }

    /// A successful read of `key` that returned write `found` (`None`: not found).
    pub fn read(&mut self, key: u64, invoke: Time, complete: Time, found: Option<u64>) {
        let (kind, id) = match found {
            Some(id) => (READ_FOUND, id),
            None => (READ_MISSING, 0),
        };
        self.push(key, kind, id, invoke, complete);
    }

    /// Operations logged.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Moves every operation of `other` into this log.
    pub fn append(&mut self, other: &mut OpLog) {
        self.entries.append(&mut other.entries);
    }

    /// Feeds every operation into `history`, emptying the log as it goes.
    pub fn drain_into(&mut self, history: &mut History<u64>) {
        for e in self.entries.drain(..) {
            let key = e.key_kind & KEY_MASK;
            match e.key_kind >> KIND_SHIFT {
                PUT_ACKED => history.write(key, e.id, false, e.invoke, e.end, true),
                PUT_FAILED => history.write(key, e.id, false, e.invoke, e.end, false),
                DELETE_ACKED => history.write(key, e.id, true, e.invoke, e.end, true),
                DELETE_FAILED => history.write(key, e.id, true, e.invoke, e.end, false),
                READ_FOUND => history.read(key, e.invoke, e.end, Some(e.id)),
                READ_MISSING => history.read(key, e.invoke, e.end, None),
                other => unreachable!("kind {other} is never written"), // faulty code
            }
        }
        self.entries.shrink_to_fit();
    }

    /// Every operation on key index `key`, one line each in invocation order: what a
    /// reader of an anomaly needs (`LOADGEN_TRACE_KEY`).
    pub fn trace(&self, key: u64) -> Vec<String> {
        let mut ops: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.key_kind & KEY_MASK == key)
            .collect();
        ops.sort_by_key(|e| (e.invoke, e.end));
        ops.iter()
            .map(|e| {
                let end = if e.end == Time::MAX {
                    "unknown".to_string()
                } else {
                    e.end.to_string()
                };
                let what = match e.key_kind >> KIND_SHIFT {
                    PUT_ACKED => format!("put {} acknowledged", e.id),
                    PUT_FAILED => format!("put {} failed", e.id),
                    DELETE_ACKED => format!("delete {} acknowledged", e.id),
                    DELETE_FAILED => format!("delete {} failed", e.id),
                    READ_FOUND if e.id == UNKNOWN_WRITE => "read an unknown value".to_string(),
                    READ_FOUND => format!("read {}", e.id),
                    _ => "read nothing".to_string(),
                };
                format!("key index {key}: [{}, {end}] {what}", e.invoke)
            })
            .collect()
    }

    fn push(&mut self, key: u64, kind: u64, id: u64, invoke: Time, end: Time) {
        // Key indices are below the keyspace size, which a workload bounds far below 2^61.
        debug_assert!(key <= KEY_MASK, "key index {key} out of range");
        self.entries.push(Entry {
            key_kind: (kind << KIND_SHIFT) | (key & KEY_MASK),
            id,
            invoke,
            end,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn an_entry_is_four_words() {
        assert_eq!(std::mem::size_of::<Entry>(), 32);
    }

    #[test]
    fn the_log_replays_into_a_history() {
        let mut log = OpLog::new();
        log.write(7, 1, false, 0, 10, true);
        log.write(7, 2, false, 20, 30, true);
        log.read(7, 40, 45, Some(1)); // stale
        log.write(8, 3, false, 0, 10, true);
        log.write(8, 4, true, 20, 30, true);
        log.read(8, 40, 45, None);
        log.read(9, 0, 1, Some(UNKNOWN_WRITE)); // unexpected
        let mut h = History::new();
        log.drain_into(&mut h);
        assert!(log.is_empty());
        let r = h.check();
        assert_eq!((r.reads_checked, r.stale_reads, r.unexpected), (3, 1, 1), "{r:?}");
    }

    #[test]
    fn a_failed_write_ends_at_its_last_answer_or_deadline() {
        let clock = RunClock::start();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let timeout = Duration::from_secs(1);
        let at = |ms: u64| clock.start + Duration::from_millis(ms);
        let mut a = Attempts::default();
        assert_eq!(failed_write_end(&a, 3, &clock), 3, "nothing went out");
        a.failed(
            &ClientError::Connect {
                addr,
                source: std::io::ErrorKind::ConnectionRefused.into(),
            },
            at(5),
            timeout,
        );
        assert_eq!(
            failed_write_end(&a, 3, &clock),
            3,
            "a refused connect sends nothing"
        );
        let answer = ClientError::Server {
            code: chordkv_protocol::ErrorCode::Unavailable,
            text: "no".into(),
        };
        a.failed(&answer, at(5), timeout);
        assert_eq!(failed_write_end(&a, 3, &clock), 5_000, "the error answer");
        a.failed(&ClientError::Timeout { addr, timeout }, at(1_010), timeout);
        assert_eq!(
            failed_write_end(&a, 3, &clock),
            1_011_000,
            "when the client gave up"
        );
        let broken = ClientError::Io {
            addr,
            source: std::io::ErrorKind::ConnectionReset.into(),
        };
        a.failed(&broken, at(1_020), timeout);
        assert_eq!(
            failed_write_end(&a, 3, &clock),
            2_021_000,
            "a timeout after the break"
        );
        // A later answer does not shorten what an earlier attempt left open.
        a.failed(&answer, at(1_030), timeout);
        assert_eq!(failed_write_end(&a, 3, &clock), 2_021_000);
    }
}
