//! Worker threads for a store whose calls may block (network I/O, e.g. Redis).
//!
//! ```text
//!   event loop ──[(id, vnode, op), ...]──► jobs channel ──► worker 1..n: takes every job queued,
//!        ▲                                                   gets and puts in one batch,
//!        │                                                   other ops one by one
//!        └── Waker ◄── done channel ◄──(id, result)──────────┘
//! ```
//!
//! The loop never waits on the store: it collects the ops one pass of the core asks for and
//! submits them as one job; a worker takes that job and every other one queued (up to
//! [`MAX_BATCH_OPS`] ops), runs their gets and puts (and small `PutMany`s: replica writes)
//! together through the driver's
//! [`Batch`](crate::store::Batch) (Redis: one pipeline, one round trip per connection), then
//! any other op alone, sends the results back and wakes the loop, which drains every finished
//! op and reports it to the core with `store_done`. So the ops pending at the same time cost
//! one round trip and one wake-up, not one each; with `n` workers, up to `n` batches are in
//! flight, each on its own connection. Ops may finish in any order: every store write is a
//! merge by version, so their order does not matter (see [`crate::store`]).
//!
//! Workers check each result against the loss epoch the loop has handled, as
//! [`store::execute_since`] does, so after a store reports that it lost its data
//! (`StoreError::Lost`), no answer read from the emptied store reaches the core until the core
//! has been told and has reacted.
//!
//! Waking the loop is a system call; a burst of results wakes it once (see `wake` in the
//! loop's `Control`). Dropping the pool closes the jobs channel: each worker exits after its
//! current batch. Workers are not joined, so a store stuck on a dead backend cannot hold up the
//! process's exit.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{unbounded, Receiver, Sender};

use chordkv_core::chord::StoreOpId;
use chordkv_core::store::{self, Store, StoreError, StoreOp, StoreOutcome};

use crate::store::Batch;

/// Most ops a worker takes from the queue at once; what is left waits for the next free
/// worker. (The driver cuts a batch into pipelines of its own size.)
pub const MAX_BATCH_OPS: usize = 1_024;

/// A finished op: its id, the vnode whose partition ran it, its result.
pub(super) type Completion = (StoreOpId, u16, store::Result<StoreOutcome>);

type Job = (StoreOpId, u16, StoreOp);

pub(super) struct StorePool {
    jobs: Sender<Vec<Job>>,
    /// Ops submitted since the last [`StorePool::flush`].
    pending: Vec<Job>,
    done: Receiver<Completion>,
    /// Each partition's loss epoch the core has reacted to (see `store::execute_since`).
    handled: Arc<[AtomicU64]>,
    stores: Vec<Arc<dyn Store>>,
}

/// What every worker shares.
struct Worker {
    stores: Vec<Arc<dyn Store>>,
    batch: Option<Arc<dyn Batch>>,
    handled: Arc<[AtomicU64]>,
    done: Sender<Completion>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl StorePool {
    /// Starts `threads` workers (at least one) over the store's partitions (one per vnode),
    /// running gets and puts through `batch` when the driver has one. `wake` is called after
    /// each batch of results is sent.
    pub fn start(
        stores: Vec<Arc<dyn Store>>,
        batch: Option<Arc<dyn Batch>>,
        threads: usize,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> std::io::Result<StorePool> {
        let (jobs, job_rx) = unbounded::<Vec<Job>>();
        let (done_tx, done) = unbounded::<Completion>();
        let handled: Arc<[AtomicU64]> = stores.iter().map(|s| AtomicU64::new(s.loss_epoch())).collect();
        let worker = Arc::new(Worker {
            stores: stores.clone(),
            batch,
            handled: Arc::clone(&handled),
            done: done_tx,
            wake,
        });
        for i in 0..threads.max(1) {
            let job_rx = job_rx.clone();
            let worker = Arc::clone(&worker);
            thread::Builder::new()
                .name(format!("chordkv-store-{i}"))
                .spawn(move || {
                    while let Ok(mut jobs) = job_rx.recv() {
                        while jobs.len() < MAX_BATCH_OPS {
                            match job_rx.try_recv() {
                                Ok(more) => jobs.extend(more),
                                Err(_) => break,
                            }
                        }
                        if worker.run(jobs).is_err() {
                            return; // the loop is gone
                        }
                    }
                })?;
        }
        Ok(StorePool {
            jobs,
            pending: Vec::new(),
            done,
            handled,
            stores,
        })
    }

    /// The core has reacted to every loss vnode `vnode`'s partition reported so far.
    pub fn losses_handled(&self, vnode: u16) {
        let v = usize::from(vnode);
        self.handled[v].store(self.stores[v].loss_epoch(), Ordering::Release);
    }

    /// Queues an op on vnode `vnode`'s partition; it goes to the workers with the next
    /// [`StorePool::flush`].
    pub fn submit(&mut self, id: StoreOpId, vnode: u16, op: StoreOp) {
        self.pending.push((id, vnode, op));
    }

    /// Hands the ops submitted since the last flush to the workers, as one job.
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        // The workers hold the receiver until the pool is dropped, so this cannot fail while
        // `self` exists unless every worker panicked outside the store's calls.
        if self.jobs.send(std::mem::take(&mut self.pending)).is_err() {
            eprintln!("chordkv: store workers are gone; store ops were dropped");
        }
    }

    /// A finished op, if any.
    pub fn try_complete(&self) -> Option<Completion> {
        // Disconnected cannot happen while the pool holds a job sender (workers stay alive);
        // either way there is nothing to take.
        self.done.try_recv().ok()
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
    /// Runs `jobs`: gets, puts and small `PutMany`s as one batch (when the driver has batches), their results
    /// sent with one wake-up; then each other op alone. Fails when the loop is gone.
    fn run(&self, jobs: Vec<Job>) -> Result<(), ()> {
        let (points, others): (Vec<Job>, Vec<Job>) = match &self.batch {
            Some(_) => jobs.into_iter().partition(|(_, _, op)| batched(op)),
            None => (Vec::new(), jobs),
        };
        if let (Some(batch), false) = (&self.batch, points.is_empty()) {
            // The epochs handled before the ops ran, as `execute_since` reads them.
            let since: Vec<u64> = points
                .iter()
                .map(|(_, vnode, _)| self.handled_epoch(*vnode))
                .collect();
            let mut ids = Vec::with_capacity(points.len());
            let mut ops = Vec::with_capacity(points.len());
            for (id, vnode, op) in points {
                ids.push((id, vnode));
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
        }
        for (id, vnode, op) in others {
            let since = self.handled_epoch(vnode);
            let store = &*self.stores[usize::from(vnode)];
            let result = catch_unwind(AssertUnwindSafe(|| store::execute_since(store, op, since)))
                .unwrap_or_else(|_| Err(StoreError::Unavailable("store driver panicked".into())));
            self.done.send((id, vnode, result)).map_err(|_| ())?;
            (self.wake)();
        }
        Ok(())
    }

    fn handled_epoch(&self, vnode: u16) -> u64 {
        self.handled[usize::from(vnode)].load(Ordering::Acquire)
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
                        !matches!(&op, StoreOp::Get { key } if key.as_ref() == b"boom"),
                        "a driver bug"
                    );
                    store::execute(&*self.parts[usize::from(v)], op)
                })
                .collect()
        }
    }

    fn results(pool: &StorePool, n: usize) -> Vec<Completion> {
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
            key: Bytes::from_static(key),
        }
    }

    #[test]
    fn gets_and_puts_go_through_the_batch_other_ops_alone() {
        let parts: Vec<Arc<MemoryStore>> = (0..2).map(|_| Arc::new(MemoryStore::new())).collect();
        let batch = Arc::new(Recording {
            parts: parts.clone(),
            batches: Mutex::new(Vec::new()),
        });
        let stores: Vec<Arc<dyn Store>> = parts.iter().map(|p| Arc::clone(p) as Arc<dyn Store>).collect();
        let mut pool = StorePool::start(stores, Some(batch.clone()), 1, Arc::new(|| {})).unwrap();
        pool.submit(
            1,
            0,
            StoreOp::Put {
                key: Bytes::from_static(b"k"),
                entry: Entry::new(1, Some(Bytes::from_static(b"v"))),
            },
        );
        pool.submit(2, 1, StoreOp::Count);
        pool.submit(3, 0, get(b"k"));
        pool.submit(4, 1, get(b"k"));
        pool.flush();
        let done = results(&pool, 4);
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
        pool.flush();
        let done = results(&pool, 2);
        for (id, _, r) in done {
            assert!(matches!(r, Err(StoreError::Unavailable(_))), "op {id}: {r:?}");
        }
        pool.submit(7, 0, get(b"k"));
        pool.flush();
        assert!(matches!(
            results(&pool, 1)[0],
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

    /// As `execute_since`: a batch's answers from a store with a loss the loop has not handled
    /// are `Lost`, until the loop says it has handled it.
    #[test]
    fn batch_results_after_an_unhandled_loss_are_lost() {
        let store = Arc::new(Losing {
            inner: MemoryStore::new(),
            epoch: AtomicU64::new(0),
        });
        let stores: Vec<Arc<dyn Store>> = vec![store.clone()];
        let mut pool =
            StorePool::start(stores, Some(Arc::new(Plain(store.clone()))), 2, Arc::new(|| {})).unwrap();
        store.epoch.store(1, Ordering::SeqCst);
        pool.submit(1, 0, get(b"k"));
        pool.flush();
        assert!(matches!(results(&pool, 1)[0], (1, 0, Err(StoreError::Lost(_)))));
        pool.losses_handled(0);
        pool.submit(2, 0, get(b"k"));
        pool.flush();
        assert_eq!(results(&pool, 1)[0], (2, 0, Ok(StoreOutcome::Got(None))));
    }
}
