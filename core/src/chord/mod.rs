//! The Chord core: one node's protocol logic as a deterministic state machine.
//!
//! It has no sockets, threads or clock. A driver (the mio server of `chordkv-server` in production,
//! the simulated network of `chordkv-harness` in tests and the simulator) feeds it inputs, each with the
//! current time in milliseconds, and drains the outputs it produces:
//!
//! ```text
//!                 handle_request(now, reply_to, frame)   ── a request from a client or peer
//!                 handle_reply(now, from, frame)         ── a reply to a request we sent
//!   driver ──►    store_done(now, op_id, result)         ── a store op finished
//!                 peer_unreachable(now, addr)            ── the transport gave up on a peer
//!                 tick(now)                              ── timers (call at next_deadline())
//!
//!   driver ◄──    poll_output() -> Send { to, frame }    ── a request to a peer
//!                                  Reply { to, frame }   ── a reply on an inbound connection
//!                                  Store { id, op }      ── run this op, report store_done
//!                                  Left                  ── graceful leave finished
//! ```
//!
//! Given the same seed and the same inputs at the same times it produces the same outputs:
//! every map it iterates is ordered, and its only randomness (timer jitter) comes from a
//! seeded [`Rng`].
//!
//! ## The protocol (SIGCOMM'01 section 4, with the successor list of section 5)
//!
//! - **Routing is iterative.** The node that receives a client operation (the *entry*)
//!   drives the lookup itself: it asks the closest preceding node it knows for the key's
//!   successor (`FIND_SUCCESSOR`), which answers with the owner and the nodes after it
//!   (`Found`) or with a node closer to the key (`Closer`), and then sends the operation to the
//!   owner with `FLAG_DIRECT` set. The owner serves it, or answers `REDIRECT` if the entry's
//!   view was stale. We chose iterative routing because the entry sees every hop: it detects a
//!   dead hop by its timeout and routes around it with its own table, it counts hops exactly,
//!   and intermediate nodes keep no per-request state. It is also how the Chord paper's
//!   simulator routes, so hop counts compare directly. A hop is one message sent to another
//!   node on the way to the owner (a lookup step, the direct operation, or a redirect
//!   followed); a key served by the entry itself took 0 hops.
//! - **Maintenance**: `stabilize` asks the successor for its predecessor and successor list
//!   (`GET_NEIGHBORS`), adopts a closer successor, then `NOTIFY`s it; `fix_fingers` refreshes
//!   fingers round-robin (those resolvable from the successor list at once, then one remote
//!   lookup per round); `check_predecessor` pings the predecessor and forgets it on timeout.
//! - **Failures**: every request to a peer has a deadline; a peer that misses it (or that the
//!   transport reports unreachable) is dropped from the successor list, the fingers and the
//!   predecessor, and avoided for `dead_peer_ttl_ms`. The successor list supplies the next live
//!   successor.
//! - **Ownership and handoff** (`handoff.rs`): key `k` belongs to the first node `n` with
//!   `k ∈ (predecessor(n), n]`. A node accepts a new predecessor only when it is active and
//!   not itself receiving a range, and then streams the keys of the predecessor's new range to
//!   it in acknowledged batches; the receiver holds requests for that range until the last
//!   batch is stored. A leaving node does the same towards its successor. No acknowledged write
//!   is lost by a join or a leave, including writes that arrive during the transfer.

pub mod cache;
pub mod claims;
pub mod clock;
pub mod config;
mod execute;
mod handoff;
mod host;
mod inline_stores;
mod lease;
mod liveness;
mod maintenance;
pub mod membership;
mod node;
mod onehop;
mod op_table;
mod ops;
mod placement;
mod replication;
mod ring_command;
pub mod routing;
mod rpc;
mod scan;
mod seen_writes;
mod stats;
mod store_cache;
mod store_wait;
mod sync;
#[cfg(test)]
mod test_support;
mod timer;
mod trust;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use chordkv_protocol::NodeAddr;

use chordkv_protocol::{ErrorCode, Frame, Lookup, Message, NodeInfo, NodeStatus};

use crate::store::{StoreError, StoreOp, StoreOutcome};
use onehop::MEMBERS_PAGE;
use placement::Route;
use rpc::RpcKind;
use store_wait::{ServeKind, StoreWait};
use timer::Timer;

pub use config::{Config, Routing};
pub use execute::CROSSSLOT;
pub use host::{merge_counters, Host};
pub use node::{Millis, Node, Output, Phase, ReplyTo, StoreOpId};
pub use stats::Stats;

impl Node {
    // ---- inputs ----------------------------------------------------------------------------

    /// Timers: maintenance rounds, request deadlines, retries. Safe to call at any time.
    pub fn tick(&mut self, now: Millis) {
        self.last_now = self.last_now.max(now);
        // Held replica writes wait for the end of the driver's turn at the latest; a driver
        // that does not end its turns still sends them at its next tick.
        self.flush_replica_writes(now);
        self.expire_rpcs(now);
        self.retry_ops(now);
        self.expire_incoming(now);
        self.expire_dead(now);
        self.join_if_due(now);
        if matches!(self.phase, Phase::Idle | Phase::Left) {
            return;
        }
        self.sweep_expired(now);
        if self.timers.is_due(Timer::Stabilize, now) {
            let at = now + self.jitter(self.config.stabilize_interval_ms);
            self.timers.set(Timer::Stabilize, at);
            self.stabilize(now);
            self.flush_member_events(now);
            self.maintain_leases(now);
        }
        if self.timers.is_due(Timer::CheckPredecessor, now) {
            let at = now + self.jitter(self.config.check_predecessor_interval_ms);
            self.timers.set(Timer::CheckPredecessor, at);
            self.check_predecessor(now);
        }
        if self.timers.is_due(Timer::FixFingers, now) {
            let at = now + self.jitter(self.config.fix_fingers_interval_ms);
            self.timers.set(Timer::FixFingers, at);
            self.fix_fingers(now);
        }
        if self.config.replicas > 0 {
            self.watch_replica_set(now);
        }
        if self.timers.is_due(Timer::AntiEntropy, now) {
            if self.config.replicas > 0 {
                self.settle_trust();
            }
            // A round that cannot start now (one is running, a range is arriving) is
            // retried at the next stabilize period, so a change of replicas during a round
            // is not left for the next full interval. A node no other host keeps copies for
            // has no round to run: it collects its own tombstones on the same schedule.
            let started = self.config.replicas > 0 && self.start_sync_round(now);
            // The ranges of primaries that are down, on their behalf.
            self.start_stand_in_rounds(now);
            let wait = if started {
                // Once per interval: collection scans the whole store.
                self.collect_stray_copies(now);
                self.config.anti_entropy_interval_ms
            } else {
                // (At most once an interval, whatever the timer's period.)
                let collected = self.collect_own_tombstones(now);
                if self.config.replicas == 0 && collected {
                    self.config.anti_entropy_interval_ms
                } else {
                    self.config.stabilize_interval_ms
                }
            };
            // Without replicas no jitter: the node's random stream is the same whether or not
            // it ever deleted a key.
            let at = if self.config.replicas > 0 {
                now + self.jitter(wait)
            } else {
                now + wait
            };
            self.timers.set(Timer::AntiEntropy, at);
        }
        self.pump_leave(now);
    }

    /// A request from a client or a peer, to be answered with `Output::Reply { to: reply_to }`.
    pub fn handle_request(&mut self, now: Millis, reply_to: ReplyTo, frame: Frame) {
        self.handle_request_placed(now, reply_to, frame, None)
    }

    /// [`Node::handle_request`] for a caller that has placed a client operation's key
    /// (the host, which chose this vnode by it): `target` is the placement, or none.
    pub(crate) fn handle_request_placed(
        &mut self,
        now: Millis,
        reply_to: ReplyTo,
        frame: Frame,
        target: Option<ops::KeyPlacement>,
    ) {
        self.last_now = self.last_now.max(now);
        self.stats.messages_received += 1;
        let rid = frame.request_id;
        match frame.message {
            Message::Get { .. }
            | Message::Put { .. }
            | Message::Delete { .. }
            | Message::Execute { .. }
            | Message::ScanRange { .. } => self.handle_client_op(now, reply_to, frame, target),
            Message::RingCommand { command } => self.start_ring_command(now, reply_to, rid, command),
            Message::ScanKeys {
                cursor,
                count,
                pattern,
                random,
            } => self.start_scan(now, reply_to, rid, cursor, count, pattern, random),
            Message::RangeCommand { command } => self.serve_range_command(reply_to, rid, command),
            Message::FindSuccessor { .. } if !matches!(self.phase, Phase::Active | Phase::Leaving) => {
                // A node outside the ring would answer from empty tables ("I am alone, so I own
                // everything"), which would lead the asker astray: make it ask again later.
                let text = format!("node is {:?}, not in a ring", self.phase);
                self.reply(
                    reply_to,
                    rid,
                    Message::Error {
                        code: ErrorCode::NotReady,
                        hops: 0,
                        text,
                    },
                );
            }
            Message::FindSuccessor { id } => {
                self.stats.lookups_answered += 1;
                let lookup = match self.route(&id) {
                    Route::Local => {
                        let successors = self.extend_list(self.owner_list());
                        Lookup::Found {
                            predecessor: self.predecessor,
                            down: self.down_bits(&successors),
                            successors,
                        }
                    }
                    Route::Found(list) => {
                        let list = self.extend_list(list);
                        Lookup::Found {
                            predecessor: list.first().and_then(|o| self.known_predecessor_of(o)),
                            down: self.down_bits(&list),
                            successors: list,
                        }
                    }
                    Route::Closer(node) => Lookup::Closer { node },
                    // An isolated node answers as a ring of one, so isolated nodes looking for
                    // each other after a partition or a crash wave form a ring again. It still
                    // serves no key until it has a successor (see `owns`).
                    Route::Unknown if self.is_isolated() => Lookup::Found {
                        predecessor: None,
                        successors: vec![self.me],
                        down: 0,
                    },
                    Route::Unknown => {
                        let text = "node knows no peer right now".to_string();
                        let msg = Message::Error {
                            code: ErrorCode::NotReady,
                            hops: 0,
                            text,
                        };
                        return self.reply(reply_to, rid, msg);
                    }
                };
                self.reply(reply_to, rid, Message::FindSuccessorReply { lookup });
            }
            Message::GetNeighbors if matches!(self.phase, Phase::Idle | Phase::Joining) => {
                // A node still looking for its place knows no neighbours; an empty answer
                // would wipe the asker's successor list.
                let text = format!("node is {:?}, not in a ring", self.phase);
                let msg = Message::Error {
                    code: ErrorCode::NotReady,
                    hops: 0,
                    text,
                };
                self.reply(reply_to, rid, msg);
            }
            Message::GetNeighbors => {
                let successors = self.routing.successors().to_vec();
                let msg = Message::Neighbors {
                    predecessors: self.reported_predecessors(),
                    down: self.down_bits(&successors),
                    successors,
                    gone: self.live.gone.values().map(|(n, _, _)| *n).collect(),
                };
                self.reply(reply_to, rid, msg);
            }
            Message::Notify {
                node,
                incarnation,
                active,
            } => self.handle_notify(now, reply_to, rid, node, incarnation, active),
            Message::Lease(request) => {
                let chordkv_protocol::LeaseRequest {
                    primary,
                    start,
                    holder,
                } = *request;
                self.handle_lease(now, reply_to, rid, primary, start, holder)
            }
            Message::Forget { node, whole_host } => self.handle_forget(now, reply_to, rid, node, whole_host),
            Message::ClaimPositions { seen, nodes } => {
                let msg = match self.claims.claim(now, seen, nodes) {
                    Ok(()) | Err(claims::Refused::Stale) => {
                        let (version, nodes) = self.claims.list(now);
                        Message::Claims { version, nodes }
                    }
                    Err(claims::Refused::Invalid(why)) => Message::Error {
                        code: ErrorCode::BadRequest,
                        hops: 0,
                        text: why.into(),
                    },
                };
                self.reply(reply_to, rid, msg);
            }
            Message::Ping => self.reply(reply_to, rid, Message::Pong { node: self.me }),
            Message::Leaving(notice) => {
                let chordkv_protocol::LeaveNotice {
                    node,
                    predecessor,
                    successors,
                    clock,
                    gone,
                } = *notice;
                // The leaving node's neighbours announce its leave (one-hop).
                if self.members.as_ref().is_some_and(|m| m.contains(&node.id)) {
                    self.detect_event(now, node, false);
                }
                self.learn_gone(now, &gone);
                self.handle_leaving(now, reply_to, rid, node, predecessor, successors, clock)
            }
            Message::GetMembers { after } => {
                let (nodes, more) = match &self.members {
                    Some(m) => m.page(&after, MEMBERS_PAGE),
                    None => (self.known_run(), false),
                };
                self.reply(reply_to, rid, Message::Members { nodes, more });
            }
            Message::MemberEvents { limit, events } => {
                let applied = self.apply_member_events(now, &events, &limit);
                self.reply(reply_to, rid, Message::MemberEventsAck { applied });
            }
            Message::Transfer {
                transfer_id,
                start,
                end,
                items,
                last,
                clock,
            } => self.handle_transfer(now, reply_to, rid, transfer_id, start, end, items, last, clock),
            Message::GetInfo => {
                self.store_op(
                    StoreOp::Count,
                    StoreWait::Info {
                        to: reply_to,
                        request_id: rid,
                    },
                );
            }
            Message::GetStats => {
                self.store_op(
                    StoreOp::Size,
                    StoreWait::Stats {
                        to: reply_to,
                        request_id: rid,
                    },
                );
            }
            Message::Replicate { items } => self.handle_replicate(now, reply_to, rid, items),
            Message::SyncDigests {
                start,
                end,
                digests,
                holder_ms,
            } => self.handle_sync_digests(now, reply_to, rid, (start, end), digests, holder_ms),
            Message::SyncKeys { start, end, keys } => {
                self.handle_sync_keys(now, reply_to, rid, start, end, keys)
            }
            Message::CollectTombstones { start, end, before } => {
                self.handle_collect(reply_to, rid, start, end, before)
            }
            other => {
                let text = format!("{} is not a request", other.name());
                self.reply(
                    reply_to,
                    rid,
                    Message::Error {
                        code: ErrorCode::BadRequest,
                        hops: 0,
                        text,
                    },
                );
            }
        }
    }

    /// A reply from the host at `from` to a request we sent.
    pub fn handle_reply(&mut self, now: Millis, from: SocketAddr, frame: Frame) {
        self.last_now = self.last_now.max(now);
        self.stats.messages_received += 1;
        // None: a late reply to a request we already gave up on, or not from whom we asked.
        let Some(rpc) = self.rpcs.answered(frame.request_id, from) else {
            return;
        };
        let from = rpc.to;
        self.live.dead.remove(&from);
        match rpc.kind {
            RpcKind::Lookup(id) => self.on_lookup_reply(now, id, from, frame.message),
            RpcKind::Op(op) => self.on_op_reply(now, op, from, frame.message),
            RpcKind::Stabilize => self.on_neighbors(now, from, frame.message),
            RpcKind::Notify => self.on_notify_reply(now, from, frame.message),
            RpcKind::CheckPredecessor => {
                if let Message::Neighbors {
                    predecessors,
                    successors,
                    gone,
                    ..
                } = frame.message
                {
                    self.learn_gone(now, &gone);
                    if self.config.is_consistent() {
                        return self.on_predecessor_neighbors(from, predecessors, successors);
                    }
                    // A predecessor that restarted knows no predecessor yet: keep what it told
                    // us before (where its range starts).
                    let keep = predecessors.is_empty()
                        && self.repl.pred_list.as_ref().is_some_and(|(a, _)| *a == from);
                    if !keep {
                        self.repl.pred_list = Some((from, predecessors));
                    }
                }
            }
            RpcKind::Lease(primary, round) => {
                self.on_lease_reply(now, primary, round, from, Some(frame.message))
            }
            RpcKind::Probe => self.on_probe_reply(now, from, frame.message),
            RpcKind::RangeCommand(walk) => self.on_range_command_reply(now, walk, from, frame.message),
            RpcKind::Transfer(t) => self.on_transfer_ack(now, t, frame.message),
            RpcKind::Leaving => self.on_leaving_reply(now, frame.message),
            RpcKind::LeavingHint => self.on_leave_hint_answered(now, from),
            RpcKind::Collect => {}
            RpcKind::Members => self.on_members(now, from, frame.message),
            RpcKind::MemberEvents(b) => {
                self.onehop.broadcasts.remove(&b);
            }
            RpcKind::Replica(write) => {
                if let Some(w) = write {
                    let applied = matches!(frame.message, Message::ReplicateAck { .. });
                    self.replica_answered(w, from, applied);
                }
            }
            RpcKind::ReplicaBatch(batch) => {
                let applied = matches!(frame.message, Message::ReplicateAck { .. });
                self.replica_batch_answered(batch, from, applied);
            }
            RpcKind::SyncDigests(round) => self.on_sync_digests_reply(now, round, from, frame.message),
            RpcKind::SyncKeys(round) => self.on_sync_keys_reply(now, round, from, frame.message),
            RpcKind::SyncPush(round) => {
                if matches!(frame.message, Message::ReplicateAck { .. }) {
                    self.sync_step_done_pub(now, round);
                } else {
                    self.sync_reply_refused(now, round, from, &frame.message);
                }
            }
        }
    }

    /// The driver could not send the request `request_id` (it could not be encoded): it fails
    /// now, and its peer is not presumed down for it.
    pub fn send_failed(&mut self, now: Millis, request_id: u64) {
        self.last_now = self.last_now.max(now);
        if let Some(rpc) = self.rpcs.finish(request_id) {
            self.on_rpc_failed(now, rpc);
        }
    }

    /// The transport could not reach the host at `host` (connection refused or reset): every
    /// request to any of its vnodes fails now instead of at its deadline, and each of its
    /// vnodes this node knows is presumed down (they share the process and its sockets).
    pub fn peer_unreachable(&mut self, now: Millis, host: SocketAddr) {
        self.last_now = self.last_now.max(now);
        let mut addrs: BTreeSet<NodeAddr> = self.rpcs.targets().filter(|a| a.host == host).collect();
        addrs.extend(
            self.routing
                .known_nodes()
                .chain(self.predecessor.iter())
                .map(|n| n.addr)
                .filter(|a| a.host == host),
        );
        if addrs.is_empty() {
            addrs.insert(NodeAddr::host(host));
        }
        for addr in addrs {
            let failed = self.rpcs.to_peer(addr);
            self.mark_dead(now, addr);
            for id in failed {
                if let Some(rpc) = self.rpcs.finish(id) {
                    self.on_rpc_failed(now, rpc);
                }
            }
        }
    }

    /// A store op finished.
    pub fn store_done(&mut self, now: Millis, id: StoreOpId, result: Result<StoreOutcome, StoreError>) {
        self.last_now = self.last_now.max(now);
        let Some(wait) = self.store.waits.remove(&id) else {
            return;
        };
        if !self.repl.tombstone_ops.is_empty() {
            self.repl.tombstone_ops.remove(&id);
        }
        if result.is_err() {
            self.stats.store_errors += 1;
        }
        if matches!(result, Err(StoreError::Lost(_))) {
            self.on_store_lost(now);
        }
        match wait {
            StoreWait::Serve {
                to,
                request_id,
                hops,
                kind,
                write,
                key_id,
            } => {
                if matches!(kind, ServeKind::Put(_) | ServeKind::Delete(_)) {
                    self.on_write_stored(now, &key_id);
                }
                self.finish_serve(now, to, request_id, hops, kind, write, result)
            }
            StoreWait::ExecuteRead(job) => self.on_execute_read(now, job, result),
            StoreWait::ExecuteWrite(job) => self.on_execute_written(now, job, result),
            StoreWait::ExpirySweep => self.on_sweep_scanned(now, result),
            StoreWait::RangeCommand(run) => self.on_range_command_store(now, run, result),
            StoreWait::ScanStep {
                to,
                request_id,
                hops,
                end,
                count,
                pattern,
            } => self.finish_scan_step(now, to, request_id, hops, end, count, pattern, result),
            StoreWait::ReplicaApply { to, request_id } => self.on_replica_applied(to, request_id, result),
            StoreWait::Sync(wait) => self.on_sync_store_done(now, wait, result),
            StoreWait::StatsPrimary {
                to,
                request_id,
                total,
                bytes,
            } => {
                let primary = match result {
                    Ok(StoreOutcome::RangeCounts(c)) => c,
                    _ => crate::store::RangeCounts {
                        live: total,
                        ..Default::default()
                    },
                };
                let mut counters = self.stat_counters(now, total, primary);
                if let Some(b) = bytes {
                    counters.push(("store_bytes".to_string(), b));
                }
                counters.push(("uptime_ms".to_string(), now.saturating_sub(self.created_at)));
                self.reply(to, request_id, Message::Stats { counters });
            }
            StoreWait::Apply {
                to,
                request_id,
                transfer_id,
                start,
                end,
                last,
            } => self.on_apply_done(now, to, request_id, transfer_id, start, end, last, result),
            StoreWait::TransferScan(t) => self.on_transfer_scanned(now, t, result),
            StoreWait::TransferRemove(t) => self.on_transfer_removed(now, t, result),
            StoreWait::Info { to, request_id } => {
                let keys = match result {
                    Ok(StoreOutcome::Count(n)) => n,
                    _ => 0,
                };
                let info = NodeInfo {
                    node: self.me,
                    status: match self.phase {
                        Phase::Active if self.handoff.incoming.is_empty() => NodeStatus::Active,
                        Phase::Leaving | Phase::Left => NodeStatus::Leaving,
                        _ => NodeStatus::Joining,
                    },
                    predecessor: self.predecessor,
                    successors: self.routing.successors().to_vec(),
                    fingers: self.routing.known_nodes().copied().collect(),
                    keys,
                    keeps_down_members: self.config.is_consistent(),
                };
                self.reply(to, request_id, Message::Info(Box::new(info)));
            }
            StoreWait::Stats { to, request_id } => {
                let (total, bytes) = match result {
                    Ok(StoreOutcome::Size { keys, bytes }) => (keys, bytes),
                    _ => (0, None),
                };
                // Keys in our primary range; the rest are replica copies.
                let (start, end) = self.primary_range();
                let wait = StoreWait::StatsPrimary {
                    to,
                    request_id,
                    total,
                    bytes,
                };
                self.store_op(StoreOp::RangeCounts { start, end, now }, wait);
            }
        }
        self.pump_transfers(now);
    }

    // ---- ownership and routing -------------------------------------------------------------

    // ---- maintenance -------------------------------------------------------------------------

    // ---- one-hop membership (see membership.rs) ----------------------------------------------

    // ---- requests to peers -------------------------------------------------------------------

    // ---- store ops ---------------------------------------------------------------------------
}
