//! Where a blocking store's ops run (network I/O: Redis), so that the event loop never waits
//! on one.
//!
//! ```text
//!                     ┌─► the pipe (Redis over TCP): gets, puts, small PutMany on the loop's own
//!                     │   non-blocking connection, one pipeline in flight (store::redis::pipe)
//!   event loop ─[..]──┼─► or the points channel ─► the pipeline worker, the same ops batched
//!        ▲   ▲        │                            on a blocking connection (another driver)
//!        │   │        └─► others channel ─► workers 1..n: scans, digests, counts, transfers,
//!        │   │                               one op at a time; losses the pipe found
//!        │   └── the pipe's answers, in the same turn of the loop
//!        └── Waker ◄── done channel ◄──(id, result)───────┘
//! ```
//!
//! The loop collects the ops one turn asks for and submits them together at its end
//! ([`StorePool::flush`]). The ops clients wait for (gets, puts, and small `PutMany`s: a
//! replica's copy of a write) go, for the Redis driver of a node without replicas (see
//! below), to the **pipe**: the loop writes them
//! as one pipeline on its own connection unless one is in flight, reads the replies when the
//! connection is readable, and hands the results to the core in that same turn. While Redis
//! works on one pipeline the next ops queue and make the next, so a pipeline grows with the
//! load. A request then costs a share of one write and one read, with no channel, no thread
//! wake-up and no loop wake-up between (measured with `bench/cpu-per-request.sh`, 8 nodes over
//! 3 redis-servers at -P 1: the pipeline worker thread this replaced cost 8-9 us of CPU per
//! request; the loop doing the I/O itself costs 3 us more than its hand-offs to the worker did,
//! so 5-6 us less in all; results/cpu-per-request.md). The loop holds a turn's ops for one more
//! turn while more input is already waiting ([`StorePool::holding`]), so that they leave
//! together. With replicas the node keeps the pipeline worker: its loop also carries every
//! write's replication, and there the worker, which reads Redis' replies while the loop works,
//! served 1.4-2 times the requests/s the pipe did (results/cpu-per-request-r2.md). For a node with
//! replicas, a driver without a pipe, or a Redis not reached
//! over TCP) the same ops go to one **pipeline worker**, which takes every such job queued (up
//! to [`MAX_BATCH_OPS`] ops), runs them through the driver's
//! [`Batch`](crate::store::Batch), sends the results back and wakes the loop once. The other
//! ops, which may take long (a scan of a range, a digest, a handoff transfer), run one by one on
//! `n` other **workers** (`--store-threads`), so they never hold up a client's get; so does the
//! recording of a loss the pipe found (it needs a round trip under a lock:
//! `store::redis::pipe::Losses`). A store without batches runs every op on those workers. Ops
//! may finish in any order: every store write is a merge by version, so their order does not
//! matter (see [`crate::store`]).
//!
//! Each result is checked against the loss epoch the loop had handled when the op was
//! submitted (whichever path runs it), as [`store::execute_since`] does, so after a store
//! reports that it lost its data (`StoreError::Lost`), no answer read from the emptied store
//! reaches the core until the core has been told and has reacted, and none for an op the core
//! asked for before it reacted (a read it served under a lease it then dropped). (Until
//! 2026-12-05 a worker took the epoch when it ran the op: a read queued for the pipeline
//! worker while the loop handled the loss answered "not found" from the emptied store.)
//!
//! Waking the loop is a system call; a burst of results wakes it once (see `wake` in the
//! loop's `Control`). Dropping the pool closes the pipe's connection and the jobs channels:
//! each worker exits after its current op or batch. Workers are not joined, so a store stuck on
//! a dead backend cannot hold up the process's exit.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{unbounded, Receiver, Sender};
use mio::event::Event;
use mio::{Registry, Token};

use chordkv_core::chord::{Millis, StoreOpId};
use chordkv_core::store::{self, Store, StoreError, StoreOp, StoreOutcome};

use crate::store::redis::pipe::{Losses, RedisPipe};
use crate::store::Batch;

/// Most ops the pipeline worker takes from its queue at once; what is left makes the next
/// batch. (The driver cuts a batch into pipelines of its own size.)
pub const MAX_BATCH_OPS: usize = 1_024;

/// A finished op: its id, the vnode whose partition ran it, its result.
pub(super) type Completion = (StoreOpId, u16, store::Result<StoreOutcome>);

/// An op for a worker: its id, its vnode, the vnode's loss epoch the loop had handled when the
/// op was submitted (see `execute_since`), the op.
type Job = (StoreOpId, u16, u64, StoreOp);

/// An op on the event loop's pipe: its id, its vnode, and the vnode's loss epoch the loop had
/// handled when it was submitted (see `execute_since`).
type PipeTag = (StoreOpId, u16, u64);

/// What the other workers run.
enum Work {
    /// Ops, each alone.
    Alone(Vec<Job>),
    /// A flight of the pipe that found lost data: the losses are recorded (blocking), then its
    /// ops answered.
    Losses(Losses<PipeTag>),
}

pub(super) struct StorePool {
    /// To the pipeline worker, when the store has batches and no pipe.
    points: Option<Sender<Vec<Job>>>,
    /// Gets and puts on the event loop's own connection to Redis, when the store offers it.
    pipe: Option<RedisPipe<PipeTag>>,
    /// The pipe's answers, checked, for [`StorePool::try_complete`].
    ready: VecDeque<Completion>,
    /// To the other workers.
    others: Sender<Work>,
    /// Ops submitted since the last [`StorePool::flush`], for each channel.
    pending_points: Vec<Job>,
    pending_others: Vec<Job>,
    done: Receiver<Completion>,
    /// Each partition's loss epoch the core has reacted to (see `store::execute_since`).
    handled: Vec<u64>,
    stores: Vec<Arc<dyn Store>>,
    worker: Arc<Worker>,
}

/// What every worker shares.
struct Worker {
    stores: Vec<Arc<dyn Store>>,
    done: Sender<Completion>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl StorePool {
    /// Starts `threads` workers (at least one) over the store's partitions (one per vnode)
    /// for the ops that run alone, and for the others, when the driver has `batch`es, the
    /// event loop's pipe (with a `pipe_token` to register its connection with, for a Redis
    /// reachable over TCP) or else the pipeline worker. `wake` is called after each result, or
    /// batch of results, a worker sends.
    pub fn start(
        stores: Vec<Arc<dyn Store>>,
        batch: Option<Arc<dyn Batch>>,
        threads: usize,
        wake: Arc<dyn Fn() + Send + Sync>,
        pipe_token: Option<Token>,
    ) -> std::io::Result<StorePool> {
        let (others, others_rx) = unbounded::<Work>();
        let (done_tx, done) = unbounded::<Completion>();
        let handled: Vec<u64> = stores.iter().map(|s| s.loss_epoch()).collect();
        let worker = Arc::new(Worker {
            stores: stores.clone(),
            done: done_tx,
            wake,
        });
        for i in 0..threads.max(1) {
            let rx = others_rx.clone();
            let worker = Arc::clone(&worker);
            thread::Builder::new()
                .name(format!("chordkv-store-{i}"))
                .spawn(move || {
                    for work in rx {
                        let sent = match work {
                            Work::Alone(jobs) => worker.run_alone(jobs),
                            Work::Losses(losses) => worker.run_losses(losses),
                        };
                        if sent.is_err() {
                            return; // the loop is gone
                        }
                    }
                })?;
        }
        let pipe = match (batch.clone().and_then(|b| b.nonblocking()), pipe_token) {
            (Some(parts), Some(token)) => RedisPipe::new(parts, token),
            _ => None,
        };
        let points = match batch {
            None => None,
            Some(_) if pipe.is_some() => None,
            Some(batch) => {
                let worker = Arc::clone(&worker);
                let (points, rx) = unbounded::<Vec<Job>>();
                thread::Builder::new()
                    .name("chordkv-store-pipeline".into())
                    .spawn(move || {
                        while let Ok(mut jobs) = rx.recv() {
                            while jobs.len() < MAX_BATCH_OPS {
                                match rx.try_recv() {
                                    Ok(more) => jobs.extend(more),
                                    Err(_) => break,
                                }
                            }
                            if worker.run_batch(&*batch, jobs).is_err() {
                                return; // the loop is gone
                            }
                        }
                    })?;
                Some(points)
            }
        };
        Ok(StorePool {
            points,
            pipe,
            ready: VecDeque::new(),
            worker,
            others,
            pending_points: Vec::new(),
            pending_others: Vec::new(),
            done,
            handled,
            stores,
        })
    }

    /// The core has reacted to every loss vnode `vnode`'s partition reported so far.
    pub fn losses_handled(&mut self, vnode: u16) {
        let v = usize::from(vnode);
        self.handled[v] = self.stores[v].loss_epoch();
    }

    /// Queues an op on vnode `vnode`'s partition; it goes to the workers with the next
    /// [`StorePool::flush`].
    pub fn submit(&mut self, id: StoreOpId, vnode: u16, op: StoreOp) {
        // The epoch is taken now, not when a worker runs the op: the core asked for the op
        // trusting the store as of the losses handled so far, and a loss it handles before the
        // op runs (the op still queued for a worker) must not make the emptied store's answer
        // pass for one it could trust.
        let since = self.handled[usize::from(vnode)];
        if let (Some(pipe), true) = (&mut self.pipe, batched(&op)) {
            pipe.submit((id, vnode, since), vnode, op);
        } else if self.points.is_some() && batched(&op) {
            self.pending_points.push((id, vnode, since, op));
        } else {
            self.pending_others.push((id, vnode, since, op));
        }
    }

    /// Hands the ops submitted since the last flush to the pipe (sent at once unless a flight
    /// is in the air) or the workers: one job for the pipeline worker, one for the others.
    pub fn flush(&mut self, registry: &Registry, now: Millis) {
        if let Some(pipe) = &mut self.pipe {
            pipe.flush(registry, now, true);
            self.collect_pipe();
        }
        // The workers hold the receivers until the pool is dropped, so a send cannot fail while
        // `self` exists unless the workers panicked outside the store's calls.
        let mut gone = false;
        if let (Some(points), false) = (&self.points, self.pending_points.is_empty()) {
            gone |= points.send(std::mem::take(&mut self.pending_points)).is_err();
        }
        if !self.pending_others.is_empty() {
            gone |= self
                .others
                .send(Work::Alone(std::mem::take(&mut self.pending_others)))
                .is_err();
        }
        if gone {
            tracing::error!("store workers are gone; store ops were dropped");
        }
    }

    /// A finished op, if any.
    pub fn try_complete(&mut self) -> Option<Completion> {
        if let Some(c) = self.ready.pop_front() {
            return Some(c);
        }
        // Disconnected cannot happen while the pool holds a job sender (workers stay alive);
        // either way there is nothing to take.
        self.done.try_recv().ok()
    }

    /// Readiness of the pipe's connection (an event with the pipe's token).
    pub fn on_pipe_event(&mut self, registry: &Registry, event: &Event, now: Millis) {
        if let Some(pipe) = &mut self.pipe {
            pipe.on_event(registry, event, now);
            self.collect_pipe();
        }
    }

    /// Fails a pipe flight (or connect) whose deadline has passed.
    pub fn tick(&mut self, registry: &Registry, now: Millis) {
        if let Some(pipe) = &mut self.pipe {
            pipe.tick(registry, now);
            self.collect_pipe();
        }
    }

    /// Whether the pipe holds ops for one more turn ([`RedisPipe::holding`]): the loop must
    /// not sleep before [`StorePool::flush_held`].
    pub fn holding(&self) -> bool {
        self.pipe.as_ref().is_some_and(|p| p.holding())
    }

    /// Sends the ops the pipe holds: nothing else is there to do.
    pub fn flush_held(&mut self, registry: &Registry, now: Millis) {
        if let Some(pipe) = &mut self.pipe {
            pipe.flush(registry, now, false);
            self.collect_pipe();
        }
    }

    /// When [`StorePool::tick`] must run next.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.pipe.as_ref().and_then(|p| p.deadline())
    }

    /// Takes the pipe's answers (checked as `execute_since` checks) and hands flights that found
    /// lost data to a worker.
    fn collect_pipe(&mut self) {
        let Some(pipe) = &mut self.pipe else { return };
        for ((id, vnode, since), result) in pipe.take_done() {
            let result = self.worker.checked(vnode, since, result);
            self.ready.push_back((id, vnode, result));
        }
        for losses in pipe.take_losses() {
            if self.others.send(Work::Losses(losses)).is_err() {
                tracing::error!("store workers are gone; store ops were dropped");
            }
        }
    }
}

/// A `PutMany` of at most this many entries joins a batch (a replica's copy of client writes,
/// an Execute's write); a larger one (a handoff transfer) runs alone, so that it does not hold
/// up the gets and puts batched with it.
pub const MAX_BATCHED_PUT_MANY: usize = 64;

/// Ops that go into a batch: the ones clients wait for, each a single round trip alone.
fn batched(op: &StoreOp) -> bool {
    match op {
        StoreOp::Get { .. } | StoreOp::Put { .. } => true,
        StoreOp::PutMany { items } => items.len() <= MAX_BATCHED_PUT_MANY,
        _ => false,
    }
}

impl Worker {
    /// Runs `points` as one batch, their results sent with one wake-up. Fails when the loop
    /// is gone.
    fn run_batch(&self, batch: &dyn Batch, points: Vec<Job>) -> Result<(), ()> {
        let mut ids = Vec::with_capacity(points.len());
        let mut since = Vec::with_capacity(points.len());
        let mut ops = Vec::with_capacity(points.len());
        for (id, vnode, handled, op) in points {
            ids.push((id, vnode));
            since.push(handled);
            ops.push((vnode, op));
        }
        let n = ops.len();
        let mut results = catch_unwind(AssertUnwindSafe(|| batch.execute_batch(ops)))
            .unwrap_or_else(|_| vec![Err(StoreError::Unavailable("store driver panicked".into())); n]);
        if results.len() != n {
            // faulty code: a batch answers every op
            results = vec![Err(StoreError::Unavailable("store driver lost a result".into())); n];
        }
        for (((id, vnode), since), result) in ids.into_iter().zip(since).zip(results) {
            let result = self.checked(vnode, since, result);
            self.done.send((id, vnode, result)).map_err(|_| ())?;
        }
        (self.wake)();
        Ok(())
    }

    /// Runs each of `jobs` alone, each result sent as it comes. Fails when the loop is gone.
    fn run_alone(&self, jobs: Vec<Job>) -> Result<(), ()> {
        for (id, vnode, since, op) in jobs {
            let store = &*self.stores[usize::from(vnode)];
            let result = catch_unwind(AssertUnwindSafe(|| store::execute_since(store, op, since)))
                .unwrap_or_else(|_| Err(StoreError::Unavailable("store driver panicked".into())));
            self.done.send((id, vnode, result)).map_err(|_| ())?;
            (self.wake)();
        }
        Ok(())
    }

    /// Records the losses a flight of the pipe found and sends its ops' results. Fails when
    /// the loop is gone.
    fn run_losses(&self, losses: Losses<PipeTag>) -> Result<(), ()> {
        let tags = losses.tags().to_vec();
        let results = catch_unwind(AssertUnwindSafe(|| losses.record())).unwrap_or_else(|_| {
            let error = StoreError::Unavailable("store driver panicked".into());
            tags.into_iter().map(|tag| (tag, Err(error.clone()))).collect()
        });
        for ((id, vnode, since), result) in results {
            let result = self.checked(vnode, since, result);
            self.done.send((id, vnode, result)).map_err(|_| ())?;
        }
        (self.wake)();
        Ok(())
    }

    /// `execute_since`'s check of a result of a batch: a success on a partition that has
    /// detected a loss the loop has not handled (before `handled`) is no answer to trust.
    fn checked(
        &self,
        vnode: u16,
        handled: u64,
        result: store::Result<StoreOutcome>,
    ) -> store::Result<StoreOutcome> {
        let store = &*self.stores[usize::from(vnode)];
        let epoch = store.loss_epoch();
        match result {
            Ok(_) if epoch > handled => Err(StoreError::Lost(format!(
                "{} store: loss {epoch} detected, losses up to {handled} handled",
                store.name()
            ))),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use chordkv_core::store::{Entry, MemoryStore};
    use parking_lot::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    /// Memory partitions behind a batch that records what it was given; it panics on a get of
    /// the key "boom", and the second partition's loss epoch is the test's.
    struct Recording {
        parts: Vec<Arc<MemoryStore>>,
        batches: Mutex<Vec<usize>>,
    }

    impl Batch for Recording {
        fn execute_batch(&self, ops: Vec<(u16, StoreOp)>) -> Vec<store::Result<StoreOutcome>> {
            self.batches.lock().push(ops.len());
            ops.into_iter()
                .map(|(v, op)| {
                    assert!(
                        !matches!(&op, StoreOp::Get { key, .. } if key.as_ref() == b"boom"),
                        "a driver bug"
                    );
                    store::execute(&*self.parts[usize::from(v)], op)
                })
                .collect()
        }
    }

    fn results(pool: &mut StorePool, n: usize) -> Vec<Completion> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut out = Vec::new();
        while out.len() < n {
            assert!(Instant::now() < deadline, "{} of {n} results", out.len());
            match pool.try_complete() {
                Some(c) => out.push(c),
                None => thread::sleep(Duration::from_millis(1)),
            }
        }
        out.sort_by_key(|c| c.0);
        out
    }

    fn get(key: &'static [u8]) -> StoreOp {
        StoreOp::Get {
            id: chordkv_protocol::Id::of_key(key),
            key: Bytes::from_static(key),
        }
    }

    #[test]
    fn gets_and_puts_go_through_the_batch_other_ops_alone() {
        let poll = mio::Poll::new().unwrap();
        let parts: Vec<Arc<MemoryStore>> = (0..2).map(|_| Arc::new(MemoryStore::new())).collect();
        let batch = Arc::new(Recording {
            parts: parts.clone(),
            batches: Mutex::new(Vec::new()),
        });
        let stores: Vec<Arc<dyn Store>> = parts.iter().map(|p| Arc::clone(p) as Arc<dyn Store>).collect();
        let mut pool = StorePool::start(stores, Some(batch.clone()), 1, Arc::new(|| {}), None).unwrap();
        pool.submit(
            1,
            0,
            StoreOp::Put {
                id: chordkv_protocol::Id::of_key(b"k"),
                key: Bytes::from_static(b"k"),
                entry: Entry::new(1, Some(Bytes::from_static(b"v"))),
            },
        );
        pool.submit(2, 1, StoreOp::Count);
        pool.submit(3, 0, get(b"k"));
        pool.submit(4, 1, get(b"k"));
        pool.flush(poll.registry(), 0);
        let done = results(&mut pool, 4);
        assert!(matches!(&done[0], (1, 0, Ok(StoreOutcome::Put(o))) if o.applied));
        assert_eq!(done[1], (2, 1, Ok(StoreOutcome::Count(0))));
        assert_eq!(
            done[2],
            (
                3,
                0,
                Ok(StoreOutcome::Got(Some(Entry::new(
                    1,
                    Some(Bytes::from_static(b"v"))
                ))))
            )
        );
        assert_eq!(done[3], (4, 1, Ok(StoreOutcome::Got(None))));
        assert_eq!(
            *batch.batches.lock(),
            vec![3],
            "one batch of the gets and the put"
        );

        // A driver that panics fails every op of its batch, and the pool goes on.
        pool.submit(5, 0, get(b"boom"));
        pool.submit(6, 1, get(b"k"));
        pool.flush(poll.registry(), 0);
        let done = results(&mut pool, 2);
        for (id, _, r) in done {
            assert!(matches!(r, Err(StoreError::Unavailable(_))), "op {id}: {r:?}");
        }
        pool.submit(7, 0, get(b"k"));
        pool.flush(poll.registry(), 0);
        assert!(matches!(
            results(&mut pool, 1)[0],
            (7, 0, Ok(StoreOutcome::Got(Some(_))))
        ));
    }

    /// A memory store whose loss epoch the test raises.
    struct Losing {
        inner: MemoryStore,
        epoch: AtomicU64,
    }

    impl Store for Losing {
        fn get(&self, key: &[u8]) -> store::Result<Option<Entry>> {
            self.inner.get(key)
        }
        fn put(&self, key: &Bytes, entry: Entry) -> store::Result<store::PutOutcome> {
            self.inner.put(key, entry)
        }
        fn delete(&self, key: &[u8], up_to_version: u64) -> store::Result<bool> {
            self.inner.delete(key, up_to_version)
        }
        fn scan(
            &self,
            start: &chordkv_protocol::Id,
            end: &chordkv_protocol::Id,
            after: Option<&store::ScanCursor>,
            limit: usize,
        ) -> store::Result<Vec<chordkv_protocol::Item>> {
            self.inner.scan(start, end, after, limit)
        }
        fn len(&self) -> store::Result<u64> {
            self.inner.len()
        }
        fn loss_epoch(&self) -> u64 {
            self.epoch.load(Ordering::SeqCst)
        }
        fn is_blocking(&self) -> bool {
            true
        }
        fn name(&self) -> &'static str {
            "losing"
        }
    }

    struct Plain(Arc<Losing>);

    impl Batch for Plain {
        fn execute_batch(&self, ops: Vec<(u16, StoreOp)>) -> Vec<store::Result<StoreOutcome>> {
            ops.into_iter()
                .map(|(_, op)| store::execute(&*self.0, op))
                .collect()
        }
    }

    /// A pool over one [`Losing`] store, batched through [`Plain`], with two workers.
    fn losing_pool() -> (Arc<Losing>, StorePool) {
        let store = Arc::new(Losing {
            inner: MemoryStore::new(),
            epoch: AtomicU64::new(0),
        });
        let stores: Vec<Arc<dyn Store>> = vec![store.clone()];
        let pool = StorePool::start(
            stores,
            Some(Arc::new(Plain(store.clone()))),
            2,
            Arc::new(|| {}),
            None,
        )
        .unwrap();
        (store, pool)
    }

    /// As `execute_since`: a batch's answers from a store with a loss the loop has not handled
    /// are `Lost`, until the loop says it has handled it.
    #[test]
    fn batch_results_after_an_unhandled_loss_are_lost() {
        let poll = mio::Poll::new().unwrap();
        let (store, mut pool) = losing_pool();
        store.epoch.store(1, Ordering::SeqCst);
        pool.submit(1, 0, get(b"k"));
        pool.flush(poll.registry(), 0);
        assert!(matches!(
            results(&mut pool, 1)[0],
            (1, 0, Err(StoreError::Lost(_)))
        ));
        pool.losses_handled(0);
        pool.submit(2, 0, get(b"k"));
        pool.flush(poll.registry(), 0);
        assert_eq!(results(&mut pool, 1)[0], (2, 0, Ok(StoreOutcome::Got(None))));
    }

    /// An op the core asked for before it handled a loss is checked against the epoch handled
    /// when it was submitted, not when a worker runs it: a get queued for the pipeline worker
    /// (and a count for the others) while the loop handles the loss answers `Lost`, not the
    /// emptied store's "not found". Ops submitted after are answered.
    #[test]
    fn ops_submitted_before_a_loss_was_handled_answer_lost() {
        let poll = mio::Poll::new().unwrap();
        let (store, mut pool) = losing_pool();
        // Submitted (the core served them), then the store loses its data and the loop handles
        // the loss, then they reach the workers.
        pool.submit(1, 0, get(b"k"));
        pool.submit(2, 0, StoreOp::Count);
        store.epoch.store(1, Ordering::SeqCst);
        pool.losses_handled(0);
        pool.flush(poll.registry(), 0);
        for (id, _, r) in results(&mut pool, 2) {
            assert!(matches!(r, Err(StoreError::Lost(_))), "op {id}: {r:?}");
        }
        pool.submit(3, 0, get(b"k"));
        pool.submit(4, 0, StoreOp::Count);
        pool.flush(poll.registry(), 0);
        let done = results(&mut pool, 2);
        assert_eq!(done[0], (3, 0, Ok(StoreOutcome::Got(None))));
        assert_eq!(done[1], (4, 0, Ok(StoreOutcome::Count(0))));
    }
}
