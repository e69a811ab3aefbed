//! The event loop itself: one thread, one `mio::Poll`, one [`Node`]. See the module docs of
//! [`super`] for its shape and the reasons behind it.

mod admission;
mod redial;

use std::collections::HashSet;
use std::fmt::{self, Display};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::Error;
use chordkv_protocol::{ErrorCode, Frame, Id, Message, NodeAddr, NodeRef};
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use tracing::{debug, info, warn, Span};

use super::conn::{Accepting, Conn, Kind, ReadStatus, Role, Security};
use super::conn_table::{self, ConnTable};
use super::latency::{Elapsed, Histogram};
use super::metrics::{self, Metrics};
use super::resp::{ClientRow, Facts, RespSession, Step};
use super::store_pool::StorePool;
use super::token_map::TokenMap;
use super::ServerConfig;
use super::{ClientAuth, ClientLimits, PeerSecurity};
use crate::log::{node_span, suppressed_field, Repeat, RepeatLimiter, Subject};
use admission::{fit_descriptor_limit, protected_from, Admit, PROTECTED_MODE};
use chordkv_core::chord::{Host, Millis, Output, Phase, ReplyTo};
use chordkv_core::store::{self, Store, SMALL_VALUE_BYTES};
use redial::Redial;

/// The listening socket.
const LISTENER: Token = Token(0);
/// Woken by store workers and by a [`super::ServerHandle`].
const WAKER: Token = Token(1);
/// SIGTERM and SIGINT, through signal-hook's self-pipe.
const SIGNALS: Token = Token(2);
/// The RESP (Redis protocol) listening socket, with `--resp`.
const RESP_LISTENER: Token = Token(3);
/// The store's connection to Redis for gets and puts (`store::redis::pipe`).
const STORE_PIPE: Token = Token(4);
/// Not a socket: the [`ReplyTo`] of the `GET_STATS` the loop asks for `/metrics`.
/// (Connections' tokens, from `ConnTable::next_token`, are all above these and never reused:
/// a token doubles as a [`ReplyTo`], so a late reply can never reach a newer connection.)
const METRICS_STATS: Token = Token(5);

/// Bytes asked of the socket per `read`.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Bytes read from one connection per turn of the loop before the others get their turn.
pub const READ_BUDGET_BYTES: usize = 1024 * 1024;
/// Unwritten bytes one connection may queue; beyond this its peer is not reading and the
/// connection is closed (a peer connection counts as unreachable): one frame of the largest
/// size (a reply carrying a 512 MiB value) and 64 MiB more. A client's replies stop its input
/// from being read well before that ([`OUTPUT_HIGH_WATER_BYTES`]).
pub const MAX_WRITE_BUFFER_BYTES: usize = chordkv_protocol::MAX_FRAME_BYTES + 64 * 1024 * 1024;
/// Unwritten reply bytes at which an inbound connection stops being read: its client is not
/// reading its replies, so TCP flow control should slow it down rather than our memory grow.
pub const OUTPUT_HIGH_WATER_BYTES: usize = 4 * 1024 * 1024;
/// Unwritten reply bytes under which a paused connection is read again.
pub const OUTPUT_LOW_WATER_BYTES: usize = 1024 * 1024;
/// Requests of one binary client handed to the core and not yet answered; at this many its
/// input waits (in its buffer and the socket) until a reply goes out, as a RESP client's does
/// (`resp::session::MAX_REQUESTS_IN_FLIGHT`).
pub const MAX_CLIENT_REQUESTS_IN_FLIGHT: usize = 4_096;
/// Requests (RESP commands or frames) read from one connection that enter the core before
/// the loop pumps its outputs: a batch of a pipeline, whose store ops the host then runs with
/// their lookups prefetched together (`inline_stores.rs` in the core, for the memory store).
/// The output marks are checked between batches,
/// so batches are made only while every stored value is small and no request of the batch
/// carried a large one ([`Server::batch_limit`]): a batch's replies then add at most this many
/// times [`SMALL_VALUE_BYTES`] of values (2 MiB) over the marks.
const PUMP_BATCH: usize = 32;
/// Longest wait in `poll`, whatever the deadlines say.
pub const MAX_POLL_WAIT_MS: u64 = 1_000;
/// Shortest connect timeout to a peer (the actual one is the larger of this and the core's
/// `rpc_timeout_ms`).
pub const MIN_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Time given to write out queued bytes once the node has left the ring.
pub const LEFT_FLUSH_MS: u64 = 1_000;
/// Time allowed past the core's `leave_timeout_ms` before the loop exits anyway.
pub const LEAVE_MARGIN_MS: u64 = 2_000;
/// While a leave waits on one vnode, how often the loop says so (ms).
pub const LEAVE_REPORT_MS: u64 = 10_000;
/// Wait before accepting again after `accept` failed (e.g. out of file descriptors).
const ACCEPT_RETRY_MS: u64 = 100;
/// Most bytes of output a peer connection holds for one more turn of the loop (see
/// `Server::flush_queued`); more go at once.
const HOLD_FLUSH_BYTES: usize = 64 * 1024;
const EVENTS_CAPACITY: usize = 1_024;
/// The node's clock: wall-clock milliseconds at start plus monotonic time since, so it never
/// goes back and stays close to wall time (the core stamps write versions with it).
struct Clock {
    wall_at_start_ms: u64,
    start: Instant,
}

impl Clock {
    fn new() -> Clock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Clock {
            wall_at_start_ms: wall,
            start: Instant::now(),
        }
    }

    fn now(&self) -> Millis {
        self.millis_at(Instant::now())
    }

    /// The loop's clock at `at`, an instant read since the clock started.
    fn millis_at(&self, at: Instant) -> Millis {
        self.wall_at_start_ms + at.saturating_duration_since(self.start).as_millis() as u64
    }
}

/// What other threads may ask of the loop; each request is followed by a wake.
pub(super) struct Control {
    waker: Waker,
    /// A wake is in flight and not yet seen by the loop: further wakes can be skipped.
    wake_pending: AtomicBool,
    leave: AtomicBool,
    kill: AtomicBool,
}

impl Control {
    /// Wakes the loop, at most once until it has seen the wake. A store worker calls this
    /// after sending a result, and the loop clears the flag before draining results, so no
    /// result is left behind unseen.
    pub fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }

    /// Starts a graceful leave, as SIGTERM does.
    pub fn request_leave(&self) {
        self.leave.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }

    /// Stops the loop at once, without leaving the ring (as a crash would).
    pub fn request_kill(&self) {
        self.kill.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

/// Why a connection is being closed, for the log.
enum Why<'a> {
    Io(&'a io::Error),
    Text(&'a str),
}

impl Display for Why<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Io(e) => e.fmt(f),
            Why::Text(t) => f.write_str(t),
        }
    }
}

/// Least time between two log lines about failed store ops (a Redis that is down fails every
/// op: the count of those not logged goes in the next line).
const STORE_ERROR_LOG_MS: Millis = 10_000;

/// Logs failed store ops (a Redis down, frozen, out of memory, or holding data the driver
/// cannot read), which a client sees only as its own error and the stats as `store_errors`:
/// the first at once, then at most one line every [`STORE_ERROR_LOG_MS`] with the number of
/// failures since the last line (those of the last period are logged once it ends, by
/// [`StoreErrorLog::flush`]). (A loss of the store's data has its own line.)
#[derive(Default)]
struct StoreErrorLog {
    /// When the next line may be written.
    next_at: Millis,
    /// Failures since the last line.
    unlogged: u64,
    /// The last failure's text.
    last: Option<String>,
}

impl StoreErrorLog {
    fn failed(&mut self, now: Millis, e: &store::StoreError) {
        self.unlogged += 1;
        self.last = Some(e.to_string());
        self.flush(now);
    }

    /// Writes the line of the failures not logged yet, if the period since the last one ended.
    fn flush(&mut self, now: Millis) {
        if self.unlogged == 0 || now < self.next_at {
            return;
        }
        warn!(
            failures = self.unlogged,
            "store operations failed (a client's request is answered with the error, a \
             background one is tried again later); the last: {}",
            self.last.as_deref().unwrap_or("?")
        );
        self.unlogged = 0;
        self.next_at = now.saturating_add(STORE_ERROR_LOG_MS);
    }
}

pub(super) struct Server {
    poll: Poll,
    listener: TcpListener,
    /// The RESP listener and what INFO reports, with `--resp`.
    resp_listener: Option<TcpListener>,
    resp_facts: Option<Facts>,
    signals: Option<Signals>,
    control: Arc<Control>,
    clock: Clock,
    /// When the last poll returned: the start of every request read in this turn of the loop
    /// (`latency::Started`), so that timing requests reads the clock twice per turn, not per
    /// request.
    polled_at: Instant,
    /// When this turn's first reply was timed (the clock is read once per turn for replies
    /// too, as for requests: `Started`); `None` until then.
    replied_at: Option<Instant>,
    /// The node's virtual nodes (one for a node without).
    node: Host,
    /// Vnode 0.
    me: NodeRef,
    /// The store's partitions, one per vnode.
    stores: Vec<Arc<dyn Store>>,
    /// Workers for a blocking store; `None`: the host runs the stores' ops itself.
    pool: Option<StorePool>,
    /// The failed store ops' log lines, at most one every [`STORE_ERROR_LOG_MS`].
    store_errors: StoreErrorLog,

    /// Open connections by token (looked up several times a request: a slab, see
    /// `conn_table.rs`).
    conns: ConnTable<Conn>,
    /// The outbound connection to each peer address (looked up for every message to a peer:
    /// hashed as tokens are, see `token_map.rs`).
    peers: TokenMap<SocketAddr, Token>,
    /// Outbound connections whose connect may still be under way.
    connecting: Vec<Token>,
    connect_timeout_ms: u64,
    /// Peers reported unreachable and not reached since: logs only say when this changes.
    down: HashSet<SocketAddr>,
    /// Peers whose last connection failed before they answered, not dialled again until
    /// their backoff ends.
    redial: Redial,
    /// Connections with newly queued output, flushed at the end of the turn.
    to_flush: Vec<Token>,
    /// Peer connections whose output waits one more turn (see `flush_queued`).
    held_flush: Vec<Token>,
    /// Connections whose read budget ran out: read again next turn.
    read_again: Vec<Token>,
    /// One read buffer shared by all connections: bytes are copied out of it into the
    /// connection's own buffer, so no zeroed 64 KiB is prepared per read.
    scratch: Box<[u8]>,
    accept_retry_at: Option<Millis>,
    last_accept_error_log: Millis,

    last_phase: Phase,
    /// Set when a leave starts: the loop exits at this time whatever happens.
    leave_deadline: Option<Millis>,
    /// While leaving: the vnode handing its range over, since when, and when the loop next
    /// says it still waits (`report_leave`).
    leave_report: Option<(usize, Millis, Millis)>,
    /// Set when the node has left: queued bytes get until then to go out.
    exit_deadline: Option<Millis>,
    /// Set by a second signal: exit at once.
    stop: bool,
    /// The ring's keyring and how strictly it is applied.
    security: PeerSecurity,
    /// Warnings that peers and strangers can repeat (refusals, unreachable peers, malformed
    /// frames, clients over a limit), limited per kind and peer.
    repeats: RepeatLimiter,
    /// The node's span (its address and id), entered for the life of the loop.
    span: Span,
    limits: ClientLimits,
    /// Client connections open (counted against `limits.max_clients`).
    clients: usize,
    auth: ClientAuth,
    /// TLS for clients (`--tls-cert`).
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Whether other hosts can reach the frame listener (protected mode applies only then).
    reachable_from_outside: bool,
    /// The same for the RESP listener.
    resp_reachable_from_outside: bool,
    /// When idle clients were last looked for.
    last_idle_sweep: Millis,
    /// With `--metrics`: what the loop records for `/metrics` and publishes to its thread.
    metrics: Option<Metrics>,
    /// Every client request's latency, reported in `GET_STATS` (`latency.rs`).
    latency: Histogram,
    /// The last request timed (`latency.rs`).
    elapsed: Elapsed,
}

impl Server {
    /// Binds the listener, builds the node and sends its first messages (a join lookup).
    pub fn bind(config: ServerConfig, handle_signals: bool) -> crate::Result<Server> {
        let ServerConfig {
            listen,
            advertise,
            join,
            vnode_ids,
            chord,
            stores,
            store_batch,
            store_threads,
            resp,
            peer_security,
            client_limits,
            client_auth,
            tls,
            metrics,
        } = config;
        if client_auth.users.is_some() && peer_security.keyring.is_none() {
            return Err(Error::Config(
                "--requirepass and --users need --keyring: peers and clients share the node's port, \
                 and only the ring's key tells a peer from a client that has not logged in \
                 (make one with `chordkv keygen > FILE`)"
                    .into(),
            ));
        }
        let mut listener = TcpListener::bind(listen).map_err(|e| bind_error(listen, e))?;
        let mut resp_listener = match resp {
            Some(addr) => Some(TcpListener::bind(addr).map_err(|e| bind_error(addr, e))?),
            None => None,
        };
        // Bound before the node starts, so an address in use is a startup error.
        let metrics = metrics.map(Metrics::start).transpose()?;
        let local = listener
            .local_addr()
            .map_err(Error::io("reading the listening address"))?;
        let addr = advertise.unwrap_or(local);
        let ids = if vnode_ids.is_empty() {
            vec![Id::of_addr(&addr)]
        } else {
            vnode_ids
        };
        if stores.len() != ids.len() {
            return Err(Error::Config(format!(
                "{} vnode(s) need as many store partitions, not {}",
                ids.len(),
                stores.len()
            )));
        }
        let me = NodeRef {
            id: ids[0],
            addr: NodeAddr::host(addr),
        };
        let span = node_span(addr, &ids);
        let _entered = span.clone().entered();
        let mut chord = chord;
        // A Redis store writes a value with a small header, and refuses what is over its own
        // proto-max-bulk-len: the node takes no value its store could not keep.
        if let Some(most) = stores.iter().filter_map(|s| s.max_value_bytes()).min() {
            if most < chord.max_value_bytes {
                // Asked for (not the default): worth a warning. The default is only the
                // protocol's bound, which a default Redis is 17 bytes short of.
                if chord.max_value_bytes < chordkv_core::options::DEFAULT_MAX_VALUE_BYTES as usize {
                    warn!(
                        "--max-value-bytes lowered from {} to {most}: the store takes no longer \
                         value (raise its proto-max-bulk-len to store longer ones)",
                        chord.max_value_bytes
                    );
                } else {
                    info!(
                        "values up to {most} bytes: the store takes no longer value (its \
                         proto-max-bulk-len less a record's header)"
                    );
                }
                chord.max_value_bytes = most;
            }
        }
        let client_limits = fit_descriptor_limit(client_limits);

        let poll = Poll::new().map_err(Error::io("creating the event loop"))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(Error::io("registering the listener"))?;
        let mut resp_facts = None;
        if let Some(l) = resp_listener.as_mut() {
            poll.registry()
                .register(l, RESP_LISTENER, Interest::READABLE)
                .map_err(Error::io("registering the RESP listener"))?;
            let mut facts = Facts::new(
                l.local_addr()
                    .map_err(Error::io("reading the RESP listening address"))?,
                client_auth.users.clone(),
                client_limits.max_clients,
            );
            facts.max_value_bytes = chord.max_value_bytes;
            facts.query_buffer_bytes = client_limits.query_buffer_bytes;
            facts.idle_timeout_secs = client_limits.idle_timeout_ms / 1000;
            resp_facts = Some(facts);
        }
        let control = Arc::new(Control {
            waker: Waker::new(poll.registry(), WAKER).map_err(Error::io("creating the waker"))?,
            wake_pending: AtomicBool::new(false),
            leave: AtomicBool::new(false),
            kill: AtomicBool::new(false),
        });
        let signals = if handle_signals {
            let mut signals =
                Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(Error::io("installing signal handlers"))?;
            poll.registry()
                .register(&mut signals, SIGNALS, Interest::READABLE)
                .map_err(Error::io("registering the signal handlers"))?;
            Some(signals)
        } else {
            None
        };
        let pool = if stores[0].is_blocking() {
            let c = Arc::clone(&control);
            // The loop's own Redis connection only without replicas. Measured (8 nodes over 3
            // redis-servers, 2 cores, bench/compare-redis.sh with BINS, interleaved): without
            // replicas it takes 10-15% off the CPU per request; with 2 replicas, whose loops
            // also carry every write's replication, requests/s fell to 0.5-0.7 of the
            // pipeline worker's, which reads Redis' replies while the loop works.
            let pipe = (chord.replicas == 0).then_some(STORE_PIPE);
            let pool = StorePool::start(
                stores.clone(),
                store_batch,
                store_threads,
                Arc::new(move || c.wake()),
                pipe,
            )
            .map_err(Error::io("starting store worker threads"))?;
            Some(pool)
        } else {
            None
        };

        let clock = Clock::new();
        let now = clock.now();
        let connect_timeout_ms = chord.rpc_timeout_ms.max(MIN_CONNECT_TIMEOUT_MS);
        // Each start of the process is a new incarnation: its wall-clock start time.
        if chord.incarnation == 0 {
            chord.incarnation = now;
        }
        // A store that kept an earlier run's data still holds what this node acknowledged.
        chord.store_kept_copies = stores.iter().all(|s| s.kept_data());
        let mut node = Host::new(addr, &ids, chord, now);
        if pool.is_none() {
            // Stores in memory answer at once: the host runs their ops itself (`inline_stores`
            // in the core), prefetched a pipeline at a time, without a round trip through the
            // loop for each.
            node.run_stores_inline(stores.clone());
        }
        // A turn's replica writes go to each replica as one batch (`settle` ends the turn).
        node.hold_replica_writes();
        let ring = match join.as_slice() {
            [] => "new ring".to_string(),
            [via] => format!("joining {via}"),
            [via, others @ ..] => format!(
                "joining {via} (or {})",
                others
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let store = stores[0].name();
        if ids.len() == 1 {
            info!(store = %store, ring = ring.as_str(), "listening");
        } else {
            let positions = ids.iter().map(|i| i.short(8)).collect::<Vec<_>>().join(" ");
            info!(store = %store, ring = ring.as_str(), ids = %positions, "listening with {} vnodes", ids.len());
        }
        if let Some(facts) = &resp_facts {
            info!(resp = %facts.resp_addr, "Redis protocol (RESP) listening");
        }
        if let Some(m) = &metrics {
            info!(metrics = %format_args!("http://{}/metrics", m.addr), "metrics listening");
        }
        if let Some(keyring) = &peer_security.keyring {
            let peer_operations = if peer_security.verify_incoming {
                "only from peers that hold a key"
            } else {
                "from anyone (keyring-verify-incoming off)"
            };
            info!(
                sending_with = %keyring.primary().id_hex(),
                peer_operations = %peer_operations,
                "keyring of {} key(s)",
                keyring.keys().len()
            );
        }
        if tls.is_some() && peer_security.keyring.is_none() {
            warn!(
                "TLS for clients without --keyring: the binary port also serves plain \
                 connections, since only the ring's key tells a peer from a client"
            );
        }
        if advertise.is_none() && local.ip().is_unspecified() {
            warn!(
                "listening on an unspecified address without an advertised one; peers cannot \
                 reach this node by {}",
                me.addr
            );
        }
        match join.split_first() {
            Some((&via, others)) => {
                node.join(now, via);
                node.add_join_peers(others);
            }
            None => node.create(now),
        }
        let last_phase = node.phase();
        let resp_reachable_from_outside = resp_facts
            .as_ref()
            .is_some_and(|f| !f.resp_addr.ip().is_loopback());

        Ok(Server {
            poll,
            listener,
            resp_listener,
            resp_facts,
            signals,
            control,
            clock,
            polled_at: Instant::now(),
            replied_at: None,
            node,
            me,
            stores,
            pool,
            store_errors: StoreErrorLog::default(),
            conns: ConnTable::default(),
            peers: TokenMap::default(),
            connecting: Vec::new(),
            connect_timeout_ms,
            down: HashSet::new(),
            redial: Redial::default(),
            to_flush: Vec::new(),
            held_flush: Vec::new(),
            read_again: Vec::new(),
            scratch: vec![0u8; READ_CHUNK_BYTES].into_boxed_slice(),
            accept_retry_at: None,
            last_accept_error_log: 0,
            last_phase,
            leave_deadline: None,
            leave_report: None,
            exit_deadline: None,
            stop: false,
            security: peer_security,
            repeats: RepeatLimiter::default(),
            span,
            limits: client_limits,
            clients: 0,
            last_idle_sweep: now,
            auth: client_auth,
            tls,
            reachable_from_outside: !local.ip().is_loopback(),
            resp_reachable_from_outside,
            metrics,
            latency: Histogram::default(),
            elapsed: Elapsed::default(),
        })
    }

    pub fn me(&self) -> NodeRef {
        self.me
    }

    /// The address the RESP listener is bound to, with `--resp`.
    pub fn resp_addr(&self) -> Option<SocketAddr> {
        self.resp_facts.as_ref().map(|f| f.resp_addr)
    }

    pub fn control(&self) -> Arc<Control> {
        Arc::clone(&self.control)
    }

    /// Runs until the node has left (or a second signal, or a kill).
    pub fn run(mut self) -> crate::Result<()> {
        // Entered once: every event of the loop carries the node's fields, at no cost per turn.
        let _entered = self.span.clone().entered();
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let now = self.clock.now();
        self.settle(now);
        loop {
            let again = std::mem::take(&mut self.read_again);
            // Store ops the pipe holds for one more turn: look for more input without waiting
            // (they go with it), and send them before sleeping (see `RedisPipe::holding`).
            let holding = self.pool.as_ref().is_some_and(StorePool::holding);
            // So does peer output held for one more turn (see `flush_queued`).
            let timeout = if again.is_empty() && !holding && self.held_flush.is_empty() {
                self.poll_timeout(self.clock.now())
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    self.read_again = again;
                    continue;
                }
                return Err(Error::io("waiting for events")(e));
            }
            self.polled_at = Instant::now();
            self.replied_at = None;
            let now = self.clock.millis_at(self.polled_at);
            if let Some(facts) = &self.resp_facts {
                // Read once per turn of the loop, as Redis caches its time per event-loop cycle
                // (server.ustime): TIME, CLIENT LIST's ages and INFO are that fresh.
                facts.unix_micros.set(unix_micros());
            }
            if holding && events.is_empty() && again.is_empty() {
                if let Some(pool) = &mut self.pool {
                    pool.flush_held(self.poll.registry(), now);
                }
            }
            if !self.held_flush.is_empty() && events.is_empty() && again.is_empty() {
                // Nothing came while peer output was held: it goes now.
                self.release_held();
                self.flush_queued(now, false);
            }

            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now, false),
                    RESP_LISTENER => self.accept(now, true),
                    WAKER => self.control.wake_pending.store(false, Ordering::SeqCst),
                    STORE_PIPE => {
                        if let Some(pool) = &mut self.pool {
                            pool.on_pipe_event(self.poll.registry(), event, now);
                        }
                    }
                    SIGNALS => self.on_signals(now),
                    token => self.on_conn_event(now, token, event),
                }
                self.pump(now);
            }
            for token in again {
                self.read(now, token, false);
                self.pump(now);
            }
            self.store_errors.flush(now);
            if self.accept_retry_at.is_some_and(|t| now >= t) {
                self.accept_retry_at = None;
                self.accept(now, false);
                self.accept(now, true);
            }
            if let Some(pool) = &mut self.pool {
                pool.tick(self.poll.registry(), now);
            }
            self.drain_store(now);
            if self.control.kill.load(Ordering::SeqCst) {
                return Ok(());
            }
            if self.control.leave.swap(false, Ordering::SeqCst) {
                self.begin_leave(now, "leave requested");
            }
            self.expire_connects(now);
            self.redial_due(now);
            self.close_idle_clients(now);
            self.publish_metrics(now);
            self.node.tick(now);
            self.settle(now);
            self.note_phase();
            self.report_leave(now);

            if self.stop {
                warn!("second signal: exiting without finishing the leave");
                return Ok(());
            }
            if let Some(deadline) = self.exit_deadline {
                if now >= deadline || self.conns.values().all(|c| c.pending_output() == 0) {
                    return Ok(());
                }
            } else if self.leave_deadline.is_some_and(|d| now >= d) {
                warn!("the leave did not finish in time; exiting");
                return Ok(());
            }
        }
    }

    /// How long `poll` may sleep: until the core's next deadline or one of the loop's own.
    fn poll_timeout(&mut self, now: Millis) -> Duration {
        let mut deadline = self.node.next_deadline();
        for token in &self.connecting {
            if let Some(Conn {
                role: Role::Outbound { connect_deadline, .. },
                ..
            }) = self.conns.get(token)
            {
                deadline = deadline.min(*connect_deadline);
            }
        }
        let store = self.pool.as_ref().and_then(|p| p.next_deadline());
        for d in [
            self.redial.next_due(),
            self.leave_deadline,
            self.exit_deadline,
            self.accept_retry_at,
            store,
        ]
        .into_iter()
        .flatten()
        {
            deadline = deadline.min(d);
        }
        // At least 1 ms: the clock has millisecond resolution, so a deadline still due right
        // after `tick` is one the core has chosen not to advance; waking again within the same
        // millisecond would only spin.
        Duration::from_millis(deadline.saturating_sub(now).clamp(1, MAX_POLL_WAIT_MS))
    }

    // ---- the core's outputs -------------------------------------------------------------------

    /// Carries out everything the node has asked for, until it asks for nothing more.
    fn pump(&mut self, now: Millis) {
        while let Some(out) = self.node.poll_output() {
            match out {
                Output::Send { to, frame } => self.send(now, to.host, frame),
                Output::Reply { to, frame } => self.reply(now, to, frame),
                Output::Store { id, vnode, op } => match &mut self.pool {
                    Some(pool) => pool.submit(id, vnode, op),
                    // Not reached: without a pool the host runs the stores itself
                    // (`Host::run_stores_inline`).
                    None => {
                        let result = store::execute(&*self.stores[usize::from(vnode)], op);
                        self.node.store_done(now, id, result);
                    }
                },
                Output::Left => self.on_left(now),
            }
        }
    }

    /// Pumps and flushes until neither has anything left: closing a peer connection on a
    /// write error tells the core, which may answer with more output.
    fn settle(&mut self, now: Millis) {
        self.release_held();
        loop {
            // The turn's input is handled: the replica writes it made go out, one batch per
            // replica (a store op the pump runs, or a peer closed on a write error, may make
            // more).
            let held = self.node.end_turn(now);
            self.pump(now);
            if self.to_flush.is_empty() && !held {
                break;
            }
            self.flush_queued(now, true);
        }
        // The store ops of this turn of the loop go to the workers together: one job, a
        // worker woken once, gets and puts in one round trip.
        if let Some(pool) = &mut self.pool {
            pool.flush(self.poll.registry(), now);
        }
    }

    fn send(&mut self, now: Millis, to: SocketAddr, frame: Frame) {
        let token = match self.peers.get(&to) {
            Some(&token) => token,
            // Its last connection failed and its backoff has not ended: the message waits
            // for the next dial (or fails now when too many wait).
            None if self.redial.waiting(now, to) => {
                if let Err(frame) = self.redial.hold(to, frame) {
                    self.node.send_failed(now, frame.request_id);
                }
                return;
            }
            None => match self.connect(now, to) {
                Ok(token) => token,
                Err(e) => {
                    self.redial.failed(now, to);
                    return self.peer_failed(now, to, Why::Io(&e));
                }
            },
        };
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if let Err(e) = conn.push_frame(&frame) {
            // The core built a frame over the protocol's limits: the request fails here, and
            // the peer is not to blame for it.
            warn!(peer = %to, error = %e, "cannot encode {}", frame.message.name());
            self.node.send_failed(now, frame.request_id);
            return;
        }
        if let Role::Outbound { awaiting, .. } = &mut conn.role {
            *awaiting += 1;
        }
        self.queue_flush(now, token);
    }

    fn reply(&mut self, now: Millis, to: ReplyTo, mut frame: Frame) {
        if let Some(m) = &mut self.metrics {
            if to.0 == METRICS_STATS.0 as u64 {
                return m.stats_answered(frame);
            }
        }
        if let Message::Stats { counters } = &mut frame.message {
            // What only the loop measures joins the core's counters.
            counters.extend(self.latency.stat_counters());
        }
        let token = Token(to.0 as usize);
        let mut conn = self.conns.get_mut(&token);
        let timed = conn
            .as_mut()
            .and_then(|c| c.started.finish(frame.request_id))
            .map(|(at, op)| {
                let replied_at = *self.replied_at.get_or_insert_with(Instant::now);
                (self.elapsed.between(at, replied_at), op)
            });
        if let Some((t, true)) = timed {
            self.latency.observe_timed(t);
        }
        if let Some(m) = &mut self.metrics {
            m.recorder.finish(to.0, &frame, timed.map(|(t, _)| t.elapsed));
        }
        // The connection may be gone (the client hung up): the reply is dropped.
        let Some(conn) = conn else {
            return;
        };
        if let Some((session, _, wbuf, _)) = conn.resp_parts() {
            session.on_reply(frame, wbuf);
            // One map lookup per reply: this is the RESP hot path.
            let after = resp_after_output(conn, token, &mut self.read_again, &mut self.to_flush);
            return self.resp_finish(now, token, after);
        }
        if conn.requests_in_flight == MAX_CLIENT_REQUESTS_IN_FLIGHT {
            // It stopped at its cap: its next requests may be read now.
            self.read_again.push(token);
        }
        conn.requests_in_flight = conn.requests_in_flight.saturating_sub(1);
        if let Err(e) = conn.push_frame(&frame) {
            // Answer anyway, so the requester is not left waiting.
            let text = format!("reply {} could not be encoded: {e}", frame.message.name());
            let error = Message::Error {
                code: ErrorCode::Internal,
                hops: 0,
                text,
            };
            let _ = conn.push_frame(&Frame::new(frame.request_id, error));
        }
        self.queue_flush(now, token);
    }

    /// Notes that `token` has output to flush at the end of the turn; closes it if its peer
    /// has stopped reading.
    fn queue_flush(&mut self, now: Millis, token: Token) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if conn.pending_output() > MAX_WRITE_BUFFER_BYTES {
            let _ = conn.flush();
            if conn.pending_output() > MAX_WRITE_BUFFER_BYTES {
                let why = format!("over {MAX_WRITE_BUFFER_BYTES} bytes queued and not read");
                return self.close(now, token, Why::Text(&why));
            }
        }
        if !conn.flush_queued {
            conn.flush_queued = true;
            self.to_flush.push(token);
        }
    }

    /// Peer output held in the last turn goes with this turn's (see [`Server::flush_queued`]).
    fn release_held(&mut self) {
        for token in std::mem::take(&mut self.held_flush) {
            if let Some(conn) = self.conns.get_mut(&token) {
                // Still `flush_queued` (so nothing queued it again): `flush_held` makes it go.
                conn.flush_queued = true;
                self.to_flush.push(token);
            }
        }
    }

    /// Writes the output queued on the connections of `to_flush`.
    ///
    /// With `hold`, the output of an outbound peer connection (requests this node forwards,
    /// replica writes, its own RPCs) waits for the next turn of the loop, once, unless
    /// [`HOLD_FLUSH_BYTES`] are queued: the loop polls again without sleeping, handles what
    /// came in meanwhile, and sends both turns' messages together, or sends them before it
    /// sleeps if nothing came. As twemproxy writes to a server when `epoll` next reports it
    /// writable, a peer then reads more requests per read and wakes less often. Measured with
    /// 8 nodes (memory store, --replicas 0) and redis-benchmark -c 50 -r 100000 on node 0,
    /// interleaved with the build before and twemproxy over 3 redis-servers (medians of 4
    /// runs; CPU of all 8 nodes, or of twemproxy and its servers): at -P 1 GET 52.8k to 61.4k
    /// requests/s, 19.4 to 16.5 us a request, 0.64 to 0.45 context switches (twemproxy 54.1k,
    /// 19.1 us), SET 52.0k to 55.8k, 20.2 to 18.6 us (twemproxy 49.8k, 19.6 us); at -P 16
    /// (3 runs) SET 257k to 283k, 4.6 to 4.3 us, GET unchanged (336k, 332k).
    /// Client replies are never held: a client waits for each.
    fn flush_queued(&mut self, now: Millis, hold: bool) {
        let mut tokens = std::mem::take(&mut self.to_flush);
        for &token in &tokens {
            let Some(conn) = self.conns.get_mut(&token) else {
                continue;
            };
            if hold && !conn.flush_held && conn.is_outbound() && conn.pending_output() < HOLD_FLUSH_BYTES {
                conn.flush_held = true;
                self.held_flush.push(token);
                continue;
            }
            conn.flush_held = false;
            conn.flush_queued = false;
            let result = conn
                .flush()
                .and_then(|()| conn.update_interest(self.poll.registry(), token));
            if let Err(e) = result {
                self.close(now, token, Why::Io(&e));
                continue;
            }
            self.resume_if_drained(token);
        }
        tokens.clear();
        if self.to_flush.is_empty() {
            self.to_flush = tokens; // keep the allocation
        }
    }

    fn drain_store(&mut self, now: Millis) {
        while let Some((id, vnode, result)) = self.pool.as_mut().and_then(|p| p.try_complete()) {
            let lost = matches!(result, Err(store::StoreError::Lost(_)));
            if let (Err(e), false) = (&result, lost) {
                self.store_errors.failed(now, e);
            }
            if lost {
                // The store ops the core asked for before it hears of the loss (after earlier
                // results of this drain) go to the store now, stamped with the losses handled
                // so far, so that their answers from the emptied store are refused.
                self.pump(now);
            }
            self.node.store_done(now, id, result);
            if let (true, Some(pool)) = (lost, &mut self.pool) {
                // The core no longer trusts the store's contents (it refills them or refuses
                // to answer from them): later results may come from the emptied store.
                pool.losses_handled(vnode);
                let vnode = &self.node.vnodes()[usize::from(vnode)];
                let vnode_id = vnode.me().id;
                if vnode.config().replicas > 0 {
                    warn!(vnode_id = %vnode_id.short(8), "the store lost its data; refilling from the other copies");
                } else {
                    warn!(
                        vnode_id = %vnode_id.short(8),
                        "the store lost its data; with --replicas 0 there is no other copy to refill from: its keys are gone"
                    );
                }
            }
        }
    }

    // ---- connections ----------------------------------------------------------------------

    /// A token for a new connection; `None` when the table is full (see `conn_table.rs`).
    fn new_token(&mut self) -> Option<Token> {
        self.conns.next_token()
    }

    /// Accepts on the frame listener, or on the RESP one (`resp`).
    fn accept(&mut self, now: Millis, resp: bool) {
        loop {
            let listener = match (resp, &self.resp_listener) {
                (false, _) => &self.listener,
                (true, Some(l)) => l,
                (true, None) => return,
            };
            match listener.accept() {
                Ok((mut stream, from)) => {
                    // Requests and replies are small and latency-bound.
                    let _ = stream.set_nodelay(true);
                    if resp && self.clients >= self.limits.max_clients {
                        // Redis' words; the socket is new and empty, so the write goes out.
                        use std::io::Write;
                        let _ = stream.write_all(b"-ERR max number of clients reached\r\n");
                        let max = self.limits.max_clients;
                        let what = format_args!("refused a client: max number of clients reached ({max})");
                        self.warn_repeated(now, Repeat::ClientLimit, from, what);
                        continue;
                    }
                    let denied = resp && protected_from(&self.auth, self.resp_reachable_from_outside, from);
                    if denied {
                        let what = format_args!("refused a client: protected mode");
                        self.warn_repeated(now, Repeat::ClientLimit, from, what);
                    }
                    let Some(token) = self.new_token() else {
                        // Dropped: the peer sees the connection closed.
                        let what = format_args!(
                            "refused a connection: {} connections open, the most this process holds",
                            conn_table::MAX_OPEN
                        );
                        self.warn_repeated(now, Repeat::ClientLimit, from, what);
                        continue;
                    };
                    if let Err(e) = self
                        .poll
                        .registry()
                        .register(&mut stream, token, Interest::READABLE)
                    {
                        warn!(peer = %from, error = %e, "cannot register a connection");
                        continue;
                    }
                    let mut conn = Conn::new(stream, Role::Inbound { from }, false);
                    conn.last_active = now;
                    if resp {
                        let mut session = Box::new(RespSession::new(token.0 as u64, from));
                        if denied {
                            session.deny(PROTECTED_MODE);
                        }
                        conn.resp = Some(session);
                        if let Some(config) = &self.tls {
                            if let Err(e) = conn.start_tls(config) {
                                warn!(peer = %from, error = %e, "cannot start TLS");
                                continue;
                            }
                        }
                        conn.kind = Kind::Client;
                        self.clients += 1;
                        if let Some(f) = &self.resp_facts {
                            f.connections_received.set(f.connections_received.get() + 1);
                            f.client_rows.borrow_mut().insert(
                                token.0 as u64,
                                ClientRow {
                                    addr: from,
                                    since_micros: unix_micros(),
                                    name: None,
                                    proto: Default::default(),
                                },
                            );
                        }
                    } else if self.security.keyring.is_some() || self.tls.is_some() {
                        conn.security = Security::Undecided;
                    }
                    debug!(peer = %from, resp, "connection accepted");
                    self.conns.insert(token, conn);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // Out of descriptors or memory: try again shortly, log at most once a second.
                    if now >= self.last_accept_error_log + 1_000 {
                        self.last_accept_error_log = now;
                        warn!(error = %e, "cannot accept connections");
                    }
                    self.accept_retry_at = Some(now + ACCEPT_RETRY_MS);
                    return;
                }
            }
        }
    }

    /// Opens the connection to a peer; frames queue on it until the connect completes.
    fn connect(&mut self, now: Millis, to: SocketAddr) -> io::Result<Token> {
        let mut stream = TcpStream::connect(to)?;
        let _ = stream.set_nodelay(true);
        let token = self.new_token().ok_or_else(|| {
            io::Error::other(format!(
                "{} connections open, the most this process holds",
                conn_table::MAX_OPEN
            ))
        })?;
        self.poll
            .registry()
            .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        let role = Role::Outbound {
            peer: to,
            connected: false,
            connect_deadline: now + self.connect_timeout_ms,
            awaiting: 0,
            reached: false,
        };
        let mut conn = Conn::new(stream, role, true);
        conn.kind = Kind::Peer;
        if let (Some(keyring), true) = (&self.security.keyring, self.security.verify_outgoing) {
            conn.start_handshake(keyring)
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        self.conns.insert(token, conn);
        self.peers.insert(to, token);
        self.connecting.push(token);
        Ok(token)
    }

    /// Dials the peers whose backoff ended with messages held for them (see [`Redial`]).
    fn redial_due(&mut self, now: Millis) {
        self.redial.prune(now);
        for (peer, frames) in self.redial.due(now) {
            for frame in frames {
                if !self.peers.contains_key(&peer) && self.redial.waiting(now, peer) {
                    // The dial failed at once: the core heard of it, these fail with it.
                    self.node.send_failed(now, frame.request_id);
                } else {
                    self.send(now, peer, frame);
                }
            }
        }
    }

    fn expire_connects(&mut self, now: Millis) {
        let mut i = 0;
        while i < self.connecting.len() {
            let token = self.connecting[i];
            let expired = match self.conns.get(&token) {
                Some(Conn {
                    role:
                        Role::Outbound {
                            connected: false,
                            connect_deadline,
                            ..
                        },
                    ..
                }) => {
                    if now < *connect_deadline {
                        i += 1;
                        continue;
                    }
                    true
                }
                _ => false, // connected or closed: no longer watched
            };
            self.connecting.swap_remove(i);
            if expired {
                self.close(now, token, Why::Text("connect timed out"));
            }
        }
    }

    fn on_conn_event(&mut self, now: Millis, token: Token, event: &Event) {
        // Sporadic events for connections already closed are ignored.
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let mut writable = event.is_writable();
        if !conn.is_connected() {
            match conn.finish_connect() {
                Ok(false) => return,
                Ok(true) => {
                    conn.set_connected();
                    writable = true;
                    // A peer is reached once it answers (plain: a reply other than a refusal;
                    // with the handshake, once it has proved the key), not when TCP connects:
                    // a ring that refuses us accepts the connection first, and each retry
                    // would log the peer "reachable again".
                }
                Err(e) => return self.close(now, token, Why::Io(&e)),
            }
        }
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if writable {
            let result = conn
                .flush()
                .and_then(|()| conn.update_interest(self.poll.registry(), token));
            if let Err(e) = result {
                return self.close(now, token, Why::Io(&e));
            }
            self.resume_if_drained(token);
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            self.read(now, token, event.is_read_closed() || event.is_error());
        }
    }

    /// Reads what a connection has and hands every whole frame to the core.
    ///
    /// An inbound connection whose replies pile up (over [`OUTPUT_HIGH_WATER_BYTES`]) is
    /// paused: its requests stay unread, buffered or in the socket, until a flush brings the
    /// replies under [`OUTPUT_LOW_WATER_BYTES`] (see `resume_if_drained`). The core is pumped
    /// after every frame, or every [`PUMP_BATCH`] frames while no value can make a batch's
    /// replies large ([`Server::batch_limit`]), so the replies it produces at once count
    /// towards the mark.
    ///
    /// A client's buffered commands (RESP) or frames (binary) run before more is read, and a
    /// client they bring to its in-flight cap is not read: its input waits in the socket.
    /// Reading first would add a read budget to its buffer each time a reply freed a place,
    /// until the query buffer limit closed a client that only pipelines.
    fn read(&mut self, now: Millis, token: Token, maybe_closed: bool) {
        if self
            .conns
            .get(&token)
            .is_some_and(|c| c.resp.is_some() && c.buffered_input() > 0)
            && !self.run_resp_commands(now, token)
        {
            return;
        }
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let inbound = matches!(conn.role, Role::Inbound { .. });
        let mut status = ReadStatus::Drained;
        // Frames left over at the cap (or the output mark) go to the core first; the socket is
        // read on the next turn (a close is still read at once).
        let frames_first =
            !maybe_closed && conn.kind == Kind::Client && conn.resp.is_none() && conn.has_whole_frame();
        if frames_first {
            status = ReadStatus::MoreAvailable;
        }
        let blocked = conn.resp.as_ref().is_some_and(|s| s.is_blocked())
            || conn.requests_in_flight >= MAX_CLIENT_REQUESTS_IN_FLIGHT
            || frames_first;
        if !(blocked || inbound && conn.output_backlog() >= OUTPUT_HIGH_WATER_BYTES) {
            let before = conn.buffered_input();
            status = match conn.read_available(&mut self.scratch, READ_BUDGET_BYTES, maybe_closed) {
                Ok(status) => status,
                Err(e) => return self.close(now, token, Why::Io(&e)),
            };
            if conn.buffered_input() > before {
                conn.last_active = now;
            }
            if conn.kind != Kind::Peer && conn.buffered_input() > self.limits.query_buffer_bytes {
                let why = format!(
                    "query buffer of {} bytes over the limit of {} (client-query-buffer-limit)",
                    conn.buffered_input(),
                    self.limits.query_buffer_bytes
                );
                self.warn_repeated_on(
                    now,
                    Repeat::ClientLimit,
                    token,
                    format_args!("closing a client: {why}"),
                );
                return self.close(now, token, Why::Text(&why));
            }
        }
        let was_authenticated = conn.is_authenticated();
        let ctx = Accepting {
            keyring: self.security.keyring.as_ref(),
            tls: self.tls.as_ref(),
        };
        if let Err(e) = conn.advance_security(&ctx) {
            // Whatever was answered (a refusal) goes out before the close.
            let _ = conn.flush();
            let why = format!("handshake failed: {e}");
            self.warn_repeated_on(now, Repeat::Handshake, token, format_args!("{why}"));
            return self.close(now, token, Why::Text(&why));
        }
        if !was_authenticated && conn.is_authenticated() {
            if let Role::Outbound { peer, reached, .. } = &mut conn.role {
                *reached = true;
                let peer = *peer;
                self.note_reachable(peer);
            }
        }
        if self.conns.get(&token).is_some_and(|c| c.pending_output() > 0) {
            self.queue_flush(now, token);
        }
        let (mut unpumped, mut limit) = (0, None);
        loop {
            let Some(conn) = self.conns.get_mut(&token) else {
                return;
            };
            if inbound && conn.output_backlog() >= OUTPUT_HIGH_WATER_BYTES {
                // Whatever `status` said is found again by the read after resuming.
                conn.read_paused = true;
                return;
            }
            if conn.requests_in_flight >= MAX_CLIENT_REQUESTS_IN_FLIGHT {
                // A binary client at its cap: the rest waits (read again once a reply goes).
                return;
            }
            if conn.resp.is_some() {
                if !self.run_resp_commands(now, token) {
                    return;
                }
                break;
            }
            if conn.is_undecided() {
                break; // the first bytes have not yet said whether a peer or a client is here
            }
            let before = conn.buffered_input();
            let frame = match conn.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    let why = if conn.input_starts_handshake() {
                        "protocol error: a node with a keyring opened a keyed connection, but this node \
                         runs without one (start it with the ring's --keyring)"
                            .to_string()
                    } else {
                        format!("protocol error: {e}")
                    };
                    self.warn_repeated_on(now, Repeat::MalformedFrame, token, format_args!("{why}"));
                    return self.close(now, token, Why::Text(&why));
                }
            };
            match &mut conn.role {
                Role::Inbound { .. } => {
                    if frame.message.is_reply() {
                        let why = format!("protocol error: unexpected reply {}", frame.message.name());
                        self.warn_repeated_on(now, Repeat::MalformedFrame, token, format_args!("{why}"));
                        return self.close(now, token, Why::Text(&why));
                    }
                    match self.admit(now, token, &frame) {
                        Admit::Serve => {}
                        Admit::Answered => continue,
                        Admit::Closed => return,
                    }
                    let Some(conn) = self.conns.get_mut(&token) else {
                        return;
                    };
                    if conn.kind == Kind::Client {
                        conn.requests_in_flight += 1;
                        let op = frame.message.is_client_op();
                        conn.started.start(frame.request_id, op, self.polled_at);
                        if let Some(m) = &mut self.metrics {
                            m.recorder.start(token.0 as u64, &frame, now);
                        }
                    }
                    self.node.handle_request(now, ReplyTo(token.0 as u64), frame);
                }
                Role::Outbound {
                    peer,
                    awaiting,
                    reached,
                    ..
                } => {
                    if !frame.message.is_reply() {
                        let why = format!("protocol error: unexpected request {}", frame.message.name());
                        self.warn_repeated_on(now, Repeat::MalformedFrame, token, format_args!("{why}"));
                        return self.close(now, token, Why::Text(&why));
                    }
                    *awaiting = awaiting.saturating_sub(1);
                    let (peer, drained) = (*peer, *awaiting == 0);
                    if let Message::Error {
                        code: ErrorCode::Unauthorized,
                        text,
                        ..
                    } = &frame.message
                    {
                        let what = format_args!("refused by the peer: {text}");
                        self.warn_repeated_on(now, Repeat::RefusedByPeer, token, what);
                    } else if !*reached || !self.down.is_empty() {
                        // (Also later: an older connection to the peer may have failed since.)
                        *reached = true;
                        self.note_reachable(peer);
                    }
                    let Some(conn) = self.conns.get_mut(&token) else {
                        return;
                    };
                    let retiring = conn.retiring;
                    let retired = drained && retiring;
                    self.node.handle_reply(now, peer, frame);
                    if retired {
                        // Replaced by a connection with the keyring's first key; nothing is
                        // outstanding on it, so closing it tells the core nothing.
                        self.pump(now);
                        return self.close(now, token, Why::Text("retired after a key rotation"));
                    }
                }
            }
            // Frames enter the core in batches (the loop pumps after every event as well,
            // so a return above leaves nothing unpumped for long).
            self.pump_every_batch(now, token, before, &mut unpumped, &mut limit);
        }
        if unpumped > 0 {
            self.pump(now);
        }
        match status {
            ReadStatus::Drained => {}
            ReadStatus::MoreAvailable => self.read_again.push(token),
            ReadStatus::Closed => {
                // Answer what was answered at once before closing (a client may have shut
                // down its sending side and still be reading).
                if let Some(conn) = self.conns.get_mut(&token) {
                    let _ = conn.flush();
                }
                self.close(now, token, Why::Text("closed by the peer"));
            }
        }
    }

    /// Runs the RESP commands buffered on `token` until none can run now; false when the
    /// connection is gone or paused (its replies over [`OUTPUT_HIGH_WATER_BYTES`]).
    fn run_resp_commands(&mut self, now: Millis, token: Token) -> bool {
        // Up to PUMP_BATCH commands enter the core before their outputs are pumped (the store
        // ops among them are prefetched together). A session that stops to wait for replies is
        // read again once they came (`resp_after_output`).
        let (mut unpumped, mut limit) = (0, None);
        let live = loop {
            let Some(conn) = self.conns.get_mut(&token) else {
                break false;
            };
            if conn.output_backlog() >= OUTPUT_HIGH_WATER_BYTES {
                conn.read_paused = true;
                break false;
            }
            let before = conn.buffered_input();
            if !self.resp_step(now, token) {
                break true;
            }
            self.pump_every_batch(now, token, before, &mut unpumped, &mut limit);
        };
        // The answers given on the spot (and the core's, of the pumps above) are in the
        // connection's output: queue its flush, or close it after QUIT or a protocol error,
        // once for the batch rather than after each command (a closing session reads no
        // command after the one that closes it).
        if let Some(conn) = self.conns.get_mut(&token) {
            let after = resp_after_output(conn, token, &mut self.read_again, &mut self.to_flush);
            self.resp_finish(now, token, after);
        }
        if unpumped > 0 {
            self.pump(now);
        }
        live && self.conns.contains_key(&token)
    }

    /// How many requests of a connection may wait for one pump: [`PUMP_BATCH`] when the
    /// loop runs the stores itself and every value they hold is small (`values_all_small`),
    /// else 1. The replies of a batch are counted against the connection's output marks only
    /// after it, so a batch must not be able to read more than a few MiB of values.
    fn batch_limit(&self) -> usize {
        if self.pool.is_none() && self.stores.iter().all(|s| s.values_all_small()) {
            PUMP_BATCH
        } else {
            1
        }
    }

    /// Counts one more request of connection `token` handed to the core, read from its input
    /// of `before` bytes; pumps once `limit` of them wait (the [`Server::batch_limit`] when the
    /// batch began, taken when first needed: not for a lone request, which the caller pumps
    /// when it finds no more input), or at once after a request of more than
    /// [`SMALL_VALUE_BYTES`] (it may write a value the rest of the batch would read back: the
    /// limit is then taken again). The caller pumps what is left when it stops.
    fn pump_every_batch(
        &mut self,
        now: Millis,
        token: Token,
        before: usize,
        unpumped: &mut usize,
        limit: &mut Option<usize>,
    ) {
        let buffered = self.conns.get(&token).map_or(0, |c| c.buffered_input());
        let input = before.saturating_sub(buffered);
        *unpumped += 1;
        if input > SMALL_VALUE_BYTES
            || buffered > 0 && *unpumped >= *limit.get_or_insert_with(|| self.batch_limit())
        {
            self.pump(now);
            *unpumped = 0;
            *limit = None;
        }
    }

    /// Runs the next RESP command buffered on `token` (see [`super::resp`]); false when there
    /// is none to run now.
    fn resp_step(&mut self, now: Millis, token: Token) -> bool {
        let polled_at = self.polled_at;
        let (Some(conn), Some(facts)) = (self.conns.get_mut(&token), &self.resp_facts) else {
            return false;
        };
        let Some((session, rbuf, wbuf, started)) = conn.resp_parts() else {
            return false;
        };
        let step = session.next_command(rbuf, wbuf, facts);
        if step == Step::Command {
            facts.commands_processed.set(facts.commands_processed.get() + 1);
        }
        // Translated, now applied: the command's requests enter the core as a binary client's
        // frames do, with this connection as their reply address. Answers given on the spot
        // are in `wbuf` already; the core's come back through `reply` while pumping.
        let (node, to) = (&mut self.node, ReplyTo(token.0 as u64));
        let mut recorder = self.metrics.as_mut().map(|m| &mut m.recorder);
        session.apply_requests(|frame| {
            started.start(frame.request_id, frame.message.is_client_op(), polled_at);
            if let Some(r) = recorder.as_mut() {
                r.start(to.0, &frame, now);
            }
            node.handle_request(now, to, frame)
        });
        // What the answers given on the spot call for (a flush, a close after QUIT) is seen
        // to once the caller has run the batch: `run_resp_commands`.
        // Clients CLIENT KILL named.
        let killed: Vec<u64> = self
            .resp_facts
            .as_ref()
            .map(|f| std::mem::take(&mut *f.to_kill.borrow_mut()))
            .unwrap_or_default();
        for id in killed {
            let victim = Token(id as usize);
            if self.conns.get(&victim).is_some_and(|c| c.resp.is_some()) {
                self.close(now, victim, Why::Text("CLIENT KILL"));
            }
        }
        // The caller pumps (after a batch of commands).
        // The read loop finds out whether the connection is still there.
        step == Step::Command
    }

    /// The rare outcomes of [`resp_after_output`], which need the whole server.
    fn resp_finish(&mut self, now: Millis, token: Token, after: RespAfter) {
        match after {
            RespAfter::Done => {}
            RespAfter::QueueFlush => self.queue_flush(now, token),
            RespAfter::Close => {
                if let Some(conn) = self.conns.get_mut(&token) {
                    let _ = conn.flush();
                }
                self.close(now, token, Why::Text("QUIT or RESP protocol error"));
            }
        }
    }

    /// Reads a paused connection again (next turn) once its replies have drained.
    fn resume_if_drained(&mut self, token: Token) {
        if let Some(conn) = self.conns.get_mut(&token) {
            if conn.read_paused && conn.output_backlog() <= OUTPUT_LOW_WATER_BYTES {
                conn.read_paused = false;
                self.read_again.push(token);
            }
        }
    }

    /// Forgets a connection. Losing a peer connection with requests on it tells the core the
    /// peer is unreachable, so those requests fail now rather than at their deadlines.
    fn close(&mut self, now: Millis, token: Token, why: Why<'_>) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        debug!(peer = %conn.remote(), why = %why, "connection closed");
        if conn.kind == Kind::Client {
            self.clients -= 1;
            if let Some(f) = &self.resp_facts {
                f.client_rows.borrow_mut().remove(&(token.0 as u64));
            }
        }
        if let Role::Outbound {
            peer,
            connected,
            awaiting,
            reached,
            ..
        } = conn.role
        {
            if self.peers.get(&peer) == Some(&token) {
                self.peers.remove(&peer);
            }
            if !reached {
                self.redial.failed(now, peer);
            }
            if awaiting > 0 || conn.pending_output() > 0 || !connected {
                self.peer_failed(now, peer, why);
            }
        }
    }

    /// With `--metrics`, once a second: asks the core for its counters when they are due (answered to
    /// [`METRICS_STATS`]) and publishes what the loop knows; never waits for the metrics
    /// thread.
    fn publish_metrics(&mut self, now: Millis) {
        let Some(m) = &mut self.metrics else { return };
        if !m.due(now) {
            return;
        }
        if m.should_ask_stats(now) {
            let stats = Frame::new(0, Message::GetStats);
            self.node
                .handle_request(now, ReplyTo(METRICS_STATS.0 as u64), stats);
        }
        let peers_inbound = self
            .conns
            .values()
            .filter(|c| c.kind == Kind::Peer && matches!(c.role, Role::Inbound { .. }))
            .count();
        let facts = metrics::LoopFacts {
            clients: self.clients as u64,
            peers_inbound: peers_inbound as u64,
            peers_outbound: self.peers.len() as u64,
            peers_down: self.down.len() as u64,
            // The routing table leaves out the vnode itself.
            ring_nodes_known: (self.node.vnodes().iter())
                .map(|v| v.routing().distinct_nodes() + 1)
                .max()
                .unwrap_or(0) as u64,
            in_ring: u64::from(self.node.in_ring()),
            resp_commands: self.resp_facts.as_ref().map_or(0, |f| f.commands_processed.get()),
        };
        if let Some(m) = &mut self.metrics {
            m.publish(now, facts);
        }
    }

    /// `peer` answered on a connection we opened: it is no longer down, and may be dialled
    /// freely again.
    fn note_reachable(&mut self, peer: SocketAddr) {
        self.redial.reached(peer);
        if self.down.remove(&peer) {
            info!(peer = %peer, "peer reachable again");
        }
    }

    fn peer_failed(&mut self, now: Millis, peer: SocketAddr, why: Why<'_>) {
        if let Some(m) = &mut self.metrics {
            m.recorder.peer_failed(peer);
        }
        if self.down.insert(peer) {
            let what = format_args!("peer unreachable: {why}");
            self.warn_repeated(now, Repeat::PeerUnreachable, peer, what);
        }
        self.node.peer_unreachable(now, peer);
    }

    /// Warns about an event a peer or a stranger at `peer` may repeat at will, through the
    /// limiter: a stranger counts by its host, a peer we connect to by its address.
    fn warn_repeated(&mut self, now: Millis, kind: Repeat, peer: SocketAddr, what: fmt::Arguments<'_>) {
        let subject = match kind {
            Repeat::RefusedByPeer | Repeat::PeerUnreachable => Subject::Addr(peer),
            _ => Subject::inbound(peer),
        };
        if let Some(n) = self.repeats.check(now, kind, subject) {
            let suppressed = suppressed_field(n);
            warn!(kind = %kind.name(), peer = %peer, suppressed, "{what}");
        }
    }

    /// [`Server::warn_repeated`] about the connection `token`, if it is still there.
    fn warn_repeated_on(&mut self, now: Millis, kind: Repeat, token: Token, what: fmt::Arguments<'_>) {
        if let Some(peer) = self.conns.get(&token).map(Conn::remote) {
            self.warn_repeated(now, kind, peer, what);
        }
    }

    // ---- life cycle -----------------------------------------------------------------------

    fn on_signals(&mut self, now: Millis) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        let pending: Vec<i32> = signals.pending().collect();
        for signal in pending {
            if signal == SIGHUP {
                self.reload_keyring(now);
            } else if self.leave_deadline.is_none() && self.exit_deadline.is_none() {
                self.begin_leave(now, "signal received");
            } else {
                self.stop = true;
            }
        }
    }

    fn begin_leave(&mut self, now: Millis, why: &str) {
        if self.leave_deadline.is_some() || self.exit_deadline.is_some() {
            return;
        }
        // The vnodes leave one after the other.
        let vnodes = self.node.vnodes().len() as u64;
        self.leave_deadline =
            Some(now + self.node.first().config().leave_timeout_ms * vnodes + LEAVE_MARGIN_MS);
        // The first other host in any vnode's successor list takes keys over; with none, the
        // host is alone (its vnodes' successors are each other).
        let other = self
            .node
            .vnodes()
            .iter()
            .flat_map(|n| n.successors().iter())
            .find(|s| s.addr.host != self.me.addr.host)
            .map(|s| s.addr);
        let timeout_s = self.node.first().config().leave_timeout_ms / 1000;
        match other {
            None => info!("{why}: leaving the ring (alone, nothing to hand off)"),
            Some(addr) => info!(
                handing_keys_to = %addr,
                "{why}: leaving the ring ({vnodes} vnode(s) hand their ranges over one after \
                 another, each waiting at most {timeout_s} s for its successor to take it; a second \
                 signal exits at once)"
            ),
        }
        self.node.leave(now);
    }

    /// While the host leaves, says which of its vnodes is handing its range over once it has
    /// waited [`LEAVE_REPORT_MS`], and again every [`LEAVE_REPORT_MS`]: a leave that cannot
    /// finish (under `consistent`, a successor that cannot take a range over while a dead
    /// member of its preference list is not forgotten) waits up to `leave_timeout_ms` per
    /// vnode, which would otherwise pass without a word.
    fn report_leave(&mut self, now: Millis) {
        if self.leave_deadline.is_none() || self.exit_deadline.is_some() {
            return;
        }
        let Some(v) = self.node.leaving_vnode() else {
            return;
        };
        match &mut self.leave_report {
            Some((current, since, next)) if *current == v => {
                if now >= *next {
                    *next = now + LEAVE_REPORT_MS;
                    let waited_s = (now - *since) / 1000;
                    let vnodes = self.node.vnodes().len();
                    let timeout_s = self.node.first().config().leave_timeout_ms / 1000;
                    warn!(
                        vnode = v,
                        waited_s,
                        "still leaving: vnode {v} of {vnodes} has waited {waited_s} s for its successor \
                         to take its range over (at most {timeout_s} s; under `consistent` a dead member \
                         not forgotten keeps a range from moving: `chordkv forget`); a second signal \
                         exits at once"
                    );
                }
            }
            _ => self.leave_report = Some((v, now, now + LEAVE_REPORT_MS)),
        }
    }

    fn on_left(&mut self, now: Millis) {
        if self.exit_deadline.is_none() {
            info!("left the ring");
            self.exit_deadline = Some(now + LEFT_FLUSH_MS);
        }
    }

    /// Logs the node's phase changes (joined, active).
    fn note_phase(&mut self) {
        let phase = self.node.phase();
        if phase == self.last_phase {
            return;
        }
        self.last_phase = phase;
        let successor = self.node.first().successor().addr;
        match phase {
            Phase::Joining => info!("joining again"),
            Phase::Joined => info!(successor = %successor, "joined the ring"),
            Phase::Active if self.node.vnodes().len() > 1 => {
                let owned: f64 = self
                    .node
                    .vnodes()
                    .iter()
                    .map(|v| {
                        let (start, end) = v.primary_range();
                        start.distance_to(&end).as_fraction()
                    })
                    .sum();
                info!(
                    vnodes = self.node.vnodes().len(),
                    share = %format_args!("{:.2}%", owned * 100.0),
                    "active: serving its share of the ring"
                )
            }
            Phase::Active => match self.node.first().predecessor() {
                Some(p) => info!(
                    range = %format_args!("({}, {}]", p.id.short(8), self.me.id.short(8)),
                    predecessor = %p.addr,
                    successor = %successor,
                    "active: serving its range"
                ),
                None => info!("active"),
            },
            Phase::Idle | Phase::Leaving | Phase::Left => {}
        }
    }
}

/// What a RESP connection needs after output was added to it.
enum RespAfter {
    Done,
    /// Over [`MAX_WRITE_BUFFER_BYTES`] queued: the full check of `queue_flush`.
    QueueFlush,
    /// QUIT or a protocol error has been answered, with everything before it.
    Close,
}

/// After output to a RESP connection, with the connection already in hand (no second map
/// lookup on the hot path): notes it for the end-of-turn flush, and for another read if its
/// input waited for replies to drain; says when QUIT or a protocol error closes it.
fn resp_after_output(
    conn: &mut Conn,
    token: Token,
    read_again: &mut Vec<Token>,
    to_flush: &mut Vec<Token>,
) -> RespAfter {
    let Some(session) = conn.resp.as_deref_mut() else {
        return RespAfter::Done;
    };
    if session.wants_close() {
        return RespAfter::Close;
    }
    if session.take_unblocked() {
        read_again.push(token);
    }
    let pending = conn.pending_output();
    if pending > MAX_WRITE_BUFFER_BYTES {
        return RespAfter::QueueFlush;
    }
    if pending > 0 && !conn.flush_queued {
        conn.flush_queued = true;
        to_flush.push(token);
    }
    RespAfter::Done
}

pub(crate) fn bind_error(addr: SocketAddr, e: io::Error) -> Error {
    let reason = match e.kind() {
        io::ErrorKind::AddrInUse => "the address is already in use".to_string(),
        io::ErrorKind::AddrNotAvailable => "the address is not available on this host".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    };
    Error::Listen { addr, reason }
}

/// The wall clock in microseconds since the Unix epoch (0 before it), for RESP's TIME and
/// CLIENT LIST's ages.
fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
