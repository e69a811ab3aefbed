//! A host: the virtual nodes of one process behind one address (SIGCOMM'01 section 6.9,
//! Dynamo section 6.2).
//!
//! A host runs `V` [`Node`]s, each a position on the ring with its own id, successor list,
//! fingers and range, and gives its driver (the mio server, the simulator) the same inputs and
//! outputs as one node. It owns what the vnodes share:
//!
//! - **The address and its connections.** Every vnode of a host is reached at the host's
//!   address; a frame names the vnode it is for ([`Frame::vnode`]), and a client's key
//!   operation that names none goes to the vnode that serves the key; else, sent with
//!   `FLAG_DIRECT` to one position, to vnode 0 (senders name every other); else to the one
//!   closest before the key (the best start for its lookup). Other frames that name none go
//!   to vnode 0.
//! - **The loopback between vnodes.** A message from one vnode to another of the same host
//!   never reaches the driver: the host delivers it and its reply itself, in order, before
//!   the driver sees the outputs of the input that sent it. Hops count network hops only
//!   (`ops.rs` `hop_cost`).
//! - **Request ids.** A vnode's request id `r` leaves the host as `r << 16 | vnode`, so the
//!   reply, which echoes it, finds its vnode again without a table (a core's ids stay below
//!   2^48: one per request).
//! - **Store ops.** Each vnode's store ops carry its index ([`Output::Store`]'s `vnode`): the
//!   driver keeps one store partition per vnode, so a vnode's ranges, digests and handoffs
//!   see its own keys only. A vnode's store op id `s` leaves the host as
//!   `(s << 1 | write) << 16 | vnode` (`write`: the op may change the store).
//! - **The store's unchanged answers.** Digests and key counts asked again while nothing has
//!   written to the store are answered from the host's [`StoreCache`] (`store_cache.rs`),
//!   without a scan.
//! - **Stores that answer at once.** Given its stores ([`Host::run_stores_inline`]: the
//!   memory store), the vnodes serve their clients' gets and writes on them directly, the
//!   requests received between two pumps given to them together with their keys prefetched,
//!   and the host runs the vnodes' other store ops itself as it moves their outputs, instead
//!   of handing them to the driver (`inline_stores.rs`).
//! - **Counters.** `GET_STATS` naming no vnode is answered for the whole host: every counter
//!   summed over the vnodes (the largest for the few that are maxima), `vnodes` and
//!   `vnodes_active` (how many own a range now), then a per-vnode breakdown of the key counts
//!   and operations (`vnode.3.keys_primary`, ...).
//!
//! With one vnode a host is exactly its node: frames, ids and counters are unchanged on the
//! wire (request ids aside, which only their sender reads).
//!
//! **Work per input is O(vnodes touched), not O(V).** The host keeps each vnode's
//! `next_deadline` (read again, when a deadline is asked for, for the vnodes inputs reached
//! since) and the set of vnodes an input reached: `tick` runs only the vnodes whose deadline has come, and only touched
//! vnodes are polled for outputs. A node needs a `tick` only at its `next_deadline` (the
//! simulator has always driven nodes that way), so this changes no behaviour.
//!
//! **The hot inputs are pumped when the driver polls.** A client request and a store op's
//! result leave their outputs in the vnode's queue; the first [`Host::poll_output`] that
//! finds the host's queue empty (or [`Host::next_deadline`], [`Host::end_turn`]) moves them
//! all (`pump`), so a pipeline of requests is pumped once, not once a request (one node
//! under `redis-benchmark -P 16`, callgrind: 7,106 instructions a request before, 6,982
//! after; with `-P 1` no change). Every other input
//! pumps at once. Drivers poll the outputs after their inputs, as they always have; the
//! state they read in between ([`Host::vnodes`]) may not yet include the sibling messages
//! of the latest inputs.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use chordkv_protocol::{ErrorCode, Frame, Id, Message, NodeAddr, NodeRef};

use super::config::Config;
use super::inline_stores::{InlineStores, PREFETCH_BATCH};
use super::node::{Millis, Node, Output, Phase, ReplyTo, StoreOpId};
use super::ops::KeyPlacement;
use super::store_cache::StoreCache;
use crate::store::{self, Store, StoreError, StoreOutcome};

/// Bit 63 of a [`ReplyTo`] marks the host's own reply channels; drivers use values below
/// 2^63.
const HOST_REPLY: u64 = 1 << 63;
/// With [`HOST_REPLY`]: a gathered `GET_STATS` (`gather << 16 | vnode`), else a sibling
/// vnode's request (`vnode`).
const GATHER_REPLY: u64 = 1 << 62;
/// Bits of a request or store-op id that name the vnode.
const VNODE_BITS: u32 = 16;
const VNODE_MASK: u64 = (1 << VNODE_BITS) - 1;
/// Counters that are maxima, not sums, across a host's vnodes.
const MAX_COUNTERS: &[&str] = &[
    "hops_max",
    "replicas",
    "copies_untrusted",
    "uptime_ms",
    "ring_size_estimate",
];
/// Counters broken down per vnode in a host's `GET_STATS`.
const PER_VNODE: &[&str] = &[
    "keys",
    "keys_primary",
    "keys_replica",
    "ops_get",
    "ops_put",
    "ops_delete",
    "hops_total",
];

/// A `GET_STATS` fanned out to every vnode, until each has answered.
struct Gather {
    reply_to: ReplyTo,
    request_id: u64,
    replies: Vec<Option<Vec<(String, u64)>>>,
}

/// The virtual nodes of one process. See the module docs.
pub struct Host {
    addr: SocketAddr,
    vnodes: Vec<Node>,
    /// `(id, vnode)` in ring order: which vnode a key goes to.
    order: Vec<(Id, u16)>,
    /// Messages between vnodes, delivered by [`Host::pump`].
    local: VecDeque<Local>,
    gathers: BTreeMap<u64, Gather>,
    next_gather: u64,
    /// Vnodes still to leave, one at a time (`leave`).
    leaving: Option<usize>,
    /// Each vnode's `next_deadline`, as of the last time it was read: current for every
    /// vnode but the `stale` ones.
    deadlines: Vec<Millis>,
    /// Vnodes an input reached since the last [`Host::pump`].
    touched: VnodeSet,
    /// Vnodes pumped since their deadline was last read: it is read
    /// again only when a deadline is asked for ([`Host::next_deadline`], [`Host::tick`]), once
    /// per turn of the driver's loop rather than once per input (a pipeline of requests
    /// reaches the same vnodes again and again in one turn).
    stale: VnodeSet,
    /// Vnodes holding replica writes for the end of the turn ([`Host::end_turn`]).
    holding: VnodeSet,
    left_reported: bool,
    out: VecDeque<Output>,
    store_cache: StoreCache,
    /// The stores the host runs its vnodes' store ops on itself, if the driver gave them
    /// ([`Host::run_stores_inline`]).
    inline: Option<InlineStores>,
    /// The latest input whose outputs were left in its vnode's queue, if any is left (see
    /// the module docs): the next poll pumps at this time.
    unpumped: Option<Millis>,
    /// With inline stores, the requests received and not yet given to their vnode: the next
    /// pump gives them, in order, after prefetching their keys (`handle_request`).
    arrived: VecDeque<Arrival>,
    /// The vnodes' [`Node::inline_store_changes`], summed, as the store cache last saw them.
    inline_changes_seen: u64,
}

/// A request waiting in [`Host::arrived`], placed when it is a client's key operation
/// (computed once: the placement chooses the vnode and the store to prefetch, and the vnode
/// serves by it).
struct Arrival {
    now: Millis,
    reply_to: ReplyTo,
    frame: Frame,
    placement: Option<Placed>,
}

/// Where a key lands among the host's vnodes: its id, and the index in [`Host::order`] of the
/// first vnode at or after it clockwise (the order never changes).
#[derive(Clone, Copy)]
struct Placed {
    id: Id,
    at: usize,
}

/// Vnode indexes in the order they were added, each once: an O(1) insert and a drain in that
/// order (the host's touched and stale vnodes).
struct VnodeSet {
    list: Vec<u16>,
    member: Vec<bool>,
}

impl VnodeSet {
    /// An empty set of vnodes `0..n`.
    fn new(n: usize) -> VnodeSet {
        VnodeSet {
            list: Vec::with_capacity(n),
            member: vec![false; n],
        }
    }

    fn insert(&mut self, v: usize) {
        if !self.member[v] {
            self.member[v] = true;
            self.list.push(v as u16);
        }
    }

    fn len(&self) -> usize {
        self.list.len()
    }

    /// The `i`th vnode added.
    fn get(&self, i: usize) -> u16 {
        self.list[i]
    }

    /// Empties the set, yielding its vnodes in the order they were added.
    fn drain(&mut self) -> impl Iterator<Item = usize> + '_ {
        let member = &mut self.member;
        self.list.drain(..).map(move |v| {
            member[usize::from(v)] = false;
            usize::from(v)
        })
    }
}

enum Local {
    Request {
        to: u16,
        from: u16,
        frame: Frame,
    },
    Reply {
        to: u16,
        frame: Frame,
    },
    /// A store op answered from the [`StoreCache`] (`id`: the vnode's own).
    StoreDone {
        to: u16,
        id: StoreOpId,
        outcome: StoreOutcome,
    },
}

impl Host {
    /// A host at `addr` with one vnode per id in `ids` (vnode `i` at `ids[i]`; at least one,
    /// at most 2^16). Call [`Host::create`] or [`Host::join`] next.
    pub fn new(addr: SocketAddr, ids: &[Id], config: Config, now: Millis) -> Host {
        assert!(
            !ids.is_empty() && ids.len() <= 1 << VNODE_BITS,
            "a host has 1 to 65536 vnodes"
        ); // faulty code
        let positions: Vec<NodeRef> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| NodeRef {
                id: *id,
                addr: NodeAddr::new(addr, i as u16),
            })
            .collect();
        let mut vnodes: Vec<Node> = positions
            .iter()
            .map(|me| Node::new(*me, config.clone(), now))
            .collect();
        // The host's own positions are claimed from the start: a host joining through this
        // one while its vnodes are still finding each other (not all in the ring yet) chooses
        // around all of them (`claims.rs`).
        let _ = vnodes[0].claims.claim(now, 0, positions);
        Host::from_vnodes(addr, vnodes)
    }

    /// A host of nodes built by the caller (vnode `i` must be `vnodes[i]`, at `addr`).
    pub fn from_vnodes(addr: SocketAddr, vnodes: Vec<Node>) -> Host {
        let mut order: Vec<(Id, u16)> = vnodes.iter().map(|n| (n.me().id, n.me().addr.vnode)).collect();
        order.sort();
        let deadlines = vnodes.iter().map(|n| n.next_deadline()).collect();
        let v = vnodes.len();
        // See `store_cache.rs`: a store's lost data is found out within this age.
        let max_age_ms = vnodes[0].config().anti_entropy_interval_ms.saturating_mul(4);
        Host {
            addr,
            vnodes,
            order,
            deadlines,
            touched: VnodeSet::new(v),
            stale: VnodeSet::new(v),
            holding: VnodeSet::new(v),
            local: VecDeque::new(),
            gathers: BTreeMap::new(),
            next_gather: 0,
            leaving: None,
            left_reported: false,
            store_cache: StoreCache::new(max_age_ms),
            inline: None,
            out: VecDeque::new(),
            unpumped: None,
            arrived: VecDeque::new(),
            inline_changes_seen: 0,
        }
    }

    // ---- what the driver reads -------------------------------------------------------------

    /// The address the host listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on the host runs its vnodes' store ops itself, vnode `v`'s on `stores[v]`,
    /// instead of giving them to the driver as [`Output::Store`] (see `inline_stores.rs`). For
    /// stores that answer at once and deterministically (the memory store): an op runs when
    /// the host moves its vnode's outputs, and its result goes to the vnode there. Ops already
    /// given to the driver still come back through [`Host::store_done`].
    ///
    /// # Panics
    /// If `stores` does not hold one store per vnode (faulty code).
    pub fn run_stores_inline(&mut self, stores: Vec<Arc<dyn Store>>) {
        self.serve_on_stores_inline(stores.clone());
        self.inline = Some(InlineStores::new(stores));
    }

    /// From now on vnode `v` serves its clients' gets and writes on `stores[v]` in the call
    /// that serves them ([`Node::run_store_inline`]), while its other store ops still go to
    /// the driver as [`Output::Store`]: for a driver that runs every op at once but sees
    /// each of them (the simulator traces them and tracks the copies they write), with stores
    /// that answer at once and deterministically. [`Host::run_stores_inline`] does this and
    /// runs the other ops too.
    ///
    /// # Panics
    /// If `stores` does not hold one store per vnode (faulty code).
    pub fn serve_on_stores_inline(&mut self, stores: Vec<Arc<dyn Store>>) {
        assert_eq!(stores.len(), self.vnodes.len(), "one store per vnode"); // faulty code
        for (n, store) in self.vnodes.iter_mut().zip(stores) {
            n.run_store_inline(store);
        }
    }

    /// Vnode `i`'s state machine.
    pub fn vnode(&self, i: usize) -> &Node {
        &self.vnodes[i]
    }

    /// Every vnode, by index.
    pub fn vnodes(&self) -> &[Node] {
        &self.vnodes
    }

    /// Vnode 0: the node a host without virtual nodes is, and what `GET_INFO` describes.
    pub fn first(&self) -> &Node {
        &self.vnodes[0]
    }

    /// The host's phase: `Leaving` while any vnode leaves, `Left` when all have, otherwise
    /// the least advanced vnode's (the host is `Active` once every vnode is).
    pub fn phase(&self) -> Phase {
        let rank = |p: Phase| match p {
            Phase::Idle => 0,
            Phase::Joining => 1,
            Phase::Joined => 2,
            Phase::Active => 3,
            Phase::Leaving => 4,
            Phase::Left => 5,
        };
        if self.vnodes.iter().all(|n| n.phase() == Phase::Left) {
            return Phase::Left;
        }
        if self.leaving.is_some() || self.vnodes.iter().any(|n| n.phase() == Phase::Leaving) {
            return Phase::Leaving;
        }
        self.vnodes
            .iter()
            .map(|n| n.phase())
            .min_by_key(|p| rank(*p))
            .unwrap_or(Phase::Idle)
    }

    /// The earliest time any vnode needs a `tick` (`&mut`: the deadlines of the vnodes inputs
    /// reached since the last call are read here, not at each input).
    pub fn next_deadline(&mut self) -> Millis {
        self.pump_deferred();
        self.refresh_deadlines();
        self.deadlines.iter().copied().min().unwrap_or(Millis::MAX)
    }

    /// The next output for the driver.
    pub fn poll_output(&mut self) -> Option<Output> {
        if self.out.is_empty() {
            self.pump_deferred();
        }
        self.out.pop_front()
    }

    /// Client operations in flight, summed over the vnodes.
    pub fn ops_in_flight(&self) -> usize {
        self.vnodes.iter().map(|n| n.ops_in_flight()).sum()
    }

    /// Whether every vnode is in the ring.
    pub fn in_ring(&self) -> bool {
        self.vnodes.iter().all(|n| n.in_ring())
    }

    /// The vnode a store op id belongs to (see [`Output::Store`]).
    pub fn vnode_of_store_op(id: StoreOpId) -> u16 {
        (id & VNODE_MASK) as u16
    }

    // ---- life ------------------------------------------------------------------------------

    /// Starts a new ring: vnode 0 creates it and the others join it through vnode 0.
    pub fn create(&mut self, now: Millis) {
        self.vnodes[0].create(now);
        let first = NodeAddr::host(self.addr);
        for n in &mut self.vnodes[1..] {
            n.join(now, first);
        }
        self.touch_all();
        self.pump(now);
    }

    /// Joins the ring through the host at `via`: every vnode joins through it.
    pub fn join(&mut self, now: Millis, via: SocketAddr) {
        for n in &mut self.vnodes {
            n.join(now, NodeAddr::host(via));
        }
        self.touch_all();
        self.pump(now);
    }

    /// More hosts to try if the first join attempt fails.
    pub fn add_join_peers(&mut self, peers: &[SocketAddr]) {
        let peers: Vec<NodeAddr> = peers.iter().map(|p| NodeAddr::host(*p)).collect();
        for n in &mut self.vnodes {
            n.add_join_peers(&peers);
        }
        self.touch_all();
        self.pump_done();
    }

    /// Leaves the ring gracefully, one vnode at a time (each hands its range to its
    /// successor); [`Output::Left`] once the last has.
    pub fn leave(&mut self, now: Millis) {
        if self.leaving.is_none() {
            self.leaving = Some(0);
            self.vnodes[0].leave(now);
            self.touch(0);
            self.pump(now);
        }
    }

    /// While the host leaves, the vnode handing its range over now (they leave one after
    /// another, from vnode 0); `None` before the leave and once every vnode has left.
    pub fn leaving_vnode(&self) -> Option<usize> {
        self.leaving.filter(|&i| !self.vnodes[i].is_left())
    }

    // ---- inputs ----------------------------------------------------------------------------

    /// From now on the vnodes hold the replica writes of a turn and send each replica one
    /// batch of them when the driver calls [`Host::end_turn`] (see `replication.rs`,
    /// `ReplicaOutbox`): for a driver that ends its turns (the server after each turn of its
    /// event loop, the simulator after the inputs that reach a host at one moment). Without it
    /// each write is sent as it is made.
    pub fn hold_replica_writes(&mut self) {
        for n in &mut self.vnodes {
            n.hold_replica_writes();
        }
    }

    /// The end of a turn of the driver (all its input for now is handled): sends the replica
    /// writes the vnodes hold. Returns whether there were any (then there are outputs to poll).
    pub fn end_turn(&mut self, now: Millis) -> bool {
        self.pump_deferred();
        if self.holding.len() == 0 {
            return false;
        }
        for v in self.holding.drain() {
            self.vnodes[v].flush_replica_writes(now);
            self.touched.insert(v);
        }
        self.pump(now);
        true
    }

    /// Timers of every vnode whose deadline has come (the others have nothing due).
    pub fn tick(&mut self, now: Millis) {
        self.end_turn(now);
        self.refresh_deadlines();
        for v in 0..self.vnodes.len() {
            if self.deadlines[v] <= now {
                self.vnodes[v].tick(now);
                self.touch(v);
            }
        }
        self.pump(now);
    }

    /// A request from a client or a peer (see the module docs for which vnode gets it).
    ///
    /// With inline stores, the request waits for the next pump, which gives the requests
    /// received since the last one to their vnodes in order, a batch of up to
    /// [`PREFETCH_BATCH`] at a time with their keys prefetched first: a vnode serves a get or
    /// a write on the store in the call that gives it the request (`store_wait.rs`
    /// `store_now`), so the cache misses of a pipeline's lookups overlap only if they start
    /// before the first of them is served.
    pub fn handle_request(&mut self, now: Millis, reply_to: ReplyTo, frame: Frame) {
        debug_assert!(
            reply_to.0 & HOST_REPLY == 0,
            "driver reply channels are below 2^63"
        );
        if self.inline.is_some() {
            let placement = match frame.message.key() {
                Some(key) if frame.message.is_client_op() => Some(self.place(Id::of_key(key))),
                _ => None,
            };
            self.arrived.push_back(Arrival {
                now,
                reply_to,
                frame,
                placement,
            });
        } else {
            self.deliver(now, reply_to, frame, None);
        }
        self.defer_pump(now);
    }

    /// Gives a request to its vnode; `placement`: its key's, if computed already.
    fn deliver(&mut self, now: Millis, reply_to: ReplyTo, frame: Frame, placement: Option<Placed>) {
        match frame.vnode {
            Some(v) if usize::from(v) >= self.vnodes.len() => {
                let text = format!("this host has no vnode {v} (it runs {})", self.vnodes.len());
                self.out.push_back(Output::Reply {
                    to: reply_to,
                    frame: Frame::new(
                        frame.request_id,
                        Message::Error {
                            code: ErrorCode::BadRequest,
                            hops: 0,
                            text,
                        },
                    ),
                });
            }
            Some(v) => {
                let placement = placement.map(|p| KeyPlacement {
                    id: p.id,
                    served: false,
                });
                self.vnodes[usize::from(v)].handle_request_placed(now, reply_to, frame, placement);
                self.touch(usize::from(v));
            }
            None if matches!(frame.message, Message::GetStats) && self.vnodes.len() > 1 => {
                self.gather_stats(now, reply_to, frame)
            }
            None => {
                let (v, placement) = self.vnode_for(&frame, placement);
                self.vnodes[v].handle_request_placed(now, reply_to, frame, placement);
                self.touch(v);
            }
        }
    }

    /// Gives the requests that [`Host::handle_request`] left waiting to their vnodes, in
    /// order, each batch's keys prefetched first.
    fn deliver_arrived(&mut self) {
        while !self.arrived.is_empty() {
            if let Some(inline) = &mut self.inline {
                let order = &self.order;
                inline.prefetch(
                    self.arrived
                        .iter()
                        .take(PREFETCH_BATCH)
                        .filter_map(|a| a.placement)
                        .map(|p| (order[p.at].1, p.id)),
                );
            }
            for _ in 0..PREFETCH_BATCH {
                let Some(a) = self.arrived.pop_front() else {
                    break;
                };
                self.deliver(a.now, a.reply_to, a.frame, a.placement);
            }
        }
    }

    /// A reply from the host at `from` to a request a vnode sent.
    pub fn handle_reply(&mut self, now: Millis, from: SocketAddr, mut frame: Frame) {
        let v = (frame.request_id & VNODE_MASK) as usize;
        frame.request_id >>= VNODE_BITS;
        if let Some(n) = self.vnodes.get_mut(v) {
            n.handle_reply(now, from, frame);
            self.touch(v);
            self.pump(now);
        }
    }

    /// The driver could not send the request `request_id`.
    pub fn send_failed(&mut self, now: Millis, request_id: u64) {
        let v = (request_id & VNODE_MASK) as usize;
        if let Some(n) = self.vnodes.get_mut(v) {
            n.send_failed(now, request_id >> VNODE_BITS);
            self.touch(v);
            self.pump(now);
        }
    }

    /// The transport could not reach the host at `host`: every vnode hears it.
    pub fn peer_unreachable(&mut self, now: Millis, host: SocketAddr) {
        for n in &mut self.vnodes {
            n.peer_unreachable(now, host);
        }
        self.touch_all();
        self.pump(now);
    }

    /// A store op finished (`id` as [`Output::Store`] gave it).
    pub fn store_done(&mut self, now: Millis, id: StoreOpId, result: Result<StoreOutcome, StoreError>) {
        if self.give_store_result(now, id, result) {
            self.defer_pump(now);
        }
    }

    /// The result of the host's store op `id` (as [`Output::Store`] gives it) to the store
    /// cache and to its vnode, which is touched; false if no vnode has that index.
    fn give_store_result(
        &mut self,
        now: Millis,
        id: StoreOpId,
        result: Result<StoreOutcome, StoreError>,
    ) -> bool {
        let v = (id & VNODE_MASK) as usize;
        self.see_inline_changes();
        self.store_cache
            .finished(id, (id >> VNODE_BITS) & 1 == 1, &result);
        let Some(n) = self.vnodes.get_mut(v) else {
            return false;
        };
        n.store_done(now, id >> (VNODE_BITS + 1), result);
        self.touch(v);
        true
    }

    /// Tells the store cache that the store changed if a vnode wrote to its inline store
    /// since it last looked (a served write, `store_wait.rs` `store_now`): called before the
    /// cache gives or keeps an answer, so that no answer kept from before a write is given
    /// after it.
    fn see_inline_changes(&mut self) {
        let changes = self.vnodes.iter().map(Node::inline_store_changes).sum();
        if changes != self.inline_changes_seen {
            self.inline_changes_seen = changes;
            self.store_cache.changed();
        }
    }

    // ---- routing inside the host -----------------------------------------------------------

    /// The vnode a frame that names none goes to: for a key operation the vnode that serves
    /// the key (the first at or after it clockwise, if it owns it now), else, to be routed,
    /// the vnode closest before the key (its fingers start nearest); vnode 0 for anything
    /// else.
    ///
    /// A `FLAG_DIRECT` operation that no vnode serves goes to vnode 0: its sender addressed a
    /// position, and names every one but vnode 0 (the wire's default). It may be for vnode 0
    /// as a stand-in (`FLAG_FAILOVER`: the key's primary is down, and vnode 0 is the first
    /// live position after it) or as a holder of a copy (`FLAG_REPLICA_READ`), neither of
    /// which `serves` the key. The vnode closest before the key can do neither: it would
    /// redirect the operation to vnode 0 of this host, which would come back to it, until the
    /// sender's hop budget ran out.
    ///
    /// With the vnode, the key's placement when it was computed to choose it (the vnode need
    /// not hash the key again, nor ask again whether it serves it).
    fn vnode_for(&self, frame: &Frame, placement: Option<Placed>) -> (usize, Option<KeyPlacement>) {
        let unchecked = |id| KeyPlacement { id, served: false };
        if self.vnodes.len() == 1 {
            return (0, placement.map(|p| unchecked(p.id)));
        }
        let Some(key) = frame.message.key() else {
            return (0, None);
        };
        if !frame.message.is_client_op() {
            return (0, None);
        }
        let Placed { id, at } = placement.unwrap_or_else(|| self.place(Id::of_key(key)));
        let successor = self.order[at].1;
        if self.vnodes[usize::from(successor)].serves(&id) {
            return (usize::from(successor), Some(KeyPlacement { id, served: true }));
        }
        if frame.is_direct() {
            return (0, Some(unchecked(id)));
        }
        let before = (at + self.order.len() - 1) % self.order.len();
        (usize::from(self.order[before].1), Some(unchecked(id)))
    }

    /// Where key id `id` lands among the vnodes.
    fn place(&self, id: Id) -> Placed {
        let at = self.order.partition_point(|(p, _)| *p < id) % self.order.len();
        Placed { id, at }
    }

    /// Marks vnode `v` as reached by an input: [`Host::pump`] polls it and marks its deadline
    /// stale.
    fn touch(&mut self, v: usize) {
        self.touched.insert(v);
    }

    fn touch_all(&mut self) {
        for v in 0..self.vnodes.len() {
            self.touch(v);
        }
    }

    /// The touched vnodes' deadlines become stale; the touched set is emptied.
    fn pump_done(&mut self) {
        for v in self.touched.drain() {
            self.stale.insert(v);
            if self.vnodes[v].holds_replica_writes() {
                self.holding.insert(v);
            }
        }
    }

    /// Leaves the touched vnodes' outputs for the next poll (see the module docs).
    fn defer_pump(&mut self, now: Millis) {
        self.unpumped = Some(self.unpumped.map_or(now, |t| t.max(now)));
    }

    /// The pump [`Host::defer_pump`] left, if any.
    fn pump_deferred(&mut self) {
        if let Some(now) = self.unpumped {
            self.pump(now);
        }
    }

    /// The stale deadlines, read again.
    fn refresh_deadlines(&mut self) {
        for v in self.stale.drain() {
            self.deadlines[v] = self.vnodes[v].next_deadline();
        }
    }

    /// Moves the touched vnodes' outputs: to the driver, or to a sibling vnode (which is
    /// touched in turn), until none is left; then marks their deadlines stale.
    ///
    /// A pass polls every touched vnode dry; only an input given to a vnode (a sibling's
    /// message, a cached store answer, the next step of a leave) can make it produce more, so
    /// a pass that gave none is the last. (`route_output` calls a vnode only to give it the
    /// result of a store op it ran inline, the vnode being polled, whose outputs the same
    /// pass takes.) With inline stores, a pass starts by prefetching the key lookups of the
    /// store ops queued in the touched vnodes.
    fn pump(&mut self, now: Millis) {
        // Every touched vnode is polled: nothing is left for a deferred pump.
        self.unpumped = None;
        self.deliver_arrived();
        loop {
            let mut i = 0;
            let mut ran = false;
            while i < self.touched.len() {
                let v = self.touched.get(i);
                // Replies to the driver's requests need no routing: moved in one block.
                let replies_only = self.vnodes[usize::from(v)].drain_outputs_if(
                    &mut self.out,
                    |o| matches!(o, Output::Reply { to, .. } if to.0 & HOST_REPLY == 0),
                );
                if !replies_only {
                    while let Some(o) = self.vnodes[usize::from(v)].poll_output() {
                        ran |= self.route_output(now, v, o);
                    }
                }
                i += 1;
            }
            let mut delivered = ran;
            while let Some(l) = self.local.pop_front() {
                delivered = true;
                match l {
                    Local::Request { to, from, frame } => {
                        self.vnodes[usize::from(to)].handle_request(
                            now,
                            ReplyTo(HOST_REPLY | u64::from(from)),
                            frame,
                        );
                        self.touch(usize::from(to));
                    }
                    Local::Reply { to, frame } => {
                        self.vnodes[usize::from(to)].handle_reply(now, self.addr, frame);
                        self.touch(usize::from(to));
                    }
                    Local::StoreDone { to, id, outcome } => {
                        let n = &mut self.vnodes[usize::from(to)];
                        n.stats.store_answers_cached += 1;
                        n.store_done(now, id, Ok(outcome));
                        self.touch(usize::from(to));
                    }
                }
            }
            if self.advance_leave(now) {
                delivered = true;
            }
            if !delivered {
                self.pump_done();
                return;
            }
        }
    }

    /// Routes output `o` of vnode `v`. Whether it ran a store op inline and gave its result to
    /// a vnode other than `v` (which the caller has polled already, then).
    fn route_output(&mut self, now: Millis, v: u16, o: Output) -> bool {
        match o {
            Output::Send { to, mut frame } => {
                if to.host == self.addr && usize::from(to.vnode) < self.vnodes.len() {
                    frame.vnode = None;
                    self.local.push_back(Local::Request {
                        to: to.vnode,
                        from: v,
                        frame,
                    });
                } else {
                    frame.request_id = (frame.request_id << VNODE_BITS) | u64::from(v);
                    self.out.push_back(Output::Send { to, frame });
                }
            }
            Output::Reply { to, frame } if to.0 & HOST_REPLY != 0 => {
                if to.0 & GATHER_REPLY != 0 {
                    self.gathered(to.0 & !(HOST_REPLY | GATHER_REPLY), frame);
                } else {
                    self.local.push_back(Local::Reply {
                        to: (to.0 & VNODE_MASK) as u16,
                        frame,
                    });
                }
            }
            Output::Reply { to, frame } => self.out.push_back(Output::Reply { to, frame }),
            Output::Store { id, vnode, op } => {
                self.see_inline_changes();
                let id_of = |write: bool| (((id << 1) | u64::from(write)) << VNODE_BITS) | u64::from(vnode);
                match self.store_cache.submit(vnode, &op, now, id_of) {
                    Ok(host_id) => match &self.inline {
                        // Run now; the vnode's outputs from its result follow the others it
                        // queued (`v`'s: the caller polls it dry).
                        Some(inline) => {
                            let result = store::execute(inline.store(vnode), op);
                            self.give_store_result(now, host_id, result);
                            return vnode != v;
                        }
                        None => self.out.push_back(Output::Store {
                            id: host_id,
                            vnode,
                            op,
                        }),
                    },
                    Err(outcome) => self.local.push_back(Local::StoreDone {
                        to: vnode,
                        id,
                        outcome,
                    }),
                }
            }
            // `advance_leave` reports the host's.
            Output::Left => {}
        }
        false
    }

    /// One vnode at a time: when the leaving one is done, the next starts. Whether a vnode
    /// started to leave (it has outputs to move).
    fn advance_leave(&mut self, now: Millis) -> bool {
        let Some(i) = self.leaving else {
            return false;
        };
        if !self.vnodes[i].is_left() {
            return false;
        }
        if i + 1 < self.vnodes.len() {
            self.leaving = Some(i + 1);
            self.vnodes[i + 1].leave(now);
            self.touch(i + 1);
            return true;
        }
        if !self.left_reported {
            self.left_reported = true;
            self.out.push_back(Output::Left);
        }
        false
    }

    // ---- counters for the whole host -------------------------------------------------------

    fn gather_stats(&mut self, now: Millis, reply_to: ReplyTo, frame: Frame) {
        let g = self.next_gather;
        self.next_gather += 1;
        self.gathers.insert(
            g,
            Gather {
                reply_to,
                request_id: frame.request_id,
                replies: vec![None; self.vnodes.len()],
            },
        );
        for (v, n) in self.vnodes.iter_mut().enumerate() {
            let to = ReplyTo(HOST_REPLY | GATHER_REPLY | (g << VNODE_BITS) | v as u64);
            n.handle_request(now, to, Frame::new(0, Message::GetStats));
        }
        self.touch_all();
    }

    fn gathered(&mut self, tag: u64, frame: Frame) {
        let (g, v) = (tag >> VNODE_BITS, (tag & VNODE_MASK) as usize);
        let Some(gather) = self.gathers.get_mut(&g) else {
            return;
        };
        let counters = match frame.message {
            Message::Stats { counters } => counters,
            _ => Vec::new(),
        };
        if let Some(slot) = gather.replies.get_mut(v) {
            *slot = Some(counters);
        }
        if gather.replies.iter().any(|r| r.is_none()) {
            return;
        }
        let gather = self.gathers.remove(&g).expect("present"); // faulty code
        let per_vnode: Vec<Vec<(String, u64)>> = gather.replies.into_iter().flatten().collect();
        let mut counters = merge_counters(&per_vnode);
        let active = self.vnodes.iter().filter(|v| v.phase() == Phase::Active).count();
        counters.push(("vnodes_active".to_string(), active as u64));
        self.out.push_back(Output::Reply {
            to: gather.reply_to,
            frame: Frame::new(gather.request_id, Message::Stats { counters }),
        });
    }
}

/// One host's counters from its vnodes': each counter summed (or the largest, for
/// [`MAX_COUNTERS`]) in the first vnode's order, then `vnode.<i>.<name>` for [`PER_VNODE`].
pub fn merge_counters(per_vnode: &[Vec<(String, u64)>]) -> Vec<(String, u64)> {
    let Some(first) = per_vnode.first() else {
        return Vec::new();
    };
    let mut merged: Vec<(String, u64)> = first.iter().map(|(k, _)| (k.clone(), 0)).collect();
    for counters in per_vnode {
        for (k, v) in counters {
            if let Some(slot) = merged.iter_mut().find(|(name, _)| name == k) {
                slot.1 = if MAX_COUNTERS.contains(&k.as_str()) {
                    slot.1.max(*v)
                } else {
                    slot.1.saturating_add(*v)
                };
            }
        }
    }
    merged.push(("vnodes".to_string(), per_vnode.len() as u64));
    for (i, counters) in per_vnode.iter().enumerate() {
        for (k, v) in counters.iter().filter(|(k, _)| PER_VNODE.contains(&k.as_str())) {
            merged.push((format!("vnode.{i}.{k}"), *v));
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use bytes::Bytes;
    use chordkv_protocol::{Frame, Id, Message};

    use super::{Host, Output, ReplyTo};
    use crate::chord::{Config, Millis};
    use crate::store::{self, MemoryStore, Store};

    /// One host of 4 vnodes alone in its ring, driven as the server drives it: the store ops
    /// it hands out are run at once, the replies kept by request id.
    struct Rig {
        host: Host,
        stores: Vec<Arc<MemoryStore>>,
        now: Millis,
        replies: BTreeMap<u64, Message>,
        store_outputs: usize,
    }

    impl Rig {
        /// With `inline`, the host runs the stores itself (`run_stores_inline`).
        fn new(inline: bool) -> Rig {
            let addr = "127.0.0.1:7000".parse().expect("an address");
            let ids: Vec<Id> = (0..4)
                .map(|i| Id::hash(format!("vnode {i}").as_bytes()))
                .collect();
            let mut host = Host::new(addr, &ids, Config::with_stabilize_interval_ms(100), 0);
            let stores: Vec<Arc<MemoryStore>> = (0..4).map(|_| Arc::new(MemoryStore::new())).collect();
            if inline {
                host.run_stores_inline(stores.iter().map(|s| Arc::clone(s) as Arc<dyn Store>).collect());
            }
            host.create(0);
            let mut rig = Rig {
                host,
                stores,
                now: 0,
                replies: BTreeMap::new(),
                store_outputs: 0,
            };
            rig.drain();
            rig
        }

        fn drain(&mut self) {
            while let Some(o) = self.host.poll_output() {
                match o {
                    Output::Store { id, vnode, op } => {
                        self.store_outputs += 1;
                        let result = store::execute(&*self.stores[usize::from(vnode)], op);
                        self.host.store_done(self.now, id, result);
                    }
                    Output::Reply { frame, .. } => {
                        self.replies.insert(frame.request_id, frame.message);
                    }
                    Output::Send { .. } | Output::Left => {}
                }
            }
        }

        fn run_until(&mut self, t: Millis) {
            while self.now < t {
                self.now += 10;
                self.host.tick(self.now);
                self.drain();
            }
        }
    }

    /// The same requests, in pipelines of 50, to a host whose driver runs its stores and to
    /// one that runs them itself: the same replies (values, versions), the same data in each
    /// vnode's store, and no store op handed to the driver by the second.
    #[test]
    fn a_host_running_its_stores_inline_answers_as_one_whose_driver_runs_them() {
        let mut rigs = [Rig::new(false), Rig::new(true)];
        for rig in &mut rigs {
            rig.run_until(3_000);
            assert!(rig.host.in_ring(), "the host's vnodes formed a ring");
            let mut rid = 1;
            for round in 0..4 {
                for k in 0..50 {
                    let key = Bytes::from(format!("key {k}"));
                    let value = Bytes::from(format!("value {round} {k}"));
                    let message = match (round, k % 3) {
                        (1, 0) => Message::Delete { key },
                        (0, _) | (2, _) => Message::Put { key, value },
                        _ => Message::Get { key },
                    };
                    rig.host
                        .handle_request(rig.now, ReplyTo(1), Frame::new(rid, message));
                    rid += 1;
                }
                rig.drain();
                let t = rig.now + 100;
                rig.run_until(t);
            }
        }
        let [driven, inline] = &rigs;
        assert_eq!(driven.replies.len(), 200, "every request answered");
        assert_eq!(driven.replies, inline.replies);
        let found = |m: &Message| matches!(m, Message::GetReply { value: Some(_), .. });
        assert_eq!(inline.replies.values().filter(|m| found(m)).count(), 50 + 33);
        assert!(driven.store_outputs > 0);
        assert_eq!(inline.store_outputs, 0, "no store op reached the driver");
        for v in 0..4 {
            let items = |r: &Rig| {
                r.stores[v]
                    .scan(&Id::ZERO, &Id::MAX, None, 1_000)
                    .expect("a scan")
            };
            assert_eq!(items(driven), items(inline), "vnode {v}'s store");
        }
    }

    /// A host's range counts (`GET_STATS`' `keys_primary`) are kept in its store cache while
    /// nothing writes; writes served on the inline stores change the store without a store op
    /// the cache sees, and the next `GET_STATS` counts them.
    #[test]
    fn writes_served_on_inline_stores_make_the_kept_counts_stale() {
        let mut rig = Rig::new(true);
        rig.run_until(3_000);
        let mut rid = 1;
        let mut keys_primary = |rig: &mut Rig| {
            rid += 1;
            rig.host
                .handle_request(rig.now, ReplyTo(1), Frame::new(rid, Message::GetStats));
            rig.drain();
            match rig.replies.get(&rid) {
                Some(Message::Stats { counters }) => counters
                    .iter()
                    .find(|(name, _)| name == "keys_primary")
                    .map(|(_, v)| *v)
                    .expect("a keys_primary counter"),
                other => panic!("GET_STATS answered {other:?}"),
            }
        };
        assert_eq!(keys_primary(&mut rig), 0);
        // Asked again with nothing written: the kept counts.
        assert_eq!(keys_primary(&mut rig), 0);
        let cached = |rig: &Rig| -> u64 {
            rig.host
                .vnodes()
                .iter()
                .map(|n| n.stats.store_answers_cached)
                .sum()
        };
        assert!(
            cached(&rig) > 0,
            "the second GET_STATS was answered from the store cache"
        );
        for k in 0..10 {
            let put = Message::Put {
                key: Bytes::from(format!("key {k}")),
                value: Bytes::from_static(b"v"),
            };
            rig.host
                .handle_request(rig.now, ReplyTo(1), Frame::new(1_000 + k, put));
        }
        rig.drain();
        assert!(
            (1_000..1_010).all(|k| matches!(rig.replies.get(&k), Some(Message::PutReply { .. }))),
            "every write acknowledged"
        );
        assert_eq!(rig.store_outputs, 0, "the writes ran on the inline stores");
        assert_eq!(keys_primary(&mut rig), 10);
    }
}
