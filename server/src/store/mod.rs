//! The stores a node can open: the in-memory store of the core
//! ([`chordkv_core::store::MemoryStore`]) and the Redis driver ([`redis`]), which does network
//! I/O and so lives here rather than in the core.

pub mod redis;

use std::sync::Arc;

use chordkv_core::store::{self as core_store, MemoryStore, Store, StoreOp, StoreOutcome};

use crate::{Error, Result};

pub use redis::{RedisPartitions, RedisStore};

/// Runs the ops pending at the same time on a node's store partitions together: a driver with
/// round trips sends them in one (the Redis driver: one pipeline per connection, whatever the
/// partitions). The store workers hand it every get, put and small `PutMany` they find queued;
/// a driver runs any other op as [`core_store::execute`] does.
pub trait Batch: Send + Sync {
    /// Runs each `(vnode, op)` on partition `vnode` and answers each op's result, in order.
    /// The ops of one partition take effect in the order given (the store sees the same
    /// history as if they ran one by one); the ops of different partitions, in any order.
    fn execute_batch(&self, ops: Vec<(u16, StoreOp)>) -> Vec<core_store::Result<StoreOutcome>>;

    /// The same partitions as a [`RedisPartitions`], whose gets and puts can also run on the
    /// node's event loop without blocking it ([`redis::pipe`]); `None` for any other driver.
    fn nonblocking(self: Arc<Self>) -> Option<Arc<RedisPartitions>> {
        None
    }
}

/// A node's store partitions, one per vnode, and the way to run their ops together when the
/// driver has one.
pub struct Partitions {
    pub stores: Vec<Arc<dyn Store>>,
    pub batch: Option<Arc<dyn Batch>>,
}

/// Opens one partition per namespace (a node's vnodes) of the store a URL names, as [`open`];
/// Redis partitions share their connections, and their ops go to Redis in pipelines.
///
/// # Errors
/// As [`open`].
pub fn open_partitions<S: AsRef<str>>(url: &str, namespaces: &[S]) -> Result<Partitions> {
    if url.starts_with("redis://") {
        let partitions = Arc::new(RedisPartitions::open(url, namespaces)?);
        Ok(Partitions {
            stores: partitions
                .partitions()
                .iter()
                .map(|p| Arc::clone(p) as Arc<dyn Store>)
                .collect(),
            batch: Some(partitions),
        })
    } else {
        Ok(Partitions {
            stores: namespaces
                .iter()
                .map(|ns| open(url, ns.as_ref()))
                .collect::<Result<_>>()?,
            batch: None,
        })
    }
}

/// Opens the store a URL names: `memory`, or `redis://HOST:PORT/DB` (see [`redis`]), whose
/// entries are kept under `namespace` (a node passes its advertised address) so that several
/// nodes can share one Redis. Fails on an invalid URL or an unreachable Redis.
///
/// # Errors
/// [`Error::InvalidStore`] for a URL of another scheme or a malformed Redis URL;
/// [`Error::StoreUnavailable`] for a Redis that cannot be opened now.
pub fn open(url: &str, namespace: &str) -> Result<Arc<dyn Store>> {
    if url == "memory" {
        Ok(Arc::new(MemoryStore::new()))
    } else if url.starts_with("redis://") {
        Ok(Arc::new(RedisStore::open(url, namespace)?))
    } else {
        Err(Error::InvalidStore {
            url: url.to_string(),
            reason: "expected `memory` or redis://HOST:PORT/DB".to_string(),
        })
    }
}
