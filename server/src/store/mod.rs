//! The stores a node can open: the in-memory store of the core
//! ([`chordkv_core::store::MemoryStore`]) and the Redis driver ([`redis`]), which does network
//! I/O and so lives here rather than in the core.

pub mod redis;

use std::sync::Arc;

use chordkv_core::store::{MemoryStore, Store};

use crate::{Error, Result};

pub use redis::RedisStore;

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
