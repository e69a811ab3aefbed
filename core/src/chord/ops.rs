//! Client operations: serving the keys this node owns, and coordinating the rest.
//!
//! A request without `FLAG_DIRECT` makes this node its *entry*: it routes the request
//! iteratively (see the module docs of [`super`]) and answers the client with the owner's
//! reply and the hop count. A request with `FLAG_DIRECT` is served if this node owns the key,
//! held if the key's range is still being transferred here, and otherwise answered with a
//! `REDIRECT` naming the owner (exact) or a node closer to it.

use super::op_table::OpTable;
use super::seen_writes::SeenWrites;
use chordkv_protocol::limits::MAX_CLIENT_TIMEOUT_MS;
use std::collections::BTreeSet;

use chordkv_protocol::NodeAddr;
use chordkv_protocol::{
    ErrorCode, Frame, Id, Item, Lookup, Message, NodeRef, FLAG_DIRECT, FLAG_FAILOVER, FLAG_REPLICA_READ,
};

use super::config::ReadFrom;

use super::execute::HeldWrite;
use super::node::{Millis, Node, Phase, ReplyTo};
use super::placement::Route;
use super::rpc::RpcKind;
use super::store_wait::{ServeKind, StoreWait};
use crate::store::{Entry, StoreError, StoreOp, StoreOutcome};

/// Retries after a failed hop before the operation fails with `Unavailable`.
const MAX_OP_ATTEMPTS: u32 = 12;

/// An operation this node coordinates as the entry.
#[derive(Clone, Debug)]
pub(super) struct ClientOp {
    pub reply_to: ReplyTo,
    pub request_id: u64,
    pub message: Message,
    pub target: Id,
    pub hops: u16,
    pub deadline: Millis,
    pub attempts: u32,
    /// Whether the location cache was consulted (hits and misses count once per operation).
    pub cache_checked: bool,
    /// Whether the operation is on its way to an owner the cache named.
    pub via_cache: bool,
    /// The node the current lookup step asks, and the node that named it (none when it came
    /// from our own table): if the step fails, we ask that node for a way around it.
    pub asking: Option<NodeRef>,
    pub named_by: Option<NodeAddr>,
    /// Whether the step in flight is a detour around a dead node (see `send_detour`).
    pub detour: bool,
    /// Whether this attempt has taken its one detour. A second dead node in the same attempt
    /// means the tables around it are stale: the attempt ends and the next one starts after a
    /// pause, when stabilize has had time to repair them, instead of spending the hop budget
    /// on detours that lead back into the dead nodes.
    pub detoured: bool,
    /// Hops of the current attempt. An attempt that reaches `max_hops` (a routing loop through
    /// stale tables) ends like one that meets a dead node: the next starts after a pause.
    /// `hops` counts every attempt's, for the reply.
    pub attempt_hops: u16,
    /// The nodes this attempt's lookup steps asked: asking one again is a loop through
    /// disagreeing tables, which ends the attempt at once.
    pub asked: Vec<NodeAddr>,
    /// The last error an owner answered (retried), named in the final error if it fails.
    pub last_error: Option<String>,
    /// Whether the hop in flight carries the operation itself to an owner (not a lookup step).
    pub at_owner: bool,
    /// Whether a hop that carried the operation itself to an owner is unanswered (in flight,
    /// or given up on): a write that fails after that may have been applied, or may still be
    /// (see [`WRITE_OUTCOME_UNKNOWN`]). An owner's answer, even a refusal, tells the hop's
    /// outcome.
    pub owner_outcome_unknown: bool,
    /// Whether the hop in flight carries the operation to an owner and is unanswered.
    pub awaiting_owner: bool,
}

impl ClientOp {
    /// A new operation for `message`, placed at `target`, to be answered to `reply_to` with
    /// `request_id` by `deadline`.
    pub fn new(
        reply_to: ReplyTo,
        request_id: u64,
        message: Message,
        target: Id,
        deadline: Millis,
    ) -> ClientOp {
        ClientOp {
            reply_to,
            request_id,
            message,
            target,
            hops: 0,
            deadline,
            attempts: 0,
            cache_checked: false,
            via_cache: false,
            asking: None,
            named_by: None,
            detour: false,
            detoured: false,
            attempt_hops: 0,
            asked: Vec::new(),
            last_error: None,
            at_owner: false,
            owner_outcome_unknown: false,
            awaiting_owner: false,
        }
    }
}

/// How an operation reached the node that serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Delivery {
    /// Over a connection (a peer's hop, a client's direct request): the network may deliver
    /// it twice, so a write is checked against the write hops served (`first_delivery`).
    Network,
    /// An operation this node coordinates, handed to `serve` in memory exactly once: nothing
    /// to check, and nothing to remember until its deadline (at 100,000 writes a second, that
    /// memory was tens of bytes per write for the length of a deadline).
    Local,
}

/// Client operations this node coordinates, and the write hops it has served.
#[derive(Debug, Default)]
pub(super) struct ClientOps {
    pub ops: OpTable<ClientOp>,
    pub next_id: u64,
    /// Ops waiting to be retried: (when, op id).
    pub retries: BTreeSet<(Millis, u64)>,
    /// Write hops served, until their deadline: a second delivery of one is dropped (see
    /// `first_delivery`).
    pub seen_writes: SeenWrites,
}

/// A client operation's key as the host placed it among its vnodes, handed to the vnode it
/// chose: the key's id ([`Message::placement`], so SHA-1 runs once a request) and `served`:
/// the host found in the same call that the vnode [`Node::serves`] it, so the vnode does not
/// ask again before serving it at once (false: not asked, as for a host of one vnode, or
/// not served).
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyPlacement {
    pub id: Id,
    pub served: bool,
}

impl Node {
    /// A client operation; `target`: its placement when the caller has computed it already
    /// (the host, to choose the vnode).
    pub(super) fn handle_client_op(
        &mut self,
        now: Millis,
        reply_to: ReplyTo,
        frame: Frame,
        target: Option<KeyPlacement>,
    ) {
        if let Some(text) = self.over_client_limits(&frame) {
            let error = Message::Error {
                code: ErrorCode::TooLarge,
                hops: 0,
                text,
            };
            return self.reply(reply_to, frame.request_id, error);
        }
        self.dispatch_client_op(now, reply_to, frame, 0, target);
    }

    /// Why a client's request is refused before anything is done with it: a PUT over the
    /// node's `--max-value-bytes`, or an Execute (a transaction) that one frame cannot carry to
    /// the owner (its queued commands together over [`chordkv_protocol::MAX_FRAME_BYTES`]).
    fn over_client_limits(&self, frame: &Frame) -> Option<String> {
        match &frame.message {
            Message::Put { value, .. } if value.len() > self.config.max_value_bytes => Some(format!(
                "value of {} bytes is over the node's maximum of {} bytes (--max-value-bytes)",
                value.len(),
                self.config.max_value_bytes
            )),
            Message::Execute { .. } => match frame.encoded_len() {
                Ok(_) => None,
                Err(e) => Some(format!(
                    "transaction too large for one frame, nothing applied: {e}"
                )),
            },
            _ => None,
        }
    }

    /// Serves, holds, redirects or starts coordinating a client operation that has already
    /// taken `hops` hops (non-zero when it was held and is being released); `target` as for
    /// [`Node::handle_client_op`].
    pub(super) fn dispatch_client_op(
        &mut self,
        now: Millis,
        reply_to: ReplyTo,
        frame: Frame,
        hops: u16,
        target: Option<KeyPlacement>,
    ) {
        let rid = frame.request_id;
        let direct = frame.is_direct();
        let deadline = frame.deadline_ms;
        debug_assert!(target.is_none_or(|t| Some(t.id) == frame.message.placement()));
        debug_assert!(target.is_none_or(|t| !t.served || self.serves(&t.id)));
        let served = target.is_some_and(|t| t.served);
        let Some(target) = target.map(|t| t.id).or_else(|| frame.message.placement()) else {
            return;
        };
        match self.phase {
            Phase::Idle | Phase::Joining => {
                let text = "node has not joined a ring yet".to_string();
                return self.reply(
                    reply_to,
                    rid,
                    Message::Error {
                        code: ErrorCode::NotReady,
                        hops,
                        text,
                    },
                );
            }
            Phase::Left => {
                let text = "node has left the ring".to_string();
                return self.reply(
                    reply_to,
                    rid,
                    Message::Error {
                        code: ErrorCode::ShuttingDown,
                        hops,
                        text,
                    },
                );
            }
            _ => {}
        }
        if self.receiving(&target) && (direct || self.owns(&target)) {
            return self.hold(now, reply_to, frame, hops);
        }
        let replica_read = if direct {
            frame.is_replica_read()
        } else {
            self.config.read_from == ReadFrom::Replicas
        };
        if replica_read && matches!(frame.message, Message::Get { .. }) && self.may_read_copy(&target) {
            return self.serve_copy_read(reply_to, rid, hops, frame.message, target);
        }
        if direct {
            let range = if self.owns(&target) {
                Some(self.own_range())
            } else if frame.is_failover() {
                self.stand_in_range(now, &target)
            } else {
                None
            };
            if let Some(range) = range {
                let message = frame.message;
                return self.serve(
                    now,
                    reply_to,
                    rid,
                    hops,
                    message,
                    target,
                    deadline,
                    range,
                    Delivery::Network,
                    None,
                );
            }
            self.stats.redirects_sent += 1;
            let msg = match self.route(&target) {
                Route::Found(list) => match self.first_live(&list) {
                    Some(node) => Message::Redirect {
                        hops,
                        node,
                        exact: true,
                    },
                    None => unavailable(hops, "no live owner known"),
                },
                Route::Closer(node) => Message::Redirect {
                    hops,
                    node,
                    exact: false,
                },
                Route::Local | Route::Unknown => unavailable(hops, "node is not serving this key"),
            };
            return self.reply(reply_to, rid, msg);
        }
        // A client that gives up at its deadline must never see the write applied after it:
        // every hop carries the deadline, and owners refuse to start past it.
        let mut op_deadline =
            now + self.config.request_timeout_ms + super::rpc::size_allowance_ms(&frame.message);
        if deadline != 0 {
            op_deadline = op_deadline.min(deadline);
        }
        let id = self.client.next_id;
        self.client.next_id += 1;
        self.stats.ops_coordinated += 1;
        let at_once = if now < op_deadline {
            self.serves_at_once(now, &target, served)
        } else {
            None
        };
        if let Some(fence) = at_once {
            // The common case of a key whose range this node holds with its lease: served
            // now, exactly as `drive_op` and `serve_coordinated` would serve the operation,
            // without recording it (nothing can be retried or answered late).
            let range = self.own_range();
            let message = frame.message;
            return self.serve(
                now,
                reply_to,
                rid,
                hops,
                message,
                target,
                op_deadline,
                range,
                Delivery::Local,
                Some(fence),
            );
        }
        let mut op = ClientOp::new(reply_to, rid, frame.message, target, op_deadline);
        op.hops = hops;
        self.client.ops.insert(id, op);
        self.drive_op(now, id);
    }

    /// Whether [`Node::drive_op`] would serve a new operation on `target` at once: we own it
    /// (`route` answers `Local`, which is [`Node::serves`]: `served` when the caller found
    /// that already), no transfer into our range holds it, and under `consistent` our lease
    /// on our range is valid. `Some(fence)`: yes, with the lease's fence (0 under
    /// `available`), which [`Node::serve`] then need not look up again.
    fn serves_at_once(&self, now: Millis, target: &Id, served: bool) -> Option<Millis> {
        if !(served || self.routes_locally(target)) || self.receiving(target) {
            return None;
        }
        if self.config.is_consistent() {
            self.leases.valid_fence(&self.me.id, now)
        } else {
            Some(0)
        }
    }

    /// [`Node::drive_op`] for an operation the node starts itself (a scan step).
    pub(super) fn drive_op_now(&mut self, now: Millis, id: u64) {
        self.stats.ops_coordinated += 1;
        self.drive_op(now, id);
    }

    /// Takes the next routing step of a coordinated operation from this node's own tables.
    fn drive_op(&mut self, now: Millis, id: u64) {
        let Some(op) = self.client.ops.get(&id) else {
            return;
        };
        if now >= op.deadline {
            return self.fail_op(
                id,
                ErrorCode::Timeout,
                &format!("request deadline passed ({NOT_STARTED_AFTER})"),
            );
        }
        let target = op.target;
        if self.receiving(&target) && self.owns(&target) {
            let op = self.client.ops.remove(&id).expect("op present"); // faulty code
            let frame = Frame::new(op.request_id, op.message).with_deadline(op.deadline);
            return self.hold(now, op.reply_to, frame, op.hops);
        }
        if self.config.read_from != ReadFrom::Replicas {
            // The common case of a ring this node knows: the owner is in the successor list.
            // Pick it in place (what `route` would list first), without copying the list.
            if let Some(i) = self.successor_arc(&target) {
                if let Some((node, failover)) = self.pick_owner(&self.routing.successors()[i..], 0) {
                    return self.send_op(now, id, node, failover);
                }
            }
        }
        match self.route(&target) {
            Route::Local => {
                let range = self.own_range();
                self.serve_coordinated(now, id, range);
            }
            Route::Found(list) => match self.pick_copy_to_read(id, &list) {
                Some(node) => self.send_op(now, id, node, false),
                None => match self.pick_owner(&list, 0) {
                    Some((node, failover)) => self.send_op(now, id, node, failover),
                    None => self.retry_op_later(now, id),
                },
            },
            Route::Closer(node) => match self.cached_owner(id, &target) {
                Some(owner) => {
                    self.client.ops.get_mut(&id).expect("op present").via_cache = true; // faulty code
                    self.send_op(now, id, owner, false);
                }
                None => self.send_lookup_step(now, id, node, None),
            },
            Route::Unknown => self.retry_op_later(now, id),
        }
    }

    /// The owner the location cache names for an operation that would need a remote lookup.
    fn cached_owner(&mut self, id: u64, target: &Id) -> Option<NodeRef> {
        if self.config.cache_entries == 0 {
            return None;
        }
        let owner = self
            .cache
            .lookup(target)
            .filter(|o| !self.is_dead(&o.addr) && o.addr != self.me.addr);
        let op = self.client.ops.get_mut(&id)?;
        if !op.cache_checked {
            op.cache_checked = true;
            if owner.is_some() {
                self.stats.cache_hits += 1;
            } else {
                self.stats.cache_misses += 1;
            }
        }
        owner
    }

    /// `--read-from replicas`: for a `GET`, a live holder of a copy of the key chosen at
    /// random from the head of a lookup's list (its distinct-host preference list), so reads
    /// of one hot key spread over every copy. `None` for other operations, or when no holder
    /// is live (then the owner is picked as usual, with failover).
    fn pick_copy_to_read(&mut self, id: u64, list: &[NodeRef]) -> Option<NodeRef> {
        if self.config.read_from != ReadFrom::Replicas {
            return None;
        }
        let op = self.client.ops.get(&id)?;
        if !matches!(op.message, Message::Get { .. }) {
            return None;
        }
        let holders: Vec<NodeRef> = super::placement::distinct_hosts(list.iter(), self.config.replicas + 1)
            .into_iter()
            .filter(|n| !self.is_host_dead(&n.addr) && !op.asked.contains(&n.addr))
            .collect();
        if holders.is_empty() {
            return None;
        }
        let k = self.rng.below(holders.len() as u64) as usize;
        Some(holders[k])
    }

    /// Whether this node may answer a read of `id` from its own copy (`--read-from
    /// replicas`): it holds the key's range as primary or replica, is not receiving it, and
    /// its store has not lost its data.
    fn may_read_copy(&self, id: &Id) -> bool {
        !self.receiving(id) && !self.repl.store_lost && self.holds_copy(id)
    }

    /// Answers a `GET` from this node's copy, without the primary's lease: the value may be
    /// older than the last acknowledged write when this copy missed it.
    fn serve_copy_read(&mut self, to: ReplyTo, request_id: u64, hops: u16, message: Message, key_id: Id) {
        let Message::Get { key } = message else { return };
        self.stats.ops_get += 1;
        self.stats.copy_reads += 1;
        let wait = StoreWait::Serve {
            to,
            request_id,
            hops,
            kind: ServeKind::Get,
            key_id,
            write: None,
        };
        self.store_op(StoreOp::Get { id: key_id, key }, wait);
    }

    fn first_live(&self, list: &[NodeRef]) -> Option<NodeRef> {
        list.iter().find(|n| !self.is_dead(&n.addr)).copied()
    }

    /// The node to send an operation to from a lookup's list: the first live one (`down`: bit
    /// `i` set when the answering node presumes `list[i]` down), and whether that is a
    /// failover (the owner at the head of the list is down).
    fn pick_owner(&self, list: &[NodeRef], down: u64) -> Option<(NodeRef, bool)> {
        // A vnode after a dead one of the same host is down with it (one process).
        let down_at = |i: usize, n: &NodeRef| self.is_dead(&n.addr) || (i < 64 && down & (1 << i) != 0);
        let pos = list.iter().enumerate().position(|(i, n)| {
            !down_at(i, n)
                && !list[..i]
                    .iter()
                    .enumerate()
                    .any(|(j, m)| m.addr.host == n.addr.host && down_at(j, m))
        })?;
        // Without replicas there is nobody to fail over to: the next node just redirects.
        Some((list[pos], pos > 0 && self.config.replicas > 0))
    }

    /// Sends the operation itself to the node believed to own the key (or, on failover, to
    /// the next in line after a dead owner).
    fn send_op(&mut self, now: Millis, id: u64, node: NodeRef, failover: bool) {
        if node.addr == self.me.addr {
            // Our own tables point back at us: we are the owner after all (a predecessor we
            // did not know of is gone), or a transfer is settling. Serve it if we own it.
            let target = self.client.ops[&id].target;
            let range = if self.owns(&target) {
                Some(self.own_range())
            } else if failover {
                self.stand_in_range(now, &target)
            } else {
                None
            };
            if let Some(range) = range {
                return self.serve_coordinated(now, id, range);
            }
            return self.retry_op_later(now, id);
        }
        let write_timeout = self.config.write_hop_timeout_ms();
        let read_timeout = self.config.rpc_timeout_ms;
        let max_hops = self.config.max_hops;
        let me = self.me.addr;
        let op = self.client.ops.get_mut(&id).expect("op present"); // faulty code
                                                                    // Owners that redirect to each other (views that disagree during a partition) must
                                                                    // not bounce an operation for ever: an attempt has at most `max_hops` hops.
        if op.attempt_hops >= max_hops {
            return self.retry_op_later(now, id);
        }
        op.hops = op.hops.saturating_add(hop_cost(&me, &node.addr));
        op.attempt_hops += 1;
        op.at_owner = true;
        op.awaiting_owner = true;
        let msg = op.message.clone();
        let flags = if failover {
            FLAG_DIRECT | FLAG_FAILOVER
        } else if matches!(msg, Message::Get { .. }) && self.config.read_from == ReadFrom::Replicas {
            FLAG_DIRECT | FLAG_REPLICA_READ
        } else {
            FLAG_DIRECT
        };
        // The owner refuses to start a write within `max_clock_offset_ms` of the hop's deadline
        // (its clock may be that far behind ours), so a write hop waits that much longer.
        let (timeout, hop_deadline) = if matches!(msg, Message::Get { .. } | Message::ScanRange { .. }) {
            (read_timeout, 0)
        } else {
            let d = (now + write_timeout).min(op.deadline);
            // An Execute is never sent twice once it may have reached the owner, so waiting
            // longer for its answer only helps: the owner must start it by `d`, but what it
            // makes may be large (SETRANGE into a 512 MiB value) and take longer to store and
            // replicate than one hop's timeout. It gets the operation's whole deadline.
            let wait = if matches!(msg, Message::Execute { .. }) {
                op.deadline.max(d)
            } else {
                d
            };
            (wait - now, d)
        };
        self.send_request(now, node.addr, msg, RpcKind::Op(id), flags, timeout, hop_deadline);
    }

    fn send_lookup_step(&mut self, now: Millis, id: u64, node: NodeRef, named_by: Option<NodeAddr>) {
        let max_hops = self.config.max_hops;
        let me = self.me.addr;
        let op = self.client.ops.get_mut(&id).expect("op present"); // faulty code
        if op.attempt_hops >= max_hops || op.asked.contains(&node.addr) {
            return self.retry_op_later(now, id);
        }
        op.asked.push(node.addr);
        op.at_owner = false;
        op.hops = op.hops.saturating_add(hop_cost(&me, &node.addr));
        op.attempt_hops += 1;
        op.asking = Some(node);
        op.named_by = named_by;
        op.detour = false;
        let msg = Message::FindSuccessor { id: op.target };
        self.send_rpc(now, node.addr, msg, RpcKind::Op(id), 0);
    }

    /// Asks `via`, which named the dead node `around` as the next step, for the node it
    /// knows just before `around` (a lookup of `around`'s own id): the next-best step, closer
    /// to the key than `via`. This is the Chord paper's way past a failed node in an iterative
    /// lookup; restarting from our own table would walk into the same dead node again until
    /// `via` notices it is gone.
    fn send_detour(&mut self, now: Millis, id: u64, via: NodeAddr, around: NodeRef) {
        let max_hops = self.config.max_hops;
        let me = self.me.addr;
        let op = self.client.ops.get_mut(&id).expect("op present"); // faulty code
        if op.attempt_hops >= max_hops {
            return self.retry_op_later(now, id);
        }
        op.hops = op.hops.saturating_add(hop_cost(&me, &via));
        op.attempt_hops += 1;
        op.asking = None;
        op.named_by = None;
        op.at_owner = false;
        op.detour = true;
        op.detoured = true;
        self.send_rpc(
            now,
            via,
            Message::FindSuccessor { id: around.id },
            RpcKind::Op(id),
            0,
        );
    }

    /// The node a detour goes on from, given `from`'s answer to the lookup of the dead node's
    /// id (`send_detour`, `lookup_detour`): a node after the dead one in its list, or else the
    /// node it knows before it (the dead node's predecessor knows it is down: it is its
    /// successor); never us, `from`, `around` (the node gone around) or a node presumed down.
    pub(super) fn detour_next(
        &self,
        msg: Message,
        from: NodeAddr,
        around: Option<NodeAddr>,
    ) -> Option<NodeRef> {
        let usable = |n: &NodeRef| {
            n.addr != self.me.addr && n.addr != from && Some(n.addr) != around && !self.is_dead(&n.addr)
        };
        match msg {
            Message::FindSuccessorReply {
                lookup:
                    Lookup::Found {
                        successors,
                        predecessor,
                        ..
                    },
            } => successors.into_iter().chain(predecessor).find(usable),
            Message::FindSuccessorReply {
                lookup: Lookup::Closer { node },
            } => Some(node).filter(usable),
            _ => None,
        }
    }

    pub(super) fn on_op_reply(&mut self, now: Millis, id: u64, from: NodeAddr, msg: Message) {
        let Some(op) = self.client.ops.get_mut(&id) else {
            return;
        };
        op.awaiting_owner = false;
        let via_cache = std::mem::take(&mut op.via_cache);
        let detour = std::mem::take(&mut op.detour);
        let target = op.target;
        if detour {
            // The answer to a detour names a node to go on from, not the key's owner.
            let next = self.detour_next(msg, from, None);
            return match next {
                Some(n) => self.send_lookup_step(now, id, n, Some(from)),
                None => self.retry_op_later(now, id),
            };
        }
        match msg {
            Message::FindSuccessorReply {
                lookup:
                    Lookup::Found {
                        predecessor,
                        successors,
                        down,
                    },
            } => {
                if let (Some(p), Some(owner)) = (predecessor, successors.first()) {
                    self.cache.insert(p.id, *owner);
                }
                match self.pick_owner(&successors, down) {
                    Some((node, failover)) => self.send_op(now, id, node, failover),
                    None => self.retry_op_later(now, id),
                }
            }
            Message::FindSuccessorReply {
                lookup: Lookup::Closer { node },
            } => {
                if node.addr == self.me.addr || node.addr == from {
                    // Views disagree (a stale table somewhere): let the ring settle, then retry.
                    self.retry_op_later(now, id);
                } else if self.is_dead(&node.addr) {
                    if self.client.ops.get(&id).is_some_and(|op| op.detoured) {
                        self.retry_op_later(now, id);
                    } else {
                        self.send_detour(now, id, from, node);
                    }
                } else {
                    self.send_lookup_step(now, id, node, Some(from));
                }
            }
            Message::Redirect { node, exact, .. } => {
                if via_cache {
                    // A stale cache entry: one extra hop, and the entry goes.
                    self.stats.cache_stale += 1;
                    self.cache.evict_target(&target);
                }
                if exact {
                    // One-hop: the redirecting node knows an owner our table lacks.
                    if let Some(m) = self.members.as_mut() {
                        if !m.is_known_gone(&node.addr) {
                            m.insert(node);
                        }
                    }
                }
                if node.addr == self.me.addr || self.is_dead(&node.addr) {
                    self.retry_op_later(now, id);
                } else if exact {
                    self.send_op(now, id, node, false);
                } else {
                    self.send_lookup_step(now, id, node, Some(from));
                }
            }
            Message::GetReply { hops, version, value } => self.finish_op(id, hops, |h| Message::GetReply {
                hops: h,
                version,
                value,
            }),
            Message::ScanRangeReply {
                hops,
                keys,
                end,
                last,
            } => self.finish_op(id, hops, |h| Message::ScanRangeReply {
                hops: h,
                keys,
                end,
                last,
            }),
            Message::ExecuteReply {
                hops,
                version,
                replies,
            } => self.finish_op(id, hops, |h| Message::ExecuteReply {
                hops: h,
                version,
                replies,
            }),
            Message::PutReply { hops, version } => {
                self.finish_op(id, hops, |h| Message::PutReply { hops: h, version })
            }
            Message::DeleteReply {
                hops,
                version,
                existed,
            } => self.finish_op(id, hops, |h| Message::DeleteReply {
                hops: h,
                version,
                existed,
            }),
            Message::Error { code, text, .. } => {
                // A routing condition (owner not ready, busy, no quorum yet) may clear up if we
                // try again; the owner's own failure (its store is down) is the client's to see
                // and retry.
                if code.is_retryable() && code != ErrorCode::StoreFailed {
                    if let Some(op) = self.client.ops.get_mut(&id) {
                        op.last_error = Some(text);
                    }
                    self.retry_op_later(now, id);
                } else {
                    self.fail_op(id, code, &text);
                }
            }
            other => {
                let text = format!("unexpected {} from {from}", other.name());
                self.fail_op(id, ErrorCode::Internal, &text);
            }
        }
    }

    /// A hop of the operation went unanswered; its node is already marked dead.
    pub(super) fn on_op_failed(&mut self, now: Millis, id: u64, to: NodeAddr) {
        if let Some(op) = self.client.ops.get_mut(&id) {
            // The owner may have applied it, or may yet.
            op.owner_outcome_unknown |= std::mem::take(&mut op.awaiting_owner);
        }
        if let Some(op) = self.client.ops.get(&id) {
            // An Execute (INCR, a transaction) is not idempotent: one whose owner did not
            // answer may have been applied, so it is not sent again; the client is told.
            if op.at_owner && matches!(op.message, Message::Execute { .. }) {
                let text = format!(
                    "the key's owner {to} did not answer: the command may or may not have been \
                     applied (not retried: it is not idempotent)"
                );
                return self.fail_op(id, ErrorCode::Unavailable, &text);
            }
            if let (Some(dead), Some(via)) = (op.asking, op.named_by) {
                if dead.addr == to && !self.is_dead(&via) && !op.detoured {
                    return self.send_detour(now, id, via, dead);
                }
            }
        }
        self.retry_op_later(now, id);
    }

    /// Retries with a growing pause: the first retry at once, later ones give the ring time to
    /// repair itself (a stabilize round) before the next attempt.
    fn retry_op_later(&mut self, now: Millis, id: u64) {
        let Some(op) = self.client.ops.get_mut(&id) else {
            return;
        };
        op.attempts += 1;
        op.detoured = false;
        op.attempt_hops = 0;
        op.asked.clear();
        if op.attempts > MAX_OP_ATTEMPTS {
            let text = match &op.last_error {
                Some(e) => format!("owner unavailable after retries: {e}"),
                None => "owner unreachable after retries".to_string(),
            };
            return self.fail_op(id, ErrorCode::Unavailable, &text);
        }
        let pause = if op.attempts == 1 {
            0
        } else {
            self.config.stabilize_interval_ms / 2 * (op.attempts as u64 - 1)
        };
        let at = (now + pause).min(op.deadline);
        self.client.retries.insert((at, id));
    }

    pub(super) fn retry_ops(&mut self, now: Millis) {
        while let Some(&(at, id)) = self.client.retries.first() {
            if at > now {
                break;
            }
            self.client.retries.pop_first();
            self.drive_op(now, id);
        }
        // Operations whose deadline passed while waiting on a peer fail now.
        let expired: Vec<u64> = self
            .client
            .ops
            .iter()
            .filter(|(_, op)| now >= op.deadline)
            .map(|(id, _)| id)
            .collect();
        for id in expired {
            let text = match self.client.ops.get(&id).and_then(|op| op.last_error.as_ref()) {
                Some(e) => {
                    format!("request deadline passed ({NOT_STARTED_AFTER}); last: {e}")
                }
                None => format!("request deadline passed ({NOT_STARTED_AFTER})"),
            };
            self.fail_op(id, ErrorCode::Timeout, &text);
        }
    }

    fn finish_op(&mut self, id: u64, owner_hops: u16, make: impl FnOnce(u16) -> Message) {
        let Some(op) = self.client.ops.remove(&id) else {
            return;
        };
        let hops = op.hops.saturating_add(owner_hops);
        self.stats.hops_total += hops as u64;
        self.stats.hops_max = self.stats.hops_max.max(hops as u64);
        self.reply(op.reply_to, op.request_id, make(hops));
    }

    fn fail_op(&mut self, id: u64, code: ErrorCode, text: &str) {
        let Some(op) = self.client.ops.remove(&id) else {
            return;
        };
        self.stats.ops_failed += 1;
        let is_write = writes(&op.message);
        let unknown = op.owner_outcome_unknown || op.awaiting_owner;
        let text = if is_write && unknown && !text.contains(WRITE_OUTCOME_UNKNOWN) {
            format!("{text} (a key's owner did not answer an attempt: {WRITE_OUTCOME_UNKNOWN})")
        } else {
            text.to_string()
        };
        let msg = Message::Error {
            code,
            hops: op.hops,
            text,
        };
        self.reply(op.reply_to, op.request_id, msg);
    }

    /// Whether this is the first delivery of the write hop `(sender, request_id, deadline, key,
    /// value)` (a sender's request ids are unique, so a second delivery with the same
    /// fingerprint before the deadline is a duplicate). Remembered until the deadline, after
    /// which the deadline refuses the hop anyway.
    ///
    /// The sender (`to`: the connection, or the simulated sender) is part of it: request ids
    /// are unique per sender only, and two clients' writes of the same value to the same key
    /// with the same request id within the same millisecond are two writes (redis-benchmark's
    /// 50 connections did that, and one of them never got its reply).
    fn first_delivery(
        &mut self,
        now: Millis,
        to: ReplyTo,
        request_id: u64,
        deadline: Millis,
        message: &Message,
    ) -> bool {
        use std::hash::{Hash, Hasher};
        self.client.seen_writes.expire(now);
        let mut h = std::hash::DefaultHasher::new();
        (to, request_id, deadline).hash(&mut h);
        match message {
            Message::Put { key, value } => (0u8, key, value).hash(&mut h),
            Message::Delete { key } => (1u8, key).hash(&mut h),
            Message::Execute {
                key,
                commands,
                watched,
            } => (2u8, key, commands, watched).hash(&mut h),
            _ => {}
        }
        self.client.seen_writes.first(h.finish(), deadline)
    }

    /// Serves an operation this node coordinates and holds the range of. Under `consistent`,
    /// while it holds no valid lease on the range yet (a stand-in waiting for the primary's
    /// lease to run out, a node catching up), the operation waits and retries like one sent to
    /// a remote owner that said "not ready", instead of failing at once; a failing store fails
    /// it at once with `StoreFailed`.
    fn serve_coordinated(&mut self, now: Millis, id: u64, range: (NodeRef, Id)) {
        let (primary, start) = range;
        if self.config.is_consistent() && !self.leases.serves(&primary.id, now) {
            self.renew_lease(now, primary, start);
            if !self.leases.serves(&primary.id, now) {
                let (code, text) = match self.no_lease_error(&primary.id, 0) {
                    Message::Error { code, text, .. } => (code, text),
                    _ => (ErrorCode::NotReady, String::new()),
                };
                // A store that fails is the client's to see at once, as from a remote owner.
                if code == ErrorCode::StoreFailed {
                    return self.fail_op(id, code, &text);
                }
                if let Some(op) = self.client.ops.get_mut(&id) {
                    op.last_error = Some(text);
                }
                return self.retry_op_later(now, id);
            }
        }
        let op = self.client.ops.remove(&id).expect("op present"); // faulty code
        let target = op.target;
        self.serve(
            now,
            op.reply_to,
            op.request_id,
            op.hops,
            op.message,
            target,
            op.deadline,
            range,
            Delivery::Local,
            None,
        );
    }

    /// How far ahead of our clock a write hop's deadline may be (ms): the longest a client
    /// waits ([`MAX_CLIENT_TIMEOUT_MS`], or our own request timeout if longer) and the time
    /// its size allows, plus the clock offset we tolerate. Write hops are remembered until
    /// their deadlines (`first_delivery`), so this bounds that memory to the writes of this
    /// long.
    fn deadline_horizon_ms(&self, message: &Message) -> u64 {
        self.config
            .request_timeout_ms
            .max(MAX_CLIENT_TIMEOUT_MS)
            .saturating_add(super::rpc::size_allowance_ms(message))
            .saturating_add(self.config.max_clock_offset_ms)
    }

    /// Our own range as a lease target: `(me, predecessor)`, the range `(predecessor, me]`.
    pub(super) fn own_range(&self) -> (NodeRef, Id) {
        (self.me, self.primary_range().0)
    }

    /// Serves a client operation from the local store, as the holder of the range
    /// `(range.1, range.0]` (the key's primary, or a stand-in for it): a write is stamped with a
    /// fresh version and sent to the range's other copies at the same time.
    ///
    /// Refused, never applied: an operation whose `deadline` (the entry's, 0 for none) is
    /// within `max_clock_offset_ms` of our clock, since the entry may have given up on it and
    /// a later write may have been acknowledged; and under `consistent`, any operation while
    /// this node holds no valid, caught-up lease on the range, or a write whose version would
    /// pass the lease's fence. `fence`: `Some` when the caller found that lease valid in this
    /// same call (its fence, [`super::lease::Leases::valid_fence`]), so it is not looked up again.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn serve(
        &mut self,
        now: Millis,
        to: ReplyTo,
        request_id: u64,
        hops: u16,
        message: Message,
        key_id: Id,
        deadline: Millis,
        range: (NodeRef, Id),
        delivery: Delivery,
        fence: Option<Millis>,
    ) {
        // A late read is harmless (its answer is dropped); a late write is not.
        let is_write = writes(&message);
        if is_write && deadline != 0 && now.saturating_add(self.config.max_clock_offset_ms) >= deadline {
            self.stats.late_requests_refused += 1;
            let msg = Message::Error {
                code: ErrorCode::Timeout,
                hops,
                text: "request deadline passed before the owner could start it (not applied)".to_string(),
            };
            return self.reply(to, request_id, msg);
        }
        if is_write && deadline != 0 && delivery == Delivery::Network {
            let horizon = self.deadline_horizon_ms(&message);
            if deadline > now.saturating_add(horizon) {
                // Remembered until its deadline, such a hop would hold memory for as long as
                // the sender's clock runs ahead of ours (hours, from a skewed clock). Refused:
                // never applied, so nothing is lost.
                self.stats.late_requests_refused += 1;
                let msg = Message::Error {
                    code: ErrorCode::BadRequest,
                    hops,
                    text: format!(
                        "request deadline is {} ms ahead of this node's clock, more than the {horizon} ms a \
                         write may wait: the sender's clock runs ahead, or its timeout is longer than \
                         {MAX_CLIENT_TIMEOUT_MS} ms (not applied)",
                        deadline - now
                    ),
                };
                return self.reply(to, request_id, msg);
            }
        }
        if is_write
            && deadline != 0
            && delivery == Delivery::Network
            && !self.first_delivery(now, to, request_id, deadline, &message)
        {
            // The same hop delivered twice (a retransmission, a replayed connection): it was
            // started once already, and a second stamp could put it above a write acknowledged
            // since. Its first delivery answers.
            self.stats.duplicates_dropped += 1;
            return;
        }
        let (primary, start) = range;
        if self.config.is_consistent() && fence.is_none() && !self.leases.serves(&primary.id, now) {
            // Ask for the lease now (a stand-in, or a node that just gained its range), so a
            // retry soon finds it.
            self.renew_lease(now, primary, start);
            if !self.leases.serves(&primary.id, now) {
                self.stats.ops_refused_no_lease += 1;
                let msg = self.no_lease_error(&primary.id, hops);
                return self.reply(to, request_id, msg);
            }
        }
        // An Execute reads before it writes: it needs the data as much as a GET does.
        let reads = !is_write || matches!(message, Message::Execute { .. });
        if self.repl.store_lost && reads && !self.config.is_consistent() {
            let msg = Message::Error {
                code: ErrorCode::NotReady,
                hops,
                text: "this node's store lost its data; refilling it from the other copies".to_string(),
            };
            return self.reply(to, request_id, msg);
        }
        let message = match message {
            Message::Get { key } => {
                self.stats.ops_get += 1;
                let op = StoreOp::Get { id: key_id, key };
                if self.stores_inline() {
                    let result = self.store_now(now, op);
                    return self.finish_serve(now, to, request_id, hops, ServeKind::Get, None, result);
                }
                let wait = StoreWait::Serve {
                    to,
                    request_id,
                    hops,
                    kind: ServeKind::Get,
                    key_id,
                    write: None,
                };
                self.store_op(op, wait);
                return;
            }
            Message::Execute { .. } => {
                return self.serve_execute(now, to, request_id, hops, message, key_id, deadline, primary);
            }
            Message::ScanRange { .. } => {
                self.stats.ops_get += 1;
                return self.serve_scan_range(to, request_id, hops, message, primary.id);
            }
            Message::Put { .. } | Message::Delete { .. } if self.exec.write_must_wait(&key_id) => {
                let write = HeldWrite {
                    to,
                    request_id,
                    hops,
                    message,
                    key_id,
                    deadline,
                    range,
                };
                return self.hold_write(write);
            }
            Message::Put { .. } | Message::Delete { .. } => message,
            _ => return, // only client operations reach here
        };
        self.store_client_write(now, to, request_id, hops, message, key_id, range, fence);
    }

    /// Stores a client PUT or DELETE served here: stamps it with a fresh version (refused past
    /// the lease's fence) and sends it to the range's other copies at the same time.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn store_client_write(
        &mut self,
        now: Millis,
        to: ReplyTo,
        request_id: u64,
        hops: u16,
        message: Message,
        key_id: Id,
        range: (NodeRef, Id),
        fence: Option<Millis>,
    ) {
        let primary = range.0;
        let (key, value, kind) = match message {
            Message::Put { key, value } => {
                self.stats.ops_put += 1;
                (key, Some(value), ServeKind::Put(0))
            }
            Message::Delete { key } => {
                self.stats.ops_delete += 1;
                (key, None, ServeKind::Delete(0))
            }
            _ => return,
        };
        let version = self.clock.stamp(now);
        if self.config.is_consistent() {
            let fence = fence.unwrap_or_else(|| self.leases.held(&primary.id).map_or(0, |h| h.fence_ms));
            if version >> 16 > fence {
                self.stats.ops_refused_no_lease += 1;
                let msg = Message::Error {
                    code: ErrorCode::NotReady,
                    hops,
                    text: "the version clock ran past the lease's fence; retry after the renewal".to_string(),
                };
                return self.reply(to, request_id, msg);
            }
        }
        let kind = match kind {
            ServeKind::Put(_) => ServeKind::Put(version),
            _ => ServeKind::Delete(version),
        };
        let write = if self.may_replicate(&primary) {
            // A SET (PUT) discards any expiry, as Redis' SET without KEEPTTL does.
            let item = Item {
                key: key.clone(),
                version,
                value: value.clone(),
                expires_at: 0,
            };
            self.replicate_write(now, item, &primary)
        } else {
            None
        };
        let op = StoreOp::Put {
            id: key_id,
            key,
            entry: Entry::new(version, value),
        };
        if self.stores_inline() {
            // Stored before this call returns: never in flight, so nothing waits on it
            // (`exec.storing`, `write_in_flight`).
            let result = self.store_now(now, op);
            return self.finish_serve(now, to, request_id, hops, kind, write, result);
        }
        self.exec.storing(key_id);
        let wait = StoreWait::Serve {
            to,
            request_id,
            hops,
            kind,
            key_id,
            write,
        };
        self.store_op(op, wait);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish_serve(
        &mut self,
        now: Millis,
        to: ReplyTo,
        request_id: u64,
        hops: u16,
        kind: ServeKind,
        write: Option<u64>,
        result: Result<StoreOutcome, StoreError>,
    ) {
        let msg = match (kind, result) {
            // An expired value reads as absent; the version is the entry's, as for a tombstone
            // (WATCH compares it with the owner's).
            (ServeKind::Get, Ok(StoreOutcome::Got(entry))) => match entry {
                Some(e) => Message::GetReply {
                    hops,
                    version: e.version,
                    value: e.into_value_at(now),
                },
                None => Message::GetReply {
                    hops,
                    version: 0,
                    value: None,
                },
            },
            (ServeKind::Put(version), Ok(StoreOutcome::Put(_))) => Message::PutReply { hops, version },
            (ServeKind::Delete(version), Ok(StoreOutcome::Put(o))) => Message::DeleteReply {
                hops,
                version,
                existed: o.previous_live && !crate::store::is_expired(o.previous_expires_at, now),
            },
            (kind, Err(e)) => Message::Error {
                code: ErrorCode::StoreFailed,
                hops,
                text: store_failure_text(&e, !matches!(kind, ServeKind::Get)),
            },
            (_, Ok(other)) => Message::Error {
                code: ErrorCode::Internal,
                hops,
                text: format!("store answered {other:?}"),
            },
        };
        match write {
            Some(w) => self.local_write_done(w, to, request_id, msg),
            None => self.reply(to, request_id, msg),
        }
    }
}

fn unavailable(hops: u16, text: &str) -> Message {
    Message::Error {
        code: ErrorCode::Unavailable,
        hops,
        text: text.to_string(),
    }
}

/// What a message from `me` to `to` adds to an operation's hop count: 1 over the network, 0
/// to another vnode of the same host (hops count network hops only; a host's vnodes talk
/// without touching the network).
fn hop_cost(me: &NodeAddr, to: &NodeAddr) -> u16 {
    u16::from(!me.same_host(to))
}

/// Whether a client operation writes (a late one must not run; one that failed may have).
fn writes(message: &Message) -> bool {
    !matches!(message, Message::Get { .. } | Message::ScanRange { .. })
}

/// What the entry promises when it gives up on an operation (docs/architecture.md, "Faults",
/// rule 1): no node starts it afterwards (every hop carries the deadline).
pub(crate) const NOT_STARTED_AFTER: &str = "the ring does not start the operation after this answer";

/// What a client told that its write failed may take it to mean once an owner left a hop of
/// it unanswered, or an owner's store did not answer: an owner may have applied it before the
/// answer, or handed it to a store that then froze (a paused redis-server) and carries it out
/// when it resumes (rule 1's exception). Even so it never replaces a write acknowledged after the
/// answer, whose version is higher (rule 3).
pub(crate) const WRITE_OUTCOME_UNKNOWN: &str = "the write may or may not have been applied";

/// The text of a store's failure for a client: for a write whose store did not answer
/// (`Unavailable`: Redis down, frozen, out of reach, or refusing the command) that it may
/// still have been applied, since the store may have received it (a frozen Redis runs it when
/// it resumes; an error reply such as OOM did not apply it, but the driver does not tell the
/// kinds apart); lost data and corrupt records are answered before anything is written.
pub(crate) fn store_failure_text(e: &StoreError, write: bool) -> String {
    match e {
        StoreError::Unavailable(_) if write => {
            format!("{e} ({WRITE_OUTCOME_UNKNOWN}: the store may still carry it out)")
        }
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chord::config::PartitionPolicy;
    use crate::chord::{Config, Output};
    use crate::store::{self, MemoryStore, Store};
    use bytes::Bytes;
    use chordkv_protocol::Frame;

    /// A node owning the whole ring, with its store run inline.
    fn one() -> (Node, MemoryStore) {
        one_with(Config::with_stabilize_interval_ms(100))
    }

    fn one_with(config: Config) -> (Node, MemoryStore) {
        let me = NodeRef::from_addr("127.0.0.1:7000".parse().unwrap());
        let mut node = Node::new(me, config, 0);
        node.create(0);
        (node, MemoryStore::new())
    }

    /// Delivers `frame` at `now` and runs what the node asks of its store; the replies.
    fn deliver(node: &mut Node, store: &MemoryStore, now: Millis, frame: Frame) -> Vec<Frame> {
        node.handle_request(now, ReplyTo(1), frame);
        run(node, store, now)
    }

    /// Runs what the node asks of its store until it asks nothing more; the replies.
    fn run(node: &mut Node, store: &MemoryStore, now: Millis) -> Vec<Frame> {
        let mut replies = Vec::new();
        while let Some(out) = node.poll_output() {
            match out {
                Output::Store { id, op, .. } => {
                    let result = store::execute(store as &dyn Store, op);
                    node.store_done(now, id, result);
                }
                Output::Reply { frame, .. } => replies.push(frame),
                _ => {}
            }
        }
        replies
    }

    /// Whether `replies` is exactly one `PutReply`.
    fn one_put_reply(replies: &[Frame]) -> bool {
        matches!(
            replies,
            [Frame {
                message: Message::PutReply { .. },
                ..
            }]
        )
    }

    fn put(key: &str) -> Message {
        Message::Put {
            key: Bytes::from(key.to_string()),
            value: Bytes::from_static(b"v"),
        }
    }

    /// A lone node's write skips building a `Replicate` (`may_replicate` is false) only where
    /// `replicate_items` would send nothing and wait for nothing, under either partition
    /// policy; with a successor on another host it builds one.
    #[test]
    fn a_write_skips_the_replica_message_only_when_it_has_no_copy_to_send() {
        for policy in [PartitionPolicy::Consistent, PartitionPolicy::Available] {
            let mut config = Config::with_stabilize_interval_ms(100);
            config.replicas = 2;
            config.partition_policy = policy;
            let (mut node, store) = one_with(config);
            let me = node.me;
            assert!(!node.may_replicate(&me), "{policy:?}");
            let item = Item {
                key: Bytes::from_static(b"k"),
                version: 1,
                value: Some(Bytes::from_static(b"v")),
                expires_at: 0,
            };
            assert_eq!(node.replicate_items(10, vec![item], &me), None, "{policy:?}");
            assert!(node.poll_output().is_none(), "{policy:?}");
            let replies = deliver(&mut node, &store, 20, Frame::new(1, put("k")));
            assert!(one_put_reply(&replies), "{policy:?}: {replies:?}");

            let other = NodeRef::from_addr("127.0.0.1:7001".parse().unwrap());
            node.routing.set_successors([other], 3);
            assert!(node.may_replicate(&me), "{policy:?}");
        }
    }

    /// The store may answer ops out of order (the Redis driver runs puts and scans on
    /// different connections): a node without replicas whose own tombstone collection scans
    /// before a delete issued just before it lands must not stop its anti-entropy timer, or
    /// that tombstone is kept until some later delete (for good if none comes).
    #[test]
    fn a_tombstone_landing_after_its_collection_scanned_is_collected_later() {
        use crate::chord::timer::Timer;
        use crate::chord::StoreOpId;
        use crate::store::StoreOp;
        fn take_ops(node: &mut Node) -> Vec<(StoreOpId, StoreOp)> {
            let mut ops = Vec::new();
            while let Some(out) = node.poll_output() {
                if let Output::Store { id, op, .. } = out {
                    ops.push((id, op));
                }
            }
            ops
        }
        let del = |key: &str| {
            Frame::new(
                1,
                Message::Delete {
                    key: Bytes::from(key.to_string()),
                },
            )
        };
        let mut config = Config::with_stabilize_interval_ms(100);
        config.replicas = 0;
        config.tombstone_grace_ms = 500;
        config.anti_entropy_interval_ms = 2_000;
        let (mut node, store) = one_with(config.clone());
        let mut now = 0;
        while now < 1_000 {
            node.tick(now);
            run(&mut node, &store, now);
            now += 50;
        }
        deliver(&mut node, &store, now, del("a")); // arms the timer
        now = node.timers.get(Timer::AntiEntropy).expect("armed by the delete");
        node.handle_request(now, ReplyTo(1), del("b"));
        let delete_b = take_ops(&mut node);
        assert!(matches!(delete_b[..], [(_, StoreOp::Put { .. })]), "{delete_b:?}");
        node.tick(now); // the own collection, while b's tombstone is in flight
        let tick_ops = take_ops(&mut node);
        assert!(tick_ops
            .iter()
            .any(|(_, op)| matches!(op, StoreOp::CollectTombstones { .. })));
        // The collection scans first, then b's tombstone lands.
        for (id, op) in tick_ops.into_iter().chain(delete_b) {
            let result = store::execute(&store as &dyn Store, op);
            node.store_done(now, id, result);
        }
        run(&mut node, &store, now);
        assert_eq!(node.stats().tombstones_collected, 1, "a is gone");
        let end = now + 20 * config.anti_entropy_interval_ms;
        while now < end {
            now += 100;
            node.tick(now);
            run(&mut node, &store, now);
        }
        assert!(
            store.get(b"b").unwrap().is_none(),
            "b's tombstone kept; anti-entropy timer {:?}",
            node.timers.get(Timer::AntiEntropy)
        );
    }

    /// A node without replicas whose store came back with its data (a persistent Redis) may
    /// hold tombstones from its earlier run: it collects them without waiting for a delete of
    /// this run, and its timer then rests. (It used to keep them until its first delete.)
    #[test]
    fn a_node_restarted_on_a_kept_store_collects_the_tombstones_it_finds() {
        use crate::chord::timer::Timer;
        use crate::store::Entry;
        let mut config = Config::with_stabilize_interval_ms(100);
        config.replicas = 0;
        config.tombstone_grace_ms = 500;
        config.anti_entropy_interval_ms = 2_000;
        config.store_kept_copies = true;
        let (mut node, store) = one_with(config.clone());
        // A tombstone of the earlier run, long past its grace.
        store
            .put(&Bytes::from_static(b"old"), Entry::new(1 << 16, None))
            .unwrap();
        let mut now = 0;
        while now < 10_000 {
            node.tick(now);
            run(&mut node, &store, now);
            now += 50;
        }
        assert!(store.get(b"old").unwrap().is_none(), "the old tombstone is kept");
        assert_eq!(node.stats().tombstones_collected, 1);
        assert_eq!(node.timers.get(Timer::AntiEntropy), None, "the timer rests again");

        // Without a kept store nothing is scanned before a delete.
        config.store_kept_copies = false;
        let (mut fresh, store) = one_with(config);
        for now in (0..10_000).step_by(50) {
            fresh.tick(now);
            run(&mut fresh, &store, now);
        }
        assert_eq!(fresh.stats().tombstone_collections, 0);
    }

    /// A write this node coordinates reaches `serve` once, in memory: it is applied and leaves
    /// nothing behind. (Each used to be remembered until its deadline, as a hop from the
    /// network is: at 100,000 writes a second, tens of megabytes the node kept for nothing.)
    /// A write delivered over a connection twice, the same hop, is still applied once.
    #[test]
    fn only_writes_from_the_network_are_remembered_against_a_second_delivery() {
        let (mut node, store) = one();
        for i in 0..100u64 {
            let replies = deliver(&mut node, &store, 10, Frame::new(i, put(&format!("k{i}"))));
            assert!(one_put_reply(&replies), "{replies:?}");
        }
        assert_eq!(store.len().unwrap(), 100);
        assert!(node.client.seen_writes.is_empty());

        let hop = Frame::direct(500, put("twice")).with_deadline(60_000);
        let first = deliver(&mut node, &store, 20, hop.clone());
        assert!(one_put_reply(&first), "{first:?}");
        let version = store.get(b"twice").unwrap().unwrap().version;
        let second = deliver(&mut node, &store, 21, hop);
        assert!(second.is_empty(), "the first delivery answers: {second:?}");
        assert_eq!(
            store.get(b"twice").unwrap().unwrap().version,
            version,
            "not stamped again"
        );
        assert_eq!(node.stats.duplicates_dropped, 1);
        assert_eq!(node.client.seen_writes.len(), 1);
    }

    /// A write hop whose deadline is far ahead of the owner's clock (the sender's clock runs
    /// hours ahead) is refused with a clear error, not applied and not remembered: remembered
    /// until its deadline, each such write held memory for hours. One within the horizon is
    /// applied.
    #[test]
    fn a_write_with_a_deadline_far_ahead_of_our_clock_is_refused_and_not_remembered() {
        let (mut node, store) = one();
        let now = 1_000;
        let skewed = Frame::direct(1, put("skewed")).with_deadline(now + 3_600_000);
        let replies = deliver(&mut node, &store, now, skewed);
        assert!(
            matches!(
                &replies[..],
                [Frame {
                    message: Message::Error {
                        code: ErrorCode::BadRequest,
                        text,
                        ..
                    },
                    ..
                }] if text.contains("ahead of this node's clock")
            ),
            "{replies:?}"
        );
        assert!(store.get(b"skewed").unwrap().is_none(), "not applied");
        assert!(node.client.seen_writes.is_empty(), "not remembered");

        let patient = Frame::direct(2, put("patient")).with_deadline(now + MAX_CLIENT_TIMEOUT_MS);
        let replies = deliver(&mut node, &store, now, patient);
        assert!(one_put_reply(&replies), "{replies:?}");
        assert_eq!(node.client.seen_writes.len(), 1);
    }

    /// A node no other host keeps copies for (`--replicas 0`, or a ring of one host) has no
    /// anti-entropy round in which to collect tombstones: it collects its own once they are
    /// older than the grace period. Before, it kept every tombstone for good (a single node's
    /// memory grew with each key deleted, and SCAN walked them all).
    #[test]
    fn a_node_without_other_copies_collects_its_own_old_tombstones() {
        for (replicas, consistent) in [(0, true), (2, true), (0, false), (2, false)] {
            let mut config = Config::with_stabilize_interval_ms(100);
            config.replicas = replicas;
            config.tombstone_grace_ms = 1_000;
            if !consistent {
                config.partition_policy = crate::chord::config::PartitionPolicy::Available;
            }
            let (mut node, store) = one_with(config);
            let mut now = 10;
            for i in 0..50u64 {
                deliver(&mut node, &store, now, Frame::new(i, put(&format!("k{i}"))));
            }
            for i in 0..50u64 {
                let del = Message::Delete {
                    key: Bytes::from(format!("k{i}")),
                };
                let replies = deliver(&mut node, &store, now, Frame::new(100 + i, del));
                assert!(
                    matches!(
                        replies[..],
                        [Frame {
                            message: Message::DeleteReply { .. },
                            ..
                        }]
                    ),
                    "{replies:?}"
                );
            }
            let whole = |s: &MemoryStore| s.scan(&Id::ZERO, &Id::ZERO, None, 1_000).unwrap().len();
            assert_eq!(whole(&store), 50, "50 tombstones");
            // Within the grace period they stay; past it, the next collection removes them.
            while now < 900 {
                now += 50;
                node.tick(now);
                run(&mut node, &store, now);
            }
            assert_eq!(
                whole(&store),
                50,
                "replicas {replicas}: kept within the grace period"
            );
            while now < 10_000 && whole(&store) > 0 {
                now += 50;
                node.tick(now);
                run(&mut node, &store, now);
            }
            assert_eq!(
                whole(&store),
                0,
                "replicas {replicas}, consistent {consistent}: collected"
            );
            assert_eq!(node.stats.tombstones_collected, 50);
        }
    }
}
