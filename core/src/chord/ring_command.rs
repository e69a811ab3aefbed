//! Commands over every key of the ring: `RingCommand` (Redis' DBSIZE over the whole ring,
//! FLUSHALL) and its steps, `RangeCommand`, which one member runs over its own primary range.
//!
//! ```text
//!  client ─► entry E: RingCommand { Flush }
//!            E runs it over (pred(E), E]                        (local)
//!            E ─► S1: RangeCommand ─► S1 runs it over its range ─► { value, successor S2 }
//!            E ─► S2: RangeCommand ─► ...                        until the successor is E
//!  client ◄─ RingCommandReply { sum of the values }
//! ```
//!
//! The walk follows each member's own successor, so it visits every position of the ring as
//! the members see it, vnodes included. A member that does not answer ends the walk with an
//! error naming it: the members before it have run the command (a FLUSHALL is safe to retry).
//!
//! A flush replaces every live key of the range with a tombstone at a fresh version, as the
//! owner's DEL would (replicated, collected later), in batches: each key through an internal
//! Execute that holds its key id and writes the tombstone only if the key still has the
//! version the scan saw, so a write that lands during the flush is kept (it came after).

use std::collections::BTreeMap;

use chordkv_protocol::{ErrorCode, Id, Message, NodeAddr, NodeRef, RangeCommand};

use super::node::{Millis, Node, Phase, ReplyTo};
use super::rpc::RpcKind;
use super::store_wait::StoreWait;
use crate::store::{ScanCursor, StoreError, StoreOp, StoreOutcome};

/// Most members one walk visits (a bound against a ring that never closes).
const MAX_WALK_STEPS: u32 = 1 << 16;
/// Entries a flush scans per batch, and their bytes.
const FLUSH_BATCH: usize = 256;
const FLUSH_SCAN_BYTES: usize = 1024 * 1024;

/// Walks this node coordinates, and range commands running here.
#[derive(Debug, Default)]
pub(super) struct RingCommands {
    walks: BTreeMap<u64, Walk>,
    runs: BTreeMap<u64, RangeRun>,
    next_id: u64,
}

#[derive(Debug)]
struct Walk {
    to: ReplyTo,
    request_id: u64,
    command: RangeCommand,
    total: u64,
    steps: u32,
    /// Our own range is done; the chain of members has come back to us.
    local_done: bool,
    chain_done: bool,
}

/// Who waits for a range command.
#[derive(Debug, Clone, Copy)]
enum RunFor {
    Peer { to: ReplyTo, request_id: u64 },
    Walk(u64),
}

#[derive(Debug)]
struct RangeRun {
    for_: RunFor,
    command: RangeCommand,
    start: Id,
    end: Id,
    after: Option<ScanCursor>,
    value: u64,
    /// Flush jobs of the current batch not yet done, and whether the scan has reached the end.
    pending: usize,
    scanned_all: bool,
    error: Option<String>,
}

impl Node {
    /// A client's `RingCommand`: runs it here and walks the ring from our successor.
    pub(super) fn start_ring_command(
        &mut self,
        now: Millis,
        to: ReplyTo,
        request_id: u64,
        command: RangeCommand,
    ) {
        if self.refuse_unless_active(to, request_id) {
            return;
        }
        let id = self.ring_cmds.next_id;
        self.ring_cmds.next_id += 1;
        self.ring_cmds.walks.insert(
            id,
            Walk {
                to,
                request_id,
                command,
                total: 0,
                steps: 0,
                local_done: false,
                chain_done: false,
            },
        );
        self.start_range_run(now, RunFor::Walk(id), command);
        let next = self.routing.successors().first().copied();
        self.walk_to(now, id, next);
    }

    /// Asks `next` to run the walk's command, or ends the chain when it is us (or nobody).
    fn walk_to(&mut self, now: Millis, id: u64, next: Option<NodeRef>) {
        let Some(walk) = self.ring_cmds.walks.get_mut(&id) else {
            return;
        };
        match next {
            Some(n) if n.addr != self.me.addr && walk.steps < MAX_WALK_STEPS => {
                walk.steps += 1;
                let msg = Message::RangeCommand {
                    command: walk.command,
                };
                let timeout = self.config.request_timeout_ms;
                self.send_request(now, n.addr, msg, RpcKind::RangeCommand(id), 0, timeout, 0);
            }
            _ => {
                walk.chain_done = true;
                self.maybe_finish_walk(id);
            }
        }
    }

    /// A member answered a step of walk `id`.
    pub(super) fn on_range_command_reply(&mut self, now: Millis, id: u64, from: NodeAddr, msg: Message) {
        match msg {
            Message::RangeCommandReply { value, successor } => {
                if let Some(walk) = self.ring_cmds.walks.get_mut(&id) {
                    walk.total += value;
                }
                self.walk_to(now, id, Some(successor));
            }
            Message::Error { text, .. } => self.fail_walk(id, &format!("member {from} failed: {text}")),
            other => self.fail_walk(id, &format!("member {from} answered {}", other.name())),
        }
    }

    /// A member did not answer a step of walk `id`.
    pub(super) fn on_range_command_failed(&mut self, id: u64, to: NodeAddr) {
        self.fail_walk(
            id,
            &format!("member {to} did not answer (the members before it have run the command; retry)"),
        );
    }

    fn fail_walk(&mut self, id: u64, text: &str) {
        if let Some(walk) = self.ring_cmds.walks.remove(&id) {
            let msg = Message::Error {
                code: ErrorCode::Unavailable,
                hops: 0,
                text: text.to_string(),
            };
            self.reply(walk.to, walk.request_id, msg);
        }
    }

    fn maybe_finish_walk(&mut self, id: u64) {
        let done = self
            .ring_cmds
            .walks
            .get(&id)
            .is_some_and(|w| w.local_done && w.chain_done);
        if done {
            if let Some(walk) = self.ring_cmds.walks.remove(&id) {
                let msg = Message::RingCommandReply { value: walk.total };
                self.reply(walk.to, walk.request_id, msg);
            }
        }
    }

    /// A peer's `RangeCommand`: runs it over our primary range.
    pub(super) fn serve_range_command(&mut self, to: ReplyTo, request_id: u64, command: RangeCommand) {
        if self.refuse_unless_active(to, request_id) {
            return;
        }
        self.start_range_run(0, RunFor::Peer { to, request_id }, command);
    }

    /// Answers `NotReady` and returns true unless this node serves a range now.
    fn refuse_unless_active(&mut self, to: ReplyTo, request_id: u64) -> bool {
        if self.phase == Phase::Active {
            return false;
        }
        let msg = Message::Error {
            code: ErrorCode::NotReady,
            hops: 0,
            text: format!("node is {:?}, not serving a range", self.phase),
        };
        self.reply(to, request_id, msg);
        true
    }

    fn start_range_run(&mut self, _now: Millis, for_: RunFor, command: RangeCommand) {
        let (start, end) = self.primary_range();
        let id = self.ring_cmds.next_id;
        self.ring_cmds.next_id += 1;
        self.ring_cmds.runs.insert(
            id,
            RangeRun {
                for_,
                command,
                start,
                end,
                after: None,
                value: 0,
                pending: 0,
                scanned_all: false,
                error: None,
            },
        );
        match command {
            RangeCommand::Count => {
                self.store_op(StoreOp::CountRange { start, end }, StoreWait::RangeCommand(id));
            }
            RangeCommand::Flush => self.scan_for_flush(id),
        }
    }

    fn scan_for_flush(&mut self, id: u64) {
        let Some(run) = self.ring_cmds.runs.get(&id) else {
            return;
        };
        let op = StoreOp::Scan {
            start: run.start,
            end: run.end,
            after: run.after.clone(),
            limit: FLUSH_BATCH,
            max_bytes: FLUSH_SCAN_BYTES,
        };
        self.store_op(op, StoreWait::RangeCommand(id));
    }

    /// The store answered a range command's count or scan.
    pub(super) fn on_range_command_store(
        &mut self,
        now: Millis,
        id: u64,
        result: Result<StoreOutcome, StoreError>,
    ) {
        let Some(run) = self.ring_cmds.runs.get_mut(&id) else {
            return;
        };
        match (run.command, result) {
            (RangeCommand::Count, Ok(StoreOutcome::Count(n))) => {
                run.value = n;
                run.scanned_all = true;
            }
            (RangeCommand::Flush, Ok(StoreOutcome::Scanned { items, .. })) => {
                // A batch cut by the byte budget is short but not the last: only an empty
                // one ends the range.
                run.scanned_all = items.is_empty();
                run.after = items.last().map(|last| (Id::of_key(&last.key), last.key.clone()));
                let mut by_id: BTreeMap<Id, Vec<(bytes::Bytes, u64)>> = BTreeMap::new();
                for it in items.into_iter().filter(|it| it.value.is_some()) {
                    by_id
                        .entry(Id::of_key(&it.key))
                        .or_default()
                        .push((it.key, it.version));
                }
                run.pending = by_id.len();
                for (key_id, keys) in by_id {
                    self.start_reclaim(now, key_id, keys, false, Some(id));
                }
            }
            (_, Err(e)) => {
                run.error = Some(e.to_string());
                run.scanned_all = true;
            }
            (_, Ok(other)) => {
                run.error = Some(format!("store answered {other:?}"));
                run.scanned_all = true;
            }
        }
        self.advance_range_run(id);
    }

    /// A flush job of run `id` ended: `flushed` tombstones written, or an error.
    pub(super) fn on_flush_job_done(&mut self, id: u64, outcome: Result<u64, String>) {
        let Some(run) = self.ring_cmds.runs.get_mut(&id) else {
            return;
        };
        run.pending = run.pending.saturating_sub(1);
        match outcome {
            Ok(n) => run.value += n,
            Err(e) => {
                run.error.get_or_insert(e);
            }
        }
        self.advance_range_run(id);
    }

    /// Scans the next batch, or answers once the range is done.
    fn advance_range_run(&mut self, id: u64) {
        let Some(run) = self.ring_cmds.runs.get(&id) else {
            return;
        };
        if run.pending > 0 {
            return;
        }
        if !run.scanned_all && run.error.is_none() {
            return self.scan_for_flush(id);
        }
        let Some(run) = self.ring_cmds.runs.remove(&id) else {
            return;
        };
        match (run.for_, run.error) {
            (RunFor::Peer { to, request_id }, None) => {
                let successor = self.routing.successors().first().copied().unwrap_or(self.me);
                let msg = Message::RangeCommandReply {
                    value: run.value,
                    successor,
                };
                self.reply(to, request_id, msg);
            }
            (RunFor::Peer { to, request_id }, Some(text)) => {
                let msg = Message::Error {
                    code: ErrorCode::StoreFailed,
                    hops: 0,
                    text,
                };
                self.reply(to, request_id, msg);
            }
            (RunFor::Walk(walk), None) => {
                if let Some(w) = self.ring_cmds.walks.get_mut(&walk) {
                    w.total += run.value;
                    w.local_done = true;
                }
                self.maybe_finish_walk(walk);
            }
            (RunFor::Walk(walk), Some(text)) => {
                let me = self.me.addr;
                self.fail_walk(walk, &format!("member {me} failed: {text}"));
            }
        }
    }
}
