//! The routing table: fingers plus the successor list, searched for the closest preceding node.
//!
//! Finger `i` points at `successor(me + offset_i)`. The offsets are data, made by the routing
//! scheme ([`Routing`]):
//!
//! ```text
//!   classic (SIGCOMM'01 section 4.3)   offsets 2^i,                  i = 0..160   160 fingers
//!   base:B  (DKS, Alima et al. 2003)   offsets j * floor(2^160/B^i), j = 1..B-1  (B-1) per level
//!   onehop                             no fingers: a full membership table (membership.rs)
//!
//!   n ──► n+1 ──► n+2 ──► n+4 ──► ... ──► n+2^159        (classic finger starts)
//!   closest_preceding(k) = the known node farthest along that is still before k
//! ```
//!
//! Classic is base:2. With base B a lookup divides the remaining distance by B each hop, so it
//! takes about log_B N hops for about (B-1) log_B N distinct fingers.
//!
//! **Memory.** The offsets are shared by every table of the same scheme (one `Arc` per base),
//! and fingers are stored run-length encoded: in an N-node ring the first ~160 - log2 N
//! classic fingers all point at the successor, so a table holds about log2 N runs, not 160
//! node references. This is what lets the simulator hold 10^6 nodes.
//!
//! `closest_preceding` is on every routing decision, so the table keeps a sorted, deduplicated
//! view of every node it knows (fingers and successors) keyed by clockwise distance from `me`,
//! and answers by binary search.

use chordkv_protocol::NodeAddr;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use chordkv_protocol::{Id, NodeRef};

use super::config::Routing;

/// The largest base `base:B` accepts (255 fingers per level, 5,100 in all).
pub const MAX_BASE: u32 = 256;

/// Bound of the successor list in entries, per host it must name ([`Routing::set_successors`]):
/// with virtual nodes, positions of few hosts can run long between other hosts.
pub const MAX_POSITIONS_PER_SUCCESSOR: usize = 4;

/// Finger offsets `j * floor(2^160 / B^i)` (`j = 1..B-1`, `i = 1, 2, ...` while the level's
/// unit is at least 1), ascending, shared by every table with the same base.
///
/// These are the levels of DKS' routing table (Alima, El-Ansary, Brand, Haridi, "DKS(N, k,
/// f): A Family of Low Communication, Scalable and Fault-Tolerant Infrastructures for P2P
/// Applications", CCGrid 2003, with `k = B`): level 1 splits the whole ring into B equal
/// intervals, and each level splits the first interval of the level above into B again, so
/// a lookup fixes one base-B digit of its distance per level. Counting levels up from
/// `B^0 = 1` instead (offsets `j * B^i` below 2^160) gives the same set when 2^160 is a power
/// of B (B = 2, 4, 16, 32, 256), but not otherwise: with B = 8, 2^160 = 2 * 8^53, so the top
/// level held a single finger (at half the ring), every level below sat a factor of 2 off
/// the ring's divisions, and base:8 took more hops at every N than evenly spread ids need
/// (`results/lookup-schemes/finger-analysis.md`, section 1).
pub fn finger_offsets(base: u32) -> Arc<[Id]> {
    type Cache = Mutex<Vec<(u32, Arc<[Id]>)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, offsets)) = cache.iter().find(|(b, _)| *b == base) {
        return offsets.clone();
    }
    let mut offsets = Vec::new();
    if base >= 2 {
        let mut unit = ring_share(base);
        while unit != Id::ZERO {
            // Largest first; (B-1) * floor(x / B^(i+1)) < floor(x / B^i), so levels never overlap.
            for j in (1..base).rev() {
                offsets.push(unit.checked_mul_small(j).expect("(B-1)/B of the ring fits"));
                // faulty code
            }
            unit = unit.div_small(base);
        }
        offsets.reverse();
    }
    let offsets: Arc<[Id]> = offsets.into();
    cache.push((base, offsets.clone()));
    offsets
}

/// `floor(2^160 / base)` (2^160 itself is not an `Id`: it is `Id::MAX + 1`).
fn ring_share(base: u32) -> Id {
    let q = Id::MAX.div_small(base);
    let rem = Id::MAX.wrapping_sub(&q.checked_mul_small(base).expect("q * base <= MAX")); // faulty code
    if rem == Id::from_u64(u64::from(base) - 1) {
        q.wrapping_add(&Id::from_u64(1))
    } else {
        q
    }
}

#[derive(Clone, Debug)]
pub struct RoutingTable {
    me: NodeRef,
    /// Distance of each finger's start from `me`, ascending.
    offsets: Arc<[Id]>,
    /// `successor(me + offsets[i])` as last learned, run-length encoded: `(first index, node)`
    /// in index order, the first run starting at 0 (empty when there are no fingers). Finger
    /// `i` is the node of the last run starting at or before `i`.
    runs: Vec<(u16, Option<NodeRef>)>,
    /// The successor list, nearest first; never contains `me`.
    successors: Vec<NodeRef>,
    /// The first position of each host other than ours in the successor list, nearest
    /// first: the walk of a preference list from us (Dynamo section 4.3), kept with the list
    /// so that a write does not walk the list again.
    other_hosts: Vec<NodeRef>,
    /// Every distinct node above, sorted by clockwise distance from `me`...
    view: Vec<NodeRef>,
    /// Whether every node of `view` is a vnode of our own host (a ring of one host, as far as
    /// the table knows).
    own_host_only: bool,
    /// ...and those distances as integer limbs (see `Id::limbs`), searched by binary search.
    distances: Vec<(u32, u128)>,
    /// Changes to the fingers so far (any finger set to another node, or forgotten): equal
    /// counts mean the fingers did not change in between.
    finger_changes: u64,
}

impl RoutingTable {
    /// A classic Chord table: `start_i = me + 2^i`.
    pub fn classic(me: NodeRef) -> RoutingTable {
        RoutingTable::new(me, Routing::Classic)
    }

    /// A table for a routing scheme.
    pub fn new(me: NodeRef, routing: Routing) -> RoutingTable {
        let offsets = match routing {
            Routing::Classic => finger_offsets(2),
            Routing::Base(b) => finger_offsets(b.clamp(2, MAX_BASE)),
            Routing::OneHop => finger_offsets(0),
        };
        RoutingTable::with_offsets(me, offsets)
    }

    /// A table whose finger `i` starts at `me + offsets[i]` (ascending).
    pub fn with_offsets(me: NodeRef, offsets: Arc<[Id]>) -> RoutingTable {
        debug_assert!(offsets.len() <= u16::MAX as usize && offsets.windows(2).all(|w| w[0] < w[1]));
        let runs = if offsets.is_empty() {
            Vec::new()
        } else {
            vec![(0, None)]
        };
        RoutingTable {
            me,
            offsets,
            runs,
            successors: Vec::new(),
            other_hosts: Vec::new(),
            view: Vec::new(),
            own_host_only: true,
            distances: Vec::new(),
            finger_changes: 0,
        }
    }

    pub fn finger_count(&self) -> usize {
        self.offsets.len()
    }

    pub fn finger_start(&self, i: usize) -> Id {
        self.me.id.wrapping_add(&self.offsets[i])
    }

    /// Finger `i`'s start as a clockwise distance from `me`, in limbs (as
    /// [`Id::distance_limbs`] gives it): the fingers' are ascending in `i`.
    pub fn finger_distance(&self, i: usize) -> (u32, u128) {
        self.offsets[i].limbs()
    }

    /// How many finger starts lie at most `distance` clockwise from `me`: fingers `0..n`.
    pub fn fingers_within(&self, distance: (u32, u128)) -> usize {
        self.offsets.partition_point(|o| o.limbs() <= distance)
    }

    /// A count that grows whenever a finger changes (see the field).
    pub fn finger_changes(&self) -> u64 {
        self.finger_changes
    }

    fn run_of(&self, i: usize) -> usize {
        self.runs.partition_point(|r| r.0 as usize <= i).saturating_sub(1)
    }

    pub fn finger(&self, i: usize) -> Option<NodeRef> {
        self.runs.get(self.run_of(i)).and_then(|r| r.1)
    }

    /// Distinct finger runs stored (the table's memory, in node references).
    pub fn finger_runs(&self) -> usize {
        self.runs.len()
    }

    /// Sets finger `i`; returns whether it changed.
    pub fn set_finger(&mut self, i: usize, node: Option<NodeRef>) -> bool {
        if !self.put_finger(i, node) {
            return false;
        }
        self.rebuild();
        true
    }

    /// Sets finger `i` without rebuilding the view.
    fn put_finger(&mut self, i: usize, node: Option<NodeRef>) -> bool {
        let node = node.filter(|n| n.addr != self.me.addr);
        if i >= self.offsets.len() || self.finger(i) == node {
            return false;
        }
        let k = self.run_of(i);
        let (start, old) = self.runs[k];
        let end = self.runs.get(k + 1).map_or(self.offsets.len(), |r| r.0 as usize);
        let mut split = Vec::with_capacity(3);
        if (start as usize) < i {
            split.push((start, old));
        }
        split.push((i as u16, node));
        if i + 1 < end {
            split.push((i as u16 + 1, old));
        }
        self.runs.splice(k..k + 1, split);
        self.merge_runs();
        self.finger_changes += 1;
        true
    }

    /// Sets every finger from `successor_of(start)` (a simulator's oracle, or a bulk refresh),
    /// rebuilding the view once.
    pub fn fill_fingers(&mut self, mut successor_of: impl FnMut(&Id) -> Option<NodeRef>) {
        let mut runs: Vec<(u16, Option<NodeRef>)> = Vec::new();
        for i in 0..self.offsets.len() {
            let node = successor_of(&self.finger_start(i)).filter(|n| n.addr != self.me.addr);
            if runs.last().is_none_or(|r| r.1 != node) {
                runs.push((i as u16, node));
            }
        }
        runs.shrink_to_fit();
        self.runs = runs;
        self.finger_changes += 1;
        self.rebuild();
    }

    fn merge_runs(&mut self) {
        self.runs.dedup_by(|b, a| a.1 == b.1);
    }

    pub fn successors(&self) -> &[NodeRef] {
        &self.successors
    }

    /// The first position of each host other than ours in the successor list, nearest first
    /// (with one vnode per host: the successor list).
    pub fn other_hosts(&self) -> &[NodeRef] {
        &self.other_hosts
    }

    /// Replaces the successor list (`me` and duplicates are dropped, order kept): the entries
    /// up to the last of the first `max` hosts other than ours (Chord's `r` counts machines,
    /// so the ring survives `r - 1` adjacent host failures and a key finds `replicas` other
    /// hosts in it, as Dynamo's preference list skips further positions of a host, section
    /// 4.3), at most `max * MAX_POSITIONS_PER_SUCCESSOR` entries. With one vnode per host:
    /// the first `max` entries.
    pub fn set_successors(&mut self, list: impl IntoIterator<Item = NodeRef>, max: usize) {
        let cap = max.saturating_mul(MAX_POSITIONS_PER_SUCCESSOR);
        // Sized once (a list of vnodes holds several positions per host): no regrowth.
        let mut out: Vec<NodeRef> = Vec::with_capacity(cap);
        let mut hosts: Vec<SocketAddr> = Vec::with_capacity(max);
        for n in list {
            if out.len() == cap {
                break;
            }
            if n.addr == self.me.addr || out.iter().any(|o| o.addr == n.addr) {
                continue;
            }
            let host = n.addr.host;
            if host != self.me.addr.host && !hosts.contains(&host) {
                if hosts.len() == max {
                    break;
                }
                hosts.push(host);
            }
            out.push(n);
        }
        if out != self.successors {
            out.shrink_to_fit();
            self.successors = out;
            self.rebuild();
        }
    }

    /// How many hosts other than ours the successor list names (its length with one vnode
    /// per host): the list is complete when this is the configured `successors`.
    pub fn successor_hosts(&self) -> usize {
        self.other_hosts.len()
    }

    /// Removes every mention of the node at `addr`; returns whether it was known.
    pub fn forget(&mut self, addr: NodeAddr) -> bool {
        let mut known = false;
        for r in self.runs.iter_mut() {
            if r.1.is_some_and(|n| n.addr == addr) {
                r.1 = None;
                known = true;
            }
        }
        if known {
            self.finger_changes += 1;
        }
        self.merge_runs();
        let before = self.successors.len();
        self.successors.retain(|n| n.addr != addr);
        known |= self.successors.len() != before;
        if known {
            self.rebuild();
        }
        known
    }

    /// Removes the node at `addr` from the fingers only: it stays in the successor list (a
    /// member presumed down under the partition policy `consistent`). Returns whether a finger
    /// named it.
    pub fn forget_finger(&mut self, addr: NodeAddr) -> bool {
        let mut known = false;
        for r in self.runs.iter_mut() {
            if r.1.is_some_and(|n| n.addr == addr) {
                r.1 = None;
                known = true;
            }
        }
        if known {
            self.finger_changes += 1;
            self.merge_runs();
            self.rebuild();
        }
        known
    }

    /// [`RoutingTable::closest_preceding`] among the nodes `usable` accepts (e.g. not presumed
    /// down): the nearest such node before `target`.
    pub fn closest_preceding_where(&self, target: &Id, usable: impl Fn(&NodeRef) -> bool) -> Option<NodeRef> {
        let d = self.me.id.distance_limbs(target);
        let idx = self.distances.partition_point(|dist| *dist < d);
        (0..idx)
            .rev()
            .take_while(|&i| self.distances[i] != (0, 0))
            .map(|i| self.view[i])
            .find(|n| usable(n))
    }

    /// The known node closest before `target` going clockwise from `me`, or `None` when no
    /// known node lies strictly between `me` and `target`.
    #[inline]
    pub fn closest_preceding(&self, target: &Id) -> Option<NodeRef> {
        let d = self.me.id.distance_limbs(target);
        // Entries with distance in (0, d): the last of them is the answer.
        let idx = self.distances.partition_point(|dist| *dist < d);
        if idx == 0 || self.distances[idx - 1] == (0, 0) {
            return None;
        }
        Some(self.view[idx - 1])
    }

    /// Every distinct node in the table, nearest first.
    pub fn known_nodes(&self) -> impl DoubleEndedIterator<Item = &NodeRef> {
        self.view.iter()
    }

    /// Whether every node the table knows is a vnode of our own host (true for an empty
    /// table): `known_nodes().all(same host)`, kept as the table changes.
    pub fn own_host_only(&self) -> bool {
        self.own_host_only
    }

    /// How many distinct nodes the table holds (its state size).
    pub fn distinct_nodes(&self) -> usize {
        self.view.len()
    }

    fn rebuild(&mut self) {
        self.other_hosts.clear();
        for n in &self.successors {
            let host = n.addr.host;
            if host != self.me.addr.host && !self.other_hosts.iter().any(|o| o.addr.host == host) {
                self.other_hosts.push(*n);
            }
        }
        let me = self.me.id;
        let mut all: Vec<((u32, u128), NodeRef)> = self
            .runs
            .iter()
            .filter_map(|r| r.1)
            .chain(self.successors.iter().copied())
            .map(|n| (me.distance_limbs(&n.id), n))
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.addr.cmp(&b.1.addr)));
        all.dedup_by(|a, b| a.1.addr == b.1.addr);
        self.distances.clear();
        self.distances.extend(all.iter().map(|(d, _)| *d));
        self.view.clear();
        self.view.extend(all.into_iter().map(|(_, n)| n));
        self.own_host_only = self.view.iter().all(|n| n.addr.host == self.me.addr.host);
        self.distances.shrink_to_fit();
        self.view.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chord::test_support::node;
    use chordkv_protocol::id::ID_BITS;

    /// The preference list's walk kept with the successor list is the walk done over it:
    /// the first position of each host other than ours, through changes of the list; and
    /// whether the table knows only our host's vnodes.
    #[test]
    fn other_hosts_follow_the_successor_list() {
        // Node v is vnode v % 3 of host 127.0.0.1:(1000 + v / 3); we are vnode 0 of host 1000.
        let at = |v: u64| NodeRef {
            id: Id::from_u64(v),
            addr: NodeAddr {
                host: std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + (v / 3) as u16)),
                vnode: (v % 3) as u16,
            },
        };
        let me = at(0);
        let mut t = RoutingTable::classic(me);
        let walk = |t: &RoutingTable| {
            let list =
                crate::chord::placement::distinct_hosts(std::iter::once(&me).chain(t.successors()), 64);
            list[1..].to_vec()
        };
        let mut rng = crate::rng::Rng::new(7);
        for _ in 0..300 {
            if rng.chance(0.7) {
                let list: Vec<NodeRef> = (0..rng.below(12)).map(|_| at(rng.below(30))).collect();
                t.set_successors(list, 1 + rng.below(5) as usize);
            } else if let Some(n) = t.successors().first().copied() {
                t.forget(n.addr);
            }
            assert_eq!(t.other_hosts(), walk(&t).as_slice());
            assert_eq!(t.successor_hosts(), t.other_hosts().len());
            assert_eq!(
                t.own_host_only(),
                t.known_nodes().all(|n| n.addr.host == me.addr.host)
            );
        }
    }

    #[test]
    fn closest_preceding_picks_the_farthest_node_before_the_target() {
        let me = node(10);
        let mut t = RoutingTable::classic(me);
        assert_eq!(t.closest_preceding(&Id::from_u64(50)), None);
        t.set_successors([node(20), node(30)], 8);
        t.set_finger(100, Some(node(40)));
        assert_eq!(t.closest_preceding(&Id::from_u64(50)), Some(node(40)));
        assert_eq!(t.closest_preceding(&Id::from_u64(40)), Some(node(30)));
        assert_eq!(t.closest_preceding(&Id::from_u64(31)), Some(node(30)));
        assert_eq!(t.closest_preceding(&Id::from_u64(20)), None);
        // Wrapping: a target behind me is farthest away, so the farthest node wins.
        assert_eq!(t.closest_preceding(&Id::from_u64(5)), Some(node(40)));
        assert!(t.forget(node(40).addr));
        assert_eq!(t.closest_preceding(&Id::from_u64(5)), Some(node(30)));
        assert_eq!(t.distinct_nodes(), 2);
    }

    #[test]
    fn successor_list_drops_me_and_duplicates() {
        let me = node(10);
        let mut t = RoutingTable::classic(me);
        t.set_successors([node(20), me, node(20), node(30), node(40)], 2);
        assert_eq!(t.successors(), &[node(20), node(30)]);
        assert!(!t.set_finger(3, Some(me)));
    }

    #[test]
    fn offsets_of_each_scheme() {
        assert_eq!(finger_offsets(2).len(), ID_BITS);
        assert_eq!(finger_offsets(2)[7], Id::pow2(7));
        // base 4: 3 fingers on each of 80 levels; base 16: 15 on each of 40.
        let b4 = finger_offsets(4);
        assert_eq!(b4.len(), 3 * 80);
        assert_eq!(&b4[..6], &[1, 2, 3, 4, 8, 12].map(Id::from_u64));
        assert_eq!(finger_offsets(16).len(), 15 * 40);
        // base 3: the top level stops where j * 3^i no longer fits in 160 bits.
        let b3 = finger_offsets(3);
        assert!(b3.windows(2).all(|w| w[0] < w[1]));
        assert!(b3.len() >= 2 * 100 && b3.len() <= 2 * 101);
        assert!(finger_offsets(0).is_empty());
        assert!(Arc::ptr_eq(&finger_offsets(4), &finger_offsets(4)));
    }

    #[test]
    fn each_level_splits_the_one_above_into_b() {
        // DKS' levels from the top: the largest offsets are j/B of the ring for every base,
        // so the first hop of any lookup fixes the top base-B digit of its distance. Counting
        // levels up from 1 gave base 8 a top level of one finger, at half the ring.
        for base in [2, 3, 5, 7, 8, 10, 64, 100, 128, 255, 256] {
            let offsets = finger_offsets(base);
            assert!(offsets.windows(2).all(|w| w[0] < w[1]), "base {base}");
            let top = &offsets[offsets.len() - (base as usize - 1)..];
            for (j, o) in top.iter().enumerate() {
                let want = (j + 1) as f64 / base as f64;
                assert!(
                    (o.as_fraction() - want).abs() < 1e-12,
                    "base {base}: offset {j} at {}",
                    o.as_fraction()
                );
            }
            // floor(2^160 / B^i) >= 1 for i = 1..L, L = floor(log_B 2^160): L levels.
            let levels = (ID_BITS as f64 * 2f64.ln() / (base as f64).ln() + 1e-9).floor() as usize;
            assert_eq!(offsets.len(), (base as usize - 1) * levels, "base {base}");
        }
        // Where 2^160 is a power of B the levels are B^i, as counted from 1.
        for base in [2u32, 4, 16, 32, 256] {
            let mut up = Vec::new();
            let mut power = Some(Id::from_u64(1));
            while let Some(p) = power {
                up.extend((1..base).map_while(|j| p.checked_mul_small(j)));
                power = p.checked_mul_small(base);
            }
            assert_eq!(&finger_offsets(base)[..], &up[..], "base {base}");
        }
    }

    #[test]
    fn fingers_are_stored_as_runs() {
        let me = node(10);
        let mut t = RoutingTable::classic(me);
        assert_eq!(t.finger_runs(), 1);
        t.fill_fingers(|start| {
            Some(if *start <= Id::from_u64(20) {
                node(20)
            } else if *start <= Id::from_u64(40) {
                node(40)
            } else {
                node(90)
            })
        });
        assert_eq!(t.finger(0), Some(node(20)));
        assert_eq!(t.finger(3), Some(node(20))); // 10 + 8 = 18
        assert_eq!(t.finger(4), Some(node(40))); // 10 + 16 = 26
        assert_eq!(t.finger(5), Some(node(90)));
        assert_eq!(t.finger(159), Some(node(90)));
        assert_eq!(t.finger_runs(), 3);
        assert_eq!(t.distinct_nodes(), 3);
        assert!(t.set_finger(4, Some(node(30))));
        assert_eq!(
            (t.finger(3), t.finger(4), t.finger(5)),
            (Some(node(20)), Some(node(30)), Some(node(90)))
        );
        assert!(t.set_finger(4, Some(node(20))));
        assert_eq!(t.finger_runs(), 2);
        assert!(!t.set_finger(4, Some(node(20))));
        assert!(t.forget(node(90).addr));
        assert_eq!(t.finger(100), None);
        assert_eq!(t.finger_runs(), 2);
        assert_eq!(t.distinct_nodes(), 1);
        // Setting fingers one by one gives the same runs as filling them.
        let mut u = RoutingTable::classic(me);
        for i in (0..ID_BITS).rev() {
            u.set_finger(i, t.finger(i));
        }
        assert_eq!(u.runs, t.runs);
    }
}
