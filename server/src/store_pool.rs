//! Worker threads for a store whose calls may block (network I/O, e.g. Redis).
//!
//! ```text
//!   event loop ──(id, op)──► jobs channel ──► worker 1..n: execute(store, op)
//!        ▲                                           │
//!        └── Waker ◄── done channel ◄──(id, result)──┘
//! ```
//!
//! The loop never waits on the store: it submits the op and goes on; a worker runs it and
//! sends the result back, then wakes the loop, which drains every finished op and reports it
//! to the core with `store_done`. Ops may finish in any order: every store write is a merge by
//! version, so their order does not matter (see [`crate::store`]).
//!
//! Workers run ops with [`store::execute_since`] and the loss epoch the loop has handled, so
//! after a store reports that it lost its data (`StoreError::Lost`), no answer read from the
//! emptied store reaches the core until the core has been told and has reacted.
//!
//! Waking the loop is a system call; a burst of results wakes it once (see `wake` in the
//! loop's `Control`). Dropping the pool closes the jobs channel: each worker exits after its
//! current op. Workers are not joined, so a store stuck on a dead backend cannot hold up the
//! process's exit.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{unbounded, Receiver, Sender};

use chordkv_core::chord::StoreOpId;
use chordkv_core::store::{self, Store, StoreError, StoreOp, StoreOutcome};

/// A finished op.
/// A finished op: its id, the vnode whose partition ran it, its result.
pub(super) type Completion = (StoreOpId, u16, store::Result<StoreOutcome>);

pub(super) struct StorePool {
    jobs: Sender<(StoreOpId, u16, StoreOp)>,
    done: Receiver<Completion>,
    /// Each partition's loss epoch the core has reacted to (see `store::execute_since`).
    handled: Arc<[AtomicU64]>,
    stores: Vec<Arc<dyn Store>>,
}

impl StorePool {
    /// Starts `threads` workers (at least one) over the store's partitions (one per vnode).
    /// `wake` is called after each result is sent.
    pub fn start(
        stores: Vec<Arc<dyn Store>>,
        threads: usize,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> std::io::Result<StorePool> {
        let (jobs, job_rx) = unbounded::<(StoreOpId, u16, StoreOp)>();
        let (done_tx, done) = unbounded::<Completion>();
        let handled: Arc<[AtomicU64]> = stores.iter().map(|s| AtomicU64::new(s.loss_epoch())).collect();
        for i in 0..threads.max(1) {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            let stores = stores.clone();
            let wake = Arc::clone(&wake);
            let handled = Arc::clone(&handled);
            thread::Builder::new()
                .name(format!("chordkv-store-{i}"))
                .spawn(move || {
                    for (id, vnode, op) in job_rx {
                        let v = usize::from(vnode);
                        let since = handled[v].load(Ordering::Acquire);
                        let result =
                            catch_unwind(AssertUnwindSafe(|| store::execute_since(&*stores[v], op, since)))
                                .unwrap_or_else(|_| {
                                    Err(StoreError::Unavailable("store driver panicked".into()))
                                });
                        if done_tx.send((id, vnode, result)).is_err() {
                            return; // the loop is gone
                        }
                        wake();
                    }
                })?;
        }
        Ok(StorePool {
            jobs,
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

    /// Queues an op on vnode `vnode`'s partition for the workers.
    pub fn submit(&self, id: StoreOpId, vnode: u16, op: StoreOp) {
        // The workers hold the receiver until the pool is dropped, so this cannot fail while
        // `self` exists unless every worker panicked outside `execute`.
        if self.jobs.send((id, vnode, op)).is_err() {
            eprintln!("chordkv: store workers are gone; a store op was dropped");
        }
    }

    /// A finished op, if any.
    pub fn try_complete(&self) -> Option<Completion> {
        // Disconnected cannot happen while the pool holds a job sender (workers stay alive);
        // either way there is nothing to take.
        self.done.try_recv().ok()
    }
}
