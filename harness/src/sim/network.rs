//! The links between simulated nodes: which are cut, and what a cut does to a message.
//!
//! A cut is silent, whatever its mode: the sender learns nothing (no "unreachable" notice, as
//! from a process that exited), its requests simply go unanswered until their deadlines.
//!
//! ```text
//!   drop:  a ──x──► b     the message is gone (a router discarding packets)
//!   hold:  a ──┤ ├──► b   the message waits at the cut; heal() delivers every held message,
//!                         in send order per (sender, receiver) link, as TCP retransmission
//!                         delivers a connection's bytes once the path is back
//! ```
//!
//! Only the held backlog of a link keeps its order: as everywhere in the simulated network,
//! each message has its own delay, so messages sent after the heal may overtake it.
//!
//! Held messages from a sender that crashed (or exited) before the heal are discarded: its
//! kernel's send buffers went with it. Those to a receiver that restarted meanwhile reach a
//! new incarnation and are discarded on delivery, as a reset connection would be.

use std::collections::{BTreeMap, VecDeque};

use chordkv_protocol::Frame;

use chordkv_core::chord::ReplyTo;

/// What a cut link does with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CutMode {
    /// The message is lost.
    Drop,
    /// The message is held and delivered after the heal.
    Hold,
}

impl std::fmt::Display for CutMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CutMode::Drop => "drop",
            CutMode::Hold => "hold",
        })
    }
}

/// A message between two nodes, on its way.
#[derive(Clone, Debug)]
pub(super) struct Wire {
    pub from: usize,
    pub to: usize,
    /// The sender's life when it sent the message (a crash ends it).
    pub from_incarnation: u64,
    /// The receiver's life the message is for.
    pub to_incarnation: u64,
    /// Numbers every message sent, in send order (a duplicate keeps its original's number).
    pub sent: u64,
    pub payload: Payload,
}

#[derive(Clone, Debug)]
pub(super) enum Payload {
    Request { reply_to: ReplyTo, frame: Frame },
    Reply { frame: Frame },
}

/// The cut links and the messages held at them.
#[derive(Default)]
pub(super) struct Links {
    /// Pairs of node indices (low, high) that cannot talk, and how.
    cuts: BTreeMap<(usize, usize), CutMode>,
    /// Messages held at a hold-mode cut, per (sender, receiver), in send order.
    held: BTreeMap<(usize, usize), VecDeque<Wire>>,
}

impl Links {
    pub fn cut(&mut self, a: usize, b: usize, mode: CutMode) {
        if a != b {
            self.cuts.insert((a.min(b), a.max(b)), mode);
        }
    }

    /// How the link between `a` and `b` is cut, if it is.
    pub fn cut_mode(&self, a: usize, b: usize) -> Option<CutMode> {
        self.cuts.get(&(a.min(b), a.max(b))).copied()
    }

    pub fn hold(&mut self, wire: Wire) {
        self.held.entry((wire.from, wire.to)).or_default().push_back(wire);
    }

    /// Messages held at cuts.
    pub fn held_count(&self) -> usize {
        self.held.values().map(VecDeque::len).sum()
    }

    /// Restores every link; returns the held messages per link, links in (sender, receiver)
    /// order, each link's messages in send order.
    pub fn heal(&mut self) -> Vec<VecDeque<Wire>> {
        self.cuts.clear();
        std::mem::take(&mut self.held).into_values().collect()
    }
}
