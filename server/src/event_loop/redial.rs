//! When the loop may dial a peer again after a connection to it failed.
//!
//! A connection to a peer fails before the peer answers when nothing listens on its address
//! (refused), when the connect times out (partition, paused host), or when the process there
//! closes it on our first bytes (a member restarted without the ring's keyring, a stranger
//! on the address). The core keeps talking to such a peer on purpose: it probes members
//! presumed down every stabilize period, from every vnode, so one that comes back is used
//! again at once. Without a limit each probe is a new TCP connection: a host of 8 vnodes
//! dialled a dead member about 30 times a second, and a member that refuses our handshake
//! was left with thousands of sockets in TIME_WAIT.
//!
//! So a peer whose connection failed is not dialled again before a delay that doubles with
//! each failure in a row, from [`REDIAL_MIN_MS`] to [`REDIAL_MAX_MS`]. Messages for it in
//! between are held (up to [`MAX_HELD`]) and go out on the one connection dialled when the
//! delay ends; if that dial fails too, they fail as a refused connect makes them. They are
//! held rather than failed at once: a peer restarted on its address answers the first dial
//! after its delay, and the messages it was sent meanwhile (a join's hand-over, a probe) are
//! answered instead of failing and being retried periods later. The first answer on a
//! connection ends the backoff, and so does a new peer connection from the peer's IP address
//! (a process restarted there dials the ring to join: its peers dial it back at once rather
//! than at the end of their delay; on a host of several processes, the others' backoff ends
//! too, which costs one dial each). The cap bounds how late a peer that came back is used
//! again otherwise (a paused process resumed: half a second). (Exponential reconnect backoff
//! as Erlang distribution and Cassandra's outbound connections have; the cap keeps recovery
//! prompt.)

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use chordkv_core::chord::Millis;
use chordkv_protocol::Frame;

/// The first delay before a peer whose connection failed is dialled again (ms).
pub const REDIAL_MIN_MS: Millis = 50;
/// The longest delay between dials of a peer that keeps failing (ms).
pub const REDIAL_MAX_MS: Millis = 500;
/// Messages held for one peer at most; more fail at once.
pub const MAX_HELD: usize = 1_024;
/// A peer not dialled for this long after its delay ended is forgotten (its next failure
/// starts at [`REDIAL_MIN_MS`] again); keeps the map bounded by the peers the core talks to.
const FORGET_AFTER_MS: Millis = 10 * REDIAL_MAX_MS;

#[derive(Debug)]
struct Backoff {
    /// The delay now (ms).
    delay: Millis,
    /// When the next dial may go out.
    at: Millis,
    /// Messages waiting for that dial, in the order the core sent them.
    held: Vec<Frame>,
}

/// Peers whose last connection failed before they answered: the delay now, when the next
/// dial may go out, and the messages waiting for it.
#[derive(Debug, Default)]
pub struct Redial {
    peers: HashMap<SocketAddr, Backoff>,
}

impl Redial {
    /// A connection to `peer` failed before it answered (refused, timed out, closed on us):
    /// the next dial waits for twice the last delay (at least [`REDIAL_MIN_MS`], at most
    /// [`REDIAL_MAX_MS`]).
    pub fn failed(&mut self, now: Millis, peer: SocketAddr) {
        let b = self.peers.entry(peer).or_insert(Backoff {
            delay: 0,
            at: now,
            held: Vec::new(),
        });
        b.delay = (b.delay * 2).clamp(REDIAL_MIN_MS, REDIAL_MAX_MS);
        b.at = now + b.delay;
    }

    /// `peer` answered on a connection: dial it freely again.
    pub fn reached(&mut self, peer: SocketAddr) {
        if !self.peers.is_empty() {
            self.peers.remove(&peer);
        }
    }

    /// A new peer connection came from `ip`: a process there may have started again. Each
    /// peer at that address may be dialled at once, its held messages with it; its next
    /// failure starts at the shortest delay again.
    pub fn heard_from(&mut self, now: Millis, ip: IpAddr) {
        if self.peers.is_empty() {
            return;
        }
        for (peer, b) in self.peers.iter_mut() {
            if peer.ip() == ip {
                b.delay = 0;
                b.at = b.at.min(now);
            }
        }
    }

    /// Whether `peer` may not be dialled at `now`.
    pub fn waiting(&self, now: Millis, peer: SocketAddr) -> bool {
        !self.peers.is_empty() && self.peers.get(&peer).is_some_and(|b| now < b.at)
    }

    /// Keeps `frame` for `peer`'s next dial; gives it back when [`MAX_HELD`] are held.
    pub fn hold(&mut self, peer: SocketAddr, frame: Frame) -> Result<(), Frame> {
        match self.peers.get_mut(&peer) {
            Some(b) if b.held.len() < MAX_HELD => {
                b.held.push(frame);
                Ok(())
            }
            _ => Err(frame),
        }
    }

    /// The held messages of every peer whose delay has ended at `now`, to send on a new dial.
    pub fn due(&mut self, now: Millis) -> Vec<(SocketAddr, Vec<Frame>)> {
        if self.peers.is_empty() {
            return Vec::new();
        }
        self.peers
            .iter_mut()
            .filter(|(_, b)| b.at <= now && !b.held.is_empty())
            .map(|(&peer, b)| (peer, std::mem::take(&mut b.held)))
            .collect()
    }

    /// When the first held message may go out.
    pub fn next_due(&self) -> Option<Millis> {
        self.peers
            .values()
            .filter(|b| !b.held.is_empty())
            .map(|b| b.at)
            .min()
    }

    /// Forgets peers not dialled for [`FORGET_AFTER_MS`] after their delay ended.
    pub fn prune(&mut self, now: Millis) {
        if !self.peers.is_empty() {
            self.peers
                .retain(|_, b| !b.held.is_empty() || now < b.at + FORGET_AFTER_MS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_to_its_cap_and_an_answer_ends_it() {
        let peer: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let mut r = Redial::default();
        assert!(!r.waiting(0, peer));
        let mut now = 0;
        let mut delays = Vec::new();
        for _ in 0..7 {
            r.failed(now, peer);
            let mut t = now;
            while r.waiting(t, peer) {
                t += 1;
            }
            delays.push(t - now);
            now = t;
        }
        assert_eq!(delays, [50, 100, 200, 400, 500, 500, 500]);
        r.reached(peer);
        assert!(!r.waiting(now, peer));
        r.failed(now, peer);
        assert!(r.waiting(now + REDIAL_MIN_MS - 1, peer));
        assert!(!r.waiting(now + REDIAL_MIN_MS, peer));
    }

    #[test]
    fn messages_wait_for_the_dial_after_the_delay() {
        let peer: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let mut r = Redial::default();
        r.failed(0, peer);
        for id in 0..3 {
            r.hold(peer, Frame::new(id, chordkv_protocol::Message::Ping))
                .unwrap();
        }
        assert_eq!(r.next_due(), Some(REDIAL_MIN_MS));
        assert!(r.due(REDIAL_MIN_MS - 1).is_empty());
        let due = r.due(REDIAL_MIN_MS);
        let ids: Vec<u64> = due[0].1.iter().map(|f| f.request_id).collect();
        assert_eq!((due[0].0, ids), (peer, vec![0, 1, 2]));
        assert_eq!(r.next_due(), None);
        r.failed(REDIAL_MIN_MS, peer);
        for id in 0..MAX_HELD as u64 {
            r.hold(peer, Frame::new(id, chordkv_protocol::Message::Ping))
                .unwrap();
        }
        assert!(
            r.hold(peer, Frame::new(0, chordkv_protocol::Message::Ping))
                .is_err(),
            "bounded"
        );
        r.prune(1_000_000);
        assert!(r.next_due().is_some(), "held messages keep their peer");
    }

    #[test]
    fn a_peer_connection_from_its_address_ends_the_wait() {
        let peer: SocketAddr = "127.0.0.2:7000".parse().unwrap();
        let other: SocketAddr = "127.0.0.3:7000".parse().unwrap();
        let mut r = Redial::default();
        for _ in 0..5 {
            r.failed(0, peer);
            r.failed(0, other);
        }
        r.hold(peer, Frame::new(1, chordkv_protocol::Message::Ping))
            .unwrap();
        r.heard_from(10, peer.ip());
        assert!(!r.waiting(10, peer) && r.waiting(10, other));
        assert_eq!(r.due(10).len(), 1, "its held messages go out now");
        r.failed(10, peer);
        assert!(
            !r.waiting(10 + REDIAL_MIN_MS, peer),
            "the next failure starts over"
        );
    }

    #[test]
    fn peers_left_alone_are_forgotten() {
        let peer: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let mut r = Redial::default();
        r.failed(0, peer);
        r.failed(50, peer);
        r.prune(150 + FORGET_AFTER_MS);
        assert!(r.peers.is_empty());
        assert!(
            r.hold(peer, Frame::new(1, chordkv_protocol::Message::Ping))
                .is_err(),
            "not waiting"
        );
        r.failed(200_000, peer);
        assert!(
            !r.waiting(200_000 + REDIAL_MIN_MS, peer),
            "starts again at the shortest delay"
        );
    }
}
