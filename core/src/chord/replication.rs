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

/// Most items a held batch of replica writes carries (see [`ReplicaOutbox`]): one more is
/// sent at once.
pub(super) const REPLICA_BATCH_MAX_ITEMS: usize = 256;
/// Most key and value bytes a held batch carries before it is sent at once.
pub(super) const REPLICA_BATCH_MAX_BYTES: usize = 256 * 1024;

/// Replica writes held until the end of the driver's turn, one batch per replica.
///
/// A primary that stamps many writes in one turn of its driver (a pipeline of requests, the
/// writes a peer forwarded in one read) sends each replica one `Replicate` of all of them
/// instead of one per write: one frame, one store op (`PutMany`) and one acknowledgement per
/// replica and turn. A batch's acknowledgement counts for every write in it, as its failure
/// (an error, a timeout) does: each write is merged by version on its own, so a batch is
/// exactly its writes sent at once. Only a driver that ends its turns
/// ([`Host::end_turn`](super::host::Host::end_turn): the server, the simulator) turns holding
/// on ([`Node::hold_replica_writes`]); a tick sends what is held too. A batch is sent at once
/// when it reaches [`REPLICA_BATCH_MAX_ITEMS`] or [`REPLICA_BATCH_MAX_BYTES`].
#[derive(Debug, Default)]
pub(super) struct ReplicaOutbox {
    /// Whether writes are held for the end of the turn (else each is sent as it is made).
    pub hold: bool,
    pub batches: Vec<HeldBatch>,
}

/// The writes held for one replica.
#[derive(Debug)]
pub(super) struct HeldBatch {
    pub to: NodeAddr,
    pub items: Vec<Item>,
    /// The pending writes (`Replication::writes`) that wait for this replica's answer.
    pub writes: Vec<u64>,
    /// Key and value bytes of `items`.
    pub bytes: usize,
}

/// Replication and repair: writes waiting for replicas, anti-entropy rounds, and what this
/// node knows of the ranges it holds copies of.
#[derive(Debug, Default)]
pub(super) struct Replication {
    /// Client writes waiting for their replicas (`AckPolicy::All`).
    pub writes: OpTable<PendingWrite>,
    pub next_write_id: u64,
    /// Replica writes held for the end of the turn.
    pub outbox: ReplicaOutbox,
    /// The writes waiting for each `Replicate` batch in flight (`RpcKind::ReplicaBatch`).
    pub batch_writes: BTreeMap<u64, Vec<u64>>,
    pub next_batch_id: u64,
    /// Anti-entropy rounds in progress (one periodic round at a time, and lease catch-ups).
    pub syncs: BTreeMap<u64, SyncRound>,
    pub next_sync_id: u64,
    /// When this node last collected its own tombstones alone (`collect_own_tombstones`):
    /// at most once an anti-entropy interval, as a round would.
    pub own_collection_at: Option<Millis>,
    /// When this node last started its stand-in rounds (`start_stand_in_rounds`): at most once
    /// an anti-entropy interval, whatever the timer's period (it fires every stabilize period
    /// while the node's own round cannot start).
    pub stand_in_at: Option<Millis>,
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
            if self.repl.outbox.hold {
                self.hold_replica_write(now, t.addr, &items, write);
            } else {
                self.stats.replica_batches_sent += 1;
                let msg = Message::Replicate { items: items.clone() };
                self.send_rpc(now, t.addr, msg, RpcKind::Replica(write), 0);
            }
        }
        write
    }

    /// Holds replica writes for the end of the driver's turn from now on (see
    /// [`ReplicaOutbox`]); the driver then calls [`Node::flush_replica_writes`] at the end of
    /// every turn.
    pub fn hold_replica_writes(&mut self) {
        self.repl.outbox.hold = true;
    }

    /// Whether replica writes are held, waiting for [`Node::flush_replica_writes`].
    pub fn holds_replica_writes(&self) -> bool {
        !self.repl.outbox.batches.is_empty()
    }

    /// Sends the replica writes held this turn: one `Replicate` per replica.
    pub fn flush_replica_writes(&mut self, now: Millis) {
        for batch in std::mem::take(&mut self.repl.outbox.batches) {
            self.send_replica_batch(now, batch);
        }
    }

    /// Adds a write's items to the batch held for replica `to`; sends the batch once full. A
    /// write that would take the batch past [`REPLICA_BATCH_MAX_ITEMS`] or
    /// [`REPLICA_BATCH_MAX_BYTES`] sends the batch first, and a write past them alone (a large
    /// transaction) goes alone: a batch never makes a frame its writes would not make apart.
    fn hold_replica_write(&mut self, now: Millis, to: NodeAddr, items: &[Item], write: Option<u64>) {
        let bytes: usize = items
            .iter()
            .map(|it| it.key.len() + it.value.as_ref().map_or(0, |v| v.len()))
            .sum();
        let alone = |items: &[Item]| HeldBatch {
            to,
            items: items.to_vec(),
            writes: write.into_iter().collect(),
            bytes,
        };
        if items.len() >= REPLICA_BATCH_MAX_ITEMS || bytes >= REPLICA_BATCH_MAX_BYTES {
            return self.send_replica_batch(now, alone(items));
        }
        let batches = &mut self.repl.outbox.batches;
        let Some(at) = batches.iter().position(|b| b.to == to) else {
            batches.push(alone(items));
            return;
        };
        let batch = &batches[at];
        if batch.items.len() + items.len() > REPLICA_BATCH_MAX_ITEMS
            || batch.bytes + bytes > REPLICA_BATCH_MAX_BYTES
        {
            let full = batches.swap_remove(at);
            self.send_replica_batch(now, full);
            self.repl.outbox.batches.push(alone(items));
            return;
        }
        let batch = &mut batches[at];
        batch.items.extend_from_slice(items);
        batch.writes.extend(write);
        batch.bytes += bytes;
    }

    fn send_replica_batch(&mut self, now: Millis, batch: HeldBatch) {
        if self.is_dead(&batch.to) {
            // Found unreachable since the writes were held (`peer_unreachable` failed what was
            // in flight to it): their wait for it ends now, as a request to it would have.
            for write in batch.writes {
                self.replica_answered(write, batch.to, false);
            }
            return;
        }
        self.stats.replica_batches_sent += 1;
        let kind = match batch.writes[..] {
            [] => RpcKind::Replica(None),
            [write] => RpcKind::Replica(Some(write)),
            _ => {
                let id = self.repl.next_batch_id;
                self.repl.next_batch_id += 1;
                self.repl.batch_writes.insert(id, batch.writes);
                RpcKind::ReplicaBatch(id)
            }
        };
        let msg = Message::Replicate { items: batch.items };
        self.send_rpc(now, batch.to, msg, kind, 0);
    }

    /// A replica answered a batch (`applied`: it holds every write of it) or was given up on.
    pub(super) fn replica_batch_answered(&mut self, batch: u64, from: NodeAddr, applied: bool) {
        for write in self.repl.batch_writes.remove(&batch).unwrap_or_default() {
            self.replica_answered(write, from, applied);
        }
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use bytes::Bytes;
    use chordkv_protocol::{Frame, Id, Message, NodeAddr, NodeRef};

    use super::super::config::{AckPolicy, Config, PartitionPolicy};
    use super::super::node::{Node, Output, ReplyTo};
    use crate::store::{self, MemoryStore, Store};

    /// A primary of every key with two replicas on other hosts, holding its replica writes.
    fn primary() -> (Node, MemoryStore, [NodeRef; 2]) {
        let mut config = Config::with_stabilize_interval_ms(100);
        config.replicas = 2;
        config.ack = AckPolicy::All;
        config.partition_policy = PartitionPolicy::Available;
        let at = |id: Id, port: u16| NodeRef {
            id,
            addr: NodeAddr::host(SocketAddr::from(([127, 0, 0, 1], port))),
        };
        // Ids 1 and 2 for the replicas, the last id for us: we own (2, 2^160 - 1], every
        // key but a few in 2^159.
        let mut node = Node::new(at(Id([0xff; 20]), 7000), config, 0);
        node.create(0);
        let replicas = [at(Id::from_u64(1), 7001), at(Id::from_u64(2), 7002)];
        node.routing.set_successors(replicas, 3);
        node.predecessor = Some(replicas[1]);
        node.hold_replica_writes();
        (node, MemoryStore::new(), replicas)
    }

    /// A request the node sent: its id, where to, what.
    type Sent = (u64, NodeRef, Message);

    /// Runs the node's store ops; its sends and replies.
    fn run(node: &mut Node, store: &MemoryStore, now: u64) -> (Vec<Sent>, Vec<(ReplyTo, Message)>) {
        let (mut sends, mut replies) = (Vec::new(), Vec::new());
        while let Some(out) = node.poll_output() {
            match out {
                Output::Store { id, op, .. } => {
                    let result = store::execute(store as &dyn Store, op);
                    node.store_done(now, id, result);
                }
                Output::Send { to, frame } => {
                    sends.push((frame.request_id, NodeRef::from_addr(to.host), frame.message))
                }
                Output::Reply { to, frame } => replies.push((to, frame.message)),
                Output::Left => {}
            }
        }
        (sends, replies)
    }

    fn put(node: &mut Node, i: u64) {
        let message = Message::Put {
            key: Bytes::from(format!("k{i}")),
            value: Bytes::from(format!("v{i}")),
        };
        node.handle_request(10, ReplyTo(i), Frame::new(i, message));
    }

    /// The writes of a turn go to each replica as one `Replicate` when the turn ends (none
    /// before), and each client is answered once both replicas are: by an acknowledgement of
    /// the batch, or by its failure, which no longer waits for that replica (`--ack all`
    /// under `available`). No batch is left behind.
    #[test]
    fn a_turns_writes_go_to_each_replica_as_one_batch_answered_for_all() {
        for fail_one in [false, true] {
            let (mut node, store, replicas) = primary();
            for i in 1..=3 {
                put(&mut node, i);
            }
            let (sends, replies) = run(&mut node, &store, 10);
            assert!(sends.is_empty() && replies.is_empty(), "{sends:?} {replies:?}");
            assert!(node.holds_replica_writes());

            node.flush_replica_writes(10);
            let (sends, replies) = run(&mut node, &store, 10);
            assert!(replies.is_empty(), "{replies:?}");
            assert_eq!(sends.len(), 2, "one batch per replica: {sends:?}");
            for (r, (_, to, message)) in replicas.iter().zip(&sends) {
                assert_eq!(to.addr, r.addr);
                let Message::Replicate { items } = message else {
                    panic!("{message:?}")
                };
                let keys: Vec<&[u8]> = items.iter().map(|it| &it.key[..]).collect();
                assert_eq!(keys, [b"k1", b"k2", b"k3"]);
            }
            assert_eq!(node.stats.replica_batches_sent, 2);
            assert_eq!(node.stats.replica_writes_sent, 6);

            let (first, second) = (&sends[0], &sends[1]);
            let ack = |rid| Frame::new(rid, Message::ReplicateAck { applied: 3 });
            node.handle_reply(11, first.1.addr.host, ack(first.0));
            let (_, replies) = run(&mut node, &store, 11);
            assert!(
                replies.is_empty(),
                "still waiting for the second replica: {replies:?}"
            );
            if fail_one {
                node.send_failed(12, second.0);
            } else {
                node.handle_reply(12, second.1.addr.host, ack(second.0));
            }
            let (_, mut replies) = run(&mut node, &store, 12);
            replies.sort_by_key(|(to, _)| *to);
            let answered: Vec<u64> = replies
                .iter()
                .map(|(to, m)| {
                    assert!(matches!(m, Message::PutReply { .. }), "{m:?}");
                    to.0
                })
                .collect();
            assert_eq!(answered, [1, 2, 3], "fail_one {fail_one}");
            assert!(node.repl.batch_writes.is_empty() && node.repl.writes.is_empty());
        }
    }

    /// A write that would take the held batch past its bytes goes in a batch of its own after
    /// it; a write past the limit alone goes at once, alone. Nothing held for a replica found
    /// unreachable is sent to it: its writes stop waiting for it at the end of the turn.
    #[test]
    fn large_writes_never_make_a_batch_larger_than_the_limit_and_unreachable_replicas_get_none() {
        let (mut node, store, replicas) = primary();
        let big = |i: u64, len: usize| Message::Put {
            key: Bytes::from(format!("k{i}")),
            value: Bytes::from(vec![b'v'; len]),
        };
        // 4 bytes, then 2 + (limit - 5): one byte past the limit together.
        put(&mut node, 1);
        node.handle_request(
            10,
            ReplyTo(2),
            Frame::new(2, big(2, super::REPLICA_BATCH_MAX_BYTES - 5)),
        );
        let (sends, _) = run(&mut node, &store, 10);
        let sizes = |sends: &[Sent]| -> Vec<usize> {
            sends
                .iter()
                .filter_map(|(_, _, m)| match m {
                    Message::Replicate { items } => Some(items.len()),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            sizes(&sends),
            [1, 1],
            "the small write's batch, sent before the big one"
        );
        node.handle_request(
            10,
            ReplyTo(3),
            Frame::new(3, big(3, super::REPLICA_BATCH_MAX_BYTES)),
        );
        let (sends, _) = run(&mut node, &store, 10);
        assert_eq!(sizes(&sends), [1, 1], "past the limit alone: sent at once");
        // Still held: the second write, for both replicas. One of them is found unreachable.
        node.peer_unreachable(11, replicas[0].addr.host);
        node.flush_replica_writes(11);
        let (sends, _) = run(&mut node, &store, 11);
        assert!(
            sends.iter().all(|(_, to, _)| to.addr == replicas[1].addr),
            "{sends:?}"
        );
        assert_eq!(sizes(&sends), [1]);
    }

    /// A batch is sent at once when the next write would take it past its limit, and a tick
    /// sends what is held.
    #[test]
    fn a_full_batch_goes_at_once_and_a_tick_sends_the_rest() {
        let (mut node, store, _) = primary();
        for i in 0..super::REPLICA_BATCH_MAX_ITEMS as u64 + 1 {
            put(&mut node, i);
        }
        let (sends, _) = run(&mut node, &store, 10);
        assert_eq!(sends.len(), 2, "the full batches: {sends:?}");
        for (_, _, m) in &sends {
            assert!(
                matches!(m, Message::Replicate { items } if items.len() == super::REPLICA_BATCH_MAX_ITEMS)
            );
        }
        node.tick(20);
        let (sends, _) = run(&mut node, &store, 20);
        let rest: Vec<usize> = sends
            .iter()
            .filter_map(|(_, _, m)| match m {
                Message::Replicate { items } => Some(items.len()),
                _ => None,
            })
            .collect();
        assert_eq!(rest, [1, 1]);
        assert!(!node.holds_replica_writes());
    }
}
