//! What a node says on stderr: `tracing` events inside one span per node, and the limiter that
//! keeps an error repeated by a peer or a stranger from flooding the log.
//!
//! The node only emits events; the `chordkv` binary installs the subscriber (level, `RUST_LOG`
//! filter, text or JSON lines), and a program embedding the server chooses its own. Levels:
//!
//! | level | what |
//! | --- | --- |
//! | error | the node cannot go on as configured (the store lost its workers) |
//! | warn | a peer unreachable, a stranger refused, a malformed frame, a client refused for a limit, a configuration lowered at start |
//! | info | start, phase changes (joined, active, leaving, left), a peer reachable again, keyring reloads |
//! | debug | connections accepted and closed |
//!
//! No request is logged at info or above, and no span is created per request: the event loop
//! enters its node span once, for the life of the loop.
//!
//! ## Repeated errors
//!
//! A peer that refuses us, a stranger knocking with the wrong key, a client over a limit: each
//! can repeat at the rate of an attacker's connections. [`RepeatLimiter`] lets the first event
//! of a (kind, subject) pair through, counts the further ones for [`REPEAT_WINDOW_MS`], and the
//! next event let through carries that count (`suppressed = N`). A stranger is its host (its
//! IP address: every connection comes from a new port); a peer we connect to is its address.
//!
//! The limiter tracks at most [`MAX_TRACKED_SUBJECTS`] pairs. When a new pair finds the table
//! full, pairs whose window has passed are dropped; if none has, the new subject shares its
//! kind's overflow slot, so a flood of distinct strangers logs at most one line per kind and
//! window beyond the table and takes no more memory. The counts of dropped pairs and of the
//! overflow slot go with the next event of their kind that is logged, whoever it is about.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use chordkv_core::chord::Millis;
use chordkv_protocol::Id;
use tracing::Span;

/// How long, in milliseconds, further events of one (kind, subject) pair are counted instead
/// of logged after one was logged.
pub const REPEAT_WINDOW_MS: u64 = 10_000;

/// The most (kind, subject) pairs [`RepeatLimiter`] keeps (about 64 bytes each).
pub const MAX_TRACKED_SUBJECTS: usize = 1_024;

/// Kinds of repeated events, each limited on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Repeat {
    /// A peer operation on a connection without the ring's key.
    PeerOperation,
    /// A handshake with an unknown key, or a record that does not open.
    Handshake,
    /// A peer answered us `Unauthorized`.
    RefusedByPeer,
    /// A peer we could not connect to, or whose connection failed.
    PeerUnreachable,
    /// Bytes that are not a frame, or a frame out of place (a reply on an inbound connection).
    MalformedFrame,
    /// A client refused or closed for a limit (max clients, protected mode, query buffer).
    ClientLimit,
}

impl Repeat {
    const ALL: [Repeat; 6] = [
        Repeat::PeerOperation,
        Repeat::Handshake,
        Repeat::RefusedByPeer,
        Repeat::PeerUnreachable,
        Repeat::MalformedFrame,
        Repeat::ClientLimit,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// The kind's name, the `kind` field of its events.
    pub fn name(self) -> &'static str {
        match self {
            Repeat::PeerOperation => "peer_operation",
            Repeat::Handshake => "handshake",
            Repeat::RefusedByPeer => "refused_by_peer",
            Repeat::PeerUnreachable => "peer_unreachable",
            Repeat::MalformedFrame => "malformed_frame",
            Repeat::ClientLimit => "client_limit",
        }
    }
}

/// Who repeats an event: a host (a stranger or client, whatever its port) or a peer's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    Host(IpAddr),
    Addr(SocketAddr),
}

impl Subject {
    /// The subject of a connection that came to us from `from`: its host.
    pub fn inbound(from: SocketAddr) -> Subject {
        Subject::Host(from.ip())
    }
}

/// One (kind, subject) pair, or a kind's overflow slot.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    /// Events are counted, not logged, until this time.
    until: Millis,
    /// Events counted since the last one logged.
    suppressed: u64,
}

impl Window {
    /// Whether to log an event at `now`; if so, with how many were suppressed before it.
    fn pass(&mut self, now: Millis, window_ms: u64) -> Option<u64> {
        if now < self.until {
            self.suppressed += 1;
            return None;
        }
        self.until = now + window_ms;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Rate limits repeated log events per (kind, subject); see the module docs. Time comes in as
/// [`Millis`], so the limiter is deterministic and tested without a clock.
#[derive(Debug)]
pub struct RepeatLimiter {
    window_ms: u64,
    max_subjects: usize,
    windows: HashMap<(Repeat, Subject), Window>,
    /// Per kind: where subjects beyond a full table are counted.
    overflow: [Window; Repeat::ALL.len()],
    /// Per kind: counts of dropped pairs, reported with the kind's next event.
    carried: [u64; Repeat::ALL.len()],
    /// No window in the table ends before this (the earliest end when the table was last swept,
    /// or of a pair added since): a full table is not swept sooner.
    sweep_at: Millis,
}

impl Default for RepeatLimiter {
    fn default() -> RepeatLimiter {
        RepeatLimiter::new(REPEAT_WINDOW_MS, MAX_TRACKED_SUBJECTS)
    }
}

impl RepeatLimiter {
    /// A limiter logging each pair at most once per `window_ms`, tracking at most
    /// `max_subjects` pairs.
    pub fn new(window_ms: u64, max_subjects: usize) -> RepeatLimiter {
        RepeatLimiter {
            window_ms,
            max_subjects,
            windows: HashMap::new(),
            overflow: Default::default(),
            carried: Default::default(),
            sweep_at: Millis::MAX,
        }
    }

    /// Whether to log an event of `kind` about `subject` at `now`: `Some(n)` to log it, `n`
    /// being the events not logged since the last one of this pair, plus those of its kind
    /// counted in the overflow slot or in dropped pairs; `None` to count it and stay silent.
    pub fn check(&mut self, now: Millis, kind: Repeat, subject: Subject) -> Option<u64> {
        let key = (kind, subject);
        let window_ms = self.window_ms;
        let passed = if let Some(w) = self.windows.get_mut(&key) {
            w.pass(now, window_ms)
        } else if self.has_room(now) {
            let mut w = Window::default();
            let passed = w.pass(now, window_ms);
            self.windows.insert(key, w);
            self.sweep_at = self.sweep_at.min(now + window_ms);
            passed
        } else {
            self.overflow[kind.index()].pass(now, window_ms)
        };
        let i = kind.index();
        passed.map(|n| {
            n + std::mem::take(&mut self.carried[i]) + std::mem::take(&mut self.overflow[i].suppressed)
        })
    }

    /// The pairs tracked now (at most `max_subjects`).
    pub fn tracked(&self) -> usize {
        self.windows.len()
    }

    /// Whether a new pair fits, after dropping the pairs whose window has passed (at most one
    /// sweep per window end, so a flood against a full table costs no sweep per event).
    fn has_room(&mut self, now: Millis) -> bool {
        if self.windows.len() < self.max_subjects {
            return true;
        }
        if now < self.sweep_at {
            return false;
        }
        let carried = &mut self.carried;
        let mut next = Millis::MAX;
        self.windows.retain(|(kind, _), w| {
            if now < w.until {
                next = next.min(w.until);
                return true;
            }
            carried[kind.index()] += w.suppressed;
            false
        });
        self.sweep_at = next;
        self.windows.len() < self.max_subjects
    }
}

/// The span of a node's work, entered by its event loop: the advertised address `addr` and,
/// for one ring position, its id's first 8 hex digits (`id`), or for virtual nodes their count
/// (`vnodes`; an event about one vnode carries its id as a field). At error level, so that the
/// fields stay on every event whatever level is logged.
pub fn node_span(addr: SocketAddr, ids: &[Id]) -> Span {
    match ids {
        [id] => tracing::error_span!("node", %addr, id = %id.short(8)),
        _ => tracing::error_span!("node", %addr, vnodes = ids.len()),
    }
}

/// `Some(n)` when `n` events were suppressed, for an event's `suppressed` field (a field with
/// `None` is left out of the line).
pub fn suppressed_field(n: u64) -> Option<u64> {
    (n > 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(last: u8) -> Subject {
        Subject::Host(IpAddr::from([10, 0, 0, last]))
    }

    /// Events at `times` of one pair: which were logged, with their counts.
    fn run(
        limiter: &mut RepeatLimiter,
        kind: Repeat,
        subject: Subject,
        times: &[Millis],
    ) -> Vec<Option<u64>> {
        times.iter().map(|&t| limiter.check(t, kind, subject)).collect()
    }

    #[test]
    fn the_first_event_logs_and_the_next_one_after_the_window_counts_the_rest() {
        let mut l = RepeatLimiter::new(10_000, 16);
        let got = run(
            &mut l,
            Repeat::Handshake,
            host(1),
            &[0, 1, 2, 9_999, 10_000, 10_001, 25_000],
        );
        assert_eq!(got, [Some(0), None, None, None, Some(3), None, Some(1)]);
    }

    #[test]
    fn kinds_and_subjects_are_limited_apart() {
        let mut l = RepeatLimiter::new(10_000, 16);
        assert_eq!(l.check(0, Repeat::Handshake, host(1)), Some(0));
        assert_eq!(l.check(1, Repeat::Handshake, host(2)), Some(0));
        assert_eq!(l.check(2, Repeat::PeerOperation, host(1)), Some(0));
        let peer = Subject::Addr(SocketAddr::from(([10, 0, 0, 1], 7000)));
        assert_eq!(l.check(3, Repeat::Handshake, peer), Some(0));
        assert_eq!(l.check(4, Repeat::Handshake, host(1)), None);
        assert_eq!(l.tracked(), 4);
    }

    #[test]
    fn a_stranger_is_its_host_whatever_its_port() {
        let a = Subject::inbound(SocketAddr::from(([10, 0, 0, 9], 40_001)));
        let b = Subject::inbound(SocketAddr::from(([10, 0, 0, 9], 40_002)));
        assert_eq!(a, b);
    }

    #[test]
    fn a_flood_of_distinct_strangers_stays_within_the_table_and_logs_one_line_beyond_it() {
        let mut l = RepeatLimiter::new(10_000, 4);
        let logged: Vec<u64> = (0..200u8)
            .filter_map(|i| l.check(u64::from(i), Repeat::Handshake, host(i)))
            .collect();
        // Four pairs, then one line for the overflow slot; the other 195 counted.
        assert_eq!(logged, [0, 0, 0, 0, 0]);
        assert_eq!(l.tracked(), 4);
        // After the window the table is swept, and the next line carries the overflow
        // slot's 195.
        assert_eq!(l.check(20_000, Repeat::Handshake, host(250)), Some(195));
        assert_eq!(l.check(20_001, Repeat::Handshake, host(200)), Some(0));
        assert_eq!(l.tracked(), 2);
    }

    #[test]
    fn counts_of_swept_pairs_are_carried_into_their_kinds_next_line() {
        let mut l = RepeatLimiter::new(10_000, 2);
        assert_eq!(l.check(0, Repeat::Handshake, host(1)), Some(0));
        assert_eq!(l.check(1, Repeat::Handshake, host(1)), None);
        assert_eq!(l.check(2, Repeat::Handshake, host(1)), None);
        assert_eq!(l.check(3, Repeat::PeerOperation, host(2)), Some(0));
        // The table is full; at 20 s both windows have passed and are swept: host 1's two
        // suppressed events go with the next handshake line, whoever it is about.
        assert_eq!(l.check(20_000, Repeat::PeerOperation, host(3)), Some(0));
        assert_eq!(l.check(20_001, Repeat::Handshake, host(4)), Some(2));
        assert_eq!(l.tracked(), 2);
    }

    #[test]
    fn a_full_table_is_not_swept_before_a_window_ends() {
        let mut l = RepeatLimiter::new(10_000, 1);
        assert_eq!(l.check(0, Repeat::Handshake, host(1)), Some(0));
        assert_eq!(l.check(1, Repeat::Handshake, host(2)), Some(0)); // the overflow slot
        assert_eq!(l.check(2, Repeat::Handshake, host(3)), None);
        assert_eq!(l.sweep_at, 10_000);
        assert_eq!(l.tracked(), 1);
    }
}
