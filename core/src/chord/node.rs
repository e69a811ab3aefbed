//! The node's state, one owned part per concern, and its life: create, join, leave,
//! bootstrap, and what the driver reads from it.

use chordkv_protocol::NodeAddr;
use std::collections::VecDeque;
use std::sync::Arc;

use chordkv_protocol::{Frame, Id, NodeRef};

use super::cache::LocationCache;
use super::claims::JoinClaims;
use super::clock::Hlc;
use super::config::{Config, Routing};
use super::execute::Executions;
use super::handoff::{Handoff, LeaveStage};
use super::lease::Leases;
use super::liveness::Liveness;
use super::maintenance::{LookupPurpose, Lookups};
use super::membership::Membership;
use super::onehop::Dissemination;
use super::ops::ClientOps;
use super::replication::Replication;
use super::ring_command::RingCommands;
use super::routing::RoutingTable;
use super::rpc::Rpcs;
use super::scan::Scans;
use super::stats::Stats;
use super::store_wait::StoreOps;
use super::timer::{Timer, Timers};
use super::trust::Trust;
use crate::rng::Rng;
use crate::store::StoreOp;

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
    Send { to: NodeAddr, frame: Frame },
    /// Answer a request that came in through `handle_request` with this `ReplyTo`.
    Reply { to: ReplyTo, frame: Frame },
    /// Run a store op on vnode `vnode`'s store partition and report its result through
    /// `store_done` with this id.
    Store { id: StoreOpId, vnode: u16, op: StoreOp },
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

/// One Chord node's state machine. See the module docs.
pub struct Node {
    pub(super) me: NodeRef,
    pub(super) config: Config,
    pub(super) phase: Phase,
    pub(super) predecessor: Option<NodeRef>,
    /// Successor list and fingers.
    pub(super) routing: RoutingTable,
    pub(super) clock: Hlc,
    pub(super) rng: Rng,
    /// Where `join` started, until the join lookup has found a successor.
    pub(super) bootstrap: Option<NodeAddr>,
    /// The incarnation of our predecessor, from its last notify (a new one: it restarted).
    pub(super) pred_incarnation: Option<u64>,
    /// Whether the successor list reaches around the whole ring back to us (a ring of at
    /// most `successors + 1` nodes), as the last stabilize saw it.
    pub(super) succ_wrapped: bool,
    /// `consistent`: the predecessor the nearest live node before us last confirmed...
    pub(super) pred_confirmed: Option<NodeAddr>,
    /// ...and, when that node's list did not reach us, the node to ask next (nearer to us).
    pub(super) pred_hint: Option<NodeRef>,
    /// The node the last `check_predecessor` asked, with its id: its answer may arrive after
    /// it left our tables, and an id guessed from its address is wrong for a vnode.
    pub(super) pred_asked: Option<NodeRef>,
    /// When the node was created (for `uptime_ms`).
    pub(super) created_at: Millis,

    pub(super) timers: Timers,
    pub(super) rpcs: Rpcs,
    pub(super) lookups: Lookups,
    pub(super) client: ClientOps,
    /// Executes served here and the requests waiting for their keys (`execute.rs`).
    pub(super) exec: Executions,
    /// Commands over the whole ring this node coordinates or runs a step of (`ring_command.rs`).
    pub(super) ring_cmds: RingCommands,
    /// Scans of the ring's keys this node coordinates (`scan.rs`).
    pub(super) scans: Scans,
    /// The latest time an input brought (for replies to the node's own operations, which
    /// arrive inside another input's handling).
    pub(super) last_now: Millis,
    pub(super) repl: Replication,
    pub(super) handoff: Handoff,
    pub(super) store: StoreOps,
    pub(super) live: Liveness,
    /// Leases held and promised (partition policy `consistent`, `lease.rs`).
    pub(super) leases: Leases,
    /// Which of our copies hold every write we acknowledged (`trust.rs`).
    pub(super) trust: Trust,
    /// One-hop routing's membership table (`None` for finger routing).
    pub(super) members: Option<Membership>,
    pub(super) onehop: Dissemination,
    /// The location cache (capacity 0 when off).
    pub(super) cache: LocationCache,
    /// Positions hosts joining through this node reserved (`claims.rs`).
    pub(super) claims: JoinClaims,

    pub(super) out: VecDeque<Output>,
    pub(super) stats: Stats,
}

impl Node {
    /// A node that will be known as `me`. Call [`Node::create`] or [`Node::join`] next.
    pub fn new(me: NodeRef, config: Config, now: Millis) -> Node {
        let rng = Rng::new(config.seed ^ u64::from_be_bytes(me.id.0[..8].try_into().unwrap_or([0; 8])));
        Node {
            me,
            routing: RoutingTable::new(me, config.routing),
            members: (config.routing == Routing::OneHop).then(|| Membership::new(me)),
            onehop: Dissemination {
                next_broadcast: 1,
                ..Dissemination::default()
            },
            cache: LocationCache::new(config.cache_entries),
            claims: JoinClaims::default(),
            created_at: now,
            phase: Phase::Idle,
            predecessor: None,
            clock: Hlc::default(),
            rng,
            bootstrap: None,
            pred_incarnation: None,
            succ_wrapped: false,
            pred_confirmed: None,
            pred_hint: None,
            pred_asked: None,
            // A node without replicas collects its own tombstones from its first delete on;
            // one whose store came back with its data may hold tombstones from before, so it
            // collects once at the start too (the timer rests again if none is left).
            timers: Timers::new(now, config.replicas > 0 || config.store_kept_copies),
            rpcs: Rpcs::new(),
            lookups: Lookups {
                next_id: 1,
                ..Lookups::default()
            },
            client: ClientOps {
                next_id: 1,
                ..ClientOps::default()
            },
            exec: Executions::new(),
            ring_cmds: RingCommands::default(),
            scans: Scans::default(),
            last_now: now,
            repl: Replication {
                next_write_id: 1,
                next_sync_id: 1,
                replica_view_since: now,
                ..Replication::default()
            },
            handoff: Handoff {
                next_transfer_id: 1,
                ..Handoff::default()
            },
            store: StoreOps {
                next_id: 1,
                ..StoreOps::default()
            },
            live: Liveness::default(),
            leases: Leases::default(),
            trust: Trust::default(),
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
        self.phase == Phase::Active && self.handoff.incoming.is_empty() && self.handoff.outgoing.is_empty()
    }

    /// Client operations this node is coordinating.
    pub fn ops_in_flight(&self) -> usize {
        self.client.ops.len()
    }

    /// The next output to carry out, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Moves every queued output to the back of `to`, in order, when there are two or more and
    /// `plain(output)` holds for each (then `true`: the outputs are carried out as
    /// [`Node::poll_output`] would have given them); otherwise moves nothing and returns
    /// `false`. One block copy, where polling moved each output out and in again (outputs are
    /// over 128 bytes: a `memcpy` call each way); for a single output polling is cheaper.
    pub(super) fn drain_outputs_if(
        &mut self,
        to: &mut VecDeque<Output>,
        plain: impl Fn(&Output) -> bool,
    ) -> bool {
        if self.out.len() < 2 || !self.out.iter().all(plain) {
            return false;
        }
        to.append(&mut self.out);
        true
    }

    /// When `tick` next has work to do (`Millis::MAX` when never: idle or left).
    pub fn next_deadline(&self) -> Millis {
        if self.holds_replica_writes() {
            // Due now: a driver that did not end its turn still sends them at its next tick.
            return self.last_now;
        }
        if matches!(self.phase, Phase::Idle | Phase::Left) {
            return Millis::MAX;
        }
        let mut d = self.timers.next().unwrap_or(Millis::MAX);
        if let Some(t) = self.rpcs.next_deadline() {
            d = d.min(t);
        }
        if let Some((t, _)) = self.client.retries.first() {
            d = d.min(*t);
        }
        for inc in &self.handoff.incoming {
            d = d.min(inc.deadline);
            let release = self.config.rpc_timeout_ms / 2;
            if let Some(since) = inc.held.iter().filter(|h| h.1.is_direct()).map(|h| h.3).min() {
                d = d.min(since + release);
            }
        }
        if let Some(l) = &self.handoff.leave {
            d = d.min(l.deadline);
            // A retry is due only once no transfer holds the leave up; until then the
            // maintenance rounds re-check it.
            let blocked = !self.handoff.incoming.is_empty() || !self.handoff.outgoing.is_empty();
            if l.stage == LeaveStage::Waiting && !blocked {
                d = d.min(l.retry_at);
            }
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
    pub fn join(&mut self, now: Millis, via: NodeAddr) {
        self.phase = Phase::Joining;
        self.bootstrap = Some(via);
        self.remember_seed(via);
        self.lookup_own_id(now, via, LookupPurpose::Join);
        self.schedule_maintenance(now);
    }

    /// More nodes to join through after the one given to [`Node::join`]: a join whose node
    /// does not answer is retried through the next of them in turn.
    pub fn add_join_peers(&mut self, peers: &[NodeAddr]) {
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
        self.succ_wrapped = self.routing.successor_hosts() < self.config.successors;
        self.routing.fill_fingers(successor_of);
        if let (Some(table), Some(members)) = (self.members.as_mut(), members) {
            *table = Membership::from_sorted(members);
        }
        if let Some(s) = successors.first() {
            self.remember_seed(s.addr);
        }
        self.schedule_maintenance(now);
    }

    pub(super) fn schedule_maintenance(&mut self, now: Millis) {
        self.timers.set(Timer::Stabilize, now);
        let at = now + self.jitter(self.config.fix_fingers_interval_ms);
        self.timers.set(Timer::FixFingers, at);
        let at = now + self.jitter(self.config.check_predecessor_interval_ms);
        self.timers.set(Timer::CheckPredecessor, at);
    }

    /// `interval` plus or minus 10%, so nodes started together drift apart.
    pub(super) fn jitter(&mut self, interval: u64) -> u64 {
        let spread = interval / 10;
        if spread == 0 {
            return interval.max(1);
        }
        interval - spread + self.rng.below(2 * spread + 1)
    }
}
