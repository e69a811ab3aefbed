//! Leases on key ranges: how a node knows, under the partition policy `consistent`, that it
//! may serve a range alone, and how a write of an earlier server of the range can never win.
//!
//! A range `(start, P]` belongs to the member `P`, its *primary*, and is kept by the range's
//! *preference list*: `P` and the next `replicas` members of the ring (members that are down
//! but have not left count). The node that serves the range (its *holder*: `P`, or the first
//! live member after it while `P` is down, a *stand-in*) must hold a lease, granted by a
//! majority of the preference list (itself included):
//!
//! ```text
//!   holder H ── LEASE(P, start, H) ──► each other member G of the preference list
//!            ◄── granted, fence, clock ── G promises: no lease on P's range to anyone else
//!                                         until now_G + lease_ms
//!   majority granted at H's clock t  ⇒  H serves the range until t + lease_ms - margin
//! ```
//!
//! - **One holder at a time.** Two majorities of one list share a member, and a member
//!   promises one holder at a time, so two nodes never hold valid leases on one range. A holder
//!   renews every stabilize period; a holder that is paused or cut off cannot renew, its lease
//!   runs out on its own clock, and only then can another member's promises be had. This is
//!   what stops a paused or partitioned minority from serving: within `lease_ms` of losing its
//!   majority it refuses reads and writes, with the reason.
//! - **Fencing.** A holder stamps versions only up to `t + lease_ms - max_clock_offset_ms` on
//!   its clock (`fence_ms`). A member that grants a new holder reports the end of its last
//!   promise to another holder (`fence`, on its own clock, at most `max_clock_offset_ms` off
//!   the old holder's), and the new holder moves its version clock past it before it stamps.
//!   So every version an earlier holder stamped (even one applied late, after a pause, or
//!   delivered late by TCP after a partition heals) is below every version the new holder
//!   stamps, and the merge by version discards it. Liveness and safety depend on clocks only
//!   through the bound `max_clock_offset_ms` and a drift margin (`DRIFT_MARGIN_PER_MILLE`).
//! - **Catching up.** A holder that gains a lease it did not hold a moment before (after a
//!   start, a restart, a pause, a partition, or as a stand-in) first synchronises the range with
//!   the other members of its preference list (anti-entropy, `sync.rs`). Writes are
//!   acknowledged only once a majority stored them, so the grantors and it, a majority, hold
//!   every write acknowledged by any earlier holder, as long as no copy lost its store; copies
//!   that did are *untrusted*, and the catch-up waits for enough trusted ones (`trust.rs`).
//!   Only then does it serve, so it never answers from a stale copy.
//!
//! Under the partition policy `available` there are no leases: the live ring serves.

use chordkv_protocol::NodeAddr;
use std::collections::BTreeMap;

use chordkv_protocol::{in_half_open, ErrorCode, Id, Message, NodeRef};

use super::node::{Millis, Node, Phase, ReplyTo};
use super::rpc::RpcKind;

/// Of each lease period, the part a holder does not count on, for clocks that run at
/// slightly different rates (0.2% here; quartz drift is 10-100 ppm).
const DRIFT_MARGIN_PER_MILLE: u64 = 2;
/// Promises that ran out this many lease periods ago are forgotten (their fences are long
/// behind every clock).
const PROMISE_MEMORY_LEASES: u64 = 100;

/// A lease this node holds or is asking for, on the range of `primary`.
#[derive(Clone, Debug)]
pub(super) struct Held {
    pub primary: NodeRef,
    /// The range is `(start, primary]`.
    pub start: Id,
    /// Valid (the range may be served) while our clock is before this.
    pub valid_until: Millis,
    /// Versions stamped under the lease stay at or below this millisecond.
    pub fence_ms: Millis,
    /// Whether the range was synchronised with a majority since the lease was gained.
    pub caught_up: bool,
    /// The id of the catch-up sync round in flight, if any.
    pub catch_up: Option<u64>,
    /// A failed catch-up is tried again from this time.
    pub catch_up_retry_at: Millis,
    /// The members that granted the last successful round (the catch-up targets).
    pub grantors: Vec<NodeRef>,
    pub round: Option<Round>,
    /// Why the lease is not valid, as the last round or catch-up saw it.
    pub problem: Option<String>,
    /// A store's error (ours, or a copy's with its address), when the last catch-up failed on
    /// it: requests are refused with `StoreFailed` and this text (a store's fault, not the
    /// ring's).
    pub store_error: Option<String>,
}

/// One round of asking the preference list.
#[derive(Clone, Debug)]
pub(super) struct Round {
    pub id: u64,
    pub sent_at: Millis,
    /// Grants needed from other members (a majority of the list, minus this node).
    pub needed: usize,
    pub waiting: Vec<NodeAddr>,
    pub granted: Vec<NodeRef>,
    /// Members that refused, with the holder they promised.
    pub refused: Vec<(NodeAddr, Option<NodeRef>)>,
    pub unreachable: Vec<NodeAddr>,
}

/// A promise this node gave: no other holder for any key of `(start, end]` until `until`.
#[derive(Clone, Copy, Debug)]
struct Promise {
    holder: NodeRef,
    start: Id,
    end: Id,
    until: Millis,
    /// The fence this holder was given (reported again on its renewals).
    fence: Millis,
}

/// Whether the ring ranges `(a, b]` and `(c, d]` share a key: one holds the other's end.
fn overlap(a: &Id, b: &Id, c: &Id, d: &Id) -> bool {
    in_half_open(b, c, d) || in_half_open(d, a, b)
}

/// Leases held and promises given (partition policy `consistent`).
#[derive(Debug, Default)]
pub(super) struct Leases {
    /// By the id of the range's primary.
    held: BTreeMap<Id, Held>,
    /// By the id of the range's primary. A request is refused while any promise to another
    /// holder on an overlapping range runs (views of the ring may disagree on where a range
    /// starts, so promises are checked by keys, not by primary).
    promised: BTreeMap<Id, Promise>,
    next_round: u64,
}

impl Leases {
    pub fn held(&self, primary: &Id) -> Option<&Held> {
        self.held.get(primary)
    }

    pub fn held_mut(&mut self, primary: &Id) -> Option<&mut Held> {
        self.held.get_mut(primary)
    }

    /// Whether the lease on `primary`'s range is valid and caught up at `now`.
    pub fn serves(&self, primary: &Id, now: Millis) -> bool {
        self.valid_fence(primary, now).is_some()
    }

    /// The fence of our lease on `primary`'s range (ms) if the lease lets us serve it at `now`
    /// ([`Leases::serves`]); what a write served in the same call is stamped under.
    pub fn valid_fence(&self, primary: &Id, now: Millis) -> Option<Millis> {
        self.held
            .get(primary)
            .filter(|h| h.caught_up && now < h.valid_until)
            .map(|h| h.fence_ms)
    }

    /// A holder other than `me` this node promised a range overlapping `(start, end]` to,
    /// until after `now`.
    fn promised_elsewhere(&self, start: &Id, end: &Id, me: &NodeAddr, now: Millis) -> Option<NodeRef> {
        self.promised
            .values()
            .find(|p| p.holder.addr != *me && p.until > now && overlap(&p.start, &p.end, start, end))
            .map(|p| p.holder)
    }

    /// The fence a new holder `holder` of `(start, end]` must stamp above: the end of every
    /// promise this node gave another holder on an overlapping range, and the fences it gave
    /// `holder` before.
    fn fence_for(&self, start: &Id, end: &Id, holder: &NodeAddr) -> Millis {
        self.promised
            .values()
            .filter(|p| overlap(&p.start, &p.end, start, end))
            .map(|p| {
                if p.holder.addr == *holder {
                    p.fence
                } else {
                    p.until
                }
            })
            .max()
            .unwrap_or(0)
    }

    /// The primaries of the leases held or wanted.
    pub fn primaries(&self) -> Vec<Id> {
        self.held.keys().copied().collect()
    }

    /// Stops holding (and renewing) the lease on `primary`'s range. Until it would have run
    /// out, this node treats it as a promise to itself: it grants nobody else the range before
    /// then, and reports its fence to the next holder.
    pub fn release(&mut self, primary: &Id, me: NodeRef) {
        if let Some(h) = self.held.remove(primary) {
            let until = h.valid_until.max(h.fence_ms);
            let keep = self.promised.get(primary).is_none_or(|p| p.until <= until);
            if until > 0 && keep {
                self.promised.insert(
                    *primary,
                    Promise {
                        holder: me,
                        start: h.start,
                        end: h.primary.id,
                        until,
                        fence: 0,
                    },
                );
            }
        }
    }

    /// Every lease must catch up again (the store lost its data).
    pub fn invalidate_catch_up(&mut self) {
        for h in self.held.values_mut() {
            h.caught_up = false;
            h.catch_up = None;
        }
    }

    /// Leases held, for stats: (valid and caught up, all).
    pub fn counts(&self, now: Millis) -> (usize, usize) {
        let valid = self
            .held
            .values()
            .filter(|h| h.caught_up && now < h.valid_until)
            .count();
        (valid, self.held.len())
    }
}

impl Node {
    /// Starts a lease round on `primary`'s range `(start, primary]` unless one is in flight or
    /// the lease was renewed less than a stabilize period ago. Its preference list comes from
    /// our view of the ring.
    pub(super) fn renew_lease(&mut self, now: Millis, primary: NodeRef, start: Id) {
        let Some(pref) = self.preference_list(&primary) else {
            return;
        };
        let me = self.me;
        if primary.addr == me.addr && !self.range_confirmed() {
            // Where our range starts is not confirmed yet (`check_predecessor`): a lease on a
            // range we only think is ours could overlap a neighbour's.
            let h = self.lease_entry(primary, start);
            h.problem = Some("this node has not confirmed where its range starts yet".to_string());
            return;
        }
        if let Some(other) = self.leases.promised_elsewhere(&start, &primary.id, &me.addr, now) {
            let h = self.lease_entry(primary, start);
            h.problem = Some(format!(
                "this node promised the range to {} (its lease has not run out)",
                other.addr
            ));
            return;
        }
        let stabilize = self.config.stabilize_interval_ms;
        let lease_ms = self.config.lease_ms();
        let h = self.lease_entry(primary, start);
        if h.start != start {
            // The range grew or shrank (a join, a leave, a forgotten member): what it holds
            // now was not all ours, so synchronise it again before serving.
            h.start = start;
            h.caught_up = false;
            h.catch_up = None;
        }
        if h.round.is_some() {
            return;
        }
        // Renew once a stabilize period: well inside the lease.
        if h.valid_until > now && h.valid_until.saturating_sub(now) > lease_ms.saturating_sub(stabilize) {
            if !h.caught_up && h.catch_up.is_none() && now >= h.catch_up_retry_at {
                h.catch_up_retry_at = now + stabilize;
                self.start_catch_up(now, primary.id);
            }
            return;
        }
        let others: Vec<NodeRef> = pref.iter().copied().filter(|n| n.addr != me.addr).collect();
        let needed = (self.copies_of(&pref) / 2 + 1).saturating_sub(1);
        let id = self.leases.next_round;
        self.leases.next_round += 1;
        let h = self.leases.held.get_mut(&primary.id).expect("entry made above"); // faulty code
        h.round = Some(Round {
            id,
            sent_at: now,
            needed,
            waiting: others.iter().map(|n| n.addr).collect(),
            granted: Vec::new(),
            refused: Vec::new(),
            unreachable: Vec::new(),
        });
        if needed == 0 || others.is_empty() {
            // A preference list of one: this node alone is the majority. Or no other copy is
            // known to ask (our successors are all on our host): the round ends now without a
            // majority, and the next renewal tries again.
            return self.finish_lease_round(now, primary.id);
        }
        for n in others {
            let msg = Message::Lease(Box::new(chordkv_protocol::LeaseRequest {
                primary,
                start,
                holder: me,
            }));
            self.send_rpc(now, n.addr, msg, RpcKind::Lease(primary.id, id), 0);
        }
    }

    fn lease_entry(&mut self, primary: NodeRef, start: Id) -> &mut Held {
        self.leases.held.entry(primary.id).or_insert_with(|| Held {
            primary,
            start,
            valid_until: 0,
            fence_ms: 0,
            caught_up: false,
            catch_up: None,
            catch_up_retry_at: 0,
            grantors: Vec::new(),
            round: None,
            problem: Some("no lease yet".to_string()),
            store_error: None,
        })
    }

    /// A member answered (or did not: `reply` is `None`) a lease request of round `round`.
    pub(super) fn on_lease_reply(
        &mut self,
        now: Millis,
        primary: Id,
        round: u64,
        from: NodeAddr,
        reply: Option<Message>,
    ) {
        let mut fence_seen = None;
        let mut clock_seen = None;
        {
            let Some(h) = self.leases.held.get_mut(&primary) else {
                return;
            };
            let Some(r) = h.round.as_mut().filter(|r| r.id == round) else {
                return;
            };
            r.waiting.retain(|a| *a != from);
            match reply {
                Some(Message::LeaseReply {
                    granted: true,
                    fence,
                    clock,
                    ..
                }) => {
                    let node = NodeRef::guess(from);
                    let node = self
                        .routing
                        .known_nodes()
                        .find(|n| n.addr == from)
                        .copied()
                        .unwrap_or(node);
                    r.granted.push(node);
                    fence_seen = Some(fence);
                    clock_seen = Some(clock);
                }
                Some(Message::LeaseReply { holder, clock, .. }) => {
                    r.refused.push((from, holder));
                    clock_seen = Some(clock);
                }
                _ => r.unreachable.push(from),
            }
        }
        if let Some(clock) = clock_seen {
            // A clock from the future is not adopted (it would pin our versions ahead).
            if self.version_is_plausible(now, clock) {
                self.clock.observe(clock);
            }
        }
        if let Some(fence) = fence_seen.filter(|f| *f > 0) {
            // Every version the earlier holder stamped is at or below this millisecond.
            self.clock.observe(fence.saturating_mul(1 << 16) | 0xffff);
        }
        self.finish_lease_round(now, primary);
    }

    /// Ends the round once it has a majority, or once every member answered without one.
    fn finish_lease_round(&mut self, now: Millis, primary: Id) {
        let lease_ms = self.config.lease_ms();
        let offset = self.config.max_clock_offset_ms;
        let Some(h) = self.leases.held.get_mut(&primary) else {
            return;
        };
        let Some(r) = h.round.as_ref() else { return };
        if r.granted.len() >= r.needed {
            let r = h.round.take().expect("checked above"); // faulty code
            let continuous = h.caught_up && now < h.valid_until;
            let margin = lease_ms * DRIFT_MARGIN_PER_MILLE / 1000 + 1;
            h.valid_until = r.sent_at + lease_ms - margin;
            h.fence_ms = (r.sent_at + lease_ms).saturating_sub(offset);
            h.grantors = r.granted;
            h.problem = None;
            if !continuous {
                h.caught_up = false;
                h.problem = Some("catching up with the other copies".to_string());
                // A catch-up still in flight began before this lease: what it read may predate
                // writes of the holder before us (read before a pause, answered late). Start
                // over; its result is ignored when it ends.
                h.catch_up = None;
            }
            let start_catch_up = !h.caught_up && h.catch_up.is_none();
            if start_catch_up {
                self.start_catch_up(now, primary);
            }
        } else if r.waiting.len() + r.granted.len() < r.needed {
            let r = h.round.take().expect("checked above"); // faulty code
            let mut why = format!(
                "no quorum: {} of the {} other copies of the range must grant a lease, {} did",
                r.needed,
                r.granted.len() + r.refused.len() + r.unreachable.len() + r.waiting.len(),
                r.granted.len()
            );
            if !r.unreachable.is_empty() {
                let list: Vec<String> = r.unreachable.iter().map(|a| a.to_string()).collect();
                why.push_str(&format!(", unreachable: {}", list.join(" ")));
            }
            for (a, holder) in &r.refused {
                match holder {
                    Some(hd) => why.push_str(&format!(", {a} promised it to {}", hd.addr)),
                    None => why.push_str(&format!(", {a} refused")),
                }
            }
            h.problem = Some(why);
        }
    }

    /// A catch-up round ended; `ok`: enough trusted copies are synchronised with us
    /// (`trust.rs`). `store_error`: a store's error (ours, or a copy's), when a step failed on
    /// it; `why`: why it failed otherwise.
    pub(super) fn on_catch_up_done(
        &mut self,
        primary: Id,
        round: u64,
        ok: bool,
        store_error: Option<String>,
        why: Option<String>,
    ) {
        let Some(h) = self.leases.held.get_mut(&primary) else {
            return;
        };
        if h.catch_up != Some(round) {
            return;
        }
        h.catch_up = None;
        h.store_error = if ok { None } else { store_error };
        if ok {
            h.caught_up = true;
            h.problem = None;
        } else {
            h.problem =
                Some(why.unwrap_or_else(|| "catching up failed: a store operation failed".to_string()));
        }
    }

    /// A member asks us for a lease on `primary`'s range for `holder`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn handle_lease(
        &mut self,
        now: Millis,
        to: ReplyTo,
        rid: u64,
        primary: NodeRef,
        start: Id,
        holder: NodeRef,
    ) {
        let clock = self.clock.current();
        let refuse = |holder| Message::LeaseReply {
            granted: false,
            holder,
            fence: 0,
            clock,
        };
        if matches!(self.phase, Phase::Idle | Phase::Joining | Phase::Left) || !self.config.is_consistent() {
            return self.reply(to, rid, refuse(None));
        }
        // The asker is alive.
        self.live.dead.remove(&holder.addr);
        let me = self.me;
        let end = primary.id;
        // The asker must be in the range's preference list as we see it, and so must we: two
        // views of the ring that disagree must not make two majorities.
        let in_pref = |list: &Option<Vec<NodeRef>>, a: NodeAddr| {
            list.as_ref().is_some_and(|l| l.iter().any(|n| n.addr == a))
        };
        let pref = self.preference_list(&primary);
        if !in_pref(&pref, me.addr) || !in_pref(&pref, holder.addr) {
            return self.reply(to, rid, refuse(None));
        }
        if let Some(other) = self.leases.promised_elsewhere(&start, &end, &holder.addr, now) {
            return self.reply(to, rid, refuse(Some(other)));
        }
        // A range overlapping one we serve ourselves: nobody else may have it.
        let mine: Vec<(Id, Millis, Millis)> = self
            .leases
            .held
            .values()
            .filter(|h| overlap(&h.start, &h.primary.id, &start, &end))
            .map(|h| (h.primary.id, h.valid_until, h.fence_ms))
            .collect();
        if holder.addr != me.addr {
            if mine.iter().any(|(_, until, _)| *until > now) {
                return self.reply(to, rid, refuse(Some(me)));
            }
            // The range's primary, alive and asked by a stand-in, keeps its range.
            if primary.addr == me.addr && self.phase == Phase::Active {
                return self.reply(to, rid, refuse(Some(me)));
            }
        }
        let lease_ms = self.config.lease_ms();
        let until = now + lease_ms;
        let mut fence = self.leases.fence_for(&start, &end, &holder.addr);
        if holder.addr != me.addr {
            // Versions we stamped ourselves as an earlier holder are fenced too; and we no
            // longer hold those leases (they ran out): stop trying to.
            for (p, _, our_fence) in mine {
                fence = fence.max(our_fence);
                self.leases.release(&p, me);
            }
            fence = fence.max(self.leases.fence_for(&start, &end, &holder.addr));
        }
        self.leases.promised.insert(
            primary.id,
            Promise {
                holder,
                start,
                end,
                until,
                fence,
            },
        );
        let forget_before = now.saturating_sub(PROMISE_MEMORY_LEASES * lease_ms);
        self.leases.promised.retain(|_, p| p.until >= forget_before);
        self.reply(
            to,
            rid,
            Message::LeaseReply {
                granted: true,
                holder: None,
                fence,
                clock,
            },
        );
    }

    /// Whether a version (or a clock value) is no further ahead of our clock than the offset
    /// bound allows: a wrong clock or a forged frame cannot pin a key with it.
    pub(super) fn version_is_plausible(&self, now: Millis, version: u64) -> bool {
        let limit = now.saturating_add(self.config.max_clock_offset_ms);
        version >> 16 <= limit
    }

    /// The error for a request this node cannot serve without a valid lease on `primary`.
    pub(super) fn no_lease_error(&self, primary: &Id, hops: u16) -> Message {
        let held = self.leases.held(primary);
        if let Some(e) = held.and_then(|h| h.store_error.clone()) {
            return Message::Error {
                code: ErrorCode::StoreFailed,
                hops,
                text: format!("not serving the key's range: catching up failed: {e}"),
            };
        }
        let why = self
            .leases
            .held(primary)
            .and_then(|h| h.problem.clone())
            .unwrap_or_else(|| "no lease on the range yet".to_string());
        Message::Error {
            code: ErrorCode::NotReady,
            hops,
            text: format!("not serving the key's range: {why}"),
        }
    }
}

impl Node {
    /// Keeps the leases this node needs (`consistent`): on its own range while it serves it,
    /// and as a stand-in on the range of a predecessor that is down while it and every
    /// predecessor between are (see `replication.rs`); the others are released.
    pub(super) fn maintain_leases(&mut self, now: Millis) {
        if !self.config.is_consistent() {
            return;
        }
        let serving = match self.phase {
            Phase::Active => true,
            Phase::Leaving => !self.handoff.leave.as_ref().is_some_and(|l| l.handed_over),
            _ => false,
        };
        if serving {
            let (me, start) = self.own_range();
            self.renew_lease(now, me, start);
        }
        let preds = self.predecessors();
        for primary in self.leases.primaries() {
            if primary == self.me.id {
                if !serving {
                    let me = self.me;
                    self.leases.release(&primary, me);
                }
                continue;
            }
            let mut keep = None;
            for k in 0..preds.len().saturating_sub(1) {
                if !self.is_host_dead(&preds[k].addr) {
                    break;
                }
                if preds[k].id == primary {
                    keep = Some((preds[k], preds[k + 1].id));
                    break;
                }
            }
            match keep {
                Some((p, start)) if serving => self.renew_lease(now, p, start),
                _ => {
                    let me = self.me;
                    self.leases.release(&primary, me);
                }
            }
        }
    }
}
