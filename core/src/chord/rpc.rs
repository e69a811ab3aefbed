//! Requests this node sent and waits on: each has a deadline, and a reply, a timeout or an
//! unreachable peer ends it exactly once (a late or duplicated reply finds no entry and is
//! dropped).

use super::op_table::OpTable;
use chordkv_protocol::NodeAddr;
use std::collections::{BTreeSet, VecDeque};

use chordkv_protocol::{Frame, Id, Message};

use super::maintenance::LookupPurpose;
use super::node::{Millis, Node, Output, ReplyTo};
use super::placement::Route;
use super::timer::Timer;

/// A request we sent and are waiting on.
#[derive(Clone, Debug)]
pub(super) struct Rpc {
    pub to: NodeAddr,
    pub deadline: Millis,
    pub kind: RpcKind,
}

/// What a request we sent is for: where its reply (or its failure) goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RpcKind {
    /// A `FIND_SUCCESSOR` step of a maintenance lookup.
    Lookup(u64),
    /// A step of a client operation: a lookup or the operation sent to the owner.
    Op(u64),
    Stabilize,
    Notify,
    CheckPredecessor,
    Transfer(u64),
    Leaving,
    /// Best-effort notice to the predecessor that we are leaving.
    LeavingHint,
    /// A replica write; `Some(write)` when a client's reply waits for it.
    Replica(Option<u64>),
    /// Replica writes held for the end of a turn and sent as one `Replicate`, of which more
    /// than one wait for it: their ids are in `Replication::batch_writes` under this id.
    ReplicaBatch(u64),
    /// Anti-entropy exchanges of a round.
    SyncDigests(u64),
    SyncKeys(u64),
    SyncPush(u64),
    Collect,
    /// A page of the successor's membership table (one-hop join).
    Members,
    /// A membership broadcast to a child of the tree (see `membership.rs`).
    MemberEvents(u64),
    /// A lease request of a round (`lease.rs`): the range's primary and the round.
    Lease(Id, u64),
    /// A ping to a member presumed down, or to a node that went away (`consistent` keeps
    /// such members in the ring; ring merging probes nodes lost in a partition).
    Probe,
    /// A step of a walk over the ring (`ring_command.rs`).
    RangeCommand(u64),
}

impl RpcKind {
    /// Whether this request is routing maintenance (counted in `maintenance_sent`): keeping
    /// the ring, fingers and membership current, as opposed to client operations and data.
    pub fn is_maintenance(self) -> bool {
        matches!(
            self,
            RpcKind::Lookup(_)
                | RpcKind::Stabilize
                | RpcKind::Notify
                | RpcKind::CheckPredecessor
                | RpcKind::Members
                | RpcKind::MemberEvents(_)
                | RpcKind::Lease(..)
                | RpcKind::Probe
        )
    }
}

/// The outstanding requests, by request id and by deadline.
#[derive(Debug)]
pub(super) struct Rpcs {
    next_id: u64,
    pending: OpTable<Rpc>,
    deadlines: Deadlines,
}

impl Rpcs {
    pub fn new() -> Rpcs {
        Rpcs {
            next_id: 1,
            pending: OpTable::new(),
            deadlines: Deadlines::default(),
        }
    }

    /// Records a request to `to` given up on at `deadline`; returns its request id.
    pub fn start(&mut self, to: NodeAddr, kind: RpcKind, deadline: Millis) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(id, Rpc { to, deadline, kind });
        let pending = &self.pending;
        self.deadlines
            .insert(deadline, id, pending.len(), |id| pending.get(&id).is_some());
        id
    }

    /// Ends the request `id` on its reply from the host `from`; `None` (and the request stays
    /// outstanding, if it is) when it already ended or `from` is not the host we asked. The
    /// host's vnode that answered is the one asked: a reply travels back on the connection
    /// and under the request id of its request (the driver routes it to us by that id).
    pub fn answered(&mut self, id: u64, from: std::net::SocketAddr) -> Option<Rpc> {
        if self.pending.get(&id)?.to.host != from {
            return None;
        }
        self.finish(id)
    }

    /// Ends the request `id` (answered or failed); `None` if it already ended.
    pub fn finish(&mut self, id: u64) -> Option<Rpc> {
        let rpc = self.pending.remove(&id)?;
        let pending = &self.pending;
        self.deadlines
            .remove(rpc.deadline, id, |id| pending.get(&id).is_some());
        Some(rpc)
    }

    /// Ends and returns one request whose deadline is at or before `now` (the earliest: by
    /// deadline, then by id).
    pub fn pop_expired(&mut self, now: Millis) -> Option<Rpc> {
        let (deadline, id) = self.deadlines.first()?;
        if deadline > now {
            return None;
        }
        self.finish(id)
    }

    /// Where the outstanding requests go (with repeats).
    pub fn targets(&self) -> impl Iterator<Item = NodeAddr> + '_ {
        self.pending.values().map(|r| r.to)
    }

    /// The ids of the requests outstanding to `addr`, in id order.
    pub fn to_peer(&self, addr: NodeAddr) -> Vec<u64> {
        self.pending
            .iter()
            .filter(|(_, r)| r.to == addr)
            .map(|(id, _)| id)
            .collect()
    }

    /// Whether a request of this kind is outstanding.
    pub fn any(&self, kind: RpcKind) -> bool {
        self.pending.values().any(|r| r.kind == kind)
    }

    /// Whether a request of this kind is outstanding to `addr`.
    pub fn any_to(&self, addr: NodeAddr, kind: RpcKind) -> bool {
        self.pending.values().any(|r| r.to == addr && r.kind == kind)
    }

    /// The earliest deadline of an outstanding request.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.deadlines.first().map(|(t, _)| t)
    }
}

/// The deadlines of the outstanding requests, to find the earliest: the order of
/// `(deadline, id)` pairs, as a `BTreeSet` of them keeps it, without a B-tree insertion and
/// removal per request (a few percent of a node's CPU when it forwards a pipeline's requests).
///
/// Requests mostly share one timeout and ids grow, so a request's deadline is mostly at or
/// after the last one's: those pairs go to the back of a queue (`in_order`), which stays
/// sorted; the few that would not (a shorter timeout, a clock that was behind) go to a set
/// (`out_of_order`). A request that ends before the one at the front leaves its pair in the
/// queue: the front is always an outstanding request's (each end at the front drops the ended
/// pairs behind it), and once ended pairs could make up more than half the queue (it is
/// longer than twice the outstanding requests, plus [`Deadlines::SWEEP_SLACK`]) they are
/// swept out: memory stays proportional to the requests in flight, at O(1) amortised per
/// request.
#[derive(Debug, Default)]
struct Deadlines {
    in_order: VecDeque<(Millis, u64)>,
    out_of_order: BTreeSet<(Millis, u64)>,
}

impl Deadlines {
    const SWEEP_SLACK: usize = 256;

    /// Adds request `id`, due at `deadline`; `outstanding` requests are in flight (this one
    /// included), `live(id)` tells whether one still is.
    fn insert(&mut self, deadline: Millis, id: u64, outstanding: usize, live: impl Fn(u64) -> bool) {
        match self.in_order.back() {
            Some(&last) if (deadline, id) < last => {
                self.out_of_order.insert((deadline, id));
            }
            _ => self.in_order.push_back((deadline, id)),
        }
        if self.in_order.len() > 2 * outstanding + Self::SWEEP_SLACK {
            self.in_order.retain(|&(_, id)| live(id));
        }
    }

    /// Request `id`, due at `deadline`, ended (`live` no longer counts it).
    fn remove(&mut self, deadline: Millis, id: u64, live: impl Fn(u64) -> bool) {
        if !self.out_of_order.is_empty() && self.out_of_order.remove(&(deadline, id)) {
            return;
        }
        if self.in_order.front().is_some_and(|&(_, front)| front == id) {
            self.in_order.pop_front();
            while self.in_order.front().is_some_and(|&(_, front)| !live(front)) {
                self.in_order.pop_front();
            }
        }
    }

    /// The earliest `(deadline, id)` of an outstanding request.
    fn first(&self) -> Option<(Millis, u64)> {
        let queued = self.in_order.front().copied();
        match (queued, self.out_of_order.first().copied()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Node {
    /// Sends `msg` to `to` as a request tracked with the RPC timeout. Returns the request id.
    pub(super) fn send_rpc(
        &mut self,
        now: Millis,
        to: NodeAddr,
        msg: Message,
        kind: RpcKind,
        flags: u16,
    ) -> u64 {
        let timeout = self.config.rpc_timeout_ms;
        self.send_request(now, to, msg, kind, flags, timeout, 0)
    }

    /// Sends `msg` to `to` as a request given up on after `timeout_ms`, carrying the deadline
    /// `frame_deadline` (0: none) after which the receiver must not start it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_request(
        &mut self,
        now: Millis,
        to: NodeAddr,
        msg: Message,
        kind: RpcKind,
        flags: u16,
        timeout_ms: u64,
        frame_deadline: Millis,
    ) -> u64 {
        let timeout_ms = timeout_ms.saturating_add(size_allowance_ms(&msg));
        let id = self.rpcs.start(to, kind, now + timeout_ms.max(1));
        let frame = Frame {
            request_id: id,
            flags,
            deadline_ms: frame_deadline,
            // Vnode 0 is the host's default: a node without virtual nodes sees no change.
            vnode: (to.vnode != 0).then_some(to.vnode),
            message: msg,
        };
        self.stats.messages_sent += 1;
        if kind.is_maintenance() {
            self.stats.maintenance_sent += 1;
        }
        self.out.push_back(Output::Send { to, frame });
        id
    }

    pub(super) fn reply(&mut self, to: ReplyTo, request_id: u64, msg: Message) {
        if to == super::scan::INTERNAL {
            // One of the node's own operations (a scan step) is done.
            let now = self.last_now;
            return self.on_internal_reply(now, request_id, msg);
        }
        self.stats.messages_sent += 1;
        self.out.push_back(Output::Reply {
            to,
            frame: Frame::new(request_id, msg),
        });
    }

    pub(super) fn expire_rpcs(&mut self, now: Millis) {
        while let Some(rpc) = self.rpcs.pop_expired(now) {
            self.stats.rpc_timeouts += 1;
            self.mark_dead(now, rpc.to);
            self.on_rpc_failed(now, rpc);
        }
    }

    /// A request got no answer (timeout or unreachable peer); the peer is already marked dead.
    pub(super) fn on_rpc_failed(&mut self, now: Millis, rpc: Rpc) {
        match rpc.kind {
            RpcKind::Lookup(id) => {
                let Some(lookup) = self.lookups.pending.get(&id).cloned() else {
                    return;
                };
                // Route around the dead peer with our own table (the bootstrap for a join).
                if now >= lookup.deadline {
                    self.fail_lookup(now, id);
                    return;
                }
                match (lookup.purpose, self.route(&lookup.target)) {
                    (LookupPurpose::Join | LookupPurpose::Rejoin | LookupPurpose::Merge(_), _) => {
                        // A step a peer named: ask that peer for the node before it. The
                        // first step (the bootstrap) or a detour that failed: the lookup fails.
                        match lookup.asking {
                            Some((node, via)) if node.addr == rpc.to => {
                                self.lookup_detour(now, id, via, node)
                            }
                            _ => self.fail_lookup(now, id),
                        }
                    }
                    (_, Route::Closer(c)) => {
                        let msg = Message::FindSuccessor { id: lookup.target };
                        self.send_rpc(now, c.addr, msg, RpcKind::Lookup(id), 0);
                    }
                    (_, Route::Found(list)) => self.finish_lookup(now, id, list),
                    (_, Route::Local) => self.finish_lookup(now, id, vec![self.me]),
                    (_, Route::Unknown) => self.fail_lookup(now, id),
                }
            }
            RpcKind::Op(op) => self.on_op_failed(now, op, rpc.to),
            RpcKind::Stabilize => {
                // The successor is gone; the next one in the list takes over at once.
                self.timers.set(Timer::Stabilize, now);
            }
            RpcKind::MemberEvents(b) => self.broadcast_failed(now, b),
            RpcKind::Lease(primary, round) => self.on_lease_reply(now, primary, round, rpc.to, None),
            RpcKind::Probe => {}
            RpcKind::RangeCommand(walk) => self.on_range_command_failed(walk, rpc.to),
            RpcKind::LeavingHint => self.on_leave_hint_failed(now, rpc.to),
            RpcKind::Notify | RpcKind::CheckPredecessor | RpcKind::Collect | RpcKind::Members => {}
            RpcKind::Replica(write) => {
                if let Some(w) = write {
                    self.replica_answered(w, rpc.to, false);
                }
            }
            RpcKind::ReplicaBatch(batch) => self.replica_batch_answered(batch, rpc.to, false),
            RpcKind::SyncDigests(round) | RpcKind::SyncKeys(round) | RpcKind::SyncPush(round) => {
                self.sync_rpc_failed(now, round, Some(rpc.to))
            }
            RpcKind::Transfer(t) => self.on_transfer_failed(now, t),
            RpcKind::Leaving => self.on_leaving_failed(now),
        }
    }
}

/// Bytes per millisecond a large request is allowed to take on top of its timeout: 16 KiB, so
/// 16 MiB/s, far below loopback or a LAN, while a request of ordinary size gets under a
/// millisecond more.
const ALLOWED_BYTES_PER_MS: usize = 16 * 1024;

/// Time allowed, beyond the usual timeout, for the values a request carries to be copied,
/// sent and stored (a 512 MiB value gets 32 s more): a large PUT, a replica's copy of it, or a
/// handoff batch is not given up on for its size alone.
pub(super) fn size_allowance_ms(msg: &Message) -> u64 {
    let values = |items: &[chordkv_protocol::Item]| -> usize {
        items
            .iter()
            .map(|it| it.value.as_ref().map_or(0, |v| v.len()))
            .sum()
    };
    let bytes = match msg {
        Message::Put { value, .. } => value.len(),
        Message::Replicate { items } | Message::Transfer { items, .. } => values(items),
        Message::Execute { commands, .. } => commands.iter().flatten().map(|a| a.len()).sum(),
        _ => 0,
    };
    (bytes / ALLOWED_BYTES_PER_MS) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// Random starts (timeouts mostly equal, some shorter, some longer, and a clock that
    /// sometimes steps back), ends in any order and expiries give every request exactly the
    /// deadline order of a `BTreeSet` of `(deadline, id)`: the same next deadline after each
    /// step, the same expired requests in the same order; and the queue stays within its
    /// bound of the requests in flight.
    #[test]
    fn deadlines_come_in_the_order_of_a_set_of_them() {
        let to = NodeAddr::new("127.0.0.1:7000".parse().unwrap(), 0);
        for seed in 0..20 {
            let mut rng = crate::rng::Rng::new(seed);
            let mut rpcs = Rpcs::new();
            let mut model: BTreeSet<(Millis, u64)> = BTreeSet::new();
            let mut now: Millis = 1_000;
            let (mut out_of_order, mut ended_kept) = (false, false);
            for step in 0..20_000 {
                match rng.below(10) {
                    0..=4 => {
                        let timeout = match rng.below(20) {
                            0 => rng.range(1, 500),
                            1 => rng.range(1_000, 5_000),
                            _ => 1_000,
                        };
                        let at = if rng.chance(0.05) {
                            now.saturating_sub(rng.below(50))
                        } else {
                            now
                        };
                        let id = rpcs.start(to, RpcKind::Probe, at + timeout);
                        model.insert((at + timeout, id));
                    }
                    5..=7 => {
                        // End one in flight, if any: the one at a random place in id order.
                        if let Some(&(deadline, id)) =
                            model.iter().nth(rng.below(model.len() as u64 + 1) as usize)
                        {
                            let rpc = rpcs.finish(id).expect("an outstanding request ends");
                            assert_eq!(rpc.deadline, deadline);
                            model.remove(&(deadline, id));
                        }
                    }
                    _ => {
                        now += rng.below(300);
                        while let Some(rpc) = rpcs.pop_expired(now) {
                            let (deadline, _) = model.pop_first().expect("the model expires one too");
                            assert_eq!(rpc.deadline, deadline, "seed {seed} step {step}");
                        }
                        assert!(
                            model.first().is_none_or(|&(d, _)| d > now),
                            "seed {seed} step {step}"
                        );
                    }
                }
                assert_eq!(
                    rpcs.next_deadline(),
                    model.first().map(|&(d, _)| d),
                    "seed {seed} step {step}"
                );
                assert_eq!(
                    rpcs.deadlines.first(),
                    model.first().copied(),
                    "seed {seed} step {step}"
                );
                assert!(rpcs.deadlines.in_order.len() <= 2 * model.len() + Deadlines::SWEEP_SLACK + 1);
                out_of_order |= !rpcs.deadlines.out_of_order.is_empty();
                ended_kept |= rpcs.deadlines.in_order.len() > model.len() + 10;
            }
            assert!(out_of_order && ended_kept, "seed {seed}: both paths taken");
        }
    }

    /// A 512 MiB value gets 32 s on top of its timeout, a replica's copy of it as much, and a
    /// request of ordinary size nothing.
    #[test]
    fn large_requests_get_time_for_their_bytes() {
        let big = Bytes::from(vec![0u8; 512 << 20]);
        let put = |value: Bytes| Message::Put {
            key: Bytes::from_static(b"k"),
            value,
        };
        assert_eq!(size_allowance_ms(&put(big.clone())), 32_768);
        let item = chordkv_protocol::Item {
            key: Bytes::from_static(b"k"),
            version: 1,
            value: Some(big),
            expires_at: 0,
        };
        assert_eq!(
            size_allowance_ms(&Message::Replicate { items: vec![item] }),
            32_768
        );
        assert_eq!(size_allowance_ms(&put(Bytes::from_static(&[7; 100]))), 0);
        let get = Message::Get {
            key: Bytes::from_static(b"k"),
        };
        assert_eq!(size_allowance_ms(&get), 0);
    }
}
