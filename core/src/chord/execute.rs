//! Commands run atomically at the key's owner: [`Message::Execute`] (a read-modify-write such
//! as INCR, or a transaction's commands over the keys of one hash tag).
//!
//! The owner serves an `Execute` like a write (deadline, duplicate, lease and fence checks in
//! [`Node::serve`]), then:
//!
//! ```text
//!  wait     until no other Execute holds the key id and no PUT/DELETE of it is being stored
//!  read     GetMany of every key the commands touch (and the watched ones)
//!  check    a watched key's version changed ─► ExecuteReply { replies: None }, nothing written
//!  run      crate::command::run, each command in turn over one Keyspace
//!  write    the changed values as one batch, one fresh version, replicated like a PUT
//!  answer   ExecuteReply { replies }, once stored (and acknowledged as a PUT would be)
//! ```
//!
//! The *key id* (the id every key of the request is placed by: one hash tag) is the unit of
//! locking: from the read until its writes are stored an Execute holds its id, and a PUT or
//! DELETE of that id arriving meanwhile waits for it (else it could be stored between the
//! read and the write and be overwritten by a value computed without it). An Execute waits for
//! PUTs and DELETEs of its id that are being stored, so it reads what they wrote. Waiting is
//! first come, first served per id, and bounded ([`MAX_WAITING`]).
//!
//! The store drivers need nothing new for this: the owner is the only writer of fresh
//! versions of its range, and it runs one Execute per id at a time.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use chordkv_protocol::{CommandReply, ErrorCode, Id, Item, Message, NodeRef};

use super::node::{Millis, Node, Phase, ReplyTo};
use super::store_wait::StoreWait;
use crate::command::{self, Keyspace};
use crate::store::{is_expired, ScanCursor, StoreError, StoreOp, StoreOutcome};

/// Requests (Executes, and PUTs and DELETEs behind one) a node lets wait for a key id before
/// it answers `Busy`.
pub(super) const MAX_WAITING: usize = 10_000;

/// How often the expiry sweep looks at the next entries of the node's range (Redis' active
/// expiry runs 10 times a second)...
pub(super) const SWEEP_INTERVAL_MS: Millis = 100;
/// ...and how many entries it looks at each time. A batch in which a value had expired is
/// followed by the next at once (after Redis' adaptive rule, which repeats while a quarter of
/// its sample had expired; here every batch is a sample of the range, tombstones included).
const SWEEP_BATCH: usize = 256;
/// Bytes of keys and values one sweep scan may return.
const SWEEP_SCAN_BYTES: usize = 256 * 1024;

/// What Redis Cluster answers when the keys of a request have more than one owner.
/// The most bytes a transaction's writes, or its replies, may take (estimated from above):
/// they travel in one frame each.
const EXECUTE_FRAME_BUDGET: usize = chordkv_protocol::MAX_FRAME_BYTES - 64 * 1024;

/// An estimate from above of the bytes `reply` takes in a frame.
fn reply_bytes(reply: &CommandReply) -> usize {
    match reply {
        CommandReply::Bulk(b) => b.len() + 8,
        CommandReply::Status(t) | CommandReply::Error(t) => t.len() + 8,
        CommandReply::Array(items) => 8 + items.iter().map(reply_bytes).sum::<usize>(),
        _ => 16,
    }
}

pub const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

/// One Execute at its owner.
#[derive(Debug)]
pub(super) struct Job {
    to: ReplyTo,
    request_id: u64,
    hops: u16,
    key_id: Id,
    primary: NodeRef,
    deadline: Millis,
    commands: Vec<Vec<Bytes>>,
    watched: Vec<(Bytes, u64)>,
    /// The replies, once run; the version its writes were stamped with; the pending
    /// replicated write (see `replication.rs`).
    replies: Vec<CommandReply>,
    version: u64,
    write: Option<u64>,
    /// The expiry sweep's or a flush's: no client waits for it (see [`Reclaim`]).
    reclaim: Option<Reclaim>,
    /// Tombstones written.
    tombstones: u64,
}

/// An internal job: replaces each of `keys` that still has the version given (and, with
/// `expired_only`, whose value has expired) with a tombstone; `run`: the flush it is part of.
#[derive(Debug)]
struct Reclaim {
    keys: Vec<(Bytes, u64)>,
    expired_only: bool,
    run: Option<u64>,
}

/// A PUT or DELETE that arrived while an Execute held its key id.
#[derive(Debug)]
pub(super) struct HeldWrite {
    pub to: ReplyTo,
    pub request_id: u64,
    pub hops: u16,
    pub message: Message,
    pub key_id: Id,
    pub deadline: Millis,
    pub range: (NodeRef, Id),
}

#[derive(Debug)]
enum Waiting {
    Job(u64),
    // Boxed: a held write carries a whole message, and most waiting entries are jobs.
    Write(Box<HeldWrite>),
}

impl Waiting {
    fn key_id<'a>(&'a self, jobs: &'a BTreeMap<u64, Job>) -> Option<&'a Id> {
        match self {
            Waiting::Job(id) => jobs.get(id).map(|j| &j.key_id),
            Waiting::Write(w) => Some(&w.key_id),
        }
    }
}

/// Executes in progress and the requests waiting for their key ids.
#[derive(Debug, Default)]
pub(super) struct Executions {
    jobs: BTreeMap<u64, Job>,
    next_id: u64,
    /// Key ids held by a running Execute (from its read until its writes are stored).
    held: BTreeMap<Id, u64>,
    /// PUTs and DELETEs being stored, by key id.
    storing: BTreeMap<Id, u32>,
    waiting: VecDeque<Waiting>,
    /// The expiry sweep: when it next looks, where it goes on from, whether a scan is out.
    sweep_at: Millis,
    sweep_after: Option<ScanCursor>,
    sweep_scanning: bool,
    /// Whether the store may hold values with an expiry: true at start (a store that kept its
    /// data may), after a sweep pass that saw one, and when one is stored; a pass that saw none
    /// clears it and the sweep rests until one is stored.
    pub may_expire: bool,
    /// Whether the pass under way has seen a value with an expiry.
    pass_saw_expiry: bool,
}

impl Executions {
    /// The executions of a node that has just started (its store may hold expiring values).
    pub fn new() -> Executions {
        Executions {
            may_expire: true,
            ..Executions::default()
        }
    }

    /// Whether a PUT or DELETE of `key_id` must wait: an Execute holds the id, or one is
    /// waiting for it (first come, first served).
    pub fn write_must_wait(&self, key_id: &Id) -> bool {
        self.held.contains_key(key_id) || self.is_waiting(key_id)
    }

    fn is_waiting(&self, key_id: &Id) -> bool {
        !self.waiting.is_empty() && self.waiting.iter().any(|w| w.key_id(&self.jobs) == Some(key_id))
    }

    /// A PUT or DELETE of `key_id` is being stored.
    pub fn storing(&mut self, key_id: Id) {
        *self.storing.entry(key_id).or_default() += 1;
    }

    /// Whether any Execute holds, or any request waits for, a key id in `(start, end]`.
    pub fn busy_in(&self, start: &Id, end: &Id) -> bool {
        self.held
            .keys()
            .chain(self.waiting.iter().filter_map(|w| w.key_id(&self.jobs)))
            .any(|id| chordkv_protocol::in_half_open(id, start, end))
    }
}

/// Whether `job` is part of a flush (its tombstones are not expiries).
fn job_is_flush(job: Option<&Job>) -> bool {
    job.and_then(|j| j.reclaim.as_ref())
        .is_some_and(|r| r.run.is_some())
}

impl Node {
    /// Serves an `Execute` this node holds the range of; the checks of [`Node::serve`] are done.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn serve_execute(
        &mut self,
        now: Millis,
        to: ReplyTo,
        request_id: u64,
        hops: u16,
        message: Message,
        key_id: Id,
        deadline: Millis,
        primary: NodeRef,
    ) {
        let Message::Execute {
            key,
            commands,
            watched,
        } = message
        else {
            return;
        };
        self.stats.ops_execute += 1;
        // Every key must be placed where `key` is: the owner checks, whatever the client did.
        let mut ids_agree = Id::of_key(&key) == key_id;
        for words in &commands {
            if let Ok(keys) = command::keys(words) {
                ids_agree &= keys.iter().all(|k| Id::of_key(k) == key_id);
            }
        }
        ids_agree &= watched.iter().all(|(k, _)| Id::of_key(k) == key_id);
        if !ids_agree {
            let msg = Message::Error {
                code: ErrorCode::BadRequest,
                hops,
                text: CROSSSLOT.to_string(),
            };
            return self.reply(to, request_id, msg);
        }
        if self.exec.waiting.len() >= MAX_WAITING {
            let msg = Message::Error {
                code: ErrorCode::Busy,
                hops,
                text: "too many commands wait for their keys at this owner".to_string(),
            };
            return self.reply(to, request_id, msg);
        }
        let id = self.exec.next_id;
        self.exec.next_id += 1;
        self.exec.jobs.insert(
            id,
            Job {
                to,
                request_id,
                hops,
                key_id,
                primary,
                deadline,
                commands,
                watched,
                replies: Vec::new(),
                version: 0,
                write: None,
                reclaim: None,
                tombstones: 0,
            },
        );
        if self.job_must_wait(&key_id) {
            self.stats.execute_waits += 1;
            self.exec.waiting.push_back(Waiting::Job(id));
        } else {
            self.read_for_job(now, id);
        }
    }

    fn job_must_wait(&self, key_id: &Id) -> bool {
        self.exec.held.contains_key(key_id)
            || self.exec.storing.contains_key(key_id)
            || self.exec.is_waiting(key_id)
    }

    /// Holds the job's key id and reads every key it names, unless waiting made it late.
    fn read_for_job(&mut self, now: Millis, id: u64) {
        let Some(job) = self.exec.jobs.get(&id) else {
            return;
        };
        if job.deadline != 0 && now.saturating_add(self.config.max_clock_offset_ms) >= job.deadline {
            self.stats.late_requests_refused += 1;
            let text = "request deadline passed while it waited for its keys (not applied)".to_string();
            return self.end_job(now, id, Err((ErrorCode::Timeout, text)));
        }
        let mut keys: Vec<Bytes> = job
            .commands
            .iter()
            .filter_map(|w| command::keys(w).ok())
            .flatten()
            .chain(job.watched.iter().map(|(k, _)| k.clone()))
            .chain(
                job.reclaim
                    .iter()
                    .flat_map(|r| r.keys.iter().map(|(k, _)| k.clone())),
            )
            .collect();
        keys.sort();
        keys.dedup();
        self.exec.held.insert(job.key_id, id);
        self.store_op(StoreOp::GetMany { keys }, StoreWait::ExecuteRead(id));
    }

    /// The job's keys are read: check the watched versions, run the commands, store what they
    /// wrote.
    pub(super) fn on_execute_read(&mut self, now: Millis, id: u64, result: Result<StoreOutcome, StoreError>) {
        let items = match result {
            Ok(StoreOutcome::Items(items)) => items,
            Ok(other) => {
                return self.end_job(
                    now,
                    id,
                    Err((ErrorCode::Internal, format!("store answered {other:?}"))),
                )
            }
            Err(e) => return self.end_job(now, id, Err((ErrorCode::StoreFailed, e.to_string()))),
        };
        let Some(job) = self.exec.jobs.get_mut(&id) else {
            return;
        };
        let versions: BTreeMap<&Bytes, u64> = items.iter().map(|it| (&it.key, it.version)).collect();
        if job
            .watched
            .iter()
            .any(|(k, v)| versions.get(k).copied().unwrap_or(0) != *v)
        {
            self.stats.execute_watch_aborts += 1;
            return self.end_job(now, id, Ok(None));
        }
        // Values read that have expired are replaced with tombstones, unless a command
        // writes them: Redis' lazy expiry, with the tombstone replicated like a DEL.
        let expired: Vec<(Bytes, u64)> = items
            .iter()
            .filter(|it| it.value.is_some() && is_expired(it.expires_at, now))
            .map(|it| (it.key.clone(), it.version))
            .collect();
        let mut writes = match &job.reclaim {
            Some(reclaim) => {
                let live: Vec<(&Bytes, u64)> = items
                    .iter()
                    .filter(|it| it.value.is_some())
                    .map(|it| (&it.key, it.version))
                    .collect();
                reclaim
                    .keys
                    .iter()
                    .filter(|(k, v)| {
                        if reclaim.expired_only {
                            expired.iter().any(|(ek, ev)| ek == k && ev == v)
                        } else {
                            live.iter().any(|(lk, lv)| *lk == k && lv == v)
                        }
                    })
                    .map(|(k, _)| (k.clone(), None, 0))
                    .collect()
            }
            None => {
                let mut keyspace =
                    Keyspace::new(now, items.into_iter().map(|it| (it.key, it.value, it.expires_at)))
                        .with_max_value(self.config.max_value_bytes);
                job.replies = job
                    .commands
                    .iter()
                    .map(|w| command::run(w, &mut keyspace))
                    .collect();
                keyspace.into_writes()
            }
        };
        for (key, _) in expired {
            if !writes.iter().any(|(k, _, _)| *k == key) {
                writes.push((key, None, 0));
            }
        }
        if job.reclaim.is_none() {
            // Decided, and nothing applied yet: the writes go to each replica in one frame and
            // the replies back in one, so a transaction either fits or is refused whole.
            let replies: usize = job.replies.iter().map(reply_bytes).sum();
            let written: usize = writes
                .iter()
                .map(|(k, v, _)| k.len() + v.as_ref().map_or(0, |v| v.len()) + 32)
                .sum();
            if written.max(replies) > EXECUTE_FRAME_BUDGET {
                let text = format!(
                    "transaction too large for one frame, nothing applied: its writes take \
                     {written} bytes and its replies {replies}, over the {EXECUTE_FRAME_BUDGET} \
                     one frame carries"
                );
                return self.end_job(now, id, Err((ErrorCode::TooLarge, text)));
            }
        }
        if writes.is_empty() {
            let replies = std::mem::take(&mut job.replies);
            return self.end_job(now, id, Ok(Some(replies)));
        }
        let (primary, key_id, internal) = (job.primary, job.key_id, job.reclaim.is_some());
        // The lease may have ended while the keys were read: nothing is written without one.
        if self.config.is_consistent() && !self.leases.serves(&primary.id, now) {
            self.stats.ops_refused_no_lease += 1;
            let text = match self.no_lease_error(&primary.id, 0) {
                Message::Error { text, .. } => text,
                _ => String::new(),
            };
            return self.end_job(now, id, Err((ErrorCode::NotReady, text)));
        }
        let version = self.clock.stamp(now);
        if self.config.is_consistent() {
            let fence = self.leases.held(&primary.id).map_or(0, |h| h.fence_ms);
            if version >> 16 > fence {
                self.stats.ops_refused_no_lease += 1;
                let text =
                    "the version clock ran past the lease's fence; retry after the renewal".to_string();
                return self.end_job(now, id, Err((ErrorCode::NotReady, text)));
            }
        }
        let items: Vec<Item> = writes
            .into_iter()
            .map(|(key, value, expires_at)| Item {
                key,
                version,
                value,
                expires_at,
            })
            .collect();
        let tombstones = items.iter().filter(|it| it.value.is_none()).count() as u64;
        if job_is_flush(self.exec.jobs.get(&id)) {
            if let Some(job) = self.exec.jobs.get_mut(&id) {
                job.tombstones = tombstones;
            }
        } else {
            self.stats.keys_expired += tombstones;
        }
        let write = if self.may_replicate(&primary) {
            let write = self.replicate_items(now, items.clone(), &primary);
            // Nobody waits for the sweep's acknowledgements.
            match write {
                Some(w) if internal => {
                    self.repl.writes.remove(&w);
                    None
                }
                other => other,
            }
        } else {
            None
        };
        if let Some(job) = self.exec.jobs.get_mut(&id) {
            job.version = version;
            job.write = write;
        }
        debug_assert!(self.exec.held.get(&key_id) == Some(&id));
        self.store_op(StoreOp::PutMany { items }, StoreWait::ExecuteWrite(id));
    }

    /// The job's writes are stored.
    pub(super) fn on_execute_written(
        &mut self,
        now: Millis,
        id: u64,
        result: Result<StoreOutcome, StoreError>,
    ) {
        match result {
            Ok(StoreOutcome::PutMany { .. }) => {
                let replies = self
                    .exec
                    .jobs
                    .get_mut(&id)
                    .map(|j| std::mem::take(&mut j.replies));
                self.end_job(now, id, Ok(replies));
            }
            Ok(other) => self.end_job(
                now,
                id,
                Err((ErrorCode::Internal, format!("store answered {other:?}"))),
            ),
            Err(e) => self.end_job(
                now,
                id,
                Err((ErrorCode::StoreFailed, super::ops::store_failure_text(&e, true))),
            ),
        }
    }

    /// Answers the job (`Ok(None)`: a watched key changed), frees its key id and starts what
    /// waited for it.
    fn end_job(
        &mut self,
        now: Millis,
        id: u64,
        outcome: Result<Option<Vec<CommandReply>>, (ErrorCode, String)>,
    ) {
        let Some(job) = self.exec.jobs.remove(&id) else {
            return;
        };
        if self.exec.held.get(&job.key_id) == Some(&id) {
            self.exec.held.remove(&job.key_id);
        }
        if let Some(reclaim) = &job.reclaim {
            if let Some(run) = reclaim.run {
                let done = match &outcome {
                    Ok(_) => Ok(job.tombstones),
                    Err((_, text)) => Err(text.clone()),
                };
                self.on_flush_job_done(run, done);
            }
            return self.start_waiting(now);
        }
        let msg = match outcome {
            Ok(replies) => Message::ExecuteReply {
                hops: job.hops,
                version: if replies.is_some() { job.version } else { 0 },
                replies,
            },
            Err((code, text)) => Message::Error {
                code,
                hops: job.hops,
                text,
            },
        };
        match job.write {
            Some(w) => self.local_write_done(w, job.to, job.request_id, msg),
            None => self.reply(job.to, job.request_id, msg),
        }
        self.start_waiting(now);
    }

    /// A PUT or DELETE of `key_id` is stored: an Execute waiting for it may start.
    pub(super) fn on_write_stored(&mut self, now: Millis, key_id: &Id) {
        if let Some(n) = self.exec.storing.get_mut(key_id) {
            *n -= 1;
            if *n == 0 {
                self.exec.storing.remove(key_id);
                if !self.exec.waiting.is_empty() {
                    self.start_waiting(now);
                }
            }
        }
    }

    /// A PUT or DELETE waits behind an Execute of its key id.
    pub(super) fn hold_write(&mut self, write: HeldWrite) {
        if self.exec.waiting.len() >= MAX_WAITING {
            let msg = Message::Error {
                code: ErrorCode::Busy,
                hops: write.hops,
                text: "too many commands wait for their keys at this owner".to_string(),
            };
            return self.reply(write.to, write.request_id, msg);
        }
        self.stats.execute_waits += 1;
        self.exec.waiting.push_back(Waiting::Write(Box::new(write)));
    }

    /// Starts, in arrival order, every waiting request whose key id is free and that no
    /// earlier waiting request of the same id is ahead of.
    fn start_waiting(&mut self, now: Millis) {
        let mut i = 0;
        while i < self.exec.waiting.len() {
            let Some(key_id) = self.exec.waiting[i].key_id(&self.exec.jobs).copied() else {
                self.exec.waiting.remove(i);
                continue;
            };
            let ahead = self
                .exec
                .waiting
                .iter()
                .take(i)
                .any(|w| w.key_id(&self.exec.jobs) == Some(&key_id));
            let free = !self.exec.held.contains_key(&key_id);
            let is_job = matches!(self.exec.waiting[i], Waiting::Job(_));
            if ahead || !free || (is_job && self.exec.storing.contains_key(&key_id)) {
                i += 1;
                continue;
            }
            match self.exec.waiting.remove(i) {
                Some(Waiting::Job(id)) => self.read_for_job(now, id),
                Some(Waiting::Write(w)) => self.release_write(now, *w),
                None => {}
            }
        }
    }

    /// The expiry sweep's step, when one is due: scans the next entries of this node's own
    /// range (bounded: [`SWEEP_BATCH`] entries every [`SWEEP_INTERVAL_MS`]).
    pub(super) fn sweep_expired(&mut self, now: Millis) {
        if !self.exec.may_expire
            || now < self.exec.sweep_at
            || self.exec.sweep_scanning
            || self.phase != Phase::Active
        {
            return;
        }
        self.exec.sweep_at = now + SWEEP_INTERVAL_MS;
        let (start, end) = self.primary_range();
        if self.receiving(&end) {
            return;
        }
        self.exec.sweep_scanning = true;
        let op = StoreOp::Scan {
            start,
            end,
            after: self.exec.sweep_after.clone(),
            limit: SWEEP_BATCH,
            max_bytes: SWEEP_SCAN_BYTES,
        };
        self.store_op(op, StoreWait::ExpirySweep);
    }

    /// The sweep's scan is back: every expired value found is replaced with a tombstone at
    /// the key's owner as an Execute would write it (the key id held, the version checked, the
    /// tombstone replicated), so a value written since is never removed.
    pub(super) fn on_sweep_scanned(&mut self, now: Millis, result: Result<StoreOutcome, StoreError>) {
        self.exec.sweep_scanning = false;
        let Ok(StoreOutcome::Scanned { items, .. }) = result else {
            return;
        };
        self.exec.pass_saw_expiry |= items.iter().any(|it| it.value.is_some() && it.expires_at != 0);
        // A batch cut by the byte budget is short but not the last: only an empty one ends
        // the pass.
        self.exec.sweep_after = items.last().map(|last| (Id::of_key(&last.key), last.key.clone()));
        if self.exec.sweep_after.is_none() {
            // A whole pass: rest until a value with an expiry is stored, if none was seen.
            self.exec.may_expire = std::mem::take(&mut self.exec.pass_saw_expiry);
        }
        let mut by_id: BTreeMap<Id, Vec<(Bytes, u64)>> = BTreeMap::new();
        for it in &items {
            if it.value.is_some() && is_expired(it.expires_at, now) {
                by_id
                    .entry(Id::of_key(&it.key))
                    .or_default()
                    .push((it.key.clone(), it.version));
            }
        }
        let found: usize = by_id.values().map(Vec::len).sum();
        if found > 0 {
            self.exec.sweep_at = now;
        }
        for (key_id, keys) in by_id {
            if self.exec.waiting.len() >= MAX_WAITING {
                break;
            }
            self.start_reclaim(now, key_id, keys, true, None);
        }
    }

    /// Starts an internal job replacing `keys` (all of one key id) with tombstones where they
    /// still have the versions given (and, with `expired_only`, have expired); `run`: the
    /// flush waiting for it.
    pub(super) fn start_reclaim(
        &mut self,
        now: Millis,
        key_id: Id,
        keys: Vec<(Bytes, u64)>,
        expired_only: bool,
        run: Option<u64>,
    ) {
        let id = self.exec.next_id;
        self.exec.next_id += 1;
        let job = Job {
            to: ReplyTo(0),
            request_id: 0,
            hops: 0,
            key_id,
            primary: self.me,
            deadline: 0,
            commands: Vec::new(),
            watched: Vec::new(),
            replies: Vec::new(),
            version: 0,
            write: None,
            reclaim: Some(Reclaim {
                keys,
                expired_only,
                run,
            }),
            tombstones: 0,
        };
        self.exec.jobs.insert(id, job);
        if self.job_must_wait(&key_id) {
            self.exec.waiting.push_back(Waiting::Job(id));
        } else {
            self.read_for_job(now, id);
        }
    }

    /// A waiting PUT or DELETE goes on, unless the wait made it late or the lease ended.
    fn release_write(&mut self, now: Millis, w: HeldWrite) {
        if w.deadline != 0 && now.saturating_add(self.config.max_clock_offset_ms) >= w.deadline {
            self.stats.late_requests_refused += 1;
            let msg = Message::Error {
                code: ErrorCode::Timeout,
                hops: w.hops,
                text: "request deadline passed while it waited for its key (not applied)".to_string(),
            };
            return self.reply(w.to, w.request_id, msg);
        }
        // The lease may have ended while it waited: nothing is written without one (the entry
        // retries on the error, as on any owner's NotReady).
        let primary = w.range.0;
        if self.config.is_consistent() && !self.leases.serves(&primary.id, now) {
            self.stats.ops_refused_no_lease += 1;
            let msg = self.no_lease_error(&primary.id, w.hops);
            return self.reply(w.to, w.request_id, msg);
        }
        self.store_client_write(
            now,
            w.to,
            w.request_id,
            w.hops,
            w.message,
            w.key_id,
            w.range,
            None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chord::{Config, Output};
    use crate::store::{self, MemoryStore, Store};
    use chordkv_protocol::Frame;

    /// One node owning the whole ring, its store ops held until the test runs them, so that
    /// requests can be interleaved with an Execute between its read and its write.
    struct One {
        node: Node,
        store: MemoryStore,
        ops: Vec<(u64, StoreOp)>,
        replies: Vec<Frame>,
        now: Millis,
    }

    impl One {
        fn new() -> One {
            let me = NodeRef::from_addr("127.0.0.1:7000".parse().unwrap());
            let mut node = Node::new(me, Config::with_stabilize_interval_ms(100), 0);
            node.create(0);
            One {
                node,
                store: MemoryStore::new(),
                ops: Vec::new(),
                replies: Vec::new(),
                now: 1,
            }
        }

        fn send(&mut self, rid: u64, message: Message) {
            self.node
                .handle_request(self.now, ReplyTo(1), Frame::new(rid, message));
            self.poll();
        }

        fn poll(&mut self) {
            while let Some(out) = self.node.poll_output() {
                match out {
                    Output::Store { id, op, .. } => self.ops.push((id, op)),
                    Output::Reply { frame, .. } => self.replies.push(frame),
                    _ => {}
                }
            }
        }

        /// Runs the held store ops (those issued meanwhile too) until none is left.
        fn run_store(&mut self) {
            while !self.ops.is_empty() {
                let (id, op) = self.ops.remove(0);
                let result = store::execute(&self.store as &dyn Store, op);
                self.node.store_done(self.now, id, result);
                self.poll();
            }
        }

        fn value(&self, key: &str) -> Option<Bytes> {
            self.store.get(key.as_bytes()).unwrap().and_then(|e| e.value)
        }

        fn reply(&self, rid: u64) -> &Message {
            &self
                .replies
                .iter()
                .find(|f| f.request_id == rid)
                .expect("replied")
                .message
        }
    }

    fn b(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    fn exec(commands: &[&str]) -> Message {
        let commands: Vec<Vec<Bytes>> = commands.iter().map(|c| c.split(' ').map(b).collect()).collect();
        let key = command::keys(&commands[0]).unwrap()[0].clone();
        Message::Execute {
            key,
            commands,
            watched: vec![],
        }
    }

    /// A PUT arriving while an INCR of its key is between its read and its write waits for
    /// it, and an INCR arriving while a PUT is being stored reads what the PUT wrote: neither
    /// write is lost, whatever order the store runs ops in.
    #[test]
    fn writes_of_a_key_wait_for_an_execute_and_it_for_them() {
        let mut one = One::new();
        one.send(1, exec(&["INCR n"]));
        assert_eq!(one.ops.len(), 1, "the INCR reads");
        one.send(
            2,
            Message::Put {
                key: b("n"),
                value: b("10"),
            },
        );
        assert_eq!(one.ops.len(), 1, "the PUT waits for the INCR");
        one.send(3, exec(&["INCR n"]));
        assert_eq!(one.ops.len(), 1, "the second INCR waits behind the PUT");
        one.run_store();
        assert_eq!(one.value("n"), Some(b("11")));
        let ints: Vec<_> = [1, 3]
            .iter()
            .map(|rid| match one.reply(*rid) {
                Message::ExecuteReply { replies: Some(r), .. } => r.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ints, [vec![CommandReply::Int(1)], vec![CommandReply::Int(11)]]);
        assert!(matches!(one.reply(2), Message::PutReply { .. }));

        // A PUT being stored when an INCR arrives: the INCR waits until it is stored.
        one.send(
            4,
            Message::Put {
                key: b("n"),
                value: b("100"),
            },
        );
        one.send(5, exec(&["INCR n"]));
        assert_eq!(one.ops.len(), 1, "only the PUT is in the store's hands");
        one.run_store();
        assert_eq!(one.value("n"), Some(b("101")));
    }

    /// A transaction whose writes or replies one frame cannot carry is refused whole, at the
    /// entry (its commands) or at the owner (what they make); a PUT over the node's
    /// `--max-value-bytes` is refused. Zeroed values are not touched, so cost no memory.
    #[test]
    fn what_one_frame_cannot_carry_is_refused_whole() {
        let mut one = One::new();
        let big = Bytes::from(vec![0u8; 300 << 20]);
        for (rid, key) in [(1, "{t}a"), (2, "{t}b")] {
            one.send(
                rid,
                Message::Put {
                    key: b(key),
                    value: big.clone(),
                },
            );
            one.run_store();
            assert!(
                matches!(one.reply(rid), Message::PutReply { .. }),
                "{:?}",
                one.reply(rid)
            );
        }
        let too_large = |m: &Message| matches!(m, Message::Error { code: ErrorCode::TooLarge, text, .. } if text.contains("nothing applied"));
        // Two small APPENDs whose results together are over a frame.
        one.send(3, exec(&["APPEND {t}a x", "APPEND {t}b x"]));
        one.run_store();
        assert!(too_large(one.reply(3)), "{:?}", one.reply(3));
        assert_eq!(
            one.value("{t}a").map(|v| v.len()),
            Some(300 << 20),
            "nothing applied"
        );
        // Reads whose replies together are over a frame.
        one.send(4, exec(&["GET {t}a", "GET {t}b"]));
        one.run_store();
        assert!(too_large(one.reply(4)), "{:?}", one.reply(4));
        // Commands that together are over a frame: refused before anything is read.
        let set = |k: &str| vec![b("SET"), b(k), big.clone()];
        one.send(
            5,
            Message::Execute {
                key: b("{t}c"),
                commands: vec![set("{t}c"), set("{t}d")],
                watched: vec![],
            },
        );
        assert!(one.ops.is_empty(), "nothing read");
        assert!(too_large(one.reply(5)), "{:?}", one.reply(5));
        // One small APPEND still runs.
        one.send(6, exec(&["APPEND {t}a x"]));
        one.run_store();
        assert!(matches!(
            one.reply(6),
            Message::ExecuteReply { replies: Some(_), .. }
        ));
        assert_eq!(one.value("{t}a").map(|v| v.len()), Some((300 << 20) + 1));

        // A node's own --max-value-bytes.
        let me = NodeRef::from_addr("127.0.0.1:7001".parse().unwrap());
        let mut config = Config::with_stabilize_interval_ms(100);
        config.max_value_bytes = 4;
        one.node = Node::new(me, config, 0);
        one.node.create(0);
        one.send(
            7,
            Message::Put {
                key: b("k"),
                value: b("12345"),
            },
        );
        assert!(
            matches!(one.reply(7), Message::Error { code: ErrorCode::TooLarge, text, .. } if text.contains("--max-value-bytes")),
            "{:?}",
            one.reply(7)
        );
        one.send(8, exec(&["APPEND k 12345"]));
        one.run_store();
        match one.reply(8) {
            Message::ExecuteReply { replies: Some(r), .. } => {
                assert!(
                    matches!(&r[0], CommandReply::Error(t) if t.contains("maximum allowed size")),
                    "{r:?}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    /// A watched key whose version changed: nothing runs. An unchanged one: all of it runs,
    /// with one version for every key written.
    #[test]
    fn watch_aborts_on_a_changed_version() {
        let mut one = One::new();
        one.send(
            1,
            Message::Put {
                key: b("{u}a"),
                value: b("1"),
            },
        );
        one.run_store();
        let Message::PutReply { version, .. } = one.reply(1).clone() else {
            panic!()
        };
        let tx = |watched: u64| Message::Execute {
            key: b("{u}a"),
            commands: vec![vec![b("INCR"), b("{u}a")], vec![b("SET"), b("{u}b"), b("x")]],
            watched: vec![(b("{u}a"), watched)],
        };
        one.send(2, tx(version + 1));
        one.run_store();
        assert!(matches!(
            one.reply(2),
            Message::ExecuteReply { replies: None, .. }
        ));
        assert_eq!(one.value("{u}a"), Some(b("1")));
        assert_eq!(one.value("{u}b"), None);
        one.send(3, tx(version));
        one.run_store();
        let Message::ExecuteReply {
            replies: Some(r),
            version: v,
            ..
        } = one.reply(3).clone()
        else {
            panic!("{:?}", one.reply(3))
        };
        assert_eq!(r, [CommandReply::Int(2), CommandReply::Status("OK".into())]);
        assert_eq!(one.value("{u}a"), Some(b("2")));
        for k in ["{u}a", "{u}b"] {
            assert_eq!(one.store.get(k.as_bytes()).unwrap().unwrap().version, v);
        }
    }

    /// Keys of two hash tags: refused before anything is read.
    #[test]
    fn keys_of_two_owners_are_refused() {
        let mut one = One::new();
        one.send(1, exec(&["MSET {a}x 1 {b}y 2"]));
        assert!(one.ops.is_empty());
        assert!(matches!(one.reply(1), Message::Error { text, .. } if text.starts_with("CROSSSLOT")));
    }

    /// An expired value reads as absent at once, and the sweep replaces it with a tombstone
    /// (a newer version, replicated like a DEL); a value written since its expiry is kept.
    #[test]
    fn expired_values_read_as_absent_and_are_swept() {
        let mut one = One::new();
        one.now = 1_000_000;
        one.send(1, exec(&["SET k v PX 100"]));
        one.send(2, exec(&["SET kept v PX 100"]));
        one.run_store();
        let written = one.store.get(b"k").unwrap().unwrap();
        assert_eq!(written.expires_at, 1_000_100);
        one.now += 50;
        one.send(3, Message::Get { key: b("k") });
        one.run_store();
        assert!(matches!(one.reply(3), Message::GetReply { value: Some(_), .. }));
        one.now += 100;
        one.send(4, Message::Get { key: b("k") });
        one.send(5, exec(&["TTL k"]));
        one.send(
            6,
            Message::Put {
                key: b("kept"),
                value: b("new"),
            },
        );
        one.run_store();
        assert!(
            matches!(one.reply(4), Message::GetReply { value: None, version, .. } if *version == written.version)
        );
        assert!(
            matches!(one.reply(5), Message::ExecuteReply { replies: Some(r), .. } if r == &[CommandReply::Int(-2)])
        );
        // The TTL's read found `k` expired and wrote its tombstone (lazy expiry).
        let after = one.store.get(b"k").unwrap().unwrap();
        assert!(
            after.value.is_none() && after.version > written.version,
            "{after:?}"
        );
        // The sweep, on the next tick, finds nothing left to do for `k` and keeps `kept`.
        one.send(7, exec(&["SET s v PX 10"]));
        one.run_store();
        one.now += 20;
        one.node.tick(one.now);
        one.poll();
        one.run_store();
        let swept = one.store.get(b"s").unwrap().unwrap();
        assert!(swept.value.is_none(), "the sweep wrote a tombstone: {swept:?}");
        assert_eq!(one.value("kept"), Some(b("new")));
        assert_eq!(one.node.stats().keys_expired, 2);
    }

    /// FLUSHALL on a one-node ring: every key, over several scan batches cut by their byte
    /// budget (values of 300 KiB), becomes a tombstone; DBSIZE counts none after.
    #[test]
    fn a_flush_covers_batches_cut_by_their_byte_budget() {
        use chordkv_protocol::RangeCommand;
        let mut one = One::new();
        let big = Bytes::from(vec![7u8; 300 * 1024]);
        for i in 0..12 {
            one.send(
                i,
                Message::Put {
                    key: b(&format!("big-{i}")),
                    value: big.clone(),
                },
            );
        }
        for i in 0..300 {
            one.send(
                100 + i,
                Message::Put {
                    key: b(&format!("small-{i}")),
                    value: b("v"),
                },
            );
        }
        one.run_store();
        one.send(
            1_000,
            Message::RingCommand {
                command: RangeCommand::Count,
            },
        );
        one.run_store();
        assert_eq!(one.reply(1_000), &Message::RingCommandReply { value: 312 });
        one.send(
            1_001,
            Message::RingCommand {
                command: RangeCommand::Flush,
            },
        );
        one.run_store();
        assert_eq!(one.reply(1_001), &Message::RingCommandReply { value: 312 });
        one.send(
            1_002,
            Message::RingCommand {
                command: RangeCommand::Count,
            },
        );
        one.run_store();
        assert_eq!(one.reply(1_002), &Message::RingCommandReply { value: 0 });
        assert_eq!(one.value("big-3"), None);
    }

    /// SCAN pages return every key at least once (the 50 keys of one hash tag together in a
    /// page),
    /// KEYS each exactly once, a pattern only the matches, RANDOMKEY one key, and expired
    /// values none of them.
    #[test]
    fn scans_cover_the_ring() {
        use std::collections::BTreeSet;
        let mut one = One::new();
        one.now = 1_000_000;
        let mut all = BTreeSet::new();
        for i in 0..250 {
            let key = format!("k{i}");
            one.send(
                i,
                Message::Put {
                    key: b(&key),
                    value: b("v"),
                },
            );
            all.insert(key);
        }
        for i in 0..50 {
            let key = format!("{{t}}.{i}");
            one.send(
                300 + i,
                Message::Put {
                    key: b(&key),
                    value: b("v"),
                },
            );
            all.insert(key);
        }
        one.send(400, exec(&["SET gone v PX 10"]));
        one.run_store();
        one.now += 20;
        let scan = |one: &mut One, rid: u64, cursor: u64, count: u32, pattern: Option<&str>, random: bool| {
            one.send(
                rid,
                Message::ScanKeys {
                    cursor,
                    count,
                    pattern: pattern.map(b),
                    random,
                },
            );
            one.run_store();
            match one.reply(rid).clone() {
                Message::ScanKeysReply { cursor, keys } => (
                    cursor,
                    keys.iter()
                        .map(|k| String::from_utf8(k.to_vec()).unwrap())
                        .collect::<Vec<_>>(),
                ),
                other => panic!("{other:?}"),
            }
        };
        let (mut cursor, mut seen, mut pages, mut rid) = (0, BTreeSet::new(), 0, 1_000);
        let mut whole_tag = false;
        let mut returned = 0;
        loop {
            let (next, keys) = scan(&mut one, rid, cursor, 10, None, false);
            rid += 1;
            pages += 1;
            let tagged = keys.iter().filter(|k| k.starts_with("{t}")).count();
            assert!(
                tagged == 0 || tagged == 50,
                "a hash tag's keys come in one page: {tagged}"
            );
            whole_tag |= tagged == 50;
            returned += keys.len();
            seen.extend(keys);
            if next == 0 {
                break;
            }
            assert!(next > cursor, "the cursor advances");
            cursor = next;
            assert!(pages < 1_000);
        }
        assert_eq!(seen, all, "every key at least once, the expired one never");
        assert_eq!(returned, all.len(), "each key once while the keyspace is stable");
        assert!(
            whole_tag,
            "a page holds every key of a hash tag (one id: the cursor cannot split it)"
        );
        let (c, keys) = scan(&mut one, rid, 0, 0, None, false);
        assert_eq!(c, 0);
        assert_eq!(keys.len(), 300, "KEYS returns each key once");
        let (_, keys) = scan(&mut one, rid + 1, 0, 0, Some("{t}*"), false);
        assert_eq!(keys.len(), 50);
        let (_, keys) = scan(&mut one, rid + 2, 0, 0, Some("k1?"), false);
        assert_eq!(keys.len(), 10);
        let (_, keys) = scan(&mut one, rid + 3, 0, 1, None, true);
        assert!(keys.len() == 1 && all.contains(&keys[0]), "{keys:?}");
    }
}
