//! Oracles: the truth about the ring, computed from the set of live nodes, for tests to
//! compare the nodes' own views against.
//!
//! - [`Sim::ring_problem`]: the exact ring. Every live node is active and settled, with the
//!   true predecessor and the true successor list. What a quiet ring converges to.
//! - [`Sim::zave_problem`]: Zave's invariants for a correct Chord ring (P. Zave, "Reasoning
//!   about identifier spaces: how to make Chord correct", IEEE TSE 2017), in the form the
//!   fault tests demand after a heal: one cycle of best successors through every live member,
//!   in identifier order, and every successor list in identifier order. Weaker than
//!   `ring_problem` (predecessors, list contents and fingers may still be catching up), and
//!   what must hold before the next failure for Chord to stay correct.
//!
//! ```text
//!        n1 ──► n2               one cycle, ordered:      n1 → n2 → n4 → n7 → n1
//!       ▲         ╲              (best successor = the first live entry of the list)
//!      n7          n4            not ordered:             n1 → n4 (n2 lies in between)
//!       ▲         ╱              two rings:               n1 → n2 → n1,  n4 → n7 → n4
//!        ╰─ n7 ◄─╯               ordered list of n1:      [n2, n4, n7], not [n2, n7, n4]
//! ```

use bytes::Bytes;
use chordkv_protocol::{in_open, Id, NodeAddr, NodeRef};
use std::collections::BTreeMap;
use std::hash::Hasher;
use std::net::SocketAddr;

use super::Sim;
use chordkv_core::chord::routing::MAX_POSITIONS_PER_SUCCESSOR;
use chordkv_core::chord::{Node, Phase};
use chordkv_core::store::Store;

impl Sim {
    /// Live nodes that are in the ring, sorted by id.
    fn ring(&self) -> Vec<NodeRef> {
        let mut v: Vec<NodeRef> = self
            .nodes
            .iter()
            .filter(|n| n.alive)
            .flat_map(|n| n.node.vnodes())
            .filter(|v| matches!(v.phase(), Phase::Active | Phase::Joined | Phase::Leaving))
            .map(|v| v.me())
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

    /// The node (host) index of an address.
    pub fn index_of(&self, addr: &NodeAddr) -> Option<usize> {
        self.by_addr.get(&addr.host).copied()
    }

    /// The vnode reached at `addr`.
    fn vnode_at(&self, addr: &NodeAddr) -> &Node {
        self.nodes[self.by_addr[&addr.host]]
            .node
            .vnode(usize::from(addr.vnode))
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
            let node = self.vnode_at(&me.addr);
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
            // The following positions up to the last of the first `successors` hosts other
            // than ours, at most `successors * MAX_POSITIONS_PER_SUCCESSOR` of them.
            let r = self.config.chord.successors;
            let mut want: Vec<NodeAddr> = Vec::new();
            let mut hosts: Vec<SocketAddr> = Vec::new();
            for d in 1..n {
                let a = ring[(k + d) % n].addr;
                if want.len() == r * MAX_POSITIONS_PER_SUCCESSOR {
                    break;
                }
                if a.host != me.addr.host && !hosts.contains(&a.host) {
                    if hosts.len() == r {
                        break;
                    }
                    hosts.push(a.host);
                }
                want.push(a);
            }
            let got: Vec<NodeAddr> = node.successors().iter().map(|s| s.addr).collect();
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
            let table = self.vnode_at(&me.addr).routing();
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

    /// Live keys held by each node (all its vnodes), in node order (dead nodes hold 0).
    pub fn keys_per_node(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| {
                if n.alive {
                    n.stores.iter().map(|s| s.len().unwrap_or(0)).sum()
                } else {
                    0
                }
            })
            .collect()
    }

    /// Whether the live node at `i` holds a live value for `key` (in any vnode's partition).
    pub fn holds(&self, i: usize, key: &[u8]) -> Option<Bytes> {
        self.nodes[i]
            .stores
            .iter()
            .find_map(|s| s.get(key).ok().flatten().and_then(|e| e.value))
    }

    /// Zave's invariants over the live nodes (see the module docs), or the first one broken.
    /// Every live node must be a ring member (in the ring, not joining); a member's best
    /// successor is the first entry of its successor list that is a live member.
    pub fn zave_problem(&self) -> Option<String> {
        if let Some(n) = self.nodes.iter().find(|n| n.alive && !n.node.in_ring()) {
            return Some(format!("{} is live but {:?}", n.addr, n.node.phase()));
        }
        let members: Vec<(NodeRef, Vec<NodeRef>)> = self
            .nodes
            .iter()
            .filter(|n| n.alive)
            .flat_map(|n| n.node.vnodes())
            .map(|v| (v.me(), v.successors().to_vec()))
            .collect();
        zave_problem_of(&members)
    }

    /// Every live node's view of the ring, one line each in id order (node index, phase,
    /// predecessor, successor list): what to read next to a ring problem.
    pub fn describe_ring(&self) -> String {
        let name = |addr: &NodeAddr| match (self.index_of(addr), addr.vnode) {
            (Some(i), 0) => format!("n{i}"),
            (Some(i), v) => format!("n{i}#{v}"),
            (None, _) => addr.to_string(),
        };
        let mut live: Vec<&Node> = self
            .alive()
            .into_iter()
            .flat_map(|i| self.nodes[i].node.vnodes())
            .collect();
        live.sort_by_key(|v| v.me().id);
        let mut out = String::new();
        for node in live {
            let succ: Vec<String> = node.successors().iter().map(|s| name(&s.addr)).collect();
            out += &format!(
                "  {} {} {:?} settled={} pred {} succ [{}]\n",
                name(&node.me().addr),
                node.me().id.short(6),
                node.phase(),
                node.is_settled(),
                node.predecessor().map_or("-".to_string(), |p| name(&p.addr)),
                succ.join(" ")
            );
        }
        out
    }

    /// A digest of every node's store (tombstones and versions included; crashed nodes'
    /// stores too), for replay tests.
    pub fn store_digest(&self) -> u64 {
        let mut h = Fnv::default();
        for store in self.nodes.iter().flat_map(|n| n.stores.iter()) {
            let items = store
                .scan(&Id::ZERO, &Id::ZERO, None, usize::MAX)
                .unwrap_or_default();
            h.write_u64(items.len() as u64);
            for item in items {
                h.write(&item.key);
                h.write_u64(item.version);
                match &item.value {
                    Some(v) => h.write(v),
                    None => h.write_u8(0xff),
                }
            }
        }
        h.finish()
    }

    /// Whether node `i` holds `key` in its store (a crashed node's store included), with
    /// the entry's version and value (`None` for a tombstone).
    pub fn entry(&self, i: usize, key: &[u8]) -> Option<(u64, Option<Bytes>)> {
        self.nodes[i]
            .stores
            .iter()
            .find_map(|s| s.get(key).ok().flatten())
            .map(|e| (e.version, e.value))
    }
}

/// Zave's invariants over ring members given as `(member, its successor list)`, every member
/// live (see the module docs); returns the first one broken.
pub fn zave_problem_of(members: &[(NodeRef, Vec<NodeRef>)]) -> Option<String> {
    if members.is_empty() {
        return Some("no live ring member".to_string());
    }
    let mut sorted: Vec<&(NodeRef, Vec<NodeRef>)> = members.iter().collect();
    sorted.sort_by_key(|(me, _)| me.id);
    let index: BTreeMap<NodeAddr, usize> = sorted
        .iter()
        .enumerate()
        .map(|(k, (me, _))| (me.addr, k))
        .collect();
    let n = sorted.len();
    // OrderedSuccessorLists: each list runs clockwise from its owner, without repeats and
    // without the owner itself (dead entries count: order is about identifiers).
    for (me, list) in &sorted {
        let mut prev = me.id;
        for s in list {
            if !in_open(&s.id, &prev, &me.id) {
                let list: Vec<NodeAddr> = list.iter().map(|s| s.addr).collect();
                return Some(format!("{} successor list not in ring order: {list:?}", me.addr));
            }
            prev = s.id;
        }
    }
    // The best successor of every member, as an index into `sorted`.
    let mut best = Vec::with_capacity(n);
    for (k, (me, list)) in sorted.iter().enumerate() {
        match list.iter().find_map(|s| index.get(&s.addr)) {
            Some(&j) => best.push(j),
            None if list.is_empty() => best.push(k),
            None => {
                return Some(format!(
                    "{} has no live successor in {} entries",
                    me.addr,
                    list.len()
                ))
            }
        }
    }
    // AtLeastOneRing and AtMostOneRing: the best-successor graph has exactly one cycle, and
    // every member is on it (no appendages once healed).
    let mut cycle_of = vec![usize::MAX; n];
    let mut cycles: Vec<Vec<usize>> = Vec::new();
    for start in 0..n {
        let mut path = Vec::new();
        let mut on_path = BTreeMap::new();
        let mut k = start;
        while cycle_of[k] == usize::MAX && !on_path.contains_key(&k) {
            on_path.insert(k, path.len());
            path.push(k);
            k = best[k];
        }
        if let Some(&from) = on_path.get(&k) {
            let cycle = path[from..].to_vec();
            for &c in &cycle {
                cycle_of[c] = cycles.len();
            }
            cycles.push(cycle);
        }
        for &p in &path {
            if cycle_of[p] == usize::MAX {
                cycle_of[p] = usize::MAX - 1; // an appendage, leading into a cycle
            }
        }
    }
    let names = |ks: &[usize]| -> Vec<NodeAddr> { ks.iter().map(|&k| sorted[k].0.addr).collect() };
    if cycles.len() > 1 {
        let rings: Vec<Vec<NodeAddr>> = cycles.iter().map(|c| names(c)).collect();
        return Some(format!("{} rings of best successors: {rings:?}", rings.len()));
    }
    if cycles[0].len() < n {
        let off: Vec<usize> = (0..n).filter(|&k| cycle_of[k] != 0).collect();
        return Some(format!("members off the ring (appendages): {:?}", names(&off)));
    }
    // OrderedRing: around the one cycle, each member's best successor is the next member.
    for k in 0..n {
        if best[k] != (k + 1) % n {
            return Some(format!(
                "ring not ordered: {} has best successor {}, but {} lies between",
                sorted[k].0.addr,
                sorted[best[k]].0.addr,
                sorted[(k + 1) % n].0.addr
            ));
        }
    }
    None
}

/// FNV-1a, 64 bits: a fixed hash for digests that must not change between runs or builds.
pub(super) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(k: u64) -> NodeRef {
        NodeRef {
            id: Id::from_u64(k * 100),
            addr: super::super::sim_addr(k as usize).into(),
        }
    }

    /// A ring of members `ks` (sorted) with correct successor lists of length `r`.
    fn ideal(ks: &[u64], r: usize) -> Vec<(NodeRef, Vec<NodeRef>)> {
        (0..ks.len())
            .map(|k| {
                let list = (1..ks.len())
                    .take(r)
                    .map(|d| node(ks[(k + d) % ks.len()]))
                    .collect();
                (node(ks[k]), list)
            })
            .collect()
    }

    #[test]
    fn an_ideal_ring_and_a_lone_node_satisfy_the_invariants() {
        assert_eq!(zave_problem_of(&ideal(&[1, 2, 4, 7], 3)), None);
        assert_eq!(zave_problem_of(&ideal(&[1, 2, 4, 7], 8)), None);
        assert_eq!(zave_problem_of(&ideal(&[5], 3)), None);
    }

    #[test]
    fn dead_entries_are_skipped_for_the_best_successor() {
        let mut v = ideal(&[1, 2, 4, 7], 3);
        // Node 3 died: it stays in 2's list, in order; 2's best successor is 4.
        v[1].1 = vec![node(3), node(4), node(7)];
        assert_eq!(zave_problem_of(&v), None);
    }

    #[test]
    fn two_rings_are_found() {
        let mut v = ideal(&[1, 4], 3);
        v.extend(ideal(&[2, 7], 3));
        let p = zave_problem_of(&v).unwrap();
        assert!(p.starts_with("2 rings"), "{p}");
    }

    #[test]
    fn an_appendage_is_found() {
        let mut v = ideal(&[1, 4, 7], 3);
        // 2 points into the ring, but nobody points at 2.
        v.push((node(2), vec![node(4), node(7), node(1)]));
        let p = zave_problem_of(&v).unwrap();
        assert!(p.starts_with("members off the ring"), "{p}");
    }

    #[test]
    fn an_unordered_ring_is_found() {
        // One cycle through all members, but 1 -> 4 -> 2 -> 7 -> 1 skips around.
        let v = vec![
            (node(1), vec![node(4)]),
            (node(4), vec![node(2)]),
            (node(2), vec![node(7)]),
            (node(7), vec![node(1)]),
        ];
        let p = zave_problem_of(&v).unwrap();
        assert!(p.starts_with("ring not ordered"), "{p}");
        // Lists each in order, but 1 is skipped: an appendage.
        let v = vec![
            (node(1), vec![node(4), node(7)]),
            (node(2), vec![node(4), node(7)]),
            (node(4), vec![node(7), node(1)]),
            (node(7), vec![node(2), node(4)]),
        ];
        let p = zave_problem_of(&v).unwrap();
        assert!(p.starts_with("members off the ring"), "{p}");
    }

    #[test]
    fn an_unordered_successor_list_is_found() {
        let mut v = ideal(&[1, 2, 4, 7], 3);
        v[0].1 = vec![node(2), node(7), node(4)];
        let p = zave_problem_of(&v).unwrap();
        assert!(p.contains("successor list not in ring order"), "{p}");
        let mut v = ideal(&[1, 2, 4, 7], 3);
        v[0].1 = vec![node(2), node(1)];
        assert!(zave_problem_of(&v).is_some(), "a list that names its owner");
    }
}
