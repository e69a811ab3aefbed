//! [`InlineStores`]: store partitions a host runs its vnodes' store ops on itself, when they
//! answer at once (the memory store), instead of handing each op to its driver.
//!
//! ```text
//!   handle_request ──► arrived (key id computed once) ──┐
//!   pump: prefetch the keys of up to 64 arrived ◄───────┘
//!         give each its vnode ── serves a GET, PUT, DELETE ──► its store (Node::store_now) ──► reply
//!         poll each vnode ── any other Output::Store ──► store cache ──► execute ──► store cache
//!                  ▲                                                                   │
//!                  └─────────────── vnode.store_done (its outputs queue) ◄─────────────┘
//! ```
//!
//! An op that goes to the driver crosses the host twice (its output moved to the host's queue
//! and polled by the driver, its result handed back through [`Host::store_done`]), and the
//! host pumps again for the result. Here the gets and writes a vnode serves for clients (most
//! of a node's store ops) run on its store in the call that serves them, with no op in
//! flight (`store_wait.rs` `store_now`); every other op runs as the host moves the vnode's
//! outputs, its result goes to the vnode at once, and the outputs it makes are taken in the
//! same pass of the pump. A vnode's ops run in the order it gave them, except that a served
//! get or write runs before the ops queued ahead of it: those are merges by version, scans and
//! collections, which commute with it.
//!
//! The requests that arrive between two pumps wait in the host (`Host::handle_request`); the
//! pump prefetches the key lookups of up to [`PREFETCH_BATCH`] of them ([`Store::prefetch`],
//! two passes) before giving them to their vnodes, so that the cache misses of a pipeline's
//! lookups overlap.
//!
//! The store cache does not see the served writes: each vnode counts them
//! ([`super::node::Node::inline_store_changes`]), and the host tells the cache the store changed
//! before it gives or keeps an answer.
//!
//! Only for stores that are deterministic and never block: a run of the host is then still a
//! function of its inputs. The server hands the host its stores when they are in memory
//! ([`Host::run_stores_inline`]); the simulator has its vnodes serve on theirs
//! (`Host::serve_on_stores_inline`) and runs every other op itself (it traces them and tracks
//! the copies they write).
//!
//! [`Host::store_done`]: super::host::Host::store_done
//! [`Host::run_stores_inline`]: super::host::Host::run_stores_inline

use std::sync::Arc;

use chordkv_protocol::Id;

use crate::store::{PrefetchPass, Store};

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

    /// Starts loading into the CPU cache the key lookups of `keys` (`(vnode, key id)`, the
    /// first [`PREFETCH_BATCH`]), a store at a time, the index first (see
    /// [`Store::prefetch`]). Does nothing for fewer than two.
    pub fn prefetch(&mut self, keys: impl Iterator<Item = (u16, Id)>) {
        let mut n = 0;
        for (vnode, id) in keys.take(PREFETCH_BATCH) {
            if let Some(ids) = self.prefetch_ids.get_mut(usize::from(vnode)) {
                ids.push(id);
                n += 1;
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
