//! Replication: every key lives on its primary, `successor(id(k))`, and on the next
//! `replicas` nodes of the primary's successor list (Dynamo's preference list on the ring).
//!
//! ```text
//!   key k:   ... P ──► [S1 primary] ──► S2 ──► S3 ──► S4 ...      replicas = 2
//!                       └──────── k lives here ───────┘
//! ```
//!
//! - **Writes.** The primary stamps the version, stores the write and sends it to its
//!   replicas (`REPLICATE`) at the same time. With `AckPolicy::All` the client is answered once
//!   the primary and every live replica have applied it (a replica that misses its deadline is
//!   presumed dead and no longer waited for); with `AckPolicy::One` once the primary has.
//! - **Failover.** An entry node whose lookup names a dead primary sends the operation to the
//!   next live node of the list with `FLAG_FAILOVER`; that node, a replica, serves it as the new
//!   primary at once (reads from its copy, writes stamped and replicated onward) and checks its
//!   predecessor straight away, so the ring's own view catches up.
//! - **Repair.** Anti-entropy (`sync.rs`) restores missing copies after failures and joins.

use std::net::SocketAddr;

use chordkv_protocol::{in_half_open, Id, Item, Message, NodeRef};

use super::config::AckPolicy;
use super::{Millis, Node, Phase, ReplyTo, RpcKind, StoreWait};
use crate::store::{StoreError, StoreOp, StoreOutcome};

/// A client write waiting for its replicas before it is acknowledged.
#[derive(Debug)]
pub(super) struct PendingWrite {
    /// The reply to send once the replicas have answered (set when the local store is done).
    pub reply: Option<(ReplyTo, u64, Message)>,
    /// Replicas that have not answered yet.
    pub waiting: Vec<SocketAddr>,
}

impl Node {
    /// The nodes holding copies of this node's primary range: its first `replicas` live
    /// successors.
    pub(super) fn replica_targets(&self) -> Vec<NodeRef> {
        self.routing
            .successors()
            .iter()
            .filter(|n| !self.is_dead(&n.addr))
            .take(self.config.replicas)
            .copied()
            .collect()
    }

    /// Sends a write this node just stamped as primary to its replicas. Returns the id of the
    /// pending write when the client's reply must wait for them.
    pub(super) fn replicate_write(&mut self, now: Millis, item: Item) -> Option<u64> {
        let targets = self.replica_targets();
        if targets.is_empty() {
            return None;
        }
        let write = (self.config.ack == AckPolicy::All).then(|| {
            let id = self.next_write_id;
            self.next_write_id += 1;
            let waiting = targets.iter().map(|t| t.addr).collect();
            self.writes.insert(id, PendingWrite { reply: None, waiting });
            id
        });
        for t in &targets {
            self.stats.replica_writes_sent += 1;
            let msg = Message::Replicate {
                items: vec![item.clone()],
            };
            self.send_rpc(now, t.addr, msg, RpcKind::Replica(write), 0);
        }
        write
    }

    /// The local part of a replicated write is done: reply now, or once the replicas are.
    pub(super) fn local_write_done(&mut self, write: u64, to: ReplyTo, request_id: u64, reply: Message) {
        let failed = matches!(reply, Message::Error { .. });
        match self.writes.get_mut(&write) {
            Some(w) if !failed => {
                w.reply = Some((to, request_id, reply));
                self.maybe_finish_write(write);
            }
            _ => {
                // The primary failed to store it: answer at once; late replica acks are ignored.
                self.writes.remove(&write);
                self.reply(to, request_id, reply);
            }
        }
    }

    /// A replica answered (or was given up on) for a pending write.
    pub(super) fn replica_answered(&mut self, write: u64, from: SocketAddr) {
        if let Some(w) = self.writes.get_mut(&write) {
            w.waiting.retain(|a| *a != from);
            self.maybe_finish_write(write);
        }
    }

    fn maybe_finish_write(&mut self, write: u64) {
        let done = self
            .writes
            .get(&write)
            .is_some_and(|w| w.waiting.is_empty() && w.reply.is_some());
        if done {
            let w = self.writes.remove(&write).expect("checked above"); // faulty code
            let (to, rid, msg) = w.reply.expect("checked above"); // faulty code
            self.reply(to, rid, msg);
        }
    }

    /// A replica write (or an anti-entropy repair) from a primary: merge and acknowledge.
    pub(super) fn handle_replicate(&mut self, to: ReplyTo, rid: u64, items: Vec<Item>) {
        if matches!(self.phase, Phase::Idle | Phase::Joining | Phase::Left) {
            let text = format!("node is {:?}", self.phase);
            let msg = Message::Error {
                code: chordkv_protocol::ErrorCode::NotReady,
                hops: 0,
                text,
            };
            return self.reply(to, rid, msg);
        }
        for it in &items {
            self.clock.observe(it.version);
        }
        self.stats.replica_writes_applied += items.len() as u64;
        self.store_op(
            StoreOp::PutMany { items },
            StoreWait::ReplicaApply { to, request_id: rid },
        );
    }

    pub(super) fn on_replica_applied(
        &mut self,
        to: ReplyTo,
        rid: u64,
        result: Result<StoreOutcome, StoreError>,
    ) {
        let msg = match result {
            Ok(StoreOutcome::PutMany { applied }) => Message::ReplicateAck {
                applied: applied as u32,
            },
            Ok(_) => Message::ReplicateAck { applied: 0 },
            Err(e) => Message::Error {
                code: chordkv_protocol::ErrorCode::StoreFailed,
                hops: 0,
                text: e.to_string(),
            },
        };
        self.reply(to, rid, msg);
    }

    /// Whether this node may serve `target` as a stand-in for a primary that an entry found
    /// dead: the key is in its predecessor's range (as the predecessor last reported it), so
    /// this node is next in line and becomes the primary once the predecessor is gone.
    pub(super) fn may_take_over(&mut self, now: Millis, target: &Id) -> bool {
        let in_predecessor_range = match (self.predecessor, self.predecessor_range) {
            (Some(p), Some((addr, Some(pp)))) if addr == p.addr => in_half_open(target, &pp.id, &p.id),
            _ => false,
        };
        // Without replicas the successor has no copy to serve from: let the ring repair.
        if self.phase != Phase::Active || !in_predecessor_range || self.config.replicas == 0 {
            return false;
        }
        // Someone found our predecessor dead: check it now rather than at the next round.
        if self.predecessor.is_some() && self.next_check_predecessor > now {
            self.next_check_predecessor = now;
        }
        self.stats.failovers_served += 1;
        true
    }
}
