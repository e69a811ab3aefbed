//! Worker threads for a store whose calls may block (network I/O, e.g. Redis).
//!
//! ```text
//!                     ┌─► points channel ─► the pipeline worker: every job queued (gets, puts,
//!   event loop ─[..]──┤                     small PutMany) as one batch, one round trip
//!        ▲            └─► others channel ─► workers 1..n: scans, digests, counts, transfers,
//!        │                                  one op at a time
//!        └── Waker ◄── done channel ◄──(id, result)───────┘
//! ```
//!
//! The loop never waits on the store: it collects the ops one turn of the loop asks for and
//! submits them as (at most) two jobs. The ops clients wait for (gets, puts, and small
//! `PutMany`s: a replica's copy of a write) go to the one pipeline worker, which takes every
//! such job queued (up to [`MAX_BATCH_OPS`] ops), runs them together through the driver's
//! [`Batch`](crate::store::Batch) (Redis: one pipeline, one round trip), sends the results back
//! and wakes the loop once. While it waits for Redis, the next ops queue up and make the next
//! batch: the batch grows with the load, one connection carries it, and a burst costs one
//! round trip and two wake-ups, not one each per op. (Measured with 8 nodes over 3
//! redis-servers on 2 cores: one pipeline worker served more than 2 or 4 did, at -P 1 as at
//! -P 16: more workers split the queue into smaller batches and more wake-ups.) The other ops,
//! which may take long (a scan of a range, a digest, a handoff transfer), run one by one on
//! `n` other workers (`--store-threads`), so they never hold up a client's get. A store
//! without batches runs every op on those workers. Ops may finish in any order: every store
//! write is a merge by version, so their order does not matter (see [`crate::store`]).
//!
//! Workers check each result against the loss epoch the loop has handled, as
//! [`store::execute_since`] does, so after a store reports that it lost its data
//! (`StoreError::Lost`), no answer read from the emptied store reaches the core until the core
//! has been told and has reacted.
//!
//! Waking the loop is a system call; a burst of results wakes it once (see `wake` in the
//! loop's `Control`). Dropping the pool closes the jobs channels: each worker exits after its
//! current op or batch. Workers are not joined, so a store stuck on a dead backend cannot hold
//! up the process's exit.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{unbounded, Receiver, Sender};

use chordkv_core::chord::StoreOpId;
use chordkv_core::store::{self, Store, StoreError, StoreOp, StoreOutcome};

use crate::store::Batch;

/// Most ops the pipeline worker takes from its queue at once; what is left makes the next
/// batch. (The driver cuts a batch into pipelines of its own size.)
pub const MAX_BATCH_OPS: usize = 1_024;

/// A finished op: its id, the vnode whose partition ran it, its result.
pub(super) type Completion = (StoreOpId, u16, store::Result<StoreOutcome>);

type Job = (StoreOpId, u16, StoreOp);

pub(super) struct StorePool {
    /// To the pipeline worker, when the store has batches.
    points: Option<Sender<Vec<Job>>>,
    /// To the other workers.
    others: Sender<Vec<Job>>,
    /// Ops submitted since the last [`StorePool::flush`], for each channel.
    pending_points: Vec<Job>,
    pending_others: Vec<Job>,
    done: Receiver<Completion>,
    /// Each partition's loss epoch the core has reacted to (see `store::execute_since`).
    handled: Arc<[AtomicU64]>,
    stores: Vec<Arc<dyn Store>>,
}

/// What every worker shares.
struct Worker {
    stores: Vec<Arc<dyn Store>>,
    handled: Arc<[AtomicU64]>,
    done: Sender<Completion>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl StorePool {
    /// Starts `threads` workers (at least one) over the store's partitions (one per vnode)
    /// for the ops that run alone, and the pipeline worker for the others when the driver has
    /// `batch`es. `wake` is called after each result, or batch of results, is sent.
    pub fn start(
        stores: Vec<Arc<dyn Store>>,
        batch: Option<Arc<dyn Batch>>,
        threads: usize,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> std::io::Result<StorePool> {
        let (others, others_rx) = unbounded::<Vec<Job>>();
        let (done_tx, done) = unbounded::<Completion>();
        let handled: Arc<[AtomicU64]> = stores.iter().map(|s| AtomicU64::new(s.loss_epoch())).collect();
        let worker = Arc::new(Worker {
            stores: stores.clone(),
            handled: Arc::clone(&handled),
            done: done_tx,
            wake,
        });
        for i in 0..threads.max(1) {
            let rx = others_rx.clone();
            let worker = Arc::clone(&worker);
            thread::Builder::new()
                .name(format!("chordkv-store-{i}"))
                .spawn(move || {
                    for jobs in rx {
                        if worker.run_alone(jobs).is_err() {
                            return; // the loop is gone
                        }
                    }
                })?;
        }
        let points = match batch {
            None => None,
            Some(batch) => {
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
            others,
            pending_points: Vec::new(),
            pending_others: Vec::new(),
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
        if self.points.is_some() && batched(&op) {
            self.pending_points.push((id, vnode, op));
        } else {
            self.pending_others.push((id, vnode, op));
        }
    }

    /// Hands the ops submitted since the last flush to the workers: one job for the pipeline
    /// worker, one for the others.
    pub fn flush(&mut self) {
        // The workers hold the receivers until the pool is dropped, so a send cannot fail while
        // `self` exists unless the workers panicked outside the store's calls.
        let mut gone = false;
        if let (Some(points), false) = (&self.points, self.pending_points.is_empty()) {
            gone |= points.send(std::mem::take(&mut self.pending_points)).is_err();
        }
        if !self.pending_others.is_empty() {
            gone |= self
                .others
                .send(std::mem::take(&mut self.pending_others))
                .is_err();
        }
        if gone {
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
    /// Runs `points` as one batch, their results sent with one wake-up. Fails when the loop
    /// is gone.
    fn run_batch(&self, batch: &dyn Batch, points: Vec<Job>) -> Result<(), ()> {
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
        Ok(())
    }

    /// Runs each of `jobs` alone, each result sent as it comes. Fails when the loop is gone.
    fn run_alone(&self, jobs: Vec<Job>) -> Result<(), ()> {
        for (id, vnode, op) in jobs {
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
                        !matches!(&op, StoreOp::Get { key, .. } if key.as_ref() == b"boom"),
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
            id: chordkv_protocol::Id::of_key(key),
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
                id: chordkv_protocol::Id::of_key(b"k"),
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
