//! [`InlineStores`]: store partitions a host runs its vnodes' store ops on itself, when they
//! answer at once (the memory store), instead of handing each op to its driver.
//!
//! ```text
//!   pump pass:  prefetch the key lookups of the store ops queued in the touched vnodes
//!               poll each vnode ── Output::Store ──► store cache ──► execute ──► store cache
//!                        ▲                                                          │
//!                        └──────────── vnode.store_done (its outputs queue) ◄──────┘
//! ```
//!
//! An op that goes to the driver crosses the host twice (its output moved to the host's queue
//! and polled by the driver, its result handed back through [`Host::store_done`]), and the
//! host pumps again for the result. Run by the host as it moves the vnode's outputs, the op's
//! result goes to its vnode at once and the outputs it makes (the reply) are taken in the
//! same pass of the pump. Ops run in the order their vnode gave them, each result given
//! before the next op of that vnode runs, as the driver ran them.
//!
//! Each pass of the pump first prefetches the key lookups of the store ops queued in the
//! vnodes it will poll ([`Store::prefetch`], two passes, at most [`PREFETCH_BATCH`]), so that
//! the cache misses of a pipeline's lookups overlap, as the driver's loop did before.
//!
//! Only for stores that are deterministic and never block: a run of the host is then still a
//! function of its inputs. The simulator keeps running store ops itself (it traces and counts
//! them); the server hands the host its stores when they are in memory
//! ([`Host::run_stores_inline`]).
//!
//! [`Host::store_done`]: super::host::Host::store_done
//! [`Host::run_stores_inline`]: super::host::Host::run_stores_inline

use std::collections::VecDeque;
use std::sync::Arc;

use chordkv_protocol::Id;

use super::node::Output;
use crate::store::{PrefetchPass, Store, StoreOp};

/// Store ops prefetched together at most: a pipeline's worth (one connection's 16 to 64
/// commands), enough for their cache misses to overlap.
pub const PREFETCH_BATCH: usize = 64;

/// The stores a host runs itself, one per vnode: see the module docs.
pub struct InlineStores {
    /// Vnode `v`'s store partition is `stores[v]`.
    stores: Vec<Arc<dyn Store>>,
    /// Per store, the key ids of the batch being prefetched (kept to be reused).
    prefetch_ids: Vec<Vec<Id>>,
}

impl InlineStores {
    /// The stores of vnodes `0..stores.len()`.
    pub fn new(stores: Vec<Arc<dyn Store>>) -> InlineStores {
        let prefetch_ids = vec![Vec::new(); stores.len()];
        InlineStores { stores, prefetch_ids }
    }

    /// Vnode `v`'s store.
    pub fn store(&self, v: u16) -> &dyn Store {
        &*self.stores[usize::from(v)]
    }

    /// Starts loading into the CPU cache the key lookups of the first [`PREFETCH_BATCH`] gets
    /// and puts queued in `queues` (vnodes' output queues), a store at a time, the index
    /// first (see [`Store::prefetch`]). Does nothing for fewer than two.
    pub fn prefetch<'a>(&mut self, queues: impl Iterator<Item = &'a VecDeque<Output>>) {
        let mut n = 0;
        'queues: for queue in queues {
            for o in queue {
                if let Output::Store {
                    vnode,
                    op: StoreOp::Get { id, .. } | StoreOp::Put { id, .. },
                    ..
                } = o
                {
                    if let Some(ids) = self.prefetch_ids.get_mut(usize::from(*vnode)) {
                        ids.push(*id);
                        n += 1;
                        if n == PREFETCH_BATCH {
                            break 'queues;
                        }
                    }
                }
            }
        }
        if n >= 2 {
            for pass in [PrefetchPass::Index, PrefetchPass::Entries] {
                for (store, ids) in self.stores.iter().zip(&self.prefetch_ids) {
                    if !ids.is_empty() {
                        store.prefetch(ids, pass);
                    }
                }
            }
        }
        self.prefetch_ids.iter_mut().for_each(Vec::clear);
    }
}
