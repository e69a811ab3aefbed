//! The balance experiment behind `chordkv balance`: keys per host on a simulated ring, with
//! random virtual nodes (Chord SIGCOMM'01 section 6.9) or positions allocated to even out the
//! shares ([`chordkv_core::tokens`]). It reproduces the Chord paper's Figs. 8 and 9 (section
//! 6.2: 10^4 hosts, 5x10^5 keys; the 1st and 99th percentiles of keys per host as the number
//! of virtual nodes per host grows) and puts our allocation beside them.
//!
//! No node runs: a ring is its positions. Hosts are `sim_addr(0..hosts)`, the addresses of
//! the simulator's nodes; random positions are [`tokens::random_positions`] of each host;
//! balanced positions come from the hosts joining one after the other, each through
//! [`tokens::Ring::join`] (what [`tokens::allocate_positions`] returns on the ring so far).
//! Keys are random ids drawn from the seed. A key belongs to the first position clockwise
//! from it, and so to that position's host.
//!
//! Two measures per ring: **keys per host** (the paper's: mean, 1st, 50th and 99th
//! percentiles, max; percentiles by nearest rank over the hosts), which includes the sampling
//! noise of a finite number of keys (with 50 keys per host, even a perfectly even ring has a
//! 99th percentile near 1.35x the mean), and each host's **share** of the id space (the limit
//! of keys per host / mean for infinitely many keys), which is what an allocation controls.
//!
//! [`movement`] measures what a join and a leave move: a ring of 8 hosts, a 9th added (the
//! fraction of the id space and of the keys that changed host, and from how many hosts), and
//! one of the 9 removed (to how many hosts its keys went).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use chordkv_core::rng::Rng;
use chordkv_core::tokens::{self, Ring};
use chordkv_protocol::id::{Id, ID_BYTES};

use super::sim_addr;

/// How the hosts choose their positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocation {
    /// [`tokens::random_positions`]: Chord's virtual nodes.
    Random,
    /// [`tokens::allocate_positions`], hosts joining one by one.
    Balanced,
}

impl fmt::Display for Allocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Allocation::Random => "random",
            Allocation::Balanced => "balanced",
        })
    }
}

/// The experiment's sizes and seed.
#[derive(Clone, Debug)]
pub struct BalanceConfig {
    /// Hosts (physical nodes) on the ring.
    pub hosts: usize,
    /// Keys placed on it.
    pub keys: u64,
    /// Seed of the key ids.
    pub seed: u64,
    /// Copies beyond the primary (`--replicas`): what the balanced allocation evens out
    /// besides primary shares, and what the replicated share counts.
    pub replicas: usize,
}

impl Default for BalanceConfig {
    /// The Chord paper's Fig. 8(b): 10^4 hosts, 5x10^5 keys.
    fn default() -> BalanceConfig {
        BalanceConfig {
            hosts: 10_000,
            keys: 500_000,
            seed: 1,
            replicas: 2,
        }
    }
}

/// A distribution over hosts: the mean and order statistics, in the unit of the values.
#[derive(Clone, Debug, PartialEq)]
pub struct Spread {
    pub mean: f64,
    pub min: f64,
    /// 1st percentile (nearest rank: the `ceil(n / 100)`-th smallest of `n`).
    pub p1: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Spread {
    /// The spread of `values` (not empty).
    pub fn of(values: &[f64]) -> Spread {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |p: usize| v[(v.len() * p).div_ceil(100).max(1) - 1];
        Spread {
            mean: v.iter().sum::<f64>() / v.len() as f64,
            min: v[0],
            p1: rank(1),
            p50: rank(50),
            p99: rank(99),
            max: v[v.len() - 1],
        }
    }

    /// The same spread divided by its mean.
    pub fn relative(&self) -> Spread {
        let m = self.mean;
        Spread {
            mean: 1.0,
            min: self.min / m,
            p1: self.p1 / m,
            p50: self.p50 / m,
            p99: self.p99 / m,
            max: self.max / m,
        }
    }
}

/// One ring: an allocation at a number of positions per host.
#[derive(Clone, Debug)]
pub struct BalanceRow {
    pub allocation: Allocation,
    /// Positions per host (the paper's virtual nodes per real node).
    pub vnodes: u16,
    /// Keys per host.
    pub keys: Spread,
    /// Each host's share of the id space, relative to the mean share `1 / hosts`.
    pub share: Spread,
    /// Each host's replicated share (the ids it holds a copy of, primary or replica, with
    /// [`BalanceConfig::replicas`] on distinct hosts), relative to the mean.
    pub replicated: Spread,
}

/// The positions of `hosts` hosts with `vnodes` positions each, as `(position, host index)`
/// sorted by position; balanced ones for a store keeping `replicas` copies beyond the primary.
pub fn build_ring(allocation: Allocation, hosts: usize, vnodes: u16, replicas: usize) -> Vec<(Id, usize)> {
    let mut ring: Vec<(Id, usize)> = match allocation {
        Allocation::Random => (0..hosts)
            .flat_map(|h| {
                tokens::random_positions(&sim_addr(h), vnodes)
                    .into_iter()
                    .map(move |p| (p, h))
            })
            .collect(),
        Allocation::Balanced => {
            let mut ring = Ring::new(replicas);
            for h in 0..hosts {
                ring.join(sim_addr(h), vnodes);
            }
            let index: BTreeMap<SocketAddr, usize> = (0..hosts).map(|h| (sim_addr(h), h)).collect();
            ring.positions().map(|(p, a)| (p, index[&a])).collect()
        }
    };
    ring.sort_unstable();
    ring
}

/// `count` key ids drawn from `seed`.
pub fn key_ids(count: u64, seed: u64) -> Vec<Id> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|_| {
            let mut id = [0u8; ID_BYTES];
            rng.fill(&mut id);
            Id(id)
        })
        .collect()
}

/// The host index owning `key` on a `ring` sorted by position (not empty).
pub fn owner(ring: &[(Id, usize)], key: &Id) -> usize {
    let i = ring.partition_point(|(p, _)| p < key);
    ring[if i == ring.len() { 0 } else { i }].1
}

/// Keys per host of `keys` on `ring` (sorted, not empty), for `hosts` hosts.
pub fn keys_per_host(ring: &[(Id, usize)], hosts: usize, keys: &[Id]) -> Vec<u64> {
    let mut counts = vec![0u64; hosts];
    for k in keys {
        counts[owner(ring, k)] += 1;
    }
    counts
}

/// Each host's share of the id space on `ring` (sorted, not empty).
pub fn shares(ring: &[(Id, usize)], hosts: usize) -> Vec<f64> {
    replicated_shares(ring, hosts, 0)
}

/// Each host's replicated share on `ring` (sorted, not empty): the fraction of the id space
/// it holds a copy of with `replicas` copies beyond the primary on distinct hosts
/// ([`tokens::replicated_ownership`]).
pub fn replicated_shares(ring: &[(Id, usize)], hosts: usize, replicas: usize) -> Vec<f64> {
    let positions: Vec<(Id, SocketAddr)> = ring.iter().map(|(p, h)| (*p, sim_addr(*h))).collect();
    let by_addr = tokens::replicated_ownership(&positions, replicas);
    (0..hosts)
        .map(|h| by_addr.get(&sim_addr(h)).copied().unwrap_or(0.0))
        .collect()
}

/// Builds the ring of `config.hosts` hosts with `vnodes` positions each and measures it
/// against `keys` (from [`key_ids`]).
pub fn measure(config: &BalanceConfig, keys: &[Id], allocation: Allocation, vnodes: u16) -> BalanceRow {
    let ring = build_ring(allocation, config.hosts, vnodes, config.replicas);
    measure_ring(config, keys, allocation, vnodes, &ring)
}

/// [`measure`] on a `ring` already built by [`build_ring`] for `config` (a caller measuring
/// one ring against several key sets builds it once).
pub fn measure_ring(
    config: &BalanceConfig,
    keys: &[Id],
    allocation: Allocation,
    vnodes: u16,
    ring: &[(Id, usize)],
) -> BalanceRow {
    let ring = ring.to_vec();
    let counts: Vec<f64> = keys_per_host(&ring, config.hosts, keys)
        .into_iter()
        .map(|c| c as f64)
        .collect();
    BalanceRow {
        allocation,
        vnodes,
        keys: Spread::of(&counts),
        share: Spread::of(&shares(&ring, config.hosts)).relative(),
        replicated: Spread::of(&replicated_shares(&ring, config.hosts, config.replicas)).relative(),
    }
}

/// Keys per host of `keys` on a ring of `hosts` hosts with exactly equal shares (one position
/// each, evenly spaced): the sampling noise of a finite number of keys alone, the floor below
/// which no allocation can bring keys per host.
pub fn equal_shares(hosts: usize, keys: &[Id]) -> Spread {
    let step = Id::MAX.div_small(hosts as u32);
    let mut at = Id::ZERO;
    let ring: Vec<(Id, usize)> = (0..hosts)
        .map(|h| {
            at = at.wrapping_add(&step);
            (at, h)
        })
        .collect();
    let counts: Vec<f64> = keys_per_host(&ring, hosts, keys)
        .into_iter()
        .map(|c| c as f64)
        .collect();
    Spread::of(&counts)
}

/// What one join and one leave move.
#[derive(Clone, Debug)]
pub struct Movement {
    pub allocation: Allocation,
    pub vnodes: u16,
    /// Hosts before the join (after it: one more).
    pub hosts: usize,
    /// Fraction of the id space that changed host when the last host joined.
    pub join_moved: f64,
    /// Fraction of the keys that changed host then.
    pub join_moved_keys: f64,
    /// Hosts that lost part of their share to the newcomer.
    pub join_sources: usize,
    /// Fraction of the id space that changed host when the first host left.
    pub leave_moved: f64,
    pub leave_moved_keys: f64,
    /// Hosts that took part of the leaver's share.
    pub leave_targets: usize,
}

/// Builds `hosts` hosts with `vnodes` positions each (balanced for `replicas` copies beyond
/// the primary), adds one more (host `hosts`), then removes host 0, and measures what each
/// step moved: the id space exactly (shares that fell or rose), the keys by their owners
/// before and after.
pub fn movement(allocation: Allocation, hosts: usize, vnodes: u16, replicas: usize, keys: &[Id]) -> Movement {
    let before = build_ring(allocation, hosts, vnodes, replicas);
    let joined = build_ring(allocation, hosts + 1, vnodes, replicas);
    let left: Vec<(Id, usize)> = joined.iter().copied().filter(|(_, h)| *h != 0).collect();
    let (join_moved, join_sources, join_moved_keys) = moved(&before, &joined, hosts + 1, keys);
    let (leave_moved, leave_targets, leave_moved_keys) = moved(&joined, &left, hosts + 1, keys);
    Movement {
        allocation,
        vnodes,
        hosts,
        join_moved,
        join_moved_keys,
        join_sources,
        leave_moved,
        leave_moved_keys,
        leave_targets,
    }
}

/// From ring `a` to ring `b`: the id space that changed host, the number of hosts whose share
/// changed besides the one host that joined or left, and the fraction of `keys` that moved.
fn moved(a: &[(Id, usize)], b: &[(Id, usize)], hosts: usize, keys: &[Id]) -> (f64, usize, f64) {
    let (sa, sb) = (shares(a, hosts), shares(b, hosts));
    let gained: f64 = sa.iter().zip(&sb).map(|(x, y)| (y - x).max(0.0)).sum();
    let changed = sa.iter().zip(&sb).filter(|(x, y)| x != y).count();
    let moved_keys = keys.iter().filter(|k| owner(a, k) != owner(b, k)).count();
    (
        gained,
        changed.saturating_sub(1),
        moved_keys as f64 / keys.len().max(1) as f64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_uses_nearest_rank() {
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        let s = Spread::of(&v);
        assert_eq!(
            (s.min, s.p1, s.p50, s.p99, s.max),
            (1.0, 2.0, 100.0, 198.0, 200.0)
        );
        assert_eq!(s.mean, 100.5);
        assert_eq!(Spread::of(&[3.0]).p1, 3.0);
    }

    #[test]
    fn balanced_rings_beat_random_ones() {
        let config = BalanceConfig {
            hosts: 200,
            keys: 20_000,
            seed: 7,
            replicas: 2,
        };
        let keys = key_ids(config.keys, config.seed);
        let random = measure(&config, &keys, Allocation::Random, 1);
        let balanced = measure(&config, &keys, Allocation::Balanced, 8);
        assert_eq!(random.keys.mean, 100.0);
        assert_eq!(balanced.keys.mean, 100.0);
        // One random position per host: a long tail (the paper's Fig. 8).
        assert!(random.share.p99 > 3.0, "{:?}", random.share);
        assert!(balanced.share.p99 < 1.25, "{:?}", balanced.share);
        assert!(balanced.share.p1 > 0.75, "{:?}", balanced.share);
        // What each host stores counting replicas evens out too.
        assert!(balanced.replicated.p99 < 1.25, "{:?}", balanced.replicated);
        assert!(balanced.replicated.p1 > 0.75, "{:?}", balanced.replicated);
        assert!(balanced.keys.p99 < random.keys.p99 / 2.0);
        // Equal shares leave the noise of sampling 100 keys per host.
        let floor = equal_shares(config.hosts, &keys).relative();
        assert!(
            floor.p99 > 1.1 && floor.p99 <= balanced.keys.relative().p99,
            "{floor:?}"
        );
    }

    #[test]
    fn a_join_moves_a_ninth_from_many_hosts_and_a_leave_spreads_its_share() {
        let keys = key_ids(20_000, 1);
        let m = movement(Allocation::Balanced, 8, 16, 2, &keys);
        assert!((m.join_moved - 1.0 / 9.0).abs() < 0.02, "{m:?}");
        assert!((m.join_moved_keys - m.join_moved).abs() < 0.02, "{m:?}");
        assert!(m.join_sources >= 4, "{m:?}");
        assert!(m.leave_targets >= 2, "{m:?}");
        // One random position: the newcomer takes from its successor alone.
        let r = movement(Allocation::Random, 8, 1, 2, &keys);
        assert_eq!((r.join_sources, r.leave_targets), (1, 1), "{r:?}");
    }
}
