//! A deterministic simulated network that drives many [`Node`] state machines, the same code
//! the server runs, with seeded message delays, loss, crashes, restarts, pauses, partitions,
//! duplication, reordering and clock skew.
//!
//! Modelled on raft-rs' test harness: the simulation owns every node and a priority queue of
//! timed events (message deliveries, timer ticks); [`Sim::run_until`] pops them in time order.
//! Given a seed it replays exactly: one RNG decides every delay, loss, duplicate, extra delay
//! and clock, ties are broken by insertion order, and nothing reads the wall clock. A fault
//! that is off draws nothing from the RNG, so turning on a new kind of fault never changes
//! the runs of seeds that do not use it.
//!
//! The faults, as the nodes see them:
//!
//! | fault                               | the node itself                  | its peers                        |
//! |-------------------------------------|----------------------------------|----------------------------------|
//! | [`Sim::crash`]                      | gone; its store is kept aside    | silence: requests time out       |
//! | [`Sim::restart`]                    | a new `Node`, empty store, joins | a node joining                   |
//! | [`Sim::restart_with_store`]         | a new `Node`, old store, joins   | a node joining                   |
//! | [`Sim::leave`], then exit           | hands its keys over and stops    | its port refuses: "unreachable"  |
//! | [`Sim::pause`] / [`Sim::resume`]    | frozen; inputs queue; on resume  | silence, then late answers       |
//! |                                     | handles them, clock jumped ahead |                                  |
//! | [`Sim::partition`] (drop)           | its messages across the cut lost | silence                          |
//! | [`Sim::partition_hold`]             | held, delivered after the heal   | silence, then late messages      |
//! | duplication, reordering             | some messages twice, some late   | (the same)                       |
//! | clock skew and drift                | its own clock ([`clock`])        |                                  |
//!
//! Every input to node `i` carries node `i`'s clock, never true time; `next_deadline()` is
//! converted back to true time to schedule its tick. Client operations see true time
//! ([`Sim::now`]), the time a history checker judges by ([`recorder`]).
//!
//! Oracles ([`oracle`]): [`Sim::ring_problem`] (the exact ring), [`Sim::zave_problem`]
//! (Zave's invariants), [`Sim::fingers_are_correct`] and [`Sim::owner_of`] compute the truth
//! from the set of live nodes, for tests to compare against. [`schedule`] generates random
//! fault schedules from a seed.

pub mod balance;
pub mod clock;
pub mod copies;
pub mod lookup;
mod network;
pub mod oracle;
pub mod recorder;
pub mod schedule;
mod served;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use chordkv_protocol::{Frame, Id, Message};

use chordkv_core::chord::{Config, Host, Millis, Node, Output, ReplyTo};
use chordkv_core::rng::Rng;
use chordkv_core::store::{execute, MemoryStore, Store};
pub use clock::NodeClock;
use copies::CopyTracker;
pub use network::CutMode;
use network::{Links, Payload, Wire};
use served::{Served, ServedStore};

/// `ReplyTo` values at or above this are simulated clients, below it node indices.
const CLIENT_REPLY_BASE: u64 = 1 << 62;

/// Network and node settings of a simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// One-way message delay, uniform in `[min_delay_ms, max_delay_ms]`.
    pub min_delay_ms: u64,
    pub max_delay_ms: u64,
    /// Probability that a message between two nodes is lost.
    pub loss: f64,
    /// Probability that a message between two nodes is delivered twice (the copy with its own
    /// delay): a retry after a reconnection. Requests and replies alike.
    pub duplicate: f64,
    /// Probability that a message between two nodes is delayed by an extra
    /// `1..=reorder_max_ms`, so it arrives after messages sent later.
    pub reorder: f64,
    pub reorder_max_ms: u64,
    /// Give each node a clock offset uniform in `±chord.max_clock_offset_ms / 2` (so any two
    /// clocks differ by at most `chord.max_clock_offset_ms`). See [`clock`].
    pub clock_skew: bool,
    /// Give each node a clock drift uniform in `±clock_drift_ppm` (at most
    /// [`clock::MAX_DRIFT_PPM`]), its deviation still held within the bound above.
    pub clock_drift_ppm: u64,
    /// The nodes' configuration (each node's seed is derived from `seed` and its index).
    pub chord: Config,
    /// Print every store write of this key, with the node and time (debugging aid; also set
    /// by the `SIM_TRACE_KEY` environment variable).
    pub trace_key: Option<Bytes>,
    /// Track which stores held each version, to tell writes the faults destroyed from writes
    /// the system lost ([`Sim::destroyed_writes`]); off by default (it keeps every version).
    pub track_copies: bool,
    /// Virtual nodes per simulated host (SIGCOMM'01 section 6.9): each node index is a host
    /// running this many ring positions, each with its own store partition.
    pub vnodes: u16,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            min_delay_ms: 1,
            max_delay_ms: 5,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_max_ms: 1_000,
            clock_skew: false,
            clock_drift_ppm: 0,
            chord: Config::default(),
            trace_key: std::env::var("SIM_TRACE_KEY").ok().map(Bytes::from),
            track_copies: false,
            vnodes: 1,
        }
    }
}

struct SimNode {
    addr: SocketAddr,
    node: Host,
    /// One partition per vnode. Survives a crash: [`Sim::restart_with_store`] gives it back
    /// to the new life.
    stores: Vec<Arc<MemoryStore>>,
    /// The handles on `stores` the vnodes serve their clients' gets and writes on, as the
    /// server's do (`served.rs`): the writes they applied, for the copy tracker and the trace.
    served: Vec<Arc<ServedStore>>,
    alive: bool,
    /// Bumped on crash and restart so events for the previous life are dropped.
    incarnation: u64,
    /// The time of the tick event in the queue, if any.
    tick_at: Option<Millis>,
    /// The node left gracefully: like an exited process, it refuses connections, so senders
    /// learn at once that it is unreachable (a crashed node stays silent instead).
    exited: bool,
    /// Paused: inputs queue in `inbox`, in arrival order, until [`Sim::resume`].
    paused: bool,
    inbox: VecDeque<Event>,
    clock: NodeClock,
}

enum Event {
    Request {
        to: usize,
        incarnation: u64,
        reply_to: ReplyTo,
        frame: Frame,
        /// The message's number, for a request from a node (`None`: from a client).
        sent: Option<u64>,
    },
    Reply {
        to: usize,
        incarnation: u64,
        from: SocketAddr,
        frame: Frame,
        sent: u64,
    },
    ClientReply {
        handle: u64,
        frame: Frame,
    },
    Tick {
        node: usize,
        incarnation: u64,
    },
    /// The transport tells `to` that `addr` refused the connection.
    Unreachable {
        to: usize,
        incarnation: u64,
        addr: SocketAddr,
    },
}

/// One input fed to a node, as recorded once [`Sim::record_inputs`] is called: what the
/// harness's own tests check the fault model with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// True simulated time.
    pub at: Millis,
    /// The node's clock: the `now` the input carried.
    pub clock: Millis,
    pub node: usize,
    pub kind: InputKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// A request from a node (`sent` numbers the message in send order) or from a client.
    Request {
        from: Option<usize>,
        sent: Option<u64>,
        request_id: u64,
    },
    Reply {
        from: usize,
        sent: u64,
        request_id: u64,
    },
    Unreachable {
        peer: usize,
    },
    Tick,
    StoreDone,
}

/// A simulated cluster.
pub struct Sim {
    config: SimConfig,
    now: Millis,
    rng: Rng,
    nodes: Vec<SimNode>,
    by_addr: HashMap<SocketAddr, usize>,
    queue: BinaryHeap<Reverse<(Millis, u64)>>,
    events: HashMap<u64, Event>,
    next_seq: u64,
    links: Links,
    /// Numbers messages between nodes in send order.
    next_sent: u64,
    next_client: u64,
    /// Client replies by handle, with the (true) time they arrived.
    replies: HashMap<u64, (Millis, Message)>,
    /// Messages sent between nodes.
    pub messages: u64,
    /// Print every message to and from this node (debugging aid, `SIM_TRACE_NODE`).
    trace_node: Option<usize>,
    inputs: Option<Vec<Input>>,
    /// Which stores held each version (when `track_copies`).
    copies: Option<CopyTracker>,
}

/// The address of simulated node `i` (never dialled: the simulation routes by address).
pub fn sim_addr(i: usize) -> SocketAddr {
    let i = i as u32;
    SocketAddr::from((Ipv4Addr::new(127, (i >> 16) as u8, (i >> 8) as u8, i as u8), 7000))
}

impl Sim {
    pub fn new(config: SimConfig) -> Sim {
        let track_copies = config.track_copies;
        Sim {
            rng: Rng::new(config.seed),
            config,
            now: 0,
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            next_seq: 0,
            links: Links::default(),
            next_sent: 0,
            next_client: 0,
            replies: HashMap::new(),
            messages: 0,
            trace_node: std::env::var("SIM_TRACE_NODE").ok().and_then(|v| v.parse().ok()),
            inputs: None,
            copies: track_copies.then(CopyTracker::default),
        }
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// True simulated time.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// Node `i`'s clock now: the `now` its inputs carry.
    pub fn node_now(&self, i: usize) -> Millis {
        self.nodes[i].clock.read(self.now)
    }

    /// Node `i`'s clock model.
    pub fn clock(&self, i: usize) -> NodeClock {
        self.nodes[i].clock
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s vnode 0 (the node itself when hosts run one vnode).
    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i].node.first()
    }

    /// Node `i`'s host: all its vnodes.
    pub fn host(&self, i: usize) -> &Host {
        &self.nodes[i].node
    }

    /// Node `i`'s store, vnode 0's partition (a crashed node's too: it is what a persistent
    /// restart gets back).
    pub fn store(&self, i: usize) -> &MemoryStore {
        &self.nodes[i].stores[0]
    }

    /// Node `i`'s store partitions, one per vnode.
    pub fn stores(&self, i: usize) -> &[Arc<MemoryStore>] {
        &self.nodes[i].stores
    }

    /// Whether node `i` is running or paused (not crashed, not exited).
    pub fn is_alive(&self, i: usize) -> bool {
        self.nodes[i].alive
    }

    pub fn is_paused(&self, i: usize) -> bool {
        self.nodes[i].paused
    }

    /// Indices of live nodes (paused ones included: they are alive, only slow).
    pub fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].alive).collect()
    }

    /// Inputs queued at paused node `i`.
    pub fn queued(&self, i: usize) -> usize {
        self.nodes[i].inbox.len()
    }

    /// Messages held at hold-mode cuts.
    pub fn held_messages(&self) -> usize {
        self.links.held_count()
    }

    /// The number of the last message sent between nodes (messages are numbered from 1 in
    /// send order, as [`InputKind`] reports them).
    pub fn last_sent(&self) -> u64 {
        self.next_sent
    }

    /// Starts recording every input fed to a node (see [`Sim::inputs`]).
    pub fn record_inputs(&mut self) {
        self.inputs.get_or_insert_with(Vec::new);
    }

    /// The inputs recorded since [`Sim::record_inputs`], in the order they were fed.
    pub fn inputs(&self) -> &[Input] {
        self.inputs.as_deref().unwrap_or(&[])
    }

    fn node_config(&self, i: usize) -> Config {
        let mut c = self.config.chord.clone();
        c.seed = self.config.seed.wrapping_mul(0x9e37_79b9).wrapping_add(i as u64);
        c
    }

    /// Adds a node that starts a new ring. Returns its index.
    pub fn add_first(&mut self) -> usize {
        let i = self.push_node();
        let now = self.node_now(i);
        self.nodes[i].node.create(now);
        self.after_input(i);
        i
    }

    /// Adds a node that joins through node `via`. Returns its index.
    pub fn add_joining(&mut self, via: usize) -> usize {
        self.add_joining_through(&[via])
    }

    /// A node that joins through `via[0]`, trying the others in turn if it does not answer
    /// (`chordkv node --join A,B,C`).
    pub fn add_joining_through(&mut self, via: &[usize]) -> usize {
        let i = self.push_node();
        self.join_through(i, via);
        i
    }

    fn join_through(&mut self, i: usize, via: &[usize]) {
        let now = self.node_now(i);
        let addrs: Vec<SocketAddr> = via.iter().map(|&v| self.nodes[v].addr).collect();
        self.nodes[i].node.join(now, addrs[0]);
        if addrs.len() > 1 {
            self.nodes[i].node.add_join_peers(&addrs[1..]);
        }
        self.after_input(i);
    }

    fn push_node(&mut self) -> usize {
        let i = self.nodes.len();
        let addr = sim_addr(i);
        let config = self.node_config(i);
        let clock = self.draw_clock();
        let mut node = Host::new(addr, &self.vnode_ids(addr), config, clock.read(self.now));
        // Each input is a turn of its own (`after_input` ends it).
        node.hold_replica_writes();
        let vnodes = usize::from(self.config.vnodes.max(1));
        let stores: Vec<Arc<MemoryStore>> = (0..vnodes).map(|_| Arc::new(MemoryStore::new())).collect();
        let served = serve_on(&mut node, &stores, self.config.trace_key.as_ref());
        self.nodes.push(SimNode {
            addr,
            node,
            stores,
            served,
            alive: true,
            incarnation: 0,
            tick_at: None,
            exited: false,
            paused: false,
            inbox: VecDeque::new(),
            clock,
        });
        self.by_addr.insert(addr, i);
        i
    }

    /// The ring positions of the host at `addr`: vnode 0 at the SHA-1 of the address (a
    /// host with one vnode is a plain node), vnode `i` at the SHA-1 of `addr#i`.
    fn vnode_ids(&self, addr: SocketAddr) -> Vec<Id> {
        (0..self.config.vnodes.max(1))
            .map(|v| {
                if v == 0 {
                    Id::of_addr(&addr)
                } else {
                    Id::hash(format!("{addr}#{v}").as_bytes())
                }
            })
            .collect()
    }

    /// A new node's clock: true time unless skew or drift is on (only then is the RNG used).
    fn draw_clock(&mut self) -> NodeClock {
        let c = &self.config;
        if !c.clock_skew && c.clock_drift_ppm == 0 {
            return NodeClock::TRUE;
        }
        let half = c.chord.max_clock_offset_ms / 2;
        let ppm = c.clock_drift_ppm.min(clock::MAX_DRIFT_PPM);
        let skew = c.clock_skew;
        let offset_ms = if skew {
            self.rng.range(0, 2 * half) as i64 - half as i64
        } else {
            0
        };
        let drift_ppm = if ppm > 0 {
            self.rng.range(0, 2 * ppm) as i64 - ppm as i64
        } else {
            0
        };
        NodeClock {
            epoch_ms: half,
            offset_ms,
            drift_ppm,
            half_bound_ms: half,
        }
    }

    /// Node `i` stops answering, as a machine that halts: its messages in flight still
    /// arrive, nothing sent to it is answered, inputs queued while paused are lost. Its store
    /// is kept aside for [`Sim::restart_with_store`].
    pub fn crash(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.alive = false;
        n.incarnation += 1;
        n.tick_at = None;
        n.paused = false;
        n.inbox.clear();
    }

    /// Restarts node `i` with an empty store; it joins through `via`.
    pub fn restart(&mut self, i: usize, via: usize) {
        self.restart_through(i, &[via], false);
    }

    /// Restarts node `i` on the same address with the store it had (a persistent store); it
    /// joins through `via`.
    pub fn restart_with_store(&mut self, i: usize, via: usize) {
        self.restart_through(i, &[via], true);
    }

    /// Restarts node `i` (a new `Node`, with its old store when `keep_store`); it joins
    /// through `via[0]`, then the others in turn.
    pub fn restart_through(&mut self, i: usize, via: &[usize], keep_store: bool) {
        let mut config = self.node_config(i);
        let now = self.node_now(i);
        if !keep_store {
            let vnodes = self.nodes[i].stores.len();
            let wiped = std::mem::replace(
                &mut self.nodes[i].stores,
                (0..vnodes).map(|_| Arc::new(MemoryStore::new())).collect(),
            );
            if let Some(copies) = self.copies.as_mut() {
                // A majority of the key's `replicas + 1` copies.
                let quorum = self.config.chord.replicas.div_ceil(2) + 1;
                for w in &wiped {
                    let others = self
                        .nodes
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .flat_map(|(_, n)| n.stores.iter().map(|s| &**s));
                    copies.wiped(w, others, quorum);
                }
            }
        }
        let n = &mut self.nodes[i];
        n.alive = true;
        n.exited = false;
        n.paused = false;
        n.inbox.clear();
        n.incarnation += 1;
        // A restarted process is a new incarnation of the node (the server uses its start time).
        config.incarnation = n.incarnation;
        // It knows whether its store came back with its data (`trust.rs`).
        config.store_kept_copies = keep_store;
        n.tick_at = None;
        let addr = n.addr;
        let ids = self.vnode_ids(addr);
        let mut node = Host::new(addr, &ids, config, now);
        node.hold_replica_writes();
        let served = serve_on(&mut node, &self.nodes[i].stores, self.config.trace_key.as_ref());
        self.nodes[i].node = node;
        self.nodes[i].served = served;
        self.join_through(i, via);
    }

    /// The `(key, version)` pairs whose every copy was wiped by restarts on empty stores after
    /// they had reached a write quorum of stores (needs `track_copies`; see [`copies`]).
    pub fn destroyed_writes(&self) -> &[(Bytes, u64)] {
        self.copies.as_ref().map(|c| c.destroyed()).unwrap_or(&[])
    }

    /// Starts a graceful leave of node `i`.
    pub fn leave(&mut self, i: usize) {
        let now = self.node_now(i);
        self.nodes[i].node.leave(now);
        self.after_input(i);
    }

    /// Node `i` stops processing anything (a stopped process, a long GC pause, a VM
    /// migration): no ticks, no deliveries, no store ops. Messages and client requests to it
    /// queue in arrival order; its peers see silence. Its clock keeps running.
    pub fn pause(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if n.alive && !n.paused {
            n.paused = true;
            n.tick_at = None;
        }
    }

    /// Node `i` handles every input queued while it was paused, in order, then ticks: all
    /// with its clock as it reads now, jumped forward by the pause.
    pub fn resume(&mut self, i: usize) {
        if !self.nodes[i].paused {
            return;
        }
        self.nodes[i].paused = false;
        for event in std::mem::take(&mut self.nodes[i].inbox) {
            let (_, incarnation) = target(&event);
            if self.live(i, incarnation) {
                self.input(i, event);
            }
        }
        if self.nodes[i].alive {
            let clock = self.node_now(i);
            self.log_input(i, clock, InputKind::Tick);
            self.nodes[i].node.tick(clock);
            self.after_input(i);
        }
    }

    /// Cuts the links between every node of `a` and every node of `b`; messages across the
    /// cut are lost.
    pub fn partition(&mut self, a: &[usize], b: &[usize]) {
        self.partition_with(a, b, CutMode::Drop);
    }

    /// Cuts the links between every node of `a` and every node of `b`; messages across the
    /// cut are held and delivered after [`Sim::heal`].
    pub fn partition_hold(&mut self, a: &[usize], b: &[usize]) {
        self.partition_with(a, b, CutMode::Hold);
    }

    pub fn partition_with(&mut self, a: &[usize], b: &[usize], mode: CutMode) {
        for &x in a {
            for &y in b {
                self.links.cut(x, y, mode);
            }
        }
    }

    /// How the link between `a` and `b` is cut, if it is.
    pub fn cut_mode(&self, a: usize, b: usize) -> Option<CutMode> {
        self.links.cut_mode(a, b)
    }

    /// Restores every cut link, and delivers the messages held at hold-mode cuts: those of a
    /// link arrive together after one network delay, in the order they were sent.
    pub fn heal(&mut self) {
        for link in self.links.heal() {
            let at = self.now + self.delay();
            for wire in link {
                if self.nodes[wire.from].incarnation == wire.from_incarnation {
                    self.deliver_at(at, wire);
                }
            }
        }
    }

    /// Sets the probability that a message is lost.
    pub fn set_loss(&mut self, p: f64) {
        self.config.loss = p;
    }

    /// Sets the probability that a message is delivered twice.
    pub fn set_duplicate(&mut self, p: f64) {
        self.config.duplicate = p;
    }

    /// Sets the probability that a message is delayed by up to `reorder_max_ms` more.
    pub fn set_reorder(&mut self, p: f64) {
        self.config.reorder = p;
    }

    /// Sends a client request to node `i`; the reply is fetched with [`Sim::reply`].
    pub fn client_request(&mut self, i: usize, message: Message) -> u64 {
        let handle = self.next_client;
        self.next_client += 1;
        let reply_to = ReplyTo(CLIENT_REPLY_BASE + handle);
        let frame = Frame::new(handle, message);
        let incarnation = self.nodes[i].incarnation;
        self.schedule(
            self.now,
            Event::Request {
                to: i,
                incarnation,
                reply_to,
                frame,
                sent: None,
            },
        );
        handle
    }

    /// The reply to a client request, once it has arrived.
    pub fn reply(&mut self, handle: u64) -> Option<Message> {
        self.replies.remove(&handle).map(|(_, m)| m)
    }

    /// The reply to a client request and the (true) time it arrived, once it has.
    pub fn reply_at(&mut self, handle: u64) -> Option<(Millis, Message)> {
        self.replies.remove(&handle)
    }

    /// Sends a request and runs until its reply arrives or `max_ms` pass.
    pub fn request(&mut self, i: usize, message: Message, max_ms: u64) -> Option<Message> {
        self.request_at(i, message, max_ms).map(|(_, m)| m)
    }

    /// [`Sim::request`], with the time the reply arrived.
    pub fn request_at(&mut self, i: usize, message: Message, max_ms: u64) -> Option<(Millis, Message)> {
        let h = self.client_request(i, message);
        let until = self.now + max_ms;
        while self.now < until {
            if let Some(r) = self.replies.remove(&h) {
                return Some(r);
            }
            if !self.step(until) {
                break;
            }
        }
        self.replies.remove(&h)
    }

    /// `PUT` through node `i`, waiting for the reply.
    pub fn put(&mut self, i: usize, key: &str, value: &str) -> Option<Message> {
        let msg = Message::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        };
        self.request(i, msg, 60_000)
    }

    /// `GET` through node `i`, waiting for the reply.
    pub fn get(&mut self, i: usize, key: &str) -> Option<Message> {
        self.request(
            i,
            Message::Get {
                key: Bytes::copy_from_slice(key.as_bytes()),
            },
            60_000,
        )
    }

    /// Runs the simulation for `ms` milliseconds.
    pub fn run_for(&mut self, ms: u64) {
        let until = self.now + ms;
        self.run_until(until);
    }

    /// Runs every event up to time `t`.
    pub fn run_until(&mut self, t: Millis) {
        while self.step(t) {}
        self.now = self.now.max(t);
    }

    /// Processes the next event if it is due by `limit`; returns whether one was.
    fn step(&mut self, limit: Millis) -> bool {
        let Some(&Reverse((at, seq))) = self.queue.peek() else {
            self.now = self.now.max(limit);
            return false;
        };
        if at > limit {
            self.now = self.now.max(limit);
            return false;
        }
        self.queue.pop();
        self.now = self.now.max(at);
        let Some(event) = self.events.remove(&seq) else {
            return true;
        };
        match event {
            Event::ClientReply { handle, frame } => {
                self.replies.insert(handle, (self.now, frame.message));
            }
            Event::Tick { node, incarnation } => {
                // A paused node's tick was cancelled (`tick_at` cleared); it ticks on resume.
                if self.live(node, incarnation) && self.nodes[node].tick_at == Some(at) {
                    self.nodes[node].tick_at = None;
                    let clock = self.node_now(node);
                    self.log_input(node, clock, InputKind::Tick);
                    self.nodes[node].node.tick(clock);
                    self.after_input(node);
                }
            }
            event => {
                let (to, incarnation) = target(&event);
                if !self.live(to, incarnation) {
                    return true;
                }
                if self.nodes[to].paused {
                    self.nodes[to].inbox.push_back(event);
                } else {
                    self.input(to, event);
                }
            }
        }
        true
    }

    /// Feeds a request, reply or unreachable notice to running node `i`.
    fn input(&mut self, i: usize, event: Event) {
        let clock = self.node_now(i);
        match event {
            Event::Request {
                reply_to,
                frame,
                sent,
                ..
            } => {
                let from = (reply_to.0 < CLIENT_REPLY_BASE).then_some((reply_to.0 & 0xffff_ffff) as usize);
                let request_id = frame.request_id;
                if self.trace_node == Some(i) {
                    let pred = frame
                        .vnode
                        .and_then(|v| self.nodes[i].node.vnode(usize::from(v)).predecessor())
                        .map(|p| p.addr.to_string());
                    println!(
                        "trace t={} node {i}#{} (pred {pred:?}) <= {from:?} #{request_id} {:?}",
                        self.now,
                        frame.vnode.map_or(-1, i32::from),
                        frame.message
                    );
                }
                self.log_input(
                    i,
                    clock,
                    InputKind::Request {
                        from,
                        sent,
                        request_id,
                    },
                );
                self.nodes[i].node.handle_request(clock, reply_to, frame);
            }
            Event::Reply {
                from, frame, sent, ..
            } => {
                if self.trace_node == Some(i) {
                    let from_i = self.by_addr.get(&from);
                    println!(
                        "trace t={} node {i} <- {from_i:?} #{} {:?}",
                        self.now, frame.request_id, frame.message
                    );
                }
                let request_id = frame.request_id;
                let from_i = self.by_addr[&from];
                self.log_input(
                    i,
                    clock,
                    InputKind::Reply {
                        from: from_i,
                        sent,
                        request_id,
                    },
                );
                self.nodes[i].node.handle_reply(clock, from, frame);
            }
            Event::Unreachable { addr, .. } => {
                let peer = self.by_addr[&addr];
                self.log_input(i, clock, InputKind::Unreachable { peer });
                self.nodes[i].node.peer_unreachable(clock, addr);
            }
            Event::Tick { .. } | Event::ClientReply { .. } => {
                unreachable!("ticks and client replies are not node inputs") // faulty code
            }
        }
        self.after_input(i);
    }

    fn log_input(&mut self, node: usize, clock: Millis, kind: InputKind) {
        if let Some(log) = &mut self.inputs {
            log.push(Input {
                at: self.now,
                clock,
                node,
                kind,
            });
        }
    }

    fn live(&self, i: usize, incarnation: u64) -> bool {
        self.nodes[i].alive && self.nodes[i].incarnation == incarnation
    }

    fn schedule(&mut self, at: Millis, event: Event) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.events.insert(seq, event);
        self.queue.push(Reverse((at, seq)));
    }

    fn delay(&mut self) -> u64 {
        self.rng.range(
            self.config.min_delay_ms,
            self.config.max_delay_ms.max(self.config.min_delay_ms),
        )
    }

    /// The extra delay of a reordered message (0 for most; the RNG is untouched when off).
    fn reorder_delay(&mut self) -> u64 {
        if self.config.reorder > 0.0 && self.rng.chance(self.config.reorder) {
            self.rng.range(1, self.config.reorder_max_ms.max(1))
        } else {
            0
        }
    }

    /// Puts a message between nodes on the network: lost, held at a cut, or delivered after
    /// a delay (perhaps twice, perhaps late).
    fn transmit(&mut self, wire: Wire) {
        let lost = self.config.loss > 0.0 && self.rng.chance(self.config.loss);
        match self.links.cut_mode(wire.from, wire.to) {
            Some(CutMode::Hold) if !lost => return self.links.hold(wire),
            Some(_) => return,
            None if lost => return,
            None => {}
        }
        let at = self.now + self.delay();
        if self.refused(&wire) {
            return self.deliver_at(at, wire);
        }
        let at = at + self.reorder_delay();
        if self.config.duplicate > 0.0 && self.rng.chance(self.config.duplicate) {
            let again = self.now + self.delay() + self.reorder_delay();
            self.deliver_at(again, wire.clone());
        }
        self.deliver_at(at, wire);
    }

    /// Whether `wire` is a request to a node that exited (its port refuses connections).
    fn refused(&self, wire: &Wire) -> bool {
        matches!(wire.payload, Payload::Request { .. }) && self.nodes[wire.to].exited
    }

    /// Schedules the arrival of `wire` at `at`, or for a request to an exited node the
    /// transport's "unreachable" notice to its sender.
    fn deliver_at(&mut self, at: Millis, wire: Wire) {
        if self.refused(&wire) {
            let addr = self.nodes[wire.to].addr;
            let event = Event::Unreachable {
                to: wire.from,
                incarnation: wire.from_incarnation,
                addr,
            };
            return self.schedule(at, event);
        }
        let event = match wire.payload {
            Payload::Request { reply_to, frame } => Event::Request {
                to: wire.to,
                incarnation: wire.to_incarnation,
                reply_to,
                frame,
                sent: Some(wire.sent),
            },
            Payload::Reply { frame } => Event::Reply {
                to: wire.to,
                incarnation: wire.to_incarnation,
                from: self.nodes[wire.from].addr,
                frame,
                sent: wire.sent,
            },
        };
        self.schedule(at, event);
    }

    /// Carries out everything node `i` wants done, then schedules its next tick.
    fn after_input(&mut self, i: usize) {
        let now = self.now;
        let trace = self.trace_node == Some(i);
        loop {
            while let Some(out) = self.nodes[i].node.poll_output() {
                self.note_served(i);
                if trace {
                    match &out {
                        Output::Send { to, frame } => println!(
                            "trace t={now} node {i} -> {:?}#{} #{} {:?}",
                            self.by_addr.get(&to.host),
                            to.vnode,
                            frame.request_id,
                            frame.message
                        ),
                        Output::Reply { to, frame } => {
                            println!(
                                "trace t={now} node {i} reply to {:?} #{} {:?}",
                                to, frame.request_id, frame.message
                            )
                        }
                        _ => {}
                    }
                }
                match out {
                    Output::Send { to, frame } => {
                        self.messages += 1;
                        let Some(&j) = self.by_addr.get(&to.host) else {
                            continue;
                        };
                        let from_incarnation = self.nodes[i].incarnation;
                        // The reply must reach this life of the sender: carry its incarnation.
                        let reply_to = ReplyTo(((from_incarnation & 0xffff) << 32) | i as u64);
                        let wire = Wire {
                            from: i,
                            to: j,
                            from_incarnation,
                            to_incarnation: self.nodes[j].incarnation,
                            sent: self.next_sent(),
                            payload: Payload::Request { reply_to, frame },
                        };
                        self.transmit(wire);
                    }
                    Output::Reply { to, frame } => {
                        if to.0 >= CLIENT_REPLY_BASE {
                            let handle = to.0 - CLIENT_REPLY_BASE;
                            self.schedule(now, Event::ClientReply { handle, frame });
                            continue;
                        }
                        self.messages += 1;
                        let j = (to.0 & 0xffff_ffff) as usize;
                        if j >= self.nodes.len() {
                            continue;
                        }
                        let wire = Wire {
                            from: i,
                            to: j,
                            from_incarnation: self.nodes[i].incarnation,
                            to_incarnation: to.0 >> 32,
                            sent: self.next_sent(),
                            payload: Payload::Reply { frame },
                        };
                        self.transmit(wire);
                    }
                    Output::Store { id, vnode, op } => {
                        let v = usize::from(vnode);
                        if let Some(key) = &self.config.trace_key {
                            self.trace_store_op(i, v, key, &op);
                        }
                        let written = self.copies.as_ref().map(|_| CopyTracker::written_by(&op));
                        let result = execute(&*self.nodes[i].stores[v] as &dyn Store, op);
                        if let (Some(copies), Some(written)) = (self.copies.as_mut(), written) {
                            copies.stored(i, &self.nodes[i].stores[v], written);
                        }
                        let clock = self.node_now(i);
                        self.log_input(i, clock, InputKind::StoreDone);
                        self.nodes[i].node.store_done(clock, id, result);
                    }
                    Output::Left => {
                        // The driver stops a node once it has left.
                        self.nodes[i].alive = false;
                        self.nodes[i].exited = true;
                        self.nodes[i].incarnation += 1;
                    }
                }
            }
            self.note_served(i);
            if !self.nodes[i].alive {
                return;
            }
            // Inputs that reach the node at the same moment make one turn, as the frames of
            // one read do for the server; the last ends it, and the replica writes they made
            // go out.
            if self.next_is_input_to(i) {
                break;
            }
            let clock = self.node_now(i);
            if !self.nodes[i].node.end_turn(clock) {
                break;
            }
        }
        let deadline = self.nodes[i].node.next_deadline();
        let due = self.nodes[i].clock.true_time_at(deadline, now + 1);
        if self.nodes[i].tick_at.is_none_or(|t| due < t) {
            self.nodes[i].tick_at = Some(due);
            let incarnation = self.nodes[i].incarnation;
            self.schedule(due, Event::Tick { node: i, incarnation });
        }
    }

    /// Whether the next event is an input to this life of node `i`, due now.
    fn next_is_input_to(&self, i: usize) -> bool {
        let Some(&Reverse((at, seq))) = self.queue.peek() else {
            return false;
        };
        at <= self.now
            && self.events.get(&seq).is_some_and(|e| {
                matches!(
                    e,
                    Event::Request { .. } | Event::Reply { .. } | Event::Unreachable { .. }
                ) && target(e) == (i, self.nodes[i].incarnation)
            })
    }

    fn next_sent(&mut self) -> u64 {
        self.next_sent += 1;
        self.next_sent
    }

    fn trace_store_op(&self, i: usize, v: usize, key: &Bytes, op: &chordkv_core::store::StoreOp) {
        use chordkv_core::store::StoreOp;
        let hit = match op {
            StoreOp::Put { key: k, entry, .. } => (k == key).then(|| format!("put v{}", entry.version >> 16)),
            StoreOp::Get { key: k, .. } => (k == key).then(|| {
                let held = self.nodes[i].stores[v].get(key).ok().flatten();
                format!("get (holds v{:?})", held.map(|e| e.version >> 16))
            }),
            StoreOp::PutMany { items } => items
                .iter()
                .find(|it| it.key == key)
                .map(|it| format!("transfer-in v{}", it.version >> 16)),
            StoreOp::RemoveMany { keys } => keys
                .iter()
                .find(|(k, _)| k == key)
                .map(|_| "transfer-out".to_string()),
            StoreOp::RetainRanges { keep } => {
                let id = Id::of_key(key);
                let held = self.nodes[i].stores[v].get(key).ok().flatten().is_some();
                (held
                    && !keep
                        .iter()
                        .any(|(s, e)| chordkv_protocol::in_half_open(&id, s, e)))
                .then(|| "stray-drop".to_string())
            }
            _ => None,
        };
        if let Some(what) = hit {
            self.trace_store_line(i, v, &what);
        }
    }

    fn trace_store_line(&self, i: usize, v: usize, what: &str) {
        let n = self.nodes[i].node.vnode(v);
        println!(
            "trace t={} node {i}#{v} {what}: phase {:?} pred {:?} succ {:?}",
            self.now,
            n.phase(),
            n.predecessor().and_then(|p| self.index_of(&p.addr)),
            self.index_of(&n.successor().addr)
        );
    }

    /// Gives the copy tracker and the key trace the writes node `i`'s vnodes served on their
    /// stores since the last call (`served.rs`), as the store ops the simulator runs give
    /// them theirs.
    fn note_served(&mut self, i: usize) {
        for v in 0..self.nodes[i].served.len() {
            for served in self.nodes[i].served[v].take_log() {
                match served {
                    Served::Applied(key, version) => {
                        if self.config.trace_key.as_ref() == Some(&key) {
                            self.trace_store_line(i, v, &format!("served put v{}", version >> 16));
                        }
                        if let Some(copies) = self.copies.as_mut() {
                            copies.held(i, key, version);
                        }
                    }
                    Served::TracedRead(held) => {
                        let what = format!("served get (holds v{:?})", held.map(|v| v >> 16));
                        self.trace_store_line(i, v, &what);
                    }
                }
            }
        }
    }
}

/// Makes `host`'s vnodes serve their clients' gets and writes on `stores` (one per vnode), as
/// the server's vnodes do, through handles that log the writes applied and the reads of
/// `trace_key`.
fn serve_on(
    host: &mut Host,
    stores: &[Arc<MemoryStore>],
    trace_key: Option<&Bytes>,
) -> Vec<Arc<ServedStore>> {
    let served: Vec<Arc<ServedStore>> = stores
        .iter()
        .map(|s| Arc::new(ServedStore::new(Arc::clone(s), trace_key.cloned())))
        .collect();
    host.serve_on_stores_inline(served.iter().map(|s| Arc::clone(s) as Arc<dyn Store>).collect());
    served
}

/// The node an input event is for, and the life it is for.
fn target(event: &Event) -> (usize, u64) {
    match *event {
        Event::Request { to, incarnation, .. }
        | Event::Reply { to, incarnation, .. }
        | Event::Unreachable { to, incarnation, .. } => (to, incarnation),
        Event::Tick { node, incarnation } => (node, incarnation),
        Event::ClientReply { .. } => unreachable!("a client reply is for no node"), // faulty code
    }
}
