//! A blocking client for the chordkv binary protocol over a plain [`TcpStream`], and
//! [`walk_ring`], which follows successor pointers around the ring to check its shape.
//!
//! One [`Client`] is one connection to one node. Requests are sent one at a time: each gets a
//! fresh request id, and replies with any other id (a late answer to a request that timed out)
//! are skipped. The node routes a client operation to the key's owner itself, so any node can
//! be asked for any key; the reply says how many overlay hops that took.
//!
//! ```no_run
//! use std::time::Duration;
//! use chordkv_client::Client;
//!
//! let mut client = Client::connect("127.0.0.1:7000".parse().unwrap(), Duration::from_secs(5))?;
//! // Keys and values are anything that converts into `Bytes`: `&'static str`, `String`,
//! // `Vec<u8>`, `Bytes` (zero-copy); copy a borrowed slice with `Bytes::copy_from_slice`.
//! client.put("colour", "blue")?;
//! assert_eq!(client.get("colour")?.value.as_deref(), Some(&b"blue"[..]));
//! # Ok::<(), chordkv_client::ClientError>(())
//! ```
//!
//! Errors say what a caller must decide: [`ClientError::is_retryable`] (may a later attempt,
//! perhaps through another node, succeed?) and [`ClientError::breaks_connection`] (must this
//! connection be dropped?).

pub mod owner;
pub mod tls;
pub use owner::OwnerClient;

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chordkv_protocol::{
    decode, limits, DecodeError, EncodeError, ErrorCode, Frame, Id, Message, NodeAddr, NodeInfo, NodeRef,
    NodeStatus, MAX_KEY_BYTES, MAX_VALUE_BYTES,
};
use serde::Serialize;
use tls::Stream;
pub use tls::TlsClient;

/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A node's address as a user writes it: `IP:PORT`, or `HOST:PORT` resolved (an IPv4 address
/// preferred). Used by `chordkv`'s `--node` and loadgen's `--nodes`.
///
/// # Errors
/// A message naming `s` and the expected form, e.g. `invalid address 'x': expected IP:PORT or
/// HOST:PORT, e.g. 127.0.0.1:7000`, or why it could not be resolved.
pub fn resolve_addr(s: &str) -> std::result::Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if s.trim().is_empty() {
        // What a list with a trailing or doubled comma gives.
        return Err(
            "an empty address (a stray comma in the list?): expected IP:PORT or HOST:PORT, e.g. 127.0.0.1:7000"
                .to_string(),
        );
    }
    let has_port = s
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !has_port {
        return Err(format!(
            "invalid address '{s}': expected IP:PORT or HOST:PORT, e.g. 127.0.0.1:7000"
        ));
    }
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("invalid address '{s}': cannot resolve: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("invalid address '{s}': it resolves to no address"))
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be established (refused, unreachable, timed out).
    #[error("cannot reach {addr}: {}", describe_io(source))]
    Connect { addr: SocketAddr, source: io::Error },
    /// The connection failed or was closed while a request was outstanding.
    #[error("connection to {addr} failed: {}", describe_io(source))]
    Io { addr: SocketAddr, source: io::Error },
    /// No reply arrived within the client's timeout.
    #[error("no reply from {addr} within {} ms", timeout.as_millis())]
    Timeout { addr: SocketAddr, timeout: Duration },
    /// The node sent bytes that are not a valid frame; the connection is closed.
    #[error("protocol error: {0}")]
    Protocol(#[from] DecodeError),
    /// The node answered with an error.
    #[error("server error ({code:?}): {text}")]
    Server { code: ErrorCode, text: String },
    /// A key, value or the whole request is over the protocol's limit; nothing was sent.
    #[error("{field} of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// The node answered with a message that does not answer the request.
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

impl ClientError {
    /// Whether the same request may succeed if tried again later (on a new connection, or
    /// through another node): transport failures, timeouts, and the server's retryable codes.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Io { .. } | ClientError::Timeout { .. } => true,
            ClientError::Server { code, .. } => code.is_retryable(),
            ClientError::Protocol(_) | ClientError::TooLarge { .. } | ClientError::Unexpected(_) => false,
        }
    }

    /// Whether the connection is no longer usable (or its state unknown) after this error, so
    /// that the caller should drop the [`Client`] and connect again.
    pub fn breaks_connection(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::Io { .. }
            | ClientError::Timeout { .. }
            | ClientError::Protocol(_)
            | ClientError::Unexpected(_) => true,
            ClientError::Server { .. } | ClientError::TooLarge { .. } => false,
        }
    }

    /// The server's error code, if the node answered with an error.
    pub fn server_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<EncodeError> for ClientError {
    fn from(e: EncodeError) -> ClientError {
        match e {
            EncodeError::TooLarge { field, len, max } => ClientError::TooLarge { field, len, max },
            // We only ever send frames with known flags.
            EncodeError::UnknownFlags(f) => {
                ClientError::Unexpected(format!("refusing to send unknown flags {f:#06x}"))
            }
        }
    }
}

/// An I/O error as a short lower-case phrase ("connection refused"), without the
/// "(os error 111)" suffix, for messages a person reads.
pub fn describe_io(e: &io::Error) -> String {
    use io::ErrorKind::*;
    let phrase = match e.kind() {
        ConnectionRefused => "connection refused",
        ConnectionReset => "connection reset by peer",
        ConnectionAborted => "connection aborted",
        TimedOut | WouldBlock => "timed out",
        UnexpectedEof => "connection closed by peer",
        BrokenPipe => "connection closed by peer (broken pipe)",
        AddrNotAvailable => "address not available",
        HostUnreachable => "host unreachable",
        NetworkUnreachable => "network unreachable",
        _ => {
            let text = e.to_string();
            let text = match text.find(" (os error") {
                Some(at) => text[..at].to_string(),
                None => text,
            };
            let mut chars = text.chars();
            return match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => text,
            };
        }
    };
    phrase.to_string()
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// The answer to a GET.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetResult {
    /// `None` when the key does not exist.
    pub value: Option<Bytes>,
    /// The stored version (0 when the key does not exist).
    pub version: u64,
    /// Overlay hops the request took to reach the key's owner.
    pub hops: u16,
}

/// The answer to a PUT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutResult {
    /// The version the owner stamped the write with.
    pub version: u64,
    pub hops: u16,
}

/// The answer to a DELETE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeleteResult {
    /// Whether a live value was removed.
    pub existed: bool,
    pub version: u64,
    pub hops: u16,
}

/// One connection to one node.
pub struct Client {
    addr: SocketAddr,
    stream: Stream,
    timeout: Duration,
    /// Received bytes not yet decoded.
    buf: BytesMut,
    next_request_id: u64,
    /// The vnode of the host that requests without one go to (see [`Client::connect_to`]).
    vnode: Option<u16>,
    /// Set once the byte stream is in an unknown state (protocol error); every later request
    /// fails rather than misreading what follows.
    broken: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// How a client reaches a node: credentials to log in with and TLS, each when the ring
/// requires it. The default is neither.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub login: Option<Credentials>,
    pub tls: Option<TlsClient>,
}

impl PartialEq for Access {
    /// The same credentials, and TLS on both or neither (TLS configurations are not compared).
    fn eq(&self, other: &Access) -> bool {
        self.login == other.login && self.tls.is_some() == other.tls.is_some()
    }
}

/// No credentials, no TLS.
pub static NO_ACCESS: Access = Access {
    login: None,
    tls: None,
};

/// What a client logs in with when the ring requires it (`chordkv node --requirepass` or
/// `--users`): Redis' user and password. The user is `default` with `--requirepass`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: Bytes,
}

impl std::fmt::Debug for Credentials {
    /// The user only: a password must not reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the ring position `node` (its host, see [`Client::connect_as`]); requests
    /// that name no vnode go to `node.vnode` of the host.
    pub fn connect_to(node: NodeAddr, timeout: Duration, access: &Access) -> Result<Client> {
        let mut client = Client::connect_as(node.host, timeout, access)?;
        client.vnode = (node.vnode != 0).then_some(node.vnode);
        Ok(client)
    }

    /// [`Client::connect`] over TLS when `access` says so, then [`Client::login`] with its
    /// credentials when it has some.
    pub fn connect_as(addr: SocketAddr, timeout: Duration, access: &Access) -> Result<Client> {
        let mut client = Client::connect(addr, timeout)?;
        if let Some(tls) = &access.tls {
            let Stream::Plain(tcp) = client.stream else {
                unreachable!("a new connection is plain");
            };
            client.stream = tls
                .wrap(addr, tcp)
                .map_err(|source| ClientError::Connect { addr, source })?;
        }
        if let Some(c) = &access.login {
            client.login(c)?;
        }
        Ok(client)
    }

    /// Logs in (`LOGIN`): every later request runs as that user.
    ///
    /// # Errors
    /// [`ClientError::Server`] with code `Unauthorized` and Redis' `WRONGPASS` words for a
    /// wrong user or password; `BadRequest` when the node requires no credentials.
    pub fn login(&mut self, credentials: &Credentials) -> Result<()> {
        let login = Message::Login {
            user: credentials.user.clone(),
            password: credentials.password.clone(),
        };
        match self.request(login)? {
            Message::LoginReply { .. } => Ok(()),
            other => Err(unexpected("LOGIN", &other)),
        }
    }

    /// Connects to the node at `addr`. `timeout` bounds the connection attempt and each
    /// request (from sending it to receiving its whole reply). Each request carries a
    /// deadline of `timeout` from now on this machine's clock, at most
    /// [`limits::MAX_CLIENT_TIMEOUT_MS`]: a write the node has not started by then is
    /// never started (the node answers an error instead), so a write reported as timed out
    /// is not started after the report. (One an owner had handed to a store that then froze,
    /// a paused redis-server, is carried out when the store resumes: docs/architecture.md,
    /// "Faults", rule 1.)
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Client> {
        let timeout = timeout.max(Duration::from_millis(1));
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|source| ClientError::Connect { addr, source })?;
        let setup = || -> io::Result<()> {
            // Requests are small and latency matters more than packet count.
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            Ok(())
        };
        setup().map_err(|source| ClientError::Connect { addr, source })?;
        Ok(Client {
            addr,
            stream: Stream::Plain(stream),
            timeout,
            buf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            next_request_id: 1,
            vnode: None,
            broken: false,
        })
    }

    /// The node this client talks to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `message` and returns the node's reply. An `Error` reply becomes
    /// [`ClientError::Server`].
    pub fn request(&mut self, message: Message) -> Result<Message> {
        let id = self.fresh_request_id();
        let reply = self.call(Frame::new(id, message))?;
        match reply.message {
            Message::Error { code, text, .. } => Err(ClientError::Server { code, text }),
            other => Ok(other),
        }
    }

    /// Sends `frame` as it is (flags included, e.g. [`Frame::direct`]) and returns the reply
    /// frame with the same request id, whatever it is (`Error` and `Redirect` included).
    /// Callers building their own frames should take ids from [`Client::fresh_request_id`].
    pub fn call(&mut self, frame: Frame) -> Result<Frame> {
        if self.broken {
            return Err(ClientError::Io {
                addr: self.addr,
                source: io::Error::new(
                    io::ErrorKind::NotConnected,
                    "connection closed after an earlier protocol error",
                ),
            });
        }
        let request_id = frame.request_id;
        let mut frame = frame;
        if frame.vnode.is_none() {
            frame.vnode = self.vnode;
        }
        if frame.deadline_ms == 0 && frame.message.is_client_op() {
            // The node must not start the operation after we stop waiting for it: a write we
            // report as timed out is not started after the report.
            // (At most `MAX_CLIENT_TIMEOUT_MS` ahead, which the owner takes: beyond it, it
            // refuses the write. A longer timeout still waits, and a write not started within
            // the cap is refused with an error.)
            let ahead = (self.timeout.as_millis() as u64).min(limits::MAX_CLIENT_TIMEOUT_MS);
            frame.deadline_ms = wall_clock_ms() + ahead;
        }
        let bytes = frame.to_bytes()?;
        let deadline = Instant::now() + self.timeout;
        self.stream
            .write_all(&bytes)
            .map_err(|source| self.io_error(source))?;
        loop {
            match decode(&mut self.buf) {
                Ok(Some(reply)) if reply.request_id == request_id => {
                    if !reply.message.is_reply() {
                        return Err(ClientError::Unexpected(format!(
                            "{} sent a {} request instead of a reply",
                            self.addr,
                            reply.message.name()
                        )));
                    }
                    return Ok(reply);
                }
                // A late reply to an earlier request that timed out: not ours any more.
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => {
                    self.broken = true;
                    self.buf.clear();
                    let _ = self.stream.tcp().shutdown(std::net::Shutdown::Both);
                    return Err(ClientError::Protocol(e));
                }
            }
            self.fill(deadline)?;
        }
    }

    /// A request id not used before on this connection.
    pub fn fresh_request_id(&mut self) -> u64 {
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        id
    }

    /// Reads once into the buffer, waiting at most until `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<()> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timeout_error());
            }
            self.stream
                .tcp()
                .set_read_timeout(Some(left))
                .map_err(|source| self.io_error(source))?;
            let mut chunk = [0u8; READ_CHUNK_BYTES];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(self.io_error(io::Error::from(io::ErrorKind::UnexpectedEof)));
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Err(self.timeout_error());
                }
                Err(e) => return Err(self.io_error(e)),
            }
        }
    }

    fn io_error(&self, source: io::Error) -> ClientError {
        if matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
            return self.timeout_error();
        }
        ClientError::Io {
            addr: self.addr,
            source,
        }
    }

    fn timeout_error(&self) -> ClientError {
        ClientError::Timeout {
            addr: self.addr,
            timeout: self.timeout,
        }
    }

    /// Reads `key`.
    pub fn get(&mut self, key: impl Into<Bytes>) -> Result<GetResult> {
        get_result(self.request(get_request(key.into())?)?)
    }

    /// Writes `value` under `key`.
    pub fn put(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<PutResult> {
        put_result(self.request(put_request(key.into(), value.into())?)?)
    }

    /// Deletes `key`.
    pub fn delete(&mut self, key: impl Into<Bytes>) -> Result<DeleteResult> {
        delete_result(self.request(delete_request(key.into())?)?)
    }

    /// The node's view of its neighbourhood.
    pub fn info(&mut self) -> Result<NodeInfo> {
        match self.request(Message::GetInfo)? {
            Message::Info(info) => Ok(*info),
            other => Err(unexpected("GET_INFO", &other)),
        }
    }

    /// Tells the node that the ring position `node` is gone for good (`chordkv forget
    /// ip:port#i`); the node passes the notice around the ring. Returns whether it was news to
    /// this node.
    pub fn forget(&mut self, node: NodeRef) -> Result<bool> {
        self.send_forget(node, false)
    }

    /// Tells the node that the host (process) of `node` is gone for good with every ring
    /// position it ran (`chordkv forget ip:port`; `node` is its vnode 0, or any of its
    /// positions). Returns whether it was news to this node.
    pub fn forget_host(&mut self, node: NodeRef) -> Result<bool> {
        self.send_forget(node, true)
    }

    fn send_forget(&mut self, node: NodeRef, whole_host: bool) -> Result<bool> {
        match self.request(Message::Forget { node, whole_host })? {
            Message::ForgetReply { forgotten } => Ok(forgotten),
            other => Err(unexpected("FORGET", &other)),
        }
    }

    /// The ring member this node knows at `addr` (its predecessor or one of its successors),
    /// with its id.
    pub fn member_at(&mut self, addr: NodeAddr) -> Result<Option<NodeRef>> {
        let info = self.info()?;
        Ok(info
            .predecessor
            .into_iter()
            .chain(info.successors)
            .chain(info.fingers)
            .find(|n| n.addr == addr))
    }

    /// The node's counters and gauges, in the order the node sent them.
    pub fn stats(&mut self) -> Result<Vec<(String, u64)>> {
        match self.request(Message::GetStats)? {
            Message::Stats { counters } => Ok(counters),
            other => Err(unexpected("GET_STATS", &other)),
        }
    }
}

fn checked_key(key: Bytes) -> Result<Bytes> {
    if key.len() > MAX_KEY_BYTES {
        return Err(ClientError::TooLarge {
            field: "key",
            len: key.len(),
            max: MAX_KEY_BYTES,
        });
    }
    Ok(key)
}

fn unexpected(request: &str, reply: &Message) -> ClientError {
    ClientError::Unexpected(format!("{} in answer to {request}", reply.name()))
}

// --- the key operations, for every client that sends them (`Client`, `OwnerClient`) ----------

/// A GET of `key`. Errors: `TooLarge` for a key over `MAX_KEY_BYTES`.
pub(crate) fn get_request(key: Bytes) -> Result<Message> {
    Ok(Message::Get {
        key: checked_key(key)?,
    })
}

/// A PUT of `value` under `key`. Errors: `TooLarge` for a key over `MAX_KEY_BYTES` or a value
/// over `MAX_VALUE_BYTES`.
pub(crate) fn put_request(key: Bytes, value: Bytes) -> Result<Message> {
    let key = checked_key(key)?;
    if value.len() > MAX_VALUE_BYTES {
        return Err(ClientError::TooLarge {
            field: "value",
            len: value.len(),
            max: MAX_VALUE_BYTES,
        });
    }
    Ok(Message::Put { key, value })
}

/// A DELETE of `key`. Errors: `TooLarge` for a key over `MAX_KEY_BYTES`.
pub(crate) fn delete_request(key: Bytes) -> Result<Message> {
    Ok(Message::Delete {
        key: checked_key(key)?,
    })
}

/// The result of a GET from its reply (errors were taken out of the reply before).
pub(crate) fn get_result(reply: Message) -> Result<GetResult> {
    match reply {
        Message::GetReply { hops, version, value } => Ok(GetResult { value, version, hops }),
        other => Err(unexpected("GET", &other)),
    }
}

/// The result of a PUT from its reply.
pub(crate) fn put_result(reply: Message) -> Result<PutResult> {
    match reply {
        Message::PutReply { hops, version } => Ok(PutResult { version, hops }),
        other => Err(unexpected("PUT", &other)),
    }
}

/// The result of a DELETE from its reply.
pub(crate) fn delete_result(reply: Message) -> Result<DeleteResult> {
    match reply {
        Message::DeleteReply {
            hops,
            version,
            existed,
        } => Ok(DeleteResult {
            existed,
            version,
            hops,
        }),
        other => Err(unexpected("DELETE", &other)),
    }
}

// --- ring walk -------------------------------------------------------------------------------

/// One node as [`walk_ring`] found it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RingNode {
    /// The node's ring id, 40 hex digits.
    #[serde(serialize_with = "serialize_display")]
    pub id: Id,
    /// Where the node is reached: its host's address, and its vnode after `#` when not 0.
    #[serde(serialize_with = "serialize_display")]
    pub addr: NodeAddr,
    /// Its predecessor's address, if it has one.
    #[serde(serialize_with = "serialize_opt_display")]
    pub predecessor: Option<NodeAddr>,
    /// Its first successor's address.
    #[serde(serialize_with = "serialize_opt_display")]
    pub successor: Option<NodeAddr>,
    /// Its whole successor list, nearest first (the replicas' preference list is drawn from it).
    #[serde(serialize_with = "serialize_all_display")]
    pub successors: Vec<NodeAddr>,
    /// Live keys in its store.
    pub keys: u64,
    /// `joining`, `active` or `leaving`.
    #[serde(serialize_with = "serialize_status")]
    pub status: NodeStatus,
}

/// What [`walk_ring`] found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RingReport {
    /// The nodes reached, in ring order starting from the lowest id.
    pub nodes: Vec<RingNode>,
    /// Members that did not answer but that nodes keeping such members (partition policy
    /// `consistent`) still list: down, not gone. The ring is consistent with them in place.
    #[serde(serialize_with = "serialize_all_display")]
    pub down: Vec<NodeAddr>,
    /// The ring is whole and settled: see [`walk_ring`].
    pub consistent: bool,
    /// What is wrong, one sentence each; empty when `consistent`.
    pub problems: Vec<String>,
    /// The hosts (processes) reached, with their vnodes and their share of the ring, in the
    /// ring order of their first position.
    pub hosts: Vec<HostShare>,
}

/// One host of a [`RingReport`]: a process and the ring positions (vnodes) it runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HostShare {
    /// The address the host listens on.
    pub host: SocketAddr,
    /// Its positions reached by the walk.
    pub vnodes: usize,
    /// The fraction of the id space its positions own as primaries (0 to 1): the sum of the
    /// arcs `(predecessor, position]` of its positions, by the walk's order.
    pub share: f64,
    /// Live keys summed over its positions.
    pub keys: u64,
}

/// The hosts of a walk in ring order (`nodes` sorted by id): each host's positions, share of
/// the ring, and keys.
fn host_shares(nodes: &[RingNode]) -> Vec<HostShare> {
    let mut hosts: Vec<HostShare> = Vec::new();
    let n = nodes.len();
    for (i, node) in nodes.iter().enumerate() {
        let pred = &nodes[(i + n - 1) % n];
        let share = if n == 1 {
            1.0
        } else {
            pred.id.distance_to(&node.id).as_fraction()
        };
        match hosts.iter_mut().find(|h| h.host == node.addr.host) {
            Some(h) => {
                h.vnodes += 1;
                h.share += share;
                h.keys += node.keys;
            }
            None => hosts.push(HostShare {
                host: node.addr.host,
                vnodes: 1,
                share,
                keys: node.keys,
            }),
        }
    }
    hosts
}

impl RingReport {
    /// The hosts reached (processes; a host with virtual nodes has several ring positions),
    /// each once, in the ring order of their first position.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        let mut seen = std::collections::BTreeSet::new();
        self.nodes
            .iter()
            .map(|n| n.addr.host)
            .filter(|h| seen.insert(*h))
            .collect()
    }

    /// Live keys summed over the nodes reached.
    pub fn total_keys(&self) -> u64 {
        self.nodes.iter().map(|n| n.keys).sum()
    }
}

fn serialize_display<T: std::fmt::Display, S: serde::Serializer>(
    v: &T,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn serialize_opt_display<T: std::fmt::Display, S: serde::Serializer>(
    v: &Option<T>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

fn serialize_all_display<T: std::fmt::Display, S: serde::Serializer>(
    v: &[T],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|x| x.to_string()))
}

fn serialize_status<S: serde::Serializer>(v: &NodeStatus, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(status_name(*v))
}

/// `joining`, `active` or `leaving`.
pub fn status_name(status: NodeStatus) -> &'static str {
    match status {
        NodeStatus::Joining => "joining",
        NodeStatus::Active => "active",
        NodeStatus::Leaving => "leaving",
    }
}

/// Walks the ring from `start` by asking each node for its info (`GET_INFO`) and moving on to
/// its first successor, until the walk is back at the first node, at most `max_nodes` nodes.
///
/// An unreachable successor is reported and skipped by trying the next entries of the
/// previous node's successor list. The ring is `consistent` iff
///
/// - the walk returned to its first node, reaching no node twice, within `max_nodes`;
/// - every node's successor names that node as its predecessor (a single node may have no
///   predecessor), and every successor list is exactly the positions that follow its node in
///   ring order, up to the first position of one host more than the most hosts any list names
///   (with one position per host: as long as the longest list seen), and at most as long as
///   the longest list (lists are also bounded in entries);
/// - no node was unreachable and every node is `Active`;
/// - ids strictly increase around the ring, with exactly one wrap past zero.
///
/// A ring of one node is its own successor and predecessor, or names none: a node with an
/// empty successor list closes the walk at once. Such a node must also own every key, which
/// its `GET_INFO` cannot tell apart from a node that lost every peer (isolated, and owning
/// nothing until it finds the ring again), so the walk asks it to serve one probe key itself
/// (a `GET` of [`RING_PROBE_KEY`] with `FLAG_DIRECT`); a redirect or a "not serving" error is
/// a problem.
///
/// Fails only when `start` itself cannot be asked; every other trouble is a problem in the
/// report. `timeout` bounds each connection and request.
pub fn walk_ring(start: SocketAddr, timeout: Duration, max_nodes: usize) -> Result<RingReport> {
    walk_ring_as(start, timeout, max_nodes, &NO_ACCESS)
}

/// [`walk_ring`], reaching every node with `access` (credentials, TLS).
pub fn walk_ring_as(
    start: SocketAddr,
    timeout: Duration,
    max_nodes: usize,
    access: &Access,
) -> Result<RingReport> {
    let first = Client::connect_as(start, timeout, access)?.info()?;
    let max_nodes = max_nodes.max(1);
    let mut problems = Vec::new();
    let mut seen: BTreeSet<Id> = BTreeSet::new();
    // The members in walk order: the nodes reached with what they said, and (`None`) the
    // members that are down, which nodes under the partition policy `consistent` keep listing.
    let mut walk: Vec<(NodeRef, Option<NodeInfo>)> = Vec::new();
    let mut returned = false;
    let mut current = first;
    loop {
        seen.insert(current.node.id);
        let candidates = current.successors.clone();
        let from = current.node;
        let keeps_down = current.keeps_down_members;
        walk.push((from, Some(current)));
        if candidates.is_empty() {
            if walk.len() == 1 {
                // Alone: the ring closes on this node (its predecessor is checked below).
                returned = true;
            } else {
                problems.push(format!("{} has no successor", from.addr));
            }
            break;
        }
        // The first answering entry of the successor list is the next node.
        let mut next = None;
        let mut down = Vec::new();
        for succ in &candidates {
            if succ.id == walk[0].0.id {
                returned = true;
                break;
            }
            match Client::connect_to(succ.addr, timeout, access).and_then(|mut c| c.info()) {
                Ok(info) => {
                    if info.node.id != succ.id {
                        problems.push(format!(
                            "{} lists {} with id {} but that node has id {}",
                            from.addr,
                            succ.addr,
                            succ.id.short(12),
                            info.node.id.short(12)
                        ));
                    }
                    next = Some(info);
                    break;
                }
                Err(_) if keeps_down => down.push(*succ),
                Err(e) => problems.push(format!(
                    "{}'s successor {} is unreachable: {e}",
                    from.addr, succ.addr
                )),
            }
        }
        for d in down {
            if seen.insert(d.id) {
                walk.push((d, None));
            }
        }
        if returned {
            break;
        }
        let Some(info) = next else {
            let listed: Vec<String> = candidates.iter().map(|n| n.addr.to_string()).collect();
            problems.push(format!(
                "no successor of {} could be reached (it lists {}); the walk stopped",
                from.addr,
                listed.join(", ")
            ));
            break;
        };
        if seen.contains(&info.node.id) {
            problems.push(format!(
                "the walk came back to {} without returning to {}: the ring has a loop",
                info.node.addr, walk[0].0.addr
            ));
            break;
        }
        if walk.len() >= max_nodes {
            problems.push(format!(
                "the walk stopped after {max_nodes} nodes without returning to {}",
                walk[0].0.addr
            ));
            break;
        }
        current = info;
    }
    if !returned && problems.is_empty() {
        problems.push("the walk did not return to its first node".to_string());
    }
    check_ring(&walk, returned, &mut problems);
    let infos: Vec<&NodeInfo> = walk.iter().filter_map(|(_, i)| i.as_ref()).collect();
    if returned && walk.len() == 1 && infos[0].status == NodeStatus::Active {
        if let Some(problem) = probe_alone(infos[0].node.addr, timeout, access) {
            problems.push(problem);
        }
    }

    let mut nodes: Vec<RingNode> = infos.iter().map(|i| ring_node(i)).collect();
    if let Some(lowest) = (0..nodes.len()).min_by_key(|&i| nodes[i].id) {
        nodes.rotate_left(lowest);
    }
    let mut down: Vec<NodeRef> = walk
        .iter()
        .filter(|(_, i)| i.is_none())
        .map(|(n, _)| *n)
        .collect();
    down.sort();
    let hosts = host_shares(&nodes);
    Ok(RingReport {
        consistent: problems.is_empty(),
        hosts,
        nodes,
        down: down.iter().map(|n| n.addr).collect(),
        problems,
    })
}

/// The key [`walk_ring`] asks a node that is alone to serve, to check that it owns every key.
pub const RING_PROBE_KEY: &[u8] = b"chordkv:ring-probe";

/// Asks the lone node at `addr` to serve [`RING_PROBE_KEY`] itself; the problem, if it does
/// not own it. A store failure is not the ring's problem: the node tried to serve the key.
fn probe_alone(addr: NodeAddr, timeout: Duration, access: &Access) -> Option<String> {
    let outcome = Client::connect_to(addr, timeout, access).and_then(|mut c| {
        let id = c.fresh_request_id();
        c.call(Frame::direct(
            id,
            Message::Get {
                key: Bytes::from_static(RING_PROBE_KEY),
            },
        ))
    });
    match outcome {
        Ok(Frame {
            message: Message::GetReply { .. },
            ..
        }) => None,
        Ok(Frame {
            message: Message::Error { code, text, .. },
            ..
        }) => match code {
            ErrorCode::Unavailable | ErrorCode::NotReady | ErrorCode::ShuttingDown => Some(format!(
                "{addr} is alone but does not serve the keys of a ring of one ({text}): \
                 it lost its peers and has not found the ring again"
            )),
            _ => None,
        },
        Ok(Frame { message, .. }) => Some(format!(
            "{addr} is alone but answered {} to a key it should own",
            message.name()
        )),
        Err(e) => Some(format!("{addr} did not answer a probe of its keys: {e}")),
    }
}

/// The per-node checks of [`walk_ring`] over the members in walk order (`None`: a member that
/// is down, checked only as a neighbour of the others).
fn check_ring(walk: &[(NodeRef, Option<NodeInfo>)], returned: bool, problems: &mut Vec<String>) {
    let n = walk.len();
    for info in walk.iter().filter_map(|(_, i)| i.as_ref()) {
        if info.status != NodeStatus::Active {
            problems.push(format!(
                "{} is {}, not active",
                info.node.addr,
                status_name(info.status)
            ));
        }
    }
    // Predecessor pointers: the member after `a` must name `a` as its predecessor.
    let pairs = if returned { n } else { n.saturating_sub(1) };
    for i in 0..pairs {
        let a = &walk[i].0;
        let Some(b) = &walk[(i + 1) % n].1 else { continue };
        match b.predecessor {
            Some(p) if p.id == a.id => {}
            None if n == 1 => {}
            Some(p) => problems.push(format!(
                "{}'s predecessor is {}, but {} precedes it",
                b.node.addr, p.addr, a.addr
            )),
            None => problems.push(format!(
                "{} has no predecessor, but {} precedes it",
                b.node.addr, a.addr
            )),
        }
    }
    // Successor lists: each follows the ring in order and runs as far as the ring allows:
    // writes go to the first entries as replicas, so a short or stale list means misplaced
    // copies. A node's list names the positions after it up to the first position of one host
    // more than the list names (its `--successors`), or up to a bound in entries; with one
    // position per host, that many entries. Neither is in the answers, so both are the most any
    // list reaches: hosts other than its own, and entries (a list cut by the bound is exactly
    // that long).
    if returned && n > 1 {
        let lists = || walk.iter().filter_map(|(_, i)| i.as_ref());
        let want_hosts = lists().map(other_hosts_named).max().unwrap_or(0);
        let max_len = lists().map(|i| i.successors.len()).max().unwrap_or(0).min(n - 1);
        for (i, (_, info)) in walk.iter().enumerate() {
            let Some(info) = info else { continue };
            let me = info.node.addr.host;
            let mut hosts: Vec<SocketAddr> = Vec::with_capacity(want_hosts);
            let mut expected: Vec<Id> = Vec::with_capacity(max_len);
            for d in 1..n {
                let next = walk[(i + d) % n].0.addr;
                if expected.len() == max_len {
                    break;
                }
                if next.host != me && !hosts.contains(&next.host) {
                    if hosts.len() == want_hosts {
                        break;
                    }
                    hosts.push(next.host);
                }
                expected.push(walk[(i + d) % n].0.id);
            }
            let got: Vec<Id> = info.successors.iter().map(|s| s.id).collect();
            if got != expected {
                let right = got.iter().zip(&expected).take_while(|(a, b)| a == b).count();
                problems.push(format!(
                    "{}'s successor list has {right} of the {} nodes that follow it, in ring \
                     order (a list of {})",
                    info.node.addr,
                    expected.len(),
                    got.len()
                ));
            }
        }
    }
    // Ids increase around the ring with one wrap past zero.
    if returned && n > 1 {
        let wraps = (0..n).filter(|&i| walk[(i + 1) % n].0.id <= walk[i].0.id).count();
        if wraps != 1 {
            problems.push(format!(
                "ids are out of order: the walk wrapped past zero {wraps} times"
            ));
        }
    }
}

/// Hosts other than the node's own that its successor list names.
fn other_hosts_named(info: &NodeInfo) -> usize {
    let mut hosts: Vec<SocketAddr> = Vec::new();
    for s in &info.successors {
        if s.addr.host != info.node.addr.host && !hosts.contains(&s.addr.host) {
            hosts.push(s.addr.host);
        }
    }
    hosts.len()
}

fn ring_node(info: &NodeInfo) -> RingNode {
    RingNode {
        id: info.node.id,
        addr: info.node.addr,
        predecessor: info.predecessor.map(|p| p.addr),
        successor: info.successors.first().map(|s: &NodeRef| s.addr),
        successors: info.successors.iter().map(|s| s.addr).collect(),
        keys: info.keys,
        status: info.status,
    }
}

/// Milliseconds since the Unix epoch on this machine's clock: request deadlines are wall-clock
/// times, which nodes compare with theirs (clocks must agree within the nodes'
/// `--max-clock-offset-ms`).
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn connect_error_names_the_address_without_os_error_codes() {
        // Bind then drop, so the port is (almost certainly) closed.
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let err = Client::connect(addr, Duration::from_secs(1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot reach {addr}: connection refused")
        );
        assert!(err.is_retryable());
    }

    #[test]
    fn oversized_keys_and_values_are_refused_before_sending() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = Client::connect(listener.local_addr().unwrap(), Duration::from_secs(1)).unwrap();
        let err = client.get(vec![0u8; MAX_KEY_BYTES + 1]).unwrap_err();
        assert!(matches!(err, ClientError::TooLarge { field: "key", .. }));
        let err = client.put(&b"k"[..], vec![0u8; MAX_VALUE_BYTES + 1]).unwrap_err();
        assert!(matches!(err, ClientError::TooLarge { field: "value", .. }));
        assert!(!err.is_retryable());
    }

    #[test]
    fn replies_are_matched_by_request_id_and_errors_are_typed() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            while frames.len() < 2 {
                let mut chunk = [0u8; 1024];
                let n = conn.read(&mut chunk).unwrap();
                buf.extend_from_slice(&chunk[..n]);
                while let Some(f) = decode(&mut buf).unwrap() {
                    // A stale reply first, then the real one.
                    let mut out = Vec::new();
                    Frame::new(f.request_id + 1000, Message::PutReply { hops: 9, version: 9 })
                        .encode(&mut out)
                        .unwrap();
                    let reply = match &f.message {
                        Message::Get { .. } => Message::GetReply {
                            hops: 2,
                            version: 7,
                            value: Some(Bytes::from_static(b"v")),
                        },
                        _ => Message::Error {
                            code: ErrorCode::NotReady,
                            hops: 0,
                            text: "joining".into(),
                        },
                    };
                    Frame::new(f.request_id, reply).encode(&mut out).unwrap();
                    conn.write_all(&out).unwrap();
                    frames.push(f);
                }
            }
        });
        let mut client = Client::connect(addr, Duration::from_secs(5)).unwrap();
        let got = client.get(&b"k"[..]).unwrap();
        assert_eq!(
            got,
            GetResult {
                value: Some(Bytes::from_static(b"v")),
                version: 7,
                hops: 2
            }
        );
        let err = client.put(&b"k"[..], &b"v"[..]).unwrap_err();
        assert_eq!(err.server_code(), Some(ErrorCode::NotReady));
        assert!(err.is_retryable() && !err.breaks_connection());
        server.join().unwrap();
    }

    #[test]
    fn a_silent_node_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = Client::connect(listener.local_addr().unwrap(), Duration::from_millis(100)).unwrap();
        let err = client.info().unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        drop(listener);
    }

    fn info(id: u64, pred: Option<u64>, succ: u64) -> NodeInfo {
        let r = |v: u64| NodeRef {
            id: Id::from_u64(v),
            addr: SocketAddr::from(([127, 0, 0, 1], 7000 + v as u16)).into(),
        };
        NodeInfo {
            node: r(id),
            status: NodeStatus::Active,
            predecessor: pred.map(r),
            successors: vec![r(succ)],
            fingers: vec![],
            keys: 0,
            keeps_down_members: false,
        }
    }

    /// A fake node at a fresh address that answers `GET_INFO` with `info` (its own address
    /// filled in) and a `GET` with `get_reply`, for `connections` connections.
    fn fake_node(info: NodeInfo, get_reply: Message, connections: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut info = info;
        info.node.addr = addr.into();
        std::thread::spawn(move || {
            for _ in 0..connections {
                let Ok((mut conn, _)) = listener.accept() else {
                    return;
                };
                let mut buf = BytesMut::new();
                let mut chunk = [0u8; 1024];
                while let Ok(n) = conn.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(f) = decode(&mut buf).unwrap() {
                        let reply = match f.message {
                            Message::GetInfo => Message::Info(Box::new(info.clone())),
                            _ => get_reply.clone(),
                        };
                        let mut out = Vec::new();
                        Frame::new(f.request_id, reply).encode(&mut out).unwrap();
                        conn.write_all(&out).unwrap();
                    }
                }
            }
        });
        addr
    }

    #[test]
    fn a_lone_node_is_a_ring_of_one_only_if_it_serves_every_key() {
        let alone = info(10, None, 10);
        let alone = NodeInfo {
            successors: vec![],
            ..alone
        };
        let serves = Message::GetReply {
            hops: 0,
            version: 0,
            value: None,
        };
        let addr = fake_node(alone.clone(), serves, 2);
        let report = walk_ring(addr, Duration::from_secs(5), 4).unwrap();
        assert!(report.consistent, "{:?}", report.problems);
        assert_eq!(report.addrs(), vec![addr]);

        // A node that lost every peer looks the same from GET_INFO but owns nothing.
        let isolated = Message::Error {
            code: ErrorCode::Unavailable,
            hops: 0,
            text: "node is not serving this key".into(),
        };
        let addr = fake_node(alone, isolated, 2);
        let report = walk_ring(addr, Duration::from_secs(5), 4).unwrap();
        assert!(!report.consistent);
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.contains("alone but does not serve")),
            "{:?}",
            report.problems
        );
    }

    fn walked(infos: &[NodeInfo]) -> Vec<(NodeRef, Option<NodeInfo>)> {
        infos.iter().map(|i| (i.node, Some(i.clone()))).collect()
    }

    #[test]
    fn ring_checks() {
        let mut problems = Vec::new();
        let ring = [
            info(10, Some(30), 20),
            info(20, Some(10), 30),
            info(30, Some(20), 10),
        ];
        check_ring(&walked(&ring), true, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");

        // Rotated walks are fine too.
        let rotated = [ring[1].clone(), ring[2].clone(), ring[0].clone()];
        check_ring(&walked(&rotated), true, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");

        // A wrong predecessor and ids that wrap twice.
        let bad = [
            info(10, Some(30), 30),
            info(30, Some(20), 20),
            info(20, Some(30), 10),
        ];
        check_ring(&walked(&bad), true, &mut problems);
        assert!(problems.iter().any(|p| p.contains("predecessor")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("wrapped")), "{problems:?}");

        let mut problems = Vec::new();
        check_ring(&walked(&[info(10, None, 10)]), true, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");

        // A member that is down (not reached) between two that name it is no problem.
        let mut problems = Vec::new();
        let mut walk = walked(&[info(10, Some(30), 20), info(30, Some(20), 10)]);
        let down = info(20, Some(10), 30);
        walk.insert(1, (down.node, None));
        check_ring(&walk, true, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
    }

    /// Vnode rings: each list runs to the first position of one host more than the lists name,
    /// so lists differ in length; a list with a gap or one that stops a host short is a problem.
    #[test]
    fn ring_checks_of_vnode_lists_bounded_by_hosts() {
        // Hosts 1, 2, 3 of two positions each, in ring order 1 2 1 3 2 3; lists name 1 host.
        let ring = [
            (10, 1, 0),
            (20, 2, 0),
            (30, 1, 1),
            (40, 3, 0),
            (50, 2, 1),
            (60, 3, 1),
        ];
        let r = |k: usize| {
            let (id, host, vnode) = ring[k % ring.len()];
            NodeRef {
                id: Id::from_u64(id),
                addr: NodeAddr::new(SocketAddr::from(([127, 0, 0, 1], 7000 + host)), vnode),
            }
        };
        let lists: [&[usize]; 6] = [&[1, 2], &[2], &[3], &[4, 5], &[5], &[6]];
        let infos = |lists: &[&[usize]; 6]| -> Vec<NodeInfo> {
            (0..ring.len())
                .map(|k| NodeInfo {
                    node: r(k),
                    status: NodeStatus::Active,
                    predecessor: Some(r(k + ring.len() - 1)),
                    successors: lists[k].iter().map(|&j| r(j)).collect(),
                    fingers: vec![],
                    keys: 0,
                    keeps_down_members: false,
                })
                .collect()
        };
        let mut problems = Vec::new();
        check_ring(&walked(&infos(&lists)), true, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");

        // A gap: the first list skips its own host's next position and runs on.
        let mut gap = lists;
        gap[0] = &[1, 3];
        check_ring(&walked(&infos(&gap)), true, &mut problems);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("has 1 of the 2 nodes that follow it")),
            "{problems:?}"
        );

        // A list a host short: it stops at its own host's position.
        let mut problems = Vec::new();
        let mut short = lists;
        short[3] = &[4];
        check_ring(&walked(&infos(&short)), true, &mut problems);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("has 1 of the 2 nodes that follow it")),
            "{problems:?}"
        );
    }
}
