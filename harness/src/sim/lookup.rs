//! The lookup simulator behind `chordkv sim`: path lengths, routing state and maintenance
//! traffic of each routing scheme on rings of up to 10^6 nodes.
//!
//! It drives the real [`Node`] state machines, the code the server runs, over a lean
//! simulated network: one priority queue of timed deliveries and ticks, seeded delays, no
//! loss, crashes as silence. It is leaner than [`super::Sim`] (no per-node store, no address
//! map, events held inline), which is what lets 10^5 nodes and 10^6 lookups run in well
//! under a minute.
//!
//! A run:
//!
//! 1. **Build.** N nodes at `sim_addr(0..N)`, ids from their addresses. Like the Chord paper's
//!    simulator, each node is initialised from the oracle ([`Node::bootstrap`]): predecessor,
//!    successor list, every finger, and for one-hop the membership table. No joins.
//!    With `vnodes = V > 1` (SIGCOMM'01 section 6.9) each of the N addresses is a *host*
//!    ([`Host`]) running V nodes, one per ring position (see **Virtual nodes** below).
//! 2. **Maintenance window** (`maintenance_ms` of simulated time): every node runs stabilize,
//!    check_predecessor and fix_fingers (and one-hop dissemination) on its own timers; the
//!    routing maintenance requests sent in the window give `maintenance_msgs_per_node_per_s`.
//! 3. **Failures.** A fraction `fail_fraction` of the nodes (hosts) crash at once (chosen by
//!    the seed); lookups start at once, before stabilization repairs anything.
//! 4. **Lookups.** L client `GET`s, each sent to a random live node or host (the *entry*) for a
//!    key drawn from the workload, exactly as a client would: the entry routes it as it routes
//!    every client operation (iterative `FIND_SUCCESSOR` steps, or the location cache, or the
//!    membership table, then the operation to the owner with `FLAG_DIRECT`). At most
//!    `concurrency` are in flight; maintenance keeps running meanwhile.
//!
//! **Hops** are the node's own count, carried in the reply: one per message to another node on
//! the way to the owner (a `FIND_SUCCESSOR` step, the operation sent to the owner, a redirect
//! followed); a key the entry owns takes 0 hops. A lookup the entry resolves from its
//! successor list takes 1 hop (the operation to the owner); one that asks k other nodes takes
//! k + 1. The Chord paper's path length counts the nodes a lookup visits to *find* the owner
//! (SIGCOMM'01 section 6.3: "the number of nodes that must be contacted"), which includes the
//! owner; this is the same number (messages to k intermediate nodes and to the owner, k + 1).
//!
//! **Failed lookups** follow SIGCOMM'01 section 6.4: "a correct lookup of a key is one that
//! finds the node that was originally responsible for the key, before the failures". The
//! simulated store answers every `GET` with the index of the node that served it (as the
//! version), so a lookup fails if it errors or times out or is served by any node other than
//! the key's owner before the crashes. With no replication (the nodes run with `replicas =
//! 0`, as the paper's simulator stores one copy) a key whose owner crashed can only fail,
//! so the failed fraction is about the crashed fraction. Hop statistics are over the lookups
//! that succeeded.
//!
//! **Virtual nodes.** With `vnodes = V > 1` the ring has N x V positions: host `h` at
//! `sim_addr(h)` runs vnode `i` at position `ids[h][i]`, reached at
//! `NodeAddr::new(sim_addr(h), i)`. The positions come from [`Allocation`]: `Random` is
//! [`tokens::random_positions`] (position 0 at the address's SHA-1, as without vnodes),
//! `Balanced` is [`tokens::Ring::join`] for the hosts in index order. Every vnode is
//! bootstrapped from the oracle of all positions, the host delivers messages between its own
//! vnodes itself, and this driver sees, and delays, only what crosses the network. So:
//!
//! - a *node* in the report is a ring position (a vnode), a *host* an address; with one vnode
//!   per host they are the same;
//! - hops are network hops (a step to a sibling vnode costs none, `ops.rs` `hop_cost`);
//! - a lookup enters at a random live host, which picks the vnode (the one serving the key, or
//!   the closest before it); it succeeds when served by the vnode that owned the key before the
//!   crashes;
//! - a crash silences a whole host, all its vnodes at once;
//! - maintenance per host counts the requests its vnodes send over the network
//!   (`maintenance_net_per_host_per_s`: in the window no client operation runs and nothing is
//!   replicated, so every request there is routing maintenance), beside everything its vnodes
//!   count as sent, to each other included (`maintenance_per_host_per_s`).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use chordkv_protocol::{Frame, Id, Message, NodeRef};

pub use super::balance::Allocation;
use super::sim_addr;
use crate::zipfian::Zipfian;
use chordkv_core::chord::{Config, Host, Millis, Node, Output, ReplyTo, Routing};
use chordkv_core::rng::Rng;
use chordkv_core::store::{execute, Entry, MemoryStore, Store, StoreError, StoreOp, StoreOutcome};
use chordkv_core::tokens;
use chordkv_protocol::NodeAddr;

/// `ReplyTo` values at or above this are simulated clients (the lookup's index below it).
const CLIENT: u64 = 1 << 62;
/// YCSB's zipfian constant.
pub const ZIPFIAN_THETA: f64 = 0.99;

/// How lookups choose their keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Every key equally likely.
    Uniform,
    /// YCSB zipfian (theta 0.99) over the key ranks: rank 0 is the most popular.
    Zipfian,
    /// Every lookup for the same key (loadgen's `hotkey`).
    Hotkey,
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "uniform" => Ok(Workload::Uniform),
            "zipfian" => Ok(Workload::Zipfian),
            "hotkey" => Ok(Workload::Hotkey),
            other => Err(format!(
                "unknown workload '{other}' (expected uniform, zipfian or hotkey)"
            )),
        }
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Workload::Uniform => "uniform",
            Workload::Zipfian => "zipfian",
            Workload::Hotkey => "hotkey",
        })
    }
}

/// What to simulate. `Default` is the documented `chordkv sim` default.
#[derive(Clone, Debug)]
pub struct LookupSimConfig {
    /// Hosts (addresses); each runs `vnodes` nodes.
    pub nodes: usize,
    /// Ring positions (virtual nodes) per host; 1 is a plain node per address.
    pub vnodes: u16,
    /// Where a host's positions go (with one random position: the address's SHA-1, as without
    /// virtual nodes).
    pub allocation: Allocation,
    pub routing: Routing,
    pub cache_entries: usize,
    /// Successor list length `r`.
    pub successors: usize,
    pub lookups: u64,
    pub workload: Workload,
    /// Distinct keys the workload draws from.
    pub keys: u64,
    /// Fraction of the nodes that crash at once before the lookups.
    pub fail_fraction: f64,
    pub seed: u64,
    /// The nodes' stabilize period (their other periods and timeouts scale from it).
    pub stabilize_ms: u64,
    /// Simulated time over which maintenance traffic is measured, before the lookups.
    pub maintenance_ms: u64,
    /// Most lookups in flight at once; 0 means one per node (a closed loop with one client per
    /// node, so caches warm up as they would under steady load).
    pub concurrency: usize,
    /// One-way message delay, uniform in `[min_delay_ms, max_delay_ms]`.
    pub min_delay_ms: u64,
    pub max_delay_ms: u64,
    /// The nodes' routing loop guard. The simulator lifts it well above a server's default
    /// (32) so that a lookup fails only when routing cannot find the owner; after crashes a
    /// lookup that restarts around dead nodes may take that many hops, and the hop tail shows it.
    pub max_hops: u16,
}

impl Default for LookupSimConfig {
    fn default() -> Self {
        LookupSimConfig {
            nodes: 1000,
            vnodes: 1,
            allocation: Allocation::Random,
            routing: Routing::Classic,
            cache_entries: 0,
            successors: chordkv_core::chord::config::DEFAULT_SUCCESSORS,
            lookups: 10_000,
            workload: Workload::Uniform,
            keys: 0,
            fail_fraction: 0.0,
            seed: 1,
            stabilize_ms: chordkv_core::chord::config::DEFAULT_STABILIZE_INTERVAL_MS,
            maintenance_ms: 1_000,
            concurrency: 0,
            min_delay_ms: 1,
            max_delay_ms: 5,
            max_hops: 1_000,
        }
    }
}

impl LookupSimConfig {
    /// The key space: `keys`, or 100 keys per host (the Chord paper's 100 * 2^k) when 0.
    pub fn key_count(&self) -> u64 {
        if self.keys > 0 {
            self.keys
        } else {
            (self.nodes as u64 * 100).max(1)
        }
    }
}

/// Percentiles of the hop counts (nearest rank).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HopStats {
    pub mean: f64,
    pub p1: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
    /// Mean hops counted as SIGCOMM'01 counts them: the nodes asked on the way to the key's
    /// predecessor, without the last step to the owner (`max(hops - 1, 0)`).
    pub mean_to_predecessor: f64,
}

/// What a run measured. Everything but `wall_ms` is a function of the configuration.
///
/// A *node* is a ring position (a vnode), a *host* an address running `vnodes` of them; with
/// one vnode per host the `_per_node` and `_per_host` figures are the same.
#[derive(Clone, Debug, PartialEq)]
pub struct LookupReport {
    pub hops: HopStats,
    /// Lookups issued, and those that failed (see the module docs).
    pub lookups: u64,
    pub failed: u64,
    pub failed_fraction: f64,
    /// Hosts crashed before the lookups.
    pub crashed: usize,
    /// Fraction of the lookups whose key's owner crashed: they cannot succeed (no replicas),
    /// so this is the failed fraction routing would reach if it never lost a lookup.
    pub owner_crashed_fraction: f64,
    /// Mean distinct nodes in a live node's routing state (fingers and successors, or the
    /// membership table), at the end of the run.
    pub state_per_node: f64,
    /// Mean over the live hosts of their vnodes' routing state, summed (a node two vnodes
    /// name counts twice).
    pub state_per_host: f64,
    /// Mean distinct other hosts a live host's routing state names: the peers it keeps in
    /// touch with (one-hop: those in vnode 0's membership table).
    pub hosts_known_per_host: f64,
    /// Mean location cache entries per live node at the end.
    pub cache_entries_per_node: f64,
    /// Cache hits / (hits + misses) over the lookups (0 when the cache is off).
    pub cache_hit_rate: f64,
    pub cache_stale: u64,
    /// Routing maintenance requests per node per second of simulated time in the maintenance
    /// window (each has a reply), as the nodes count them (to a sibling vnode included).
    pub maintenance_msgs_per_node_per_s: f64,
    /// The same per host: a host's vnodes' requests summed.
    pub maintenance_per_host_per_s: f64,
    /// Requests per host per second of simulated time in the maintenance window that went
    /// over the network: routing maintenance (nothing else runs in the window) less what a
    /// host's vnodes sent each other.
    pub maintenance_net_per_host_per_s: f64,
    /// Routing maintenance requests per live node per second of simulated time during the
    /// lookups: after crashes this includes the repairs (and one-hop's failure broadcasts).
    pub maintenance_during_lookups_per_node_per_s: f64,
    /// The same per live host, as its vnodes count them (to each other included).
    pub maintenance_during_lookups_per_host_per_s: f64,
    /// Simulated time at the end, in milliseconds.
    pub sim_ms: u64,
    /// Messages delivered in all (over the network: a host's vnodes talk among themselves
    /// without the simulated network).
    pub messages: u64,
    /// Wall-clock time of the run (not deterministic).
    pub wall_ms: u64,
}

/// What runs at one simulated address: a plain node (one vnode per host: exactly the
/// simulator before virtual nodes, no host in between), or a host of vnodes.
// The plain node stays inline: that is the 10^5-node path, where a box per node would add a
// pointer chase to every event.
#[allow(clippy::large_enum_variant)]
enum Machine {
    Node(Node),
    Host(Host),
}

impl Machine {
    fn vnodes(&self) -> &[Node] {
        match self {
            Machine::Node(n) => std::slice::from_ref(n),
            Machine::Host(h) => h.vnodes(),
        }
    }

    fn handle_request(&mut self, now: Millis, reply_to: ReplyTo, frame: Frame) {
        match self {
            Machine::Node(n) => n.handle_request(now, reply_to, frame),
            Machine::Host(h) => h.handle_request(now, reply_to, frame),
        }
    }

    fn handle_reply(&mut self, now: Millis, from: SocketAddr, frame: Frame) {
        match self {
            Machine::Node(n) => n.handle_reply(now, from, frame),
            Machine::Host(h) => h.handle_reply(now, from, frame),
        }
    }

    fn tick(&mut self, now: Millis) {
        match self {
            Machine::Node(n) => n.tick(now),
            Machine::Host(h) => h.tick(now),
        }
    }

    fn store_done(&mut self, now: Millis, id: u64, result: Result<StoreOutcome, StoreError>) {
        match self {
            Machine::Node(n) => n.store_done(now, id, result),
            Machine::Host(h) => h.store_done(now, id, result),
        }
    }

    fn next_deadline(&mut self) -> Millis {
        match self {
            Machine::Node(n) => n.next_deadline(),
            Machine::Host(h) => h.next_deadline(),
        }
    }

    fn poll_output(&mut self) -> Option<Output> {
        match self {
            Machine::Node(n) => n.poll_output(),
            Machine::Host(h) => h.poll_output(),
        }
    }
}

struct SimNode {
    machine: Machine,
    alive: bool,
    /// The time of the tick in the queue, if any.
    tick_at: Option<Millis>,
}

enum Event {
    Request {
        to: u32,
        reply_to: ReplyTo,
        frame: Frame,
    },
    Reply {
        to: u32,
        from: SocketAddr,
        frame: Frame,
    },
    Tick {
        node: u32,
    },
}

/// The index of simulated node `addr` (the inverse of [`sim_addr`]).
fn index_of(addr: &SocketAddr) -> Option<u32> {
    match addr {
        SocketAddr::V4(a) if a.port() == 7000 => {
            let o = a.ip().octets();
            (o[0] == 127).then(|| (o[1] as u32) << 16 | (o[2] as u32) << 8 | o[3] as u32)
        }
        _ => None,
    }
}

/// The ring positions of `hosts` hosts with `vnodes` each: `ids[h][i]` is vnode `i` of host
/// `h` (at `sim_addr(h)`).
pub fn host_positions(allocation: Allocation, hosts: usize, vnodes: u16) -> Vec<Vec<Id>> {
    match allocation {
        Allocation::Random => (0..hosts)
            .map(|h| tokens::random_positions(&sim_addr(h), vnodes))
            .collect(),
        Allocation::Balanced => {
            let mut ring = tokens::Ring::new(0);
            (0..hosts).map(|h| ring.join(sim_addr(h), vnodes)).collect()
        }
    }
}

/// A lean simulated ring for lookups. See the module docs.
pub struct LookupSim {
    config: LookupSimConfig,
    /// One per host (address), by index.
    nodes: Vec<SimNode>,
    /// Vnodes per host.
    vnodes: u16,
    /// Positions in ring (id) order as `host * vnodes + vnode`, and their ids.
    ring: Vec<u32>,
    ring_ids: Vec<Id>,
    /// Pending events by due time, each bucket in insertion order: the order of a heap keyed
    /// by (time, insertion sequence), at a fraction of the cost (times are whole milliseconds
    /// and few are distinct). Buckets hold slots of the event slab.
    queue: BTreeMap<Millis, VecDeque<u32>>,
    /// Event slab and its free slots.
    events: Vec<Option<Event>>,
    free: Vec<u32>,
    now: Millis,
    rng: Rng,
    /// An empty store for every op but `GET` (transfers of empty ranges, counts).
    empty: MemoryStore,
    messages: u64,
    /// Requests that went over the network (the driver's count, not the nodes').
    requests: u64,
    /// Replies to client requests: (lookup index, message).
    replies: Vec<(u64, Message)>,
}

impl LookupSim {
    /// Builds the ring from the oracle (step 1 of the module docs).
    pub fn new(config: LookupSimConfig) -> LookupSim {
        LookupSim::build(config, false)
    }

    /// [`LookupSim::new`], with every address a [`Host`] when `always_host` (one vnode
    /// included: a check that a host of one vnode is its node).
    fn build(config: LookupSimConfig, always_host: bool) -> LookupSim {
        assert!(config.nodes >= 1 && config.nodes < 1 << 24, "1 to 2^24 - 1 nodes"); // faulty code
        let vnodes = config.vnodes.max(1);
        assert!(
            config.nodes as u64 * u64::from(vnodes) <= u64::from(u32::MAX),
            "at most 2^32 - 1 positions"
        ); // faulty code
        let hosts = config.nodes;
        let ids = host_positions(config.allocation, hosts, vnodes);
        let v = usize::from(vnodes);
        // Position `p = host * vnodes + vnode`.
        let refs: Vec<NodeRef> = (0..hosts * v)
            .map(|p| NodeRef {
                id: ids[p / v][p % v],
                addr: NodeAddr::new(sim_addr(p / v), (p % v) as u16),
            })
            .collect();
        let n = refs.len();
        let mut ring: Vec<u32> = (0..n as u32).collect();
        ring.sort_by_key(|&i| refs[i as usize].id);
        let ring_ids: Vec<Id> = ring.iter().map(|&i| refs[i as usize].id).collect();
        let mut at_in_ring = vec![0usize; n];
        for (k, &p) in ring.iter().enumerate() {
            at_in_ring[p as usize] = k;
        }
        let members = (config.routing == Routing::OneHop)
            .then(|| Arc::new(ring.iter().map(|&i| refs[i as usize]).collect::<Vec<_>>()));
        let mut chord = Config::with_stabilize_interval_ms(config.stabilize_ms);
        chord.replicas = 0;
        chord.successors = config.successors.max(1);
        chord.max_hops = config.max_hops;
        chord.routing = config.routing;
        chord.cache_entries = config.cache_entries;
        let mut positions = Vec::with_capacity(n);
        for (i, me) in refs.iter().enumerate() {
            let mut c = chord.clone();
            c.seed = config.seed.wrapping_mul(0x9e37_79b9).wrapping_add(i as u64);
            let mut node = Node::new(*me, c, 0);
            if n == 1 {
                node.create(0);
            } else {
                let k = at_in_ring[i];
                let pred = refs[ring[(k + n - 1) % n] as usize];
                let succs: Vec<NodeRef> = (1..n.min(chord.successors + 1))
                    .map(|d| refs[ring[(k + d) % n] as usize])
                    .collect();
                // Fingers are filled in increasing distance: gallop forward along the ring from
                // the previous answer rather than binary-search all N ids for each finger.
                // Positions are offsets j from k; j = n is `me` itself (nothing closer).
                let mut prev = 1usize;
                let successor_of = |x: &Id| -> Option<NodeRef> {
                    let d = me.id.distance_limbs(x);
                    let reach = |j: usize| j >= n || me.id.distance_limbs(&ring_ids[(k + j) % n]) >= d;
                    let mut lo = prev - 1; // reach(lo) is false, lo = 0 standing for "before 1"
                    if lo > 0 && reach(lo) {
                        lo = 0;
                    }
                    let (mut hi, mut step) = (lo + 1, 1);
                    while !reach(hi) {
                        lo = hi;
                        step *= 2;
                        hi = (lo + step).min(n);
                    }
                    while hi - lo > 1 {
                        let mid = lo + (hi - lo) / 2;
                        if reach(mid) {
                            hi = mid;
                        } else {
                            lo = mid;
                        }
                    }
                    prev = hi;
                    Some(refs[ring[(k + hi) % n] as usize])
                };
                node.bootstrap(0, Some(pred), &succs, successor_of, members.clone());
            }
            positions.push(node);
        }
        let mut nodes = Vec::with_capacity(hosts);
        let mut positions = positions.into_iter();
        for h in 0..hosts {
            let machine = if v == 1 && !always_host {
                Machine::Node(positions.next().expect("one node per host")) // faulty code
            } else {
                let vnodes: Vec<Node> = positions.by_ref().take(v).collect();
                Machine::Host(Host::from_vnodes(sim_addr(h), vnodes))
            };
            nodes.push(SimNode {
                machine,
                alive: true,
                tick_at: None,
            });
        }
        let mut sim = LookupSim {
            rng: Rng::new(config.seed),
            config,
            nodes,
            vnodes,
            ring,
            ring_ids,
            queue: BTreeMap::new(),
            events: Vec::new(),
            free: Vec::new(),
            now: 0,
            empty: MemoryStore::new(),
            messages: 0,
            requests: 0,
            replies: Vec::new(),
        };
        for i in 0..sim.nodes.len() {
            sim.after_input(i as u32);
        }
        sim
    }

    /// Host `i`'s vnode 0 (the node itself with one vnode per host).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i].machine.vnodes()[0]
    }

    /// Host `i`'s vnodes, by index.
    pub fn vnodes(&self, i: usize) -> &[Node] {
        self.nodes[i].machine.vnodes()
    }

    /// Hosts.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn now(&self) -> Millis {
        self.now
    }

    /// The host index owning `id` in the ring as built (before any crash).
    pub fn original_owner(&self, id: &Id) -> u32 {
        self.original_position(id) / u32::from(self.vnodes)
    }

    /// The position (`host * vnodes + vnode`) owning `id` in the ring as built.
    fn original_position(&self, id: &Id) -> u32 {
        let k = self.ring_ids.partition_point(|x| x < id) % self.ring.len();
        self.ring[k]
    }

    /// Host `i` stops answering, all its vnodes at once.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].alive = false;
        self.nodes[i].tick_at = None;
    }

    fn schedule(&mut self, at: Millis, event: Event) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.events[slot as usize] = Some(event);
                slot
            }
            None => {
                self.events.push(Some(event));
                (self.events.len() - 1) as u32
            }
        };
        self.queue.entry(at).or_default().push_back(slot);
    }

    fn delay(&mut self) -> u64 {
        let (lo, hi) = (
            self.config.min_delay_ms,
            self.config.max_delay_ms.max(self.config.min_delay_ms),
        );
        self.rng.range(lo, hi)
    }

    /// Runs every event due by `t`.
    pub fn run_until(&mut self, t: Millis) {
        while self.step(t) {}
        self.now = self.now.max(t);
    }

    fn step(&mut self, limit: Millis) -> bool {
        let Some(mut bucket) = self.queue.first_entry() else {
            return false;
        };
        let at = *bucket.key();
        if at > limit {
            return false;
        }
        let slot = bucket.get_mut().pop_front();
        if bucket.get().is_empty() {
            bucket.remove();
        }
        let Some(slot) = slot else { return true };
        let Some(event) = self.events[slot as usize].take() else {
            return true;
        };
        self.free.push(slot);
        self.now = self.now.max(at);
        let now = self.now;
        match event {
            Event::Request { to, reply_to, frame } => {
                if self.nodes[to as usize].alive {
                    self.nodes[to as usize]
                        .machine
                        .handle_request(now, reply_to, frame);
                    self.after_input(to);
                }
            }
            Event::Reply { to, from, frame } => {
                if self.nodes[to as usize].alive {
                    self.nodes[to as usize].machine.handle_reply(now, from, frame);
                    self.after_input(to);
                }
            }
            Event::Tick { node } => {
                let n = &mut self.nodes[node as usize];
                if n.alive && n.tick_at == Some(at) {
                    n.tick_at = None;
                    n.machine.tick(now);
                    self.after_input(node);
                }
            }
        }
        true
    }

    /// Carries out what host `i` asked for, then schedules its next tick.
    fn after_input(&mut self, i: u32) {
        let now = self.now;
        while let Some(out) = self.nodes[i as usize].machine.poll_output() {
            match out {
                Output::Send { to, frame } => {
                    self.messages += 1;
                    self.requests += 1;
                    let Some(j) = index_of(&to.host).filter(|&j| (j as usize) < self.nodes.len()) else {
                        continue;
                    };
                    let at = now + self.delay();
                    self.schedule(
                        at,
                        Event::Request {
                            to: j,
                            reply_to: ReplyTo(i as u64),
                            frame,
                        },
                    );
                }
                Output::Reply { to, frame } => {
                    if to.0 >= CLIENT {
                        self.replies.push((to.0 - CLIENT, frame.message));
                        continue;
                    }
                    self.messages += 1;
                    let at = now + self.delay();
                    let from = sim_addr(i as usize);
                    self.schedule(
                        at,
                        Event::Reply {
                            to: to.0 as u32,
                            from,
                            frame,
                        },
                    );
                }
                Output::Store { id, vnode, op } => {
                    let result = match op {
                        // The serving position, as the version: who answered the lookup.
                        StoreOp::Get { .. } => Ok(StoreOutcome::Got(Some(Entry {
                            version: u64::from(i) * u64::from(self.vnodes) + u64::from(vnode) + 1,
                            value: None,
                            expires_at: 0,
                        }))),
                        op => execute(&self.empty as &dyn Store, op),
                    };
                    self.nodes[i as usize].machine.store_done(now, id, result);
                }
                Output::Left => self.nodes[i as usize].alive = false,
            }
        }
        let n = &mut self.nodes[i as usize];
        if !n.alive {
            return;
        }
        let due = n.machine.next_deadline().max(now + 1);
        if n.tick_at.is_none_or(|t| due < t) {
            n.tick_at = Some(due);
            self.schedule(due, Event::Tick { node: i });
        }
    }

    /// Sends lookup `index` (a client `GET` of `key`) to host `entry` (which picks the vnode).
    fn issue(&mut self, index: u64, entry: u32, key: Bytes) {
        let frame = Frame::new(index, Message::Get { key });
        let now = self.now;
        self.nodes[entry as usize]
            .machine
            .handle_request(now, ReplyTo(CLIENT + index), frame);
        self.after_input(entry);
    }

    fn all_vnodes(&self) -> impl Iterator<Item = &Node> + '_ {
        self.nodes.iter().flat_map(|n| n.machine.vnodes())
    }

    fn maintenance_sent(&self) -> u64 {
        self.all_vnodes().map(|n| n.stats().maintenance_sent).sum()
    }

    /// Runs the whole experiment (steps 2 to 4 of the module docs).
    pub fn run(mut self) -> LookupReport {
        let started = std::time::Instant::now();
        let cfg = self.config.clone();
        let n = self.nodes.len();
        let positions = self.ring.len();
        let rate = |count: u64, per: usize, ms: u64| {
            if ms == 0 {
                0.0
            } else {
                count as f64 / per as f64 / (ms as f64 / 1000.0)
            }
        };

        // 2. Maintenance window.
        let (before, requests_before) = (self.maintenance_sent(), self.requests);
        let window = cfg.maintenance_ms;
        self.run_until(window);
        let maint = self.maintenance_sent() - before;
        let maintenance_rate = rate(maint, positions, window);
        let maintenance_per_host = rate(maint, n, window);
        let maintenance_net = rate(self.requests - requests_before, n, window);

        // 3. Failures, chosen by the seed.
        let mut order: Vec<u32> = (0..n as u32).collect();
        for k in (1..order.len()).rev() {
            let j = self.rng.below(k as u64 + 1) as usize;
            order.swap(k, j);
        }
        let crashed = ((cfg.fail_fraction.clamp(0.0, 1.0) * n as f64).round() as usize).min(n - 1);
        for &i in &order[..crashed] {
            self.crash(i as usize);
        }
        let live: Vec<u32> = (0..n as u32).filter(|&i| self.nodes[i as usize].alive).collect();
        let (maint_start, lookups_start) = (self.live_maintenance_sent(), self.now);

        // 4. Lookups.
        let keys = cfg.key_count();
        let zipf = (cfg.workload == Workload::Zipfian).then(|| Zipfian::new(keys, ZIPFIAN_THETA));
        let mut key_rng = Rng::new(cfg.seed ^ 0x6b65_7973);
        let cache_before: (u64, u64) = self.cache_counts();
        // The position that owned each lookup's key before the crashes.
        let mut expected: Vec<u32> = Vec::with_capacity(cfg.lookups as usize);
        let mut hist: Vec<u64> = Vec::new();
        let mut failed = 0u64;
        let mut owner_crashed = 0u64;
        let mut issued = 0u64;
        let mut done = 0u64;
        let concurrency = if cfg.concurrency == 0 { n } else { cfg.concurrency } as u64;
        let mut replies = Vec::new();
        while done < cfg.lookups {
            while issued < cfg.lookups && issued - done < concurrency {
                let rank = match (cfg.workload, &zipf) {
                    (Workload::Hotkey, _) => 0,
                    (Workload::Zipfian, Some(z)) => z.sample(&mut key_rng),
                    _ => key_rng.below(keys),
                };
                let key = Bytes::from(format!("key{rank}"));
                let owner = self.original_position(&Id::of_key(&key));
                if !self.nodes[(owner / u32::from(self.vnodes)) as usize].alive {
                    owner_crashed += 1;
                }
                expected.push(owner);
                let entry = live[key_rng.below(live.len() as u64) as usize];
                self.issue(issued, entry, key);
                issued += 1;
            }
            std::mem::swap(&mut replies, &mut self.replies);
            for (index, msg) in replies.drain(..) {
                done += 1;
                match msg {
                    Message::GetReply { hops, version, .. }
                        if version >= 1 && version - 1 == expected[index as usize] as u64 =>
                    {
                        let h = hops as usize;
                        if hist.len() <= h {
                            hist.resize(h + 1, 0);
                        }
                        hist[h] += 1;
                    }
                    other => {
                        failed += 1;
                        if std::env::var("SIM_DEBUG").is_ok() {
                            let owner = expected[index as usize];
                            let alive = self.nodes[(owner / u32::from(self.vnodes)) as usize].alive;
                            eprintln!("failed lookup {index}: owner {owner} alive {alive}: {other:?}");
                        }
                    }
                }
            }
            if done < cfg.lookups && self.replies.is_empty() && !self.step(Millis::MAX) {
                // Nothing left to happen: the remaining lookups can never finish.
                failed += issued - done;
                done = issued;
                if issued < cfg.lookups {
                    continue;
                }
            }
        }
        let phase_ms = self.now - lookups_start;
        let maint_during = self.live_maintenance_sent() - maint_start;
        let live_vnodes = live.len() * usize::from(self.vnodes);
        let maintenance_during = rate(maint_during, live_vnodes, phase_ms);
        let maintenance_during_per_host = rate(maint_during, live.len(), phase_ms);
        let cache_after = self.cache_counts();
        let (hits, misses) = (cache_after.0 - cache_before.0, cache_after.1 - cache_before.1);
        let live_hosts: Vec<&[Node]> = live
            .iter()
            .map(|&i| self.nodes[i as usize].machine.vnodes())
            .collect();
        let live_nodes: Vec<&Node> = live_hosts.iter().flat_map(|h| h.iter()).collect();
        let per_node = |f: &dyn Fn(&Node) -> usize| {
            live_nodes.iter().map(|n| f(n) as f64).sum::<f64>() / live_nodes.len().max(1) as f64
        };
        let per_host = |f: &dyn Fn(&[Node]) -> usize| {
            live_hosts.iter().map(|h| f(h) as f64).sum::<f64>() / live_hosts.len().max(1) as f64
        };
        let state_per_node = per_node(&|n| n.routing_state());
        let hosts_known_per_host = if self.vnodes == 1 {
            // Each node is its own host.
            state_per_node
        } else {
            // `seen[h] == k`: host h is already counted for the k-th live host.
            let mut seen = vec![usize::MAX; n];
            let mut total = 0usize;
            for (k, &i) in live.iter().enumerate() {
                seen[i as usize] = k;
                let vnodes = self.nodes[i as usize].machine.vnodes();
                let named: Vec<NodeRef> = match vnodes[0].membership() {
                    Some(table) => table.members(),
                    None => vnodes
                        .iter()
                        .flat_map(|v| v.routing().known_nodes().copied())
                        .collect(),
                };
                for r in named {
                    if let Some(h) = index_of(&r.addr.host).filter(|&h| (h as usize) < n) {
                        if seen[h as usize] != k {
                            seen[h as usize] = k;
                            total += 1;
                        }
                    }
                }
            }
            total as f64 / live.len().max(1) as f64
        };
        LookupReport {
            hops: hop_stats(&hist),
            lookups: cfg.lookups,
            failed,
            failed_fraction: if cfg.lookups == 0 {
                0.0
            } else {
                failed as f64 / cfg.lookups as f64
            },
            crashed,
            owner_crashed_fraction: if cfg.lookups == 0 {
                0.0
            } else {
                owner_crashed as f64 / cfg.lookups as f64
            },
            state_per_node,
            state_per_host: per_host(&|vnodes| vnodes.iter().map(|n| n.routing_state()).sum()),
            hosts_known_per_host,
            cache_entries_per_node: per_node(&|n| n.cache_len()),
            cache_hit_rate: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
            cache_stale: self.all_vnodes().map(|n| n.stats().cache_stale).sum(),
            maintenance_msgs_per_node_per_s: maintenance_rate,
            maintenance_per_host_per_s: maintenance_per_host,
            maintenance_net_per_host_per_s: maintenance_net,
            maintenance_during_lookups_per_node_per_s: maintenance_during,
            maintenance_during_lookups_per_host_per_s: maintenance_during_per_host,
            sim_ms: self.now,
            messages: self.messages,
            wall_ms: started.elapsed().as_millis() as u64,
        }
    }

    fn live_maintenance_sent(&self) -> u64 {
        self.nodes
            .iter()
            .filter(|n| n.alive)
            .flat_map(|n| n.machine.vnodes())
            .map(|n| n.stats().maintenance_sent)
            .sum()
    }

    fn cache_counts(&self) -> (u64, u64) {
        self.all_vnodes().fold((0, 0), |(h, m), n| {
            (h + n.stats().cache_hits, m + n.stats().cache_misses)
        })
    }
}

/// Mean and nearest-rank percentiles of a histogram indexed by hop count.
fn hop_stats(hist: &[u64]) -> HopStats {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return HopStats::default();
    }
    let sum: u64 = hist.iter().enumerate().map(|(h, c)| h as u64 * c).sum();
    let pct = |p: f64| -> u64 {
        let rank = ((p * total as f64).ceil() as u64).max(1);
        let mut cum = 0;
        for (h, c) in hist.iter().enumerate() {
            cum += c;
            if cum >= rank {
                return h as u64;
            }
        }
        hist.len() as u64 - 1
    };
    let to_pred: u64 = hist
        .iter()
        .enumerate()
        .skip(1)
        .map(|(h, c)| (h as u64 - 1) * c)
        .sum();
    HopStats {
        mean_to_predecessor: to_pred as f64 / total as f64,
        mean: sum as f64 / total as f64,
        p1: pct(0.01),
        p50: pct(0.50),
        p99: pct(0.99),
        max: hist.len() as u64 - 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_map_back_to_indices() {
        for i in [0, 1, 255, 256, 65_535, 1_000_000] {
            assert_eq!(index_of(&sim_addr(i)), Some(i as u32));
        }
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let s = hop_stats(&[1, 0, 98, 1]);
        assert_eq!((s.p1, s.p50, s.p99, s.max), (0, 2, 2, 3));
        assert!((s.mean - 1.99).abs() < 1e-9);
    }

    #[test]
    fn a_small_ring_finds_every_owner() {
        let report = LookupSim::new(LookupSimConfig {
            nodes: 50,
            lookups: 2_000,
            ..LookupSimConfig::default()
        })
        .run();
        assert_eq!(report.failed, 0);
        assert!(report.hops.mean > 1.0 && report.hops.mean < 5.0, "{report:?}");
    }

    #[test]
    fn a_host_of_one_vnode_runs_as_its_node() {
        // The host module's promise ("with one vnode a host is exactly its node"), seen from
        // the driver: the same run, every number equal, crashes and a cache included.
        let config = LookupSimConfig {
            nodes: 60,
            cache_entries: 16,
            fail_fraction: 0.1,
            lookups: 1_000,
            maintenance_ms: 500,
            seed: 7,
            ..LookupSimConfig::default()
        };
        let mut plain = LookupSim::build(config.clone(), false).run();
        let mut host = LookupSim::build(config, true).run();
        plain.wall_ms = 0;
        host.wall_ms = 0;
        assert_eq!(plain, host);
    }

    #[test]
    fn positions_of_one_random_vnode_are_the_node_ids() {
        let ids = host_positions(Allocation::Random, 5, 1);
        for (h, ids) in ids.iter().enumerate() {
            assert_eq!(ids, &vec![NodeRef::from_addr(sim_addr(h)).id]);
        }
        let balanced = host_positions(Allocation::Balanced, 5, 4);
        assert!(balanced.iter().all(|ids| ids.len() == 4));
    }
}
