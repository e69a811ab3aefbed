//! The failure detector's memory: peers presumed dead (and until when), neighbours that
//! departed and are probed for a ring merge (`available`), members that left or were
//! forgotten for good, and seed peers to rejoin through.

use chordkv_protocol::NodeAddr;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use chordkv_protocol::{in_open, ErrorCode, Message, NodeRef};

use super::maintenance::LookupPurpose;
use super::node::{Millis, Node, ReplyTo};
use super::rpc::RpcKind;
use super::timer::Timer;

/// A neighbour that stopped answering (partition policy `available`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Departed {
    pub node: NodeRef,
    pub since: Millis,
    /// It was one of our replicas: it may hold old copies of our range.
    pub holder: bool,
}

/// Departed neighbours remembered at most (the oldest are dropped first).
pub(super) const MAX_DEPARTED: usize = 64;
/// Departed neighbours probed per stabilize period.
pub(super) const DEPARTED_PROBES_PER_ROUND: usize = 8;

/// What the failure detector remembers about other nodes.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    /// Peers that failed to answer, until when they are avoided.
    pub dead: BTreeMap<NodeAddr, Millis>,
    /// `available`: neighbours dropped because they stopped answering, probed until they answer
    /// (ring merging after a partition) or `departed_ttl_ms` passes; `holder`: it kept copies of
    /// our range, so our tombstones wait for it.
    pub departed: BTreeMap<NodeAddr, Departed>,
    /// Nodes that left the ring or were forgotten: the node, until when it is kept out of every
    /// list (a stale successor list must not bring it back), and the latest that may become
    /// ([`Node::gone_max_ms`] after it was first marked).
    pub gone: BTreeMap<NodeAddr, (NodeRef, Millis, Millis)>,
    /// Nodes whose `gone` entry expired, until when another node's list of nodes that left
    /// (`Neighbors::gone`, which it may keep a little longer than we did) does not mark them
    /// again: entries passed back and forth would keep a node out for good.
    pub gone_expired: BTreeMap<NodeAddr, Millis>,
    /// Peers seen recently (the bootstrap node, successors), tried in turn when the node finds
    /// itself alone, so an isolated node finds its way back into the ring after a partition.
    pub seeds: VecDeque<NodeAddr>,
}

impl Node {
    pub(super) fn is_dead(&self, addr: &NodeAddr) -> bool {
        self.live.dead.contains_key(addr)
    }

    /// Whether any vnode of `addr`'s host is presumed down: the vnodes of a host share its
    /// process, so one that stopped answering says the others have too (for failover: the
    /// next copy of a range is on the next host).
    pub(super) fn is_host_dead(&self, addr: &NodeAddr) -> bool {
        let first = NodeAddr::new(addr.host, 0);
        let last = NodeAddr::new(addr.host, u16::MAX);
        self.live.dead.range(first..=last).next().is_some()
    }

    /// Forgets a peer that failed: out of the successor list, fingers and predecessor.
    pub(super) fn mark_dead(&mut self, now: Millis, addr: NodeAddr) {
        if addr == self.me.addr {
            return;
        }
        if self
            .live
            .dead
            .insert(addr, now + self.config.dead_peer_ttl_ms)
            .is_none()
        {
            self.stats.peers_failed += 1;
        }
        self.cache.evict_node(&addr);
        if self.config.is_consistent() {
            // A member that stops answering stays a member: it may be paused or cut off, and
            // only a majority of its range's copies may decide to serve without it (leases).
            // Routing avoids it, and it is probed until it answers (`probe_down_members`).
            self.routing.forget_finger(addr);
            return;
        }
        // `available`: it leaves our ring now. Remember it (it may be paused or cut off): it is
        // probed so two rings merge when a partition heals, and while it is away it may hold
        // old copies of our range, so our tombstones stay (see `sync.rs`).
        let neighbour = self
            .routing
            .successors()
            .iter()
            .chain(self.predecessor.iter())
            .find(|n| n.addr == addr)
            .copied();
        if let Some(n) = neighbour {
            let holder = self.replica_targets().iter().any(|r| r.addr == addr);
            self.remember_departed(now, n, holder);
        }
        self.routing.forget(addr);
        if let Some(p) = self.predecessor.filter(|p| p.addr == addr) {
            self.predecessor = None;
            // The successor is the authority on its predecessor's failure (one-hop).
            if self.members.is_some() {
                self.detect_event(now, p, false);
            }
        }
        // Anyone else only avoids it (`is_dead`) until its successor's notice arrives.
        if self.routing.successors().is_empty() {
            // Every successor is gone: fall back to the nearest node we still know of.
            let fallback = self.routing.known_nodes().next().copied().or(self.predecessor);
            if let Some(n) = fallback {
                self.set_successor_list(now, [n]);
                self.succ_wrapped = false;
            }
        }
    }

    pub(super) fn remember_departed(&mut self, now: Millis, node: NodeRef, holder: bool) {
        let entry = self.live.departed.entry(node.addr).or_insert(Departed {
            node,
            since: now,
            holder: false,
        });
        entry.holder |= holder;
        if self.live.departed.len() > MAX_DEPARTED {
            let oldest = self
                .live
                .departed
                .iter()
                .min_by_key(|(_, d)| d.since)
                .map(|(a, _)| *a);
            if let Some(a) = oldest {
                self.live.departed.remove(&a);
            }
        }
    }

    /// Whether a node that held copies of our range is away (`available`): it may come back
    /// with copies of keys deleted meanwhile, so tombstones are not collected until it does (or
    /// `departed_ttl_ms` passes, or an operator forgets it).
    pub(super) fn holder_away(&self) -> bool {
        self.live.departed.values().any(|d| d.holder)
    }

    /// `available`: asks a few departed neighbours for their neighbours. One that answers is
    /// back: it and the nodes it names are candidates for our successor, which is how two rings
    /// formed on both sides of a partition merge once it heals (Chord ToN 2003: remember the
    /// nodes that went away and keep probing them; stabilize then zips the rings together).
    pub(super) fn probe_departed(&mut self, now: Millis) {
        let ttl = self.config.departed_ttl_ms();
        // One that is our neighbour again is back in our ring: no need to probe it.
        let neighbours: BTreeSet<NodeAddr> = self
            .routing
            .successors()
            .iter()
            .chain(self.predecessor.iter())
            .map(|n| n.addr)
            .collect();
        self.live
            .departed
            .retain(|a, d| now.saturating_sub(d.since) < ttl && !neighbours.contains(a));
        let mut due: Vec<(Millis, NodeAddr)> = self
            .live
            .departed
            .iter()
            .filter(|(a, _)| !self.rpcs.any_to(**a, RpcKind::Probe))
            .map(|(a, d)| (d.since, *a))
            .collect();
        if due.is_empty() {
            return;
        }
        // Round-robin: the start moves with the clock, so every entry is probed in turn.
        due.sort();
        let start = (now / self.config.stabilize_interval_ms.max(1)) as usize % due.len();
        let picks: Vec<NodeAddr> = due
            .iter()
            .cycle()
            .skip(start)
            .take(DEPARTED_PROBES_PER_ROUND.min(due.len()))
            .map(|(_, a)| *a)
            .collect();
        for addr in picks {
            self.send_rpc(now, addr, Message::GetNeighbors, RpcKind::Probe, 0);
        }
    }

    /// A probed node answered: it is back. `available`: adopt it (or a node it names) as our
    /// successor when it lies between us and our successor.
    pub(super) fn on_probe_reply(&mut self, now: Millis, from: NodeAddr, msg: Message) {
        if self.config.is_consistent() {
            self.live.departed.remove(&from);
            return;
        }
        let Message::Neighbors {
            predecessors,
            successors,
            gone,
            ..
        } = msg
        else {
            return;
        };
        self.learn_gone(now, &gone);
        let back = self.live.departed.get(&from).map(|d| d.node);
        // Its ring, from it onwards: the node of that ring that should have us as its
        // predecessor (we lie between it and the node before it) is told so, the other
        // direction of the merge (its stabilize then zips the rings together).
        if let Some(x) = back {
            let me = self.me;
            let run: Vec<NodeRef> = std::iter::once(x).chain(successors.iter().copied()).collect();
            let after = run
                .windows(2)
                .find(|w| in_open(&me.id, &w[0].id, &w[1].id) && w[1].addr != me.addr)
                .map(|w| w[1]);
            if let Some(b) = after {
                let msg = self.notify_message();
                self.send_rpc(now, b.addr, msg, RpcKind::Notify, 0);
            }
        }
        let mut candidates: Vec<NodeRef> = back.into_iter().collect();
        candidates.extend(predecessors);
        candidates.extend(successors);
        if self.adopt_closer_successor(now, candidates) {
            self.live.departed.remove(&from);
            return;
        }
        // None of the nodes it names lies between us and our successor. Its ring may still
        // hold one there (two rings interleave on the circle): ask it where our successor is,
        // a lookup of our own id through it (Chord ToN 2003, ring unification). The node
        // stays departed (and probed) until that shows it is in our ring.
        let asking = self
            .lookups
            .pending
            .values()
            .any(|l| l.purpose == LookupPurpose::Merge(from));
        if !asking {
            self.lookup_own_id(now, from, LookupPurpose::Merge(from));
        }
    }

    /// `available`: adopts the candidate nearest after us as our successor if it lies between
    /// us and our current successor (a node of another ring, or one we had lost); returns
    /// whether it did. The node that named the candidates vouches for them: they may still be
    /// in our list of peers that stopped answering, from before a heal.
    pub(super) fn adopt_closer_successor(&mut self, now: Millis, candidates: Vec<NodeRef>) -> bool {
        let me = self.me;
        let succ = self.routing.successors().first().copied();
        let closer = candidates
            .into_iter()
            .filter(|n| n.addr != me.addr && !self.live.gone.contains_key(&n.addr))
            .filter(|n| succ.is_none_or(|s| in_open(&n.id, &me.id, &s.id)))
            .min_by_key(|n| me.id.distance_limbs(&n.id));
        let Some(n) = closer else {
            return false;
        };
        self.live.dead.remove(&n.addr);
        self.stats.ring_merges += 1;
        let mut list = vec![n];
        list.extend_from_slice(self.routing.successors());
        self.set_successor_list(now, list);
        self.succ_wrapped = false;
        self.remember_seed(n.addr);
        self.timers.set(Timer::Stabilize, now);
        true
    }

    pub(super) fn expire_dead(&mut self, now: Millis) {
        if self.config.is_consistent() {
            // Members next to us stay presumed down until a probe finds them up. Runs at every
            // tick: only the expired entries (usually none) are looked for among the
            // neighbours, and nothing is allocated when none expired.
            let expired: Vec<NodeAddr> = self
                .live
                .dead
                .iter()
                .filter(|(_, until)| **until <= now)
                .map(|(a, _)| *a)
                .collect();
            for a in expired {
                if !self.neighbour_members().any(|n| n.addr == a) {
                    self.live.dead.remove(&a);
                }
            }
        } else {
            self.live.dead.retain(|_, until| *until > now);
        }
        let relearn_after = now + self.gone_max_ms() + self.gone_keep_ms();
        let (gone, expired) = (&mut self.live.gone, &mut self.live.gone_expired);
        gone.retain(|a, (_, until, _)| {
            if *until <= now {
                expired.insert(*a, relearn_after);
            }
            *until > now
        });
        expired.retain(|_, until| *until > now);
    }

    /// Pings every neighbouring member presumed down (`consistent`), so one that comes back
    /// (resumed, the partition healed, restarted) is used again at once.
    pub(super) fn probe_down_members(&mut self, now: Millis) {
        let down: BTreeSet<NodeAddr> = self
            .neighbour_members()
            .filter(|n| self.is_dead(&n.addr))
            .map(|n| n.addr)
            .collect();
        for addr in down {
            if !self.rpcs.any_to(addr, RpcKind::Probe) {
                self.send_rpc(now, addr, Message::Ping, RpcKind::Probe, 0);
            }
        }
    }

    /// Nodes another node says left the ring or were forgotten: out of our lists too. Not
    /// the positions of our own host (they run in this process: a host started again on its
    /// address hears from its peers that its earlier run left), nor those we kept out long
    /// enough already (`gone_expired`).
    pub(super) fn learn_gone(&mut self, now: Millis, gone: &[NodeRef]) {
        for n in gone {
            if n.addr.host != self.me.addr.host
                && !self.live.gone.contains_key(&n.addr)
                && !self.live.gone_expired.contains_key(&n.addr)
            {
                self.depart(now, *n);
            }
        }
    }

    /// `node` left the ring (gracefully, or an operator forgot it): it is no member any more.
    pub(super) fn depart(&mut self, now: Millis, node: NodeRef) {
        self.mark_gone(now, node);
        if self.predecessor.is_some_and(|p| p.addr == node.addr) {
            // Its range is ours now (a leave hands it over; a forgotten node's is lost to it).
            let next = self.predecessors().get(1).copied();
            self.predecessor = next;
            self.pred_incarnation = None;
        }
        if let Some((_, list)) = self.repl.pred_list.as_mut() {
            list.retain(|n| n.addr != node.addr);
        }
        let me = self.me;
        self.leases.release(&node.id, me);
    }

    /// An operator declares `node` gone for good (`chordkv forget`), or with `whole_host`
    /// every position of its host (a dead process with virtual nodes): they leave our lists
    /// like nodes that left, and the notice goes around the ring (each node passes it to its
    /// first live successor, once: while it forgets a position it had not).
    pub(super) fn handle_forget(
        &mut self,
        now: Millis,
        to: ReplyTo,
        rid: u64,
        node: NodeRef,
        whole_host: bool,
    ) {
        let mine = if whole_host {
            node.addr.host == self.me.addr.host
        } else {
            node.addr == self.me.addr
        };
        if mine {
            let msg = Message::Error {
                code: ErrorCode::BadRequest,
                hops: 0,
                text: "a node cannot forget itself; stop it instead (it leaves gracefully)".to_string(),
            };
            return self.reply(to, rid, msg);
        }
        let targets = self.forget_targets(node, whole_host);
        let new = !targets.is_empty();
        for n in targets {
            self.depart(now, n);
        }
        if new {
            let next = self
                .routing
                .successors()
                .iter()
                .find(|n| !self.is_dead(&n.addr))
                .copied();
            if let Some(next) = next {
                let msg = Message::Forget { node, whole_host };
                self.send_rpc(now, next.addr, msg, RpcKind::Probe, 0);
            }
        }
        self.reply(to, rid, Message::ForgetReply { forgotten: new });
    }

    /// The positions a `FORGET` of `node` (with `whole_host`, of every vnode of its host)
    /// takes out of our lists, those not gone already: `node` itself, and with `whole_host`
    /// every other position of its host that we know of (a successor, finger, predecessor,
    /// reported predecessor, departed or presumed-down peer). Each keeps the id we know, which
    /// an operator's `node.id` may only guess; a presumed-down peer known by address alone is
    /// named by its address (only the address keeps it out of our lists).
    fn forget_targets(&self, node: NodeRef, whole_host: bool) -> Vec<NodeRef> {
        let hit = |a: &NodeAddr| {
            if whole_host {
                a.host == node.addr.host
            } else {
                *a == node.addr
            }
        };
        let mut known: BTreeMap<NodeAddr, NodeRef> = BTreeMap::new();
        for a in self.live.dead.keys().filter(|a| hit(a)) {
            known.insert(*a, NodeRef::guess(*a));
        }
        known.insert(node.addr, node);
        let pred_list = self.repl.pred_list.iter().flat_map(|(_, list)| list.iter());
        let departed = self.live.departed.values().map(|d| &d.node);
        let listed = self
            .predecessor
            .iter()
            .chain(self.routing.known_nodes())
            .chain(pred_list)
            .chain(departed);
        for n in listed.filter(|n| hit(&n.addr)) {
            known.insert(n.addr, *n);
        }
        known
            .into_values()
            .filter(|n| !self.live.gone.contains_key(&n.addr))
            .collect()
    }

    /// The longest a node that left stays out of our lists, however often it is named (see
    /// [`Node::drop_gone`]): twice [`Node::gone_keep_ms`], 64 stabilize periods.
    pub(super) fn gone_max_ms(&self) -> u64 {
        self.gone_keep_ms() * 2
    }

    /// How long a node that left stays out of our lists after the last time anyone named it.
    fn gone_keep_ms(&self) -> u64 {
        // Long enough for every stale list to flush (a successor list is refreshed once a
        // stabilize period); short enough that the node may join again soon after.
        self.config.dead_peer_ttl_ms * 4
    }

    /// Sets our successor list to `list` less the nodes known to have left ([`Node::drop_gone`]).
    /// Every change of the successor list goes through here: a list learnt from a peer (a
    /// stabilize answer, a leave notice, a lookup reply) may be older than a leave we heard of,
    /// and under `consistent` a departed node let back in stays for good as a silent member
    /// nobody ever asks to leave again (a survivor of simultaneous leaves kept one this way).
    pub(super) fn set_successor_list(&mut self, now: Millis, list: impl IntoIterator<Item = NodeRef>) {
        let mut list: Vec<NodeRef> = list.into_iter().collect();
        self.drop_gone(now, &mut list);
        self.routing.set_successors(list, self.config.successors);
    }

    /// Drops from `list` the nodes known to have left, and keeps each one it named out of our
    /// lists for another [`Node::gone_keep_ms`]: while someone still names a node that left
    /// (a neighbour that never heard of the leave, such as a vnode whose neighbours all left
    /// at once, or a message that arrives late), forgetting the leave would let the name back
    /// in, where `consistent` keeps it for good as a silent member nobody ever asks.
    ///
    /// Each one is kept out at most [`Node::gone_max_ms`] after it was first marked, however
    /// often it is named: a host of vnodes that left and started again on its address names
    /// its positions itself (its new vnodes list each other, and the first peer that lets one
    /// in lists it too), so its peers kept every one of them out, and refused its joins, for as
    /// long as it tried.
    pub(super) fn drop_gone(&mut self, now: Millis, list: &mut Vec<NodeRef>) {
        self.drop_gone_named_by(now, list, None);
    }

    /// [`Node::drop_gone`] of a list that node `from` sent us. A node that left and answers us
    /// anyway is back (or a message of its old run is late): what it names is not kept out
    /// for longer.
    pub(super) fn drop_gone_named_by(
        &mut self,
        now: Millis,
        list: &mut Vec<NodeRef>,
        from: Option<NodeAddr>,
    ) {
        let until = now + self.gone_keep_ms();
        let gone = &mut self.live.gone;
        let by_a_member = !from.is_some_and(|f| gone.contains_key(&f));
        list.retain(|n| match gone.get_mut(&n.addr) {
            Some((_, keep, latest)) => {
                if by_a_member {
                    *keep = (*keep).max(until.min(*latest));
                }
                false
            }
            None => true,
        });
    }

    /// Out of every list, and kept out for a while: `node` left or was forgotten (the notice
    /// spreads to the neighbours through `Neighbors::gone`).
    pub(super) fn mark_gone(&mut self, now: Millis, node: NodeRef) {
        let keep_ms = self.gone_keep_ms();
        let latest = now + self.gone_max_ms();
        let entry = self.live.gone.entry(node.addr).or_insert((node, 0, latest));
        entry.0 = node;
        entry.1 = entry.1.max(now + keep_ms).min(entry.2);
        self.live.departed.remove(&node.addr);
        self.live.seeds.retain(|a| *a != node.addr);
        self.routing.forget(node.addr);
        self.live.dead.remove(&node.addr);
        self.cache.evict_node(&node.addr);
    }

    pub(super) fn remember_seed(&mut self, addr: NodeAddr) {
        const MAX_SEEDS: usize = 16;
        if !self.live.seeds.contains(&addr) {
            if self.live.seeds.len() == MAX_SEEDS {
                self.live.seeds.pop_front();
            }
            self.live.seeds.push_back(addr);
        }
    }
}
