//! The messages chordkv nodes and clients exchange, independent of their byte encoding.
//!
//! Requests and replies are distinct variants with distinct opcodes; a reply echoes the
//! request id of the request it answers (see [`crate::frame`]). [`Message::name`] and
//! [`Message::is_reply`] are generated with the opcodes, from the table in
//! [`crate::frame::opcode`]; this module depends on no encoding. Every reply to a client
//! operation carries `hops`: how many overlay messages the request needed to reach the key's
//! owner (0 when the node the client spoke to owned the key).

use std::net::SocketAddr;

use bytes::Bytes;

use crate::id::Id;

/// Where a ring position is reached: the address its process (the *host*, Chord's "real
/// node") listens on, and which of the host's virtual nodes it is (SIGCOMM'01 section 6.9:
/// a host runs several virtual nodes, each a position on the ring with its own tables).
///
/// Vnode 0 of a host is what a host without virtual nodes is, and it is written as the bare
/// address (`127.0.0.1:7000`); vnode `i > 0` as `127.0.0.1:7000#i`. Ordered by host, then
/// vnode, so the vnodes of one host sort together.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddr {
    /// The host's listening address (its processes' sockets are shared by its vnodes).
    pub host: SocketAddr,
    /// The virtual node's index in its host, `0..vnodes`.
    pub vnode: u16,
}

impl NodeAddr {
    /// The host's vnode 0: the address of a node without virtual nodes.
    pub const fn host(host: SocketAddr) -> NodeAddr {
        NodeAddr { host, vnode: 0 }
    }

    /// Vnode `vnode` of `host`.
    pub const fn new(host: SocketAddr, vnode: u16) -> NodeAddr {
        NodeAddr { host, vnode }
    }

    /// Whether `other` is a vnode of the same host (the same process, the same machine).
    pub fn same_host(&self, other: &NodeAddr) -> bool {
        self.host == other.host
    }
}

impl From<SocketAddr> for NodeAddr {
    fn from(host: SocketAddr) -> NodeAddr {
        NodeAddr::host(host)
    }
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.vnode == 0 {
            write!(f, "{}", self.host)
        } else {
            write!(f, "{}#{}", self.host, self.vnode)
        }
    }
}

impl std::fmt::Debug for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for NodeAddr {
    type Err = std::net::AddrParseError;

    /// `ip:port` (vnode 0) or `ip:port#vnode`.
    fn from_str(s: &str) -> Result<NodeAddr, Self::Err> {
        match s.rsplit_once('#') {
            Some((host, vnode)) => match vnode.parse::<u16>() {
                Ok(vnode) => Ok(NodeAddr::new(host.parse()?, vnode)),
                // Not a vnode number: let the address parser report the text.
                Err(_) => s.parse::<SocketAddr>().map(NodeAddr::host),
            },
            None => s.parse::<SocketAddr>().map(NodeAddr::host),
        }
    }
}

/// A node as others know it: its ring id and where it is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeRef {
    pub id: Id,
    pub addr: NodeAddr,
}

impl NodeRef {
    /// A node without virtual nodes whose id is derived from its address, the default.
    pub fn from_addr(addr: SocketAddr) -> NodeRef {
        NodeRef {
            id: Id::of_addr(&addr),
            addr: NodeAddr::host(addr),
        }
    }

    /// A best guess at the node reached at `addr` when only its address is known: the id a
    /// node without virtual nodes derives from its address. Right for vnode 0 of a host
    /// with default ids; a placeholder otherwise, until the node's own answer names its id.
    pub fn guess(addr: NodeAddr) -> NodeRef {
        NodeRef {
            id: Id::of_addr(&addr.host),
            addr,
        }
    }
}

/// One stored key with its version; `value: None` is a tombstone (a delete that must still be
/// propagated so that an older copy elsewhere cannot resurrect the key). `expires_at`: the
/// value's expiry in milliseconds since the Unix epoch on its owner's clock, 0 for none (part
/// of the version: a new expiry is a new version).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub key: Bytes,
    pub version: u64,
    pub value: Option<Bytes>,
    pub expires_at: u64,
}

/// One command's answer, computed at the key's owner ([`Message::ExecuteReply`]): the RESP
/// reply types Redis' string and keyspace commands answer with
/// (redis.io/docs/latest/develop/reference/protocol-spec). The owner's answer is carried to
/// the node the client spoke to, which writes it in the client's RESP version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandReply {
    /// The null reply (a missing key): `$-1` in RESP2, `_` in RESP3.
    Nil,
    /// A simple string, e.g. `OK`.
    Status(String),
    Int(i64),
    Bulk(Bytes),
    /// The error text, starting with its code (`ERR`, `WRONGTYPE`).
    Error(String),
    /// An array (MGET's values); arrays nest at most [`MAX_REPLY_DEPTH`] deep on the wire.
    Array(Vec<CommandReply>),
}

/// A command over every key of a ring range, run by [`Message::RangeCommand`] at a node over
/// its own primary range and by [`Message::RingCommand`] over the whole ring. The numeric
/// codes are part of the wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RangeCommand {
    /// Count the live keys (Redis' `DBSIZE`).
    Count = 1,
    /// Replace every live key with a tombstone (Redis' `FLUSHALL`, `FLUSHDB`).
    Flush = 2,
}

impl RangeCommand {
    pub fn from_u8(v: u8) -> Option<RangeCommand> {
        match v {
            1 => Some(RangeCommand::Count),
            2 => Some(RangeCommand::Flush),
            _ => None,
        }
    }
}

/// How deep [`CommandReply::Array`]s may nest in a frame (`LCS ... IDX` needs 4).
pub const MAX_REPLY_DEPTH: usize = 4;

/// The answer to one step of an iterative lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The key's owner is `successors[0]`; the rest are the nodes after it, as far as the
    /// answering node knows (where to fail over if the owner is down). `predecessor` is the
    /// node before the owner when the answering node knows it: the owner's range is then
    /// `(predecessor, successors[0]]`, which a location cache can remember whole.
    Found {
        predecessor: Option<NodeRef>,
        successors: Vec<NodeRef>,
        /// Bit `i` set: the answering node believes `successors[i]` is down (a member that
        /// stopped answering but has not left the ring), so an entry fails over past it at
        /// once instead of waiting for a timeout. Entries past 64 carry no hint.
        down: u64,
    },
    /// The answering node does not know the owner; `node` is closer to it (ask it next).
    Closer { node: NodeRef },
}

/// Why a request failed. The numeric codes are part of the wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The request is malformed or makes no sense to this node.
    BadRequest = 1,
    /// A key or value is over the configured limit.
    TooLarge = 2,
    /// The key's owner could not be reached within the request deadline.
    Unavailable = 3,
    /// The request did not complete within its deadline.
    Timeout = 4,
    /// The storage driver failed (e.g. Redis is down).
    StoreFailed = 5,
    /// The node has not finished joining the ring.
    NotReady = 6,
    /// The node is leaving the ring.
    ShuttingDown = 7,
    /// Too many requests are queued; retry later.
    Busy = 8,
    /// A bug on the serving node.
    Internal = 9,
    /// The request needs credentials the connection has not presented: a peer operation on a
    /// connection without the ring's key (`--keyring`), or a client operation before login.
    Unauthorized = 10,
    /// The logged-in user lacks the permission the request needs (read, write or admin).
    Forbidden = 11,
}

impl ErrorCode {
    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Unavailable
                | ErrorCode::Timeout
                | ErrorCode::StoreFailed
                | ErrorCode::NotReady
                | ErrorCode::ShuttingDown
                | ErrorCode::Busy
        )
    }

    /// The code for a wire value, if it is one we know.
    pub fn from_u16(v: u16) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match v {
            1 => BadRequest,
            2 => TooLarge,
            3 => Unavailable,
            4 => Timeout,
            5 => StoreFailed,
            6 => NotReady,
            7 => ShuttingDown,
            8 => Busy,
            9 => Internal,
            10 => Unauthorized,
            11 => Forbidden,
            _ => return None,
        })
    }
}

/// Where a node is in its life, as reported by [`NodeInfo`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum NodeStatus {
    /// Looking for its successor, or waiting for the keys of its range.
    Joining = 1,
    /// Serving its range.
    Active = 2,
    /// Handing its keys to its successor.
    Leaving = 3,
}

impl NodeStatus {
    pub fn from_u8(v: u8) -> Option<NodeStatus> {
        match v {
            1 => Some(NodeStatus::Joining),
            2 => Some(NodeStatus::Active),
            3 => Some(NodeStatus::Leaving),
            _ => None,
        }
    }
}

/// A membership change, disseminated by one-hop routing (Gupta, Liskov, Rodrigues): `node`
/// joined (`alive`) or left or failed (`!alive`), as its detector saw it at `stamp` (the
/// detector's clock, in milliseconds). A receiver applies an event only if it is newer than
/// the last one it applied for the same node, so a late "failed" never removes a rejoined node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberEvent {
    pub node: NodeRef,
    pub alive: bool,
    pub stamp: u64,
}

/// A node's view of its neighbourhood, for `chordkv ring` and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub node: NodeRef,
    pub status: NodeStatus,
    pub predecessor: Option<NodeRef>,
    pub successors: Vec<NodeRef>,
    /// The distinct nodes in the routing table, nearest first.
    pub fingers: Vec<NodeRef>,
    /// Live keys (not tombstones) in the node's store.
    pub keys: u64,
    /// The node keeps members that stopped answering in its successor list (partition policy
    /// `consistent`): an unreachable node it lists is a member that is down, not a stale entry.
    pub keeps_down_members: bool,
}

/// A graceful leave ([`Message::Leaving`]): see there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaveNotice {
    pub node: NodeRef,
    pub predecessor: Option<NodeRef>,
    pub successors: Vec<NodeRef>,
    pub clock: u64,
    pub gone: Vec<NodeRef>,
}

/// A request for a lease ([`Message::Lease`]): see there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRequest {
    pub primary: NodeRef,
    pub start: Id,
    pub holder: NodeRef,
}

/// Every message of the protocol. See [`crate::frame`] for opcodes and byte layouts.
///
/// A message is moved whole from the connection through the node's layers to the store and
/// back, so its size is the size of each such move. The few variants larger than a scan step
/// (88 bytes) keep their payload, or its rarely present part, behind a `Box`: a `Message` is
/// 96 bytes and a [`crate::Frame`] 120, rather than 176 and 200 (`Info`'s size), so that moving
/// one is a few vector instructions instead of a call to `memcpy` (`results/instructions.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    // --- client operations -------------------------------------------------------------
    /// Read a key.
    Get {
        key: Bytes,
    },
    /// Write a key.
    Put {
        key: Bytes,
        value: Bytes,
    },
    /// Delete a key.
    Delete {
        key: Bytes,
    },
    /// Run `commands` (each a Redis command's words, the name first: `["INCR", "k"]`) at the
    /// owner of `key`, one after the other and atomically: no other write to their keys comes
    /// between them, and their writes are stored and replicated as one batch stamped with one
    /// version. Every key the commands touch must be placed by `key`'s id ([`crate::Id::of_key`]:
    /// one hash tag) and so are `watched`'s: when the version of a watched key (0: absent) is
    /// not the one given, nothing runs (Redis' `WATCH`). The owner evaluates the commands;
    /// errors in one command are its reply, as in Redis' `EXEC`, and do not stop the others.
    Execute {
        key: Bytes,
        commands: Vec<Vec<Bytes>>,
        watched: Vec<(Bytes, u64)>,
    },
    /// Run `command` over the whole ring: the receiving node asks every member in turn, from
    /// its successor round to itself, to run it over its own primary range
    /// ([`Message::RangeCommand`]); answered with the sum, or an error naming the members that
    /// could not be reached (the others have run it).
    RingCommand {
        command: RangeCommand,
    },
    /// The receiver runs `command` over its own primary range (a step of a `RingCommand`).
    RangeCommand {
        command: RangeCommand,
    },
    /// One page of a scan of the whole ring's keys (Redis' `SCAN`), or all of them (`KEYS`:
    /// `count` 0), or one key at a random place (`RANDOMKEY`: `random`). `cursor` is 0 to
    /// start, else a cursor a `ScanKeysReply` gave: the top 64 bits of the ring position to go
    /// on from. Keys that match `pattern` (Redis' glob) are returned.
    ScanKeys {
        cursor: u64,
        count: u32,
        pattern: Option<Bytes>,
        random: bool,
    },
    /// A step of a scan, at the owner of `from`: up to `count` entries of its primary range in
    /// ring order from `from` (strictly after `(from, after_key)` when given), the live ones
    /// that match `pattern` returned.
    ScanRange {
        from: Id,
        after_key: Option<Bytes>,
        count: u32,
        pattern: Option<Bytes>,
    },
    /// `value: None` when the key does not exist; `version` 0 then.
    GetReply {
        hops: u16,
        version: u64,
        value: Option<Bytes>,
    },
    /// The write is applied; `version` is the version the owner stamped it with.
    PutReply {
        hops: u16,
        version: u64,
    },
    /// The delete is applied; `existed` tells whether a live value was removed.
    DeleteReply {
        hops: u16,
        version: u64,
        existed: bool,
    },
    /// The commands of an `Execute` ran: one reply per command, in order; `None` when a watched
    /// key had changed and nothing ran. `version`: the version their writes were stamped with
    /// (0 when nothing was written).
    ExecuteReply {
        hops: u16,
        version: u64,
        replies: Option<Vec<CommandReply>>,
    },
    /// The keys of a page, and the cursor to go on from (0: the scan is complete).
    ScanKeysReply {
        cursor: u64,
        keys: Vec<Bytes>,
    },
    /// The keys of a step; `last`: the last entry scanned when the range may hold more after
    /// it, `None` when the range up to `end` (the answering owner's id) is done.
    ScanRangeReply {
        hops: u16,
        keys: Vec<Bytes>,
        end: Id,
        last: Option<Box<(Id, Bytes)>>,
    },
    /// A `RingCommand` ran on every member: the keys counted or flushed.
    RingCommandReply {
        value: u64,
    },
    /// A `RangeCommand` ran: the keys counted or flushed, and the receiver's successor (the
    /// next member to ask).
    RangeCommandReply {
        value: u64,
        successor: NodeRef,
    },
    /// Sent instead of serving a `FLAG_DIRECT` request for a key this node does not own:
    /// `node` is the owner when `exact`, else a node closer to it.
    Redirect {
        hops: u16,
        node: NodeRef,
        exact: bool,
    },
    /// The request failed.
    Error {
        code: ErrorCode,
        hops: u16,
        text: String,
    },

    // --- Chord maintenance ---------------------------------------------------------------
    /// One step of an iterative lookup for `id`.
    FindSuccessor {
        id: Id,
    },
    FindSuccessorReply {
        lookup: Lookup,
    },
    /// Ask for the predecessors and the successor list in one round trip (stabilize,
    /// check_predecessor).
    GetNeighbors,
    /// The answerer's member predecessors and successors, nearest first (members that are down
    /// but have not left included, flagged in `down`: bit `i` for `successors[i]`), and the
    /// nodes it knows have left the ring or were forgotten (never to be re-learned from a stale
    /// list).
    Neighbors {
        predecessors: Vec<NodeRef>,
        successors: Vec<NodeRef>,
        down: u64,
        gone: Vec<NodeRef>,
    },
    /// "I think I am your predecessor." `incarnation` changes each time the node starts, so a
    /// node restarted on its address is told apart from its previous life; `active`: the node
    /// has served a range in this life, leaving included (false: it still waits for its first,
    /// e.g. just restarted).
    Notify {
        node: NodeRef,
        incarnation: u64,
        active: bool,
    },
    /// `accepted`: the receiver made `node` its predecessor and will transfer the keys in
    /// `(previous, node]`; `clock` is the receiver's version clock, which the new owner must
    /// move past before it stamps writes.
    NotifyReply {
        accepted: bool,
        previous: Option<NodeRef>,
        clock: u64,
    },
    /// Liveness probe (check_predecessor).
    Ping,
    Pong {
        node: NodeRef,
    },
    /// Graceful leave: `node` is leaving. Sent to its successor (take over my range, my
    /// predecessor is `predecessor`) and to its other neighbours (my successors are
    /// `successors`); `gone` are the nodes it knows left too (simultaneous leaves handed to
    /// each other pass the word on to whoever stays).
    Leaving(Box<LeaveNotice>),
    LeavingReply {
        accepted: bool,
    },

    /// Ask for the membership in id order after `after` (a client fetching the ring, or a
    /// joining one-hop node copying its successor's table). A one-hop node answers from its
    /// full table, a page at a time; any other node answers with the contiguous run of the ring
    /// it knows (its predecessor, itself, its successors).
    GetMembers {
        after: Id,
    },
    /// `nodes` in id order after the requested point; `more`: ask again after the last one.
    Members {
        nodes: Vec<NodeRef>,
        more: bool,
    },
    /// One-hop membership dissemination: apply `events`, then forward them to the members in
    /// `(receiver, limit)` (a broadcast tree over the ring, El-Ansary et al. 2003).
    MemberEvents {
        limit: Id,
        events: Vec<MemberEvent>,
    },
    MemberEventsAck {
        applied: u32,
    },

    // --- leases (partition policy `consistent`) ----------------------------------------------
    /// `holder` asks for a lease on the range `(start, primary.id]` of the member `primary`
    /// (itself, or a primary that is down when `holder` stands in for it): a promise that the
    /// receiver grants no lease on that range to anyone else for the lease period.
    Lease(Box<LeaseRequest>),
    /// `granted`, or refused because `holder` holds the receiver's promise. `fence` is the end,
    /// on the receiver's clock in milliseconds, of the last promise it gave another holder for
    /// this range (0 if none): the new holder stamps every write above it, so no write of an
    /// earlier holder can win. `clock` is the receiver's version clock.
    LeaseReply {
        granted: bool,
        holder: Option<NodeRef>,
        fence: u64,
        clock: u64,
    },
    /// An operator declares `node` gone for good (`chordkv forget`): it leaves the membership
    /// as if it had left gracefully, so the ring can serve its ranges again. With
    /// `whole_host`, every position (virtual node) of `node`'s host goes: a dead process takes
    /// all its positions with it. `node.id` is a hint: a node that knows a position uses the
    /// id it knows.
    Forget {
        node: NodeRef,
        whole_host: bool,
    },
    ForgetReply {
        forgotten: bool,
    },
    /// A joining host reserves the positions it chose for its vnodes (`nodes`: one `NodeRef`
    /// per vnode, all of one host) at the node it read the ring through, so that hosts joining
    /// through it at the same moment do not choose the same positions. Accepted only if no
    /// other claim was accepted since the claims the joiner read (`seen`, the `version` of the
    /// last `Claims` it got; 0 before any). An empty `nodes` only reads the claims. Answered
    /// with `Claims`: the joiner's positions are reserved when they are listed there;
    /// otherwise it chooses again around the claims listed and claims again. A claim is
    /// advisory (it lapses after a minute, and hosts joining through different nodes are not
    /// ordered); Cassandra's consistent range movement, CASSANDRA-2434, serializes joins for
    /// the same reason.
    ClaimPositions {
        seen: u64,
        nodes: Vec<NodeRef>,
    },
    /// The positions claimed at this node and not yet lapsed (`nodes`, every claim's), and the
    /// number of claims accepted so far (`version`, to pass back as `seen`).
    Claims {
        version: u64,
        nodes: Vec<NodeRef>,
    },

    // --- key handoff ---------------------------------------------------------------------
    /// One batch of the keys in the ring range `(start, end]`; `last` closes the transfer.
    Transfer {
        transfer_id: u64,
        start: Id,
        end: Id,
        items: Vec<Item>,
        last: bool,
        clock: u64,
    },
    TransferAck {
        transfer_id: u64,
        accepted: bool,
    },

    // --- replication and anti-entropy ----------------------------------------------------
    /// A replica write: merge these items (a primary to its replicas; anti-entropy repairs).
    Replicate {
        items: Vec<Item>,
    },
    ReplicateAck {
        applied: u32,
    },
    /// Anti-entropy, step 1: digests of `digests.len()` equal sub-ranges of the ring range
    /// `(start, end]` (as `Id::split_range` splits it). `holder_ms`: 0, or the sender holds a
    /// caught-up lease on the range (partition policy `consistent`) and took the digests after
    /// this time (milliseconds, its clock); a receiver whose digests all match, and that lost
    /// its copies earlier, holds every acknowledged write of the range again (it is *trusted*).
    SyncDigests {
        start: Id,
        end: Id,
        digests: Vec<u64>,
        holder_ms: u64,
    },
    /// The indices of the sub-ranges whose digests differ on the receiver. `trusted`: the
    /// receiver's copy of the range holds every write it acknowledged (false from the time it
    /// lost its store until a caught-up holder's digests matched its own).
    SyncDigestsReply {
        differing: Vec<u32>,
        trusted: bool,
    },
    /// Anti-entropy, step 2: the sender's `(key, version)` list for the ring range `(start, end]`.
    SyncKeys {
        start: Id,
        end: Id,
        keys: Vec<(Bytes, u64)>,
    },
    /// `want`: keys the receiver lacks or holds at an older version (send them);
    /// `newer`: the receiver's items that the sender lacks or holds at an older version, up to a
    /// byte budget; `truncated`: some were left out (ask again).
    SyncKeysReply {
        want: Vec<Bytes>,
        newer: Vec<Item>,
        truncated: bool,
    },
    /// Remove the tombstones in `(start, end]` whose version is at most `before` (every replica
    /// has them).
    CollectTombstones {
        start: Id,
        end: Id,
        before: u64,
    },
    CollectTombstonesReply {
        removed: u32,
    },

    // --- introspection -------------------------------------------------------------------
    GetInfo,
    Info(Box<NodeInfo>),
    GetStats,
    /// Named counters and gauges; names are stable, new ones may be added.
    Stats {
        counters: Vec<(String, u64)>,
    },

    // --- connection ----------------------------------------------------------------------
    /// A client presents its credentials (`--requirepass`: user `default`; `--users`: a user
    /// of the file). Answered by the node's server, never by the Chord core: `LoginReply` with
    /// the user's name, or `Error` `Unauthorized` with Redis' `WRONGPASS` words.
    Login {
        user: String,
        password: Bytes,
    },
    LoginReply {
        user: String,
    },
}

impl Message {
    /// Whether this is a client operation (GET, PUT, DELETE, EXECUTE).
    pub fn is_client_op(&self) -> bool {
        matches!(
            self,
            Message::Get { .. }
                | Message::Put { .. }
                | Message::Delete { .. }
                | Message::Execute { .. }
                | Message::ScanRange { .. }
        )
    }

    /// Where a client operation is served: the id its key is placed by
    /// ([`crate::Id::of_key`]), or for a scan step the position it starts at.
    pub fn placement(&self) -> Option<Id> {
        match self {
            Message::ScanRange { from, .. } => Some(*from),
            other => other.key().map(|k| Id::of_key(k)),
        }
    }

    /// The key of a client operation (for `Execute`, the key that places it).
    pub fn key(&self) -> Option<&Bytes> {
        match self {
            Message::Get { key }
            | Message::Put { key, .. }
            | Message::Delete { key }
            | Message::Execute { key, .. } => Some(key),
            _ => None,
        }
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod size_tests {
    use super::*;

    /// The size the docs of [`Message`] give, which keeps a move of a message (and of a
    /// `Frame`) within a few vector instructions: a new variant larger than a scan step must
    /// keep its payload behind a `Box`.
    #[test]
    fn a_message_is_no_larger_than_its_largest_unboxed_variant() {
        assert_eq!(std::mem::size_of::<Message>(), 96);
        assert_eq!(std::mem::size_of::<crate::Frame>(), 120);
    }
}
