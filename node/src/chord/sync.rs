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

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use chordkv_protocol::{ErrorCode, Id, Message, NodeRef};

use super::config::ANTI_ENTROPY_PARTS;
use super::{Millis, Node, Phase, ReplyTo, RpcKind, StoreWait};
use crate::store::{StoreError, StoreOp, StoreOutcome};

/// A round in progress.
#[derive(Debug)]
pub(super) struct SyncRound {
    pub id: u64,
    pub start: Id,
    pub end: Id,
    pub targets: Vec<NodeRef>,
    /// Store ops and requests of the round not finished yet.
    pub outstanding: usize,
    /// Differing sub-ranges found, failed exchanges included.
    pub differences: usize,
    /// Keys repaired in either direction.
    pub repaired: u64,
    /// The version clock when the round started (for tombstone collection).
    pub clock_at_start: u64,
}

/// What a store op of anti-entropy is for.
#[derive(Debug)]
pub(super) enum SyncWait {
    /// Primary: our digests of the round's range.
    RoundDigests { round: u64 },
    /// Primary: our key-version list of a differing sub-range, for `target`.
    KeysFor {
        round: u64,
        target: SocketAddr,
        start: Id,
        end: Id,
    },
    /// Primary: the values `target` wants.
    PushTo { round: u64, target: SocketAddr },
    /// Primary: merged the items a replica had newer.
    Repaired { round: u64 },
    /// Primary: collected tombstones at the end of a clean round.
    Collected,
    /// Replica: our digests, to compare with the primary's.
    AnswerDigests {
        to: ReplyTo,
        request_id: u64,
        theirs: Vec<u64>,
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

/// How many anti-entropy intervals a replica keeps copies of a range no primary has declared
/// to it, and how long its own view must be stable before it drops any.
const COPY_RETENTION_ROUNDS: u64 = 3;

impl Node {
    /// Starts a round if none is running and this node is a primary with replicas.
    /// Starts a round; returns false when one cannot start now (a round is running, a range is
    /// arriving, or the node is not a primary with replicas).
    pub(super) fn start_sync_round(&mut self, now: Millis) -> bool {
        if self.sync.is_some() || self.phase != Phase::Active || !self.incoming.is_empty() {
            return false;
        }
        let Some(pred) = self.predecessor else {
            return false;
        };
        let targets = self.replica_targets();
        if targets.is_empty() {
            return false;
        }

        let id = self.next_sync_id;
        self.next_sync_id += 1;
        let (start, end) = (pred.id, self.me.id);
        self.sync = Some(SyncRound {
            id,
            start,
            end,
            targets,
            outstanding: 1,
            differences: 0,
            repaired: 0,
            // Physical time counts too: the clock only moves with writes.
            clock_at_start: self.clock.current().max(now.saturating_mul(1 << 16)),
        });
        let op = StoreOp::Digest {
            start,
            end,
            parts: ANTI_ENTROPY_PARTS,
        };
        self.store_op(op, StoreWait::Sync(SyncWait::RoundDigests { round: id }));
        true
    }

    fn round_mut(&mut self, round: u64) -> Option<&mut SyncRound> {
        self.sync.as_mut().filter(|r| r.id == round)
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
        let r = self.sync.take().expect("checked above"); // faulty code
        self.stats.anti_entropy_rounds += 1;
        self.stats.anti_entropy_last_repaired = r.repaired;
        self.stats.anti_entropy_keys_repaired += r.repaired;
        if r.differences == 0 {
            // Every replica holds exactly what we hold: old tombstones can go everywhere.
            let before = r
                .clock_at_start
                .saturating_sub(self.config.tombstone_grace_ms << 16);
            let (start, end) = (r.start, r.end);
            for t in &r.targets {
                let msg = Message::CollectTombstones { start, end, before };
                self.send_rpc(now, t.addr, msg, RpcKind::Collect, 0);
            }
            let op = StoreOp::CollectTombstones { start, end, before };
            self.store_op(op, StoreWait::Sync(SyncWait::Collected));
        }
    }

    /// A failed exchange counts as a difference (no tombstone collection this round).
    pub(super) fn sync_rpc_failed(&mut self, now: Millis, round: u64) {
        if let Some(r) = self.round_mut(round) {
            r.differences += 1;
        }
        self.sync_step_done(now, round);
    }

    pub(super) fn on_sync_store_done(
        &mut self,
        now: Millis,
        wait: SyncWait,
        result: Result<StoreOutcome, StoreError>,
    ) {
        match wait {
            SyncWait::RoundDigests { round } => {
                if let (Ok(StoreOutcome::Digest(digests)), Some(r)) = (result, self.round_mut(round)) {
                    let (start, end, targets) = (r.start, r.end, r.targets.clone());
                    r.outstanding += targets.len();
                    for t in targets {
                        let msg = Message::SyncDigests {
                            start,
                            end,
                            digests: digests.clone(),
                        };
                        self.send_rpc(now, t.addr, msg, RpcKind::SyncDigests(round), 0);
                    }
                } else if let Some(r) = self.round_mut(round) {
                    r.differences += 1;
                }
                self.sync_step_done(now, round);
            }
            SyncWait::KeysFor {
                round,
                target,
                start,
                end,
            } => {
                if let (Ok(StoreOutcome::KeyVersions(keys)), Some(r)) = (result, self.round_mut(round)) {
                    r.outstanding += 1;
                    let msg = Message::SyncKeys { start, end, keys };
                    self.send_rpc(now, target, msg, RpcKind::SyncKeys(round), 0);
                }
                self.sync_step_done(now, round);
            }
            SyncWait::PushTo { round, target } => {
                if let (Ok(StoreOutcome::Items(items)), Some(r)) = (result, self.round_mut(round)) {
                    if !items.is_empty() {
                        r.outstanding += 1;
                        r.repaired += items.len() as u64;
                        let msg = Message::Replicate { items };
                        self.send_rpc(now, target, msg, RpcKind::SyncPush(round), 0);
                    }
                }
                self.sync_step_done(now, round);
            }
            SyncWait::Repaired { round } => self.sync_step_done(now, round),
            SyncWait::StrayCollected => {
                if let Ok(StoreOutcome::Removed(n)) = result {
                    self.stats.stray_copies_collected += n as u64;
                }
            }
            SyncWait::Collected => {
                if let Ok(StoreOutcome::Removed(n)) = result {
                    self.stats.tombstones_collected += n as u64;
                }
            }
            SyncWait::AnswerDigests {
                to,
                request_id,
                theirs,
            } => {
                let msg = match result {
                    Ok(StoreOutcome::Digest(mine)) => {
                        let differing = if mine.len() == theirs.len() {
                            (0..mine.len())
                                .filter(|&j| mine[j] != theirs[j])
                                .map(|j| j as u32)
                                .collect()
                        } else {
                            (0..theirs.len() as u32).collect()
                        };
                        Message::SyncDigestsReply { differing }
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
                        },
                    );
                }
                let wait = SyncWait::AnswerItems { to, request_id, want };
                self.store_op(StoreOp::GetMany { keys: newer }, StoreWait::Sync(wait));
            }
            SyncWait::AnswerItems { to, request_id, want } => {
                let msg = match result {
                    Ok(StoreOutcome::Items(newer)) => Message::SyncKeysReply { want, newer },
                    _ => store_error(result.err()),
                };
                self.reply(to, request_id, msg);
            }
            SyncWait::AnswerCollect { to, request_id } => {
                let removed = match result {
                    Ok(StoreOutcome::Removed(n)) => n,
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
    pub(super) fn on_sync_digests_reply(&mut self, now: Millis, round: u64, from: SocketAddr, msg: Message) {
        let Message::SyncDigestsReply { differing } = msg else {
            return self.sync_rpc_failed(now, round);
        };
        if let Some(r) = self.round_mut(round) {
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
    pub(super) fn on_sync_keys_reply(&mut self, now: Millis, round: u64, from: SocketAddr, msg: Message) {
        let Message::SyncKeysReply { want, newer } = msg else {
            return self.sync_rpc_failed(now, round);
        };
        if let Some(r) = self.round_mut(round) {
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
        start: Id,
        end: Id,
        digests: Vec<u64>,
    ) {
        // A primary counts on us as a replica of (start, end]: keep those copies.
        match self.declared.iter_mut().find(|d| d.0 == start && d.1 == end) {
            Some(d) => d.2 = now,
            None => self.declared.push((start, end, now)),
        }
        let parts = digests.len().clamp(1, u32::MAX as usize) as u32;
        let wait = SyncWait::AnswerDigests {
            to,
            request_id: rid,
            theirs: digests,
        };
        self.store_op(StoreOp::Digest { start, end, parts }, StoreWait::Sync(wait));
    }

    pub(super) fn handle_sync_keys(
        &mut self,
        to: ReplyTo,
        rid: u64,
        start: Id,
        end: Id,
        keys: Vec<(Bytes, u64)>,
    ) {
        for (_, v) in &keys {
            self.clock.observe(*v);
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
        self.declared.retain(|d| now.saturating_sub(d.2) <= window);
        let stable = now.saturating_sub(self.replica_view_since) >= window;
        if !stable || self.phase != Phase::Active || self.predecessor.is_none() || !self.incoming.is_empty() {
            return;
        }
        let mut keep: Vec<(Id, Id)> = vec![self.primary_range()];
        keep.extend(self.declared.iter().map(|d| (d.0, d.1)));
        self.store_op(
            StoreOp::RetainRanges { keep },
            StoreWait::Sync(SyncWait::StrayCollected),
        );
    }

    /// Brings the next round forward when the nodes that should hold our range changed.
    pub(super) fn watch_replica_set(&mut self, now: Millis) {
        let mut view: Vec<SocketAddr> = self.predecessor.iter().map(|p| p.addr).collect();
        view.extend(self.replica_targets().iter().map(|n| n.addr));
        if view != self.replica_view {
            self.replica_view = view;
            self.replica_view_since = now;
            self.next_anti_entropy = self
                .next_anti_entropy
                .min(now + self.config.stabilize_interval_ms);
        }
    }
}

fn store_error(e: Option<StoreError>) -> Message {
    let text = e.map_or_else(|| "unexpected store outcome".to_string(), |e| e.to_string());
    Message::Error {
        code: ErrorCode::StoreFailed,
        hops: 0,
        text,
    }
}
