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

use super::op_table::OpTable;
use chordkv_protocol::NodeAddr;
use std::collections::{BTreeMap, BTreeSet};

use chordkv_protocol::{in_half_open, Id, Item, Message, NodeRef};

use super::config::AckPolicy;
use super::node::{Millis, Node, Phase, ReplyTo, StoreOpId};
use super::rpc::RpcKind;
use super::store_wait::StoreWait;
use super::sync::SyncRound;
use super::timer::Timer;
use crate::store::{StoreError, StoreOp, StoreOutcome};

/// A client write waiting for its replicas before it is acknowledged.
#[derive(Debug)]
pub(super) struct PendingWrite {
    /// The reply to send once the replicas have answered (set when the local store is done).
    pub reply: Option<(ReplyTo, u64, Message)>,
    /// Replicas that have not answered yet.
    pub waiting: Vec<NodeAddr>,
    /// Replicas that applied it.
    pub acked: usize,
    /// Replica acknowledgements needed besides our own copy: a majority of the preference list
    /// under `consistent`, none under `available`.
    pub needed: usize,
    /// Copies the preference list has in all (for the error text).
    pub copies: usize,
    /// Whether to wait for every replica asked (`AckPolicy::All`) rather than for `needed`.
    pub all: bool,
}

/// Replication and repair: writes waiting for replicas, anti-entropy rounds, and what this
/// node knows of the ranges it holds copies of.
#[derive(Debug, Default)]
pub(super) struct Replication {
    /// Client writes waiting for their replicas (`AckPolicy::All`).
    pub writes: OpTable<PendingWrite>,
    pub next_write_id: u64,
    /// Anti-entropy rounds in progress (one periodic round at a time, and lease catch-ups).
    pub syncs: BTreeMap<u64, SyncRound>,
    pub next_sync_id: u64,
    /// When this node last collected its own tombstones alone (`collect_own_tombstones`):
    /// at most once an anti-entropy interval, as a round would.
    pub own_collection_at: Option<Millis>,
    /// Store ops carrying a tombstone this node has issued (`store_op`), so that an own
    /// collection knows whether one was stored while it ran.
    pub tombstones_stored: u64,
    /// The store ops of those not answered yet. The store may run ops in any order (the
    /// Redis driver runs puts and scans on different connections), so a collection that
    /// starts while one is in flight may scan before it lands: it then does not stop the
    /// timer, whatever it finds.
    pub tombstone_ops: BTreeSet<StoreOpId>,
    /// Predecessor and replica targets as of the last check, to notice changes.
    pub replica_view: Vec<NodeAddr>,
    /// Since when `replica_view` has not changed.
    pub replica_view_since: Millis,
    /// Ranges primaries declared us a replica of (by syncing with us), and when last.
    pub declared: Vec<(Id, Id, Millis)>,
    /// The store reported that it lost its data and it has not been refilled yet.
    pub store_lost: bool,
    /// Our predecessor (by address) and its own predecessors, nearest first, as it last told
    /// us: the ranges this node keeps copies of and may stand in for.
    pub pred_list: Option<(NodeAddr, Vec<NodeRef>)>,
}

impl Node {
    /// The nodes holding copies of this node's primary range: its first `replicas` live
    /// successors on hosts other than ours, each host once (Dynamo section 4.3).
    pub(super) fn replica_targets(&self) -> Vec<NodeRef> {
        let live = self
            .routing
            .successors()
            .iter()
            .filter(|n| !self.is_dead(&n.addr));
        let mut list =
            super::placement::distinct_hosts(std::iter::once(&self.me).chain(live), self.config.replicas + 1);
        list.remove(0);
        list
    }

    /// Whether a write this node stamps for `primary`'s range may have copies to send or wait
    /// for: `false` only when [`Node::replicate_items`] would certainly do nothing (no replicas
    /// configured; under `available`, no live successor on another host; under `consistent`,
    /// we are the primary of a ring of our host alone, a preference list of one), so the write
    /// path can skip building the `Replicate` message.
    pub(super) fn may_replicate(&self, primary: &NodeRef) -> bool {
        if self.config.replicas == 0 {
            return false;
        }
        if self.config.is_consistent() {
            return !(primary.addr == self.me.addr
                && self.routing.other_hosts().is_empty()
                && self.ring_is_small());
        }
        self.routing
            .successors()
            .iter()
            .any(|n| n.addr.host != self.me.addr.host && !self.is_dead(&n.addr))
    }

    /// Sends a write this node just stamped as the holder of `primary`'s range to the range's
    /// other copies. Returns the id of the pending write when the client's reply must wait for
    /// them.
    ///
    /// Under `available` the copies are our first `replicas` live successors and the reply
    /// waits for all of them (`--ack all`) or none. Under `consistent` they are the rest of the
    /// preference list, and the reply waits for a majority of the list (our copy included),
    /// or with `--ack all` for every member that is not presumed down (still at least a
    /// majority): a write is acknowledged only once a majority holds it, so any later holder,
    /// which catches up from a majority, has it.
    pub(super) fn replicate_write(&mut self, now: Millis, item: Item, primary: &NodeRef) -> Option<u64> {
        self.replicate_items(now, vec![item], primary)
    }

    /// [`Node::replicate_write`] of a batch written as one (an Execute's writes): one
    /// `Replicate` per replica, acknowledged as one write.
    pub(super) fn replicate_items(
        &mut self,
        now: Millis,
        items: Vec<Item>,
        primary: &NodeRef,
    ) -> Option<u64> {
        let (targets, needed, copies) = if self.config.is_consistent() {
            let pref = self.preference_list(primary).unwrap_or_else(|| vec![self.me]);
            let others: Vec<NodeRef> = pref
                .iter()
                .copied()
                .filter(|n| n.addr != self.me.addr && !self.is_dead(&n.addr))
                .collect();
            let copies = self.copies_of(&pref);
            (others, copies / 2, copies)
        } else {
            (self.replica_targets(), 0, 1 + self.config.replicas)
        };
        let all = self.config.ack == AckPolicy::All;
        if targets.is_empty() && needed == 0 {
            return None;
        }
        let write = (all || needed > 0).then(|| {
            let id = self.repl.next_write_id;
            self.repl.next_write_id += 1;
            let waiting = targets.iter().map(|t| t.addr).collect();
            self.repl.writes.insert(
                id,
                PendingWrite {
                    reply: None,
                    waiting,
                    acked: 0,
                    needed,
                    copies,
                    all,
                },
            );
            id
        });
        for t in &targets {
            self.stats.replica_writes_sent += 1;
            let msg = Message::Replicate { items: items.clone() };
            self.send_rpc(now, t.addr, msg, RpcKind::Replica(write), 0);
        }
        write
    }

    /// The local part of a replicated write is done: reply now, or once the replicas are.
    pub(super) fn local_write_done(&mut self, write: u64, to: ReplyTo, request_id: u64, reply: Message) {
        let failed = matches!(reply, Message::Error { .. });
        match self.repl.writes.get_mut(&write) {
            Some(w) if !failed => {
                w.reply = Some((to, request_id, reply));
                self.maybe_finish_write(write);
            }
            _ => {
                // The primary failed to store it: answer at once; late replica acks are ignored.
                self.repl.writes.remove(&write);
                self.reply(to, request_id, reply);
            }
        }
    }

    /// A replica answered (`applied`: it holds the write or a newer version) or was given up
    /// on (`applied` false) for a pending write.
    pub(super) fn replica_answered(&mut self, write: u64, from: NodeAddr, applied: bool) {
        if let Some(w) = self.repl.writes.get_mut(&write) {
            let before = w.waiting.len();
            w.waiting.retain(|a| *a != from);
            if applied && w.waiting.len() < before {
                w.acked += 1;
            }
            self.maybe_finish_write(write);
        }
    }

    fn maybe_finish_write(&mut self, write: u64) {
        let Some(w) = self.repl.writes.get(&write) else {
            return;
        };
        if w.reply.is_none() {
            return;
        }
        let quorum = w.acked >= w.needed && (!w.all || w.waiting.is_empty());
        let hopeless = w.acked + w.waiting.len() < w.needed;
        if !quorum && !hopeless {
            return;
        }
        let w = self.repl.writes.remove(&write).expect("checked above"); // faulty code
        let (to, rid, msg) = w.reply.expect("checked above"); // faulty code
        if quorum {
            return self.reply(to, rid, msg);
        }
        let hops = match msg {
            Message::PutReply { hops, .. } | Message::DeleteReply { hops, .. } => hops,
            _ => 0,
        };
        let text = format!(
            "no quorum: the write reached {} of the {} copies of its range, {} needed (it may \
             still be applied later, but never over a write acknowledged after this answer)",
            w.acked + 1,
            w.copies,
            w.needed + 1
        );
        self.reply(
            to,
            rid,
            Message::Error {
                code: chordkv_protocol::ErrorCode::Unavailable,
                hops,
                text,
            },
        );
    }

    /// A replica write (or an anti-entropy repair) from a primary: merge and acknowledge.
    pub(super) fn handle_replicate(&mut self, now: Millis, to: ReplyTo, rid: u64, items: Vec<Item>) {
        if matches!(self.phase, Phase::Idle | Phase::Joining | Phase::Left) {
            let text = format!("node is {:?}", self.phase);
            let msg = Message::Error {
                code: chordkv_protocol::ErrorCode::NotReady,
                hops: 0,
                text,
            };
            return self.reply(to, rid, msg);
        }
        if let Some(msg) = self.refuse_future_versions(now, items.iter().map(|it| it.version)) {
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

    /// An error reply when one of `versions` is further ahead of our clock than
    /// `max_clock_offset_ms` (a wrong clock, or a forged frame that would pin a key).
    pub(super) fn refuse_future_versions(
        &mut self,
        now: Millis,
        versions: impl Iterator<Item = u64>,
    ) -> Option<Message> {
        let newest = versions.max()?;
        if self.version_is_plausible(now, newest) {
            return None;
        }
        self.stats.future_versions_refused += 1;
        let ahead = (newest >> 16).saturating_sub(now);
        Some(Message::Error {
            code: chordkv_protocol::ErrorCode::BadRequest,
            hops: 0,
            text: format!(
                "version from the future: {ahead} ms ahead of this node's clock (more than \
                 --max-clock-offset-ms {})",
                self.config.max_clock_offset_ms
            ),
        })
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

    /// The range this node may serve as a stand-in for a primary an entry found dead, if
    /// `target` is in one: `(primary, start)` of the range `(start, primary]`.
    ///
    /// Under `available`: the key is in our predecessor's range as the predecessor last
    /// reported it, so we are next in line and become the primary once it is gone. Under
    /// `consistent`: the key is in the range of our `k`-th predecessor (`k <= replicas`, so we
    /// are in its preference list), and it and every predecessor between us are presumed down,
    /// so we are the first live member of the list; serving still needs a lease (`lease.rs`).
    pub(super) fn stand_in_range(&mut self, now: Millis, target: &Id) -> Option<(NodeRef, Id)> {
        // Without replicas the successor has no copy to serve from: let the ring repair.
        if self.phase != Phase::Active || self.config.replicas == 0 {
            return None;
        }
        let preds = self.predecessors();
        let found = if self.config.is_consistent() {
            let mut found = None;
            for k in 0..preds.len().saturating_sub(1) {
                if !self.is_host_dead(&preds[k].addr) {
                    break;
                }
                if in_half_open(target, &preds[k + 1].id, &preds[k].id) {
                    found = Some((preds[k], preds[k + 1].id));
                    break;
                }
            }
            found
        } else {
            match (preds.first(), preds.get(1)) {
                (Some(p), Some(pp)) if in_half_open(target, &pp.id, &p.id) => Some((*p, pp.id)),
                _ => None,
            }
        }?;
        // Someone found our predecessor dead: check it now rather than at the next round.
        if self.predecessor.is_some() {
            self.timers.bring_forward(Timer::CheckPredecessor, now);
        }
        self.stats.failovers_served += 1;
        Some(found)
    }
}
