//! # chordkv-server
//!
//! The production driver of a node: a mio event loop around one
//! [`chordkv_core::chord::Node`], the Redis protocol front end, and the store drivers that do
//! I/O ([`store`]: Redis; [`store::open`] opens a store by URL). Starting it fails with the
//! crate's [`Error`].
//!
//! The Chord core decides everything; this crate only moves bytes, keeps time and runs store
//! ops. One thread owns the `Poll`, the node and every socket:
//!
//! ```text
//!            ┌───────────────────────── one turn of the loop ──────────────────────────┐
//!   poll ──► │ LISTENER: accept until WouldBlock                                       │
//!  (until    │ conn:     read ─► decode ─► handle_request / handle_reply               │
//!  the next  │ WAKER:    store results ─► store_done;  leave / kill from a handle      │
//!  deadline) │ STORE_PIPE: Redis replies ─► store_done (the same turn)                 │
//!            │ SIGNALS:  SIGTERM / SIGINT ─► leave (a second one: exit)                │
//!            │ tick(now) ─► poll_output until empty: Send, Reply, Store, Left          │
//!            │ flush every connection that got output; the turn's store ops to Redis   │
//!            └─────────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! - **Tokens.** `LISTENER`, `WAKER` and `SIGNALS` are constants; each connection takes the
//!   next number of a counter that is never reused. An inbound connection's token is also the
//!   [`chordkv_core::chord::ReplyTo`] its requests carry into the core, so a reply that comes out
//!   after its connection closed finds no connection and is dropped, and can never reach a
//!   newer one.
//! - **Connections** ([`conn`]). Accepted connections carry requests in and replies out; the
//!   node opens one connection per peer address, on the first `Output::Send` to it, for its
//!   own requests (replies come back on it). A frame travelling the wrong way, or bytes that
//!   do not decode, close that one connection with one line on stderr. Losing a peer
//!   connection with requests outstanding, a failed or timed-out connect, or a peer that stops
//!   reading (over [`MAX_WRITE_BUFFER_BYTES`] queued) calls `peer_unreachable`, so the core
//!   routes around the peer at once instead of at its request deadlines; the next `Send`
//!   opens a new connection.
//! - **Write interest** is registered only while a connection has bytes queued (or a connect
//!   to finish). Output is encoded straight into the connection's write buffer, and every
//!   connection that got output is flushed once at the end of the turn, so the replies to a
//!   pipelined batch leave in one `write`; only a write that would block registers
//!   `WRITABLE`.
//! - **Reads** go through one shared 64 KiB scratch buffer into each connection's `BytesMut`,
//!   whose frames are decoded without copying. A connection gets at most
//!   [`READ_BUDGET_BYTES`] per turn; if it has more, it is read again next turn (with a zero
//!   poll timeout), so one flooding client cannot starve the others. A client that does not
//!   read its replies (over [`OUTPUT_HIGH_WATER_BYTES`] queued) is not read either until they
//!   drain, so TCP flow control slows it down instead of the node's memory growing.
//! - **Store ops** run inline when the store never blocks (memory): `execute`, then
//!   `store_done` at once, in the same turn. A blocking store (Redis) has its gets and puts
//!   pipelined on the loop's own non-blocking connection without replicas (token `STORE_PIPE`;
//!   its connect and I/O deadlines bound `poll`'s timeout), on a pipeline worker thread with
//!   them, and its other ops run on a pool of worker threads
//!   ([`store_pool`]), whose results come back over a channel and wake the loop through the
//!   `Waker`. The loop itself never blocks on anything but `poll`.
//! - **Time.** `now` is the wall-clock milliseconds at start plus monotonic time since: it
//!   never goes back (the core's timers need that) and stays close to wall time (the core's
//!   version clock stamps writes with it, and versions must keep growing across restarts).
//!   `poll` sleeps until the core's `next_deadline` (at most 1 s), then `tick(now)` runs
//!   after every wake-up.
//! - **RESP** ([`resp`]). With `--resp ADDR` a second listener (`RESP_LISTENER`) accepts Redis
//!   clients. Their connections are inbound connections with a RESP session: the same read
//!   budget, backpressure and write-interest rules, but commands are decoded with
//!   `chordkv_protocol::resp` and translated by the session, without the core, into the
//!   requests a binary client would send; the loop hands them to `handle_request` with the
//!   connection's token as `ReplyTo`, and gives the core's replies to the session, which puts
//!   them back in command order and encodes RESP.
//! - **Metrics** (`metrics.rs`). With `--metrics ADDR` a thread of its own serves Prometheus'
//!   `/metrics`; the loop records requests in plain fields and publishes a snapshot once a
//!   second through a mutex it only `try_lock`s, so it never waits for a scraper.
//! - **Leaving.** The first SIGTERM/SIGINT (or [`ServerHandle::leave`]) starts the core's
//!   graceful leave; when it emits `Output::Left` the loop gives queued bytes up to
//!   [`LEFT_FLUSH_MS`] to go out and returns. The vnodes leave one after another, each
//!   waiting at most `leave_timeout_ms` for its successor to take its range over; the loop
//!   exits anyway `leave_timeout_ms` per vnode + [`LEAVE_MARGIN_MS`] after the leave started,
//!   and at once on a second signal. While a vnode waits, the loop warns every
//!   [`LEAVE_REPORT_MS`] which one and for how long.

pub mod auth;
mod conn;
mod conn_table;
pub mod error;
pub(crate) mod event_loop;
pub mod keyring;
pub mod latency;
pub mod log;
mod metrics;
pub mod positions;
mod resp;
pub mod secure;
pub mod store;
mod store_pool;
#[cfg(test)]
mod tests;
pub mod tls;
mod token_map;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use chordkv_protocol::Id;

use chordkv_core::chord::Config;
use chordkv_core::store::Store;
pub use error::{Error, Result};
use event_loop::{Control, Server};
pub use event_loop::{
    LEAVE_MARGIN_MS, LEAVE_REPORT_MS, LEFT_FLUSH_MS, MAX_CLIENT_REQUESTS_IN_FLIGHT, MAX_POLL_WAIT_MS,
    MAX_WRITE_BUFFER_BYTES, MIN_CONNECT_TIMEOUT_MS, OUTPUT_HIGH_WATER_BYTES, OUTPUT_LOW_WATER_BYTES,
    READ_BUDGET_BYTES, READ_CHUNK_BYTES,
};

/// Everything `chordkv node` needs to run a node.
pub struct ServerConfig {
    /// Address to bind. Port 0 picks a free port (then the advertised address, unless given,
    /// is the one actually bound).
    pub listen: SocketAddr,
    /// Address other nodes and clients use to reach this node (default: `listen`). With one
    /// vnode and no `vnode_ids`, the node's id is the SHA-1 of this address.
    pub advertise: Option<SocketAddr>,
    /// Nodes of the ring to join through, tried in turn until one answers; empty starts a
    /// new ring.
    pub join: Vec<SocketAddr>,
    /// The ring position of each virtual node, vnode `i` at `vnode_ids[i]` (SIGCOMM'01
    /// section 6.9); empty: one vnode at the SHA-1 of the advertised address.
    pub vnode_ids: Vec<Id>,
    /// Chord tunables.
    pub chord: Config,
    /// The storage driver's partitions, one per vnode (`stores[i]` holds vnode `i`'s keys):
    /// as many as `vnode_ids` (one when it is empty).
    pub stores: Vec<Arc<dyn Store>>,
    /// Runs the partitions' gets and puts pending at the same time together, for a blocking
    /// store that can ([`store::open_partitions`] gives it: Redis pipelines); `None` runs each
    /// op alone.
    pub store_batch: Option<Arc<dyn store::Batch>>,
    /// Worker threads for a blocking store's ops that run alone (ignored for a non-blocking
    /// one; at least 1); its batches have a worker of their own (see `store_pool`).
    pub store_threads: usize,
    /// Also listen for Redis clients (RESP2) on this address; port 0 picks a free port.
    pub resp: Option<SocketAddr>,
    /// Who may act as a peer (the ring's keyring).
    pub peer_security: PeerSecurity,
    /// What clients may make the node hold.
    pub client_limits: ClientLimits,
    /// Who may be a client (see [`auth`]).
    pub client_auth: ClientAuth,
    /// TLS for clients ([`tls::server_config`]): the RESP port speaks only TLS, and the
    /// binary port serves clients only over TLS (peers use the keyring).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Serve `/metrics` (Prometheus text format) on this address, from a thread of its own
    /// (see `metrics.rs`); port 0 picks a free port.
    pub metrics: Option<SocketAddr>,
}

/// Who may use the node as a client: credentials (`--requirepass`, `--users`) and Redis'
/// protected mode.
#[derive(Clone, Debug)]
pub struct ClientAuth {
    /// The users who may log in; `None` lets every client in (subject to protected mode).
    /// Needs a keyring: peers and clients share the binary port, and only the handshake tells
    /// a peer from a client that has not logged in.
    pub users: Option<Arc<auth::Users>>,
    /// Without users, refuse clients from other hosts when the node listens on an address
    /// other hosts can reach (Redis' `protected-mode`).
    pub protected_mode: bool,
}

impl Default for ClientAuth {
    fn default() -> ClientAuth {
        ClientAuth {
            users: None,
            protected_mode: true,
        }
    }
}

/// Bounds on what clients can make a node hold, after Redis' `maxclients`,
/// `client-query-buffer-limit` and `timeout` (redis.io/docs/latest/develop/reference/clients).
/// Peers (connections that completed the handshake, or whose first frame is a peer operation)
/// are not counted and never refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// Client connections at once; one more is answered Redis' `max number of clients
    /// reached` and closed. Lowered at start to what the file-descriptor limit allows.
    pub max_clients: usize,
    /// Bytes of unprocessed input one client may have buffered (an unfinished command, or
    /// commands read while its replies cannot be written); beyond it the client is closed.
    pub query_buffer_bytes: usize,
    /// Milliseconds a client may stay idle (no input, nothing in flight) before it is closed;
    /// 0 never closes one.
    pub idle_timeout_ms: u64,
}

impl Default for ClientLimits {
    fn default() -> ClientLimits {
        ClientLimits {
            max_clients: chordkv_core::options::DEFAULT_MAX_CLIENTS as usize,
            query_buffer_bytes: chordkv_core::options::DEFAULT_QUERY_BUFFER_BYTES as usize,
            idle_timeout_ms: 0,
        }
    }
}

/// How the node authenticates its peers (see [`keyring`] and [`secure`]; the switches are
/// memberlist's `GossipVerifyIncoming`/`GossipVerifyOutgoing`, for turning a keyring on in a
/// running ring).
#[derive(Clone, Debug)]
pub struct PeerSecurity {
    /// The ring's keys; `None` runs without peer authentication, as before keyrings existed:
    /// whoever reaches the port may act as a peer.
    pub keyring: Option<keyring::Keyring>,
    /// The file the keyring was read from, read again on SIGHUP (rotation).
    pub keyring_path: Option<std::path::PathBuf>,
    /// Refuse peer operations on connections that did not complete the handshake. Off only
    /// while a keyring is being rolled out to a ring that ran without one.
    pub verify_incoming: bool,
    /// Open connections to peers with the handshake. Off only during such a rollout.
    pub verify_outgoing: bool,
}

impl Default for PeerSecurity {
    /// No keyring; both switches on (they matter only with a keyring).
    fn default() -> PeerSecurity {
        PeerSecurity {
            keyring: None,
            keyring_path: None,
            verify_incoming: true,
            verify_outgoing: true,
        }
    }
}

impl PeerSecurity {
    /// Whether a connection must complete the handshake before peer operations are accepted.
    pub fn requires_handshake(&self) -> bool {
        self.keyring.is_some() && self.verify_incoming
    }
}

/// Runs the node until it has left the ring after SIGTERM/SIGINT (graceful leave), or fails.
///
/// Binding errors (address in use, address not on this host) are returned before anything
/// else happens, with the address in the message.
pub fn run(config: ServerConfig) -> Result<()> {
    Server::bind(config, true)?.run()
}

/// Starts a node on its own thread, without signal handling: for tests and for embedding.
///
/// The listener is bound before this returns, so a bind error is returned here and
/// [`ServerHandle::addr`] is connectable at once (with `listen` on port 0 it is the port the
/// system picked).
pub fn spawn(config: ServerConfig) -> Result<ServerHandle> {
    let server = Server::bind(config, false)?;
    let me = server.me();
    let resp_addr = server.resp_addr();
    let control = server.control();
    let thread = thread::Builder::new()
        .name(format!("chordkv-node-{}", me.addr.host.port()))
        .spawn(move || server.run())
        .map_err(Error::io("starting the node thread"))?;
    Ok(ServerHandle {
        addr: me.addr.host,
        resp_addr,
        id: me.id,
        control,
        thread: Some(thread),
    })
}

/// A node started by [`spawn`]. Dropping the handle kills the node (no leave) and waits for
/// its thread.
pub struct ServerHandle {
    addr: SocketAddr,
    resp_addr: Option<SocketAddr>,
    id: Id,
    control: Arc<Control>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl ServerHandle {
    /// The node's advertised address (the one to connect to).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the RESP listener, when the config asked for one.
    pub fn resp_addr(&self) -> Option<SocketAddr> {
        self.resp_addr
    }

    /// The node's ring id.
    pub fn id(&self) -> Id {
        self.id
    }

    /// Starts a graceful leave, as SIGTERM does; [`ServerHandle::join_thread`] then returns
    /// once the node has handed off its keys and left.
    pub fn leave(&self) {
        self.control.request_leave();
    }

    /// Stops the node at once without leaving the ring: its sockets close as if it crashed.
    pub fn kill(&self) {
        self.control.request_kill();
    }

    /// Waits for the node's thread to finish and returns its result.
    pub fn join_thread(mut self) -> Result<()> {
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| Error::Panicked)?,
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.control.request_kill();
            let _ = thread.join();
        }
    }
}
