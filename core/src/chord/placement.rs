//! Who owns a key, as this node sees the ring: its own range, the successor arcs it holds
//! copies of, the route towards an owner it does not know yet, and preference lists
//! (SIGCOMM'01 section 4.2: `successor(k)`, `closest_preceding_node`).

use chordkv_protocol::{in_half_open, Id, NodeRef};

use super::node::{Node, Phase};
use super::onehop::ONEHOP_LIST;

/// How `route` resolves a target id from this node's own tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// This node owns it.
    Local,
    /// The owner, then the nodes after it.
    Found(Vec<NodeRef>),
    /// A node closer to the target; ask it.
    Closer(NodeRef),
    /// This node knows no other node and does not own the target (it lost every peer while
    /// joining or leaving): try again later.
    Unknown,
}

impl Node {
    /// The range this node is primary for: `(predecessor, self]`, or the whole ring when it
    /// knows no predecessor.
    pub fn primary_range(&self) -> (Id, Id) {
        (self.predecessor.map_or(self.me.id, |p| p.id), self.me.id)
    }

    /// Whether this node would serve a client operation on `id` itself right now: it owns
    /// it, knows where its range starts, and is not handing it off.
    pub fn serves(&self, id: &Id) -> bool {
        (self.predecessor.is_some() || self.routing.successors().is_empty()) && self.owns(id)
    }

    /// Whether this node keeps a copy of `id`'s range: it owns it, or `id` is in the range of
    /// one of the predecessors whose copies it keeps ([`Node::predecessors`]).
    pub(super) fn holds_copy(&self, id: &Id) -> bool {
        if self.owns(id) {
            return true;
        }
        if self.config.replicas == 0 || self.phase != Phase::Active {
            return false;
        }
        let preds = self.predecessors();
        preds.windows(2).any(|w| in_half_open(id, &w[1].id, &w[0].id))
    }

    /// Whether this node serves `id` right now (it owns it and is not handing it off).
    pub(super) fn owns(&self, id: &Id) -> bool {
        let serving = match self.phase {
            Phase::Active => true,
            Phase::Leaving => !self.handoff.leave.as_ref().is_some_and(|l| l.handed_over),
            _ => false,
        };
        if !serving {
            return false;
        }
        match self.predecessor {
            Some(p) => in_half_open(id, &p.id, &self.me.id),
            // Alone: a node that started the ring owns everything; a node that lost every peer
            // (isolated by a partition, or the survivor of crashes) owns nothing until it finds
            // the ring again, so a cut-off minority never acknowledges writes the ring would
            // not see.
            None if self.routing.successors().is_empty() => !self.is_isolated(),
            // No known predecessor: ours unless one of our successors owns it.
            None => !self.in_successor_arcs(id),
        }
    }

    /// Whether this node is alone after having had peers that did not leave gracefully.
    pub fn is_isolated(&self) -> bool {
        self.routing.successors().is_empty() && self.predecessor.is_none() && !self.live.seeds.is_empty()
    }

    /// Whether `id` falls in `(me, last successor]`, i.e. a successor owns it.
    pub(super) fn in_successor_arcs(&self, id: &Id) -> bool {
        match self.routing.successors().last() {
            Some(last) => in_half_open(id, &self.me.id, &last.id) && *id != self.me.id,
            None => false,
        }
    }

    /// The successor `i` whose arc `(successor i-1, successor i]` (successor -1: us) holds
    /// `target`, when `route` finds the owner there: `route`'s `Found` list starts with
    /// `successors[i..]`. `None` when `route` answers otherwise (we own it, or the successor list
    /// does not reach it).
    pub(super) fn successor_arc(&self, target: &Id) -> Option<usize> {
        if self.routes_locally(target) {
            return None;
        }
        self.successor_arc_from(target)
    }

    /// Whether `route` answers `Local`: we own `target`, and know it. Without a known
    /// predecessor a node cannot tell where its range starts, so it claims a key outright only
    /// when it is alone; otherwise it routes, and serves the key when a peer sends it directly
    /// (see `owns`).
    pub(super) fn routes_locally(&self, target: &Id) -> bool {
        let certain = self.predecessor.is_some() || self.routing.successors().is_empty();
        certain && self.owns(target)
    }

    /// The successor whose arc holds `target`, walking from us.
    fn successor_arc_from(&self, target: &Id) -> Option<usize> {
        let mut prev = self.me.id;
        for (i, s) in self.routing.successors().iter().enumerate() {
            if in_half_open(target, &prev, &s.id) {
                return Some(i);
            }
            prev = s.id;
        }
        None
    }

    /// Resolves `target` as far as this node's own tables allow.
    pub(super) fn route(&self, target: &Id) -> Route {
        let succs = self.routing.successors();
        if self.routes_locally(target) {
            return Route::Local;
        }
        if let Some(i) = self.successor_arc_from(target) {
            let mut list = succs[i..].to_vec();
            if self.succ_wrapped {
                // The list wraps around a small ring: after its last node come we and our
                // first successors (where a failover goes when the owner is down).
                list.push(self.me);
                list.extend_from_slice(&succs[..i]);
            }
            return Route::Found(list);
        }
        if let Some(m) = &self.members {
            // One-hop: the table names the owner (and the next members, to fail over to). If
            // it names us although we do not own the key, our view is unsure: route normally.
            let list = m.owners_of(target, ONEHOP_LIST, |_| false);
            if list.first().is_some_and(|o| o.addr != self.me.addr) {
                return Route::Found(list);
            }
        }
        match self
            .routing
            .closest_preceding_where(target, |n| !self.live.dead.contains_key(&n.addr))
        {
            Some(c) => Route::Closer(c),
            None if succs.is_empty() => Route::Unknown,
            None => Route::Found(succs.to_vec()),
        }
    }

    /// A lookup's answer (the owner and the nodes after it) that ends within our successor
    /// list is as long as the successor list can be only if the nodes after our last successor
    /// follow. Under `available`, add the ones our fingers know, in ring order (a node joining
    /// takes its successor list from this answer and then stabilizes it; gaps are filled then).
    /// Under `consistent` the answer stays a run of consecutive members: a node restarted as a
    /// member takes it as its successor list at once (`rejoin_as_member`), and a member the
    /// fingers skip (one cut off or down, which stabilize cannot walk back to) would make it
    /// confirm a range that is not its own and count a node that keeps no copy of the range
    /// as a replica. The short list grows by stabilize, and a preference list seen short does
    /// not shrink a majority (`copies_of`).
    pub(super) fn extend_list(&self, mut list: Vec<NodeRef>) -> Vec<NodeRef> {
        let want = self.config.successors;
        let Some(last) = list.last().copied() else {
            return list;
        };
        if list.len() >= want || self.succ_wrapped || self.config.is_consistent() {
            return list;
        }
        let beyond = self.me.id.distance_limbs(&last.id);
        let extra: Vec<NodeRef> = self
            .routing
            .known_nodes()
            .filter(|n| self.me.id.distance_limbs(&n.id) > beyond && !list.iter().any(|l| l.addr == n.addr))
            .take(want - list.len())
            .copied()
            .collect();
        list.extend(extra);
        list
    }

    /// The node before `owner` as far as this node knows (the start of `owner`'s range).
    pub(super) fn known_predecessor_of(&self, owner: &NodeRef) -> Option<NodeRef> {
        if owner.addr == self.me.addr {
            return self.predecessor;
        }
        let succs = self.routing.successors();
        match succs.iter().position(|s| s.addr == owner.addr) {
            Some(0) => Some(self.me),
            Some(k) => Some(succs[k - 1]),
            None => self.members.as_ref().and_then(|m| m.before(&owner.id)),
        }
    }

    /// This node followed by its successors: the answer to a lookup for a key we own.
    pub(super) fn owner_list(&self) -> Vec<NodeRef> {
        let mut v = Vec::with_capacity(1 + self.routing.successors().len());
        v.push(self.me);
        v.extend_from_slice(self.routing.successors());
        v
    }

    /// How many copies a range whose preference list we see as `pref` has: `replicas + 1`, or
    /// fewer only when the ring is known to be that small (we are alone, or our successor list
    /// reaches around the ring back to us). A list shorter than that in a view still catching
    /// up (a node just restarted, its successor list not refilled) does not shrink the
    /// majorities of leases and writes, nor the trusted copies a catch-up needs.
    pub(super) fn copies_of(&self, pref: &[NodeRef]) -> usize {
        let full = self.config.replicas + 1;
        if self.ring_is_small() {
            pref.len().min(full)
        } else {
            full.max(pref.len())
        }
    }

    /// Whether the ring is known to hold fewer hosts than a full preference list: we are
    /// alone, our successor list reaches around the ring back to us, or every node we know
    /// is a vnode of our own host (a ring of one host).
    pub(super) fn ring_is_small(&self) -> bool {
        let host = self.me.addr.host;
        self.routing.successors().is_empty()
            || self.succ_wrapped
            || (self.routing.own_host_only() && self.predecessor.is_none_or(|p| p.addr.host == host))
    }

    /// The preference list of `primary`'s range as this node sees it: `primary` and the
    /// positions after it, each host once (Dynamo section 4.3: a host's further positions are
    /// skipped, so `replicas + 1` copies are on `replicas + 1` machines), up to `replicas + 1`
    /// (fewer in a smaller ring), nearest first. `None` when `primary` is neither this node
    /// nor one of the predecessors whose ranges it keeps copies of.
    pub(super) fn preference_list(&self, primary: &NodeRef) -> Option<Vec<NodeRef>> {
        let n = self.config.replicas + 1;
        if primary.addr == self.me.addr {
            // Every write this node coordinates as the primary: the walk from us is kept with
            // the successor list.
            let mut list = Vec::with_capacity(n);
            list.push(self.me);
            list.extend(self.routing.other_hosts().iter().take(n - 1));
            return Some(list);
        }
        let preds = self.predecessors();
        let k = preds.iter().position(|p| p.addr == primary.addr)?;
        let walk = preds[..=k].iter().rev().chain(std::iter::once(&self.me));
        Some(distinct_hosts(walk.chain(self.routing.successors()), n))
    }

    /// `Some(first live successor at or after target)` when `target` falls within the
    /// successor list's arcs `(me, last successor]`.
    pub(super) fn successor_list_owner(&self, target: &Id) -> Option<Option<NodeRef>> {
        let succs = self.routing.successors();
        let mut prev = self.me.id;
        for (k, s) in succs.iter().enumerate() {
            if in_half_open(target, &prev, &s.id) {
                return Some(succs[k..].iter().find(|n| !self.is_dead(&n.addr)).copied());
            }
            prev = s.id;
        }
        None
    }

    /// Our predecessor and its predecessors as it reported them, nearest first: those whose
    /// ranges we keep copies of (or may stand in for), then one more, whose id is where the
    /// farthest of those ranges starts. We keep a copy of `p`'s range when no vnode of our
    /// host comes between `p` and us and the positions from `p` to just before us are on at
    /// most `replicas` hosts (we are then in `p`'s preference list of distinct hosts). With
    /// one vnode per host: our `replicas` predecessors and one more.
    pub(super) fn predecessors(&self) -> Vec<NodeRef> {
        self.predecessor_walk(true).0
    }

    /// Whether [`Node::predecessors`] ended at the rule (so its last entry is a boundary, not
    /// a range we hold), rather than because the ring or our view of it ran out.
    pub(super) fn pred_walk_complete(&self) -> bool {
        self.predecessor_walk(true).1
    }

    /// What we report as our predecessors (`NEIGHBORS.predecessors`): the positions back from
    /// our predecessor whose hosts, with ours, number at most `replicas + 1`, then one more
    /// (with one vnode per host: `replicas + 1` predecessors, as [`Node::predecessors`]). A
    /// successor `s` of ours walks back through us and this list, so it finds every range it
    /// keeps copies of (see [`Node::predecessors`]) and the start of the farthest.
    pub(super) fn reported_predecessors(&self) -> Vec<NodeRef> {
        self.predecessor_walk(false).0
    }

    /// The walk back from our predecessor through the list it reported. `as_holder`: stop at
    /// a vnode of our host (the ranges before it are its to copy, not ours) and count hosts
    /// without ours; otherwise count ours among them. Returns the positions (the last one a
    /// boundary when the rule ended the walk) and whether the rule ended it.
    fn predecessor_walk(&self, as_holder: bool) -> (Vec<NodeRef>, bool) {
        let Some(p) = self.predecessor else {
            return (Vec::new(), false);
        };
        let mine = self.me.addr.host;
        // A reporter counts its own host, and reports one host further than it holds, so a
        // successor finds its own boundary in the list.
        let limit = if as_holder {
            self.config.replicas
        } else {
            self.config.replicas + 1
        };
        // Sized once: the walk runs at every stabilize round and on every write's preference
        // list, and a list of vnodes names several positions per host.
        let mut hosts: Vec<std::net::SocketAddr> = Vec::with_capacity(limit + 1);
        if !as_holder {
            hosts.push(mine);
        }
        let more: &[NodeRef] = match &self.repl.pred_list {
            Some((addr, more)) if *addr == p.addr => more,
            _ => &[],
        };
        let mut list: Vec<NodeRef> = Vec::with_capacity(more.len() + 1);
        for n in std::iter::once(&p).chain(more.iter()) {
            if n.addr == self.me.addr {
                break;
            }
            if list.iter().any(|l| l.addr == n.addr)
                || (!list.is_empty() && self.live.gone.contains_key(&n.addr))
            {
                continue;
            }
            let host = n.addr.host;
            let new_host = !hosts.contains(&host);
            let sibling = as_holder && host == mine;
            list.push(*n);
            if sibling || (new_host && hosts.len() == limit) {
                // `n` is the boundary: its range is not ours to copy.
                return (list, true);
            }
            if new_host {
                hosts.push(host);
            }
        }
        (list, false)
    }

    /// Bit `i` set when `list[i]` is presumed down (for `Lookup::Found` and `Neighbors`).
    pub(super) fn down_bits(&self, list: &[NodeRef]) -> u64 {
        list.iter()
            .take(64)
            .enumerate()
            .filter(|(_, n)| self.is_dead(&n.addr))
            .fold(0, |bits, (i, _)| bits | (1 << i))
    }

    /// The members around us: the predecessors we know and the successor list.
    pub(super) fn neighbour_members(&self) -> impl Iterator<Item = &NodeRef> {
        let preds = match (&self.predecessor, &self.repl.pred_list) {
            (Some(p), Some((addr, list))) if *addr == p.addr => list.as_slice(),
            _ => &[],
        };
        self.predecessor
            .iter()
            .chain(preds.iter())
            .chain(self.routing.successors().iter())
    }
}

/// The first `n` of `walk` with each host once (a host's later positions skipped): a
/// preference list of distinct machines (Dynamo section 4.3).
pub(super) fn distinct_hosts<'a>(walk: impl IntoIterator<Item = &'a NodeRef>, n: usize) -> Vec<NodeRef> {
    let mut list: Vec<NodeRef> = Vec::with_capacity(n);
    for node in walk {
        if list.len() == n {
            break;
        }
        if !list.iter().any(|l| l.addr.host == node.addr.host) {
            list.push(*node);
        }
    }
    list
}
