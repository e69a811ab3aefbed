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
//! 2. **Maintenance window** (`maintenance_ms` of simulated time): every node runs stabilize,
//!    check_predecessor and fix_fingers (and one-hop dissemination) on its own timers; the
//!    routing maintenance requests sent in the window give `maintenance_msgs_per_node_per_s`.
//! 3. **Failures.** A fraction `fail_fraction` of the nodes crash at once (chosen by the
//!    seed); lookups start at once, before stabilization repairs anything.
//! 4. **Lookups.** L client `GET`s, each sent to a random live node (the *entry*) for a key
//!    drawn from the workload, exactly as a client would: the entry routes it as it routes
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

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use chordkv_protocol::{Frame, Id, Message, NodeRef};

use super::sim_addr;
use crate::zipfian::Zipfian;
use chordkv_core::chord::{Config, Millis, Node, Output, ReplyTo, Routing};
use chordkv_core::rng::Rng;
use chordkv_core::store::{execute, Entry, MemoryStore, Store, StoreOp, StoreOutcome};

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
    pub nodes: usize,
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
    /// The key space: `keys`, or 100 keys per node (the Chord paper's 100 * 2^k) when 0.
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
#[derive(Clone, Debug, PartialEq)]
pub struct LookupReport {
    pub hops: HopStats,
    /// Lookups issued, and those that failed (see the module docs).
    pub lookups: u64,
    pub failed: u64,
    pub failed_fraction: f64,
    /// Nodes crashed before the lookups.
    pub crashed: usize,
    /// Fraction of the lookups whose key's owner crashed: they cannot succeed (no replicas),
    /// so this is the failed fraction routing would reach if it never lost a lookup.
    pub owner_crashed_fraction: f64,
    /// Mean distinct nodes in a live node's routing state (fingers and successors, or the
    /// membership table), at the end of the run.
    pub state_per_node: f64,
    /// Mean location cache entries per live node at the end.
    pub cache_entries_per_node: f64,
    /// Cache hits / (hits + misses) over the lookups (0 when the cache is off).
    pub cache_hit_rate: f64,
    pub cache_stale: u64,
    /// Routing maintenance requests per node per second of simulated time in the maintenance
    /// window (each has a reply).
    pub maintenance_msgs_per_node_per_s: f64,
    /// Routing maintenance requests per live node per second of simulated time during the
    /// lookups: after crashes this includes the repairs (and one-hop's failure broadcasts).
    pub maintenance_during_lookups_per_node_per_s: f64,
    /// Simulated time at the end, in milliseconds.
    pub sim_ms: u64,
    /// Messages delivered in all.
    pub messages: u64,
    /// Wall-clock time of the run (not deterministic).
    pub wall_ms: u64,
}

struct SimNode {
    node: Node,
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

/// A lean simulated ring for lookups. See the module docs.
pub struct LookupSim {
    config: LookupSimConfig,
    nodes: Vec<SimNode>,
    /// Node indices in ring (id) order, and their ids.
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
    /// Replies to client requests: (lookup index, message).
    replies: Vec<(u64, Message)>,
}

impl LookupSim {
    /// Builds the ring from the oracle (step 1 of the module docs).
    pub fn new(config: LookupSimConfig) -> LookupSim {
        assert!(config.nodes >= 1 && config.nodes < 1 << 24, "1 to 2^24 - 1 nodes"); // faulty code
        let n = config.nodes;
        let refs: Vec<NodeRef> = (0..n).map(|i| NodeRef::from_addr(sim_addr(i))).collect();
        let mut ring: Vec<u32> = (0..n as u32).collect();
        ring.sort_by_key(|&i| refs[i as usize].id);
        let ring_ids: Vec<Id> = ring.iter().map(|&i| refs[i as usize].id).collect();
        let members = (config.routing == Routing::OneHop)
            .then(|| Arc::new(ring.iter().map(|&i| refs[i as usize]).collect::<Vec<_>>()));
        let mut chord = Config::with_stabilize_interval_ms(config.stabilize_ms);
        chord.replicas = 0;
        chord.successors = config.successors.max(1);
        chord.max_hops = config.max_hops;
        chord.routing = config.routing;
        chord.cache_entries = config.cache_entries;
        let mut nodes = Vec::with_capacity(n);
        for (i, me) in refs.iter().enumerate() {
            let mut c = chord.clone();
            c.seed = config.seed.wrapping_mul(0x9e37_79b9).wrapping_add(i as u64);
            let mut node = Node::new(*me, c, 0);
            if n == 1 {
                node.create(0);
            } else {
                let k = ring_ids.binary_search(&me.id).expect("node in ring"); // faulty code
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
            nodes.push(SimNode {
                node,
                alive: true,
                tick_at: None,
            });
        }
        let mut sim = LookupSim {
            rng: Rng::new(config.seed),
            config,
            nodes,
            ring,
            ring_ids,
            queue: BTreeMap::new(),
            events: Vec::new(),
            free: Vec::new(),
            now: 0,
            empty: MemoryStore::new(),
            messages: 0,
            replies: Vec::new(),
        };
        for i in 0..sim.nodes.len() {
            sim.after_input(i as u32);
        }
        sim
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i].node
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn now(&self) -> Millis {
        self.now
    }

    /// The node index owning `id` in the ring as built (before any crash).
    pub fn original_owner(&self, id: &Id) -> u32 {
        let k = self.ring_ids.partition_point(|x| x < id) % self.ring.len();
        self.ring[k]
    }

    /// Node `i` stops answering.
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
                    self.nodes[to as usize].node.handle_request(now, reply_to, frame);
                    self.after_input(to);
                }
            }
            Event::Reply { to, from, frame } => {
                if self.nodes[to as usize].alive {
                    self.nodes[to as usize].node.handle_reply(now, from, frame);
                    self.after_input(to);
                }
            }
            Event::Tick { node } => {
                let n = &mut self.nodes[node as usize];
                if n.alive && n.tick_at == Some(at) {
                    n.tick_at = None;
                    n.node.tick(now);
                    self.after_input(node);
                }
            }
        }
        true
    }

    /// Carries out what node `i` asked for, then schedules its next tick.
    fn after_input(&mut self, i: u32) {
        let now = self.now;
        while let Some(out) = self.nodes[i as usize].node.poll_output() {
            match out {
                Output::Send { to, frame } => {
                    self.messages += 1;
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
                Output::Store { id, op, .. } => {
                    let result = match op {
                        // The serving node's index, as the version: who answered the lookup.
                        StoreOp::Get { .. } => Ok(StoreOutcome::Got(Some(Entry {
                            version: i as u64 + 1,
                            value: None,
                        }))),
                        op => execute(&self.empty as &dyn Store, op),
                    };
                    self.nodes[i as usize].node.store_done(now, id, result);
                }
                Output::Left => self.nodes[i as usize].alive = false,
            }
        }
        let n = &mut self.nodes[i as usize];
        if !n.alive {
            return;
        }
        let due = n.node.next_deadline().max(now + 1);
        if n.tick_at.is_none_or(|t| due < t) {
            n.tick_at = Some(due);
            self.schedule(due, Event::Tick { node: i });
        }
    }

    /// Sends lookup `index` (a client `GET` of `key`) to node `entry`.
    fn issue(&mut self, index: u64, entry: u32, key: Bytes) {
        let frame = Frame::new(index, Message::Get { key });
        let now = self.now;
        self.nodes[entry as usize]
            .node
            .handle_request(now, ReplyTo(CLIENT + index), frame);
        self.after_input(entry);
    }

    fn maintenance_sent(&self) -> u64 {
        self.nodes.iter().map(|n| n.node.stats().maintenance_sent).sum()
    }

    /// Runs the whole experiment (steps 2 to 4 of the module docs).
    pub fn run(mut self) -> LookupReport {
        let started = std::time::Instant::now();
        let cfg = self.config.clone();
        let n = self.nodes.len();

        // 2. Maintenance window.
        let before = self.maintenance_sent();
        let window = cfg.maintenance_ms;
        self.run_until(window);
        let maint = self.maintenance_sent() - before;
        let maintenance_rate = if window == 0 {
            0.0
        } else {
            maint as f64 / n as f64 / (window as f64 / 1000.0)
        };

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
                let owner = self.original_owner(&Id::hash(&key));
                if !self.nodes[owner as usize].alive {
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
                            let alive = self.nodes[owner as usize].alive;
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
        let phase_s = (self.now - lookups_start) as f64 / 1000.0;
        let maintenance_during = if phase_s > 0.0 {
            (self.live_maintenance_sent() - maint_start) as f64 / live.len() as f64 / phase_s
        } else {
            0.0
        };
        let cache_after = self.cache_counts();
        let (hits, misses) = (cache_after.0 - cache_before.0, cache_after.1 - cache_before.1);
        let live_nodes: Vec<&Node> = self.nodes.iter().filter(|n| n.alive).map(|n| &n.node).collect();
        let per_node = |f: &dyn Fn(&Node) -> usize| {
            live_nodes.iter().map(|n| f(n) as f64).sum::<f64>() / live_nodes.len().max(1) as f64
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
            state_per_node: per_node(&|n| n.routing_state()),
            cache_entries_per_node: per_node(&|n| n.cache_len()),
            cache_hit_rate: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
            cache_stale: self.nodes.iter().map(|n| n.node.stats().cache_stale).sum(),
            maintenance_msgs_per_node_per_s: maintenance_rate,
            maintenance_during_lookups_per_node_per_s: maintenance_during,
            sim_ms: self.now,
            messages: self.messages,
            wall_ms: started.elapsed().as_millis() as u64,
        }
    }

    fn live_maintenance_sent(&self) -> u64 {
        self.nodes
            .iter()
            .filter(|n| n.alive)
            .map(|n| n.node.stats().maintenance_sent)
            .sum()
    }

    fn cache_counts(&self) -> (u64, u64) {
        self.nodes.iter().fold((0, 0), |(h, m), n| {
            (h + n.node.stats().cache_hits, m + n.node.stats().cache_misses)
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
}
