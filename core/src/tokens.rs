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
//! - [`allocate_positions`]: a joining host chooses its positions so that shares even out
//!   (Dynamo, SOSP'07 section 6.2, strategy 3: equal shares by construction; Cassandra's
//!   `allocate_tokens_for_local_replication_factor`, new tokens chosen to even out
//!   ownership). The joining host takes its share from the hosts that own the most, each
//!   giving up part of its largest arcs, so ownership moves from up to `V` hosts, not from one
//!   neighbour, and the shares stay within a narrow band as hosts keep joining.
//!
//! ```text
//!   before:   ...---A3]---------------------B7]-----C1]---...   B owns the most
//!   joining host N splits B's largest arc (A3, B7]:
//!   after:    ...---A3]--------N0]----------B7]-----C1]---...   N owns (A3, N0], B keeps (N0, B7]
//! ```
//!
//! Shares are computed exactly, in integer *weights* (an arc's length in units of 2^33 ids,
//! so the whole ring is 2^127 and any sum of arcs fits a `u128`); so a decision never depends
//! on the order floating-point sums were taken in, and [`Ring::join`] repeated gives exactly
//! what [`allocate_positions`] gives on the same ring.

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
/// Resolution of a split point inside an arc: ratios are rounded to multiples of 2^-24.
const SPLIT_BITS: u32 = 24;

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
/// order; positions distinct) takes so that shares even out (see [`Ring::join`] for the
/// method). Deterministic in its inputs.
///
/// - Empty ring: `count` evenly spaced positions starting at [`Id::of_addr`]`(host)`.
/// - `host` already in `ring` (a restart on the same address): its positions in ring order
///   (ascending ids), the first `count` of them, or all of them followed by new ones chosen as
///   for a joining host that already owns what it owns.
///
/// Costs `O(N log N)` for `N` positions; a caller adding many hosts keeps a [`Ring`] instead.
pub fn allocate_positions(ring: &[(Id, SocketAddr)], host: SocketAddr, count: u16) -> Vec<Id> {
    Ring::from_positions(ring).join(host, count)
}

/// Each host's share of the id space (fractions summing to 1): the lengths of the arcs
/// `(pred(p), p]` of its positions `p`, divided by 2^160. Empty for an empty ring.
pub fn ownership(ring: &[(Id, SocketAddr)]) -> BTreeMap<SocketAddr, f64> {
    Ring::from_positions(ring).ownership()
}

/// A ring of positions with every host's share and arcs, kept up to date as hosts join: what
/// [`allocate_positions`] works on, kept by a caller that adds many hosts in turn (a join
/// costs `O(V log N)` instead of rebuilding).
#[derive(Clone, Debug, Default)]
pub struct Ring {
    /// Every position: the index of its host in `hosts` and the weight of its arc.
    positions: BTreeMap<Id, Slot>,
    hosts: Vec<Host>,
    index: BTreeMap<SocketAddr, usize>,
    /// `(weight, host)` of every host, to find the hosts that own the most.
    by_weight: BTreeSet<(Weight, SocketAddr)>,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    host: usize,
    /// The weight of the arc `(pred(position), position]`.
    weight: Weight,
}

#[derive(Clone, Debug)]
struct Host {
    addr: SocketAddr,
    weight: Weight,
    /// `(weight, position)` of each of the host's arcs `(pred(position), position]`.
    arcs: BTreeSet<(Weight, Id)>,
}

/// What a donor gives up in one join.
struct Donor {
    host: usize,
    /// Weight above the level the join brings it down to.
    excess: Weight,
    /// Positions of the joining host placed in this donor's arcs.
    tokens: usize,
}

impl Ring {
    /// An empty ring.
    pub fn new() -> Ring {
        Ring::default()
    }

    /// The ring of `positions` (any order). A position given twice keeps its smallest host
    /// address, so the result does not depend on the order either.
    pub fn from_positions(positions: &[(Id, SocketAddr)]) -> Ring {
        let mut sorted = positions.to_vec();
        sorted.sort_unstable();
        sorted.dedup_by_key(|(id, _)| *id);
        let mut ring = Ring::new();
        let last = sorted.last().map(|(id, _)| *id);
        let mut pred = last;
        for (id, addr) in sorted {
            let w = weight(&pred.unwrap_or(id), &id);
            pred = Some(id);
            let h = ring.host_index(addr);
            ring.positions.insert(id, Slot { host: h, weight: w });
            ring.hosts[h].arcs.insert((w, id));
            ring.hosts[h].weight += w;
        }
        ring.by_weight = ring.hosts.iter().map(|h| (h.weight, h.addr)).collect();
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

    /// Adds `host` with `count` positions chosen to even out the shares and returns them (as
    /// [`allocate_positions`]).
    ///
    /// The method, for a host that owns `L0` (0 when new) and all the hosts sorted by share:
    ///
    /// 1. **Donors and level.** Take the hosts that own the most, one by one, while the next
    ///    one owns more than the level `(L0 + their shares) / (donors + 1)` it would be
    ///    brought down to, and at most `count` of them (each position can take from one host
    ///    only). The joining host's share becomes that level, and so does each donor's: as
    ///    Cassandra's allocator, the most loaded hosts are levelled down to the newcomer.
    ///    On a ring of `H` equal hosts and `count >= H`, that is `1 / (H + 1)` for everyone.
    /// 2. **Positions per donor.** One each, then the rest one at a time to the donor with
    ///    the most excess per position (largest remainder), at most one per arc it owns.
    /// 3. **Split points.** A donor with `t` positions gives up the same fraction `r` of its
    ///    `t` largest arcs, `r` = excess / their total, at most [`MAX_TAKEOVER_RATIO`]: a new
    ///    position at `pred + r (p - pred)` inside arc `(pred, p]` owns `(pred, new]`.
    ///    Splitting the largest arcs keeps every host's arcs of similar size, so later
    ///    joins still find arcs large enough to take what they need.
    /// 4. **Left-over positions** (fewer donor arcs than `count`): each halves the host's own
    ///    largest arc, which moves nothing and gives later joins more arcs to take from.
    ///
    /// Donors are chosen in order of share, ties by address; arcs by length, ties by
    /// position: the result depends on the ring's contents only.
    pub fn join(&mut self, host: SocketAddr, count: u16) -> Vec<Id> {
        let count = count as usize;
        let mut out: Vec<Id> = match self.index.get(&host) {
            Some(&h) => {
                let mine: Vec<Id> = self
                    .positions
                    .iter()
                    .filter(|(_, slot)| slot.host == h)
                    .map(|(p, _)| *p)
                    .collect();
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
        let wanted = count - out.len();
        let donors = self.donors(me, wanted);
        for donor in &donors {
            self.take_from(donor, me, &mut out);
        }
        // Positions no donor arc took: halve our own largest arcs (nothing moves).
        while out.len() < count {
            let split = self.hosts[me].arcs.iter().next_back().and_then(|&(_, p)| {
                let pred = self.pred(&p);
                split_point(&pred, &p, 0.5).map(|at| own_low_bits(at, &pred, &p, host, out.len()))
            });
            match split {
                Some(at) => {
                    self.insert_position(at, host);
                    out.push(at);
                }
                None => break,
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

    /// Steps 1 and 2 of [`Ring::join`]: the hosts `me` takes from, with the excess each gives
    /// up and how many positions it receives (at most `wanted` in all).
    fn donors(&self, me: usize, wanted: usize) -> Vec<Donor> {
        let mine = self.hosts[me].weight;
        let mut sum = mine;
        let mut chosen: Vec<usize> = Vec::new();
        for &(w, addr) in self.by_weight.iter().rev() {
            let h = self.index[&addr];
            if h == me {
                continue;
            }
            if chosen.len() == wanted {
                break;
            }
            let level = (sum + w) / (chosen.len() as Weight + 2);
            if w <= level {
                break;
            }
            sum += w;
            chosen.push(h);
        }
        let level = sum / (chosen.len() as Weight + 1);
        let mut donors: Vec<Donor> = chosen
            .into_iter()
            .map(|h| Donor {
                host: h,
                excess: self.hosts[h].weight - level,
                tokens: 1,
            })
            .collect();
        // The rest by largest excess per position (ties: the earlier donor), one per arc.
        let mut left = wanted.saturating_sub(donors.len());
        while left > 0 {
            let best = donors
                .iter_mut()
                .filter(|d| d.tokens < self.hosts[d.host].arcs.len())
                .reduce(|a, b| {
                    // a.excess / (a.tokens + 1) >= b.excess / (b.tokens + 1), without division.
                    let lhs = a.excess as f64 * (b.tokens + 1) as f64;
                    let rhs = b.excess as f64 * (a.tokens + 1) as f64;
                    if lhs >= rhs {
                        a
                    } else {
                        b
                    }
                });
            match best {
                Some(d) => d.tokens += 1,
                None => break,
            }
            left -= 1;
        }
        donors
    }

    /// Step 3 of [`Ring::join`]: splits `donor`'s largest arcs in favour of `me`.
    fn take_from(&mut self, donor: &Donor, me: usize, out: &mut Vec<Id>) {
        let arcs: Vec<(Weight, Id)> = self.hosts[donor.host]
            .arcs
            .iter()
            .rev()
            .take(donor.tokens)
            .copied()
            .collect();
        let total: Weight = arcs.iter().map(|(w, _)| w).sum();
        if total == 0 {
            return;
        }
        let ratio = (donor.excess as f64 / total as f64).min(MAX_TAKEOVER_RATIO);
        let addr = self.hosts[me].addr;
        for (_, p) in arcs {
            let pred = self.pred(&p);
            if let Some(at) = split_point(&pred, &p, ratio) {
                let at = own_low_bits(at, &pred, &p, addr, out.len());
                self.insert_position(at, addr);
                out.push(at);
            }
        }
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
            arcs: BTreeSet::new(),
        });
        self.index.insert(addr, h);
        self.by_weight.insert((0, addr));
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
    /// the position after it.
    fn insert_position(&mut self, at: Id, addr: SocketAddr) {
        let h = self.host_index(addr);
        let pred = self.pred(&at);
        let next = self.succ(&at);
        let w = weight(&pred, &at);
        self.positions.insert(at, Slot { host: h, weight: 0 });
        self.set_arc(at, w);
        if next != at {
            let rest = weight(&at, &next);
            self.set_arc(next, rest);
        }
    }

    /// Sets the weight of the arc ending at position `p` (on the ring) to `new`.
    fn set_arc(&mut self, p: Id, new: Weight) {
        let slot = self.positions.get_mut(&p).expect("a position on the ring"); // faulty code
        let old = std::mem::replace(&mut slot.weight, new);
        let host = &mut self.hosts[slot.host];
        self.by_weight.remove(&(host.weight, host.addr));
        host.arcs.remove(&(old, p));
        host.arcs.insert((new, p));
        host.weight = host.weight - old + new;
        self.by_weight.insert((host.weight, host.addr));
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
            for p in allocate_positions(&ring, host, count) {
                ring.push((p, host));
            }
        }
        ring
    }

    /// Each host's share divided by the mean share, sorted.
    fn relative_shares(ring: &[(Id, SocketAddr)]) -> Vec<f64> {
        let shares = ownership(ring);
        let mean = 1.0 / shares.len() as f64;
        let mut rel: Vec<f64> = shares.values().map(|s| s / mean).collect();
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
            let placed = allocate_positions(&ring, addr(i), 8);
            ring.extend(placed.into_iter().map(|p| (p, addr(i))));
        }
        let c = allocate_positions(&ring, addr(3), 8);
        let d = allocate_positions(&ring, addr(4), 8);
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
        assert!(rel.iter().all(|r| (0.99..1.01).contains(r)), "{rel:?}");
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
        let p = allocate_positions(&[], host, 4);
        assert_eq!(p.len(), 4);
        assert_eq!(p[0], Id::of_addr(&host));
        for w in p.windows(2) {
            assert_eq!(w[0].distance_to(&w[1]), Id::MAX.div_small(4));
        }
        assert_eq!(allocate_positions(&[], host, 0), Vec::<Id>::new());
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
    fn a_thousand_hosts_stay_within_a_quarter_of_the_mean_at_the_99th_percentile() {
        // Through `Ring::join`, which the next test shows gives what the pure function gives.
        let mut ring = Ring::new();
        for i in 0..1000 {
            assert_eq!(ring.join(addr(i), 16).len(), 16);
        }
        let positions: Vec<(Id, SocketAddr)> = ring.positions().collect();
        assert_eq!(positions.len(), 16_000);
        let rel = relative_shares(&positions);
        let p99 = rel[(rel.len() * 99).div_ceil(100) - 1];
        assert!(p99 <= 1.25, "p99/mean {p99}");
        assert!(rel[0] > 0.5, "min/mean {}", rel[0]);
    }

    #[test]
    fn joining_one_by_one_gives_what_the_pure_function_gives() {
        let mut ring = Ring::new();
        for i in 0..40 {
            let count = [1, 3, 16][i % 3];
            let before: Vec<(Id, SocketAddr)> = ring.positions().collect();
            let expect = allocate_positions(&before, addr(i), count);
            assert_eq!(ring.join(addr(i), count), expect, "host {i}");
        }
        // Input order does not matter.
        let mut shuffled: Vec<(Id, SocketAddr)> = ring.positions().collect();
        shuffled.reverse();
        assert_eq!(
            allocate_positions(&shuffled, addr(99), 5),
            ring.clone().join(addr(99), 5)
        );
    }

    #[test]
    fn a_restart_returns_the_same_positions_topped_up_or_truncated() {
        let ring = joined(5, 8);
        let host = addr(2);
        let mut mine: Vec<Id> = ring.iter().filter(|(_, h)| *h == host).map(|(p, _)| *p).collect();
        mine.sort();
        assert_eq!(allocate_positions(&ring, host, 8), mine);
        assert_eq!(allocate_positions(&ring, host, 3), mine[..3]);
        let more = allocate_positions(&ring, host, 12);
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
        let topped = allocate_positions(&alone, addr(0), 4);
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
        for p in allocate_positions(&ring, newcomer, 16) {
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
        let p = allocate_positions(&ring, newcomer, 16);
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
