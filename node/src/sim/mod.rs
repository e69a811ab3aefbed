//! A deterministic simulated network that drives many [`Node`] state machines, the same code
//! the server runs, with seeded message delays, loss, crashes, restarts and partitions.
//!
//! Modelled on raft-rs' test harness: the simulation owns every node and a priority queue of
//! timed events (message deliveries, timer ticks); [`Sim::run_until`] pops them in time order.
//! Given a seed it replays exactly: one RNG decides every delay and loss, ties are broken by
//! insertion order, and nothing reads the wall clock.
//!
//! A crashed node goes silent (its messages vanish and requests to it time out), the harsh
//! case of a machine that stops answering rather than a process whose port refuses.
//!
//! Oracles: [`Sim::ring_is_consistent`], [`Sim::fingers_are_correct`] and [`Sim::owner_of`]
//! compute the true ring from the set of live nodes, for tests to compare against.

pub mod lookup;

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;
use chordkv_protocol::{Frame, Id, Message, NodeRef};

use crate::chord::{Config, Millis, Node, Output, Phase, ReplyTo};
use crate::rng::Rng;
use crate::store::{execute, MemoryStore, Store};

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
    /// The nodes' configuration (each node's seed is derived from `seed` and its index).
    pub chord: Config,
    /// Print every store write of this key, with the node and time (debugging aid; also set
    /// by the `SIM_TRACE_KEY` environment variable).
    pub trace_key: Option<Bytes>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            min_delay_ms: 1,
            max_delay_ms: 5,
            loss: 0.0,
            chord: Config::default(),
            trace_key: std::env::var("SIM_TRACE_KEY").ok().map(Bytes::from),
        }
    }
}

struct SimNode {
    addr: SocketAddr,
    node: Node,
    store: MemoryStore,
    alive: bool,
    /// Bumped on restart so events for the previous life are dropped.
    incarnation: u64,
    /// The time of the tick event in the queue, if any.
    tick_at: Option<Millis>,
    /// The node left gracefully: like an exited process, it refuses connections, so senders
    /// learn at once that it is unreachable (a crashed node stays silent instead).
    exited: bool,
}

enum Event {
    Request {
        to: usize,
        incarnation: u64,
        reply_to: ReplyTo,
        frame: Frame,
    },
    Reply {
        to: usize,
        incarnation: u64,
        from: SocketAddr,
        frame: Frame,
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
    /// Pairs of node indices (low, high) that cannot talk.
    cut: BTreeSet<(usize, usize)>,
    next_client: u64,
    replies: HashMap<u64, Message>,
    /// Messages delivered between nodes.
    pub messages: u64,
    /// Print every message to and from this node (debugging aid, `SIM_TRACE_NODE`).
    trace_node: Option<usize>,
}

/// The address of simulated node `i` (never dialled: the simulation routes by address).
pub fn sim_addr(i: usize) -> SocketAddr {
    let i = i as u32;
    SocketAddr::from((Ipv4Addr::new(127, (i >> 16) as u8, (i >> 8) as u8, i as u8), 7000))
}

impl Sim {
    pub fn new(config: SimConfig) -> Sim {
        Sim {
            rng: Rng::new(config.seed),
            config,
            now: 0,
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            next_seq: 0,
            cut: BTreeSet::new(),
            next_client: 0,
            replies: HashMap::new(),
            messages: 0,
            trace_node: std::env::var("SIM_TRACE_NODE").ok().and_then(|v| v.parse().ok()),
        }
    }

    pub fn now(&self) -> Millis {
        self.now
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i].node
    }

    pub fn store(&self, i: usize) -> &MemoryStore {
        &self.nodes[i].store
    }

    pub fn is_alive(&self, i: usize) -> bool {
        self.nodes[i].alive
    }

    /// Indices of live nodes.
    pub fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].alive).collect()
    }

    fn node_config(&self, i: usize) -> Config {
        let mut c = self.config.chord.clone();
        c.seed = self.config.seed.wrapping_mul(0x9e37_79b9).wrapping_add(i as u64);
        c
    }

    /// Adds a node that starts a new ring. Returns its index.
    pub fn add_first(&mut self) -> usize {
        let i = self.push_node();
        let now = self.now;
        self.nodes[i].node.create(now);
        self.after_input(i);
        i
    }

    /// Adds a node that joins through node `via`. Returns its index.
    pub fn add_joining(&mut self, via: usize) -> usize {
        let i = self.push_node();
        let (now, via) = (self.now, self.nodes[via].addr);
        self.nodes[i].node.join(now, via);
        self.after_input(i);
        i
    }

    /// A node that joins through `via[0]`, trying the others in turn if it does not answer
    /// (`chordkv node --join A,B,C`).
    pub fn add_joining_through(&mut self, via: &[usize]) -> usize {
        let i = self.push_node();
        let now = self.now;
        let addrs: Vec<_> = via.iter().map(|&v| self.nodes[v].addr).collect();
        self.nodes[i].node.join(now, addrs[0]);
        self.nodes[i].node.add_join_peers(&addrs[1..]);
        self.after_input(i);
        i
    }

    fn push_node(&mut self) -> usize {
        let i = self.nodes.len();
        let addr = sim_addr(i);
        let config = self.node_config(i);
        let node = Node::new(NodeRef::from_addr(addr), config, self.now);
        self.nodes.push(SimNode {
            addr,
            node,
            store: MemoryStore::new(),
            alive: true,
            incarnation: 0,
            tick_at: None,
            exited: false,
        });
        self.by_addr.insert(addr, i);
        i
    }

    /// Node `i` stops answering, losing its memory store.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].alive = false;
        self.nodes[i].incarnation += 1;
        self.nodes[i].tick_at = None;
    }

    /// Restarts crashed node `i` with an empty store; it joins through `via`.
    pub fn restart(&mut self, i: usize, via: usize) {
        let mut config = self.node_config(i);
        let n = &mut self.nodes[i];
        n.alive = true;
        n.exited = false;
        n.incarnation += 1;
        // A restarted process is a new incarnation of the node (the server uses its start time).
        config.incarnation = n.incarnation;
        n.tick_at = None;
        n.store = MemoryStore::new();
        n.node = Node::new(NodeRef::from_addr(n.addr), config, self.now);
        let via = self.nodes[via].addr;
        let now = self.now;
        self.nodes[i].node.join(now, via);
        self.after_input(i);
    }

    /// Starts a graceful leave of node `i`.
    pub fn leave(&mut self, i: usize) {
        let now = self.now;
        self.nodes[i].node.leave(now);
        self.after_input(i);
    }

    /// Cuts the links between every node of `a` and every node of `b`.
    pub fn partition(&mut self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                if x != y {
                    self.cut.insert((x.min(y), x.max(y)));
                }
            }
        }
    }

    /// Restores every cut link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Sets the probability that a message is lost.
    pub fn set_loss(&mut self, p: f64) {
        self.config.loss = p;
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
            },
        );
        handle
    }

    /// The reply to a client request, once it has arrived.
    pub fn reply(&mut self, handle: u64) -> Option<Message> {
        self.replies.remove(&handle)
    }

    /// Sends a request and runs until its reply arrives or `max_ms` pass.
    pub fn request(&mut self, i: usize, message: Message, max_ms: u64) -> Option<Message> {
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
        let now = self.now;
        match event {
            Event::Request {
                to,
                incarnation,
                reply_to,
                frame,
            } => {
                if self.live(to, incarnation) {
                    self.nodes[to].node.handle_request(now, reply_to, frame);
                    self.after_input(to);
                }
            }
            Event::Reply {
                to,
                incarnation,
                from,
                frame,
            } => {
                if self.trace_node == Some(to) {
                    let from_i = self.by_addr.get(&from);
                    println!(
                        "trace t={now} node {to} <- {from_i:?} #{} {:?}",
                        frame.request_id, frame.message
                    );
                }
                if self.live(to, incarnation) {
                    self.nodes[to].node.handle_reply(now, from, frame);
                    self.after_input(to);
                }
            }
            Event::ClientReply { handle, frame } => {
                self.replies.insert(handle, frame.message);
            }
            Event::Tick { node, incarnation } => {
                if self.live(node, incarnation) && self.nodes[node].tick_at == Some(at) {
                    self.nodes[node].tick_at = None;
                    self.nodes[node].node.tick(now);
                    self.after_input(node);
                }
            }
            Event::Unreachable {
                to,
                incarnation,
                addr,
            } => {
                if self.live(to, incarnation) {
                    self.nodes[to].node.peer_unreachable(now, addr);
                    self.after_input(to);
                }
            }
        }
        true
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

    fn link_up(&mut self, a: usize, b: usize) -> bool {
        let lost = self.config.loss > 0.0 && self.rng.chance(self.config.loss);
        !self.cut.contains(&(a.min(b), a.max(b))) && !lost
    }

    /// Carries out everything node `i` wants done, then schedules its next tick.
    fn after_input(&mut self, i: usize) {
        let now = self.now;
        let trace = self.trace_node == Some(i);
        while let Some(out) = self.nodes[i].node.poll_output() {
            if trace {
                match &out {
                    Output::Send { to, frame } => println!(
                        "trace t={now} node {i} -> {:?} #{} {:?}",
                        self.by_addr.get(to),
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
                    let Some(&j) = self.by_addr.get(&to) else { continue };
                    if !self.link_up(i, j) {
                        continue;
                    }
                    if self.nodes[j].exited {
                        let (at, incarnation) = (now + self.delay(), self.nodes[i].incarnation);
                        self.schedule(
                            at,
                            Event::Unreachable {
                                to: i,
                                incarnation,
                                addr: to,
                            },
                        );
                        continue;
                    }
                    let at = now + self.delay();
                    let incarnation = self.nodes[j].incarnation;
                    // The reply must reach this life of the sender: carry its incarnation.
                    let reply_to = ReplyTo(((self.nodes[i].incarnation & 0xffff) << 32) | i as u64);
                    self.schedule(
                        at,
                        Event::Request {
                            to: j,
                            incarnation,
                            reply_to,
                            frame,
                        },
                    );
                }
                Output::Reply { to, frame } => {
                    if to.0 >= CLIENT_REPLY_BASE {
                        let handle = to.0 - CLIENT_REPLY_BASE;
                        self.schedule(now, Event::ClientReply { handle, frame });
                        continue;
                    }
                    self.messages += 1;
                    let j = (to.0 & 0xffff_ffff) as usize;
                    let incarnation = to.0 >> 32;
                    if j >= self.nodes.len() || !self.link_up(i, j) {
                        continue;
                    }
                    let at = now + self.delay();
                    let from = self.nodes[i].addr;
                    self.schedule(
                        at,
                        Event::Reply {
                            to: j,
                            incarnation,
                            from,
                            frame,
                        },
                    );
                }
                Output::Store { id, op } => {
                    if let Some(key) = &self.config.trace_key {
                        self.trace_store_op(i, key, &op);
                    }
                    let result = execute(&self.nodes[i].store as &dyn Store, op);
                    self.nodes[i].node.store_done(now, id, result);
                }
                Output::Left => {
                    // The driver stops a node once it has left.
                    self.nodes[i].alive = false;
                    self.nodes[i].exited = true;
                    self.nodes[i].incarnation += 1;
                }
            }
        }
        if !self.nodes[i].alive {
            return;
        }
        let due = self.nodes[i].node.next_deadline().max(now + 1);
        if self.nodes[i].tick_at.is_none_or(|t| due < t) {
            self.nodes[i].tick_at = Some(due);
            let incarnation = self.nodes[i].incarnation;
            self.schedule(due, Event::Tick { node: i, incarnation });
        }
    }

    fn trace_store_op(&self, i: usize, key: &Bytes, op: &crate::store::StoreOp) {
        use crate::store::StoreOp;
        let hit = match op {
            StoreOp::Put { key: k, entry } => (k == key).then(|| format!("put v{}", entry.version >> 16)),
            StoreOp::PutMany { items } => items
                .iter()
                .find(|it| it.key == key)
                .map(|it| format!("transfer-in v{}", it.version >> 16)),
            StoreOp::RemoveMany { keys } => keys
                .iter()
                .find(|(k, _)| k == key)
                .map(|_| "transfer-out".to_string()),
            StoreOp::RetainRanges { keep } => {
                let id = Id::hash(key);
                let held = self.nodes[i].store.get(key).ok().flatten().is_some();
                (held
                    && !keep
                        .iter()
                        .any(|(s, e)| chordkv_protocol::in_half_open(&id, s, e)))
                .then(|| "stray-drop".to_string())
            }
            _ => None,
        };
        if let Some(what) = hit {
            let n = &self.nodes[i].node;
            println!(
                "trace t={} node {i} {what}: phase {:?} pred {:?} succ {:?}",
                self.now,
                n.phase(),
                n.predecessor().and_then(|p| self.index_of(&p.addr)),
                self.index_of(&n.successor().addr)
            );
        }
    }

    // ---- oracles -------------------------------------------------------------------------------

    /// Live nodes that are in the ring, sorted by id.
    fn ring(&self) -> Vec<NodeRef> {
        let mut v: Vec<NodeRef> = self
            .nodes
            .iter()
            .filter(|n| n.alive && matches!(n.node.phase(), Phase::Active | Phase::Joined | Phase::Leaving))
            .map(|n| n.node.me())
            .collect();
        v.sort();
        v
    }

    /// The live node that owns `id`.
    pub fn owner_of(&self, id: &Id) -> Option<NodeRef> {
        let ring = self.ring();
        let i = ring.partition_point(|n| n.id < *id);
        ring.get(i).or(ring.first()).copied()
    }

    /// The node index of an address.
    pub fn index_of(&self, addr: &SocketAddr) -> Option<usize> {
        self.by_addr.get(addr).copied()
    }

    /// Whether every live node is active, with the true successor and predecessor, and its
    /// successor list is the true list of following nodes. Returns the first problem found.
    pub fn ring_problem(&self) -> Option<String> {
        if let Some(n) = self.nodes.iter().find(|n| n.alive && !n.node.in_ring()) {
            return Some(format!("{} is live but {:?}", n.addr, n.node.phase()));
        }
        let ring = self.ring();
        let n = ring.len();
        for (k, me) in ring.iter().enumerate() {
            let sim = &self.nodes[self.by_addr[&me.addr]];
            let node = &sim.node;
            if node.phase() != Phase::Active || !node.is_settled() {
                return Some(format!(
                    "{} is {:?}, settled={}",
                    me.addr,
                    node.phase(),
                    node.is_settled()
                ));
            }
            if n == 1 {
                if !node.successors().is_empty() {
                    return Some(format!("lone node {} has successors", me.addr));
                }
                continue;
            }
            let want_pred = ring[(k + n - 1) % n];
            if node.predecessor().map(|p| p.addr) != Some(want_pred.addr) {
                return Some(format!(
                    "{} predecessor {:?}, want {}",
                    me.addr,
                    node.predecessor().map(|p| p.addr),
                    want_pred.addr
                ));
            }
            let want: Vec<SocketAddr> = (1..n)
                .take(self.config.chord.successors)
                .map(|d| ring[(k + d) % n].addr)
                .collect();
            let got: Vec<SocketAddr> = node.successors().iter().map(|s| s.addr).collect();
            if got != want {
                return Some(format!("{} successors {:?}, want {:?}", me.addr, got, want));
            }
        }
        None
    }

    pub fn ring_is_consistent(&self) -> bool {
        self.ring_problem().is_none()
    }

    /// Whether every live node's every finger points at the true successor of its start.
    pub fn fingers_are_correct(&self) -> bool {
        self.finger_errors() == 0
    }

    /// How many fingers, over all live nodes, are wrong.
    pub fn finger_errors(&self) -> usize {
        let ring = self.ring();
        let mut wrong = 0;
        for me in &ring {
            let table = self.nodes[self.by_addr[&me.addr]].node.routing();
            for i in 0..table.finger_count() {
                let start = table.finger_start(i);
                let truth = self.owner_of(&start).filter(|o| o.addr != me.addr);
                if table.finger(i).map(|f| f.addr) != truth.map(|t| t.addr) {
                    wrong += 1;
                }
            }
        }
        wrong
    }

    /// Runs until the ring is consistent, checking every `step_ms`, for at most `max_ms`.
    /// Returns whether it converged.
    pub fn run_until_consistent(&mut self, step_ms: u64, max_ms: u64) -> bool {
        let until = self.now + max_ms;
        while self.now < until {
            if self.ring_is_consistent() {
                return true;
            }
            self.run_for(step_ms);
        }
        self.ring_is_consistent()
    }

    /// Live keys held by each node, in node order (dead nodes hold 0).
    pub fn keys_per_node(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| if n.alive { n.store.len().unwrap_or(0) } else { 0 })
            .collect()
    }

    /// Whether the live node at `i` holds a live value for `key`.
    pub fn holds(&self, i: usize, key: &[u8]) -> Option<Bytes> {
        self.nodes[i].store.get(key).ok().flatten().and_then(|e| e.value)
    }
}
