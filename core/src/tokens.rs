//! Ring positions for virtual nodes: where each host (physical node) puts its `V` positions
//! on the identifier circle. Pure functions: deterministic in their inputs, no I/O, no clock.
//!
//! A key `k` belongs to the first position `p` clockwise with `k ∈ (pred(p), p]` (Chord,
//! SIGCOMM'01 section 4.2), and a host owns every key its positions own: its *share* is the
//! fraction of the 2^160 ids it owns as primary. With one random position per host the shares
//! are far apart (SIGCOMM'01 section 6.2, Fig. 8: on 10^4 hosts the 99th percentile of keys
//! per host is 4.6 times the mean, and some hosts own nothing). Two cures:
//!
//! - [`random_positions`]: `V` random positions per host (section 6.9, "virtual nodes";
//!   Fig. 9: the 99th percentile falls from 4.8x to 1.6x the mean at `V = 20`). Derived from
//!   the host's address, so they survive restarts and anyone can recompute them.
//! - [`allocate_positions`]: a joining host chooses its positions so that both what each host
//!   owns as primary and what it stores counting replicas even out (Dynamo, SOSP'07 section
//!   6.2, strategy 3: equal shares by construction; Cassandra's
//!   `allocate_tokens_for_local_replication_factor` and its `ReplicationAwareTokenAllocator`,
//!   CASSANDRA-7032: new tokens chosen to even out *replicated* ownership). The joining host
//!   takes its share from the hosts that hold the most, so ownership moves from many hosts,
//!   not from one neighbour.
//!
//! A host's *replicated share* is the fraction of the ids it holds a copy of: the arcs for
//! which it is among the first `replicas + 1` distinct hosts clockwise from the arc's owner
//! (the preference list, Dynamo section 4.3, which skips further positions of a host already
//! in it). Evening out primary shares alone does not even these out: who follows whom on the
//! ring decides them (8 hosts of 8 positions, 3 copies: 0.90 to 1.09 of the mean with
//! primary shares all equal).
//!
//! ```text
//!   before:   ...---A3]---------------------B7]-----C1]---...   B holds the most
//!   joining host N splits the arc (A3, B7] at the point that evens out the most:
//!   after:    ...---A3]--------N0]----------B7]-----C1]---...   N owns (A3, N0], B keeps (N0, B7]
//!             and N enters the preference lists of (A3, N0] and of the arcs before A3 whose
//!             lists reached B7, pushing out their last host
//! ```
//!
//! Shares are kept exactly, in integer *weights* (an arc's length in units of 2^33 ids, so
//! the whole ring is 2^127 and any sum of arcs fits a `u128`); a choice is computed from them
//! by the same floating-point steps in the same order whatever the history of the ring, so
//! [`Ring::join`] repeated gives exactly what [`allocate_positions`] gives on the same ring.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use chordkv_protocol::Id;

/// An arc's length in units of 2^[`WEIGHT_SHIFT`] ids: exact integer shares.
type Weight = u128;
/// Ids per weight unit, as a power of two: 2^160 ids are 2^127 units, so sums never overflow.
const WEIGHT_SHIFT: u32 = 33;
/// The weight of the whole ring (a host alone, with one position).
const WHOLE_RING: Weight = 1 << (160 - WEIGHT_SHIFT);
/// At most this fraction of an arc passes to a joining host; its owner keeps the rest, so no
/// arc is cut down to a sliver that could never be split again (Cassandra keeps 10% too).
pub const MAX_TAKEOVER_RATIO: f64 = 0.9;
/// At least this fraction of an arc passes to a joining host that splits it: a position
/// owning a sliver would hold a replica range it barely pays for in primary share.
pub const MIN_TAKEOVER_RATIO: f64 = 0.1;
/// Resolution of a split point inside an arc: ratios are rounded to multiples of 2^-24.
const SPLIT_BITS: u32 = 24;
/// A joining host considers splitting only the arcs at and just before the positions of the
/// this many hosts holding the most primary weight and as many holding the most replicated
/// weight: on 8 hosts that is every host; on 10^4 it keeps a join at `O(V log N)` evaluations
/// (all arcs do no better: 64 hosts of 8 positions, 3 copies, primary 0.93-1.06 and
/// replicated 0.94-1.06 of the mean either way).
const CROWDED_HOSTS: usize = 4;

/// The `count` random positions of `host` (Chord section 6.9's virtual nodes): position 0 is
/// [`Id::of_addr`]`(host)`, the node id of a host with one position, and position `i > 0` is
/// the SHA-1 of the text `"{host}#{i}"` (e.g. `"10.0.0.1:7000#3"`). Stable across restarts.
pub fn random_positions(host: &SocketAddr, count: u16) -> Vec<Id> {
    (0..count)
        .map(|i| match i {
            0 => Id::of_addr(host),
            i => Id::hash(format!("{host}#{i}").as_bytes()),
        })
        .collect()
}

/// The `count` positions a host joining `ring` (every existing `(position, host)`, in any
/// order; positions distinct) takes so that shares even out, for a store keeping `replicas`
/// copies beyond the primary (`--replicas`; see [`Ring::join`] for the method).
/// Deterministic in its inputs.
///
/// - Empty ring: `count` evenly spaced positions starting at [`Id::of_addr`]`(host)`.
/// - `host` already in `ring` (a restart on the same address): its positions in ring order
///   (ascending ids), the first `count` of them, or all of them followed by new ones chosen as
///   for a joining host that already owns what it owns.
///
/// Costs `O(N log N)` to read the ring of `N` positions (`V` per host), then
/// `O(count V replicas^2 log N)`; a caller adding many hosts keeps a [`Ring`].
pub fn allocate_positions(
    ring: &[(Id, SocketAddr)],
    host: SocketAddr,
    count: u16,
    replicas: usize,
) -> Vec<Id> {
    Ring::from_positions(ring, replicas).join(host, count)
}

/// Each host's share of the id space (fractions summing to 1): the lengths of the arcs
/// `(pred(p), p]` of its positions `p`, divided by 2^160. Empty for an empty ring.
pub fn ownership(ring: &[(Id, SocketAddr)]) -> BTreeMap<SocketAddr, f64> {
    Ring::from_positions(ring, 0).ownership()
}

/// Each host's replicated share: the fraction of the id space it holds a copy of with
/// `replicas` copies beyond the primary on distinct hosts (sums to `min(replicas + 1, hosts)`).
/// With `replicas = 0` it is [`ownership`].
pub fn replicated_ownership(ring: &[(Id, SocketAddr)], replicas: usize) -> BTreeMap<SocketAddr, f64> {
    Ring::from_positions(ring, replicas).replicated_ownership()
}

/// A ring of positions with every host's primary and replicated weights, kept up to date as
/// hosts join: what [`allocate_positions`] works on, kept by a caller that adds many hosts in
/// turn.
#[derive(Clone, Debug, Default)]
pub struct Ring {
    /// Every position: the index of its host in `hosts` and the weight of its arc.
    positions: BTreeMap<Id, Slot>,
    hosts: Vec<Host>,
    index: BTreeMap<SocketAddr, usize>,
    /// Copies of each key on distinct hosts: `replicas + 1`.
    copies: usize,
    /// `(primary weight, host index)` of every host, to find the hosts that own the most.
    by_weight: BTreeSet<(Weight, usize)>,
    /// `(replicated weight, host index)` of every host.
    by_replicated: BTreeSet<(Weight, usize)>,
}

#[derive(Clone, Debug)]
struct Slot {
    host: usize,
    /// The weight of the arc `(pred(position), position]`.
    weight: Weight,
    /// The arc's preference list: the first `copies` distinct hosts from this position on.
    list: Vec<usize>,
}

#[derive(Clone, Debug)]
struct Host {
    addr: SocketAddr,
    /// The weight it owns as primary.
    weight: Weight,
    /// The weight it holds a copy of (primary or replica).
    replicated: Weight,
    positions: BTreeSet<Id>,
}

/// One host's deviation from its target, as a joining host's candidate split would change it
/// by `x` (the weight passing to the joining host, as a share): primary share
/// `primary + primary_slope * x`, replicated share `replicated + replicated_slope * x`.
#[derive(Clone, Copy, Debug)]
struct Effect {
    host: usize,
    primary: f64,
    primary_slope: f64,
    replicated: f64,
    replicated_slope: f64,
}

impl Effect {
    fn cost(&self, x: f64) -> f64 {
        let p = self.primary + self.primary_slope * x;
        let r = self.replicated + self.replicated_slope * x;
        p * p + r * r
    }
}

/// Targets of one step of a join: every host's share and replicated share.
struct Targets {
    me: usize,
    /// Share of each host but the joining one: `1 / hosts`.
    share: f64,
    /// Share the joining host should have after this step: `placed / count` of `share`.
    mine: f64,
    /// Copies counted by the replicated share: `min(copies, hosts)`.
    copies: f64,
    /// False when every host holds every key (no more hosts than copies): only primary
    /// shares count then.
    replicated: bool,
}

impl Targets {
    fn share(&self, h: usize) -> f64 {
        if h == self.me {
            self.mine
        } else {
            self.share
        }
    }
}

impl Ring {
    /// An empty ring for a store keeping `replicas` copies beyond the primary.
    pub fn new(replicas: usize) -> Ring {
        Ring {
            copies: replicas + 1,
            ..Ring::default()
        }
    }

    /// The ring of `positions` (any order) for a store keeping `replicas` copies beyond the
    /// primary. A position given twice keeps its smallest host address, so the result does
    /// not depend on the order either.
    pub fn from_positions(positions: &[(Id, SocketAddr)], replicas: usize) -> Ring {
        let mut sorted = positions.to_vec();
        sorted.sort_unstable();
        sorted.dedup_by_key(|(id, _)| *id);
        let mut ring = Ring::new(replicas);
        let last = sorted.last().map(|(id, _)| *id);
        let mut pred = last;
        for &(id, addr) in &sorted {
            let w = weight(&pred.unwrap_or(id), &id);
            pred = Some(id);
            let h = ring.host_index(addr);
            ring.positions.insert(
                id,
                Slot {
                    host: h,
                    weight: w,
                    list: Vec::new(),
                },
            );
            ring.hosts[h].positions.insert(id);
            ring.hosts[h].weight += w;
        }
        for &(id, _) in &sorted {
            ring.add_replicated(id);
        }
        ring.by_weight = (0..ring.hosts.len()).map(|h| (ring.hosts[h].weight, h)).collect();
        ring.by_replicated = (0..ring.hosts.len())
            .map(|h| (ring.hosts[h].replicated, h))
            .collect();
        ring
    }

    /// Every `(position, host)` in ring order.
    pub fn positions(&self) -> impl Iterator<Item = (Id, SocketAddr)> + '_ {
        self.positions
            .iter()
            .map(|(p, slot)| (*p, self.hosts[slot.host].addr))
    }

    /// Positions on the ring.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// True when no host has joined.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Hosts on the ring.
    pub fn hosts(&self) -> usize {
        self.hosts.len()
    }

    /// Each host's share of the id space, as [`ownership`].
    pub fn ownership(&self) -> BTreeMap<SocketAddr, f64> {
        self.hosts
            .iter()
            .map(|h| (h.addr, h.weight as f64 / WHOLE_RING as f64))
            .collect()
    }

    /// Each host's replicated share, as [`replicated_ownership`] for this ring's replicas.
    pub fn replicated_ownership(&self) -> BTreeMap<SocketAddr, f64> {
        self.hosts
            .iter()
            .map(|h| (h.addr, h.replicated as f64 / WHOLE_RING as f64))
            .collect()
    }

    /// Adds `host` with `count` positions chosen to even out the shares and returns them (as
    /// [`allocate_positions`]).
    ///
    /// The method places one position at a time, greedily. With `H` hosts counting the
    /// joining one, every other host's target is the share `1/H` and the replicated share
    /// `c/H` (`c = min(replicas + 1, H)`); the joining host's targets after its `k`-th of
    /// `count` positions are `k/count` of those. The cost of a ring is the sum over hosts of
    /// the squared deviations from the targets, the replicated one divided by `c` (both in
    /// shares). For each arc `(pred, p]` a candidate position at `pred + x` would
    ///
    /// - give `x` of `p`'s share to the joining host,
    /// - put the joining host first in the preference list of `(pred, pred + x]` in place of
    ///   the hosts of `p`'s list it pushes out (`x` each),
    /// - and put it into the lists of the arcs before `pred` that reached `p` with fewer than
    ///   `c` hosts, pushing out their last host (a fixed change, whatever `x`).
    ///
    /// The cost is a quadratic in `x`; its minimum, clamped to `[0.1, 0.9]` of the arc
    /// ([`MIN_TAKEOVER_RATIO`], [`MAX_TAKEOVER_RATIO`]), is the candidate's split point, and
    /// the candidate lowering the cost the most is taken (ties: the first in ring order).
    /// This is Cassandra's replication-aware allocation in miniature: it evaluates the exact
    /// change of every host's replicated share rather than a proxy. Then one round of second
    /// thoughts: each new position in turn is taken off and placed again against the host's
    /// full target (the first ones were placed against a partial one). Over 4 to 32 hosts of
    /// 8 or 16 positions and 0 to 3 replicas, that keeps primary shares and copies within
    /// 0.96 and 1.11 of the mean (without the second round: 0.85 to 1.14).
    ///
    /// Candidates are the arcs at and just before (`replicas` arcs) the positions of the 4
    /// hosts holding the most primary and the 4 holding the most replicated weight
    /// ([`CROWDED_HOSTS`]). The result depends on the ring's contents only.
    pub fn join(&mut self, host: SocketAddr, count: u16) -> Vec<Id> {
        let count = count as usize;
        let mut out: Vec<Id> = match self.index.get(&host) {
            Some(&h) => {
                let mine: Vec<Id> = self.hosts[h].positions.iter().copied().collect();
                if mine.len() >= count {
                    return mine[..count].to_vec();
                }
                mine
            }
            None => Vec::new(),
        };
        if count == 0 {
            return out;
        }
        if self.positions.is_empty() {
            let start = Id::of_addr(&host);
            let step = Id::MAX.div_small(count as u32);
            let mut at = start;
            for _ in 0..count {
                self.insert_position(at, host);
                out.push(at);
                at = at.wrapping_add(&step);
            }
            return out;
        }
        let me = self.host_index(host);
        let hosts = self.hosts.len() as f64;
        let copies = self.copies.min(self.hosts.len()) as f64;
        let placed_before = out.len();
        let mut n = 0;
        while out.len() < count {
            let targets = Targets {
                me,
                share: 1.0 / hosts,
                mine: (out.len() + 1) as f64 / count as f64 / hosts,
                copies,
                replicated: self.hosts.len() > self.copies,
            };
            let Some(at) = self.place_one(&targets, n) else {
                break;
            };
            n += 1;
            out.push(at);
        }
        // One round of second thoughts: each new position, taken off again, goes where it
        // evens out the most now that the host's other positions are placed (the first ones
        // were placed against a partial target).
        for i in placed_before..out.len() {
            if self.positions.len() < 2 {
                break;
            }
            self.remove_position(out[i]);
            let targets = Targets {
                me,
                share: 1.0 / hosts,
                mine: out.len() as f64 / count as f64 / hosts,
                copies,
                replicated: self.hosts.len() > self.copies,
            };
            match self.place_one(&targets, n) {
                Some(at) => {
                    n += 1;
                    out[i] = at;
                }
                None => self.insert_position(out[i], host),
            }
        }
        // Only a ring packed so tight that no arc can be split gets here: take the first free
        // random positions, so `count` positions are always returned.
        let mut i = 0u64;
        while out.len() < count {
            let at = Id::hash(format!("{host}#fill{i}").as_bytes());
            i += 1;
            if !self.positions.contains_key(&at) {
                self.insert_position(at, host);
                out.push(at);
            }
        }
        out
    }

    /// Places one position of `targets.me` where it lowers the cost the most (see
    /// [`Ring::join`]); `n` numbers the host's split points. `None` when no arc can be split.
    fn place_one(&mut self, targets: &Targets, n: usize) -> Option<Id> {
        let me = targets.me;
        let mut best: Option<(f64, Id, f64)> = None;
        for p in self.candidates(me) {
            if let Some((gain, ratio)) = self.evaluate(p, targets) {
                if best.is_none_or(|(g, _, _)| gain < g) {
                    best = Some((gain, p, ratio));
                }
            }
        }
        let (_, p, ratio) = best?;
        let pred = self.pred(&p);
        let at = split_point(&pred, &p, ratio)?;
        let host = self.hosts[me].addr;
        let at = own_low_bits(at, &pred, &p, host, n);
        self.insert_position(at, host);
        Some(at)
    }

    /// The positions whose arcs a joining host `me` considers splitting (see [`Ring::join`]).
    fn candidates(&self, me: usize) -> Vec<Id> {
        let mut crowded: BTreeSet<usize> = BTreeSet::new();
        for set in [&self.by_weight, &self.by_replicated] {
            crowded.extend(
                set.iter()
                    .rev()
                    .map(|&(_, h)| h)
                    .filter(|&h| h != me)
                    .take(CROWDED_HOSTS),
            );
        }
        let mut out: BTreeSet<Id> = BTreeSet::new();
        for h in crowded {
            for &p in &self.hosts[h].positions {
                out.insert(p);
                let mut q = p;
                for _ in 1..self.copies {
                    q = self.pred(&q);
                    out.insert(q);
                }
            }
        }
        out.into_iter().collect()
    }

    /// What splitting the arc ending at `p` does for `targets.me` (see [`Ring::join`]): the
    /// change of the cost and the split ratio, or `None` when the arc cannot be split.
    fn evaluate(&self, p: Id, targets: &Targets) -> Option<(f64, f64)> {
        let me = targets.me;
        let slot = &self.positions[&p];
        if slot.weight < 2 {
            return None;
        }
        let len = slot.weight as f64 / WHOLE_RING as f64;
        let owner = slot.host;
        let before = &slot.list;
        // The walk from `p` skipping `me`, after `me`: the same hosts when `me` is in the list,
        // else `me` and all but the last.
        let after: Vec<usize> = if before.contains(&me) {
            std::iter::once(me)
                .chain(before.iter().copied().filter(|&h| h != me))
                .collect()
        } else {
            std::iter::once(me)
                .chain(before.iter().copied())
                .take(self.copies)
                .collect()
        };
        let mut effects: Vec<Effect> = Vec::new();
        let effect = |host: usize, effects: &mut Vec<Effect>| -> usize {
            if let Some(i) = effects.iter().position(|e| e.host == host) {
                return i;
            }
            let h = &self.hosts[host];
            effects.push(Effect {
                host,
                primary: h.weight as f64 / WHOLE_RING as f64 - targets.share(host),
                primary_slope: 0.0,
                replicated: (h.replicated as f64 / WHOLE_RING as f64 - targets.share(host) * targets.copies)
                    / targets.copies,
                replicated_slope: 0.0,
            });
            effects.len() - 1
        };
        let before_cost = |effects: &[Effect]| effects.iter().map(|e| e.cost(0.0)).sum::<f64>();
        // The arcs before `pred` whose preference lists reach `p`: fixed changes.
        let mut fixed: Vec<(usize, f64)> = Vec::new();
        for j in self.arcs_reaching(p) {
            let slot = &self.positions[&j];
            if !slot.list.contains(&me) {
                let w = slot.weight as f64 / WHOLE_RING as f64;
                fixed.push((me, w));
                if slot.list.len() >= self.copies {
                    fixed.push((slot.list[slot.list.len() - 1], -w));
                }
            }
        }
        for &(host, _) in &fixed {
            effect(host, &mut effects);
        }
        let i = effect(me, &mut effects);
        if owner != me {
            effects[i].primary_slope = 1.0;
            let o = effect(owner, &mut effects);
            effects[o].primary_slope = -1.0;
        }
        for &h in after.iter().filter(|h| !before.contains(h)) {
            let e = effect(h, &mut effects);
            effects[e].replicated_slope = 1.0 / targets.copies;
        }
        for &h in before.iter().filter(|h| !after.contains(h)) {
            let e = effect(h, &mut effects);
            effects[e].replicated_slope = -1.0 / targets.copies;
        }
        if !targets.replicated {
            for e in &mut effects {
                e.replicated = 0.0;
                e.replicated_slope = 0.0;
            }
            fixed.clear();
        }
        let cost_before = before_cost(&effects);
        for &(host, w) in &fixed {
            let e = effect(host, &mut effects);
            effects[e].replicated += w / targets.copies;
        }
        // The minimum of sum (a + s x)^2 + (b + t x)^2 over x.
        let num: f64 = effects
            .iter()
            .map(|e| e.primary * e.primary_slope + e.replicated * e.replicated_slope)
            .sum();
        let den: f64 = effects
            .iter()
            .map(|e| e.primary_slope * e.primary_slope + e.replicated_slope * e.replicated_slope)
            .sum();
        let x = if den > 0.0 { -num / den } else { len / 2.0 };
        let x = x.clamp(MIN_TAKEOVER_RATIO * len, MAX_TAKEOVER_RATIO * len);
        let cost_after: f64 = effects.iter().map(|e| e.cost(x)).sum();
        Some((cost_after - cost_before, x / len))
    }

    /// The positions before `p` (nearest first) whose arcs' preference lists reach `p`: fewer
    /// than `copies` distinct hosts on the positions from them up to `p` (excluded), so a
    /// position placed just before `p`, or `p` itself, is in their lists.
    fn arcs_reaching(&self, p: Id) -> Vec<Id> {
        let mut out = Vec::new();
        let mut seen: Vec<usize> = Vec::new();
        let mut j = self.pred(&p);
        while j != p {
            let host = self.positions[&j].host;
            if !seen.contains(&host) {
                seen.push(host);
            }
            if seen.len() >= self.copies {
                break;
            }
            out.push(j);
            j = self.pred(&j);
        }
        out
    }

    /// The preference list of the arc ending at `p`: the first `copies` distinct hosts of the
    /// positions from `p` clockwise, after `first` when given (a joining host placed just
    /// before `p`).
    fn preference(&self, p: Id, first: Option<usize>) -> Vec<usize> {
        let mut list: Vec<usize> = first.into_iter().collect();
        let walk = self
            .positions
            .range(p..)
            .chain(self.positions.range(..p))
            .map(|(_, slot)| slot.host);
        for h in walk {
            if list.len() >= self.copies {
                break;
            }
            if !list.contains(&h) {
                list.push(h);
            }
        }
        list
    }

    /// Computes the preference list of the arc ending at `p` and adds the arc's weight to the
    /// replicated weight of each host in it.
    fn add_replicated(&mut self, p: Id) {
        let list = self.preference(p, None);
        let slot = self.positions.get_mut(&p).expect("a position on the ring"); // faulty code
        slot.list = list;
        let (w, list) = (slot.weight, slot.list.clone());
        for h in list {
            self.change_replicated(h, w, true);
        }
    }

    /// Takes the weight of the arc ending at `p` from the replicated weight of each host in
    /// its preference list.
    fn remove_replicated(&mut self, p: Id) {
        let slot = &self.positions[&p];
        let (w, list) = (slot.weight, slot.list.clone());
        for h in list {
            self.change_replicated(h, w, false);
        }
    }

    fn change_replicated(&mut self, h: usize, w: Weight, add: bool) {
        let host = &mut self.hosts[h];
        self.by_replicated.remove(&(host.replicated, h));
        if add {
            host.replicated += w;
        } else {
            host.replicated -= w;
        }
        self.by_replicated.insert((host.replicated, h));
    }

    /// The index of `addr` in `hosts`, adding it with nothing owned if new.
    fn host_index(&mut self, addr: SocketAddr) -> usize {
        if let Some(&h) = self.index.get(&addr) {
            return h;
        }
        let h = self.hosts.len();
        self.hosts.push(Host {
            addr,
            weight: 0,
            replicated: 0,
            positions: BTreeSet::new(),
        });
        self.index.insert(addr, h);
        self.by_weight.insert((0, h));
        self.by_replicated.insert((0, h));
        h
    }

    /// The position before `p` on the ring (`p` itself when it is alone).
    fn pred(&self, p: &Id) -> Id {
        self.positions
            .range(..*p)
            .next_back()
            .or_else(|| self.positions.iter().next_back())
            .map(|(q, _)| *q)
            .unwrap_or(*p)
    }

    /// The position after `p` on the ring (`p` itself when it is alone).
    fn succ(&self, p: &Id) -> Id {
        use std::ops::Bound::{Excluded, Unbounded};
        self.positions
            .range((Excluded(*p), Unbounded))
            .next()
            .or_else(|| self.positions.iter().next())
            .map(|(q, _)| *q)
            .unwrap_or(*p)
    }

    /// Adds position `at` of `addr` (not on the ring yet), which takes the front of the arc of
    /// the position after it, and updates the replicated weights of the arcs whose preference
    /// lists change: the split arc and the arcs before it whose lists reached past `at`.
    fn insert_position(&mut self, at: Id, addr: SocketAddr) {
        let h = self.host_index(addr);
        if self.positions.is_empty() {
            self.positions.insert(
                at,
                Slot {
                    host: h,
                    weight: WHOLE_RING,
                    list: Vec::new(),
                },
            );
            self.hosts[h].positions.insert(at);
            self.change_weight(h, WHOLE_RING, true);
            self.add_replicated(at);
            return;
        }
        let next = self.succ(&at);
        let mut touched = vec![next];
        touched.extend(self.arcs_reaching(next));
        for &p in &touched {
            self.remove_replicated(p);
        }
        let pred = self.pred(&at);
        let w = weight(&pred, &at);
        self.positions.insert(
            at,
            Slot {
                host: h,
                weight: w,
                list: Vec::new(),
            },
        );
        self.hosts[h].positions.insert(at);
        self.change_weight(h, w, true);
        // The rest of the split arc, computed from its ends as `from_positions` does (not as a
        // difference, which can differ by a unit of rounding).
        let rest = weight(&at, &next);
        let next_slot = self.positions.get_mut(&next).expect("the position after `at`"); // faulty code
        let old = std::mem::replace(&mut next_slot.weight, rest);
        let owner = next_slot.host;
        self.change_weight(owner, old, false);
        self.change_weight(owner, rest, true);
        touched.push(at);
        for &p in &touched {
            self.add_replicated(p);
        }
    }

    /// Takes position `at` (on the ring, not alone) off it: the position after it takes its
    /// arc back, and the preference lists that reached it are recomputed.
    fn remove_position(&mut self, at: Id) {
        let next = self.succ(&at);
        let mut touched = vec![at, next];
        touched.extend(self.arcs_reaching(at).into_iter().filter(|&j| j != next));
        for &p in &touched {
            self.remove_replicated(p);
        }
        let slot = self.positions.remove(&at).expect("a position on the ring"); // faulty code
        self.hosts[slot.host].positions.remove(&at);
        self.change_weight(slot.host, slot.weight, false);
        let pred = self.pred(&next);
        let whole = weight(&pred, &next);
        let next_slot = self.positions.get_mut(&next).expect("the position after `at`"); // faulty code
        let old = std::mem::replace(&mut next_slot.weight, whole);
        let owner = next_slot.host;
        self.change_weight(owner, old, false);
        self.change_weight(owner, whole, true);
        for &p in &touched[1..] {
            self.add_replicated(p);
        }
    }

    /// Adds `w` to host `h`'s primary weight, or takes it away.
    fn change_weight(&mut self, h: usize, w: Weight, add: bool) {
        let host = &mut self.hosts[h];
        self.by_weight.remove(&(host.weight, h));
        if add {
            host.weight += w;
        } else {
            host.weight -= w;
        }
        self.by_weight.insert((host.weight, h));
    }
}

/// The weight of the arc `(pred, p]`; `pred == p` is the whole ring.
fn weight(pred: &Id, p: &Id) -> Weight {
    if pred == p {
        return WHOLE_RING;
    }
    let (hi, lo) = pred.distance_limbs(p);
    ((hi as u128) << (128 - WEIGHT_SHIFT)) | (lo >> WEIGHT_SHIFT)
}

/// Bytes of a split point the joining host makes its own: the low 64 bits of 160.
const OWN_BYTES: usize = 8;

/// `at` (a split point of the arc `(pred, p)`) with its low 64 bits replaced by those of the
/// SHA-1 of `"HOST#split{n}"`, when that stays strictly inside the arc. Split points are a
/// function of the ring's contents only, so two hosts that read the same ring at once (started
/// together) would otherwise pick the same ids, and one would hide the other on the ring.
/// Moving a point by less than 2^64 of 2^160 ids changes no share measurably.
fn own_low_bits(at: Id, pred: &Id, p: &Id, host: SocketAddr, n: usize) -> Id {
    let salt = Id::hash(format!("{host}#split{n}").as_bytes());
    let mut mine = at;
    let len = mine.0.len();
    mine.0[len - OWN_BYTES..].copy_from_slice(&salt.0[len - OWN_BYTES..]);
    if chordkv_protocol::in_open(&mine, pred, p) {
        mine
    } else {
        at
    }
}

/// The point `pred + ratio * (p - pred)` strictly inside the arc `(pred, p)` (the whole ring
/// when `pred == p`), or `None` when the arc has no point inside.
fn split_point(pred: &Id, p: &Id, ratio: f64) -> Option<Id> {
    let len = if pred == p { Id::MAX } else { pred.distance_to(p) };
    let one = Id::from_u64(1);
    if len <= one {
        return None;
    }
    let scale = 1u32 << SPLIT_BITS;
    let num = ((ratio * scale as f64).round() as u32).clamp(1, scale - 1);
    let offset = match len.checked_mul_small(num) {
        Some(product) => product.div_small(scale),
        None => len
            .div_small(scale)
            .checked_mul_small(num)
            .expect("len / 2^24 * num < 2^160"), // faulty code
    };
    let last = len.wrapping_sub(&one);
    let offset = offset.clamp(one, last);
    Some(pred.wrapping_add(&offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddr};

    /// Copies beyond the primary in these tests (the cluster benchmark's `--replicas 2`).
    const REPLICAS: usize = 2;

    fn allocate(ring: &[(Id, SocketAddr)], host: SocketAddr, count: u16) -> Vec<Id> {
        allocate_positions(ring, host, count, REPLICAS)
    }

    fn addr(i: usize) -> SocketAddr {
        let i = i as u32;
        SocketAddr::from((Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8), 7000))
    }

    /// `hosts` hosts joined one after the other with `count` positions each, through the pure
    /// function.
    fn joined(hosts: usize, count: u16) -> Vec<(Id, SocketAddr)> {
        let mut ring = Vec::new();
        for i in 0..hosts {
            let host = addr(i);
            for p in allocate(&ring, host, count) {
                ring.push((p, host));
            }
        }
        ring
    }

    /// Each host's share divided by the mean share, sorted.
    fn relative_shares(ring: &[(Id, SocketAddr)]) -> Vec<f64> {
        relative(&ownership(ring))
    }

    /// Each host's value divided by the mean, sorted.
    fn relative(by_host: &BTreeMap<SocketAddr, f64>) -> Vec<f64> {
        let mean = by_host.values().sum::<f64>() / by_host.len() as f64;
        let mut rel: Vec<f64> = by_host.values().map(|s| s / mean).collect();
        rel.sort_by(f64::total_cmp);
        rel
    }

    #[test]
    fn random_positions_start_at_the_node_id_and_are_stable() {
        let host = addr(1);
        let p = random_positions(&host, 4);
        assert_eq!(p.len(), 4);
        assert_eq!(p[0], Id::of_addr(&host));
        assert_eq!(p[3], Id::hash(b"10.0.0.1:7000#3"));
        assert_eq!(random_positions(&host, 4), p);
        assert_eq!(random_positions(&host, 2), p[..2]);
        assert!(random_positions(&host, 0).is_empty());
    }

    /// Two hosts started together read the same ring and place their positions from it: the
    /// split points are the same, but the ids are not (one host's positions would hide the
    /// other's on the ring). Found by the deploy test with 8 vnodes per host.
    #[test]
    fn two_hosts_joining_the_same_ring_at_once_take_distinct_ids() {
        let mut ring: Vec<(Id, SocketAddr)> = Vec::new();
        for i in 1..=2 {
            let placed = allocate(&ring, addr(i), 8);
            ring.extend(placed.into_iter().map(|p| (p, addr(i))));
        }
        let c = allocate(&ring, addr(3), 8);
        let d = allocate(&ring, addr(4), 8);
        assert_eq!(c.len(), 8);
        let mut all: Vec<Id> = ring
            .iter()
            .map(|(p, _)| *p)
            .chain(c.iter().copied())
            .chain(d)
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 32, "every position is a distinct id");
        // Either alone still gets its share.
        let with_c: Vec<(Id, SocketAddr)> = ring
            .iter()
            .copied()
            .chain(c.iter().map(|&p| (p, addr(3))))
            .collect();
        let rel = relative_shares(&with_c);
        assert!(rel.iter().all(|r| (0.95..1.05).contains(r)), "{rel:?}");
    }

    #[test]
    fn ownership_sums_to_one_and_follows_the_arcs() {
        assert!(ownership(&[]).is_empty());
        let (a, b) = (addr(1), addr(2));
        assert_eq!(ownership(&[(Id::from_u64(5), a)])[&a], 1.0);
        // a owns (3/4 ring, 1/4 ring]: half; b the other half.
        let quarter = Id::pow2(158);
        let ring = [(quarter, a), (quarter.wrapping_add(&Id::pow2(159)), b)];
        let shares = ownership(&ring);
        assert_eq!(shares[&a], 0.5);
        assert_eq!(shares[&b], 0.5);
        let random: Vec<(Id, SocketAddr)> = (0..50)
            .flat_map(|i| {
                random_positions(&addr(i), 3)
                    .into_iter()
                    .map(move |p| (p, addr(i)))
            })
            .collect();
        let total: f64 = ownership(&random).values().sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
    }

    #[test]
    fn the_first_host_spaces_its_positions_evenly_from_its_node_id() {
        let host = addr(7);
        let p = allocate(&[], host, 4);
        assert_eq!(p.len(), 4);
        assert_eq!(p[0], Id::of_addr(&host));
        for w in p.windows(2) {
            assert_eq!(w[0].distance_to(&w[1]), Id::MAX.div_small(4));
        }
        assert_eq!(allocate(&[], host, 0), Vec::<Id>::new());
    }

    #[test]
    fn eight_hosts_of_sixteen_positions_are_within_ten_percent() {
        let ring = joined(8, 16);
        assert_eq!(ring.len(), 8 * 16);
        let distinct: BTreeSet<Id> = ring.iter().map(|(p, _)| *p).collect();
        assert_eq!(distinct.len(), ring.len());
        let rel = relative_shares(&ring);
        assert!(rel[rel.len() - 1] <= 1.10, "max/mean {rel:?}");
        assert!(rel[0] >= 0.90, "min/mean {rel:?}");
    }

    #[test]
    fn two_hundred_hosts_stay_within_a_quarter_of_the_mean_at_the_99th_percentile() {
        // Through `Ring::join`, which the next test shows gives what the pure function gives.
        let mut ring = Ring::new(REPLICAS);
        for i in 0..200 {
            assert_eq!(ring.join(addr(i), 16).len(), 16);
        }
        let positions: Vec<(Id, SocketAddr)> = ring.positions().collect();
        assert_eq!(positions.len(), 200 * 16);
        let rel = relative_shares(&positions);
        let p99 = rel[(rel.len() * 99).div_ceil(100) - 1];
        assert!(p99 <= 1.25, "p99/mean {p99}");
        assert!(rel[0] > 0.5, "min/mean {}", rel[0]);
        let copies = relative(&ring.replicated_ownership());
        let p99 = copies[(copies.len() * 99).div_ceil(100) - 1];
        assert!(p99 <= 1.25, "copies p99/mean {p99}");
        assert!(copies[0] > 0.5, "copies min/mean {}", copies[0]);
    }

    /// What a host stores counting replicas evens out too, not only its primary share: with
    /// primary shares levelled alone, 8 hosts of 8 positions held 0.90 to 1.09 of the mean
    /// copies (3 copies), and 16 hosts 0.85 to 1.20.
    #[test]
    fn hosts_hold_even_copies_counting_replicas() {
        for (hosts, count, replicas) in [(8, 8, 2), (16, 8, 2), (8, 8, 1), (9, 16, 2), (8, 8, 0)] {
            let mut ring = Ring::new(replicas);
            for i in 0..hosts {
                ring.join(addr(i), count);
            }
            let positions: Vec<(Id, SocketAddr)> = ring.positions().collect();
            let primary = relative_shares(&positions);
            let copies = relative(&replicated_ownership(&positions, replicas));
            let case = format!("{hosts} hosts x {count}, replicas {replicas}");
            for (what, rel) in [("primary", &primary), ("copies", &copies)] {
                assert!(
                    rel[0] >= 0.9 && rel[rel.len() - 1] <= 1.1,
                    "{case}: {what} {rel:?}"
                );
            }
            // The ring's own tally is the one recomputed from its positions.
            assert_eq!(relative(&ring.replicated_ownership()), copies, "{case}");
        }
        // With 3 copies and 3 hosts every host holds everything.
        let ring = joined(3, 8);
        let copies = replicated_ownership(&ring, REPLICAS);
        assert!(copies.values().all(|c| (c - 1.0).abs() < 1e-9), "{copies:?}");
    }

    #[test]
    fn joining_one_by_one_gives_what_the_pure_function_gives() {
        let mut ring = Ring::new(REPLICAS);
        for i in 0..40 {
            let count = [1, 3, 16][i % 3];
            let before: Vec<(Id, SocketAddr)> = ring.positions().collect();
            let expect = allocate(&before, addr(i), count);
            assert_eq!(ring.join(addr(i), count), expect, "host {i}");
        }
        // Input order does not matter.
        let mut shuffled: Vec<(Id, SocketAddr)> = ring.positions().collect();
        shuffled.reverse();
        assert_eq!(allocate(&shuffled, addr(99), 5), ring.clone().join(addr(99), 5));
    }

    #[test]
    fn a_restart_returns_the_same_positions_topped_up_or_truncated() {
        let ring = joined(5, 8);
        let host = addr(2);
        let mut mine: Vec<Id> = ring.iter().filter(|(_, h)| *h == host).map(|(p, _)| *p).collect();
        mine.sort();
        assert_eq!(allocate(&ring, host, 8), mine);
        assert_eq!(allocate(&ring, host, 3), mine[..3]);
        let more = allocate(&ring, host, 12);
        assert_eq!(more.len(), 12);
        assert_eq!(more[..8], mine[..]);
        let all: BTreeSet<Id> = ring
            .iter()
            .map(|(p, _)| *p)
            .chain(more[8..].iter().copied())
            .collect();
        assert_eq!(all.len(), ring.len() + 4, "the new positions are new");
        // A host alone that restarts with more positions splits its own arcs.
        let alone = joined(1, 2);
        let topped = allocate(&alone, addr(0), 4);
        assert_eq!(topped.len(), 4);
        assert_eq!(
            ownership(&topped.iter().map(|p| (*p, addr(0))).collect::<Vec<_>>())[&addr(0)],
            1.0
        );
    }

    #[test]
    fn a_ninth_host_takes_its_ninth_from_many_hosts() {
        let ring = joined(8, 16);
        let before = ownership(&ring);
        let newcomer = addr(8);
        let mut after_ring = ring.clone();
        for p in allocate(&ring, newcomer, 16) {
            after_ring.push((p, newcomer));
        }
        let after = ownership(&after_ring);
        let moved = after[&newcomer];
        assert!(moved <= 1.2 / 9.0, "moved {moved}");
        assert!(moved >= 0.8 / 9.0, "moved {moved}");
        let sources = before.iter().filter(|(h, s)| after[*h] < **s).count();
        assert!(sources >= 4, "from {sources} hosts");
        // Nobody gained but the newcomer.
        assert!(before.iter().all(|(h, s)| after[h] <= *s));
    }

    #[test]
    fn hosts_with_one_position_halve_the_largest_arc() {
        let ring = joined(2, 1);
        let rel = relative_shares(&ring);
        assert_eq!(rel.len(), 2);
        assert!(
            (rel[0] - 1.0).abs() < 1e-6 && (rel[1] - 1.0).abs() < 1e-6,
            "{rel:?}"
        );
        // A host of 16 positions joining two single-position hosts: one position per arc it
        // can take from, the rest halve its own arcs.
        let mut ring = ring;
        let newcomer = addr(5);
        let p = allocate(&ring, newcomer, 16);
        assert_eq!(p.len(), 16);
        ring.extend(p.iter().map(|p| (*p, newcomer)));
        let rel = relative_shares(&ring);
        assert!(rel[2] <= 1.10 && rel[0] >= 0.90, "{rel:?}");
    }

    #[test]
    fn split_points_stay_inside_their_arc() {
        let a = Id::from_u64(10);
        assert_eq!(split_point(&a, &Id::from_u64(11), 0.5), None);
        assert_eq!(split_point(&a, &Id::from_u64(12), 0.9), Some(Id::from_u64(11)));
        assert_eq!(split_point(&a, &Id::from_u64(12), 0.0), Some(Id::from_u64(11)));
        let wrap = Id::MAX.wrapping_sub(&Id::from_u64(99));
        let mid = split_point(&wrap, &Id::from_u64(100), 0.5).unwrap();
        assert_eq!(mid, Id::ZERO);
        // The whole ring (a position alone): about half way round.
        let half = split_point(&a, &a, 0.5).unwrap();
        assert_eq!(a.distance_to(&half).bit_len(), 159);
        assert_eq!(weight(&a, &a), WHOLE_RING);
        assert_eq!(weight(&Id::ZERO, &Id::pow2(159)), WHOLE_RING / 2);
    }
}
