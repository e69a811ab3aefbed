//! The Chord core: one node's protocol logic as a deterministic state machine.
//!
//! It has no sockets, threads or clock. A driver (the mio [`crate::server`] in production,
//! the [`crate::sim`] network in tests and the simulator) feeds it inputs, each with the
//! current time in milliseconds, and drains the outputs it produces:
//!
//! ```text
//!                 handle_request(now, reply_to, frame)   ── a request from a client or peer
//!                 handle_reply(now, from, frame)         ── a reply to a request we sent
//!   driver ──►    store_done(now, op_id, result)         ── a store op finished
//!                 peer_unreachable(now, addr)            ── the transport gave up on a peer
//!                 tick(now)                              ── timers (call at next_deadline())
//!
//!   driver ◄──    poll_output() -> Send { to, frame }    ── a request to a peer
//!                                  Reply { to, frame }   ── a reply on an inbound connection
//!                                  Store { id, op }      ── run this op, report store_done
//!                                  Left                  ── graceful leave finished
//! ```
//!
//! Given the same seed and the same inputs at the same times it produces the same outputs:
//! every map it iterates is ordered, and its only randomness (timer jitter) comes from a
//! seeded [`Rng`].
//!
//! ## The protocol (SIGCOMM'01 section 4, with the successor list of section 5)
//!
//! - **Routing is iterative.** The node that receives a client operation (the *entry*)
//!   drives the lookup itself: it asks the closest preceding node it knows for the key's
//!   successor (`FIND_SUCCESSOR`), which answers with the owner and the nodes after it
//!   (`Found`) or with a node closer to the key (`Closer`), and then sends the operation to the
//!   owner with `FLAG_DIRECT` set. The owner serves it, or answers `REDIRECT` if the entry's
//!   view was stale. We chose iterative routing because the entry sees every hop: it detects a
//!   dead hop by its timeout and routes around it with its own table, it counts hops exactly,
//!   and intermediate nodes keep no per-request state. It is also how the Chord paper's
//!   simulator routes, so hop counts compare directly. A hop is one message sent to another
//!   node on the way to the owner (a lookup step, the direct operation, or a redirect
//!   followed); a key served by the entry itself took 0 hops.
//! - **Maintenance**: `stabilize` asks the successor for its predecessor and successor list
//!   (`GET_NEIGHBORS`), adopts a closer successor, then `NOTIFY`s it; `fix_fingers` refreshes
//!   fingers round-robin (those resolvable from the successor list at once, then one remote
//!   lookup per round); `check_predecessor` pings the predecessor and forgets it on timeout.
//! - **Failures**: every request to a peer has a deadline; a peer that misses it (or that the
//!   transport reports unreachable) is dropped from the successor list, the fingers and the
//!   predecessor, and avoided for `dead_peer_ttl_ms`. The successor list supplies the next live
//!   successor.
//! - **Ownership and handoff** (`handoff.rs`): key `k` belongs to the first node `n` with
//!   `k ∈ (predecessor(n), n]`. A node accepts a new predecessor only when it is active and
//!   not itself receiving a range, and then streams the keys of the predecessor's new range to
//!   it in acknowledged batches; the receiver holds requests for that range until the last
//!   batch is stored. A leaving node does the same towards its successor. No acknowledged write
//!   is lost by a join or a leave, including writes that arrive during the transfer.

pub mod cache;
pub mod clock;
pub mod config;
mod handoff;
mod lease;
pub mod membership;
mod ops;
mod replication;
pub mod routing;
mod sync;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use chordkv_protocol::{
    in_half_open, in_open, ErrorCode, Frame, Id, Lookup, MemberEvent, Message, NodeInfo, NodeRef, NodeStatus,
};

use crate::rng::Rng;
use crate::store::{StoreError, StoreOp, StoreOutcome};
use cache::LocationCache;
use clock::Hlc;
pub use config::{Config, Routing};
use handoff::{Incoming, LeaveState, Outgoing};
use lease::Leases;
use membership::Membership;
use ops::ClientOp;
use replication::PendingWrite;
use routing::RoutingTable;
use sync::{SyncRound, SyncWait};

/// Milliseconds on the driver's clock (monotonic; the epoch is the driver's choice).
pub type Millis = u64;

/// An inbound connection (or simulated sender) to answer on, chosen by the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyTo(pub u64);

/// Identifies a store op between `Output::Store` and `store_done`.
pub type StoreOpId = u64;

/// What the state machine asks its driver to do.
#[derive(Debug)]
pub enum Output {
    /// Send a request to the peer at `to`; its reply comes back through `handle_reply`.
    Send { to: SocketAddr, frame: Frame },
    /// Answer a request that came in through `handle_request` with this `ReplyTo`.
    Reply { to: ReplyTo, frame: Frame },
    /// Run a store op and report its result through `store_done` with this id.
    Store { id: StoreOpId, op: StoreOp },
    /// The graceful leave is complete: the node has handed off its keys and may stop.
    Left,
}

/// Where the node is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Created; neither `create` nor `join` called yet.
    Idle,
    /// Looking up its successor through a known node.
    Joining,
    /// In the ring (it has a successor) but not yet the owner of a range.
    Joined,
    /// Owns `(predecessor, self]`.
    Active,
    /// Handing its range to its successor.
    Leaving,
    /// Finished leaving.
    Left,
}

/// A request we sent and are waiting on.
#[derive(Clone, Debug)]
struct Rpc {
    to: SocketAddr,
    deadline: Millis,
    kind: RpcKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RpcKind {
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
}

impl RpcKind {
    /// Whether this request is routing maintenance (counted in `maintenance_sent`): keeping
    /// the ring, fingers and membership current, as opposed to client operations and data.
    fn is_maintenance(self) -> bool {
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

/// A neighbour that stopped answering (partition policy `available`).
#[derive(Clone, Copy, Debug)]
struct Departed {
    node: NodeRef,
    since: Millis,
    /// It was one of our replicas: it may hold old copies of our range.
    holder: bool,
}

/// Departed neighbours remembered at most (the oldest are dropped first).
const MAX_DEPARTED: usize = 64;
/// Departed neighbours probed per stabilize period.
const DEPARTED_PROBES_PER_ROUND: usize = 8;

/// Most members in one `MEMBERS` page.
pub const MEMBERS_PAGE: usize = 4_096;
/// Owners after the first that a one-hop lookup names (where to fail over).
const ONEHOP_LIST: usize = 3;

/// A membership broadcast in flight to one child: resent to the next member of the child's
/// part if the child does not answer.
#[derive(Clone, Debug)]
struct Broadcast {
    to: NodeRef,
    limit: Id,
    events: Arc<Vec<MemberEvent>>,
}

/// A maintenance lookup (join, fix_fingers): find `successor(target)`.
#[derive(Clone, Debug)]
struct MaintLookup {
    target: Id,
    purpose: LookupPurpose,
    deadline: Millis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LookupPurpose {
    Join,
    /// A node left alone after losing every peer looks for its successor again.
    Rejoin,
    Finger(usize),
}

/// What an in-flight store op is for.
#[derive(Debug)]
enum StoreWait {
    /// A client operation served here; reply when done.
    Serve {
        to: ReplyTo,
        request_id: u64,
        hops: u16,
        kind: ServeKind,
        key_id: Id,
        /// The pending replicated write whose reply this is, with `AckPolicy::All`.
        write: Option<u64>,
    },
    /// A transfer batch being stored; ack when done.
    Apply {
        to: ReplyTo,
        request_id: u64,
        transfer_id: u64,
        start: Id,
        end: Id,
        last: bool,
    },
    /// An outgoing transfer's scan or removal.
    TransferScan(u64),
    TransferRemove(u64),
    Info {
        to: ReplyTo,
        request_id: u64,
    },
    /// Stats, step 1: every live key; step 2: the primary range's.
    Stats {
        to: ReplyTo,
        request_id: u64,
    },
    StatsPrimary {
        to: ReplyTo,
        request_id: u64,
        total: u64,
    },
    /// A replica write being stored; ack when done.
    ReplicaApply {
        to: ReplyTo,
        request_id: u64,
    },
    Sync(SyncWait),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServeKind {
    Get,
    Put(u64),
    Delete(u64),
}

/// How `route` resolves a target id from this node's own tables.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Route {
    /// This node owns it.
    Local,
    /// The owner, then the nodes after it.
    Found(Vec<NodeRef>),
    /// A node closer to the target; ask it.
    Closer(NodeRef),
    /// This node knows no other node and does not own the target (it lost every peer while
    /// joining or leaving): try again later.
    Unknown,
}

/// Counters reported by `GET_STATS`.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub ops_get: u64,
    pub ops_put: u64,
    pub ops_delete: u64,
    pub ops_coordinated: u64,
    pub ops_failed: u64,
    pub hops_total: u64,
    pub hops_max: u64,
    pub redirects_sent: u64,
    pub lookups_answered: u64,
    pub rpc_timeouts: u64,
    pub peers_failed: u64,
    pub requests_held: u64,
    pub transfers_in: u64,
    pub transfers_out: u64,
    pub keys_received: u64,
    pub keys_sent: u64,
    pub store_errors: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    pub replica_writes_sent: u64,
    pub replica_writes_applied: u64,
    pub failovers_served: u64,
    pub anti_entropy_rounds: u64,
    pub anti_entropy_keys_repaired: u64,
    pub anti_entropy_last_repaired: u64,
    pub tombstones_collected: u64,
    pub stray_copies_collected: u64,
    /// Client operations whose owner came from the location cache...
    pub cache_hits: u64,
    /// ...or that needed a remote lookup the cache could not save...
    pub cache_misses: u64,
    /// ...and cache hits whose owner redirected (a stale entry: one extra hop).
    pub cache_stale: u64,
    /// Routing maintenance requests sent (stabilize, notify, check_predecessor, finger and
    /// join lookups, membership pages and broadcasts); each has one reply.
    pub maintenance_sent: u64,
    /// Membership events detected here and disseminated (one-hop).
    pub member_events_detected: u64,
    /// Membership events received that changed the table (one-hop).
    pub member_events_applied: u64,
    /// Client operations refused because their deadline had passed (or was too close for the
    /// clock offset bound) when they reached the owner: never applied.
    pub late_requests_refused: u64,
    /// Client operations refused for want of a valid lease on their range (`consistent`).
    pub ops_refused_no_lease: u64,
    /// Messages refused for carrying a version from the future (`max_clock_offset_ms`).
    pub future_versions_refused: u64,
    /// Times the store reported it had lost its data.
    pub store_losses: u64,
    /// Successors adopted from a departed node that answered again (`available`: rings that
    /// formed during a partition merging).
    pub ring_merges: u64,
    /// Write hops delivered a second time and dropped.
    pub duplicates_dropped: u64,
    /// Predecessors replaced by a nearer member found through `check_predecessor`.
    pub predecessors_corrected: u64,
    /// Starts that found the ring still listing this node, which took its place at once.
    pub rejoined_as_member: u64,
}

/// One Chord node's state machine. See the module docs.
pub struct Node {
    me: NodeRef,
    config: Config,
    phase: Phase,
    predecessor: Option<NodeRef>,
    routing: RoutingTable,
    clock: Hlc,
    rng: Rng,
    /// Where `join` started, until the join lookup has found a successor.
    bootstrap: Option<SocketAddr>,
    /// When to retry a failed join lookup.
    join_retry_at: Option<Millis>,
    /// Peers seen recently (the bootstrap node, successors), tried in turn when the node finds
    /// itself alone, so an isolated node finds its way back into the ring after a partition.
    seeds: VecDeque<SocketAddr>,

    next_request_id: u64,
    rpcs: BTreeMap<u64, Rpc>,
    rpc_deadlines: BTreeSet<(Millis, u64)>,
    lookups: BTreeMap<u64, MaintLookup>,
    next_lookup_id: u64,
    /// Finger index fix_fingers will refresh next.
    next_finger: usize,
    /// Whether a fix_fingers lookup is in flight (one at a time).
    finger_lookup_busy: bool,

    ops: BTreeMap<u64, ClientOp>,
    /// Client writes waiting for their replicas (`AckPolicy::All`).
    writes: BTreeMap<u64, PendingWrite>,
    next_write_id: u64,
    /// The anti-entropy round in progress, if any.
    /// Anti-entropy rounds in progress (one periodic round at a time, and lease catch-ups).
    syncs: BTreeMap<u64, SyncRound>,
    next_sync_id: u64,
    next_anti_entropy: Millis,
    /// Predecessor and replica targets as of the last check, to notice changes.
    replica_view: Vec<SocketAddr>,
    /// Since when `replica_view` has not changed.
    replica_view_since: Millis,
    /// Our predecessor (by address) and its own predecessors, nearest first, as it last told
    /// us: the ranges this node keeps copies of and may stand in for.
    pred_list: Option<(SocketAddr, Vec<NodeRef>)>,
    /// The incarnation of our predecessor, from its last notify (a new one: it restarted).
    pred_incarnation: Option<u64>,
    /// Nodes that left the ring or were forgotten, until when they are kept out of every list
    /// (a stale successor list must not bring them back).
    gone: BTreeMap<SocketAddr, (NodeRef, Millis)>,
    /// `available`: neighbours dropped because they stopped answering, probed until they answer
    /// (ring merging after a partition) or `departed_ttl_ms` passes; `holder`: it kept copies of
    /// our range, so our tombstones wait for it.
    departed: BTreeMap<SocketAddr, Departed>,
    /// Leases held and promised (partition policy `consistent`, `lease.rs`).
    leases: Leases,
    /// The store reported that it lost its data and it has not been refilled yet.
    store_lost: bool,
    /// Whether the successor list reaches around the whole ring back to us (a ring of at
    /// most `successors + 1` nodes), as the last stabilize saw it.
    succ_wrapped: bool,
    /// `consistent`: the predecessor the nearest live node before us last confirmed...
    pred_confirmed: Option<SocketAddr>,
    /// ...and, when that node's list did not reach us, the node to ask next (nearer to us).
    pred_hint: Option<NodeRef>,
    /// Write hops served, by deadline and fingerprint, until their deadline: a second delivery
    /// of one is dropped (see `ops.rs`, `first_delivery`).
    seen_writes: BTreeSet<(Millis, u64)>,
    seen_fingerprints: BTreeSet<u64>,
    /// Ranges primaries declared us a replica of (by syncing with us), and when last.
    declared: Vec<(Id, Id, Millis)>,
    next_op_id: u64,
    /// Ops waiting to be retried: (when, op id).
    op_retries: BTreeSet<(Millis, u64)>,

    store_waits: BTreeMap<StoreOpId, StoreWait>,
    next_store_op: StoreOpId,

    incoming: Vec<Incoming>,
    /// Ranges whose transfers finished recently, so a late notify reply does not reopen them.
    finished_incoming: VecDeque<(Id, Id)>,
    outgoing: BTreeMap<u64, Outgoing>,
    next_transfer_id: u64,
    leave: Option<LeaveState>,

    /// Peers that failed to answer, until when they are avoided.
    dead: BTreeMap<SocketAddr, Millis>,

    next_stabilize: Millis,
    next_fix_fingers: Millis,
    next_check_predecessor: Millis,

    /// One-hop routing's membership table (`None` for finger routing).
    members: Option<Membership>,
    /// Events detected since the last broadcast (one-hop).
    pending_events: Vec<MemberEvent>,
    broadcasts: BTreeMap<u64, Broadcast>,
    next_broadcast: u64,
    /// The location cache (capacity 0 when off).
    cache: LocationCache,
    /// When the node was created (for `uptime_ms`).
    created_at: Millis,

    out: VecDeque<Output>,
    stats: Stats,
}

impl Node {
    /// A node that will be known as `me`. Call [`Node::create`] or [`Node::join`] next.
    pub fn new(me: NodeRef, config: Config, now: Millis) -> Node {
        let rng = Rng::new(config.seed ^ u64::from_be_bytes(me.id.0[..8].try_into().unwrap_or([0; 8])));
        Node {
            me,
            routing: RoutingTable::new(me, config.routing),
            members: (config.routing == Routing::OneHop).then(|| Membership::new(me)),
            pending_events: Vec::new(),
            broadcasts: BTreeMap::new(),
            next_broadcast: 1,
            cache: LocationCache::new(config.cache_entries),
            created_at: now,
            phase: Phase::Idle,
            predecessor: None,
            clock: Hlc::default(),
            rng,
            bootstrap: None,
            join_retry_at: None,
            seeds: VecDeque::new(),
            next_request_id: 1,
            rpcs: BTreeMap::new(),
            rpc_deadlines: BTreeSet::new(),
            lookups: BTreeMap::new(),
            next_lookup_id: 1,
            next_finger: 0,
            finger_lookup_busy: false,
            ops: BTreeMap::new(),
            writes: BTreeMap::new(),
            next_write_id: 1,
            syncs: BTreeMap::new(),
            next_sync_id: 1,
            next_anti_entropy: now,
            replica_view: Vec::new(),
            replica_view_since: now,
            pred_list: None,
            pred_incarnation: None,
            gone: BTreeMap::new(),
            departed: BTreeMap::new(),
            leases: Leases::default(),
            store_lost: false,
            succ_wrapped: false,
            pred_confirmed: None,
            pred_hint: None,
            seen_writes: BTreeSet::new(),
            seen_fingerprints: BTreeSet::new(),
            declared: Vec::new(),
            next_op_id: 1,
            op_retries: BTreeSet::new(),
            store_waits: BTreeMap::new(),
            next_store_op: 1,
            incoming: Vec::new(),
            finished_incoming: VecDeque::new(),
            outgoing: BTreeMap::new(),
            next_transfer_id: 1,
            leave: None,
            dead: BTreeMap::new(),
            next_stabilize: now,
            next_fix_fingers: now,
            next_check_predecessor: now,
            out: VecDeque::new(),
            stats: Stats::default(),
            config,
        }
    }

    // ---- accessors -------------------------------------------------------------------------

    pub fn me(&self) -> NodeRef {
        self.me
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn predecessor(&self) -> Option<NodeRef> {
        self.predecessor
    }

    /// The successor list, nearest first (empty when alone).
    pub fn successors(&self) -> &[NodeRef] {
        self.routing.successors()
    }

    /// The immediate successor (`me` when alone).
    pub fn successor(&self) -> NodeRef {
        self.routing.successors().first().copied().unwrap_or(self.me)
    }

    pub fn routing(&self) -> &RoutingTable {
        &self.routing
    }

    /// The one-hop membership table, if this node routes one-hop.
    pub fn membership(&self) -> Option<&Membership> {
        self.members.as_ref()
    }

    /// Distinct nodes this node's routing state names: the membership table (one-hop), or the
    /// fingers and successors. The location cache is counted apart (`cache_len`).
    pub fn routing_state(&self) -> usize {
        match &self.members {
            Some(m) => m.len().saturating_sub(1),
            None => self.routing.distinct_nodes(),
        }
    }

    /// Entries in the location cache.
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the node is part of a ring (it has found its place, even if it owns no range yet).
    pub fn in_ring(&self) -> bool {
        matches!(self.phase, Phase::Joined | Phase::Active | Phase::Leaving)
    }

    /// Whether the node serves its range and no transfer is in flight.
    pub fn is_settled(&self) -> bool {
        self.phase == Phase::Active && self.incoming.is_empty() && self.outgoing.is_empty()
    }

    /// Client operations this node is coordinating.
    pub fn ops_in_flight(&self) -> usize {
        self.ops.len()
    }

    /// The next output to carry out, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When `tick` next has work to do (`Millis::MAX` when never: idle or left).
    pub fn next_deadline(&self) -> Millis {
        if matches!(self.phase, Phase::Idle | Phase::Left) {
            return Millis::MAX;
        }
        let mut d = self
            .next_stabilize
            .min(self.next_fix_fingers)
            .min(self.next_check_predecessor);
        if let Some((t, _)) = self.rpc_deadlines.first() {
            d = d.min(*t);
        }
        if let Some((t, _)) = self.op_retries.first() {
            d = d.min(*t);
        }
        for inc in &self.incoming {
            d = d.min(inc.deadline);
            let release = self.config.rpc_timeout_ms / 2;
            if let Some(since) = inc.held.iter().filter(|h| h.1.is_direct()).map(|h| h.3).min() {
                d = d.min(since + release);
            }
        }
        if let Some(l) = &self.leave {
            d = d.min(l.deadline);
            // A retry is due only once no transfer holds the leave up; until then the
            // maintenance rounds re-check it.
            let blocked = !self.incoming.is_empty() || !self.outgoing.is_empty();
            if l.stage == handoff::LeaveStage::Waiting && !blocked {
                d = d.min(l.retry_at);
            }
        }
        if let Some(t) = self.join_retry_at {
            d = d.min(t);
        }
        if self.config.replicas > 0 {
            d = d.min(self.next_anti_entropy);
        }
        d
    }

    /// Whether the graceful leave has finished (`Output::Left` was emitted).
    pub fn is_left(&self) -> bool {
        self.phase == Phase::Left
    }

    // ---- lifecycle -------------------------------------------------------------------------

    /// Starts a new ring with this node alone in it.
    pub fn create(&mut self, now: Millis) {
        self.phase = Phase::Active;
        self.predecessor = None;
        self.schedule_maintenance(now);
    }

    /// Joins the ring that the node at `via` belongs to.
    pub fn join(&mut self, now: Millis, via: SocketAddr) {
        self.phase = Phase::Joining;
        self.bootstrap = Some(via);
        self.remember_seed(via);
        self.lookup_own_id(now, via, LookupPurpose::Join);
        self.schedule_maintenance(now);
    }

    /// More nodes to join through after the one given to [`Node::join`]: a join whose node
    /// does not answer is retried through the next of them in turn.
    pub fn add_join_peers(&mut self, peers: &[SocketAddr]) {
        for &peer in peers {
            self.remember_seed(peer);
        }
    }

    /// Starts a graceful leave: the keys go to the successor, then `Output::Left`.
    pub fn leave(&mut self, now: Millis) {
        self.start_leave(now);
    }

    /// Places the node straight into a ring whose membership the caller knows, as the Chord
    /// paper's simulator does for large rings instead of N sequential joins: the predecessor,
    /// the successor list, every finger from `successor_of` (the true successor of a point),
    /// and for one-hop routing the membership table (`members`, sorted by id, shared). The
    /// node is active at once, owns `(predecessor, self]` and runs its maintenance from `now`
    /// like any other node. For simulators; a deployed node joins with [`Node::join`].
    pub fn bootstrap(
        &mut self,
        now: Millis,
        predecessor: Option<NodeRef>,
        successors: &[NodeRef],
        successor_of: impl FnMut(&Id) -> Option<NodeRef>,
        members: Option<Arc<Vec<NodeRef>>>,
    ) {
        self.phase = Phase::Active;
        self.predecessor = predecessor.filter(|p| p.addr != self.me.addr);
        self.routing
            .set_successors(successors.iter().copied(), self.config.successors);
        self.succ_wrapped = successors.len() < self.config.successors;
        self.routing.fill_fingers(successor_of);
        if let (Some(table), Some(members)) = (self.members.as_mut(), members) {
            *table = Membership::from_sorted(members);
        }
        if let Some(s) = successors.first() {
            self.remember_seed(s.addr);
        }
        self.schedule_maintenance(now);
    }

    fn schedule_maintenance(&mut self, now: Millis) {
        self.next_stabilize = now;
        self.next_fix_fingers = now + self.jitter(self.config.fix_fingers_interval_ms);
        self.next_check_predecessor = now + self.jitter(self.config.check_predecessor_interval_ms);
    }

    /// `interval` plus or minus 10%, so nodes started together drift apart.
    fn jitter(&mut self, interval: u64) -> u64 {
        let spread = interval / 10;
        if spread == 0 {
            return interval.max(1);
        }
        interval - spread + self.rng.below(2 * spread + 1)
    }

    // ---- inputs ----------------------------------------------------------------------------

    /// Timers: maintenance rounds, request deadlines, retries. Safe to call at any time.
    pub fn tick(&mut self, now: Millis) {
        self.expire_rpcs(now);
        self.retry_ops(now);
        self.expire_incoming(now);
        self.expire_dead(now);
        self.join_if_due(now);
        if matches!(self.phase, Phase::Idle | Phase::Left) {
            return;
        }
        if now >= self.next_stabilize {
            self.next_stabilize = now + self.jitter(self.config.stabilize_interval_ms);
            self.stabilize(now);
            self.flush_member_events(now);
            self.maintain_leases(now);
        }
        if now >= self.next_check_predecessor {
            self.next_check_predecessor = now + self.jitter(self.config.check_predecessor_interval_ms);
            self.check_predecessor(now);
        }
        if now >= self.next_fix_fingers {
            self.next_fix_fingers = now + self.jitter(self.config.fix_fingers_interval_ms);
            self.fix_fingers(now);
        }
        if self.config.replicas > 0 {
            self.watch_replica_set(now);
            if now >= self.next_anti_entropy {
                // A round that cannot start now (one is running, a range is arriving) is
                // retried at the next stabilize period, so a change of replicas during a round
                // is not left for the next full interval.
                let started = self.start_sync_round(now);
                let wait = if started {
                    // Once per interval: collection scans the whole store.
                    self.collect_stray_copies(now);
                    self.config.anti_entropy_interval_ms
                } else {
                    self.config.stabilize_interval_ms
                };
                self.next_anti_entropy = now + self.jitter(wait);
            }
        }
        self.pump_leave(now);
    }

    /// A request from a client or a peer, to be answered with `Output::Reply { to: reply_to }`.
    pub fn handle_request(&mut self, now: Millis, reply_to: ReplyTo, frame: Frame) {
        self.stats.messages_received += 1;
        let rid = frame.request_id;
        match frame.message {
            Message::Get { .. } | Message::Put { .. } | Message::Delete { .. } => {
                self.handle_client_op(now, reply_to, frame)
            }
            Message::FindSuccessor { .. } if !matches!(self.phase, Phase::Active | Phase::Leaving) => {
                // A node outside the ring would answer from empty tables ("I am alone, so I own
                // everything"), which would lead the asker astray: make it ask again later.
                let text = format!("node is {:?}, not in a ring", self.phase);
                self.reply(
                    reply_to,
                    rid,
                    Message::Error {
                        code: ErrorCode::NotReady,
                        hops: 0,
                        text,
                    },
                );
            }
            Message::FindSuccessor { id } => {
                self.stats.lookups_answered += 1;
                let lookup = match self.route(&id) {
                    Route::Local => {
                        let successors = self.extend_list(self.owner_list());
                        Lookup::Found {
                            predecessor: self.predecessor,
                            down: self.down_bits(&successors),
                            successors,
                        }
                    }
                    Route::Found(list) => {
                        let list = self.extend_list(list);
                        Lookup::Found {
                            predecessor: list.first().and_then(|o| self.known_predecessor_of(o)),
                            down: self.down_bits(&list),
                            successors: list,
                        }
                    }
                    Route::Closer(node) => Lookup::Closer { node },
                    // An isolated node answers as a ring of one, so isolated nodes looking for
                    // each other after a partition or a crash wave form a ring again. It still
                    // serves no key until it has a successor (see `owns`).
                    Route::Unknown if self.is_isolated() => Lookup::Found {
                        predecessor: None,
                        successors: vec![self.me],
                        down: 0,
                    },
                    Route::Unknown => {
                        let text = "node knows no peer right now".to_string();
                        let msg = Message::Error {
                            code: ErrorCode::NotReady,
                            hops: 0,
                            text,
                        };
                        return self.reply(reply_to, rid, msg);
                    }
                };
                self.reply(reply_to, rid, Message::FindSuccessorReply { lookup });
            }
            Message::GetNeighbors if matches!(self.phase, Phase::Idle | Phase::Joining) => {
                // A node still looking for its place knows no neighbours; an empty answer
                // would wipe the asker's successor list.
                let text = format!("node is {:?}, not in a ring", self.phase);
                let msg = Message::Error {
                    code: ErrorCode::NotReady,
                    hops: 0,
                    text,
                };
                self.reply(reply_to, rid, msg);
            }
            Message::GetNeighbors => {
                let successors = self.routing.successors().to_vec();
                let msg = Message::Neighbors {
                    predecessors: self.predecessors(),
                    down: self.down_bits(&successors),
                    successors,
                    gone: self.gone.values().map(|(n, _)| *n).collect(),
                };
                self.reply(reply_to, rid, msg);
            }
            Message::Notify {
                node,
                incarnation,
                active,
            } => self.handle_notify(now, reply_to, rid, node, incarnation, active),
            Message::Lease {
                primary,
                start,
                holder,
            } => self.handle_lease(now, reply_to, rid, primary, start, holder),
            Message::Forget { node } => self.handle_forget(now, reply_to, rid, node),
            Message::Ping => self.reply(reply_to, rid, Message::Pong { node: self.me }),
            Message::Leaving {
                node,
                predecessor,
                successors,
                clock,
                gone,
            } => {
                // The leaving node's neighbours announce its leave (one-hop).
                if self.members.as_ref().is_some_and(|m| m.contains(&node.id)) {
                    self.detect_event(now, node, false);
                }
                self.learn_gone(now, &gone);
                self.handle_leaving(now, reply_to, rid, node, predecessor, successors, clock)
            }
            Message::GetMembers { after } => {
                let (nodes, more) = match &self.members {
                    Some(m) => m.page(&after, MEMBERS_PAGE),
                    None => (self.known_run(), false),
                };
                self.reply(reply_to, rid, Message::Members { nodes, more });
            }
            Message::MemberEvents { limit, events } => {
                let applied = self.apply_member_events(now, &events, &limit);
                self.reply(reply_to, rid, Message::MemberEventsAck { applied });
            }
            Message::Transfer {
                transfer_id,
                start,
                end,
                items,
                last,
                clock,
            } => self.handle_transfer(now, reply_to, rid, transfer_id, start, end, items, last, clock),
            Message::GetInfo => {
                self.store_op(
                    StoreOp::Count,
                    StoreWait::Info {
                        to: reply_to,
                        request_id: rid,
                    },
                );
            }
            Message::GetStats => {
                self.store_op(
                    StoreOp::Count,
                    StoreWait::Stats {
                        to: reply_to,
                        request_id: rid,
                    },
                );
            }
            Message::Replicate { items } => self.handle_replicate(now, reply_to, rid, items),
            Message::SyncDigests { start, end, digests } => {
                self.handle_sync_digests(now, reply_to, rid, start, end, digests)
            }
            Message::SyncKeys { start, end, keys } => {
                self.handle_sync_keys(now, reply_to, rid, start, end, keys)
            }
            Message::CollectTombstones { start, end, before } => {
                self.handle_collect(reply_to, rid, start, end, before)
            }
            other => {
                let text = format!("{} is not a request", other.name());
                self.reply(
                    reply_to,
                    rid,
                    Message::Error {
                        code: ErrorCode::BadRequest,
                        hops: 0,
                        text,
                    },
                );
            }
        }
    }

    /// A reply from `from` to a request we sent.
    pub fn handle_reply(&mut self, now: Millis, from: SocketAddr, frame: Frame) {
        self.stats.messages_received += 1;
        match self.rpcs.get(&frame.request_id) {
            None => return,                        // a late reply to a request we already gave up on
            Some(rpc) if rpc.to != from => return, // not who we asked: the request stays pending
            Some(_) => {}
        }
        let rpc = self.rpcs.remove(&frame.request_id).expect("checked above"); // faulty code
        self.rpc_deadlines.remove(&(rpc.deadline, frame.request_id));
        self.dead.remove(&from);
        match rpc.kind {
            RpcKind::Lookup(id) => self.on_lookup_reply(now, id, from, frame.message),
            RpcKind::Op(op) => self.on_op_reply(now, op, from, frame.message),
            RpcKind::Stabilize => self.on_neighbors(now, from, frame.message),
            RpcKind::Notify => self.on_notify_reply(now, from, frame.message),
            RpcKind::CheckPredecessor => {
                if let Message::Neighbors {
                    predecessors,
                    successors,
                    gone,
                    ..
                } = frame.message
                {
                    self.learn_gone(now, &gone);
                    if self.config.is_consistent() {
                        return self.on_predecessor_neighbors(from, predecessors, successors);
                    }
                    // A predecessor that restarted knows no predecessor yet: keep what it told
                    // us before (where its range starts).
                    let keep =
                        predecessors.is_empty() && self.pred_list.as_ref().is_some_and(|(a, _)| *a == from);
                    if !keep {
                        self.pred_list = Some((from, predecessors));
                    }
                }
            }
            RpcKind::Lease(primary, round) => {
                self.on_lease_reply(now, primary, round, from, Some(frame.message))
            }
            RpcKind::Probe => self.on_probe_reply(now, from, frame.message),
            RpcKind::Transfer(t) => self.on_transfer_ack(now, t, frame.message),
            RpcKind::Leaving => self.on_leaving_reply(now, frame.message),
            RpcKind::LeavingHint | RpcKind::Collect => {}
            RpcKind::Members => self.on_members(now, from, frame.message),
            RpcKind::MemberEvents(b) => {
                self.broadcasts.remove(&b);
            }
            RpcKind::Replica(write) => {
                if let Some(w) = write {
                    let applied = matches!(frame.message, Message::ReplicateAck { .. });
                    self.replica_answered(w, from, applied);
                }
            }
            RpcKind::SyncDigests(round) => self.on_sync_digests_reply(now, round, from, frame.message),
            RpcKind::SyncKeys(round) => self.on_sync_keys_reply(now, round, from, frame.message),
            RpcKind::SyncPush(round) => {
                if matches!(frame.message, Message::ReplicateAck { .. }) {
                    self.sync_step_done_pub(now, round);
                } else {
                    self.sync_reply_refused(now, round, from, &frame.message);
                }
            }
        }
    }

    /// The driver could not send the request `request_id` (it could not be encoded): it fails
    /// now, and its peer is not presumed down for it.
    pub fn send_failed(&mut self, now: Millis, request_id: u64) {
        if let Some(rpc) = self.rpcs.remove(&request_id) {
            self.rpc_deadlines.remove(&(rpc.deadline, request_id));
            self.on_rpc_failed(now, rpc);
        }
    }

    /// The store lost what it held (a Redis restarted without persistence): nothing it says is
    /// trusted until the node's ranges are filled again from the other copies. Under
    /// `consistent` every lease catches up again before it serves; under `available` the node
    /// answers no read of its own range until an anti-entropy round has refilled it.
    fn on_store_lost(&mut self, now: Millis) {
        if !self.store_lost {
            self.stats.store_losses += 1;
        }
        // Without replicas there is nothing to refill from: what is gone is gone.
        self.store_lost = self.config.replicas > 0;
        self.leases.invalidate_catch_up();
        self.next_anti_entropy = now;
    }

    /// The transport could not reach `addr` (connection refused or reset): every request to it
    /// fails now instead of at its deadline.
    pub fn peer_unreachable(&mut self, now: Millis, addr: SocketAddr) {
        let failed: Vec<u64> = self
            .rpcs
            .iter()
            .filter(|(_, r)| r.to == addr)
            .map(|(id, _)| *id)
            .collect();
        self.mark_dead(now, addr);
        for id in failed {
            if let Some(rpc) = self.rpcs.remove(&id) {
                self.rpc_deadlines.remove(&(rpc.deadline, id));
                self.on_rpc_failed(now, rpc);
            }
        }
    }

    /// A store op finished.
    pub fn store_done(&mut self, now: Millis, id: StoreOpId, result: Result<StoreOutcome, StoreError>) {
        let Some(wait) = self.store_waits.remove(&id) else {
            return;
        };
        if result.is_err() {
            self.stats.store_errors += 1;
        }
        if matches!(result, Err(StoreError::Lost(_))) {
            self.on_store_lost(now);
        }
        match wait {
            StoreWait::Serve {
                to,
                request_id,
                hops,
                kind,
                write,
                ..
            } => self.finish_serve(now, to, request_id, hops, kind, write, result),
            StoreWait::ReplicaApply { to, request_id } => self.on_replica_applied(to, request_id, result),
            StoreWait::Sync(wait) => self.on_sync_store_done(now, wait, result),
            StoreWait::StatsPrimary {
                to,
                request_id,
                total,
            } => {
                let primary = match result {
                    Ok(StoreOutcome::Count(n)) => n,
                    _ => total,
                };
                let mut counters = self.stat_counters(now, total, primary);
                counters.push(("uptime_ms".to_string(), now.saturating_sub(self.created_at)));
                self.reply(to, request_id, Message::Stats { counters });
            }
            StoreWait::Apply {
                to,
                request_id,
                transfer_id,
                start,
                end,
                last,
            } => self.on_apply_done(now, to, request_id, transfer_id, start, end, last, result),
            StoreWait::TransferScan(t) => self.on_transfer_scanned(now, t, result),
            StoreWait::TransferRemove(t) => self.on_transfer_removed(now, t, result),
            StoreWait::Info { to, request_id } => {
                let keys = match result {
                    Ok(StoreOutcome::Count(n)) => n,
                    _ => 0,
                };
                let info = NodeInfo {
                    node: self.me,
                    status: match self.phase {
                        Phase::Active if self.incoming.is_empty() => NodeStatus::Active,
                        Phase::Leaving | Phase::Left => NodeStatus::Leaving,
                        _ => NodeStatus::Joining,
                    },
                    predecessor: self.predecessor,
                    successors: self.routing.successors().to_vec(),
                    fingers: self.routing.known_nodes().copied().collect(),
                    keys,
                    keeps_down_members: self.config.is_consistent(),
                };
                self.reply(to, request_id, Message::Info(info));
            }
            StoreWait::Stats { to, request_id } => {
                let total = match result {
                    Ok(StoreOutcome::Count(n)) => n,
                    _ => 0,
                };
                // Keys in our primary range; the rest are replica copies.
                let (start, end) = self.primary_range();
                let wait = StoreWait::StatsPrimary {
                    to,
                    request_id,
                    total,
                };
                self.store_op(StoreOp::CountRange { start, end }, wait);
            }
        }
        self.pump_transfers(now);
    }

    /// Named counters for `GET_STATS` at `now`, given the live keys held in all and as primary.
    pub fn stat_counters(&self, now: Millis, keys: u64, keys_primary: u64) -> Vec<(String, u64)> {
        let s = &self.stats;
        let (leases_valid, leases_held) = self.leases.counts(now);
        let pairs: [(&str, u64); 56] = [
            ("keys", keys),
            ("keys_primary", keys_primary),
            ("keys_replica", keys.saturating_sub(keys_primary)),
            ("replicas", self.config.replicas as u64),
            ("ops_get", s.ops_get),
            ("ops_put", s.ops_put),
            ("ops_delete", s.ops_delete),
            ("ops_coordinated", s.ops_coordinated),
            ("ops_failed", s.ops_failed),
            ("hops_total", s.hops_total),
            ("hops_max", s.hops_max),
            ("redirects_sent", s.redirects_sent),
            ("lookups_answered", s.lookups_answered),
            ("rpc_timeouts", s.rpc_timeouts),
            ("peers_failed", s.peers_failed),
            ("requests_held", s.requests_held),
            ("transfers_in", s.transfers_in),
            ("transfers_out", s.transfers_out),
            ("keys_received", s.keys_received),
            ("keys_sent", s.keys_sent),
            ("store_errors", s.store_errors),
            ("messages_sent", s.messages_sent),
            ("messages_received", s.messages_received),
            ("replica_writes_sent", s.replica_writes_sent),
            ("replica_writes_applied", s.replica_writes_applied),
            ("failovers_served", s.failovers_served),
            ("anti_entropy_rounds", s.anti_entropy_rounds),
            ("anti_entropy_keys_repaired", s.anti_entropy_keys_repaired),
            ("anti_entropy_last_round_repaired", s.anti_entropy_last_repaired),
            ("tombstones_collected", s.tombstones_collected),
            ("stray_copies_collected", s.stray_copies_collected),
            ("routing_nodes", self.routing.distinct_nodes() as u64),
            ("routing_state", self.routing_state() as u64),
            ("finger_runs", self.routing.finger_runs() as u64),
            ("cache_entries", self.cache.len() as u64),
            ("cache_hits", s.cache_hits),
            ("cache_misses", s.cache_misses),
            ("cache_stale", s.cache_stale),
            ("maintenance_sent", s.maintenance_sent),
            ("member_events_detected", s.member_events_detected),
            ("member_events_applied", s.member_events_applied),
            ("successors", self.routing.successors().len() as u64),
            ("ops_in_flight", self.ops.len() as u64),
            ("writes_waiting_for_replicas", self.writes.len() as u64),
            ("late_requests_refused", s.late_requests_refused),
            ("ops_refused_no_lease", s.ops_refused_no_lease),
            ("future_versions_refused", s.future_versions_refused),
            ("store_losses", s.store_losses),
            ("ring_merges", s.ring_merges),
            ("duplicates_dropped", s.duplicates_dropped),
            ("predecessors_corrected", s.predecessors_corrected),
            ("rejoined_as_member", s.rejoined_as_member),
            ("departed", self.departed.len() as u64),
            ("leases_held", leases_held as u64),
            ("leases_valid", leases_valid as u64),
            (
                "members_down",
                self.neighbour_members().filter(|n| self.is_dead(&n.addr)).count() as u64,
            ),
        ];
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// The range this node is primary for: `(predecessor, self]`, or the whole ring when it
    /// knows no predecessor.
    pub fn primary_range(&self) -> (Id, Id) {
        (self.predecessor.map_or(self.me.id, |p| p.id), self.me.id)
    }

    // ---- ownership and routing -------------------------------------------------------------

    /// Whether this node serves `id` right now (it owns it and is not handing it off).
    fn owns(&self, id: &Id) -> bool {
        let serving = match self.phase {
            Phase::Active => true,
            Phase::Leaving => !self.leave.as_ref().is_some_and(|l| l.handed_over),
            _ => false,
        };
        if !serving {
            return false;
        }
        match self.predecessor {
            Some(p) => in_half_open(id, &p.id, &self.me.id),
            // Alone: a node that started the ring owns everything; a node that lost every peer
            // (isolated by a partition, or the survivor of crashes) owns nothing until it finds
            // the ring again, so a cut-off minority never acknowledges writes the ring would
            // not see.
            None if self.routing.successors().is_empty() => !self.is_isolated(),
            // No known predecessor: ours unless one of our successors owns it.
            None => !self.in_successor_arcs(id),
        }
    }

    /// Whether this node is alone after having had peers that did not leave gracefully.
    pub fn is_isolated(&self) -> bool {
        self.routing.successors().is_empty() && self.predecessor.is_none() && !self.seeds.is_empty()
    }

    /// Whether `id` falls in `(me, last successor]`, i.e. a successor owns it.
    fn in_successor_arcs(&self, id: &Id) -> bool {
        match self.routing.successors().last() {
            Some(last) => in_half_open(id, &self.me.id, &last.id) && *id != self.me.id,
            None => false,
        }
    }

    /// Resolves `target` as far as this node's own tables allow.
    fn route(&self, target: &Id) -> Route {
        let succs = self.routing.successors();
        // Without a known predecessor a node cannot tell where its range starts, so it claims
        // a key outright only when it is alone; otherwise it routes, and serves the key when a
        // peer sends it directly (see `owns`).
        let certain = self.predecessor.is_some() || succs.is_empty();
        if certain && self.owns(target) {
            return Route::Local;
        }
        let mut prev = self.me.id;
        for (i, s) in succs.iter().enumerate() {
            if in_half_open(target, &prev, &s.id) {
                let mut list = succs[i..].to_vec();
                if self.succ_wrapped {
                    // The list wraps around a small ring: after its last node come we and our
                    // first successors (where a failover goes when the owner is down).
                    list.push(self.me);
                    list.extend_from_slice(&succs[..i]);
                }
                return Route::Found(list);
            }
            prev = s.id;
        }
        if let Some(m) = &self.members {
            // One-hop: the table names the owner (and the next members, to fail over to). If
            // it names us although we do not own the key, our view is unsure: route normally.
            let list = m.owners_of(target, ONEHOP_LIST, |_| false);
            if list.first().is_some_and(|o| o.addr != self.me.addr) {
                return Route::Found(list);
            }
        }
        match self
            .routing
            .closest_preceding_where(target, |n| !self.dead.contains_key(&n.addr))
        {
            Some(c) => Route::Closer(c),
            None if succs.is_empty() => Route::Unknown,
            None => Route::Found(succs.to_vec()),
        }
    }

    /// A lookup's answer (the owner and the nodes after it) that ends within our successor
    /// list is as long as the successor list can be only if the nodes after our last successor
    /// follow: add the ones our fingers know, in ring order (a node joining, or restarted, takes
    /// its successor list from this answer and then stabilizes it; gaps are filled then).
    fn extend_list(&self, mut list: Vec<NodeRef>) -> Vec<NodeRef> {
        let want = self.config.successors;
        let Some(last) = list.last().copied() else {
            return list;
        };
        if list.len() >= want || self.succ_wrapped {
            return list;
        }
        let beyond = self.me.id.distance_limbs(&last.id);
        let extra: Vec<NodeRef> = self
            .routing
            .known_nodes()
            .filter(|n| self.me.id.distance_limbs(&n.id) > beyond && !list.iter().any(|l| l.addr == n.addr))
            .take(want - list.len())
            .copied()
            .collect();
        list.extend(extra);
        list
    }

    /// The node before `owner` as far as this node knows (the start of `owner`'s range).
    fn known_predecessor_of(&self, owner: &NodeRef) -> Option<NodeRef> {
        if owner.addr == self.me.addr {
            return self.predecessor;
        }
        let succs = self.routing.successors();
        match succs.iter().position(|s| s.addr == owner.addr) {
            Some(0) => Some(self.me),
            Some(k) => Some(succs[k - 1]),
            None => self.members.as_ref().and_then(|m| m.before(&owner.id)),
        }
    }

    /// This node followed by its successors: the answer to a lookup for a key we own.
    fn owner_list(&self) -> Vec<NodeRef> {
        let mut v = Vec::with_capacity(1 + self.routing.successors().len());
        v.push(self.me);
        v.extend_from_slice(self.routing.successors());
        v
    }

    fn is_dead(&self, addr: &SocketAddr) -> bool {
        self.dead.contains_key(addr)
    }

    /// Forgets a peer that failed: out of the successor list, fingers and predecessor.
    fn mark_dead(&mut self, now: Millis, addr: SocketAddr) {
        if addr == self.me.addr {
            return;
        }
        if self
            .dead
            .insert(addr, now + self.config.dead_peer_ttl_ms)
            .is_none()
        {
            self.stats.peers_failed += 1;
        }
        self.cache.evict_node(&addr);
        if self.config.is_consistent() {
            // A member that stops answering stays a member: it may be paused or cut off, and
            // only a majority of its range's copies may decide to serve without it (leases).
            // Routing avoids it, and it is probed until it answers (`probe_down_members`).
            self.routing.forget_finger(addr);
            return;
        }
        // `available`: it leaves our ring now. Remember it (it may be paused or cut off): it is
        // probed so two rings merge when a partition heals, and while it is away it may hold
        // old copies of our range, so our tombstones stay (see `sync.rs`).
        let neighbour = self
            .routing
            .successors()
            .iter()
            .chain(self.predecessor.iter())
            .find(|n| n.addr == addr)
            .copied();
        if let Some(n) = neighbour {
            let holder = self.replica_targets().iter().any(|r| r.addr == addr);
            self.remember_departed(now, n, holder);
        }
        self.routing.forget(addr);
        if let Some(p) = self.predecessor.filter(|p| p.addr == addr) {
            self.predecessor = None;
            // The successor is the authority on its predecessor's failure (one-hop).
            if self.members.is_some() {
                self.detect_event(now, p, false);
            }
        }
        // Anyone else only avoids it (`is_dead`) until its successor's notice arrives.
        if self.routing.successors().is_empty() {
            // Every successor is gone: fall back to the nearest node we still know of.
            let fallback = self.routing.known_nodes().next().copied().or(self.predecessor);
            if let Some(n) = fallback {
                self.routing.set_successors([n], self.config.successors);
                self.succ_wrapped = false;
            }
        }
    }

    fn remember_departed(&mut self, now: Millis, node: NodeRef, holder: bool) {
        let entry = self.departed.entry(node.addr).or_insert(Departed {
            node,
            since: now,
            holder: false,
        });
        entry.holder |= holder;
        if self.departed.len() > MAX_DEPARTED {
            let oldest = self.departed.iter().min_by_key(|(_, d)| d.since).map(|(a, _)| *a);
            if let Some(a) = oldest {
                self.departed.remove(&a);
            }
        }
    }

    /// Whether a node that held copies of our range is away (`available`): it may come back
    /// with copies of keys deleted meanwhile, so tombstones are not collected until it does (or
    /// `departed_ttl_ms` passes, or an operator forgets it).
    fn holder_away(&self) -> bool {
        self.departed.values().any(|d| d.holder)
    }

    /// `available`: asks a few departed neighbours for their neighbours. One that answers is
    /// back: it and the nodes it names are candidates for our successor, which is how two rings
    /// formed on both sides of a partition merge once it heals (Chord ToN 2003: remember the
    /// nodes that went away and keep probing them; stabilize then zips the rings together).
    fn probe_departed(&mut self, now: Millis) {
        let ttl = self.config.departed_ttl_ms();
        self.departed.retain(|_, d| now.saturating_sub(d.since) < ttl);
        let mut due: Vec<(Millis, SocketAddr)> = self
            .departed
            .iter()
            .filter(|(a, _)| {
                !self
                    .rpcs
                    .values()
                    .any(|r| r.to == **a && r.kind == RpcKind::Probe)
            })
            .map(|(a, d)| (d.since, *a))
            .collect();
        if due.is_empty() {
            return;
        }
        // Round-robin: the start moves with the clock, so every entry is probed in turn.
        due.sort();
        let start = (now / self.config.stabilize_interval_ms.max(1)) as usize % due.len();
        let picks: Vec<SocketAddr> = due
            .iter()
            .cycle()
            .skip(start)
            .take(DEPARTED_PROBES_PER_ROUND.min(due.len()))
            .map(|(_, a)| *a)
            .collect();
        for addr in picks {
            self.send_rpc(now, addr, Message::GetNeighbors, RpcKind::Probe, 0);
        }
    }

    /// A probed node answered: it is back. `available`: adopt it (or a node it names) as our
    /// successor when it lies between us and our successor.
    fn on_probe_reply(&mut self, now: Millis, from: SocketAddr, msg: Message) {
        let back = self.departed.remove(&from);
        if self.config.is_consistent() {
            return;
        }
        let Message::Neighbors {
            predecessors,
            successors,
            gone,
            ..
        } = msg
        else {
            return;
        };
        self.learn_gone(now, &gone);
        let mut candidates: Vec<NodeRef> = back.map(|d| d.node).into_iter().collect();
        candidates.extend(predecessors);
        candidates.extend(successors);
        let me = self.me;
        let succ = self.routing.successors().first().copied();
        let closer = candidates
            .into_iter()
            // The node that answered vouches for the nodes it names: they may still be in our
            // list of peers that stopped answering, from before the heal.
            .filter(|n| n.addr != me.addr && !self.gone.contains_key(&n.addr))
            .filter(|n| succ.is_none_or(|s| in_open(&n.id, &me.id, &s.id)))
            .min_by_key(|n| me.id.distance_limbs(&n.id));
        if let Some(n) = closer {
            self.dead.remove(&n.addr);
            self.stats.ring_merges += 1;
            let mut list = vec![n];
            list.extend_from_slice(self.routing.successors());
            self.routing.set_successors(list, self.config.successors);
            self.succ_wrapped = false;
            self.remember_seed(n.addr);
            self.next_stabilize = now;
        }
    }

    fn expire_dead(&mut self, now: Millis) {
        if self.config.is_consistent() {
            // Members next to us stay presumed down until a probe finds them up.
            let neighbours: BTreeSet<SocketAddr> = self.neighbour_members().map(|n| n.addr).collect();
            self.dead
                .retain(|a, until| *until > now || neighbours.contains(a));
        } else {
            self.dead.retain(|_, until| *until > now);
        }
        self.gone.retain(|_, (_, until)| *until > now);
    }

    /// The members around us: the predecessors we know and the successor list.
    fn neighbour_members(&self) -> impl Iterator<Item = &NodeRef> {
        let preds = match (&self.predecessor, &self.pred_list) {
            (Some(p), Some((addr, list))) if *addr == p.addr => list.as_slice(),
            _ => &[],
        };
        self.predecessor
            .iter()
            .chain(preds.iter().take(self.config.replicas))
            .chain(self.routing.successors().iter())
    }

    /// Pings every neighbouring member presumed down (`consistent`), so one that comes back
    /// (resumed, the partition healed, restarted) is used again at once.
    fn probe_down_members(&mut self, now: Millis) {
        let down: BTreeSet<SocketAddr> = self
            .neighbour_members()
            .filter(|n| self.is_dead(&n.addr))
            .map(|n| n.addr)
            .collect();
        for addr in down {
            if !self
                .rpcs
                .values()
                .any(|r| r.to == addr && r.kind == RpcKind::Probe)
            {
                self.send_rpc(now, addr, Message::Ping, RpcKind::Probe, 0);
            }
        }
    }

    /// Bit `i` set when `list[i]` is presumed down (for `Lookup::Found` and `Neighbors`).
    fn down_bits(&self, list: &[NodeRef]) -> u64 {
        list.iter()
            .take(64)
            .enumerate()
            .filter(|(_, n)| self.is_dead(&n.addr))
            .fold(0, |bits, (i, _)| bits | (1 << i))
    }

    /// Our predecessor and its predecessors as it reported them, nearest first, up to the
    /// `replicas + 1` whose ranges we keep copies of (or may stand in for).
    fn predecessors(&self) -> Vec<NodeRef> {
        let Some(p) = self.predecessor else {
            return Vec::new();
        };
        let mut list = vec![p];
        if let Some((addr, more)) = &self.pred_list {
            if *addr == p.addr {
                for n in more {
                    if list.len() > self.config.replicas || n.addr == self.me.addr {
                        break;
                    }
                    if !list.iter().any(|l| l.addr == n.addr) && !self.gone.contains_key(&n.addr) {
                        list.push(*n);
                    }
                }
            }
        }
        list
    }

    /// Nodes another node says left the ring or were forgotten: out of our lists too.
    fn learn_gone(&mut self, now: Millis, gone: &[NodeRef]) {
        for n in gone {
            if n.addr != self.me.addr && !self.gone.contains_key(&n.addr) {
                self.depart(now, *n);
            }
        }
    }

    /// `node` left the ring (gracefully, or an operator forgot it): it is no member any more.
    fn depart(&mut self, now: Millis, node: NodeRef) {
        self.mark_gone(now, node);
        if self.predecessor.is_some_and(|p| p.addr == node.addr) {
            // Its range is ours now (a leave hands it over; a forgotten node's is lost to it).
            let next = self.predecessors().get(1).copied();
            self.predecessor = next;
            self.pred_incarnation = None;
        }
        if let Some((_, list)) = self.pred_list.as_mut() {
            list.retain(|n| n.addr != node.addr);
        }
        let me = self.me;
        self.leases.release(&node.id, me);
    }

    /// Keeps the leases this node needs (`consistent`): on its own range while it serves it,
    /// and as a stand-in on the range of a predecessor that is down while it and every
    /// predecessor between are (see `replication.rs`); the others are released.
    fn maintain_leases(&mut self, now: Millis) {
        if !self.config.is_consistent() {
            return;
        }
        let serving = match self.phase {
            Phase::Active => true,
            Phase::Leaving => !self.leave.as_ref().is_some_and(|l| l.handed_over),
            _ => false,
        };
        if serving {
            let (me, start) = self.own_range();
            self.renew_lease(now, me, start);
        }
        let preds = self.predecessors();
        for primary in self.leases.primaries() {
            if primary == self.me.id {
                if !serving {
                    let me = self.me;
                    self.leases.release(&primary, me);
                }
                continue;
            }
            let mut keep = None;
            for k in 0..self.config.replicas.min(preds.len().saturating_sub(1)) {
                if !self.is_dead(&preds[k].addr) {
                    break;
                }
                if preds[k].id == primary {
                    keep = Some((preds[k], preds[k + 1].id));
                    break;
                }
            }
            match keep {
                Some((p, start)) if serving => self.renew_lease(now, p, start),
                _ => {
                    let me = self.me;
                    self.leases.release(&primary, me);
                }
            }
        }
    }

    /// An operator declares `node` gone for good (`chordkv forget`): it leaves our lists like
    /// a node that left, and the notice goes around the ring (each node passes it to its first
    /// live successor, once).
    fn handle_forget(&mut self, now: Millis, to: ReplyTo, rid: u64, node: NodeRef) {
        if node.addr == self.me.addr {
            let msg = Message::Error {
                code: ErrorCode::BadRequest,
                hops: 0,
                text: "a node cannot forget itself; stop it instead (it leaves gracefully)".to_string(),
            };
            return self.reply(to, rid, msg);
        }
        let new = !self.gone.contains_key(&node.addr);
        if new {
            self.depart(now, node);
            let next = self
                .routing
                .successors()
                .iter()
                .find(|n| !self.is_dead(&n.addr))
                .copied();
            if let Some(next) = next {
                self.send_rpc(now, next.addr, Message::Forget { node }, RpcKind::Probe, 0);
            }
        }
        self.reply(to, rid, Message::ForgetReply { forgotten: new });
    }

    /// Out of every list, and kept out for a while: `node` left or was forgotten (the notice
    /// spreads to the neighbours through `Neighbors::gone`).
    fn mark_gone(&mut self, now: Millis, node: NodeRef) {
        // Long enough for every stale list to flush (a successor list is refreshed once a
        // stabilize period); short enough that the node may join again soon after.
        let keep_ms = self.config.dead_peer_ttl_ms * 4;
        self.gone.insert(node.addr, (node, now + keep_ms));
        self.departed.remove(&node.addr);
        self.seeds.retain(|a| *a != node.addr);
        self.routing.forget(node.addr);
        self.dead.remove(&node.addr);
        self.cache.evict_node(&node.addr);
    }

    /// The preference list of `primary`'s range as this node sees it: `primary` and the next
    /// `replicas` members (fewer in a smaller ring), nearest first. `None` when `primary` is
    /// neither this node nor one of the predecessors whose ranges it keeps copies of.
    fn preference_list(&self, primary: &NodeRef) -> Option<Vec<NodeRef>> {
        let n = self.config.replicas + 1;
        let mut list: Vec<NodeRef> = Vec::with_capacity(n);
        if primary.addr != self.me.addr {
            let preds = self.predecessors();
            let k = preds.iter().position(|p| p.addr == primary.addr)?;
            list.extend(preds[..=k].iter().rev());
        }
        list.push(self.me);
        for s in self.routing.successors() {
            if list.len() == n {
                break;
            }
            if !list.iter().any(|l| l.addr == s.addr) {
                list.push(*s);
            }
        }
        list.truncate(n);
        Some(list)
    }

    // ---- maintenance -------------------------------------------------------------------------

    fn stabilize(&mut self, now: Millis) {
        match self.phase {
            Phase::Joined | Phase::Active | Phase::Leaving => {}
            _ => return,
        }
        match self.routing.successors().first().copied() {
            None => {
                // Alone: a node that notified us is our successor too (the second node of a ring).
                if let Some(p) = self.predecessor {
                    self.routing.set_successors([p], self.config.successors);
                    // A ring of two: its successor is us.
                    self.succ_wrapped = true;
                    let msg = Message::Notify {
                        node: self.me,
                        incarnation: self.config.incarnation,
                        active: self.phase == Phase::Active,
                    };
                    self.send_rpc(now, p.addr, msg, RpcKind::Notify, 0);
                } else {
                    self.try_rejoin(now);
                }
            }
            Some(first) => {
                // The first successor that answers (members presumed down are skipped; under
                // `available` none are kept).
                let succ = self
                    .routing
                    .successors()
                    .iter()
                    .find(|n| !self.is_dead(&n.addr))
                    .copied();
                match succ {
                    Some(succ) if !self.rpcs.values().any(|r| r.kind == RpcKind::Stabilize) => {
                        self.send_rpc(now, succ.addr, Message::GetNeighbors, RpcKind::Stabilize, 0);
                    }
                    Some(_) => {}
                    // Every member we know of is presumed down: probing finds them when they
                    // answer again; remembered peers may know more.
                    None => {
                        let _ = first;
                        self.try_rejoin(now);
                    }
                }
            }
        }
        if self.config.is_consistent() {
            self.probe_down_members(now);
        } else {
            self.probe_departed(now);
        }
    }

    fn on_neighbors(&mut self, now: Millis, from: SocketAddr, msg: Message) {
        let Message::Neighbors {
            predecessors,
            successors,
            gone,
            ..
        } = msg
        else {
            return;
        };
        self.learn_gone(now, &gone);
        let succs = self.routing.successors().to_vec();
        // The successor we asked: the first, or (`consistent`) the first not presumed down.
        let Some(k) = succs.iter().position(|s| s.addr == from) else {
            return;
        };
        let succ = succs[k];
        let x = predecessors.first().copied();
        let mut list = Vec::with_capacity(self.config.successors + 2);
        let mut wrapped = false;
        if self.config.is_consistent() {
            // Members only leave by announcing it (or by an operator's `forget`): the ones we
            // know stay (those before `from` are down; a short list from `from` does not make
            // the ones after it go), a node that joined just before `from` is added, and the
            // list is the `successors` nearest members in ring order from us.
            list.extend_from_slice(&succs);
            if let Some(x) = x.filter(|x| x.addr != self.me.addr && in_open(&x.id, &self.me.id, &succ.id)) {
                list.push(x);
            }
            list.push(succ);
            list.extend(successors);
            let me = self.me.id;
            wrapped = list.iter().any(|n| n.addr == self.me.addr);
            list.retain(|n| n.addr != self.me.addr && !self.gone.contains_key(&n.addr));
            list.sort_by_key(|n| me.distance_limbs(&n.id));
            list.dedup_by_key(|n| n.addr);
        } else {
            let mut new_succ = succ;
            if let Some(x) = x {
                if x.addr != self.me.addr && !self.is_dead(&x.addr) && in_open(&x.id, &self.me.id, &succ.id) {
                    new_succ = x;
                }
            }
            list.push(new_succ);
            if new_succ.addr != succ.addr {
                list.push(succ);
            }
            list.extend(successors.into_iter().filter(|n| !self.is_dead(&n.addr)));
            // A successor list that wraps back to us ends there.
            if let Some(pos) = list.iter().position(|n| n.addr == self.me.addr) {
                list.truncate(pos);
                wrapped = true;
            }
            list.retain(|n| !self.gone.contains_key(&n.addr));
        }
        for n in &list {
            if n.addr != self.me.addr {
                self.remember_seed(n.addr);
            }
        }
        self.routing.set_successors(list, self.config.successors);
        // The list reached around the ring to us (and was cut there): the ring is this small.
        self.succ_wrapped = wrapped && self.routing.successors().len() < self.config.successors;
        let first_live = self
            .routing
            .successors()
            .iter()
            .find(|n| !self.is_dead(&n.addr))
            .copied();
        if let Some(s) = first_live {
            if self.phase != Phase::Leaving {
                let msg = Message::Notify {
                    node: self.me,
                    incarnation: self.config.incarnation,
                    active: self.phase == Phase::Active,
                };
                self.send_rpc(now, s.addr, msg, RpcKind::Notify, 0);
            }
        }
    }

    /// Pings the predecessor. The ping is a `GET_NEIGHBORS`, whose answer also names the
    /// predecessor's own predecessor: the start of the range this node takes over if its
    /// predecessor dies (see `may_take_over`).
    ///
    /// Under `consistent` the ping goes to the nearest predecessor that answers: its successor
    /// list names every member between it and us, so its answer confirms our predecessor (the
    /// last of them) or corrects it. A node that restarted, or took a notifier for its
    /// predecessor before it knew better, learns where its range really starts this way, and
    /// asks for no lease on its range before that is confirmed (`range_confirmed`).
    fn check_predecessor(&mut self, now: Millis) {
        if self.rpcs.values().any(|r| r.kind == RpcKind::CheckPredecessor) {
            return;
        }
        let target = if self.config.is_consistent() {
            self.predecessors()
                .into_iter()
                .find(|p| !self.is_dead(&p.addr))
                .or(self.pred_hint.filter(|h| !self.is_dead(&h.addr)))
                .or_else(|| {
                    self.routing
                        .closest_preceding_where(&self.me.id, |n| !self.dead.contains_key(&n.addr))
                })
                .or(self.predecessor)
        } else {
            self.predecessor
        };
        if let Some(x) = target {
            self.send_rpc(now, x.addr, Message::GetNeighbors, RpcKind::CheckPredecessor, 0);
        }
    }

    /// `consistent`: a node before us answered `check_predecessor` with its neighbours.
    fn on_predecessor_neighbors(
        &mut self,
        from: SocketAddr,
        predecessors: Vec<NodeRef>,
        successors: Vec<NodeRef>,
    ) {
        let me = self.me;
        let x = self
            .predecessors()
            .into_iter()
            .chain(self.routing.known_nodes().copied())
            .chain(self.pred_hint)
            .find(|n| n.addr == from)
            .unwrap_or_else(|| NodeRef::from_addr(from));
        let Some(pos) = successors.iter().position(|n| n.addr == me.addr) else {
            // Its list does not reach us: ask the last node in it before us next time.
            self.pred_hint = successors
                .iter()
                .copied()
                .rfind(|n| in_open(&n.id, &x.id, &me.id));
            return;
        };
        // Ours: the members it knows between itself and us (nearest first), it, its own.
        let mut list: Vec<NodeRef> = successors[..pos].iter().rev().copied().collect();
        list.push(x);
        list.extend(predecessors.into_iter().filter(|n| n.addr != me.addr));
        list.retain(|n| !self.gone.contains_key(&n.addr));
        list.dedup_by_key(|n| n.addr);
        let pred = list.remove(0);
        self.pred_hint = None;
        if self.predecessor.map(|p| p.addr) != Some(pred.addr) {
            // A nearer member we did not know of. One that is down (or any, when we know no
            // predecessor) is ours at once: its range is not ours, and no handoff can happen.
            // A live one joins us itself (its notify hands its range over): until then our
            // range is not confirmed, and we ask for no lease on it.
            let adopt = self.predecessor.is_none() || self.is_dead(&pred.addr);
            if !adopt {
                self.pred_confirmed = None;
                return;
            }
            self.stats.predecessors_corrected += 1;
            self.predecessor = Some(pred);
            self.pred_incarnation = None;
        }
        self.pred_list = Some((pred.addr, list));
        self.pred_confirmed = Some(pred.addr);
    }

    /// Whether we know where our range starts (`consistent`): our predecessor was confirmed by
    /// the nearest live node before us, or we are alone.
    fn range_confirmed(&self) -> bool {
        match self.predecessor {
            Some(p) => self.pred_confirmed == Some(p.addr),
            None => self.routing.successors().is_empty(),
        }
    }

    /// Refreshes fingers round-robin: every finger whose start falls within the successor
    /// list is set at once; the first that needs a remote lookup starts one and ends the round.
    fn fix_fingers(&mut self, now: Millis) {
        if self.finger_lookup_busy || !matches!(self.phase, Phase::Joined | Phase::Active) {
            return;
        }
        let count = self.routing.finger_count();
        for _ in 0..count {
            let i = self.next_finger;
            self.next_finger = (self.next_finger + 1) % count;
            let start = self.routing.finger_start(i);
            // Most fingers of a large ring start inside the successor list: resolve those
            // without building a route.
            if let Some(owner) = self.successor_list_owner(&start) {
                self.routing.set_finger(i, owner);
                continue;
            }
            match self.route(&start) {
                Route::Local | Route::Unknown => {
                    self.routing.set_finger(i, None);
                }
                Route::Found(list) => {
                    let owner = list.into_iter().find(|n| !self.is_dead(&n.addr));
                    self.routing.set_finger(i, owner);
                }
                Route::Closer(c) => {
                    let deadline = now + self.config.request_timeout_ms;
                    let id = self.new_lookup(MaintLookup {
                        target: start,
                        purpose: LookupPurpose::Finger(i),
                        deadline,
                    });
                    self.finger_lookup_busy = true;
                    self.send_rpc(
                        now,
                        c.addr,
                        Message::FindSuccessor { id: start },
                        RpcKind::Lookup(id),
                        0,
                    );
                    return;
                }
            }
        }
    }

    /// `Some(first live successor at or after target)` when `target` falls within the
    /// successor list's arcs `(me, last successor]`.
    fn successor_list_owner(&self, target: &Id) -> Option<Option<NodeRef>> {
        let succs = self.routing.successors();
        let mut prev = self.me.id;
        for (k, s) in succs.iter().enumerate() {
            if in_half_open(target, &prev, &s.id) {
                return Some(succs[k..].iter().find(|n| !self.is_dead(&n.addr)).copied());
            }
            prev = s.id;
        }
        None
    }

    fn remember_seed(&mut self, addr: SocketAddr) {
        const MAX_SEEDS: usize = 16;
        if !self.seeds.contains(&addr) {
            if self.seeds.len() == MAX_SEEDS {
                self.seeds.pop_front();
            }
            self.seeds.push_back(addr);
        }
    }

    /// Alone after having had peers: ask the next remembered peer for our successor.
    fn try_rejoin(&mut self, now: Millis) {
        if !matches!(self.phase, Phase::Active | Phase::Joined)
            || self.lookups.values().any(|l| l.purpose == LookupPurpose::Rejoin)
        {
            return;
        }
        let Some(seed) = self.seeds.pop_front() else {
            return;
        };
        self.seeds.push_back(seed);
        self.lookup_own_id(now, seed, LookupPurpose::Rejoin);
    }

    /// Asks `via` for our own successor (a join, or a rejoin after isolation).
    fn lookup_own_id(&mut self, now: Millis, via: SocketAddr, purpose: LookupPurpose) {
        let deadline = now + self.config.request_timeout_ms;
        let id = self.new_lookup(MaintLookup {
            target: self.me.id,
            purpose,
            deadline,
        });
        self.send_rpc(
            now,
            via,
            Message::FindSuccessor { id: self.me.id },
            RpcKind::Lookup(id),
            0,
        );
    }

    fn new_lookup(&mut self, lookup: MaintLookup) -> u64 {
        let id = self.next_lookup_id;
        self.next_lookup_id += 1;
        self.lookups.insert(id, lookup);
        id
    }

    fn on_lookup_reply(&mut self, now: Millis, id: u64, from: SocketAddr, msg: Message) {
        let Some(lookup) = self.lookups.get(&id).cloned() else {
            return;
        };
        if lookup.purpose == LookupPurpose::Join {
            match &msg {
                Message::FindSuccessorReply {
                    lookup: Lookup::Found { successors, .. },
                } => {
                    let me = self.me.addr;
                    for n in successors.iter().filter(|n| n.addr != me) {
                        self.remember_seed(n.addr);
                    }
                }
                Message::FindSuccessorReply {
                    lookup: Lookup::Closer { node },
                } => self.remember_seed(node.addr),
                _ => {}
            }
        }
        match msg {
            Message::FindSuccessorReply {
                lookup:
                    Lookup::Found {
                        successors,
                        predecessor,
                        ..
                    },
            } if matches!(lookup.purpose, LookupPurpose::Join | LookupPurpose::Rejoin)
                && successors.iter().all(|n| n.addr == self.me.addr) =>
            {
                // The ring still counts us as a member (we restarted before it noticed, or we
                // are a member presumed down) and this node knows nobody after us. The node
                // before us does: ask it at once.
                match predecessor.filter(|p| p.addr != self.me.addr && p.addr != from) {
                    Some(p) => {
                        self.remember_seed(p.addr);
                        let msg = Message::FindSuccessor { id: lookup.target };
                        self.send_rpc(now, p.addr, msg, RpcKind::Lookup(id), 0);
                    }
                    None => self.fail_lookup(now, id),
                }
            }
            Message::FindSuccessorReply {
                lookup:
                    Lookup::Found {
                        successors,
                        predecessor,
                        ..
                    },
            } if lookup.purpose == LookupPurpose::Join
                && self.config.is_consistent()
                && successors.first().is_some_and(|n| n.addr == self.me.addr) =>
            {
                // We are a member already (we restarted on our address, and members stay
                // members under `consistent`): our successor has us as its predecessor, so no
                // handoff has to make room for us. We take our place at once; where our range
                // starts is confirmed by `check_predecessor` before we ask for its lease, and
                // the lease's catch-up brings the data back.
                self.lookups.remove(&id);
                self.rejoin_as_member(now, successors, predecessor);
            }
            Message::FindSuccessorReply {
                lookup: Lookup::Found { successors, .. },
            } => {
                // Under `consistent` the members that are down stay in the list (stabilize
                // skips them); under `available` they are no successors.
                let consistent = self.config.is_consistent();
                let live: Vec<NodeRef> = successors
                    .into_iter()
                    .filter(|n| consistent || !self.is_dead(&n.addr))
                    .collect();
                self.finish_lookup(now, id, live);
            }
            Message::FindSuccessorReply {
                lookup: Lookup::Closer { node },
            } => {
                if now >= lookup.deadline || node.addr == from || self.is_dead(&node.addr) {
                    self.fail_lookup(now, id);
                } else if node.addr == self.me.addr {
                    // We are the closest known node: our own successor list answers.
                    let list = self.routing.successors().to_vec();
                    self.finish_lookup(now, id, list);
                } else {
                    let target = lookup.target;
                    self.send_rpc(
                        now,
                        node.addr,
                        Message::FindSuccessor { id: target },
                        RpcKind::Lookup(id),
                        0,
                    );
                }
            }
            _ => self.fail_lookup(now, id),
        }
    }

    /// `consistent`: we restarted as a member the ring still lists (see `on_lookup_reply`).
    fn rejoin_as_member(&mut self, now: Millis, successors: Vec<NodeRef>, predecessor: Option<NodeRef>) {
        let list: Vec<NodeRef> = successors
            .into_iter()
            .filter(|n| n.addr != self.me.addr)
            .collect();
        for n in &list {
            self.remember_seed(n.addr);
        }
        self.routing.set_successors(list, self.config.successors);
        self.succ_wrapped = false;
        self.predecessor = predecessor.filter(|p| p.addr != self.me.addr);
        self.pred_incarnation = None;
        self.phase = Phase::Active;
        self.bootstrap = None;
        self.join_retry_at = None;
        self.stats.rejoined_as_member += 1;
        self.next_stabilize = now;
        self.next_check_predecessor = now;
        self.stabilize(now);
        self.check_predecessor(now);
    }

    fn finish_lookup(&mut self, now: Millis, id: u64, successors: Vec<NodeRef>) {
        let Some(lookup) = self.lookups.remove(&id) else {
            return;
        };
        match lookup.purpose {
            LookupPurpose::Join => {
                let list: Vec<NodeRef> = successors
                    .into_iter()
                    .filter(|n| n.addr != self.me.addr)
                    .collect();
                if list.is_empty() {
                    self.retry_join(now);
                    return;
                }
                self.routing.set_successors(list, self.config.successors);
                self.succ_wrapped = false;
                self.phase = Phase::Joined;
                self.bootstrap = None;
                self.next_stabilize = now; // notify the successor at once
                self.stabilize(now);
                if let (Some(_), Some(s)) = (&self.members, self.routing.successors().first().copied()) {
                    // One-hop: copy the successor's table, a page at a time.
                    self.send_rpc(
                        now,
                        s.addr,
                        Message::GetMembers { after: Id::ZERO },
                        RpcKind::Members,
                        0,
                    );
                }
            }
            LookupPurpose::Rejoin => {
                let list: Vec<NodeRef> = successors
                    .into_iter()
                    .filter(|n| n.addr != self.me.addr)
                    .collect();
                if self.routing.successors().is_empty() && !list.is_empty() {
                    self.routing.set_successors(list, self.config.successors);
                    self.succ_wrapped = false;
                    self.next_stabilize = now;
                }
            }
            LookupPurpose::Finger(i) => {
                self.finger_lookup_busy = false;
                let owner = successors.into_iter().next().filter(|n| n.addr != self.me.addr);
                self.routing.set_finger(i, owner);
            }
        }
    }

    fn fail_lookup(&mut self, now: Millis, id: u64) {
        let Some(lookup) = self.lookups.remove(&id) else {
            return;
        };
        match lookup.purpose {
            LookupPurpose::Join => self.retry_join(now),
            LookupPurpose::Rejoin => {}
            LookupPurpose::Finger(_) => self.finger_lookup_busy = false,
        }
    }

    /// The join lookup failed: ask the bootstrap node again (on the next stabilize round).
    fn retry_join(&mut self, now: Millis) {
        if self.bootstrap.is_some() {
            // Try again after a pause, so an unreachable bootstrap node is not hammered.
            self.phase = Phase::Joining;
            self.join_retry_at = Some(now + self.config.rpc_timeout_ms);
        }
    }

    /// Sends the join lookup to the bootstrap node when a retry is due.
    fn join_if_due(&mut self, now: Millis) {
        let (Some(_), Some(at)) = (self.bootstrap, self.join_retry_at) else {
            return;
        };
        if now < at || self.phase != Phase::Joining {
            return;
        }
        // Rotate through the bootstrap node and every peer a lookup has named so far, so one
        // departed bootstrap node does not strand the join.
        let Some(via) = self.seeds.pop_front() else {
            return;
        };
        self.seeds.push_back(via);
        self.join_retry_at = None;
        self.lookup_own_id(now, via, LookupPurpose::Join);
    }

    // ---- one-hop membership (see membership.rs) ----------------------------------------------

    /// Records a membership event this node detected: applied here at once, disseminated at
    /// the next stabilize round with the others of the period.
    fn detect_event(&mut self, now: Millis, node: NodeRef, alive: bool) {
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
            self.pending_events.push(event);
        }
    }

    /// Announces a predecessor missing from the table (a join), then sends the period's events
    /// down the broadcast tree.
    fn flush_member_events(&mut self, now: Millis) {
        let Some(m) = &self.members else { return };
        if let Some(p) = self.predecessor.filter(|p| !m.contains(&p.id)) {
            self.detect_event(now, p, true);
        }
        if self.pending_events.is_empty() {
            return;
        }
        let events = Arc::new(std::mem::take(&mut self.pending_events));
        let me = self.me.id;
        self.forward_member_events(now, &events, &me);
    }

    /// Sends `events` to this node's children in the broadcast tree for the part `(me, limit)`.
    fn forward_member_events(&mut self, now: Millis, events: &Arc<Vec<MemberEvent>>, limit: &Id) {
        let Some(m) = &self.members else { return };
        let children = m.broadcast_children(&self.me.id, limit);
        for (child, end) in children {
            self.send_broadcast(now, events.clone(), child, end);
        }
    }

    fn send_broadcast(&mut self, now: Millis, events: Arc<Vec<MemberEvent>>, to: NodeRef, limit: Id) {
        let b = self.next_broadcast;
        self.next_broadcast += 1;
        let msg = Message::MemberEvents {
            limit,
            events: events.as_ref().clone(),
        };
        self.broadcasts.insert(b, Broadcast { to, limit, events });
        self.send_rpc(now, to.addr, msg, RpcKind::MemberEvents(b), 0);
    }

    /// A child of the broadcast tree did not answer: its part goes to the next member in it.
    fn broadcast_failed(&mut self, now: Millis, b: u64) {
        let Some(bc) = self.broadcasts.remove(&b) else {
            return;
        };
        let next = self.members.as_ref().and_then(|m| m.after(&bc.to.id));
        if let Some(next) = next.filter(|n| in_open(&n.id, &bc.to.id, &bc.limit) && n.addr != self.me.addr) {
            self.send_broadcast(now, bc.events, next, bc.limit);
        }
    }

    /// Applies received events and passes them on within `(me, limit)`; returns how many
    /// changed the table.
    fn apply_member_events(&mut self, now: Millis, events: &[MemberEvent], limit: &Id) -> u32 {
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
    fn on_members(&mut self, now: Millis, from: SocketAddr, msg: Message) {
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
    fn known_run(&self) -> Vec<NodeRef> {
        let mut run = Vec::with_capacity(2 + self.routing.successors().len());
        run.extend(self.predecessor);
        run.push(self.me);
        run.extend_from_slice(self.routing.successors());
        run
    }

    // ---- requests to peers -------------------------------------------------------------------

    /// Sends `msg` to `to` as a request tracked with the RPC timeout. Returns the request id.
    fn send_rpc(&mut self, now: Millis, to: SocketAddr, msg: Message, kind: RpcKind, flags: u16) -> u64 {
        let timeout = self.config.rpc_timeout_ms;
        self.send_request(now, to, msg, kind, flags, timeout, 0)
    }

    /// Sends `msg` to `to` as a request given up on after `timeout_ms`, carrying the deadline
    /// `frame_deadline` (0: none) after which the receiver must not start it.
    #[allow(clippy::too_many_arguments)]
    fn send_request(
        &mut self,
        now: Millis,
        to: SocketAddr,
        msg: Message,
        kind: RpcKind,
        flags: u16,
        timeout_ms: u64,
        frame_deadline: Millis,
    ) -> u64 {
        let id = self.next_request_id;
        self.next_request_id += 1;
        let deadline = now + timeout_ms.max(1);
        self.rpcs.insert(id, Rpc { to, deadline, kind });
        self.rpc_deadlines.insert((deadline, id));
        let frame = Frame {
            request_id: id,
            flags,
            deadline_ms: frame_deadline,
            message: msg,
        };
        self.stats.messages_sent += 1;
        if kind.is_maintenance() {
            self.stats.maintenance_sent += 1;
        }
        self.out.push_back(Output::Send { to, frame });
        id
    }

    fn reply(&mut self, to: ReplyTo, request_id: u64, msg: Message) {
        self.stats.messages_sent += 1;
        self.out.push_back(Output::Reply {
            to,
            frame: Frame::new(request_id, msg),
        });
    }

    fn expire_rpcs(&mut self, now: Millis) {
        while let Some(&(deadline, id)) = self.rpc_deadlines.first() {
            if deadline > now {
                break;
            }
            self.rpc_deadlines.pop_first();
            if let Some(rpc) = self.rpcs.remove(&id) {
                self.stats.rpc_timeouts += 1;
                self.mark_dead(now, rpc.to);
                self.on_rpc_failed(now, rpc);
            }
        }
    }

    /// A request got no answer (timeout or unreachable peer); the peer is already marked dead.
    fn on_rpc_failed(&mut self, now: Millis, rpc: Rpc) {
        match rpc.kind {
            RpcKind::Lookup(id) => {
                let Some(lookup) = self.lookups.get(&id).cloned() else {
                    return;
                };
                // Route around the dead peer with our own table (the bootstrap for a join).
                if now >= lookup.deadline {
                    self.fail_lookup(now, id);
                    return;
                }
                match (lookup.purpose, self.route(&lookup.target)) {
                    (LookupPurpose::Join | LookupPurpose::Rejoin, _) => self.fail_lookup(now, id),
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
                self.next_stabilize = now;
            }
            RpcKind::MemberEvents(b) => self.broadcast_failed(now, b),
            RpcKind::Lease(primary, round) => self.on_lease_reply(now, primary, round, rpc.to, None),
            RpcKind::Probe => {}
            RpcKind::Notify
            | RpcKind::CheckPredecessor
            | RpcKind::LeavingHint
            | RpcKind::Collect
            | RpcKind::Members => {}
            RpcKind::Replica(write) => {
                if let Some(w) = write {
                    self.replica_answered(w, rpc.to, false);
                }
            }
            RpcKind::SyncDigests(round) | RpcKind::SyncKeys(round) | RpcKind::SyncPush(round) => {
                self.sync_rpc_failed(now, round, Some(rpc.to))
            }
            RpcKind::Transfer(t) => self.on_transfer_failed(now, t),
            RpcKind::Leaving => self.on_leaving_failed(now),
        }
    }

    // ---- store ops ---------------------------------------------------------------------------

    fn store_op(&mut self, op: StoreOp, wait: StoreWait) -> StoreOpId {
        let id = self.next_store_op;
        self.next_store_op += 1;
        self.store_waits.insert(id, wait);
        self.out.push_back(Output::Store { id, op });
        id
    }

    /// Whether a client write to a key in `(start, end]` is being stored right now.
    fn write_in_flight(&self, start: &Id, end: &Id) -> bool {
        self.store_waits.values().any(|w| match w {
            StoreWait::Serve {
                kind: ServeKind::Put(_) | ServeKind::Delete(_),
                key_id,
                ..
            } => in_half_open(key_id, start, end),
            _ => false,
        })
    }
}
