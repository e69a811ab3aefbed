//! Client-side routing: [`OwnerClient`] keeps a view of the ring and sends each operation
//! straight to the key's owner, so a request takes one network round trip and no overlay hop.
//!
//! This is what Redis Cluster clients do with `MOVED`: the view may be stale (a node joined,
//! left or died since it was fetched), and the nodes keep it correct:
//!
//! ```text
//!   owner = first node of the view at or after hash(key)   (clockwise, wrapping)
//!   send the operation to owner with FLAG_DIRECT
//!     reply              -> done (hops = redirects followed)
//!     REDIRECT to n      -> add n to the view, send to n (at most MAX_REDIRECTS times);
//!                           the view is re-fetched (rate-limited) before the next request
//!     owner unreachable  -> drop it from the view, send the operation without FLAG_DIRECT
//!                           through the next node, which routes it with the ring's failover
//! ```
//!
//! A direct request is served only by the node that owns the key at that moment (or, during
//! a range transfer, held by the receiver); any other node redirects it. So a stale view
//! costs at most a redirect, never a wrong answer. The view is fetched with [`walk_ring`](crate::walk_ring).
//! Each node gets one connection, opened on first use.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chordkv_protocol::{Frame, Id, Message, NodeAddr, NodeRef};

use crate::{
    delete_request, delete_result, get_request, get_result, put_request, put_result, walk_ring_as, Access,
    Client, ClientError, DeleteResult, GetResult, PutResult, Result,
};

/// Redirects followed for one operation before it is sent through the ring instead.
pub const MAX_REDIRECTS: u16 = 4;
/// Least time between two re-fetches of the view.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(500);
/// Most nodes a view fetch walks.
const MAX_RING_NODES: usize = 1 << 16;

/// What an [`OwnerClient`] did besides plain requests, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnerStats {
    /// Requests that went straight to the owner the view named and were served there.
    pub direct_hits: u64,
    /// REDIRECT replies followed (a stale view).
    pub redirects: u64,
    /// Operations sent through the ring because the owner was unreachable or kept redirecting.
    pub fallbacks: u64,
    /// Times the view was fetched.
    pub refreshes: u64,
}

/// A client that routes each operation to its key's owner itself.
pub struct OwnerClient {
    /// The view: ring id -> node.
    ring: BTreeMap<Id, NodeRef>,
    /// Addresses to fetch the view from when the view itself has no live node left.
    seeds: Vec<SocketAddr>,
    clients: BTreeMap<SocketAddr, Client>,
    timeout: Duration,
    access: Access,
    stale: bool,
    last_refresh: Option<Instant>,
    pub stats: OwnerStats,
}

impl OwnerClient {
    /// Fetches the ring through the first of `seeds` that answers. `timeout` bounds each
    /// connection attempt and request.
    pub fn connect(seeds: &[SocketAddr], timeout: Duration) -> Result<OwnerClient> {
        OwnerClient::connect_as(seeds, timeout, Access::default())
    }

    /// [`OwnerClient::connect`], reaching every node with `access` (credentials, TLS).
    pub fn connect_as(seeds: &[SocketAddr], timeout: Duration, access: Access) -> Result<OwnerClient> {
        let mut client = OwnerClient {
            ring: BTreeMap::new(),
            seeds: seeds.to_vec(),
            clients: BTreeMap::new(),
            timeout,
            access,
            stale: true,
            last_refresh: None,
            stats: OwnerStats::default(),
        };
        client.refresh()?;
        Ok(client)
    }

    /// The nodes of the view, in ring order.
    pub fn view(&self) -> Vec<NodeRef> {
        self.ring.values().copied().collect()
    }

    /// The node the view says owns `key`.
    pub fn owner_of(&self, key: &[u8]) -> Option<NodeRef> {
        let id = Id::of_key(key);
        self.ring
            .range(id..)
            .next()
            .or_else(|| self.ring.iter().next())
            .map(|(_, n)| *n)
    }

    /// Re-fetches the view by walking the ring from a node of the view or a seed.
    pub fn refresh(&mut self) -> Result<()> {
        self.last_refresh = Some(Instant::now());
        self.stats.refreshes += 1;
        let starts: Vec<SocketAddr> = self
            .ring
            .values()
            .map(|n| n.addr.host)
            .chain(self.seeds.clone())
            .collect();
        let mut last_error = None;
        for start in starts {
            match walk_ring_as(start, self.timeout, MAX_RING_NODES, &self.access) {
                Ok(report) if !report.nodes.is_empty() => {
                    self.ring = report
                        .nodes
                        .iter()
                        .map(|n| {
                            (
                                n.id,
                                NodeRef {
                                    id: n.id,
                                    addr: n.addr,
                                },
                            )
                        })
                        .collect();
                    self.stale = false;
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| ClientError::Unexpected("no node to fetch the ring from".into())))
    }

    /// Reads `key` from its owner (errors: see [`Client::get`]).
    pub fn get(&mut self, key: impl Into<Bytes>) -> Result<GetResult> {
        get_result(self.request(get_request(key.into())?)?)
    }

    /// Writes `value` under `key` at its owner (errors: see [`Client::put`]).
    pub fn put(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<PutResult> {
        put_result(self.request(put_request(key.into(), value.into())?)?)
    }

    /// Deletes `key` at its owner (errors: see [`Client::delete`]).
    pub fn delete(&mut self, key: impl Into<Bytes>) -> Result<DeleteResult> {
        delete_result(self.request(delete_request(key.into())?)?)
    }

    /// Sends a client operation (GET, PUT or DELETE) to its key's owner and returns the reply,
    /// its `hops` being the redirects it took (plus the ring's hops after a fallback).
    pub fn request(&mut self, message: Message) -> Result<Message> {
        let key = match message.key() {
            Some(k) => k.clone(),
            None => {
                return Err(ClientError::Unexpected(format!(
                    "{} is not a keyed operation",
                    message.name()
                )))
            }
        };
        if self.stale && self.last_refresh.is_none_or(|t| t.elapsed() >= REFRESH_INTERVAL) {
            // A failed refresh keeps the old view; the nodes correct it request by request.
            let _ = self.refresh();
        }
        let mut target = match self.owner_of(&key) {
            Some(n) => n,
            None => {
                self.refresh()?;
                self.owner_of(&key)
                    .ok_or_else(|| ClientError::Unexpected("the ring has no node".into()))?
            }
        };
        let mut redirects: u16 = 0;
        loop {
            match self.call(target.addr, message.clone(), true) {
                Ok(Message::Redirect { node, .. }) => {
                    self.stats.redirects += 1;
                    self.stale = true;
                    self.ring.insert(node.id, node);
                    redirects += 1;
                    if redirects > MAX_REDIRECTS || node.addr == target.addr {
                        return self.fallback(target, message, redirects);
                    }
                    target = node;
                }
                Ok(reply) => {
                    if redirects == 0 {
                        self.stats.direct_hits += 1;
                    }
                    return Ok(with_extra_hops(reply, redirects));
                }
                Err(e) if e.breaks_connection() && !matches!(e, ClientError::Timeout { .. }) => {
                    // The owner is gone (or going): forget it and let the ring fail over.
                    self.ring.remove(&target.id);
                    self.stale = true;
                    return self.fallback(target, message, redirects);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `message` without FLAG_DIRECT through the node after `failed` in the view (the
    /// ring routes it and fails over), or through any seed when the view is empty.
    fn fallback(&mut self, failed: NodeRef, message: Message, redirects: u16) -> Result<Message> {
        self.stats.fallbacks += 1;
        let mut candidates: Vec<NodeAddr> = self
            .ring
            .range(failed.id..)
            .chain(self.ring.range(..failed.id))
            .map(|(_, n)| n.addr)
            .filter(|a| *a != failed.addr)
            .collect();
        candidates.extend(
            self.seeds
                .iter()
                .filter(|a| **a != failed.addr.host)
                .map(|a| NodeAddr::host(*a)),
        );
        let mut last_error = None;
        for addr in candidates {
            match self.call(addr, message.clone(), false) {
                Ok(reply) => return Ok(with_extra_hops(reply, redirects)),
                Err(e) if e.breaks_connection() => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| ClientError::Unexpected("no node left to send through".into())))
    }

    /// One request on the node's connection (opened if needed, dropped when it breaks). An
    /// `ERROR` reply becomes [`ClientError::Server`].
    fn call(&mut self, to: NodeAddr, message: Message, direct: bool) -> Result<Message> {
        let addr = to.host;
        let client = match self.clients.get_mut(&addr) {
            Some(c) => c,
            None => {
                let c = Client::connect_as(addr, self.timeout, &self.access)?;
                self.clients.entry(addr).or_insert(c)
            }
        };
        let id = client.fresh_request_id();
        let mut frame = if direct {
            Frame::direct(id, message)
        } else {
            Frame::new(id, message)
        };
        // Vnode 0 (or a host without vnodes) is the host's default.
        frame.vnode = (to.vnode != 0).then_some(to.vnode);
        match client.call(frame) {
            Ok(reply) => match reply.message {
                Message::Error { code, text, .. } => Err(ClientError::Server { code, text }),
                other => Ok(other),
            },
            Err(e) => {
                if e.breaks_connection() {
                    self.clients.remove(&addr);
                }
                Err(e)
            }
        }
    }
}

/// `reply` with `extra` hops added to the ones it reports.
fn with_extra_hops(mut reply: Message, extra: u16) -> Message {
    match &mut reply {
        Message::GetReply { hops, .. }
        | Message::PutReply { hops, .. }
        | Message::DeleteReply { hops, .. } => *hops = hops.saturating_add(extra),
        _ => {}
    }
    reply
}
