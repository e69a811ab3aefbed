//! Chord's ring maintenance (SIGCOMM'01 section 4.4, Fig. 6; successor lists of section
//! 5.2): `stabilize` and `notify`, `check_predecessor`, `fix_fingers`, and the lookups that
//! join a node to the ring or refresh a finger.

use chordkv_protocol::NodeAddr;
use std::collections::BTreeMap;
use std::net::SocketAddr;

use chordkv_protocol::{in_open, Id, Lookup, Message, NodeRef};

use super::node::{Millis, Node, Phase};
use super::placement::Route;
use super::routing::MAX_POSITIONS_PER_SUCCESSOR;
use super::rpc::RpcKind;
use super::timer::Timer;

/// A maintenance lookup (join, fix_fingers): find `successor(target)`.
#[derive(Clone, Debug)]
pub(super) struct MaintLookup {
    pub target: Id,
    pub purpose: LookupPurpose,
    pub deadline: Millis,
    /// The step in flight, when a peer named it (`Closer`): the node asked and the peer that
    /// named it, so a step that fails can go around it (see [`Node::lookup_detour`]).
    pub asking: Option<(NodeRef, NodeAddr)>,
    /// While the RPC in flight is a detour: the dead node it goes around.
    pub around: Option<NodeRef>,
    /// Steps taken after the first, at most [`Config::max_hops`](super::Config::max_hops).
    pub hops: u16,
}

impl MaintLookup {
    pub fn new(target: Id, purpose: LookupPurpose, deadline: Millis) -> MaintLookup {
        MaintLookup {
            target,
            purpose,
            deadline,
            asking: None,
            around: None,
            hops: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LookupPurpose {
    Join,
    /// A node left alone after losing every peer looks for its successor again.
    Rejoin,
    Finger(usize),
    /// `available`: a departed node answered a probe but named nobody between us and our
    /// successor; its ring is asked where our successor is (a lookup of our own id through
    /// it): ring unification, Chord ToN 2003.
    Merge(NodeAddr),
}

/// Maintenance lookups in flight, and where `fix_fingers` is.
#[derive(Debug, Default)]
pub(super) struct Lookups {
    pub pending: BTreeMap<u64, MaintLookup>,
    pub next_id: u64,
    /// Finger index fix_fingers will refresh next.
    pub next_finger: usize,
    /// Whether a fix_fingers lookup is in flight (one at a time).
    pub finger_busy: bool,
    /// What the fingers inside the successor list were last all set from, if nothing has
    /// changed a finger since: a round that finds the same has nothing to set there.
    pub finger_pass: Option<FingerPass>,
}

/// The inputs of the fingers whose start lies within the successor list (`fix_fingers`
/// resolves them without a lookup): the list, the first member at or after each entry not
/// presumed down, and [`RoutingTable::finger_changes`](super::routing::RoutingTable::finger_changes)
/// after they were set.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct FingerPass {
    successors: Vec<NodeRef>,
    owners: Vec<Option<NodeRef>>,
    changes: u64,
}

impl Node {
    pub(super) fn stabilize(&mut self, now: Millis) {
        match self.phase {
            Phase::Joined | Phase::Active | Phase::Leaving => {}
            _ => return,
        }
        match self.routing.successors().first().copied() {
            None => {
                // Alone: a node that notified us is our successor too (the second node of a ring).
                if let Some(p) = self.predecessor.filter(|p| !self.live.gone.contains_key(&p.addr)) {
                    self.set_successor_list(now, [p]);
                    // A ring of two: its successor is us.
                    self.succ_wrapped = true;
                    let msg = self.notify_message();
                    self.send_rpc(now, p.addr, msg, RpcKind::Notify, 0);
                } else {
                    self.try_rejoin(now);
                }
            }
            Some(first) => {
                // The first successor that answers (members presumed down are skipped; under
                // `available` none are kept).
                let succ = self
                    .routing
                    .successors()
                    .iter()
                    .find(|n| !self.is_dead(&n.addr))
                    .copied();
                match succ {
                    Some(succ) if !self.rpcs.any(RpcKind::Stabilize) => {
                        self.stats.stabilize_rounds += 1;
                        self.send_rpc(now, succ.addr, Message::GetNeighbors, RpcKind::Stabilize, 0);
                    }
                    Some(_) => {}
                    // Every member we know of is presumed down: probing finds them when they
                    // answer again; remembered peers may know more.
                    None => {
                        let _ = first;
                        self.try_rejoin(now);
                    }
                }
            }
        }
        if self.config.is_consistent() {
            self.probe_down_members(now);
        } else {
            self.probe_departed(now);
        }
    }

    /// `NOTIFY`: we may be the receiver's predecessor (SIGCOMM'01 Fig. 6). `active` once we
    /// have owned a range in this incarnation, leaving included: a leaving node's notify, late
    /// at a successor that took its range over, must not read as the join of a node restarted
    /// on its address (which is handed the range back: it would leave with it).
    pub(super) fn notify_message(&self) -> Message {
        Message::Notify {
            node: self.me,
            incarnation: self.config.incarnation,
            active: matches!(self.phase, Phase::Active | Phase::Leaving | Phase::Left),
        }
    }

    pub(super) fn on_neighbors(&mut self, now: Millis, from: NodeAddr, msg: Message) {
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
        let succs = self.routing.successors().to_vec();
        // The successor we asked: the first, or (`consistent`) the first not presumed down.
        let Some(k) = succs.iter().position(|s| s.addr == from) else {
            return;
        };
        let succ = succs[k];
        let x = predecessors.first().copied();
        let mut list = Vec::with_capacity(self.config.successors + 2);
        let mut wrapped = false;
        if self.config.is_consistent() {
            // Members only leave by announcing it (or by an operator's `forget`): the ones we
            // know stay (those before `from` are down; a short list from `from` does not make
            // the ones after it go), a node that joined just before `from` is added, and the
            // list is the `successors` nearest members in ring order from us.
            if let Some(x) = x.filter(|x| x.addr != self.me.addr && in_open(&x.id, &self.me.id, &succ.id)) {
                list.push(x);
            }
            list.push(succ);
            list.extend(successors);
            wrapped = list.iter().any(|n| n.addr == self.me.addr);
            let reach = self.complete_reach(&list);
            list.extend_from_slice(&succs);
            self.members_in_ring_order(&mut list);
            if let Some(reach) = reach {
                // The answer names every position our list may hold (see `complete_reach`):
                // what we knew past it is a tail it no longer vouches for.
                list.retain(|n| self.me.id.distance_limbs(&n.id) <= reach);
            }
        } else {
            let mut new_succ = succ;
            if let Some(x) = x {
                if x.addr != self.me.addr && !self.is_dead(&x.addr) && in_open(&x.id, &self.me.id, &succ.id) {
                    new_succ = x;
                }
            }
            list.push(new_succ);
            if new_succ.addr != succ.addr {
                list.push(succ);
            }
            list.extend(successors.into_iter().filter(|n| !self.is_dead(&n.addr)));
            // A successor list that wraps back to us ends there.
            if let Some(pos) = list.iter().position(|n| n.addr == self.me.addr) {
                list.truncate(pos);
                wrapped = true;
            }
            self.drop_gone_named_by(now, &mut list, Some(from));
        }
        for n in &list {
            if n.addr != self.me.addr {
                self.remember_seed(n.addr);
            }
        }
        self.set_successor_list(now, list);
        // The list reached around the ring to us (and was cut there): the ring is this small.
        self.succ_wrapped = wrapped && self.routing.successor_hosts() < self.config.successors;
        let first_live = self
            .routing
            .successors()
            .iter()
            .find(|n| !self.is_dead(&n.addr))
            .copied();
        if let Some(s) = first_live {
            if self.phase != Phase::Leaving {
                let msg = self.notify_message();
                self.send_rpc(now, s.addr, msg, RpcKind::Notify, 0);
            }
        }
    }

    /// Pings the predecessor. The ping is a `GET_NEIGHBORS`, whose answer also names the
    /// predecessor's own predecessor: the start of the range this node takes over if its
    /// predecessor dies (see `may_take_over`).
    ///
    /// Under `consistent` the ping goes to the nearest predecessor that answers: its successor
    /// list names every member between it and us, so its answer confirms our predecessor (the
    /// last of them) or corrects it. A node that restarted, or took a notifier for its
    /// predecessor before it knew better, learns where its range really starts this way, and
    /// asks for no lease on its range before that is confirmed (`range_confirmed`).
    pub(super) fn check_predecessor(&mut self, now: Millis) {
        if self.rpcs.any(RpcKind::CheckPredecessor) {
            return;
        }
        let target = if self.config.is_consistent() {
            self.predecessors()
                .into_iter()
                .find(|p| !self.is_dead(&p.addr))
                .or(self.pred_hint.filter(|h| !self.is_dead(&h.addr)))
                .or_else(|| {
                    // The nearest known member before us that answers: the table's farthest.
                    // (`closest_preceding_where(me)` names none: nothing lies strictly between
                    // us and ourselves.)
                    self.routing
                        .known_nodes()
                        .rev()
                        .find(|n| n.addr != self.me.addr && !self.live.dead.contains_key(&n.addr))
                        .copied()
                })
                .or(self.predecessor)
        } else {
            self.predecessor
        };
        if let Some(x) = target {
            self.pred_asked = Some(x);
            self.send_rpc(now, x.addr, Message::GetNeighbors, RpcKind::CheckPredecessor, 0);
        }
    }

    /// `consistent`: a node before us answered `check_predecessor` with its neighbours.
    pub(super) fn on_predecessor_neighbors(
        &mut self,
        from: NodeAddr,
        predecessors: Vec<NodeRef>,
        successors: Vec<NodeRef>,
    ) {
        let me = self.me;
        let known = self
            .pred_asked
            .into_iter()
            .chain(self.predecessors())
            .chain(self.routing.known_nodes().copied())
            .chain(self.pred_hint)
            .find(|n| n.addr == from);
        let x = known.unwrap_or_else(|| NodeRef::guess(from));
        let Some(pos) = successors.iter().position(|n| n.addr == me.addr) else {
            // Its list does not reach us: ask the last node in it before us next time.
            self.pred_hint = successors
                .iter()
                .copied()
                .rfind(|n| in_open(&n.id, &x.id, &me.id));
            return;
        };
        // Its id as we know it: a guess from its address is wrong for a vnode, and must not
        // enter our successor list.
        self.learn_successors_from_predecessor(
            known,
            &successors[..pos],
            &successors[pos + 1..],
            &predecessors,
        );
        // Ours: the members it knows between itself and us (nearest first), it, its own.
        let mut list: Vec<NodeRef> = successors[..pos].iter().rev().copied().collect();
        list.push(x);
        list.extend(predecessors.into_iter().filter(|n| n.addr != me.addr));
        self.drop_gone_named_by(self.last_now, &mut list, Some(from));
        list.dedup_by_key(|n| n.addr);
        self.pred_hint = None;
        // Every node it names is gone (it left while its answer was on the way): nothing to
        // learn from it.
        if list.is_empty() {
            return;
        }
        let pred = list.remove(0);
        if self.predecessor.map(|p| p.addr) != Some(pred.addr) {
            // A nearer member we did not know of. One that is down (or any, when we know no
            // predecessor) is ours at once: its range is not ours, and no handoff can happen.
            // A live one joins us itself (its notify hands its range over): until then our
            // range is not confirmed, and we ask for no lease on it. A member farther back
            // than ours is a view older than ours (a node that has not heard of our
            // predecessor yet, asked because every predecessor we know is down): never
            // adopted, since our predecessor moves back only when it leaves (`depart`).
            let nearer = self.predecessor.is_none_or(|q| in_open(&pred.id, &q.id, &me.id));
            let adopt = nearer && (self.predecessor.is_none() || self.is_dead(&pred.addr));
            if !adopt {
                self.pred_confirmed = None;
                return;
            }
            self.stats.predecessors_corrected += 1;
            self.predecessor = Some(pred);
            self.pred_incarnation = None;
        }
        self.repl.pred_list = Some((pred.addr, list));
        self.pred_confirmed = Some(pred.addr);
    }

    /// `consistent`: the members a predecessor's successor list names after us, in ring order,
    /// fill our successor list when it names fewer hosts than it should. Stabilize fills it
    /// from our successor's list, but a successor that is restarting (a member rejoining, not
    /// yet in the ring) cannot name anyone, and may itself be waiting for us to name the
    /// members after it: its join lookup ends at us, its predecessor (`on_lookup_reply`).
    /// Without this, two members restarted next to each other wait for each other for ever.
    ///
    /// When a member after us is also one of the predecessor's own predecessors (`pred`: the
    /// predecessor with its id, if we know it), the ring closes: after that member come the
    /// predecessors nearer `pred`, `pred`, and the members it names between itself and us
    /// (`before_us`), so they follow in our list too. Our successor can be down before it
    /// ever named them to us: a node that joined through a member when that member was alone
    /// lists only it, and a node that joins between them after it (our predecessor now) is the
    /// next member after it. Without this our list named the down member alone for as long as
    /// it was down, and nothing of its range could be routed from here. Members are added, never dropped (as in `on_neighbors`).
    fn learn_successors_from_predecessor(
        &mut self,
        pred: Option<NodeRef>,
        before_us: &[NodeRef],
        after_us: &[NodeRef],
        its_predecessors: &[NodeRef],
    ) {
        if self.routing.successor_hosts() >= self.config.successors {
            return;
        }
        let mut list = self.routing.successors().to_vec();
        list.extend_from_slice(after_us);
        // The predecessor and its own predecessors, nearest first (none without its id).
        let chain: Vec<NodeRef> = match pred {
            Some(p) => std::iter::once(p)
                .chain(its_predecessors.iter().copied())
                .collect(),
            None => Vec::new(),
        };
        let closes = chain.iter().position(|c| list.iter().any(|n| n.addr == c.addr));
        if let Some(j) = closes {
            list.extend_from_slice(&chain[..j]);
            list.extend_from_slice(before_us);
        }
        self.members_in_ring_order(&mut list);
        if list == self.routing.successors() {
            return;
        }
        for n in &list {
            self.remember_seed(n.addr);
        }
        self.set_successor_list(self.last_now, list);
        if closes.is_some() {
            // The list reaches round the ring to us: the ring is this small.
            self.succ_wrapped = self.routing.successor_hosts() < self.config.successors;
        }
    }

    /// `consistent`'s merge of successor lists: `list` without us and the members that left,
    /// each once, in ring order from us.
    fn members_in_ring_order(&self, list: &mut Vec<NodeRef>) {
        let me = self.me.id;
        list.retain(|n| n.addr != self.me.addr && !self.live.gone.contains_key(&n.addr));
        list.sort_by_key(|n| me.distance_limbs(&n.id));
        list.dedup_by_key(|n| n.addr);
    }

    /// The ring distance from us of the farthest entry of `answer` (a successor's position and
    /// its successor list, in its order) when that answer holds every position our own list may
    /// hold, else `None`.
    ///
    /// Our list runs to the first position of the `successors + 1`-th host other than ours
    /// ([`RoutingTable::set_successors`]); the successor's list does the same from its side,
    /// so it ends at the first position of a host that is new to it. When the answer names
    /// `successors` hosts other than ours (or fills the list's bound in entries), that position
    /// is new to us too: our list ends within the answer. Keeping what we knew past it (the
    /// `consistent` merge keeps members a short answer leaves out) would keep a tail the answer
    /// no longer vouches for, where a member missing from our older list stays missing and the
    /// list runs on past it for good. An answer naming fewer hosts (a successor that has not
    /// learnt the ring yet) vouches for no tail: the merge keeps ours.
    ///
    /// [`RoutingTable::set_successors`]: super::routing::RoutingTable::set_successors
    fn complete_reach(&self, answer: &[NodeRef]) -> Option<(u32, u128)> {
        let max = self.config.successors;
        let mut hosts: Vec<SocketAddr> = Vec::with_capacity(max);
        let mut entries = 0;
        let mut reach = None;
        // Members known to have left are not in our list: they vouch for nothing.
        let listed = |n: &&NodeRef| n.addr != self.me.addr && !self.live.gone.contains_key(&n.addr);
        for n in answer.iter().filter(listed) {
            entries += 1;
            let d = self.me.id.distance_limbs(&n.id);
            reach = Some(reach.map_or(d, |r: (u32, u128)| r.max(d)));
            if n.addr.host != self.me.addr.host && !hosts.contains(&n.addr.host) {
                hosts.push(n.addr.host);
            }
        }
        let full = hosts.len() >= max || entries >= max.saturating_mul(MAX_POSITIONS_PER_SUCCESSOR);
        reach.filter(|_| full)
    }

    /// Whether we know where our range starts (`consistent`): our predecessor was confirmed by
    /// the nearest live node before us, or we are alone.
    pub(super) fn range_confirmed(&self) -> bool {
        match self.predecessor {
            Some(p) => self.pred_confirmed == Some(p.addr),
            None => self.routing.successors().is_empty(),
        }
    }

    /// Refreshes fingers round-robin: every finger whose start falls within the successor
    /// list is set at once; the first that needs a remote lookup starts one and ends the round.
    pub(super) fn fix_fingers(&mut self, now: Millis) {
        if self.lookups.finger_busy || !matches!(self.phase, Phase::Joined | Phase::Active) {
            return;
        }
        let count = self.routing.finger_count();
        // Most fingers of a small ring, and the first ones of any, start inside the successor
        // list: they resolve from it without building a route. Their owners depend only on the
        // list and on which of its members are presumed down, so they are computed once per
        // round: `owners[k]` is the first member at or after entry `k` not presumed down.
        let successors = self.routing.successors().to_vec();
        let mut owners = vec![None; successors.len()];
        let mut live = None;
        for k in (0..successors.len()).rev() {
            if !self.is_dead(&successors[k].addr) {
                live = Some(successors[k]);
            }
            owners[k] = live;
        }
        // With the list in clockwise order from us (as stabilize keeps it), a start's entry
        // is found by binary search on the distances; else by the linear walk.
        let distances: Vec<(u32, u128)> = successors
            .iter()
            .map(|s| self.me.id.distance_limbs(&s.id))
            .collect();
        let ascending =
            distances.first().is_none_or(|d| *d > (0, 0)) && distances.windows(2).all(|w| w[0] < w[1]);
        let local = if ascending {
            distances.last().map_or(0, |d| self.routing.fingers_within(*d))
        } else {
            0
        };
        // The same inputs as when every such finger was last set, and no finger changed
        // since: setting them again would change nothing.
        let changes = self.routing.finger_changes();
        let clean =
            ascending
                && self.lookups.finger_pass.as_ref().is_some_and(|p| {
                    p.changes == changes && p.successors == successors && p.owners == owners
                });
        let mut visited = 0;
        let mut pending_lookup = None;
        let mut steps = 0;
        while steps < count {
            let i = self.lookups.next_finger;
            if clean && i < local {
                // Fingers `i..local` are set already: passed over at once.
                let skip = (local - i).min(count - steps);
                steps += skip;
                visited += skip;
                self.lookups.next_finger = (i + skip) % count;
                continue;
            }
            steps += 1;
            self.lookups.next_finger = (self.lookups.next_finger + 1) % count;
            let owner = if ascending {
                let d = self.routing.finger_distance(i);
                let k = distances.partition_point(|x| *x < d);
                (k < successors.len()).then(|| owners[k])
            } else {
                self.successor_list_owner(&self.routing.finger_start(i))
            };
            if let Some(owner) = owner {
                visited += 1;
                if !clean {
                    self.routing.set_finger(i, owner);
                }
                continue;
            }
            let start = self.routing.finger_start(i);
            match self.route(&start) {
                Route::Local | Route::Unknown => {
                    self.routing.set_finger(i, None);
                }
                Route::Found(list) => {
                    let owner = list.into_iter().find(|n| !self.is_dead(&n.addr));
                    self.routing.set_finger(i, owner);
                }
                Route::Closer(c) => {
                    pending_lookup = Some((i, start, c));
                    break;
                }
            }
        }
        // Every such finger is now what these inputs give if this round set them all, or if
        // they already were (changes to the other fingers since do not matter to them).
        self.lookups.finger_pass = (ascending && (clean || visited == local)).then(|| FingerPass {
            successors,
            owners,
            changes: self.routing.finger_changes(),
        });
        if let Some((i, start, c)) = pending_lookup {
            let deadline = now + self.config.request_timeout_ms;
            let id = self.new_lookup(MaintLookup::new(start, LookupPurpose::Finger(i), deadline));
            self.lookups.finger_busy = true;
            self.send_rpc(
                now,
                c.addr,
                Message::FindSuccessor { id: start },
                RpcKind::Lookup(id),
                0,
            );
        }
    }

    /// Alone after having had peers: ask the next remembered peer for our successor.
    pub(super) fn try_rejoin(&mut self, now: Millis) {
        if !matches!(self.phase, Phase::Active | Phase::Joined)
            || self
                .lookups
                .pending
                .values()
                .any(|l| l.purpose == LookupPurpose::Rejoin)
        {
            return;
        }
        let Some(seed) = self.live.seeds.pop_front() else {
            return;
        };
        self.live.seeds.push_back(seed);
        self.lookup_own_id(now, seed, LookupPurpose::Rejoin);
    }

    /// Asks `via` for our own successor (a join, or a rejoin after isolation).
    pub(super) fn lookup_own_id(&mut self, now: Millis, via: NodeAddr, purpose: LookupPurpose) {
        let deadline = now + self.config.request_timeout_ms;
        let id = self.new_lookup(MaintLookup::new(self.me.id, purpose, deadline));
        self.send_rpc(
            now,
            via,
            Message::FindSuccessor { id: self.me.id },
            RpcKind::Lookup(id),
            0,
        );
    }

    pub(super) fn new_lookup(&mut self, lookup: MaintLookup) -> u64 {
        let id = self.lookups.next_id;
        self.lookups.next_id += 1;
        self.lookups.pending.insert(id, lookup);
        id
    }

    pub(super) fn on_lookup_reply(&mut self, now: Millis, id: u64, from: NodeAddr, msg: Message) {
        let Some(lookup) = self.lookups.pending.get(&id).cloned() else {
            return;
        };
        if lookup.purpose == LookupPurpose::Join {
            match &msg {
                Message::FindSuccessorReply {
                    lookup: Lookup::Found { successors, .. },
                } => {
                    let me = self.me.addr;
                    for n in successors.iter().filter(|n| n.addr != me) {
                        self.remember_seed(n.addr);
                    }
                }
                Message::FindSuccessorReply {
                    lookup: Lookup::Closer { node },
                } => self.remember_seed(node.addr),
                _ => {}
            }
        }
        if let Some(around) = lookup.around {
            // The answer to a detour names a node to go on from, not the target's successor.
            let next = self.detour_next(msg, from, Some(around.addr));
            return match next {
                Some(n) if now < lookup.deadline => self.lookup_step(now, id, n, from),
                _ => self.fail_lookup(now, id),
            };
        }
        match msg {
            Message::FindSuccessorReply {
                lookup:
                    Lookup::Found {
                        successors,
                        predecessor,
                        ..
                    },
            } if matches!(lookup.purpose, LookupPurpose::Join | LookupPurpose::Rejoin)
                && successors.iter().all(|n| n.addr == self.me.addr) =>
            {
                // The ring still counts us as a member (we restarted before it noticed, or we
                // are a member presumed down) and this node knows nobody after us. The node
                // before us does: ask it at once.
                match predecessor.filter(|p| p.addr != self.me.addr && p.addr != from) {
                    Some(p) => {
                        self.remember_seed(p.addr);
                        self.lookup_step(now, id, p, from);
                    }
                    None => self.fail_lookup(now, id),
                }
            }
            Message::FindSuccessorReply {
                lookup:
                    Lookup::Found {
                        successors,
                        predecessor,
                        ..
                    },
            } if lookup.purpose == LookupPurpose::Join
                && self.config.is_consistent()
                && successors.first().is_some_and(|n| n.addr == self.me.addr) =>
            {
                // We are a member already (we restarted on our address, and members stay
                // members under `consistent`): our successor has us as its predecessor, so no
                // handoff has to make room for us. We take our place at once; where our range
                // starts is confirmed by `check_predecessor` before we ask for its lease, and
                // the lease's catch-up brings the data back.
                self.lookups.pending.remove(&id);
                self.rejoin_as_member(now, successors, predecessor);
            }
            Message::FindSuccessorReply {
                lookup: Lookup::Found { successors, .. },
            } => {
                // Under `consistent` the members that are down stay in the list (stabilize
                // skips them); under `available` they are no successors.
                let consistent = self.config.is_consistent();
                let live: Vec<NodeRef> = successors
                    .into_iter()
                    .filter(|n| consistent || !self.is_dead(&n.addr))
                    .collect();
                self.finish_lookup(now, id, live);
            }
            Message::FindSuccessorReply {
                lookup: Lookup::Closer { node },
            } => {
                if now >= lookup.deadline || node.addr == from {
                    self.fail_lookup(now, id);
                } else if self.is_dead(&node.addr) {
                    // `from` has not noticed that the step it names is gone: go around it.
                    self.lookup_detour(now, id, from, node);
                } else if node.addr == self.me.addr {
                    // We are the closest known node: our own successor list answers.
                    let list = self.routing.successors().to_vec();
                    self.finish_lookup(now, id, list);
                } else {
                    self.lookup_step(now, id, node, from);
                }
            }
            // A step a peer named that cannot answer (not in a ring: it restarted and is
            // joining itself) is gone for this lookup as a dead one is: go around it.
            _ => match lookup.asking {
                Some((node, via)) if node.addr == from => self.lookup_detour(now, id, via, node),
                _ => self.fail_lookup(now, id),
            },
        }
    }

    /// The lookup's next step: asks `node`, which `named_by` named, for the target's
    /// successor (at most `max_hops` steps, or the lookup fails).
    fn lookup_step(&mut self, now: Millis, id: u64, node: NodeRef, named_by: NodeAddr) {
        let max_hops = self.config.max_hops;
        let Some(lookup) = self.lookups.pending.get_mut(&id) else {
            return;
        };
        if lookup.hops >= max_hops {
            return self.fail_lookup(now, id);
        }
        lookup.hops += 1;
        lookup.asking = Some((node, named_by));
        lookup.around = None;
        let msg = Message::FindSuccessor { id: lookup.target };
        self.send_rpc(now, node.addr, msg, RpcKind::Lookup(id), 0);
    }

    /// A step of an iterative lookup failed, or was named though it is down: asks `via`, the
    /// node that named `around` as the next step, for the node it knows just before `around`
    /// (a lookup of `around`'s own id), and the lookup goes on from there. This is the
    /// remedy of the Chord paper (SIGCOMM'01 section 5.3: a lookup whose next hop failed goes
    /// on through the next-best predecessor), as `send_detour` does for client operations.
    /// Without it a join retried through the same bootstrap walks into the same dead finger
    /// until the bootstrap notices, which under `consistent` (members that are down stay in
    /// the ring) it may never do. Fails the lookup past its deadline or `max_hops` steps.
    pub(super) fn lookup_detour(&mut self, now: Millis, id: u64, via: NodeAddr, around: NodeRef) {
        let max_hops = self.config.max_hops;
        let Some(lookup) = self.lookups.pending.get_mut(&id) else {
            return;
        };
        if now >= lookup.deadline || lookup.hops >= max_hops || via == self.me.addr {
            return self.fail_lookup(now, id);
        }
        lookup.hops += 1;
        lookup.asking = None;
        lookup.around = Some(around);
        let msg = Message::FindSuccessor { id: around.id };
        self.send_rpc(now, via, msg, RpcKind::Lookup(id), 0);
    }

    /// `consistent`: we restarted as a member the ring still lists (see `on_lookup_reply`).
    pub(super) fn rejoin_as_member(
        &mut self,
        now: Millis,
        successors: Vec<NodeRef>,
        predecessor: Option<NodeRef>,
    ) {
        let list: Vec<NodeRef> = successors
            .into_iter()
            .filter(|n| n.addr != self.me.addr)
            .collect();
        for n in &list {
            self.remember_seed(n.addr);
        }
        self.set_successor_list(now, list);
        self.succ_wrapped = false;
        self.predecessor = predecessor.filter(|p| p.addr != self.me.addr);
        self.pred_incarnation = None;
        self.phase = Phase::Active;
        self.bootstrap = None;
        self.timers.stop(Timer::JoinRetry);
        self.stats.rejoined_as_member += 1;
        if !self.config.store_kept_copies {
            // A member back on an empty store: what it acknowledged before is gone, so its
            // copies vouch for nothing until refilled (`trust.rs`). A node joining for the
            // first time acknowledged nothing and is trusted.
            self.trust.lose(now);
        }
        self.timers.set(Timer::Stabilize, now);
        self.timers.set(Timer::CheckPredecessor, now);
        self.stabilize(now);
        self.check_predecessor(now);
    }

    pub(super) fn finish_lookup(&mut self, now: Millis, id: u64, successors: Vec<NodeRef>) {
        let Some(lookup) = self.lookups.pending.remove(&id) else {
            return;
        };
        // A node that left since the answer was written is no successor of anyone: a late
        // reply (from the leaving node itself, even) must not bring it back into our lists,
        // where `consistent` would keep it for good as a silent member.
        let mut successors = successors;
        self.drop_gone(now, &mut successors);
        match lookup.purpose {
            LookupPurpose::Join => {
                let list: Vec<NodeRef> = successors
                    .into_iter()
                    .filter(|n| n.addr != self.me.addr)
                    .collect();
                if list.is_empty() {
                    self.retry_join(now);
                    return;
                }
                self.set_successor_list(now, list);
                self.succ_wrapped = false;
                self.phase = Phase::Joined;
                self.bootstrap = None;
                self.timers.set(Timer::Stabilize, now); // notify the successor at once
                self.stabilize(now);
                if let (Some(_), Some(s)) = (&self.members, self.routing.successors().first().copied()) {
                    // One-hop: copy the successor's table, a page at a time.
                    self.send_rpc(
                        now,
                        s.addr,
                        Message::GetMembers { after: Id::ZERO },
                        RpcKind::Members,
                        0,
                    );
                }
            }
            LookupPurpose::Rejoin => {
                let list: Vec<NodeRef> = successors
                    .into_iter()
                    .filter(|n| n.addr != self.me.addr)
                    .collect();
                if self.routing.successors().is_empty() && !list.is_empty() {
                    self.set_successor_list(now, list);
                    self.succ_wrapped = false;
                    self.timers.set(Timer::Stabilize, now);
                }
            }
            LookupPurpose::Finger(i) => {
                self.lookups.finger_busy = false;
                let owner = successors.into_iter().next().filter(|n| n.addr != self.me.addr);
                self.routing.set_finger(i, owner);
            }
            LookupPurpose::Merge(via) => {
                // Merged: `via`'s ring is ours now. Otherwise it stays departed, and probed
                // until it is a neighbour again or `departed_ttl_ms` passes: its answer alone
                // cannot tell one ring from two (its tables may still name our nodes).
                if self.adopt_closer_successor(now, successors) {
                    self.live.departed.remove(&via);
                }
            }
        }
    }

    pub(super) fn fail_lookup(&mut self, now: Millis, id: u64) {
        let Some(lookup) = self.lookups.pending.remove(&id) else {
            return;
        };
        match lookup.purpose {
            LookupPurpose::Join => self.retry_join(now),
            LookupPurpose::Rejoin => {}
            LookupPurpose::Finger(_) => self.lookups.finger_busy = false,
            LookupPurpose::Merge(_) => {}
        }
    }

    /// The join lookup failed: ask the bootstrap node again (on the next stabilize round).
    pub(super) fn retry_join(&mut self, now: Millis) {
        if self.bootstrap.is_some() {
            // Try again after a pause, so an unreachable bootstrap node is not hammered.
            self.phase = Phase::Joining;
            self.timers
                .set(Timer::JoinRetry, now + self.config.rpc_timeout_ms);
        }
    }

    /// Sends the join lookup to the bootstrap node when a retry is due.
    pub(super) fn join_if_due(&mut self, now: Millis) {
        let (Some(_), Some(at)) = (self.bootstrap, self.timers.get(Timer::JoinRetry)) else {
            return;
        };
        if now < at || self.phase != Phase::Joining {
            return;
        }
        // Rotate through the bootstrap node and every peer a lookup has named so far, so one
        // departed bootstrap node does not strand the join.
        let Some(via) = self.live.seeds.pop_front() else {
            return;
        };
        self.live.seeds.push_back(via);
        self.timers.stop(Timer::JoinRetry);
        self.lookup_own_id(now, via, LookupPurpose::Join);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chord::test_support::node;
    use crate::chord::Config;
    use chordkv_protocol::in_half_open;

    /// What every finger whose start lies within the successor list must point at: the first
    /// member at or after its start not presumed down (`None` outside the list).
    fn expected(n: &Node, i: usize) -> Option<Option<NodeRef>> {
        let start = n.routing.finger_start(i);
        let succs = n.routing.successors();
        let mut prev = n.me.id;
        for (k, s) in succs.iter().enumerate() {
            if in_half_open(&start, &prev, &s.id) {
                return Some(succs[k..].iter().find(|m| !n.is_dead(&m.addr)).copied());
            }
            prev = s.id;
        }
        None
    }

    fn assert_fingers(n: &Node, what: &str) {
        let mut inside = 0;
        for i in 0..n.routing.finger_count() {
            if let Some(owner) = expected(n, i) {
                inside += 1;
                assert_eq!(n.routing.finger(i), owner, "{what}: finger {i}");
            }
        }
        assert!(inside > 3, "{what}: the list covers fingers");
    }

    /// `consistent`: every predecessor we know is down, so `check_predecessor` asks the
    /// farthest live member of the table, whose list may be older than ours: it names a member
    /// farther back as the one before us. That answer neither moves our predecessor back (our
    /// range would swallow our down predecessor's) nor confirms our range.
    #[test]
    fn an_older_view_from_farther_back_does_not_move_the_predecessor_back() {
        let (t, e, d, me) = (node(10), node(20), node(30), node(40));
        let mut n = Node::new(me, Config::with_stabilize_interval_ms(100), 0);
        n.bootstrap(0, Some(d), &[t], |_| None, None);
        n.live.dead.insert(d.addr, 10_000);
        n.live.dead.insert(e.addr, 10_000);
        n.pred_confirmed = None;
        // T's list runs to us through E (down), without D.
        n.on_predecessor_neighbors(t.addr, vec![], vec![e, me]);
        assert_eq!(n.predecessor(), Some(d), "not moved back to E");
        assert!(!n.range_confirmed());
        // A list that names D before us confirms it.
        n.on_predecessor_neighbors(t.addr, vec![], vec![e, d, me]);
        assert_eq!(n.predecessor(), Some(d));
        assert!(n.range_confirmed());
    }

    /// The node `check_predecessor` asked is known by its id when its answer arrives after it
    /// left our tables (a vnode's id is not the one its address gives): it becomes our
    /// predecessor with that id, not a guess.
    #[test]
    fn a_predecessor_answer_from_a_node_no_longer_in_our_tables_keeps_its_id() {
        let (other, t, me) = (node(5), node(30), node(40));
        let mut n = Node::new(me, Config::with_stabilize_interval_ms(100), 0);
        n.bootstrap(0, None, &[t], |_| None, None);
        n.config.partition_policy = crate::chord::config::PartitionPolicy::Consistent;
        n.check_predecessor(10);
        assert_eq!(n.pred_asked, Some(t));
        n.routing.set_successors([other], 8);
        n.on_predecessor_neighbors(t.addr, vec![], vec![me, other]);
        assert_eq!(n.predecessor(), Some(t));
    }

    /// `fix_fingers` passes over the fingers inside the successor list when nothing they
    /// depend on changed since it last set them all, and sets them again after any change:
    /// of the list, of which members are presumed down, or of a finger by another path.
    #[test]
    fn fingers_inside_the_successor_list_follow_every_change_of_what_they_depend_on() {
        let mut n = Node::new(node(0), Config::with_stabilize_interval_ms(100), 0);
        n.create(0);
        // The last member is our predecessor: every finger resolves here, none by a lookup.
        n.predecessor = Some(node(70_000));
        let round = |n: &mut Node| {
            let now = n.last_now + 50;
            n.last_now = now;
            n.fix_fingers(now);
            assert!(!n.lookups.finger_busy, "no finger needs a lookup here");
        };
        n.routing
            .set_successors([node(5), node(100), node(1000), node(70_000)], 8);
        round(&mut n);
        assert_fingers(&n, "first round");
        assert!(n.lookups.finger_pass.is_some());
        round(&mut n);
        assert_fingers(&n, "nothing changed");

        // Another path changed a finger (a member presumed down is dropped from them).
        n.routing.forget_finger(node(100).addr);
        assert_ne!(n.routing.finger(5), Some(node(100)));
        round(&mut n);
        assert_fingers(&n, "a finger forgotten");
        assert_eq!(n.routing.finger(5), Some(node(100)));

        // A member presumed down: its fingers go to the next live one.
        n.live.dead.insert(node(100).addr, n.last_now + 10_000);
        round(&mut n);
        assert_fingers(&n, "a member down");
        assert_eq!(n.routing.finger(5), Some(node(1000)));
        n.live.dead.clear();
        round(&mut n);
        assert_fingers(&n, "the member up again");
        assert_eq!(n.routing.finger(5), Some(node(100)));

        // A new member in the list.
        n.routing
            .set_successors([node(5), node(50), node(100), node(1000), node(70_000)], 8);
        round(&mut n);
        assert_fingers(&n, "a member joined");
        assert_eq!(n.routing.finger(5), Some(node(50)));

        // A list out of ring order (as a stale answer may leave it for a round) is walked.
        n.routing.set_successors([node(1000), node(100), node(70_000)], 8);
        round(&mut n);
        assert_fingers(&n, "a list out of order");
        assert!(n.lookups.finger_pass.is_none());
    }
}
