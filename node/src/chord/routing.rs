//! The routing table: fingers plus the successor list, searched for the closest preceding node.
//!
//! Finger `i` points at `successor(start_i)`. In classic Chord `start_i = n + 2^i` for
//! `i = 0..160` (SIGCOMM'01 section 4.3), so a lookup halves the remaining distance each hop:
//!
//! ```text
//!   n ──► n+1 ──► n+2 ──► n+4 ──► ... ──► n+2^159        (finger starts)
//!   closest_preceding(k) = the known node farthest along that is still before k
//! ```
//!
//! The starts are data, not a formula baked into the search, so other schemes (more fingers
//! per level) only change how the starts are made. `closest_preceding` is on every routing
//! decision, so the table keeps a sorted, deduplicated view of every node it knows (fingers
//! and successors) keyed by clockwise distance from `n`, and answers by binary search.

use std::net::SocketAddr;

use chordkv_protocol::{id::ID_BITS, Id, NodeRef};

#[derive(Clone, Debug)]
pub struct RoutingTable {
    me: NodeRef,
    /// Start of each finger's interval.
    starts: Vec<Id>,
    /// `successor(starts[i])` as last learned, if known.
    fingers: Vec<Option<NodeRef>>,
    /// The successor list, nearest first; never contains `me`.
    successors: Vec<NodeRef>,
    /// Every distinct node above, sorted by clockwise distance from `me`...
    view: Vec<NodeRef>,
    /// ...and those distances as integer limbs (see `Id::limbs`), searched by binary search.
    distances: Vec<(u32, u128)>,
}

impl RoutingTable {
    /// A classic Chord table: `start_i = me + 2^i`.
    pub fn classic(me: NodeRef) -> RoutingTable {
        let starts = (0..ID_BITS).map(|i| me.id.add_pow2(i)).collect();
        RoutingTable::with_starts(me, starts)
    }

    /// A table with the given finger starts.
    pub fn with_starts(me: NodeRef, starts: Vec<Id>) -> RoutingTable {
        let fingers = vec![None; starts.len()];
        RoutingTable {
            me,
            starts,
            fingers,
            successors: Vec::new(),
            view: Vec::new(),
            distances: Vec::new(),
        }
    }

    pub fn finger_count(&self) -> usize {
        self.starts.len()
    }

    pub fn finger_start(&self, i: usize) -> Id {
        self.starts[i]
    }

    pub fn finger(&self, i: usize) -> Option<NodeRef> {
        self.fingers[i]
    }

    /// Sets finger `i`; returns whether it changed.
    pub fn set_finger(&mut self, i: usize, node: Option<NodeRef>) -> bool {
        let node = node.filter(|n| n.addr != self.me.addr);
        if self.fingers[i] == node {
            return false;
        }
        self.fingers[i] = node;
        self.rebuild();
        true
    }

    pub fn successors(&self) -> &[NodeRef] {
        &self.successors
    }

    /// Replaces the successor list (`me` and duplicates are dropped, order kept).
    pub fn set_successors(&mut self, list: impl IntoIterator<Item = NodeRef>, max: usize) {
        let mut out: Vec<NodeRef> = Vec::with_capacity(max);
        for n in list {
            if out.len() == max {
                break;
            }
            if n.addr != self.me.addr && !out.iter().any(|o| o.addr == n.addr) {
                out.push(n);
            }
        }
        if out != self.successors {
            self.successors = out;
            self.rebuild();
        }
    }

    /// Removes every mention of the node at `addr`; returns whether it was known.
    pub fn forget(&mut self, addr: SocketAddr) -> bool {
        let mut known = false;
        for f in self.fingers.iter_mut() {
            if f.is_some_and(|n| n.addr == addr) {
                *f = None;
                known = true;
            }
        }
        let before = self.successors.len();
        self.successors.retain(|n| n.addr != addr);
        known |= self.successors.len() != before;
        if known {
            self.rebuild();
        }
        known
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
    pub fn known_nodes(&self) -> impl Iterator<Item = &NodeRef> {
        self.view.iter()
    }

    /// How many distinct nodes the table holds (its state size).
    pub fn distinct_nodes(&self) -> usize {
        self.view.len()
    }

    fn rebuild(&mut self) {
        let me = self.me.id;
        let mut all: Vec<((u32, u128), NodeRef)> = self
            .fingers
            .iter()
            .flatten()
            .chain(self.successors.iter())
            .map(|n| (me.distance_limbs(&n.id), *n))
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.addr.cmp(&b.1.addr)));
        all.dedup_by(|a, b| a.1.addr == b.1.addr);
        self.distances = all.iter().map(|(d, _)| *d).collect();
        self.view = all.into_iter().map(|(_, n)| n).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(v: u64) -> NodeRef {
        NodeRef {
            id: Id::from_u64(v),
            addr: SocketAddr::from(([127, 0, 0, 1], 1000 + v as u16)),
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
}
