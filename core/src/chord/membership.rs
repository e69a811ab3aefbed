//! One-hop routing's full membership table (Gupta, Liskov, Rodrigues, HotOS 2003 / NSDI 2004).
//!
//! Every node keeps the whole ring, so the entry of a lookup names the owner itself and the
//! lookup takes one hop. The table is kept current by disseminating membership events:
//!
//! - **Detection.** The successor of a node is the authority on it (as in the paper): a node
//!   whose predecessor becomes a node missing from its table announces a *join*; a node whose
//!   predecessor stops answering `check_predecessor` announces a *failure*; the successor and
//!   predecessor of a node that leaves gracefully announce a *leave*.
//! - **Dissemination.** Events detected during a stabilize period are batched and sent at the
//!   next stabilize round down a broadcast tree over the ring (El-Ansary et al., "Efficient
//!   broadcast in structured P2P networks", 2003): the sender splits the ring at the nodes its
//!   table puts at `successor(me + 2^i)` and sends each the events with the end of its part
//!   (`MemberEvents { limit }`); each receiver applies them and splits its part the same way.
//!   With consistent tables every member receives each batch exactly once (N - 1 messages),
//!   in O(log N) steps. A member that does not answer is skipped: its part goes to the next
//!   member of the part.
//! - **Ordering.** Each event carries its detector's clock; a node applies an event only if
//!   it is newer than the last one it applied for that node, so a late failure notice never
//!   removes a node that has since rejoined.
//! - **Joining.** A joining node copies its successor's table (`GET_MEMBERS`, a page at a
//!   time) as soon as it has found its place.
//!
//! A stale table never gives a wrong answer: the operation goes to the named owner with
//! `FLAG_DIRECT`, which serves it only if it owns the key and otherwise `REDIRECT`s (and the
//! entry learns the node it was redirected to). A dead entry costs a timeout, after which the
//! entry drops it and routes with its successor list.
//!
//! **Memory.** The table is a shared sorted snapshot plus this node's own changes since it
//! (`added`, `removed`), compacted into a private snapshot once the changes grow. A simulator
//! bootstraps every node from one snapshot, so 10^5 one-hop nodes do not hold 10^10 entries;
//! a server builds its own.

use chordkv_protocol::NodeAddr;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chordkv_protocol::{in_open, Id, MemberEvent, NodeRef};

/// Changes kept beside the shared snapshot before this node makes a private copy.
const MAX_DELTA_MIN: usize = 256;

#[derive(Clone, Debug)]
pub struct Membership {
    /// Sorted by id; shared until this node compacts.
    base: Arc<Vec<NodeRef>>,
    /// Members not in `base`.
    added: BTreeMap<Id, NodeRef>,
    /// Ids in `base` that are no longer members.
    removed: BTreeSet<Id>,
    /// The last event applied per node: (stamp, alive).
    stamps: BTreeMap<NodeAddr, (u64, bool)>,
}

impl Membership {
    /// A table holding only `me`.
    pub fn new(me: NodeRef) -> Membership {
        Membership::from_sorted(Arc::new(vec![me]))
    }

    /// A table from a snapshot sorted by id (shared, e.g. by a simulator's bootstrap).
    pub fn from_sorted(base: Arc<Vec<NodeRef>>) -> Membership {
        debug_assert!(base.windows(2).all(|w| w[0].id < w[1].id));
        Membership {
            base,
            added: BTreeMap::new(),
            removed: BTreeSet::new(),
            stamps: BTreeMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.base.len() - self.removed.len() + self.added.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.added.contains_key(id) || (self.base_index(id).is_some() && !self.removed.contains(id))
    }

    fn base_index(&self, id: &Id) -> Option<usize> {
        self.base.binary_search_by(|n| n.id.cmp(id)).ok()
    }

    /// Adds `node`; returns whether it was new.
    pub fn insert(&mut self, node: NodeRef) -> bool {
        if self.contains(&node.id) {
            return false;
        }
        match self.base_index(&node.id) {
            Some(i) if self.base[i].addr == node.addr => {
                self.removed.remove(&node.id);
            }
            _ => {
                self.added.insert(node.id, node);
            }
        }
        self.maybe_compact();
        true
    }

    /// Removes the member with `id`; returns whether it was there.
    pub fn remove(&mut self, id: &Id) -> bool {
        if self.added.remove(id).is_some() {
            return true;
        }
        if self.base_index(id).is_some() && self.removed.insert(*id) {
            self.maybe_compact();
            return true;
        }
        false
    }

    /// Applies an event unless an event at least as new was applied for the same node;
    /// returns whether the table changed.
    pub fn apply(&mut self, event: &MemberEvent) -> bool {
        if let Some((stamp, _)) = self.stamps.get(&event.node.addr) {
            if *stamp >= event.stamp {
                return false;
            }
        }
        self.stamps.insert(event.node.addr, (event.stamp, event.alive));
        if event.alive {
            self.insert(event.node)
        } else {
            self.remove(&event.node.id)
        }
    }

    /// Whether the last event applied for `addr` was a failure or leave: a node learnt from a
    /// (possibly stale) membership page must not resurrect it.
    pub fn is_known_gone(&self, addr: &NodeAddr) -> bool {
        self.stamps.get(addr).is_some_and(|(_, alive)| !alive)
    }

    /// The first member with id `>= target`, wrapping; `None` when empty.
    pub fn at_or_after(&self, target: &Id) -> Option<NodeRef> {
        self.first_at_or_after(target)
            .or_else(|| self.first_at_or_after(&Id::ZERO))
    }

    /// The first member with id `> id`, wrapping.
    pub fn after(&self, id: &Id) -> Option<NodeRef> {
        match id.wrapping_add(&Id::from_u64(1)) {
            next if next == Id::ZERO => self.at_or_after(&Id::ZERO),
            next => self.at_or_after(&next),
        }
    }

    fn first_at_or_after(&self, target: &Id) -> Option<NodeRef> {
        let mut i = self.base.partition_point(|n| n.id < *target);
        while i < self.base.len() && self.removed.contains(&self.base[i].id) {
            i += 1;
        }
        let b = self.base.get(i).copied();
        let a = self.added.range(*target..).next().map(|(_, n)| *n);
        match (a, b) {
            (Some(a), Some(b)) => Some(if a.id < b.id { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// The last member with id `< id`, wrapping.
    pub fn before(&self, id: &Id) -> Option<NodeRef> {
        let last_below = |limit: Option<&Id>| {
            let end = match limit {
                Some(l) => self.base.partition_point(|n| n.id < *l),
                None => self.base.len(),
            };
            let b = self.base[..end]
                .iter()
                .rev()
                .find(|n| !self.removed.contains(&n.id))
                .copied();
            let a = match limit {
                Some(l) => self.added.range(..*l).next_back().map(|(_, n)| *n),
                None => self.added.values().next_back().copied(),
            };
            match (a, b) {
                (Some(a), Some(b)) => Some(if a.id > b.id { a } else { b }),
                (a, b) => a.or(b),
            }
        };
        last_below(Some(id)).or_else(|| last_below(None))
    }

    /// Up to `count` members in ring order from the owner of `target` on, skipping those
    /// `skip` rejects (and never more than the table holds).
    pub fn owners_of(&self, target: &Id, count: usize, skip: impl Fn(&NodeRef) -> bool) -> Vec<NodeRef> {
        let mut out = Vec::with_capacity(count);
        let Some(first) = self.at_or_after(target) else {
            return out;
        };
        let mut cur = first;
        for _ in 0..self.len() {
            if !skip(&cur) {
                out.push(cur);
                if out.len() == count {
                    break;
                }
            }
            match self.after(&cur.id) {
                Some(n) if n.id != first.id => cur = n,
                _ => break,
            }
        }
        out
    }

    /// Up to `max` members with id `> after`, in id order (no wrapping), and whether more
    /// follow: one page of `GET_MEMBERS`.
    pub fn page(&self, after: &Id, max: usize) -> (Vec<NodeRef>, bool) {
        let mut out = Vec::new();
        let mut cur = *after;
        loop {
            let next = cur.wrapping_add(&Id::from_u64(1));
            if next == Id::ZERO {
                return (out, false);
            }
            match self.first_at_or_after(&next) {
                Some(_) if out.len() == max => return (out, true),
                Some(n) => {
                    out.push(n);
                    cur = n.id;
                }
                None => return (out, false),
            }
        }
    }

    /// The broadcast tree's children of `me` for the part `(me, limit)`: the distinct members
    /// at `successor(me + 2^i)` inside the part, each with the end of its own sub-part.
    pub fn broadcast_children(&self, me: &Id, limit: &Id) -> Vec<(NodeRef, Id)> {
        let mut children: Vec<NodeRef> = Vec::new();
        let span = if limit == me {
            Id::MAX
        } else {
            limit.wrapping_sub(me)
        };
        // Offsets below the gap to the first member after `me` all land on that member:
        // start at the largest power of two within the gap.
        let first_i = match self.after(me) {
            Some(first) if first.id != *me => (first.id.wrapping_sub(me).bit_len().max(1) - 1) as usize,
            _ => return Vec::new(),
        };
        for i in first_i..chordkv_protocol::id::ID_BITS {
            let offset = Id::pow2(i);
            if offset >= span {
                break;
            }
            let Some(n) = self.at_or_after(&me.wrapping_add(&offset)) else {
                break;
            };
            if !in_open(&n.id, me, limit) {
                continue;
            }
            if children.last().is_none_or(|c| c.id != n.id) && !children.iter().any(|c| c.id == n.id) {
                children.push(n);
            }
        }
        // Ordered by distance from `me` (the loop visits increasing offsets, but a wrapped
        // table can repeat): sort to be sure, then give each child the next one as its limit.
        children.sort_by_key(|c| me.distance_limbs(&c.id));
        children.dedup_by_key(|c| c.id);
        let mut out = Vec::with_capacity(children.len());
        for (k, c) in children.iter().enumerate() {
            let end = children.get(k + 1).map_or(*limit, |n| n.id);
            out.push((*c, end));
        }
        out
    }

    /// Every member, in id order.
    pub fn members(&self) -> Vec<NodeRef> {
        self.all_sorted()
    }

    fn all_sorted(&self) -> Vec<NodeRef> {
        let mut v: Vec<NodeRef> = self
            .base
            .iter()
            .filter(|n| !self.removed.contains(&n.id))
            .chain(self.added.values())
            .copied()
            .collect();
        v.sort_by_key(|n| n.id);
        v
    }

    fn maybe_compact(&mut self) {
        let delta = self.added.len() + self.removed.len();
        if delta > MAX_DELTA_MIN.max(self.base.len() / 16) {
            let all = self.all_sorted();
            self.base = Arc::new(all);
            self.added.clear();
            self.removed.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chord::test_support::node;

    fn table(ids: &[u64]) -> Membership {
        Membership::from_sorted(Arc::new(ids.iter().map(|&v| node(v)).collect()))
    }

    #[test]
    fn successor_and_predecessor_wrap() {
        let mut m = table(&[10, 20, 30]);
        m.insert(node(25));
        m.remove(&Id::from_u64(20));
        assert_eq!(m.len(), 3);
        assert_eq!(m.at_or_after(&Id::from_u64(11)), Some(node(25)));
        assert_eq!(m.at_or_after(&Id::from_u64(25)), Some(node(25)));
        assert_eq!(m.at_or_after(&Id::from_u64(31)), Some(node(10)));
        assert_eq!(m.after(&Id::from_u64(30)), Some(node(10)));
        assert_eq!(m.before(&Id::from_u64(10)), Some(node(30)));
        assert_eq!(m.before(&Id::from_u64(30)), Some(node(25)));
        assert_eq!(
            m.owners_of(&Id::from_u64(26), 5, |_| false),
            vec![node(30), node(10), node(25)]
        );
        assert_eq!(
            m.owners_of(&Id::from_u64(26), 2, |n| n.id == Id::from_u64(30)),
            vec![node(10), node(25)]
        );
        assert_eq!(m.page(&Id::ZERO, 2), (vec![node(10), node(25)], true));
        assert_eq!(m.page(&Id::from_u64(25), 2), (vec![node(30)], false));
        assert_eq!(m.all_sorted(), vec![node(10), node(25), node(30)]);
    }

    #[test]
    fn events_apply_only_when_newer() {
        let mut m = table(&[10, 20]);
        let ev = |v, alive, stamp| MemberEvent {
            node: node(v),
            alive,
            stamp,
        };
        assert!(m.apply(&ev(20, false, 5)));
        assert!(!m.contains(&Id::from_u64(20)));
        assert!(!m.apply(&ev(20, true, 4)), "an older join is ignored");
        assert!(m.apply(&ev(20, true, 6)));
        assert!(m.contains(&Id::from_u64(20)));
        assert!(m.apply(&ev(40, true, 1)));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn broadcast_tree_reaches_every_member_once() {
        let ids: Vec<u64> = (0..200).map(|i| 1000 + i * 37 + (i * i) % 11).collect();
        let m = table(&ids);
        for root in [0usize, 17, 199] {
            let me = node(ids[root]).id;
            let mut reached = vec![root];
            let mut stack = vec![(me, me)];
            while let Some((at, limit)) = stack.pop() {
                for (child, end) in m.broadcast_children(&at, &limit) {
                    let k = ids.iter().position(|&v| Id::from_u64(v) == child.id).unwrap();
                    reached.push(k);
                    stack.push((child.id, end));
                }
            }
            reached.sort();
            assert_eq!(reached, (0..200).collect::<Vec<_>>(), "root {root}");
        }
    }

    #[test]
    fn compaction_keeps_the_members() {
        let mut m = table(&[1, 2, 3]);
        for v in 100..1000 {
            m.insert(node(v));
        }
        for v in (100..1000).step_by(3) {
            m.remove(&Id::from_u64(v));
        }
        assert_eq!(m.len(), 3 + 900 - 300);
        assert_eq!(m.at_or_after(&Id::from_u64(100)), Some(node(101)));
        assert!(m.added.len() + m.removed.len() <= MAX_DELTA_MIN + 1);
    }
}
