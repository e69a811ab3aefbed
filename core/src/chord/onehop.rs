//! One-hop routing's dissemination (Gupta, Liskov, Rodrigues, NSDI'04): membership
//! events detected here, broadcast down a tree of ring ranges, and membership pages for a
//! joining node. The table itself is `membership.rs`.

use chordkv_protocol::NodeAddr;
use std::collections::BTreeMap;
use std::sync::Arc;

use chordkv_protocol::{in_open, Id, MemberEvent, Message, NodeRef};

use super::node::{Millis, Node};
use super::rpc::RpcKind;

/// Most members in one `MEMBERS` page.
pub const MEMBERS_PAGE: usize = 4_096;
/// Owners after the first that a one-hop lookup names (where to fail over).
pub(super) const ONEHOP_LIST: usize = 3;

/// A membership broadcast in flight to one child: resent to the next member of the child's
/// part if the child does not answer.
#[derive(Clone, Debug)]
pub(super) struct Broadcast {
    pub to: NodeRef,
    pub limit: Id,
    pub events: Arc<Vec<MemberEvent>>,
}

/// Membership events waiting to go out, and broadcasts in flight (one-hop).
#[derive(Debug, Default)]
pub(super) struct Dissemination {
    /// Events detected since the last broadcast.
    pub pending_events: Vec<MemberEvent>,
    pub broadcasts: BTreeMap<u64, Broadcast>,
    pub next_broadcast: u64,
}

impl Node {
    /// Records a membership event this node detected: applied here at once, disseminated at
    /// the next stabilize round with the others of the period.
    pub(super) fn detect_event(&mut self, now: Millis, node: NodeRef, alive: bool) {
        let Some(m) = self.members.as_mut() else { return };
        if node.addr == self.me.addr {
            return;
        }
        let event = MemberEvent {
            node,
            alive,
            stamp: now,
        };
        if m.apply(&event) {
            self.stats.member_events_detected += 1;
            self.onehop.pending_events.push(event);
        }
    }

    /// Announces a predecessor missing from the table (a join), then sends the period's events
    /// down the broadcast tree.
    pub(super) fn flush_member_events(&mut self, now: Millis) {
        let Some(m) = &self.members else { return };
        if let Some(p) = self.predecessor.filter(|p| !m.contains(&p.id)) {
            self.detect_event(now, p, true);
        }
        if self.onehop.pending_events.is_empty() {
            return;
        }
        let events = Arc::new(std::mem::take(&mut self.onehop.pending_events));
        let me = self.me.id;
        self.forward_member_events(now, &events, &me);
    }

    /// Sends `events` to this node's children in the broadcast tree for the part `(me, limit)`.
    pub(super) fn forward_member_events(&mut self, now: Millis, events: &Arc<Vec<MemberEvent>>, limit: &Id) {
        let Some(m) = &self.members else { return };
        let children = m.broadcast_children(&self.me.id, limit);
        for (child, end) in children {
            self.send_broadcast(now, events.clone(), child, end);
        }
    }

    pub(super) fn send_broadcast(
        &mut self,
        now: Millis,
        events: Arc<Vec<MemberEvent>>,
        to: NodeRef,
        limit: Id,
    ) {
        let b = self.onehop.next_broadcast;
        self.onehop.next_broadcast += 1;
        let msg = Message::MemberEvents {
            limit,
            events: events.as_ref().clone(),
        };
        self.onehop.broadcasts.insert(b, Broadcast { to, limit, events });
        self.send_rpc(now, to.addr, msg, RpcKind::MemberEvents(b), 0);
    }

    /// A child of the broadcast tree did not answer: its part goes to the next member in it.
    pub(super) fn broadcast_failed(&mut self, now: Millis, b: u64) {
        let Some(bc) = self.onehop.broadcasts.remove(&b) else {
            return;
        };
        let next = self.members.as_ref().and_then(|m| m.after(&bc.to.id));
        if let Some(next) = next.filter(|n| in_open(&n.id, &bc.to.id, &bc.limit) && n.addr != self.me.addr) {
            self.send_broadcast(now, bc.events, next, bc.limit);
        }
    }

    /// Applies received events and passes them on within `(me, limit)`; returns how many
    /// changed the table.
    pub(super) fn apply_member_events(&mut self, now: Millis, events: &[MemberEvent], limit: &Id) -> u32 {
        let Some(m) = self.members.as_mut() else { return 0 };
        let mut applied = 0;
        for e in events {
            if e.node.addr == self.me.addr {
                continue; // a stale notice of our own failure: our successor will re-announce us
            }
            if m.apply(e) {
                applied += 1;
            }
        }
        self.stats.member_events_applied += applied as u64;
        let events = Arc::new(events.to_vec());
        self.forward_member_events(now, &events, limit);
        applied as u32
    }

    /// A page of the successor's table (one-hop join): merge it, ask for the next.
    pub(super) fn on_members(&mut self, now: Millis, from: NodeAddr, msg: Message) {
        let (Message::Members { nodes, more }, Some(m)) = (msg, self.members.as_mut()) else {
            return;
        };
        let last = nodes.last().map(|n| n.id);
        for n in nodes {
            if !m.is_known_gone(&n.addr) {
                m.insert(n);
            }
        }
        if let (true, Some(after)) = (more, last) {
            self.send_rpc(now, from, Message::GetMembers { after }, RpcKind::Members, 0);
        }
    }

    /// The contiguous run of the ring this node knows, in ring order: its predecessor, itself,
    /// its successors (the answer to `GET_MEMBERS` without a membership table).
    pub(super) fn known_run(&self) -> Vec<NodeRef> {
        let mut run = Vec::with_capacity(2 + self.routing.successors().len());
        run.extend(self.predecessor);
        run.push(self.me);
        run.extend_from_slice(self.routing.successors());
        run
    }
}
