//! Anti-entropy: a primary compares its range with each replica and repairs the differences,
//! so replicas converge after missed writes and lost copies are re-created after failures.
//!
//! One round, driven by the primary of `(predecessor, self]`, per replica:
//!
//! ```text
//!   primary                                         replica
//!   digests of 64 sub-ranges ── SYNC_DIGESTS ──►    its digests, compared
//!                            ◄── differing [j..] ── (sub-ranges that differ)
//!   (key, version) of part j ── SYNC_KEYS ─────►    compared with its own
//!                            ◄── want + newer ───── (keys it lacks; items we lack)
//!   merge `newer`; send `want` ── REPLICATE ───►    merge
//! ```
//!
//! Only differing sub-ranges are listed and only differing keys move. A round that found every
//! replica equal to the primary also collects tombstones older than `tombstone_grace_ms`
//! everywhere: every copy of the range has them, so no stale copy can resurrect those keys.
//!
//! Rounds run every `anti_entropy_interval_ms`, and at the next stabilize round after the
//! predecessor or the first `replicas` successors change: that is how a new replica (after a
//! crash) or a new node (after a join) receives its copies, in the background.

use chordkv_protocol::NodeAddr;
use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use chordkv_protocol::{ErrorCode, Id, Item, Message, NodeRef};

use super::config::ANTI_ENTROPY_PARTS;
use super::node::{Millis, Node, Phase, ReplyTo};
use super::rpc::RpcKind;
use super::store_wait::StoreWait;
use super::timer::Timer;
use super::trust::catch_up_quorum;
use crate::store::{StoreError, StoreOp, StoreOutcome};

/// Why a round runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SyncPurpose {
    /// The primary's periodic round over its range (repairs; tombstone collection when clean).
    Periodic,
    /// A holder that gained a lease on `primary`'s range synchronises it with the members that
    /// granted the lease before it serves (`lease.rs`).
    CatchUp { primary: Id },
    /// `consistent`: the first live member of the preference list of a primary that is down
    /// (members stay in the ring) repairs that primary's range as the primary would, each
    /// interval (`start_stand_in_rounds`). Without it a range whose primary stayed down had no
    /// anti-entropy at all: a replica restarted empty meanwhile was never refilled, and the
    /// range was left with one copy until the next failure took it.
    StandIn { primary: Id },
}

/// A round in progress.
#[derive(Debug)]
pub(super) struct SyncRound {
    pub id: u64,
    pub purpose: SyncPurpose,
    pub start: Id,
    pub end: Id,
    pub targets: Vec<NodeRef>,
    /// Targets an exchange with failed.
    pub failed: BTreeSet<NodeAddr>,
    /// One of our own store operations failed.
    pub local_failed: bool,
    /// The error of our own store, when an operation of the round failed with one.
    pub store_error: Option<String>,
    /// Whether every other member of the range's preference list is a target (under
    /// `consistent`, members presumed down count): only then may tombstones be collected.
    pub complete: bool,
    /// Members in the range's preference list, us included (a catch-up's `n`, `trust.rs`).
    pub copies: usize,
    /// Targets that said their copy is trusted, and that it is not (`trust.rs`).
    pub trusted: BTreeSet<NodeAddr>,
    pub untrusted: BTreeSet<NodeAddr>,
    /// When the round started (our clock, ms).
    pub started_ms: Millis,
    /// Store ops and requests of the round not finished yet.
    pub outstanding: usize,
    /// Differing sub-ranges found, failed exchanges included.
    pub differences: usize,
    /// Keys repaired in either direction.
    pub repaired: u64,
    /// The version clock when the round started (for tombstone collection).
    pub clock_at_start: u64,
    /// The lowest version among our tombstones in the range when the round took its digests
    /// (`None`: none). A clean round collects tombstones only when this one is old enough:
    /// equal digests mean every copy holds the same tombstones, so when ours are all too young
    /// (or there are none) a collection would scan every copy and remove nothing.
    pub oldest_tombstone: Option<u64>,
}

/// What a store op of anti-entropy is for.
#[derive(Debug)]
pub(super) enum SyncWait {
    /// Primary: our digests of the round's range.
    RoundDigests { round: u64 },
    /// Primary: our key-version list of a differing sub-range, for `target`.
    KeysFor {
        round: u64,
        target: NodeAddr,
        start: Id,
        end: Id,
    },
    /// Primary: the values `target` wants.
    PushTo { round: u64, target: NodeAddr },
    /// Primary: merged the items a replica had newer.
    Repaired { round: u64 },
    /// Primary: collected tombstones at the end of a clean round (`own: None`), or its own
    /// alone (`collect_own_tombstones`; `own`: the count of tombstones this node had stored
    /// when it started, `Replication::tombstones_stored`, when none was in flight then).
    Collected { own: Option<u64> },
    /// Replica: our digests of `(start, end]`, to compare with the primary's (taken at
    /// `holder_ms` by a caught-up holder, or 0).
    AnswerDigests {
        to: ReplyTo,
        request_id: u64,
        start: Id,
        end: Id,
        theirs: Vec<u64>,
        holder_ms: Millis,
    },
    /// Replica: our key-version list, to compare with the primary's.
    AnswerKeys {
        to: ReplyTo,
        request_id: u64,
        theirs: Vec<(Bytes, u64)>,
    },
    /// Replica: the items we hold newer than the primary, to send back with `want`.
    AnswerItems {
        to: ReplyTo,
        request_id: u64,
        want: Vec<Bytes>,
    },
    /// Replica: tombstones collected on the primary's word.
    AnswerCollect { to: ReplyTo, request_id: u64 },
    /// Copies outside our responsibility dropped.
    StrayCollected,
}

impl SyncWait {
    /// The round a primary's step belongs to (`None` for a replica's answers).
    fn round(&self) -> Option<u64> {
        match self {
            SyncWait::RoundDigests { round }
            | SyncWait::KeysFor { round, .. }
            | SyncWait::PushTo { round, .. }
            | SyncWait::Repaired { round } => Some(*round),
            _ => None,
        }
    }
}

/// How many anti-entropy intervals a replica keeps copies of a range no primary has declared
/// to it, and how long its own view must be stable before it drops any.
const COPY_RETENTION_ROUNDS: u64 = 3;

impl Node {
    /// Starts a round if none is running and this node is a primary with replicas.
    /// Starts a round; returns false when one cannot start now (a round is running, a range is
    /// arriving, or the node is not a primary with replicas).
    pub(super) fn start_sync_round(&mut self, now: Millis) -> bool {
        let running = self
            .repl
            .syncs
            .values()
            .any(|r| r.purpose == SyncPurpose::Periodic);
        if running || self.phase != Phase::Active || !self.handoff.incoming.is_empty() {
            return false;
        }
        let Some(pred) = self.predecessor else {
            return false;
        };
        let (targets, complete) = if self.config.is_consistent() {
            let pref = self.preference_list(&self.me).unwrap_or_default();
            let others: Vec<NodeRef> = pref.into_iter().filter(|n| n.addr != self.me.addr).collect();
            let live: Vec<NodeRef> = others
                .iter()
                .copied()
                .filter(|n| !self.is_dead(&n.addr))
                .collect();
            let complete = live.len() == others.len();
            (live, complete)
        } else {
            (self.replica_targets(), true)
        };
        if targets.is_empty() {
            return false;
        }

        self.begin_round(
            now,
            SyncPurpose::Periodic,
            (pred.id, self.me.id),
            targets,
            complete,
            0,
        );
        true
    }

    /// `consistent`: starts a [`SyncPurpose::StandIn`] round over the range of each primary
    /// this node stands in for: its `k`-th predecessor (`k <= replicas`, so this node is in its
    /// preference list) presumed down with every predecessor between, as in
    /// [`Node::stand_in_range`]. The targets are the other members of that range's preference
    /// list not presumed down. The round repairs as a periodic one does (merging by version
    /// needs no lease); its digests vouch for a copy (`holder_ms`) only under a caught-up lease
    /// on the range; it never collects tombstones (the primary, which may hold older copies, is
    /// not asked) and never counts as this node's own range refilled. Returns how many started.
    pub(super) fn start_stand_in_rounds(&mut self, now: Millis) -> usize {
        if !self.config.is_consistent() || self.phase != Phase::Active || self.config.replicas == 0 {
            return 0;
        }
        let interval = self.config.anti_entropy_interval_ms;
        if self
            .repl
            .stand_in_at
            .is_some_and(|at| now < at.saturating_add(interval))
        {
            return 0;
        }
        let preds = self.predecessors();
        let mut ranges = Vec::new();
        for k in 0..preds.len().saturating_sub(1) {
            if !self.is_host_dead(&preds[k].addr) {
                break;
            }
            // A primary that left handed its range over: it is no member to stand in for.
            if !self.live.gone.contains_key(&preds[k].addr) {
                ranges.push((preds[k], preds[k + 1].id));
            }
        }
        let mut started = 0;
        for (primary, start) in ranges {
            let busy = self
                .repl
                .syncs
                .values()
                .any(|r| matches!(r.purpose, SyncPurpose::StandIn { primary: p } if p == primary.id));
            if busy {
                continue;
            }
            let targets: Vec<NodeRef> = self
                .preference_list(&primary)
                .unwrap_or_default()
                .into_iter()
                .filter(|n| {
                    n.addr != self.me.addr
                        && n.addr != primary.addr
                        && !self.is_dead(&n.addr)
                        && !self.live.gone.contains_key(&n.addr)
                })
                .collect();
            if targets.is_empty() {
                continue;
            }
            let purpose = SyncPurpose::StandIn { primary: primary.id };
            self.begin_round(now, purpose, (start, primary.id), targets, false, 0);
            started += 1;
        }
        if started > 0 {
            self.repl.stand_in_at = Some(now);
        }
        started
    }

    /// Collects this node's old tombstones (older than `tombstone_grace_ms`) in its primary
    /// range when no other host keeps a copy of the range: its preference list, counted over
    /// every successor whether live or not, is this node alone (`--replicas 0`, or a ring of
    /// one host), and under `available` no holder of copies went away. The rule of the rounds
    /// ("tombstones go once every node that may hold an older copy has them") then holds with
    /// this node alone, and without this a node with no replicas kept every tombstone for
    /// good: memory and scans grew with every key deleted. Returns whether it ran.
    pub(super) fn collect_own_tombstones(&mut self, now: Millis) -> bool {
        if self.phase != Phase::Active || !self.handoff.incoming.is_empty() {
            return false;
        }
        let interval = self.config.anti_entropy_interval_ms;
        if self
            .repl
            .own_collection_at
            .is_some_and(|at| now < at.saturating_add(interval))
        {
            return false;
        }
        let alone = self
            .preference_list(&self.me)
            .is_some_and(|list| list.iter().all(|n| n.addr.host == self.me.addr.host));
        if !alone || (!self.config.is_consistent() && self.holder_away()) {
            return false;
        }
        // The range must be known: with no predecessor, only a ring of one owns it all.
        let start = match self.predecessor {
            Some(p) => p.id,
            None if self.routing.successors().iter().all(|s| s.addr == self.me.addr) => self.me.id,
            None => return false,
        };
        let before = self
            .clock
            .current()
            .max(now.saturating_mul(1 << 16))
            .saturating_sub(self.config.tombstone_grace_ms << 16);
        let op = StoreOp::CollectTombstones {
            start,
            end: self.me.id,
            before,
        };
        self.repl.own_collection_at = Some(now);
        self.stats.tombstone_collections += 1;
        // Ops whose wait is gone (a lost store's) will never be answered: not in flight.
        let waits = &self.store.waits;
        self.repl.tombstone_ops.retain(|id| waits.get(id).is_some());
        let own = self
            .repl
            .tombstone_ops
            .is_empty()
            .then_some(self.repl.tombstones_stored);
        self.store_op(op, StoreWait::Sync(SyncWait::Collected { own }));
        true
    }

    /// Starts the catch-up of a lease just gained on `primary`'s range: a round with every
    /// other member of the range's preference list not presumed down. It completes when the
    /// trusted copies among them (and ours, if trusted) are enough to meet every acknowledged
    /// write (`trust.rs`); the lease's grantors are a majority with us, enough while no copy
    /// was lost.
    pub(super) fn start_catch_up(&mut self, now: Millis, primary: Id) {
        let Some(h) = self.leases.held(&primary) else {
            return;
        };
        let pref = self.preference_list(&h.primary).unwrap_or_else(|| vec![self.me]);
        let copies = self.copies_of(&pref);
        let mut targets: Vec<NodeRef> = pref
            .into_iter()
            .filter(|n| n.addr != self.me.addr && !self.is_dead(&n.addr))
            .collect();
        // Grantors answered a moment ago: they are alive whatever our failure detector says.
        for g in &h.grantors {
            if !targets.iter().any(|t| t.addr == g.addr) && g.addr != self.me.addr {
                targets.push(*g);
            }
        }
        let (start, end) = (h.start, h.primary.id);
        let id = self.repl.next_sync_id;
        if targets.is_empty() {
            // Nobody to catch up with: enough only when our own copy is (a list of one).
            let need = catch_up_quorum(copies, usize::from(!self.trust.trusts(&start, &end)));
            let ok = need <= usize::from(self.trust.trusts(&start, &end));
            let why = (!ok).then(|| "no other copy of the range is reachable".to_string());
            self.repl.next_sync_id += 1;
            if let Some(h) = self.leases.held_mut(&primary) {
                h.catch_up = Some(id);
            }
            return self.on_catch_up_done(primary, id, ok, None, why);
        }
        let id = self.begin_round(
            now,
            SyncPurpose::CatchUp { primary },
            (start, end),
            targets,
            false,
            copies,
        );
        if let Some(h) = self.leases.held_mut(&primary) {
            h.catch_up = Some(id);
        }
    }

    /// Starts a round of `purpose` over `(start, end]` with `targets`: takes the digests of our
    /// copy of the range (the answer sends them on, `SyncWait::RoundDigests`). `complete`:
    /// every other member of the range's preference list is a target; `copies`: the members
    /// of the list, us included (a catch-up's `n`). Returns the round's id.
    fn begin_round(
        &mut self,
        now: Millis,
        purpose: SyncPurpose,
        (start, end): (Id, Id),
        targets: Vec<NodeRef>,
        complete: bool,
        copies: usize,
    ) -> u64 {
        let id = self.repl.next_sync_id;
        self.repl.next_sync_id += 1;
        self.repl.syncs.insert(
            id,
            SyncRound {
                id,
                purpose,
                start,
                end,
                targets,
                failed: BTreeSet::new(),
                local_failed: false,
                store_error: None,
                complete,
                copies,
                trusted: BTreeSet::new(),
                untrusted: BTreeSet::new(),
                started_ms: now,
                outstanding: 1,
                differences: 0,
                repaired: 0,
                // Physical time counts too: the clock only moves with writes.
                clock_at_start: self.clock.current().max(now.saturating_mul(1 << 16)),
                oldest_tombstone: None,
            },
        );
        let op = StoreOp::Digest {
            start,
            end,
            parts: ANTI_ENTROPY_PARTS,
        };
        self.store_op(op, StoreWait::Sync(SyncWait::RoundDigests { round: id }));
        id
    }

    fn round_mut(&mut self, round: u64) -> Option<&mut SyncRound> {
        self.repl.syncs.get_mut(&round)
    }

    /// One step of the round finished; ends the round when it was the last.
    pub(super) fn sync_step_done_pub(&mut self, now: Millis, round: u64) {
        self.sync_step_done(now, round)
    }

    fn sync_step_done(&mut self, now: Millis, round: u64) {
        let Some(r) = self.round_mut(round) else { return };
        r.outstanding = r.outstanding.saturating_sub(1);
        if r.outstanding > 0 {
            return;
        }
        let r = self.repl.syncs.remove(&round).expect("checked above"); // faulty code
        self.stats.anti_entropy_rounds += 1;
        self.stats.anti_entropy_last_round_repaired = r.repaired;
        self.stats.anti_entropy_keys_repaired += r.repaired;
        if let SyncPurpose::CatchUp { primary } = r.purpose {
            // Enough trusted copies answered in full to meet every acknowledged write.
            let own = self.trust.trusts(&r.start, &r.end);
            let trusted = r.trusted.iter().filter(|a| !r.failed.contains(*a)).count() + usize::from(own);
            let need = catch_up_quorum(r.copies, r.untrusted.len() + usize::from(!own));
            let ok = !r.local_failed && trusted >= need;
            if ok {
                if primary == self.me.id {
                    self.repl.store_lost = false;
                }
                if self.trust.lost_at().is_some_and(|at| r.started_ms > at) {
                    self.trust.refilled(r.start, r.end);
                }
            }
            let why = (!ok && !r.local_failed).then(|| {
                let mut why =
                    format!("catching up failed: {trusted} of the {need} trusted copies needed answered");
                if !own {
                    why.push_str(" (this node lost its copies and is not refilled yet)");
                }
                if !r.untrusted.is_empty() {
                    let list: Vec<String> = r.untrusted.iter().map(|a| a.to_string()).collect();
                    why.push_str(&format!(", untrusted (lost their copies): {}", list.join(" ")));
                }
                if !r.failed.is_empty() {
                    let list: Vec<String> = r.failed.iter().map(|a| a.to_string()).collect();
                    why.push_str(&format!(", did not answer in full: {}", list.join(" ")));
                }
                why
            });
            return self.on_catch_up_done(primary, r.id, ok, r.store_error, why);
        }
        if let SyncPurpose::StandIn { .. } = r.purpose {
            if r.untrusted.iter().any(|a| !r.failed.contains(a)) {
                // As below: the next round makes the refilled copy trusted.
                self.repl.stand_in_at = None;
                self.timers
                    .bring_forward(Timer::AntiEntropy, now + self.config.stabilize_interval_ms);
            }
            return;
        }
        if r.failed.is_empty() && !r.local_failed {
            // Our range is as complete as our replicas' copies: refilled after a loss.
            self.repl.store_lost = false;
        }
        if r.untrusted.iter().any(|a| !r.failed.contains(a)) {
            // A copy that lost its data answered (and was repaired): a round with digests
            // equal, taken past the loss, makes it trusted again (`trust.rs`). Run the next one
            // at the next stabilize period, not a full interval later: until then the range
            // needs every other copy to fail over.
            self.timers
                .bring_forward(Timer::AntiEntropy, now + self.config.stabilize_interval_ms);
        }
        // Tombstones go only once every node that may hold an older copy has them: every
        // member of the preference list under `consistent` (`complete`), and under `available`
        // no replica that went away may be about to come back with one.
        let holders_all_here = r.complete && !self.holder_away();
        let before = r
            .clock_at_start
            .saturating_sub(self.config.tombstone_grace_ms << 16);
        let old_enough = r.oldest_tombstone.is_some_and(|v| v <= before);
        if r.differences == 0 && r.failed.is_empty() && !r.local_failed && holders_all_here && old_enough {
            // Every replica holds exactly what we hold: old tombstones can go everywhere.
            let (start, end) = (r.start, r.end);
            self.stats.tombstone_collections += 1;
            for t in &r.targets {
                let msg = Message::CollectTombstones { start, end, before };
                self.send_rpc(now, t.addr, msg, RpcKind::Collect, 0);
            }
            let op = StoreOp::CollectTombstones { start, end, before };
            self.store_op(op, StoreWait::Sync(SyncWait::Collected { own: None }));
        }
    }

    /// A failed exchange (with `target`; `None`: a step of ours) counts as a difference (no
    /// tombstone collection this round; a catch-up needs every target).
    pub(super) fn sync_rpc_failed(&mut self, now: Millis, round: u64, target: Option<NodeAddr>) {
        if let Some(r) = self.round_mut(round) {
            r.differences += 1;
            match target {
                Some(t) => {
                    r.failed.insert(t);
                }
                None => r.local_failed = true,
            }
        }
        self.sync_step_done(now, round);
    }

    /// `from` answered a step of the round with something other than its reply (an error): the
    /// exchange failed; a store failure over there is kept as the round's store error.
    pub(super) fn sync_reply_refused(&mut self, now: Millis, round: u64, from: NodeAddr, msg: &Message) {
        if let (
            Message::Error {
                code: ErrorCode::StoreFailed,
                text,
                ..
            },
            Some(r),
        ) = (msg, self.round_mut(round))
        {
            r.store_error = Some(format!("{from}: {text}"));
        }
        self.sync_rpc_failed(now, round, Some(from));
    }

    pub(super) fn on_sync_store_done(
        &mut self,
        now: Millis,
        wait: SyncWait,
        result: Result<StoreOutcome, StoreError>,
    ) {
        if let (Err(e), Some(round)) = (&result, wait.round()) {
            if let Some(r) = self.round_mut(round) {
                r.store_error = Some(e.to_string());
            }
        }
        match wait {
            SyncWait::RoundDigests { round } => {
                let holder_ms = self.holder_ms(round);
                if let (Ok(StoreOutcome::Digest(ours)), Some(r)) = (result, self.round_mut(round)) {
                    r.oldest_tombstone = ours.oldest_tombstone;
                    let digests = ours.parts;
                    let (start, end, targets) = (r.start, r.end, r.targets.clone());
                    r.outstanding += targets.len();
                    for t in targets {
                        let msg = Message::SyncDigests {
                            start,
                            end,
                            digests: digests.clone(),
                            holder_ms,
                        };
                        self.send_rpc(now, t.addr, msg, RpcKind::SyncDigests(round), 0);
                    }
                } else if let Some(r) = self.round_mut(round) {
                    r.differences += 1;
                    r.local_failed = true;
                }
                self.sync_step_done(now, round);
            }
            SyncWait::KeysFor {
                round,
                target,
                start,
                end,
            } => {
                match (result, self.round_mut(round)) {
                    (Ok(StoreOutcome::KeyVersions(keys)), Some(_)) => {
                        // A list that would not fit one frame goes as several, each over the
                        // part of the range its keys span, so every frame is within the limit.
                        let chunks = key_list_chunks(start, end, keys, REPAIR_BATCH_BYTES);
                        if let Some(r) = self.round_mut(round) {
                            r.outstanding += chunks.len();
                        }
                        for (lo, hi, keys) in chunks {
                            let msg = Message::SyncKeys {
                                start: lo,
                                end: hi,
                                keys,
                            };
                            self.send_rpc(now, target, msg, RpcKind::SyncKeys(round), 0);
                        }
                    }
                    (_, Some(r)) => {
                        r.differences += 1;
                        r.local_failed = true;
                    }
                    _ => {}
                }
                self.sync_step_done(now, round);
            }
            SyncWait::PushTo { round, target } => {
                match (result, self.round_mut(round)) {
                    (Ok(StoreOutcome::Items(items)), Some(r)) => {
                        r.repaired += items.len() as u64;
                        // Repairs are bounded in bytes, not items: any legal value is repaired.
                        let batches = item_batches(items, REPAIR_BATCH_BYTES);
                        if let Some(r) = self.round_mut(round) {
                            r.outstanding += batches.len();
                        }
                        for items in batches {
                            let msg = Message::Replicate { items };
                            self.send_rpc(now, target, msg, RpcKind::SyncPush(round), 0);
                        }
                    }
                    (_, Some(r)) => {
                        r.differences += 1;
                        r.local_failed = true;
                    }
                    _ => {}
                }
                self.sync_step_done(now, round);
            }
            SyncWait::Repaired { round } => self.sync_step_done(now, round),
            SyncWait::StrayCollected => {
                if let Ok(StoreOutcome::Removed(n)) = result {
                    self.stats.stray_copies_collected += n as u64;
                }
            }
            SyncWait::Collected { own } => {
                if let Ok(StoreOutcome::Collected { removed, younger }) = result {
                    self.stats.tombstones_collected += removed as u64;
                    // A node without replicas runs anti-entropy's timer only for this: when
                    // its range holds no tombstone any more and none was in flight when the
                    // collection started (`own` is `None` then) nor stored since, the timer
                    // rests until the next one is stored (`store_op` arms it), instead of
                    // scanning the range every interval.
                    let none_left = younger == 0 && own == Some(self.repl.tombstones_stored);
                    if none_left && self.config.replicas == 0 {
                        self.timers.stop(Timer::AntiEntropy);
                    }
                }
            }
            SyncWait::AnswerDigests {
                to,
                request_id,
                start,
                end,
                theirs,
                holder_ms,
            } => {
                let msg = match result {
                    Ok(StoreOutcome::Digest(mine)) => {
                        let mine = mine.parts;
                        let differing: Vec<u32> = if mine.len() == theirs.len() {
                            (0..mine.len())
                                .filter(|&j| mine[j] != theirs[j])
                                .map(|j| j as u32)
                                .collect()
                        } else {
                            (0..theirs.len() as u32).collect()
                        };
                        // A caught-up holder took these digests after we lost our copies, and
                        // ours match: we hold all it holds, every acknowledged write.
                        let after_loss = self
                            .trust
                            .lost_at()
                            .is_some_and(|at| holder_ms > at.saturating_add(self.config.max_clock_offset_ms));
                        if differing.is_empty() && after_loss {
                            self.trust.refilled(start, end);
                        }
                        let trusted = self.trust.trusts(&start, &end);
                        Message::SyncDigestsReply { differing, trusted }
                    }
                    _ => store_error(result.err()),
                };
                self.reply(to, request_id, msg);
            }
            SyncWait::AnswerKeys {
                to,
                request_id,
                theirs,
            } => {
                let Ok(StoreOutcome::KeyVersions(mine)) = result else {
                    return self.reply(to, request_id, store_error(result.err()));
                };
                let mine: BTreeMap<Bytes, u64> = mine.into_iter().collect();
                let theirs_map: BTreeMap<&Bytes, u64> = theirs.iter().map(|(k, v)| (k, *v)).collect();
                let want: Vec<Bytes> = theirs
                    .iter()
                    .filter(|(k, v)| mine.get(k).is_none_or(|m| m < v))
                    .map(|(k, _)| k.clone())
                    .collect();
                let newer: Vec<Bytes> = mine
                    .iter()
                    .filter(|(k, v)| theirs_map.get(k).is_none_or(|t| t < v))
                    .map(|(k, _)| k.clone())
                    .collect();
                if newer.is_empty() {
                    return self.reply(
                        to,
                        request_id,
                        Message::SyncKeysReply {
                            want,
                            newer: Vec::new(),
                            truncated: false,
                        },
                    );
                }
                let wait = SyncWait::AnswerItems { to, request_id, want };
                self.store_op(StoreOp::GetMany { keys: newer }, StoreWait::Sync(wait));
            }
            SyncWait::AnswerItems { to, request_id, want } => {
                let msg = match result {
                    Ok(StoreOutcome::Items(mut newer)) => {
                        // As much as fits one frame beside `want`; the primary asks again.
                        let want_bytes: usize = want.iter().map(|k| k.len() + 4).sum();
                        let budget = REPAIR_BATCH_BYTES.saturating_sub(want_bytes).max(1);
                        let keep = fitting_prefix(&newer, budget);
                        let truncated = keep < newer.len();
                        newer.truncate(keep);
                        Message::SyncKeysReply {
                            want,
                            newer,
                            truncated,
                        }
                    }
                    _ => store_error(result.err()),
                };
                self.reply(to, request_id, msg);
            }
            SyncWait::AnswerCollect { to, request_id } => {
                let removed = match result {
                    Ok(StoreOutcome::Collected { removed, .. }) => removed,
                    _ => 0,
                };
                self.stats.tombstones_collected += removed as u64;
                self.reply(
                    to,
                    request_id,
                    Message::CollectTombstonesReply {
                        removed: removed as u32,
                    },
                );
            }
        }
    }

    /// Primary: a replica's answer to our digests.
    pub(super) fn on_sync_digests_reply(&mut self, now: Millis, round: u64, from: NodeAddr, msg: Message) {
        let Message::SyncDigestsReply { differing, trusted } = msg else {
            return self.sync_reply_refused(now, round, from, &msg);
        };
        if let Some(r) = self.round_mut(round) {
            if trusted {
                r.trusted.insert(from);
            } else {
                r.untrusted.insert(from);
            }
            let bounds = Id::split_range(&r.start, &r.end, ANTI_ENTROPY_PARTS);
            let start = r.start;
            r.differences += differing.len();
            let parts: Vec<(Id, Id)> = differing
                .iter()
                .filter_map(|&j| {
                    let j = j as usize;
                    let hi = *bounds.get(j)?;
                    let lo = if j == 0 { start } else { bounds[j - 1] };
                    Some((lo, hi))
                })
                .collect();
            r.outstanding += parts.len();
            for (lo, hi) in parts {
                let wait = SyncWait::KeysFor {
                    round,
                    target: from,
                    start: lo,
                    end: hi,
                };
                self.store_op(StoreOp::KeyVersions { start: lo, end: hi }, StoreWait::Sync(wait));
            }
        }
        self.sync_step_done(now, round);
    }

    /// Primary: a replica's answer to our key list.
    pub(super) fn on_sync_keys_reply(&mut self, now: Millis, round: u64, from: NodeAddr, msg: Message) {
        let Message::SyncKeysReply {
            want,
            mut newer,
            truncated,
        } = msg
        else {
            return self.sync_reply_refused(now, round, from, &msg);
        };
        // A copy from the future (a wrong clock, a forged frame) is not merged.
        let before = newer.len();
        newer.retain(|it| self.version_is_plausible(now, it.version));
        if newer.len() < before {
            self.stats.future_versions_refused += (before - newer.len()) as u64;
        }
        if let Some(r) = self.round_mut(round) {
            if truncated || newer.len() < before {
                // More to fetch next round: this exchange did not complete.
                r.differences += 1;
                r.failed.insert(from);
            }
            if !newer.is_empty() {
                r.outstanding += 1;
                r.repaired += newer.len() as u64;
                for it in &newer {
                    self.clock.observe(it.version);
                }
                self.store_op(
                    StoreOp::PutMany { items: newer },
                    StoreWait::Sync(SyncWait::Repaired { round }),
                );
            }
        }
        if let Some(r) = self.round_mut(round) {
            if !want.is_empty() {
                r.outstanding += 1;
                let wait = SyncWait::PushTo { round, target: from };
                self.store_op(StoreOp::GetMany { keys: want }, StoreWait::Sync(wait));
            }
        }
        self.sync_step_done(now, round);
    }

    // ---- the replica's side ------------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    pub(super) fn handle_sync_digests(
        &mut self,
        now: Millis,
        to: ReplyTo,
        rid: u64,
        (start, end): (Id, Id),
        digests: Vec<u64>,
        holder_ms: Millis,
    ) {
        // A primary counts on us as a replica of (start, end]: keep those copies.
        match self.repl.declared.iter_mut().find(|d| d.0 == start && d.1 == end) {
            Some(d) => d.2 = now,
            None => self.repl.declared.push((start, end, now)),
        }
        let parts = digests.len().clamp(1, u32::MAX as usize) as u32;
        let wait = SyncWait::AnswerDigests {
            to,
            request_id: rid,
            start,
            end,
            theirs: digests,
            holder_ms,
        };
        self.store_op(StoreOp::Digest { start, end, parts }, StoreWait::Sync(wait));
    }

    pub(super) fn handle_sync_keys(
        &mut self,
        now: Millis,
        to: ReplyTo,
        rid: u64,
        start: Id,
        end: Id,
        keys: Vec<(Bytes, u64)>,
    ) {
        for (_, v) in &keys {
            if self.version_is_plausible(now, *v) {
                self.clock.observe(*v);
            }
        }
        let wait = SyncWait::AnswerKeys {
            to,
            request_id: rid,
            theirs: keys,
        };
        self.store_op(StoreOp::KeyVersions { start, end }, StoreWait::Sync(wait));
    }

    pub(super) fn handle_collect(&mut self, to: ReplyTo, rid: u64, start: Id, end: Id, before: u64) {
        let wait = SyncWait::AnswerCollect { to, request_id: rid };
        self.store_op(
            StoreOp::CollectTombstones { start, end, before },
            StoreWait::Sync(wait),
        );
    }

    /// Drops copies this node is no longer responsible for: keys outside its primary range
    /// and outside every range a primary declared it a replica of (by syncing with it) within
    /// the last `COPY_RETENTION_ROUNDS` anti-entropy intervals. Only a node whose own view
    /// (predecessor and replica set) has been stable that long collects, so a copy is never
    /// dropped while the ring is still repairing itself after a failure; failover completes
    /// within a few stabilize periods, far inside that window. This removes the extra copies
    /// that joins and wrongly-suspected replicas leave behind.
    pub(super) fn collect_stray_copies(&mut self, now: Millis) {
        let window = COPY_RETENTION_ROUNDS * self.config.anti_entropy_interval_ms;
        self.repl.declared.retain(|d| now.saturating_sub(d.2) <= window);
        let stable = now.saturating_sub(self.repl.replica_view_since) >= window;
        if !stable
            || self.phase != Phase::Active
            || self.predecessor.is_none()
            || !self.handoff.incoming.is_empty()
        {
            return;
        }
        let mut keep: Vec<(Id, Id)> = vec![self.primary_range()];
        keep.extend(self.repl.declared.iter().map(|d| (d.0, d.1)));
        if self.config.is_consistent() {
            // We are in the preference list of our `replicas` predecessors' ranges whether or
            // not their primaries are up to say so (a member that is down may be back).
            let (_, preds) = self.kept_ranges();
            keep.extend(preds);
            if !self.pred_walk_complete() {
                // Fewer members than copies (or our view of them is still short): every key
                // is ours to keep.
                return;
            }
        }
        self.store_op(
            StoreOp::RetainRanges { keep },
            StoreWait::Sync(SyncWait::StrayCollected),
        );
    }

    /// `SYNC_DIGESTS.holder_ms` for a round: its start time when it is a periodic round of a
    /// primary, or a [`SyncPurpose::StandIn`] round of the holder of another primary's range,
    /// whose lease on exactly that range is valid and caught up (`consistent`), else 0.
    fn holder_ms(&self, round: u64) -> Millis {
        let Some(r) = self.repl.syncs.get(&round) else {
            return 0;
        };
        let now = r.started_ms;
        let primary = match r.purpose {
            SyncPurpose::Periodic if r.end == self.me.id => self.me.id,
            SyncPurpose::StandIn { primary } if r.end == primary => primary,
            _ => return 0,
        };
        let serves = self.leases.serves(&primary, now)
            && self.leases.held(&primary).is_some_and(|h| h.start == r.start);
        if serves {
            r.started_ms.max(1)
        } else {
            0
        }
    }

    /// Forgets a loss of copies once every range this node keeps copies of (its own, and its
    /// `replicas` predecessors' under `consistent`) is refilled (`trust.rs`).
    pub(super) fn settle_trust(&mut self) {
        if self.trust.lost_at().is_none() || self.predecessor.is_none() {
            return;
        }
        let (own, preds) = self.kept_ranges();
        let keep: Vec<(Id, Id)> = std::iter::once(own).chain(preds).collect();
        self.trust.settle(&keep);
    }

    /// Our primary range, and the ranges of the predecessors whose preference lists we are in
    /// (`(start, end]`, nearest first; up to `replicas` of them).
    fn kept_ranges(&self) -> ((Id, Id), Vec<(Id, Id)>) {
        let preds = self.predecessors();
        let ranges = preds.windows(2).map(|w| (w[1].id, w[0].id)).collect();
        (self.primary_range(), ranges)
    }

    /// Brings the next round forward when the nodes that should hold our range changed.
    pub(super) fn watch_replica_set(&mut self, now: Millis) {
        let mut view: Vec<NodeAddr> = self.predecessor.iter().map(|p| p.addr).collect();
        view.extend(self.replica_targets().iter().map(|n| n.addr));
        if view != self.repl.replica_view {
            self.repl.replica_view = view;
            self.repl.replica_view_since = now;
            self.timers
                .bring_forward(Timer::AntiEntropy, now + self.config.stabilize_interval_ms);
        }
    }
}

/// Bytes of keys and values in one repair message (a `REPLICATE` push, a `SYNC_KEYS` list, the
/// items of a `SYNC_KEYS_REPLY`): well under `MAX_FRAME_BYTES`, and one item always fits.
pub(super) const REPAIR_BATCH_BYTES: usize = 8 << 20;
// A batch under its budget, plus one item of any size, fits in one frame.
const _: () = assert!(REPAIR_BATCH_BYTES <= chordkv_protocol::limits::MAX_BATCH_BYTES);

/// How many of `items`, from the front, fit in `budget` bytes of keys and values (at least one).
fn fitting_prefix(items: &[Item], budget: usize) -> usize {
    let mut bytes = 0usize;
    for (i, it) in items.iter().enumerate() {
        bytes += item_bytes(it);
        if bytes > budget && i > 0 {
            return i;
        }
    }
    items.len()
}

fn item_bytes(it: &Item) -> usize {
    it.key.len() + it.value.as_ref().map_or(0, |v| v.len()) + 16
}

/// `items` in batches of at most `budget` bytes each (an item larger than that alone).
fn item_batches(mut items: Vec<Item>, budget: usize) -> Vec<Vec<Item>> {
    let mut batches = Vec::new();
    while !items.is_empty() {
        let n = fitting_prefix(&items, budget);
        let rest = items.split_off(n);
        batches.push(std::mem::replace(&mut items, rest));
    }
    batches
}

/// A `(key, version)` list of a ring range.
type KeyList = Vec<(Bytes, u64)>;

/// The `(key, version)` list of the ring range `(start, end]`, in ring order, cut into lists
/// of at most `budget` bytes, each with the part of the range it covers: `(start, id of its
/// last key]`, the last one up to `end`. An empty list still makes one (empty) part.
fn key_list_chunks(start: Id, end: Id, keys: KeyList, budget: usize) -> Vec<(Id, Id, KeyList)> {
    let mut chunks = Vec::new();
    let mut lo = start;
    let mut current: KeyList = Vec::new();
    let mut bytes = 0usize;
    for (key, version) in keys {
        let size = key.len() + 12;
        // A cut falls between two ids: keys sharing a hash tag share an id, and a part is a
        // range of ids, so they stay in one part.
        let id = Id::of_key(&key);
        if let Some(hi) = current
            .last()
            .filter(|_| bytes + size > budget)
            .map(|(last, _)| Id::of_key(last))
            .filter(|hi| *hi != id)
        {
            chunks.push((lo, hi, std::mem::take(&mut current)));
            lo = hi;
            bytes = 0;
        }
        bytes += size;
        current.push((key, version));
    }
    chunks.push((lo, end, current));
    chunks
}

fn store_error(e: Option<StoreError>) -> Message {
    let text = e.map_or_else(|| "unexpected store outcome".to_string(), |e| e.to_string());
    Message::Error {
        code: ErrorCode::StoreFailed,
        hops: 0,
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parts of a key list are ranges of ids: keys that share a hash tag (one id) are never
    /// split over two parts, or the second part's range `(id, ...]` would leave them out.
    #[test]
    fn key_list_parts_keep_a_hash_tag_whole() {
        let mut keys: KeyList = (0..50)
            .map(|i| (Bytes::from(format!("{{tag}}.{i:02}")), 1))
            .chain((0..50).map(|i| (Bytes::from(format!("k{i}")), 1)))
            .collect();
        keys.sort_by_key(|(k, _)| (Id::of_key(k), k.clone()));
        let (start, end) = (Id::ZERO, Id::ZERO);
        let parts = key_list_chunks(start, end, keys.clone(), 100);
        assert!(parts.len() > 5, "{} parts", parts.len());
        let mut seen = 0;
        for (lo, hi, part) in &parts {
            for (k, _) in part {
                let id = Id::of_key(k);
                assert!(
                    chordkv_protocol::in_half_open(&id, lo, hi) || lo == hi,
                    "{k:?} outside its part"
                );
                seen += 1;
            }
        }
        assert_eq!(seen, keys.len());
        let tagged = parts
            .iter()
            .filter(|(_, _, p)| p.iter().any(|(k, _)| k.starts_with(b"{tag}")))
            .count();
        assert_eq!(tagged, 1, "the 50 keys of one tag are in one part");
    }
}
