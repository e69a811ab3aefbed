//! The hand-written binary encoding of a [`Frame`]: an 18-byte header followed by the payload
//! of one [`Message`].
//!
//! Decoding follows the shape of tokio mini-redis's `frame.rs`: [`check`] looks at the bytes
//! buffered so far and answers, from the header alone and without allocating, whether a whole
//! frame is there (and rejects garbage as early as the first byte); only then does the parser
//! run, over exactly that frame. Every length read from the wire is compared with a named
//! maximum *and* with the bytes actually left in the frame before anything is allocated, so a
//! tiny frame that claims a huge key or a list of a billion nodes costs nothing. Keys and values
//! are zero-copy [`Bytes::slice`]s of the received frame. The decoder never panics: it does no
//! unchecked indexing and no unchecked arithmetic on lengths.
//!
//! # Header (18 bytes, big-endian)
//!
//! ```text
//!  offset  size  field        value
//!  ------  ----  -----------  ----------------------------------------------------------
//!       0     2  magic        b"CK" (0x43 0x4B)                              MAGIC
//!       2     1  version      2                                              VERSION
//!       3     1  opcode       see the opcode table; bit 7 set = reply        REPLY_BIT
//!       4     2  flags        bit 0 = FLAG_DIRECT, bit 1 = FLAG_FAILOVER,   KNOWN_FLAGS
//!                             bit 2 = FLAG_DEADLINE; every other bit must be 0
//!       6     8  request_id   chosen by the requester, echoed by the reply
//!      14     4  payload_len  bytes after the header, <= MAX_FRAME_BYTES
//!      18     n  payload      payload_len bytes: with FLAG_DEADLINE first the deadline
//!                             (u64, milliseconds on the sender's wall clock), then the
//!                             message laid out by opcode (below)
//! ```
//!
//! `FLAG_DEADLINE` carries [`Frame::deadline_ms`]: the time after which the receiver must not
//! start the request, because its sender has given up on it (see the core's `deadline` rules).
//!
//! `FLAG_DIRECT` on a client operation (GET, PUT, DELETE) asks the receiver to serve it itself
//! or to answer with `Redirect`, rather than to route it through the ring. `FLAG_FAILOVER` on a
//! client operation says it was sent to a replica because the key's primary did not answer:
//! the receiver may serve it as the new primary.
//!
//! # Field encodings (all integers big-endian)
//!
//! ```text
//!  type              bytes  encoding
//!  ----------------  -----  --------------------------------------------------------------
//!  u8 u16 u32 u64    1..8   big-endian
//!  bool              1      0 = false, 1 = true (anything else is Malformed)
//!  Id                20     the 160-bit id, big-endian
//!  SocketAddr        7      tag u8 = 4 | ipv4 [4]  | port u16
//!                    19     tag u8 = 6 | ipv6 [16] | port u16  (flowinfo, scope id dropped)
//!  NodeRef           27/39  id Id | addr SocketAddr
//!  Option<T>         1+     tag u8: 0 = None, 1 = Some followed by T
//!  Key               4+len  len u32 | len bytes            len <= MAX_KEY_BYTES
//!  Value             4+len  len u32 | len bytes            len <= MAX_VALUE_BYTES
//!  String            4+len  len u32 | len bytes of UTF-8   len <= MAX_TEXT_BYTES
//!  Vec<T>            4+     count u32 | count x T          count <= MAX_LIST_LEN
//!  Item              13+    key Key | version u64 | value Option<Value>
//!  KeyVersion        12+    key Key | version u64
//!  Lookup            14+    tag u8 = 1 (Found)  | predecessor Option<NodeRef>
//!                                                | successors Vec<NodeRef> | down u64
//!                    28+    tag u8 = 2 (Closer) | node NodeRef
//!  ErrorCode         2      u16, the discriminant of message::ErrorCode (unknown = Malformed)
//!  NodeStatus        1      u8: 1 Joining, 2 Active, 3 Leaving (unknown = Malformed)
//!  Counter           12+    name String | value u64
//!  MemberEvent       36+    node NodeRef | alive bool | stamp u64
//! ```
//!
//! # Opcodes and payloads
//!
//! Fields follow in the order they are declared in [`crate::message`].
//!
//! ```text
//!  op    message                 payload
//!  ----  ----------------------  ------------------------------------------------------------
//!  0x01  Get                     key Key
//!  0x02  Put                     key Key | value Value
//!  0x03  Delete                  key Key
//!  0x10  FindSuccessor           id Id
//!  0x11  GetNeighbors            (empty)
//!  0x12  Notify                  node NodeRef | incarnation u64 | active bool
//!  0x13  Ping                    (empty)
//!  0x14  Leaving                 node NodeRef | predecessor Option<NodeRef>
//!                                | successors Vec<NodeRef> | clock u64 | gone Vec<NodeRef>
//!  0x15  GetMembers              after Id
//!  0x16  MemberEvents            limit Id | events Vec<MemberEvent>
//!  0x17  Lease                   primary NodeRef | start Id | holder NodeRef
//!  0x18  Forget                  node NodeRef
//!  0x20  Transfer                transfer_id u64 | start Id | end Id | items Vec<Item>
//!                                | last bool | clock u64
//!  0x21  Replicate               items Vec<Item>
//!  0x22  SyncDigests             start Id | end Id | digests Vec<u64>
//!  0x23  SyncKeys                start Id | end Id | keys Vec<KeyVersion>
//!  0x24  CollectTombstones       start Id | end Id | before u64
//!  0x30  GetInfo                 (empty)
//!  0x31  GetStats                (empty)
//!  ----  replies (bit 7 set) ----------------------------------------------------------------
//!  0x81  GetReply                hops u16 | version u64 | value Option<Value>
//!  0x82  PutReply                hops u16 | version u64
//!  0x83  DeleteReply             hops u16 | version u64 | existed bool
//!  0x84  Redirect                hops u16 | node NodeRef | exact bool
//!  0x90  FindSuccessorReply      lookup Lookup
//!  0x91  Neighbors               predecessors Vec<NodeRef> | successors Vec<NodeRef>
//!                                | down u64 | gone Vec<NodeRef>
//!  0x92  NotifyReply             accepted bool | previous Option<NodeRef> | clock u64
//!  0x93  Pong                    node NodeRef
//!  0x94  LeavingReply            accepted bool
//!  0x95  Members                 nodes Vec<NodeRef> | more bool
//!  0x96  MemberEventsAck         applied u32
//!  0x97  LeaseReply              granted bool | holder Option<NodeRef> | fence u64 | clock u64
//!  0x98  ForgetReply             forgotten bool
//!  0xA0  TransferAck             transfer_id u64 | accepted bool
//!  0xA1  ReplicateAck            applied u32
//!  0xA2  SyncDigestsReply        differing Vec<u32>
//!  0xA3  SyncKeysReply           want Vec<Key> | newer Vec<Item> | truncated bool
//!  0xA4  CollectTombstonesReply  removed u32
//!  0xB0  Info                    node NodeRef | status NodeStatus | predecessor Option<NodeRef>
//!                                | successors Vec<NodeRef> | fingers Vec<NodeRef> | keys u64
//!                                | keeps_down_members bool
//!  0xB1  Stats                   counters Vec<Counter>
//!  0xFF  Error                   code ErrorCode | hops u16 | text String
//! ```
//!
//! # Example
//!
//! `GET "k"` with request id 7, not direct (23 bytes):
//!
//! ```text
//!  43 4B | 02 | 01 | 00 00 | 00 00 00 00 00 00 00 07 | 00 00 00 05 | 00 00 00 01 6B
//!  magic   ver  op   flags   request_id                payload_len   key len, "k"
//! ```
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use chordkv_protocol::{decode, Frame, Message};
//!
//! let frame = Frame::new(7, Message::Get { key: Bytes::from_static(b"k") });
//! let mut buf = BytesMut::from(&frame.to_bytes().unwrap()[..]);
//! assert_eq!(buf.len(), 23);
//! assert_eq!(decode(&mut buf).unwrap(), Some(frame));
//! assert!(buf.is_empty());
//! ```

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use bytes::{Bytes, BytesMut};

use crate::id::{Id, ID_BYTES};
use crate::message::{ErrorCode, Item, Lookup, MemberEvent, Message, NodeInfo, NodeRef, NodeStatus};

// --- header ------------------------------------------------------------------------------

/// Bytes in a frame header.
pub const HEADER_BYTES: usize = 18;
/// The first two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"CK";
/// The protocol version this build speaks (and the only one it accepts).
pub const VERSION: u8 = 2;
/// Header flag: a client operation must be served by the receiver itself or answered with
/// [`Message::Redirect`], never routed through the ring.
pub const FLAG_DIRECT: u16 = 1;
/// Header flag: a client operation sent to a replica because the key's primary did not
/// answer: the receiver may serve it as the new primary.
pub const FLAG_FAILOVER: u16 = 2;
/// Every flag bit this version knows; a frame with any other bit set is rejected.
/// Header flag: the payload starts with the request's deadline ([`Frame::deadline_ms`]). Set
/// by the encoder from the field, never by callers.
pub const FLAG_DEADLINE: u16 = 4;
pub const KNOWN_FLAGS: u16 = FLAG_DIRECT | FLAG_FAILOVER | FLAG_DEADLINE;
/// The flags a caller may set on a [`Frame`].
const CALLER_FLAGS: u16 = FLAG_DIRECT | FLAG_FAILOVER;
/// Set in the opcode of every reply and in no request's.
pub const REPLY_BIT: u8 = 0x80;

// --- limits ------------------------------------------------------------------------------

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 64 * 1024;
/// Longest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;
/// Longest payload (the bytes after the header) of one frame.
pub const MAX_FRAME_BYTES: usize = 32 * 1024 * 1024;
/// Longest error text or counter name, in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Most entries in one list (node refs, items, counters) of one message.
pub const MAX_LIST_LEN: usize = 65_536;

/// The opcode of every message; bit 7 ([`REPLY_BIT`]) marks replies.
pub mod opcode {
    pub const GET: u8 = 0x01;
    pub const PUT: u8 = 0x02;
    pub const DELETE: u8 = 0x03;
    pub const FIND_SUCCESSOR: u8 = 0x10;
    pub const GET_NEIGHBORS: u8 = 0x11;
    pub const NOTIFY: u8 = 0x12;
    pub const PING: u8 = 0x13;
    pub const LEAVING: u8 = 0x14;
    pub const GET_MEMBERS: u8 = 0x15;
    pub const MEMBER_EVENTS: u8 = 0x16;
    pub const LEASE: u8 = 0x17;
    pub const FORGET: u8 = 0x18;
    pub const TRANSFER: u8 = 0x20;
    pub const REPLICATE: u8 = 0x21;
    pub const SYNC_DIGESTS: u8 = 0x22;
    pub const SYNC_KEYS: u8 = 0x23;
    pub const COLLECT_TOMBSTONES: u8 = 0x24;
    pub const GET_INFO: u8 = 0x30;
    pub const GET_STATS: u8 = 0x31;

    pub const GET_REPLY: u8 = 0x81;
    pub const PUT_REPLY: u8 = 0x82;
    pub const DELETE_REPLY: u8 = 0x83;
    pub const REDIRECT: u8 = 0x84;
    pub const FIND_SUCCESSOR_REPLY: u8 = 0x90;
    pub const NEIGHBORS: u8 = 0x91;
    pub const NOTIFY_REPLY: u8 = 0x92;
    pub const PONG: u8 = 0x93;
    pub const LEAVING_REPLY: u8 = 0x94;
    pub const MEMBERS: u8 = 0x95;
    pub const MEMBER_EVENTS_ACK: u8 = 0x96;
    pub const LEASE_REPLY: u8 = 0x97;
    pub const FORGET_REPLY: u8 = 0x98;
    pub const TRANSFER_ACK: u8 = 0xA0;
    pub const REPLICATE_ACK: u8 = 0xA1;
    pub const SYNC_DIGESTS_REPLY: u8 = 0xA2;
    pub const SYNC_KEYS_REPLY: u8 = 0xA3;
    pub const COLLECT_TOMBSTONES_REPLY: u8 = 0xA4;
    pub const INFO: u8 = 0xB0;
    pub const STATS: u8 = 0xB1;
    pub const ERROR: u8 = 0xFF;

    /// Every opcode of this protocol version.
    pub const ALL: [u8; 40] = [
        GET,
        PUT,
        DELETE,
        FIND_SUCCESSOR,
        GET_NEIGHBORS,
        NOTIFY,
        PING,
        LEAVING,
        GET_MEMBERS,
        MEMBER_EVENTS,
        LEASE,
        FORGET,
        TRANSFER,
        REPLICATE,
        SYNC_DIGESTS,
        SYNC_KEYS,
        COLLECT_TOMBSTONES,
        GET_INFO,
        GET_STATS,
        GET_REPLY,
        PUT_REPLY,
        DELETE_REPLY,
        REDIRECT,
        FIND_SUCCESSOR_REPLY,
        NEIGHBORS,
        NOTIFY_REPLY,
        PONG,
        LEAVING_REPLY,
        MEMBERS,
        MEMBER_EVENTS_ACK,
        LEASE_REPLY,
        FORGET_REPLY,
        TRANSFER_ACK,
        REPLICATE_ACK,
        SYNC_DIGESTS_REPLY,
        SYNC_KEYS_REPLY,
        COLLECT_TOMBSTONES_REPLY,
        INFO,
        STATS,
        ERROR,
    ];

    /// Whether `op` is an opcode of this protocol version.
    #[inline]
    pub fn is_known(op: u8) -> bool {
        matches!(
            op,
            GET | PUT
                | DELETE
                | FIND_SUCCESSOR
                | GET_NEIGHBORS
                | NOTIFY
                | PING
                | LEAVING
                | GET_MEMBERS
                | MEMBER_EVENTS
                | LEASE
                | FORGET
                | TRANSFER
                | REPLICATE
                | SYNC_DIGESTS
                | SYNC_KEYS
                | COLLECT_TOMBSTONES
                | GET_INFO
                | GET_STATS
                | GET_REPLY
                | PUT_REPLY
                | DELETE_REPLY
                | REDIRECT
                | FIND_SUCCESSOR_REPLY
                | NEIGHBORS
                | NOTIFY_REPLY
                | PONG
                | LEAVING_REPLY
                | MEMBERS
                | MEMBER_EVENTS_ACK
                | LEASE_REPLY
                | FORGET_REPLY
                | TRANSFER_ACK
                | REPLICATE_ACK
                | SYNC_DIGESTS_REPLY
                | SYNC_KEYS_REPLY
                | COLLECT_TOMBSTONES_REPLY
                | INFO
                | STATS
                | ERROR
        )
    }
}

/// The opcode `msg` is sent with.
pub fn opcode_of(msg: &Message) -> u8 {
    use Message::*;
    match msg {
        Get { .. } => opcode::GET,
        Put { .. } => opcode::PUT,
        Delete { .. } => opcode::DELETE,
        GetReply { .. } => opcode::GET_REPLY,
        PutReply { .. } => opcode::PUT_REPLY,
        DeleteReply { .. } => opcode::DELETE_REPLY,
        Redirect { .. } => opcode::REDIRECT,
        Error { .. } => opcode::ERROR,
        FindSuccessor { .. } => opcode::FIND_SUCCESSOR,
        FindSuccessorReply { .. } => opcode::FIND_SUCCESSOR_REPLY,
        GetNeighbors => opcode::GET_NEIGHBORS,
        Neighbors { .. } => opcode::NEIGHBORS,
        Notify { .. } => opcode::NOTIFY,
        NotifyReply { .. } => opcode::NOTIFY_REPLY,
        Ping => opcode::PING,
        Pong { .. } => opcode::PONG,
        Leaving { .. } => opcode::LEAVING,
        LeavingReply { .. } => opcode::LEAVING_REPLY,
        GetMembers { .. } => opcode::GET_MEMBERS,
        Members { .. } => opcode::MEMBERS,
        MemberEvents { .. } => opcode::MEMBER_EVENTS,
        MemberEventsAck { .. } => opcode::MEMBER_EVENTS_ACK,
        Lease { .. } => opcode::LEASE,
        LeaseReply { .. } => opcode::LEASE_REPLY,
        Forget { .. } => opcode::FORGET,
        ForgetReply { .. } => opcode::FORGET_REPLY,
        Transfer { .. } => opcode::TRANSFER,
        TransferAck { .. } => opcode::TRANSFER_ACK,
        Replicate { .. } => opcode::REPLICATE,
        ReplicateAck { .. } => opcode::REPLICATE_ACK,
        SyncDigests { .. } => opcode::SYNC_DIGESTS,
        SyncDigestsReply { .. } => opcode::SYNC_DIGESTS_REPLY,
        SyncKeys { .. } => opcode::SYNC_KEYS,
        SyncKeysReply { .. } => opcode::SYNC_KEYS_REPLY,
        CollectTombstones { .. } => opcode::COLLECT_TOMBSTONES,
        CollectTombstonesReply { .. } => opcode::COLLECT_TOMBSTONES_REPLY,
        GetInfo => opcode::GET_INFO,
        Info(_) => opcode::INFO,
        GetStats => opcode::GET_STATS,
        Stats { .. } => opcode::STATS,
    }
}

// --- errors ------------------------------------------------------------------------------

/// Why bytes could not be decoded into a [`Frame`].
///
/// Every error but [`DecodeError::Incomplete`] means the peer is not speaking this protocol
/// correctly; the connection should be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// More bytes are needed. [`decode`] never returns this (it answers `Ok(None)`);
    /// [`decode_frame`] does when handed less than a whole frame.
    #[error("incomplete frame: more bytes are needed")]
    Incomplete,
    /// The frame does not start with [`MAGIC`].
    #[error("bad magic: not a chordkv frame")]
    BadMagic,
    /// The header names a protocol version other than [`VERSION`].
    #[error("unsupported protocol version {0} (this build speaks version {VERSION})")]
    UnsupportedVersion(u8),
    /// The header's opcode is not one of this version's.
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    /// The header sets a flag bit outside [`KNOWN_FLAGS`].
    #[error("unknown flag bits in {0:#06x}")]
    UnknownFlags(u16),
    /// The header's payload length is over [`MAX_FRAME_BYTES`].
    #[error("frame payload of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge { len: usize, max: usize },
    /// A key, value, text or list length is over its maximum.
    #[error("{field} length {len} exceeds the maximum of {max}")]
    FieldTooLarge {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// A complete frame whose payload is not a valid message: a bad bool, option, address,
    /// lookup, error code or status tag, invalid UTF-8, or a field running past the payload.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// This many bytes are left over: after the message inside the payload, or (for
    /// [`decode_frame`]) after the frame its header announces.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
}

/// Why a [`Frame`] could not be encoded. On error nothing is written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A key, value, text, list or the whole payload is over its maximum.
    #[error("{field} length {len} exceeds the maximum of {max}")]
    TooLarge {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// [`Frame::flags`] sets a bit outside [`KNOWN_FLAGS`] (the peer would reject the frame).
    #[error("unknown flag bits in {0:#06x}")]
    UnknownFlags(u16),
}

type DResult<T> = Result<T, DecodeError>;
type EResult<T> = Result<T, EncodeError>;

// --- frame -------------------------------------------------------------------------------

/// One message with its header fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Chosen by the requester; a reply carries the id of the request it answers.
    pub request_id: u64,
    /// Header flags: [`FLAG_DIRECT`] and [`FLAG_FAILOVER`] (the encoder sets [`FLAG_DEADLINE`]
    /// itself from `deadline_ms`).
    pub flags: u16,
    /// The time after which the receiver must not start this request (milliseconds on the
    /// sender's clock, wall time since the Unix epoch); 0 for none.
    pub deadline_ms: u64,
    pub message: Message,
}

impl Frame {
    /// A frame without flags.
    pub fn new(request_id: u64, message: Message) -> Frame {
        Frame {
            request_id,
            flags: 0,
            deadline_ms: 0,
            message,
        }
    }

    /// A frame with [`FLAG_DIRECT`]: serve it here or answer `Redirect`.
    pub fn direct(request_id: u64, message: Message) -> Frame {
        Frame {
            request_id,
            flags: FLAG_DIRECT,
            deadline_ms: 0,
            message,
        }
    }

    /// This frame with a deadline (see [`Frame::deadline_ms`]).
    pub fn with_deadline(mut self, deadline_ms: u64) -> Frame {
        self.deadline_ms = deadline_ms;
        self
    }

    /// The header flags on the wire.
    fn wire_flags(&self) -> u16 {
        if self.deadline_ms != 0 {
            self.flags | FLAG_DEADLINE
        } else {
            self.flags
        }
    }

    /// Whether [`FLAG_DIRECT`] is set.
    pub fn is_direct(&self) -> bool {
        self.flags & FLAG_DIRECT != 0
    }

    /// Whether [`FLAG_FAILOVER`] is set.
    pub fn is_failover(&self) -> bool {
        self.flags & FLAG_FAILOVER != 0
    }

    /// The frame's size on the wire (header + payload), checking every limit.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        if self.flags & !CALLER_FLAGS != 0 {
            return Err(EncodeError::UnknownFlags(self.flags));
        }
        let deadline = if self.deadline_ms != 0 { 8 } else { 0 };
        let payload = deadline + payload_len(&self.message)?;
        if payload > MAX_FRAME_BYTES {
            return Err(EncodeError::TooLarge {
                field: "frame payload",
                len: payload,
                max: MAX_FRAME_BYTES,
            });
        }
        Ok(HEADER_BYTES + payload)
    }

    /// Appends the encoded frame to `out`, reserving its exact size once. On error `out` is
    /// left as it was.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let total = self.encoded_len()?;
        let payload = total - HEADER_BYTES;
        out.reserve(total);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(opcode_of(&self.message));
        out.extend_from_slice(&self.wire_flags().to_be_bytes());
        out.extend_from_slice(&self.request_id.to_be_bytes());
        // `payload <= MAX_FRAME_BYTES < u32::MAX`, checked by `encoded_len`.
        out.extend_from_slice(&(payload as u32).to_be_bytes());
        if self.deadline_ms != 0 {
            put_u64(out, self.deadline_ms);
        }
        #[cfg(debug_assertions)]
        let start = out.len() - if self.deadline_ms != 0 { 8 } else { 0 };
        write_payload(&self.message, out);
        #[cfg(debug_assertions)]
        debug_assert_eq!(
            out.len() - start,
            payload,
            "payload_len disagrees with write_payload"
        );
        Ok(())
    }

    /// The encoded frame in a new buffer of exactly its size.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }
}

// --- encoding ----------------------------------------------------------------------------

const ADDR_V4_BYTES: usize = 1 + 4 + 2;
const ADDR_V6_BYTES: usize = 1 + 16 + 2;
const NODE_REF_MIN_BYTES: usize = ID_BYTES + ADDR_V4_BYTES;
const ITEM_MIN_BYTES: usize = 4 + 8 + 1;
const KEY_VERSION_MIN_BYTES: usize = 4 + 8;
const KEY_MIN_BYTES: usize = 4;
const COUNTER_MIN_BYTES: usize = 4 + 8;
const MEMBER_EVENT_BYTES_MIN: usize = NODE_REF_MIN_BYTES + 1 + 8;

const ADDR_TAG_V4: u8 = 4;
const ADDR_TAG_V6: u8 = 6;
const LOOKUP_FOUND: u8 = 1;
const LOOKUP_CLOSER: u8 = 2;

#[inline]
fn limit(field: &'static str, len: usize, max: usize) -> EResult<()> {
    if len > max {
        Err(EncodeError::TooLarge { field, len, max })
    } else {
        Ok(())
    }
}

#[inline]
fn addr_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => ADDR_V4_BYTES,
        SocketAddr::V6(_) => ADDR_V6_BYTES,
    }
}

#[inline]
fn node_len(node: &NodeRef) -> usize {
    ID_BYTES + addr_len(&node.addr)
}

#[inline]
fn opt_node_len(node: &Option<NodeRef>) -> usize {
    1 + node.as_ref().map_or(0, node_len)
}

fn nodes_len(field: &'static str, nodes: &[NodeRef]) -> EResult<usize> {
    limit(field, nodes.len(), MAX_LIST_LEN)?;
    // At most 65_536 x 39 bytes: no overflow.
    Ok(4 + nodes.iter().map(node_len).sum::<usize>())
}

#[inline]
fn key_len(key: &[u8]) -> EResult<usize> {
    limit("key", key.len(), MAX_KEY_BYTES)?;
    Ok(4 + key.len())
}

#[inline]
fn value_len(value: &[u8]) -> EResult<usize> {
    limit("value", value.len(), MAX_VALUE_BYTES)?;
    Ok(4 + value.len())
}

#[inline]
fn opt_value_len(value: &Option<Bytes>) -> EResult<usize> {
    Ok(1 + match value {
        Some(v) => value_len(v)?,
        None => 0,
    })
}

#[inline]
fn text_len(field: &'static str, text: &str) -> EResult<usize> {
    limit(field, text.len(), MAX_TEXT_BYTES)?;
    Ok(4 + text.len())
}

fn items_len(field: &'static str, items: &[Item]) -> EResult<usize> {
    limit(field, items.len(), MAX_LIST_LEN)?;
    let mut len = 4usize;
    for item in items {
        // Saturating: 65_536 items of 16 MiB overflow a 32-bit usize.
        len = len.saturating_add(key_len(&item.key)? + 8 + opt_value_len(&item.value)?);
    }
    Ok(len)
}

fn lookup_len(lookup: &Lookup) -> EResult<usize> {
    Ok(1 + match lookup {
        Lookup::Found {
            predecessor,
            successors,
            ..
        } => opt_node_len(predecessor) + nodes_len("successors", successors)? + 8,
        Lookup::Closer { node } => node_len(node),
    })
}

/// The payload's size, checking every field limit (but not the frame limit).
fn payload_len(msg: &Message) -> EResult<usize> {
    use Message::*;
    Ok(match msg {
        Get { key } | Delete { key } => key_len(key)?,
        Put { key, value } => key_len(key)? + value_len(value)?,
        GetReply { value, .. } => 2 + 8 + opt_value_len(value)?,
        PutReply { .. } => 2 + 8,
        DeleteReply { .. } => 2 + 8 + 1,
        Redirect { node, .. } => 2 + node_len(node) + 1,
        Error { text, .. } => 2 + 2 + text_len("error text", text)?,
        FindSuccessor { .. } => ID_BYTES,
        FindSuccessorReply { lookup } => lookup_len(lookup)?,
        GetNeighbors | Ping | GetInfo | GetStats => 0,
        Neighbors {
            predecessors,
            successors,
            gone,
            ..
        } => {
            nodes_len("predecessors", predecessors)?
                + nodes_len("successors", successors)?
                + 8
                + nodes_len("gone", gone)?
        }
        Notify { node, .. } => node_len(node) + 8 + 1,
        Pong { node } | Forget { node } => node_len(node),
        Lease { primary, holder, .. } => node_len(primary) + ID_BYTES + node_len(holder),
        LeaseReply { holder, .. } => 1 + opt_node_len(holder) + 8 + 8,
        ForgetReply { .. } => 1,
        NotifyReply { previous, .. } => 1 + opt_node_len(previous) + 8,
        Leaving {
            node,
            predecessor,
            successors,
            gone,
            ..
        } => {
            node_len(node)
                + opt_node_len(predecessor)
                + nodes_len("successors", successors)?
                + 8
                + nodes_len("gone", gone)?
        }
        LeavingReply { .. } => 1,
        GetMembers { .. } => ID_BYTES,
        Members { nodes, .. } => nodes_len("nodes", nodes)? + 1,
        MemberEvents { events, .. } => {
            limit("events", events.len(), MAX_LIST_LEN)?;
            let mut len = ID_BYTES + 4;
            for e in events {
                len += node_len(&e.node) + 1 + 8;
            }
            len
        }
        MemberEventsAck { .. } => 4,
        Transfer { items, .. } => {
            (8 + ID_BYTES + ID_BYTES + 1 + 8).saturating_add(items_len("items", items)?)
        }
        TransferAck { .. } => 8 + 1,
        Replicate { items } => items_len("items", items)?,
        ReplicateAck { .. } | CollectTombstonesReply { .. } => 4,
        SyncDigests { digests, .. } => {
            limit("digests", digests.len(), MAX_LIST_LEN)?;
            ID_BYTES + ID_BYTES + 4 + 8 * digests.len()
        }
        SyncDigestsReply { differing } => {
            limit("differing", differing.len(), MAX_LIST_LEN)?;
            4 + 4 * differing.len()
        }
        SyncKeys { keys, .. } => {
            limit("keys", keys.len(), MAX_LIST_LEN)?;
            let mut len = ID_BYTES + ID_BYTES + 4;
            for (key, _) in keys {
                // At most 65_536 x (4 + 64 KiB + 8): saturating for a 32-bit usize.
                len = len.saturating_add(key_len(key)? + 8);
            }
            len
        }
        SyncKeysReply { want, newer, .. } => {
            limit("want", want.len(), MAX_LIST_LEN)?;
            let mut len = 4usize;
            for key in want {
                len = len.saturating_add(key_len(key)?);
            }
            len.saturating_add(items_len("newer", newer)?).saturating_add(1)
        }
        CollectTombstones { .. } => ID_BYTES + ID_BYTES + 8,
        Info(info) => {
            node_len(&info.node)
                + 1
                + opt_node_len(&info.predecessor)
                + nodes_len("successors", &info.successors)?
                + nodes_len("fingers", &info.fingers)?
                + 8
                + 1
        }
        Stats { counters } => {
            limit("counters", counters.len(), MAX_LIST_LEN)?;
            let mut len = 4usize;
            for (name, _) in counters {
                len = len.saturating_add(text_len("counter name", name)? + 8);
            }
            len
        }
    })
}

#[inline]
fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

#[inline]
fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

#[inline]
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

#[inline]
fn put_bool(out: &mut Vec<u8>, v: bool) {
    out.push(v as u8);
}

#[inline]
fn put_id(out: &mut Vec<u8>, id: &Id) {
    out.extend_from_slice(&id.0);
}

/// A length already checked against a limit well under `u32::MAX`.
#[inline]
fn put_len(out: &mut Vec<u8>, len: usize) {
    put_u32(out, len as u32);
}

#[inline]
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

fn put_opt_bytes(out: &mut Vec<u8>, bytes: &Option<Bytes>) {
    match bytes {
        Some(b) => {
            out.push(1);
            put_bytes(out, b);
        }
        None => out.push(0),
    }
}

fn put_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            out.push(ADDR_TAG_V4);
            out.extend_from_slice(&a.ip().octets());
            put_u16(out, a.port());
        }
        SocketAddr::V6(a) => {
            out.push(ADDR_TAG_V6);
            out.extend_from_slice(&a.ip().octets());
            put_u16(out, a.port());
        }
    }
}

fn put_node(out: &mut Vec<u8>, node: &NodeRef) {
    put_id(out, &node.id);
    put_addr(out, &node.addr);
}

fn put_opt_node(out: &mut Vec<u8>, node: &Option<NodeRef>) {
    match node {
        Some(n) => {
            out.push(1);
            put_node(out, n);
        }
        None => out.push(0),
    }
}

fn put_items(out: &mut Vec<u8>, items: &[Item]) {
    put_len(out, items.len());
    for item in items {
        put_bytes(out, &item.key);
        put_u64(out, item.version);
        put_opt_bytes(out, &item.value);
    }
}

fn put_nodes(out: &mut Vec<u8>, nodes: &[NodeRef]) {
    put_len(out, nodes.len());
    for n in nodes {
        put_node(out, n);
    }
}

/// Writes the payload; every limit was checked by [`payload_len`].
fn write_payload(msg: &Message, out: &mut Vec<u8>) {
    use Message::*;
    match msg {
        Get { key } | Delete { key } => put_bytes(out, key),
        Put { key, value } => {
            put_bytes(out, key);
            put_bytes(out, value);
        }
        GetReply { hops, version, value } => {
            put_u16(out, *hops);
            put_u64(out, *version);
            put_opt_bytes(out, value);
        }
        PutReply { hops, version } => {
            put_u16(out, *hops);
            put_u64(out, *version);
        }
        DeleteReply {
            hops,
            version,
            existed,
        } => {
            put_u16(out, *hops);
            put_u64(out, *version);
            put_bool(out, *existed);
        }
        Redirect { hops, node, exact } => {
            put_u16(out, *hops);
            put_node(out, node);
            put_bool(out, *exact);
        }
        Error { code, hops, text } => {
            put_u16(out, *code as u16);
            put_u16(out, *hops);
            put_bytes(out, text.as_bytes());
        }
        FindSuccessor { id } => put_id(out, id),
        FindSuccessorReply { lookup } => match lookup {
            Lookup::Found {
                predecessor,
                successors,
                down,
            } => {
                out.push(LOOKUP_FOUND);
                put_opt_node(out, predecessor);
                put_nodes(out, successors);
                put_u64(out, *down);
            }
            Lookup::Closer { node } => {
                out.push(LOOKUP_CLOSER);
                put_node(out, node);
            }
        },
        GetNeighbors | Ping | GetInfo | GetStats => {}
        Neighbors {
            predecessors,
            successors,
            down,
            gone,
        } => {
            put_nodes(out, predecessors);
            put_nodes(out, successors);
            put_u64(out, *down);
            put_nodes(out, gone);
        }
        Notify {
            node,
            incarnation,
            active,
        } => {
            put_node(out, node);
            put_u64(out, *incarnation);
            put_bool(out, *active);
        }
        Pong { node } | Forget { node } => put_node(out, node),
        Lease {
            primary,
            start,
            holder,
        } => {
            put_node(out, primary);
            put_id(out, start);
            put_node(out, holder);
        }
        LeaseReply {
            granted,
            holder,
            fence,
            clock,
        } => {
            put_bool(out, *granted);
            put_opt_node(out, holder);
            put_u64(out, *fence);
            put_u64(out, *clock);
        }
        ForgetReply { forgotten } => put_bool(out, *forgotten),
        NotifyReply {
            accepted,
            previous,
            clock,
        } => {
            put_bool(out, *accepted);
            put_opt_node(out, previous);
            put_u64(out, *clock);
        }
        Leaving {
            node,
            predecessor,
            successors,
            clock,
            gone,
        } => {
            put_node(out, node);
            put_opt_node(out, predecessor);
            put_nodes(out, successors);
            put_u64(out, *clock);
            put_nodes(out, gone);
        }
        LeavingReply { accepted } => put_bool(out, *accepted),
        GetMembers { after } => put_id(out, after),
        Members { nodes, more } => {
            put_nodes(out, nodes);
            put_bool(out, *more);
        }
        MemberEvents { limit, events } => {
            put_id(out, limit);
            put_len(out, events.len());
            for e in events {
                put_node(out, &e.node);
                put_bool(out, e.alive);
                put_u64(out, e.stamp);
            }
        }
        Transfer {
            transfer_id,
            start,
            end,
            items,
            last,
            clock,
        } => {
            put_u64(out, *transfer_id);
            put_id(out, start);
            put_id(out, end);
            put_items(out, items);
            put_bool(out, *last);
            put_u64(out, *clock);
        }
        TransferAck {
            transfer_id,
            accepted,
        } => {
            put_u64(out, *transfer_id);
            put_bool(out, *accepted);
        }
        Replicate { items } => put_items(out, items),
        ReplicateAck { applied: n }
        | CollectTombstonesReply { removed: n }
        | MemberEventsAck { applied: n } => put_u32(out, *n),
        SyncDigests { start, end, digests } => {
            put_id(out, start);
            put_id(out, end);
            put_len(out, digests.len());
            for d in digests {
                put_u64(out, *d);
            }
        }
        SyncDigestsReply { differing } => {
            put_len(out, differing.len());
            for i in differing {
                put_u32(out, *i);
            }
        }
        SyncKeys { start, end, keys } => {
            put_id(out, start);
            put_id(out, end);
            put_len(out, keys.len());
            for (key, version) in keys {
                put_bytes(out, key);
                put_u64(out, *version);
            }
        }
        SyncKeysReply {
            want,
            newer,
            truncated,
        } => {
            put_len(out, want.len());
            for key in want {
                put_bytes(out, key);
            }
            put_items(out, newer);
            put_bool(out, *truncated);
        }
        CollectTombstones { start, end, before } => {
            put_id(out, start);
            put_id(out, end);
            put_u64(out, *before);
        }
        Info(info) => {
            put_node(out, &info.node);
            out.push(info.status as u8);
            put_opt_node(out, &info.predecessor);
            put_nodes(out, &info.successors);
            put_nodes(out, &info.fingers);
            put_u64(out, info.keys);
            put_bool(out, info.keeps_down_members);
        }
        Stats { counters } => {
            put_len(out, counters.len());
            for (name, value) in counters {
                put_bytes(out, name.as_bytes());
                put_u64(out, *value);
            }
        }
    }
}

// --- decoding: header --------------------------------------------------------------------

/// A validated header.
#[derive(Clone, Copy, Debug)]
struct Header {
    opcode: u8,
    flags: u16,
    request_id: u64,
    /// `<= MAX_FRAME_BYTES`.
    payload_len: usize,
}

impl Header {
    #[inline]
    fn frame_len(&self) -> usize {
        // Cannot overflow: payload_len <= MAX_FRAME_BYTES.
        HEADER_BYTES + self.payload_len
    }
}

#[inline]
fn check_flags(flags: u16) -> DResult<()> {
    if flags & !KNOWN_FLAGS != 0 {
        Err(DecodeError::UnknownFlags(flags))
    } else {
        Ok(())
    }
}

/// Validates the header fields present in a buffer shorter than a header, so that garbage is
/// rejected as soon as its first byte arrives.
fn check_partial_header(buf: &[u8]) -> DResult<()> {
    if buf.iter().zip(MAGIC.iter()).any(|(a, b)| a != b) {
        return Err(DecodeError::BadMagic);
    }
    if let Some(&version) = buf.get(2) {
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
    }
    if let Some(&op) = buf.get(3) {
        if !opcode::is_known(op) {
            return Err(DecodeError::UnknownOpcode(op));
        }
    }
    if let Some(&[hi, lo]) = buf.get(4..6) {
        check_flags(u16::from_be_bytes([hi, lo]))?;
    }
    Ok(())
}

/// Parses and validates the header at the front of `buf`; `Ok(None)` when fewer than
/// [`HEADER_BYTES`] are buffered and those that are are valid so far.
#[inline(always)]
fn parse_header(buf: &[u8]) -> DResult<Option<Header>> {
    let Some(h) = buf.first_chunk::<HEADER_BYTES>() else {
        check_partial_header(buf)?;
        return Ok(None);
    };
    if h[0] != MAGIC[0] || h[1] != MAGIC[1] {
        return Err(DecodeError::BadMagic);
    }
    if h[2] != VERSION {
        return Err(DecodeError::UnsupportedVersion(h[2]));
    }
    let opcode = h[3];
    if !opcode::is_known(opcode) {
        return Err(DecodeError::UnknownOpcode(opcode));
    }
    let flags = u16::from_be_bytes([h[4], h[5]]);
    check_flags(flags)?;
    let request_id = u64::from_be_bytes([h[6], h[7], h[8], h[9], h[10], h[11], h[12], h[13]]);
    let len = u32::from_be_bytes([h[14], h[15], h[16], h[17]]);
    let payload_len = match usize::try_from(len) {
        Ok(len) if len <= MAX_FRAME_BYTES => len,
        _ => {
            return Err(DecodeError::FrameTooLarge {
                len: len as usize,
                max: MAX_FRAME_BYTES,
            })
        }
    };
    Ok(Some(Header {
        opcode,
        flags,
        request_id,
        payload_len,
    }))
}

/// Is a whole frame buffered at the front of `buf`?
///
/// `Ok(None)`: more bytes are needed. `Ok(Some(n))`: the first `n` bytes (header + payload)
/// are one frame. Validates magic, version, opcode, flags and the payload length against
/// [`MAX_FRAME_BYTES`] from the header alone (as much of it as is buffered); does not look at
/// the payload and does not allocate.
pub fn check(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    Ok(parse_header(buf)?
        .map(|h| h.frame_len())
        .filter(|&n| buf.len() >= n))
}

/// Decodes one frame from the front of `buf`.
///
/// `Ok(None)` when more bytes are needed: `buf` is left as it was, and once the header is
/// buffered enough room is reserved for the rest of the frame. `Ok(Some(frame))` removes the
/// frame's bytes from `buf`; its keys and values share `buf`'s allocation.
///
/// On an error in the header `buf` is left as it was. On an error in the payload of a
/// complete frame the frame's bytes have been removed. Either way the peer is broken and the
/// connection should be closed.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
    let Some(header) = parse_header(buf)? else {
        return Ok(None);
    };
    let total = header.frame_len();
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let frame = buf.split_to(total).freeze();
    parse_payload(header, frame, Some)
}

/// Decodes exactly one whole frame (header + payload).
///
/// Keys and values are zero-copy slices of `frame`. [`DecodeError::Incomplete`] when `frame`
/// is shorter than the frame its header announces; [`DecodeError::TrailingBytes`] when it is
/// longer, or when the message ends before the payload does.
pub fn decode_frame(frame: Bytes) -> Result<Frame, DecodeError> {
    let Some(header) = parse_header(&frame)? else {
        return Err(DecodeError::Incomplete);
    };
    let total = header.frame_len();
    if frame.len() < total {
        return Err(DecodeError::Incomplete);
    }
    if frame.len() > total {
        return Err(DecodeError::TrailingBytes(frame.len() - total));
    }
    parse_payload(header, frame, |f| f)
}

// --- decoding: payload -------------------------------------------------------------------

const TRUNCATED: DecodeError = DecodeError::Malformed("a field runs past the end of the payload");

/// A cursor over one whole frame; `pos` starts after the header and never passes the end.
struct Reader<'a> {
    frame: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    fn remaining(&self) -> usize {
        self.frame.len().saturating_sub(self.pos)
    }

    #[inline]
    fn take(&mut self, n: usize) -> DResult<&'a [u8]> {
        let frame: &'a [u8] = self.frame;
        let end = self.pos.checked_add(n).ok_or(TRUNCATED)?;
        let bytes = frame.get(self.pos..end).ok_or(TRUNCATED)?;
        self.pos = end;
        Ok(bytes)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> DResult<[u8; N]> {
        let frame: &'a [u8] = self.frame;
        let rest = frame.get(self.pos..).ok_or(TRUNCATED)?;
        let (head, _) = rest.split_first_chunk::<N>().ok_or(TRUNCATED)?;
        self.pos += N;
        Ok(*head)
    }

    #[inline]
    fn u8(&mut self) -> DResult<u8> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    #[inline]
    fn u16(&mut self) -> DResult<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    #[inline]
    fn u32(&mut self) -> DResult<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    #[inline]
    fn u64(&mut self) -> DResult<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    #[inline]
    fn bool(&mut self) -> DResult<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Malformed("bool is neither 0 nor 1")),
        }
    }

    /// An `Option` tag: whether a value follows.
    #[inline]
    fn some(&mut self) -> DResult<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Malformed("option tag is neither 0 nor 1")),
        }
    }

    #[inline]
    fn id(&mut self) -> DResult<Id> {
        Ok(Id(self.array()?))
    }

    /// A length prefix, checked against `max` and against the bytes left.
    #[inline]
    fn len(&mut self, field: &'static str, max: usize) -> DResult<usize> {
        let len = self.u32()?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > max {
            return Err(DecodeError::FieldTooLarge { field, len, max });
        }
        if len > self.remaining() {
            return Err(TRUNCATED);
        }
        Ok(len)
    }

    /// A list count, checked against [`MAX_LIST_LEN`] and against the bytes left given the
    /// smallest encoding of one element, so that the `Vec` it sizes is bounded by the frame.
    #[inline]
    fn count(&mut self, field: &'static str, min_element_bytes: usize) -> DResult<usize> {
        let count = self.u32()?;
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        if count > MAX_LIST_LEN {
            return Err(DecodeError::FieldTooLarge {
                field,
                len: count,
                max: MAX_LIST_LEN,
            });
        }
        if count.saturating_mul(min_element_bytes) > self.remaining() {
            return Err(TRUNCATED);
        }
        Ok(count)
    }

    /// A length-prefixed byte string, as a zero-copy slice of the frame.
    #[inline]
    fn bytes(&mut self, field: &'static str, max: usize) -> DResult<Bytes> {
        let len = self.len(field, max)?;
        let start = self.pos;
        self.take(len)?;
        Ok(self.frame.slice(start..start + len))
    }

    #[inline]
    fn key(&mut self) -> DResult<Bytes> {
        self.bytes("key", MAX_KEY_BYTES)
    }

    #[inline]
    fn value(&mut self) -> DResult<Bytes> {
        self.bytes("value", MAX_VALUE_BYTES)
    }

    fn opt_value(&mut self) -> DResult<Option<Bytes>> {
        Ok(if self.some()? { Some(self.value()?) } else { None })
    }

    fn text(&mut self, field: &'static str) -> DResult<String> {
        let len = self.len(field, MAX_TEXT_BYTES)?;
        let bytes = self.take(len)?;
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::Malformed("text is not UTF-8"))?;
        Ok(text.to_owned())
    }

    fn addr(&mut self) -> DResult<SocketAddr> {
        match self.u8()? {
            ADDR_TAG_V4 => {
                let ip = Ipv4Addr::from(self.array::<4>()?);
                Ok(SocketAddr::V4(SocketAddrV4::new(ip, self.u16()?)))
            }
            ADDR_TAG_V6 => {
                let ip = Ipv6Addr::from(self.array::<16>()?);
                Ok(SocketAddr::V6(SocketAddrV6::new(ip, self.u16()?, 0, 0)))
            }
            _ => Err(DecodeError::Malformed("address tag is neither 4 nor 6")),
        }
    }

    fn node(&mut self) -> DResult<NodeRef> {
        let id = self.id()?;
        let addr = self.addr()?;
        Ok(NodeRef { id, addr })
    }

    fn opt_node(&mut self) -> DResult<Option<NodeRef>> {
        Ok(if self.some()? { Some(self.node()?) } else { None })
    }

    fn nodes(&mut self, field: &'static str) -> DResult<Vec<NodeRef>> {
        let count = self.count(field, NODE_REF_MIN_BYTES)?;
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            nodes.push(self.node()?);
        }
        Ok(nodes)
    }

    fn item(&mut self) -> DResult<Item> {
        let key = self.key()?;
        let version = self.u64()?;
        let value = self.opt_value()?;
        Ok(Item { key, version, value })
    }

    fn items(&mut self, field: &'static str) -> DResult<Vec<Item>> {
        let count = self.count(field, ITEM_MIN_BYTES)?;
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(self.item()?);
        }
        Ok(items)
    }

    fn u64s(&mut self, field: &'static str) -> DResult<Vec<u64>> {
        let count = self.count(field, 8)?;
        let mut v = Vec::with_capacity(count);
        for _ in 0..count {
            v.push(self.u64()?);
        }
        Ok(v)
    }

    fn u32s(&mut self, field: &'static str) -> DResult<Vec<u32>> {
        let count = self.count(field, 4)?;
        let mut v = Vec::with_capacity(count);
        for _ in 0..count {
            v.push(self.u32()?);
        }
        Ok(v)
    }

    fn keys(&mut self, field: &'static str) -> DResult<Vec<Bytes>> {
        let count = self.count(field, KEY_MIN_BYTES)?;
        let mut keys = Vec::with_capacity(count);
        for _ in 0..count {
            keys.push(self.key()?);
        }
        Ok(keys)
    }

    fn key_versions(&mut self, field: &'static str) -> DResult<Vec<(Bytes, u64)>> {
        let count = self.count(field, KEY_VERSION_MIN_BYTES)?;
        let mut keys = Vec::with_capacity(count);
        for _ in 0..count {
            let key = self.key()?;
            let version = self.u64()?;
            keys.push((key, version));
        }
        Ok(keys)
    }

    fn counters(&mut self) -> DResult<Vec<(String, u64)>> {
        let count = self.count("counters", COUNTER_MIN_BYTES)?;
        let mut counters = Vec::with_capacity(count);
        for _ in 0..count {
            let name = self.text("counter name")?;
            let value = self.u64()?;
            counters.push((name, value));
        }
        Ok(counters)
    }

    fn lookup(&mut self) -> DResult<Lookup> {
        match self.u8()? {
            LOOKUP_FOUND => {
                let predecessor = self.opt_node()?;
                let successors = self.nodes("successors")?;
                let down = self.u64()?;
                Ok(Lookup::Found {
                    predecessor,
                    successors,
                    down,
                })
            }
            LOOKUP_CLOSER => Ok(Lookup::Closer { node: self.node()? }),
            _ => Err(DecodeError::Malformed("lookup tag is neither 1 nor 2")),
        }
    }

    fn member_events(&mut self) -> DResult<Vec<MemberEvent>> {
        let count = self.count("events", MEMBER_EVENT_BYTES_MIN)?;
        let mut events = Vec::with_capacity(count);
        for _ in 0..count {
            let node = self.node()?;
            let alive = self.bool()?;
            let stamp = self.u64()?;
            events.push(MemberEvent { node, alive, stamp });
        }
        Ok(events)
    }

    fn error_code(&mut self) -> DResult<ErrorCode> {
        ErrorCode::from_u16(self.u16()?).ok_or(DecodeError::Malformed("unknown error code"))
    }

    fn status(&mut self) -> DResult<NodeStatus> {
        NodeStatus::from_u8(self.u8()?).ok_or(DecodeError::Malformed("unknown node status"))
    }

    /// The frame whose header is `h`: the message for its opcode, fields read in their
    /// declaration order, then the check that nothing follows.
    ///
    /// Each arm reads its fields into locals and builds the [`Frame`] in the return value
    /// only after the trailing-bytes check: building a `Message` first and moving it into a
    /// `Frame` afterwards costs a copy of the whole (large) enum, a third of a GET's decode.
    ///
    /// `wrap` (`Some` or the identity) lets [`decode`] build its `Option<Frame>` in place too.
    #[inline(always)]
    fn frame<T>(&mut self, h: Header, wrap: impl FnOnce(Frame) -> T) -> DResult<T> {
        use Message::*;
        let deadline_ms = if h.flags & FLAG_DEADLINE != 0 {
            self.u64()?
        } else {
            0
        };
        macro_rules! done {
            ($message:expr) => {{
                let extra = self.remaining();
                if extra != 0 {
                    return Err(DecodeError::TrailingBytes(extra));
                }
                return Ok(wrap(Frame {
                    request_id: h.request_id,
                    flags: h.flags & !FLAG_DEADLINE,
                    deadline_ms,
                    message: $message,
                }));
            }};
        }
        match h.opcode {
            opcode::GET => {
                let key = self.key()?;
                done!(Get { key })
            }
            opcode::PUT => {
                let key = self.key()?;
                let value = self.value()?;
                done!(Put { key, value })
            }
            opcode::DELETE => {
                let key = self.key()?;
                done!(Delete { key })
            }
            opcode::GET_REPLY => {
                let hops = self.u16()?;
                let version = self.u64()?;
                let value = self.opt_value()?;
                done!(GetReply { hops, version, value })
            }
            opcode::PUT_REPLY => {
                let hops = self.u16()?;
                let version = self.u64()?;
                done!(PutReply { hops, version })
            }
            opcode::DELETE_REPLY => {
                let hops = self.u16()?;
                let version = self.u64()?;
                let existed = self.bool()?;
                done!(DeleteReply {
                    hops,
                    version,
                    existed
                })
            }
            opcode::REDIRECT => {
                let hops = self.u16()?;
                let node = self.node()?;
                let exact = self.bool()?;
                done!(Redirect { hops, node, exact })
            }
            opcode::ERROR => {
                let code = self.error_code()?;
                let hops = self.u16()?;
                let text = self.text("error text")?;
                done!(Error { code, hops, text })
            }
            opcode::FIND_SUCCESSOR => {
                let id = self.id()?;
                done!(FindSuccessor { id })
            }
            opcode::FIND_SUCCESSOR_REPLY => {
                let lookup = self.lookup()?;
                done!(FindSuccessorReply { lookup })
            }
            opcode::GET_NEIGHBORS => done!(GetNeighbors),
            opcode::NEIGHBORS => {
                let predecessors = self.nodes("predecessors")?;
                let successors = self.nodes("successors")?;
                let down = self.u64()?;
                let gone = self.nodes("gone")?;
                done!(Neighbors {
                    predecessors,
                    successors,
                    down,
                    gone
                })
            }
            opcode::NOTIFY => {
                let node = self.node()?;
                let incarnation = self.u64()?;
                let active = self.bool()?;
                done!(Notify {
                    node,
                    incarnation,
                    active
                })
            }
            opcode::LEASE => {
                let primary = self.node()?;
                let start = self.id()?;
                let holder = self.node()?;
                done!(Lease {
                    primary,
                    start,
                    holder
                })
            }
            opcode::LEASE_REPLY => {
                let granted = self.bool()?;
                let holder = self.opt_node()?;
                let fence = self.u64()?;
                let clock = self.u64()?;
                done!(LeaseReply {
                    granted,
                    holder,
                    fence,
                    clock
                })
            }
            opcode::FORGET => {
                let node = self.node()?;
                done!(Forget { node })
            }
            opcode::FORGET_REPLY => {
                let forgotten = self.bool()?;
                done!(ForgetReply { forgotten })
            }
            opcode::NOTIFY_REPLY => {
                let accepted = self.bool()?;
                let previous = self.opt_node()?;
                let clock = self.u64()?;
                done!(NotifyReply {
                    accepted,
                    previous,
                    clock
                })
            }
            opcode::PING => done!(Ping),
            opcode::PONG => {
                let node = self.node()?;
                done!(Pong { node })
            }
            opcode::LEAVING => {
                let node = self.node()?;
                let predecessor = self.opt_node()?;
                let successors = self.nodes("successors")?;
                let clock = self.u64()?;
                let gone = self.nodes("gone")?;
                done!(Leaving {
                    node,
                    predecessor,
                    successors,
                    clock,
                    gone
                })
            }
            opcode::LEAVING_REPLY => {
                let accepted = self.bool()?;
                done!(LeavingReply { accepted })
            }
            opcode::GET_MEMBERS => {
                let after = self.id()?;
                done!(GetMembers { after })
            }
            opcode::MEMBERS => {
                let nodes = self.nodes("nodes")?;
                let more = self.bool()?;
                done!(Members { nodes, more })
            }
            opcode::MEMBER_EVENTS => {
                let limit = self.id()?;
                let events = self.member_events()?;
                done!(MemberEvents { limit, events })
            }
            opcode::MEMBER_EVENTS_ACK => {
                let applied = self.u32()?;
                done!(MemberEventsAck { applied })
            }
            opcode::TRANSFER => {
                let transfer_id = self.u64()?;
                let start = self.id()?;
                let end = self.id()?;
                let items = self.items("items")?;
                let last = self.bool()?;
                let clock = self.u64()?;
                done!(Transfer {
                    transfer_id,
                    start,
                    end,
                    items,
                    last,
                    clock
                })
            }
            opcode::TRANSFER_ACK => {
                let transfer_id = self.u64()?;
                let accepted = self.bool()?;
                done!(TransferAck {
                    transfer_id,
                    accepted
                })
            }
            opcode::REPLICATE => {
                let items = self.items("items")?;
                done!(Replicate { items })
            }
            opcode::REPLICATE_ACK => {
                let applied = self.u32()?;
                done!(ReplicateAck { applied })
            }
            opcode::SYNC_DIGESTS => {
                let start = self.id()?;
                let end = self.id()?;
                let digests = self.u64s("digests")?;
                done!(SyncDigests { start, end, digests })
            }
            opcode::SYNC_DIGESTS_REPLY => {
                let differing = self.u32s("differing")?;
                done!(SyncDigestsReply { differing })
            }
            opcode::SYNC_KEYS => {
                let start = self.id()?;
                let end = self.id()?;
                let keys = self.key_versions("keys")?;
                done!(SyncKeys { start, end, keys })
            }
            opcode::SYNC_KEYS_REPLY => {
                let want = self.keys("want")?;
                let newer = self.items("newer")?;
                let truncated = self.bool()?;
                done!(SyncKeysReply {
                    want,
                    newer,
                    truncated
                })
            }
            opcode::COLLECT_TOMBSTONES => {
                let start = self.id()?;
                let end = self.id()?;
                let before = self.u64()?;
                done!(CollectTombstones { start, end, before })
            }
            opcode::COLLECT_TOMBSTONES_REPLY => {
                let removed = self.u32()?;
                done!(CollectTombstonesReply { removed })
            }
            opcode::GET_INFO => done!(GetInfo),
            opcode::INFO => {
                let node = self.node()?;
                let status = self.status()?;
                let predecessor = self.opt_node()?;
                let successors = self.nodes("successors")?;
                let fingers = self.nodes("fingers")?;
                let keys = self.u64()?;
                let keeps_down_members = self.bool()?;
                done!(Info(NodeInfo {
                    node,
                    status,
                    predecessor,
                    successors,
                    fingers,
                    keys,
                    keeps_down_members
                }))
            }
            opcode::GET_STATS => done!(GetStats),
            opcode::STATS => {
                let counters = self.counters()?;
                done!(Stats { counters })
            }
            other => Err(DecodeError::UnknownOpcode(other)),
        }
    }
}

/// Parses the payload of `frame`, which is exactly one whole frame whose header is `header`.
#[inline(always)]
fn parse_payload<T>(header: Header, frame: Bytes, wrap: impl FnOnce(Frame) -> T) -> DResult<T> {
    Reader {
        frame: &frame,
        pos: HEADER_BYTES,
    }
    .frame(header, wrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::collections::BTreeSet;

    // --- a per-thread allocation counter, to check "no allocation before the limits" -----

    struct CountingAllocator;

    thread_local! {
        static ALLOCATED: Cell<usize> = const { Cell::new(0) };
    }

    fn count(bytes: usize) {
        let _ = ALLOCATED.try_with(|a| a.set(a.get().saturating_add(bytes)));
    }

    unsafe impl GlobalAlloc for CountingAllocator {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count(layout.size());
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count(layout.size());
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count(new_size);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: CountingAllocator = CountingAllocator;

    /// Runs `f` and returns its result with the bytes this thread allocated meanwhile.
    fn allocated_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let before = ALLOCATED.with(Cell::get);
        let out = f();
        (out, ALLOCATED.with(Cell::get) - before)
    }

    // --- sample messages -----------------------------------------------------------------

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn v4(port: u16) -> NodeRef {
        NodeRef::from_addr(SocketAddr::from(([10, 1, 2, 3], port)))
    }

    fn v6(port: u16) -> NodeRef {
        NodeRef {
            id: Id::MAX,
            addr: SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), port)),
        }
    }

    fn info(
        status: NodeStatus,
        predecessor: Option<NodeRef>,
        successors: Vec<NodeRef>,
        fingers: Vec<NodeRef>,
    ) -> Message {
        Message::Info(NodeInfo {
            node: v4(7000),
            status,
            predecessor,
            successors,
            fingers,
            keys: 12_345,
            keeps_down_members: true,
        })
    }

    /// Every variant, with edge cases: empty keys and values, `None`s, IPv6, empty lists,
    /// extreme integers, every error code and node status.
    fn samples() -> Vec<Message> {
        use Message::*;
        let mut v = vec![
            Get { key: b("hello") },
            Get { key: Bytes::new() },
            Put {
                key: b("k"),
                value: b("a value"),
            },
            Put {
                key: Bytes::new(),
                value: Bytes::new(),
            },
            Delete { key: b("gone") },
            Delete { key: Bytes::new() },
            GetReply {
                hops: 3,
                version: 42,
                value: Some(b("v")),
            },
            GetReply {
                hops: 0,
                version: 0,
                value: None,
            },
            GetReply {
                hops: 1,
                version: 1,
                value: Some(Bytes::new()),
            },
            PutReply {
                hops: u16::MAX,
                version: u64::MAX,
            },
            DeleteReply {
                hops: 2,
                version: 9,
                existed: true,
            },
            DeleteReply {
                hops: 0,
                version: 0,
                existed: false,
            },
            Redirect {
                hops: 1,
                node: v6(9000),
                exact: true,
            },
            Redirect {
                hops: 0,
                node: v4(1),
                exact: false,
            },
            FindSuccessor { id: Id::hash(b"key") },
            FindSuccessor { id: Id::ZERO },
            FindSuccessorReply {
                lookup: Lookup::Found {
                    predecessor: None,
                    successors: vec![],
                    down: 0,
                },
            },
            FindSuccessorReply {
                lookup: Lookup::Found {
                    predecessor: Some(v6(9)),
                    successors: vec![v4(1), v6(2), v4(3)],
                    down: 0b101,
                },
            },
            GetMembers { after: Id::MAX },
            Members {
                nodes: vec![],
                more: false,
            },
            Members {
                nodes: vec![v4(1), v6(2)],
                more: true,
            },
            MemberEvents {
                limit: Id::ZERO,
                events: vec![],
            },
            MemberEvents {
                limit: Id::hash(b"x"),
                events: vec![
                    MemberEvent {
                        node: v4(4),
                        alive: true,
                        stamp: 17,
                    },
                    MemberEvent {
                        node: v6(5),
                        alive: false,
                        stamp: u64::MAX,
                    },
                ],
            },
            MemberEventsAck { applied: 3 },
            FindSuccessorReply {
                lookup: Lookup::Closer { node: v6(u16::MAX) },
            },
            GetNeighbors,
            Neighbors {
                predecessors: vec![],
                successors: vec![],
                down: 0,
                gone: vec![],
            },
            Neighbors {
                predecessors: vec![v6(5), v4(8)],
                successors: vec![v4(6), v6(7)],
                down: u64::MAX,
                gone: vec![v4(9)],
            },
            Notify {
                node: v4(0),
                incarnation: 3,
                active: true,
            },
            Lease {
                primary: v4(1),
                start: Id::hash(b"p"),
                holder: v6(2),
            },
            LeaseReply {
                granted: true,
                holder: None,
                fence: 0,
                clock: 9,
            },
            LeaseReply {
                granted: false,
                holder: Some(v4(3)),
                fence: u64::MAX,
                clock: 0,
            },
            Forget { node: v6(3) },
            ForgetReply { forgotten: true },
            NotifyReply {
                accepted: true,
                previous: Some(v6(1)),
                clock: 77,
            },
            NotifyReply {
                accepted: false,
                previous: None,
                clock: 0,
            },
            Ping,
            Pong { node: v6(4) },
            Leaving {
                node: v4(1),
                predecessor: None,
                successors: vec![],
                clock: 0,
                gone: vec![],
            },
            Leaving {
                node: v6(1),
                predecessor: Some(v4(2)),
                successors: vec![v4(3), v6(4)],
                clock: u64::MAX,
                gone: vec![v4(5)],
            },
            LeavingReply { accepted: true },
            LeavingReply { accepted: false },
            Transfer {
                transfer_id: 1,
                start: Id::ZERO,
                end: Id::MAX,
                items: vec![],
                last: true,
                clock: 5,
            },
            Transfer {
                transfer_id: u64::MAX,
                start: Id::from_u64(10),
                end: Id::from_u64(3),
                items: vec![
                    Item {
                        key: Bytes::new(),
                        version: 0,
                        value: None,
                    },
                    Item {
                        key: b("a"),
                        version: 7,
                        value: Some(b("alpha")),
                    },
                    Item {
                        key: b("b"),
                        version: 8,
                        value: Some(Bytes::new()),
                    },
                ],
                last: false,
                clock: 8,
            },
            TransferAck {
                transfer_id: 3,
                accepted: true,
            },
            TransferAck {
                transfer_id: 0,
                accepted: false,
            },
            Replicate { items: vec![] },
            Replicate {
                items: vec![
                    Item {
                        key: b("r"),
                        version: u64::MAX,
                        value: Some(b("replica")),
                    },
                    Item {
                        key: Bytes::new(),
                        version: 1,
                        value: None,
                    },
                ],
            },
            ReplicateAck { applied: 0 },
            ReplicateAck { applied: u32::MAX },
            SyncDigests {
                start: Id::ZERO,
                end: Id::MAX,
                digests: vec![],
            },
            SyncDigests {
                start: Id::from_u64(10),
                end: Id::from_u64(3),
                digests: vec![0, 1, u64::MAX, 0xDEAD_BEEF],
            },
            SyncDigestsReply { differing: vec![] },
            SyncDigestsReply {
                differing: vec![0, 3, u32::MAX],
            },
            SyncKeys {
                start: Id::ZERO,
                end: Id::ZERO,
                keys: vec![],
            },
            SyncKeys {
                start: Id::hash(b"a"),
                end: Id::hash(b"b"),
                keys: vec![(b("a"), 1), (Bytes::new(), 0), (b("zz"), u64::MAX)],
            },
            SyncKeysReply {
                truncated: false,
                want: vec![],
                newer: vec![],
            },
            SyncKeysReply {
                truncated: false,
                want: vec![b("a"), Bytes::new()],
                newer: vec![
                    Item {
                        key: b("n"),
                        version: 9,
                        value: Some(Bytes::new()),
                    },
                    Item {
                        key: b("t"),
                        version: 10,
                        value: None,
                    },
                ],
            },
            CollectTombstones {
                start: Id::ZERO,
                end: Id::MAX,
                before: 0,
            },
            CollectTombstones {
                start: Id::from_u64(1),
                end: Id::from_u64(2),
                before: u64::MAX,
            },
            CollectTombstonesReply { removed: 0 },
            CollectTombstonesReply { removed: 17 },
            GetInfo,
            info(NodeStatus::Joining, None, vec![], vec![]),
            info(NodeStatus::Active, Some(v6(1)), vec![v4(2), v4(3)], vec![v6(4)]),
            info(
                NodeStatus::Leaving,
                Some(v4(1)),
                vec![],
                vec![v4(5), v6(6), v4(7)],
            ),
            GetStats,
            Stats { counters: vec![] },
            Stats {
                counters: vec![
                    ("gets".into(), 1),
                    (String::new(), 0),
                    ("ünïcødé".into(), u64::MAX),
                ],
            },
        ];
        for code in (0..=20).filter_map(ErrorCode::from_u16) {
            v.push(Error {
                code,
                hops: code as u16,
                text: format!("{code:?} happened"),
            });
        }
        v.push(Error {
            code: ErrorCode::Internal,
            hops: 0,
            text: String::new(),
        });
        v
    }

    fn sample_frames() -> Vec<Frame> {
        samples()
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                if i % 3 == 0 {
                    Frame::direct(i as u64 * 1_000_003, m)
                } else if i % 5 == 1 {
                    Frame {
                        request_id: i as u64,
                        flags: FLAG_FAILOVER | (i as u16 & FLAG_DIRECT),
                        deadline_ms: i as u64 * 7,
                        message: m,
                    }
                } else {
                    Frame::new(!(i as u64), m)
                }
            })
            .collect()
    }

    /// A frame with an arbitrary header and payload; `payload_len` is the payload's length.
    fn raw(op: u8, flags: u16, request_id: u64, payload: &[u8]) -> Vec<u8> {
        raw_len(op, flags, request_id, payload.len() as u32, payload)
    }

    /// A frame whose header claims `payload_len`, followed by `payload`.
    fn raw_len(op: u8, flags: u16, request_id: u64, payload_len: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(op);
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&request_id.to_be_bytes());
        out.extend_from_slice(&payload_len.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn node_bytes(node: &NodeRef) -> Vec<u8> {
        let mut out = Vec::new();
        put_node(&mut out, node);
        out
    }

    fn df(bytes: &[u8]) -> DResult<Frame> {
        decode_frame(Bytes::copy_from_slice(bytes))
    }

    // --- round trips ---------------------------------------------------------------------

    #[test]
    fn every_sample_round_trips() {
        for frame in sample_frames() {
            let bytes = frame.to_bytes().unwrap();
            assert_eq!(bytes.len(), frame.encoded_len().unwrap(), "{frame:?}");
            assert_eq!(
                bytes.capacity(),
                bytes.len(),
                "to_bytes reserves exactly once: {frame:?}"
            );
            assert_eq!(bytes[3], opcode_of(&frame.message));
            assert_eq!(
                u32::from_be_bytes(bytes[14..18].try_into().unwrap()) as usize,
                bytes.len() - HEADER_BYTES
            );
            assert_eq!(check(&bytes), Ok(Some(bytes.len())));
            assert_eq!(df(&bytes).as_ref(), Ok(&frame));
            let mut buf = BytesMut::from(&bytes[..]);
            assert_eq!(decode(&mut buf), Ok(Some(frame.clone())));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn encode_appends_to_existing_bytes() {
        let frame = Frame::new(1, Message::Get { key: b("x") });
        let mut out = vec![9, 9, 9];
        frame.encode(&mut out).unwrap();
        assert_eq!(&out[..3], &[9, 9, 9]);
        assert_eq!(&out[3..], &frame.to_bytes().unwrap()[..]);
    }

    #[test]
    fn direct_flag() {
        let get = Message::Get { key: b("k") };
        assert!(!Frame::new(1, get.clone()).is_direct());
        let direct = Frame::direct(1, get);
        assert!(direct.is_direct());
        let bytes = direct.to_bytes().unwrap();
        assert_eq!(&bytes[4..6], &[0, 1]);
        assert!(df(&bytes).unwrap().is_direct());
    }

    #[test]
    fn failover_flag() {
        let put = Message::Put {
            key: b("k"),
            value: b("v"),
        };
        let plain = Frame::new(1, put.clone());
        assert!(!plain.is_failover());
        assert!(!Frame::direct(1, put.clone()).is_failover());
        let failover = Frame {
            request_id: 1,
            flags: FLAG_FAILOVER,
            deadline_ms: 0,
            message: put,
        };
        assert!(failover.is_failover() && !failover.is_direct());
        let bytes = failover.to_bytes().unwrap();
        assert_eq!(&bytes[4..6], &[0, 2]);
        assert_eq!(df(&bytes).as_ref(), Ok(&failover));
        let both = Frame {
            flags: FLAG_DIRECT | FLAG_FAILOVER,
            ..failover
        };
        let bytes = both.to_bytes().unwrap();
        assert_eq!(&bytes[4..6], &[0, 3]);
        let decoded = df(&bytes).unwrap();
        assert!(decoded.is_direct() && decoded.is_failover());
    }

    #[test]
    fn golden_get_bytes() {
        let bytes = Frame::new(7, Message::Get { key: b("k") }).to_bytes().unwrap();
        assert_eq!(
            bytes,
            [0x43, 0x4B, 2, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 5, 0, 0, 0, 1, b'k']
        );
    }

    #[test]
    fn golden_node_ref_bytes() {
        let id = Id::from_u64(0x0102);
        let v4 = NodeRef {
            id,
            addr: "1.2.3.4:258".parse().unwrap(),
        };
        let mut expect = id.0.to_vec();
        expect.extend_from_slice(&[4, 1, 2, 3, 4, 1, 2]);
        assert_eq!(node_bytes(&v4), expect);
        let v6 = NodeRef {
            id,
            addr: "[::1]:80".parse().unwrap(),
        };
        let mut expect = id.0.to_vec();
        expect.push(6);
        expect.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        expect.extend_from_slice(&[0, 80]);
        assert_eq!(node_bytes(&v6), expect);
    }

    #[test]
    fn ipv6_flowinfo_and_scope_are_dropped() {
        let addr = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 7000, 5, 9));
        let frame = Frame::new(
            1,
            Message::Pong {
                node: NodeRef { id: Id::ZERO, addr },
            },
        );
        let Message::Pong { node } = df(&frame.to_bytes().unwrap()).unwrap().message else {
            panic!()
        };
        assert_eq!(
            node.addr,
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 7000, 0, 0))
        );
    }

    #[test]
    fn every_opcode_is_sampled_and_replies_have_bit_7() {
        let sampled: BTreeSet<u8> = samples().iter().map(opcode_of).collect();
        assert_eq!(sampled, opcode::ALL.iter().copied().collect::<BTreeSet<u8>>());
        for op in 0..=255u8 {
            assert_eq!(opcode::is_known(op), opcode::ALL.contains(&op), "{op:#04x}");
        }
        let requests = [
            "GET",
            "PUT",
            "DELETE",
            "FIND_SUCCESSOR",
            "GET_NEIGHBORS",
            "NOTIFY",
            "PING",
            "LEAVING",
            "GET_MEMBERS",
            "MEMBER_EVENTS",
            "LEASE",
            "FORGET",
            "TRANSFER",
            "REPLICATE",
            "SYNC_DIGESTS",
            "SYNC_KEYS",
            "COLLECT_TOMBSTONES",
            "GET_INFO",
            "GET_STATS",
        ];
        for m in samples() {
            assert_eq!(m.is_reply(), !requests.contains(&m.name()), "{}", m.name());
        }
    }

    #[test]
    fn keys_and_values_are_zero_copy() {
        let frame = Frame::new(
            1,
            Message::Put {
                key: b("key"),
                value: b("value"),
            },
        );
        let bytes = Bytes::from(frame.to_bytes().unwrap());
        let range = bytes.as_ptr_range();
        let Message::Put { key, value } = decode_frame(bytes.clone()).unwrap().message else {
            panic!()
        };
        assert!(range.contains(&key.as_ptr()) && range.contains(&value.as_ptr()));
        assert_eq!((&key[..], &value[..]), (&b"key"[..], &b"value"[..]));
    }

    #[test]
    fn decoding_a_get_barely_allocates() {
        let bytes = Bytes::from(
            Frame::new(1, Message::Get { key: b("some-key") })
                .to_bytes()
                .unwrap(),
        );
        let (frame, allocated) = allocated_during(|| decode_frame(bytes));
        // At most the shared-buffer header `Bytes::slice` may create; never a key copy.
        assert!(allocated <= 64, "decoding a GET allocated {allocated} bytes");
        let frame = frame.unwrap();
        assert_eq!(frame.message.key().unwrap(), &b("some-key"));
    }

    // --- incremental decoding ------------------------------------------------------------

    #[test]
    fn every_prefix_needs_more_bytes() {
        for frame in sample_frames() {
            let bytes = frame.to_bytes().unwrap();
            for n in 0..bytes.len() {
                let prefix = &bytes[..n];
                assert_eq!(check(prefix), Ok(None), "{frame:?} prefix {n}");
                assert_eq!(df(prefix), Err(DecodeError::Incomplete), "{frame:?} prefix {n}");
                let mut buf = BytesMut::from(prefix);
                assert_eq!(decode(&mut buf), Ok(None), "{frame:?} prefix {n}");
                assert_eq!(&buf[..], prefix, "Ok(None) leaves the buffer as it was");
                if n >= HEADER_BYTES {
                    assert!(buf.capacity() >= bytes.len(), "room reserved for the whole frame");
                }
            }
            let mut buf = BytesMut::from(&bytes[..]);
            assert_eq!(decode(&mut buf), Ok(Some(frame)));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn a_stream_fed_byte_by_byte_decodes_every_frame() {
        let frames = sample_frames();
        let mut stream = Vec::new();
        for f in &frames {
            f.encode(&mut stream).unwrap();
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &byte in &stream {
            buf.extend_from_slice(&[byte]);
            while let Some(frame) = decode(&mut buf).unwrap() {
                got.push(frame);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(got, frames);
    }

    #[test]
    fn back_to_back_frames_in_one_buffer() {
        let a = Frame::new(
            1,
            Message::Put {
                key: b("a"),
                value: b("1"),
            },
        );
        let b2 = Frame::direct(2, Message::Get { key: b("a") });
        let c = Frame::new(3, Message::Ping);
        let a_len = a.encoded_len().unwrap();
        let mut bytes = a.to_bytes().unwrap();
        b2.encode(&mut bytes).unwrap();
        let c_bytes = c.to_bytes().unwrap();
        bytes.extend_from_slice(&c_bytes[..10]);
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(check(&buf), Ok(Some(a_len)));
        assert_eq!(decode(&mut buf), Ok(Some(a)));
        assert_eq!(decode(&mut buf), Ok(Some(b2)));
        assert_eq!(decode(&mut buf), Ok(None));
        assert_eq!(&buf[..], &c_bytes[..10]);
        buf.extend_from_slice(&c_bytes[10..]);
        assert_eq!(decode(&mut buf), Ok(Some(c)));
        assert!(buf.is_empty());
        // decode_frame wants exactly one frame.
        let first = a_len;
        assert_eq!(
            df(&bytes[..bytes.len() - 10]),
            Err(DecodeError::TrailingBytes(bytes.len() - 10 - first))
        );
    }

    // --- header errors -------------------------------------------------------------------

    /// Asserts that `bytes` is rejected with `err` by `check`, `decode` (leaving the buffer
    /// alone) and `decode_frame`.
    fn header_error(bytes: &[u8], err: DecodeError) {
        assert_eq!(check(bytes), Err(err.clone()), "check {bytes:02x?}");
        let mut buf = BytesMut::from(bytes);
        assert_eq!(decode(&mut buf), Err(err.clone()), "decode {bytes:02x?}");
        assert_eq!(&buf[..], bytes, "a header error leaves the buffer alone");
        assert_eq!(df(bytes), Err(err), "decode_frame {bytes:02x?}");
    }

    #[test]
    fn bad_magic() {
        let mut bytes = raw(opcode::PING, 0, 1, &[]);
        bytes[0] = b'X';
        header_error(&bytes, DecodeError::BadMagic);
        header_error(b"X", DecodeError::BadMagic);
        header_error(b"CX", DecodeError::BadMagic);
        header_error(b"GET / HTTP/1.1\r\n\r\n", DecodeError::BadMagic);
        assert_eq!(check(b"C"), Ok(None));
    }

    #[test]
    fn unsupported_version() {
        let mut bytes = raw(opcode::PING, 0, 1, &[]);
        bytes[2] = 1;
        header_error(&bytes, DecodeError::UnsupportedVersion(1));
        header_error(&bytes[..3], DecodeError::UnsupportedVersion(1));
        header_error(b"CK\0", DecodeError::UnsupportedVersion(0));
    }

    #[test]
    fn unknown_opcode() {
        for op in [0x00, 0x04, 0x7f, 0x80, 0x85, 0xfe] {
            let bytes = raw(op, 0, 1, &[]);
            header_error(&bytes, DecodeError::UnknownOpcode(op));
            header_error(&bytes[..4], DecodeError::UnknownOpcode(op));
        }
    }

    #[test]
    fn unknown_flags() {
        for flags in [8, 12, 0x8000, 0x8001, u16::MAX] {
            let bytes = raw(opcode::PING, flags, 1, &[]);
            header_error(&bytes, DecodeError::UnknownFlags(flags));
            header_error(&bytes[..6], DecodeError::UnknownFlags(flags));
        }
        assert_eq!(
            Frame {
                request_id: 1,
                flags: FLAG_DEADLINE,
                deadline_ms: 0,
                message: Message::Ping
            }
            .to_bytes(),
            Err(EncodeError::UnknownFlags(FLAG_DEADLINE))
        );
    }

    #[test]
    fn frame_too_large_from_the_header_alone() {
        for len in [MAX_FRAME_BYTES as u32 + 1, u32::MAX] {
            let bytes = raw_len(opcode::GET, 0, 1, len, &[]);
            assert_eq!(bytes.len(), HEADER_BYTES);
            let err = DecodeError::FrameTooLarge {
                len: len as usize,
                max: MAX_FRAME_BYTES,
            };
            let (_, allocated) = allocated_during(|| assert_eq!(check(&bytes), Err(err.clone())));
            assert_eq!(allocated, 0);
            header_error(&bytes, err);
        }
        // Exactly the maximum is fine: more bytes needed, room reserved.
        let bytes = raw_len(opcode::GET, 0, 1, MAX_FRAME_BYTES as u32, &[]);
        assert_eq!(check(&bytes), Ok(None));
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(decode(&mut buf), Ok(None));
        assert!(buf.capacity() >= HEADER_BYTES + MAX_FRAME_BYTES);
    }

    // --- payload errors ------------------------------------------------------------------

    /// Asserts that the complete frame `bytes` is rejected with `err` by `decode` (which
    /// consumes it) and by `decode_frame`, and accepted by `check`.
    fn payload_error(bytes: &[u8], err: DecodeError) {
        assert_eq!(check(bytes), Ok(Some(bytes.len())));
        assert_eq!(df(bytes), Err(err.clone()), "decode_frame {bytes:02x?}");
        let mut buf = BytesMut::from(bytes);
        buf.extend_from_slice(b"CK");
        assert_eq!(decode(&mut buf), Err(err), "decode {bytes:02x?}");
        assert_eq!(&buf[..], b"CK", "the bad frame is consumed, the next one kept");
    }

    fn be32(n: usize) -> [u8; 4] {
        (n as u32).to_be_bytes()
    }

    #[test]
    fn oversize_key_rejected_on_decode() {
        let mut payload = be32(MAX_KEY_BYTES + 1).to_vec();
        payload.resize(4 + MAX_KEY_BYTES + 1, b'k');
        let err = DecodeError::FieldTooLarge {
            field: "key",
            len: MAX_KEY_BYTES + 1,
            max: MAX_KEY_BYTES,
        };
        payload_error(&raw(opcode::GET, 0, 1, &payload), err.clone());
        // A tiny frame claiming the same.
        payload_error(&raw(opcode::DELETE, 0, 1, &payload[..8]), err);
        let err = DecodeError::FieldTooLarge {
            field: "key",
            len: u32::MAX as usize,
            max: MAX_KEY_BYTES,
        };
        payload_error(&raw(opcode::GET, 0, 1, &u32::MAX.to_be_bytes()), err);
        // Exactly the maximum is fine.
        let mut payload = be32(MAX_KEY_BYTES).to_vec();
        payload.resize(4 + MAX_KEY_BYTES, b'k');
        let frame = df(&raw(opcode::GET, 0, 1, &payload)).unwrap();
        assert_eq!(frame.message.key().unwrap().len(), MAX_KEY_BYTES);
    }

    #[test]
    fn oversize_value_rejected_on_decode() {
        let mut payload = vec![0, 0, 0, 1, b'k'];
        payload.extend_from_slice(&be32(MAX_VALUE_BYTES + 1));
        let err = DecodeError::FieldTooLarge {
            field: "value",
            len: MAX_VALUE_BYTES + 1,
            max: MAX_VALUE_BYTES,
        };
        payload_error(&raw(opcode::PUT, 0, 1, &payload), err.clone());
        payload.resize(payload.len() + MAX_VALUE_BYTES + 1, b'v');
        payload_error(&raw(opcode::PUT, 0, 1, &payload), err.clone());
        // Also inside an Option (GetReply) and an Item (Transfer).
        let mut reply = vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1];
        reply.extend_from_slice(&be32(MAX_VALUE_BYTES + 1));
        payload_error(&raw(opcode::GET_REPLY, 0, 1, &reply), err);
    }

    #[test]
    fn oversize_text_and_lists_rejected_on_decode() {
        let mut payload = vec![0, 1, 0, 0];
        payload.extend_from_slice(&be32(MAX_TEXT_BYTES + 1));
        payload_error(
            &raw(opcode::ERROR, 0, 1, &payload),
            DecodeError::FieldTooLarge {
                field: "error text",
                len: MAX_TEXT_BYTES + 1,
                max: MAX_TEXT_BYTES,
            },
        );
        let mut payload = be32(1).to_vec();
        payload.extend_from_slice(&be32(MAX_TEXT_BYTES + 1));
        payload.extend_from_slice(&[0; 8]);
        payload_error(
            &raw(opcode::STATS, 0, 1, &payload),
            DecodeError::FieldTooLarge {
                field: "counter name",
                len: MAX_TEXT_BYTES + 1,
                max: MAX_TEXT_BYTES,
            },
        );
        let too_many = |field| DecodeError::FieldTooLarge {
            field,
            len: MAX_LIST_LEN + 1,
            max: MAX_LIST_LEN,
        };
        let mut neighbors = be32(0).to_vec();
        neighbors.extend_from_slice(&be32(MAX_LIST_LEN + 1));
        payload_error(&raw(opcode::NEIGHBORS, 0, 1, &neighbors), too_many("successors"));
        payload_error(
            &raw(opcode::STATS, 0, 1, &be32(MAX_LIST_LEN + 1)),
            too_many("counters"),
        );
        let mut transfer = vec![0; 8 + 40];
        transfer.extend_from_slice(&be32(MAX_LIST_LEN + 1));
        payload_error(&raw(opcode::TRANSFER, 0, 1, &transfer), too_many("items"));
        let mut lookup = vec![LOOKUP_FOUND, 0];
        lookup.extend_from_slice(&be32(MAX_LIST_LEN + 1));
        payload_error(
            &raw(opcode::FIND_SUCCESSOR_REPLY, 0, 1, &lookup),
            too_many("successors"),
        );
        let mut info = node_bytes(&v4(1));
        info.extend_from_slice(&[2, 0, 0, 0, 0, 0]);
        info.extend_from_slice(&be32(MAX_LIST_LEN + 1));
        payload_error(&raw(opcode::INFO, 0, 1, &info), too_many("fingers"));
        payload_error(
            &raw(opcode::REPLICATE, 0, 1, &be32(MAX_LIST_LEN + 1)),
            too_many("items"),
        );
        let mut digests = vec![0; 40];
        digests.extend_from_slice(&be32(MAX_LIST_LEN + 1));
        payload_error(&raw(opcode::SYNC_DIGESTS, 0, 1, &digests), too_many("digests"));
        payload_error(
            &raw(opcode::SYNC_DIGESTS_REPLY, 0, 1, &be32(MAX_LIST_LEN + 1)),
            too_many("differing"),
        );
        let mut keys = vec![0; 40];
        keys.extend_from_slice(&be32(MAX_LIST_LEN + 1));
        payload_error(&raw(opcode::SYNC_KEYS, 0, 1, &keys), too_many("keys"));
        payload_error(
            &raw(opcode::SYNC_KEYS_REPLY, 0, 1, &be32(MAX_LIST_LEN + 1)),
            too_many("want"),
        );
        let mut newer = be32(0).to_vec();
        newer.extend_from_slice(&be32(MAX_LIST_LEN + 1));
        payload_error(&raw(opcode::SYNC_KEYS_REPLY, 0, 1, &newer), too_many("newer"));
        // An oversize key inside a key list.
        let mut keys = vec![0; 40];
        keys.extend_from_slice(&be32(1));
        keys.extend_from_slice(&be32(MAX_KEY_BYTES + 1));
        keys.extend_from_slice(&[0; 8]);
        payload_error(
            &raw(opcode::SYNC_KEYS, 0, 1, &keys),
            DecodeError::FieldTooLarge {
                field: "key",
                len: MAX_KEY_BYTES + 1,
                max: MAX_KEY_BYTES,
            },
        );
    }

    #[test]
    fn a_tiny_frame_claiming_a_huge_list_does_not_allocate() {
        for (op, prefix) in [
            (opcode::NEIGHBORS, vec![0u8]),
            (opcode::STATS, vec![]),
            (opcode::TRANSFER, vec![0; 48]),
            (opcode::FIND_SUCCESSOR_REPLY, vec![LOOKUP_FOUND, 0]),
            (opcode::MEMBERS, vec![]),
            (opcode::MEMBER_EVENTS, vec![0; 20]),
            (opcode::REPLICATE, vec![]),
            (opcode::SYNC_DIGESTS, vec![0; 40]),
            (opcode::SYNC_DIGESTS_REPLY, vec![]),
            (opcode::SYNC_KEYS, vec![0; 40]),
            (opcode::SYNC_KEYS_REPLY, vec![]),
            (opcode::SYNC_KEYS_REPLY, vec![0; 4]),
        ] {
            let mut payload = prefix;
            payload.extend_from_slice(&be32(MAX_LIST_LEN));
            payload.extend_from_slice(&[0; 30]);
            let bytes = Bytes::from(raw(op, 0, 1, &payload)).clone(); // already shared
            let (result, allocated) = allocated_during(|| decode_frame(bytes));
            assert_eq!(result, Err(TRUNCATED), "{op:#04x}");
            assert_eq!(allocated, 0, "{op:#04x}");
        }
    }

    #[test]
    fn malformed_payloads() {
        let m = DecodeError::Malformed;
        // bool
        payload_error(
            &raw(opcode::DELETE_REPLY, 0, 1, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]),
            m("bool is neither 0 nor 1"),
        );
        payload_error(
            &raw(opcode::LEAVING_REPLY, 0, 1, &[0xff]),
            m("bool is neither 0 nor 1"),
        );
        // option tag
        payload_error(
            &raw(opcode::GET_REPLY, 0, 1, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]),
            m("option tag is neither 0 nor 1"),
        );
        // address tag
        let mut pong = node_bytes(&v4(1));
        pong[ID_BYTES] = 5;
        payload_error(
            &raw(opcode::PONG, 0, 1, &pong),
            m("address tag is neither 4 nor 6"),
        );
        // lookup tag
        payload_error(
            &raw(opcode::FIND_SUCCESSOR_REPLY, 0, 1, &[3]),
            m("lookup tag is neither 1 nor 2"),
        );
        payload_error(
            &raw(opcode::FIND_SUCCESSOR_REPLY, 0, 1, &[0]),
            m("lookup tag is neither 1 nor 2"),
        );
        // UTF-8
        payload_error(
            &raw(opcode::ERROR, 0, 1, &[0, 1, 0, 0, 0, 0, 0, 2, 0xc3, 0x28]),
            m("text is not UTF-8"),
        );
        payload_error(
            &raw(
                opcode::STATS,
                0,
                1,
                &[0, 0, 0, 1, 0, 0, 0, 1, 0xff, 0, 0, 0, 0, 0, 0, 0, 0],
            ),
            m("text is not UTF-8"),
        );
        // error code
        for code in [0u16, 10, u16::MAX] {
            let [hi, lo] = code.to_be_bytes();
            payload_error(
                &raw(opcode::ERROR, 0, 1, &[hi, lo, 0, 0, 0, 0, 0, 0]),
                m("unknown error code"),
            );
        }
        // node status
        for status in [0u8, 4, 0xff] {
            let mut info = node_bytes(&v6(1));
            info.push(status);
            info.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            payload_error(&raw(opcode::INFO, 0, 1, &info), m("unknown node status"));
        }
        // truncated inside a complete frame
        payload_error(&raw(opcode::GET, 0, 1, &[0, 0, 0, 5, b'a']), TRUNCATED);
        payload_error(&raw(opcode::GET, 0, 1, &[0, 0]), TRUNCATED);
        payload_error(&raw(opcode::FIND_SUCCESSOR, 0, 1, &[0; 19]), TRUNCATED);
        payload_error(&raw(opcode::PUT_REPLY, 0, 1, &[0; 9]), TRUNCATED);
        payload_error(&raw(opcode::PONG, 0, 1, &node_bytes(&v6(1))[..30]), TRUNCATED);
        let mut neighbors = vec![0, 0, 0, 0, 0, 0, 0, 2];
        neighbors.extend_from_slice(&node_bytes(&v6(1)));
        neighbors.extend_from_slice(&node_bytes(&v4(1))[..20]);
        payload_error(&raw(opcode::NEIGHBORS, 0, 1, &neighbors), TRUNCATED);
    }

    #[test]
    fn trailing_bytes() {
        payload_error(&raw(opcode::PING, 0, 1, &[0]), DecodeError::TrailingBytes(1));
        payload_error(
            &raw(opcode::GET, 0, 1, &[0, 0, 0, 1, b'k', 1, 2, 3]),
            DecodeError::TrailingBytes(3),
        );
        // Bytes after the frame itself, for decode_frame.
        let mut bytes = Frame::new(1, Message::Ping).to_bytes().unwrap();
        bytes.extend_from_slice(&[0; 4]);
        assert_eq!(df(&bytes), Err(DecodeError::TrailingBytes(4)));
    }

    #[test]
    fn errors_display_clearly() {
        let shown = [
            DecodeError::Incomplete.to_string(),
            DecodeError::BadMagic.to_string(),
            DecodeError::UnsupportedVersion(9).to_string(),
            DecodeError::UnknownOpcode(0x7f).to_string(),
            DecodeError::UnknownFlags(2).to_string(),
            DecodeError::FrameTooLarge { len: 5, max: 4 }.to_string(),
            DecodeError::FieldTooLarge {
                field: "key",
                len: 5,
                max: 4,
            }
            .to_string(),
            DecodeError::Malformed("bool is neither 0 nor 1").to_string(),
            DecodeError::TrailingBytes(3).to_string(),
            EncodeError::TooLarge {
                field: "value",
                len: 5,
                max: 4,
            }
            .to_string(),
            EncodeError::UnknownFlags(2).to_string(),
        ];
        assert_eq!(
            shown[2],
            "unsupported protocol version 9 (this build speaks version 2)"
        );
        assert_eq!(shown[3], "unknown opcode 0x7f");
        assert_eq!(shown[4], "unknown flag bits in 0x0002");
        assert_eq!(shown[6], "key length 5 exceeds the maximum of 4");
        assert_eq!(shown[7], "malformed frame: bool is neither 0 nor 1");
        assert_eq!(shown[8], "3 trailing bytes after the message");
        assert!(shown.iter().all(|s| !s.is_empty()));
    }

    // --- encode limits -------------------------------------------------------------------

    /// Asserts that encoding `message` fails with `err` and leaves `out` as it was.
    fn encode_error(message: Message, err: EncodeError) {
        let frame = Frame::new(1, message);
        let mut out = vec![1, 2, 3];
        assert_eq!(frame.encode(&mut out), Err(err.clone()));
        assert_eq!(out, [1, 2, 3]);
        assert_eq!(frame.encoded_len(), Err(err));
    }

    #[test]
    fn oversize_fields_rejected_on_encode() {
        let too_long = |field, max: usize| EncodeError::TooLarge {
            field,
            len: max + 1,
            max,
        };
        let key = Bytes::from(vec![b'k'; MAX_KEY_BYTES + 1]);
        let value = Bytes::from(vec![b'v'; MAX_VALUE_BYTES + 1]);
        encode_error(Message::Get { key: key.clone() }, too_long("key", MAX_KEY_BYTES));
        encode_error(
            Message::Delete { key: key.clone() },
            too_long("key", MAX_KEY_BYTES),
        );
        encode_error(
            Message::Put {
                key: key.clone(),
                value: b("v"),
            },
            too_long("key", MAX_KEY_BYTES),
        );
        encode_error(
            Message::Put {
                key: b("k"),
                value: value.clone(),
            },
            too_long("value", MAX_VALUE_BYTES),
        );
        encode_error(
            Message::GetReply {
                hops: 0,
                version: 1,
                value: Some(value.clone()),
            },
            too_long("value", MAX_VALUE_BYTES),
        );
        let item = |key: Bytes, value: Option<Bytes>| Item {
            key,
            version: 1,
            value,
        };
        let transfer = |items| Message::Transfer {
            transfer_id: 1,
            start: Id::ZERO,
            end: Id::MAX,
            items,
            last: true,
            clock: 0,
        };
        encode_error(
            transfer(vec![item(key.clone(), None)]),
            too_long("key", MAX_KEY_BYTES),
        );
        encode_error(
            transfer(vec![item(b("k"), Some(value.clone()))]),
            too_long("value", MAX_VALUE_BYTES),
        );
        encode_error(
            transfer(vec![item(b("k"), None); MAX_LIST_LEN + 1]),
            too_long("items", MAX_LIST_LEN),
        );
        let text = "t".repeat(MAX_TEXT_BYTES + 1);
        encode_error(
            Message::Error {
                code: ErrorCode::Internal,
                hops: 0,
                text: text.clone(),
            },
            too_long("error text", MAX_TEXT_BYTES),
        );
        encode_error(
            Message::Stats {
                counters: vec![(text, 1)],
            },
            too_long("counter name", MAX_TEXT_BYTES),
        );
        encode_error(
            Message::Stats {
                counters: vec![(String::new(), 1); MAX_LIST_LEN + 1],
            },
            too_long("counters", MAX_LIST_LEN),
        );
        encode_error(
            Message::Replicate {
                items: vec![item(b("k"), None); MAX_LIST_LEN + 1],
            },
            too_long("items", MAX_LIST_LEN),
        );
        encode_error(
            Message::Replicate {
                items: vec![item(key.clone(), None)],
            },
            too_long("key", MAX_KEY_BYTES),
        );
        encode_error(
            Message::SyncDigests {
                start: Id::ZERO,
                end: Id::MAX,
                digests: vec![0; MAX_LIST_LEN + 1],
            },
            too_long("digests", MAX_LIST_LEN),
        );
        encode_error(
            Message::SyncDigestsReply {
                differing: vec![0; MAX_LIST_LEN + 1],
            },
            too_long("differing", MAX_LIST_LEN),
        );
        encode_error(
            Message::SyncKeys {
                start: Id::ZERO,
                end: Id::MAX,
                keys: vec![(b("k"), 1); MAX_LIST_LEN + 1],
            },
            too_long("keys", MAX_LIST_LEN),
        );
        encode_error(
            Message::SyncKeys {
                start: Id::ZERO,
                end: Id::MAX,
                keys: vec![(key.clone(), 1)],
            },
            too_long("key", MAX_KEY_BYTES),
        );
        encode_error(
            Message::SyncKeysReply {
                truncated: false,
                want: vec![b("k"); MAX_LIST_LEN + 1],
                newer: vec![],
            },
            too_long("want", MAX_LIST_LEN),
        );
        encode_error(
            Message::SyncKeysReply {
                truncated: false,
                want: vec![key.clone()],
                newer: vec![],
            },
            too_long("key", MAX_KEY_BYTES),
        );
        encode_error(
            Message::SyncKeysReply {
                truncated: false,
                want: vec![],
                newer: vec![item(b("k"), None); MAX_LIST_LEN + 1],
            },
            too_long("newer", MAX_LIST_LEN),
        );
        encode_error(
            Message::SyncKeysReply {
                truncated: false,
                want: vec![],
                newer: vec![item(b("k"), Some(value.clone()))],
            },
            too_long("value", MAX_VALUE_BYTES),
        );
        let nodes = vec![v4(1); MAX_LIST_LEN + 1];
        encode_error(
            Message::Neighbors {
                predecessors: vec![],
                successors: nodes.clone(),
                down: 0,
                gone: vec![],
            },
            too_long("successors", MAX_LIST_LEN),
        );
        encode_error(
            Message::FindSuccessorReply {
                lookup: Lookup::Found {
                    predecessor: None,
                    successors: nodes.clone(),
                    down: 0,
                },
            },
            too_long("successors", MAX_LIST_LEN),
        );
        encode_error(
            info(NodeStatus::Active, None, vec![], nodes.clone()),
            too_long("fingers", MAX_LIST_LEN),
        );
        encode_error(
            Message::Leaving {
                node: v4(1),
                predecessor: None,
                successors: nodes,
                clock: 0,
                gone: vec![],
            },
            too_long("successors", MAX_LIST_LEN),
        );
    }

    #[test]
    fn a_payload_over_the_frame_limit_is_rejected_on_encode() {
        // Three maximal values (shared, not copied) make a payload over 48 MiB.
        let value = Bytes::from(vec![0u8; MAX_VALUE_BYTES]);
        let items = vec![
            Item {
                key: b("k"),
                version: 1,
                value: Some(value)
            };
            3
        ];
        let message = Message::Transfer {
            transfer_id: 1,
            start: Id::ZERO,
            end: Id::MAX,
            items,
            last: true,
            clock: 0,
        };
        let len = 8 + 20 + 20 + 4 + 3 * (4 + 1 + 8 + 1 + 4 + MAX_VALUE_BYTES) + 1 + 8;
        encode_error(
            message,
            EncodeError::TooLarge {
                field: "frame payload",
                len,
                max: MAX_FRAME_BYTES,
            },
        );
    }

    #[test]
    fn fields_at_their_maximum_round_trip() {
        let frames = [
            Frame::new(
                1,
                Message::Put {
                    key: Bytes::from(vec![1; MAX_KEY_BYTES]),
                    value: Bytes::from(vec![2; MAX_VALUE_BYTES]),
                },
            ),
            Frame::new(
                2,
                Message::Error {
                    code: ErrorCode::Busy,
                    hops: 1,
                    text: "é".repeat(MAX_TEXT_BYTES / 2),
                },
            ),
            Frame::new(
                3,
                Message::Stats {
                    counters: vec![("c".into(), 1); MAX_LIST_LEN],
                },
            ),
            Frame::new(
                4,
                Message::Neighbors {
                    predecessors: vec![],
                    successors: vec![v6(1); MAX_LIST_LEN],
                    down: 0,
                    gone: vec![],
                },
            ),
            Frame::new(
                5,
                Message::SyncDigests {
                    start: Id::ZERO,
                    end: Id::MAX,
                    digests: vec![u64::MAX; MAX_LIST_LEN],
                },
            ),
            Frame::new(
                6,
                Message::SyncKeysReply {
                    truncated: false,
                    want: vec![Bytes::from(vec![3; MAX_KEY_BYTES]); 4],
                    newer: vec![],
                },
            ),
        ];
        for frame in frames {
            let bytes = frame.to_bytes().unwrap();
            assert_eq!(decode_frame(Bytes::from(bytes)), Ok(frame));
        }
    }

    // --- never panic -----------------------------------------------------------------------

    /// splitmix64: a small, deterministic PRNG.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn byte(&mut self) -> u8 {
            self.next() as u8
        }
    }

    /// Feeds `bytes` to every decoding entry point. Whatever decodes must re-encode to the
    /// very same bytes (the encoding is canonical).
    fn feed(bytes: &[u8]) -> usize {
        let _ = check(bytes);
        let mut decoded = 0;
        if let Ok(frame) = df(bytes) {
            assert_eq!(frame.to_bytes().unwrap(), bytes, "{frame:?}");
            decoded += 1;
        }
        let mut buf = BytesMut::from(bytes);
        while let Ok(Some(frame)) = decode(&mut buf) {
            assert!(frame.encoded_len().is_ok());
            decoded += 1;
        }
        decoded
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0x00C0_FFEE);
        let encoded: Vec<Vec<u8>> = sample_frames().iter().map(|f| f.to_bytes().unwrap()).collect();
        let mut decoded = 0;
        let mut buf = Vec::with_capacity(512);
        for i in 0..240_000 {
            buf.clear();
            match i % 4 {
                // Pure noise.
                0 => buf.extend((0..rng.below(256)).map(|_| rng.byte())),
                // A plausible header (known opcode, right length) over a random payload.
                1 => {
                    let payload: Vec<u8> = (0..rng.below(238)).map(|_| rng.byte()).collect();
                    let op = opcode::ALL[rng.below(opcode::ALL.len())];
                    buf.extend_from_slice(&raw(op, rng.below(4) as u16, rng.next(), &payload));
                }
                // A valid frame with a few random byte changes, the length field fixed up
                // half the time so that the payload parser runs.
                2 => {
                    buf.extend_from_slice(&encoded[rng.below(encoded.len())]);
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(buf.len());
                        buf[at] = if rng.below(2) == 0 {
                            rng.byte()
                        } else {
                            buf[at] ^ (1 << rng.below(8))
                        };
                    }
                    if rng.below(2) == 0 {
                        let len = (buf.len() - HEADER_BYTES) as u32;
                        buf[14..18].copy_from_slice(&len.to_be_bytes());
                    }
                }
                // A valid frame truncated or extended, with a consistent header.
                _ => {
                    buf.extend_from_slice(&encoded[rng.below(encoded.len())]);
                    let new_len = HEADER_BYTES + rng.below(buf.len() + 8 - HEADER_BYTES);
                    buf.resize(new_len, 0);
                    if let Some(x) = buf.get_mut(HEADER_BYTES..).and_then(|p| p.last_mut()) {
                        *x = rng.byte();
                    }
                    let len = (buf.len() - HEADER_BYTES) as u32;
                    buf[14..18].copy_from_slice(&len.to_be_bytes());
                }
            }
            decoded += feed(&buf);
        }
        // Sanity: the generator reaches deep into the parser, not only the header checks.
        assert!(decoded > 10_000, "only {decoded} random frames decoded");
    }

    // --- property-based round trip -------------------------------------------------------

    mod prop {
        use super::super::*;
        use proptest::collection::vec;
        use proptest::option;
        use proptest::prelude::*;

        fn id() -> impl Strategy<Value = Id> {
            any::<[u8; 20]>().prop_map(Id)
        }

        fn addr() -> impl Strategy<Value = SocketAddr> {
            prop_oneof![
                (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
                (any::<[u8; 16]>(), any::<u16>())
                    .prop_map(|(ip, port)| SocketAddr::from((Ipv6Addr::from(ip), port))),
            ]
        }

        fn node() -> impl Strategy<Value = NodeRef> {
            (id(), addr()).prop_map(|(id, addr)| NodeRef { id, addr })
        }

        fn nodes() -> impl Strategy<Value = Vec<NodeRef>> {
            vec(node(), 0..6)
        }

        fn blob() -> impl Strategy<Value = Bytes> {
            vec(any::<u8>(), 0..48).prop_map(Bytes::from)
        }

        fn item() -> impl Strategy<Value = Item> {
            (blob(), any::<u64>(), option::of(blob())).prop_map(|(key, version, value)| Item {
                key,
                version,
                value,
            })
        }

        fn error_code() -> impl Strategy<Value = ErrorCode> {
            (1u16..=9).prop_map(|c| ErrorCode::from_u16(c).unwrap())
        }

        fn status() -> impl Strategy<Value = NodeStatus> {
            (1u8..=3).prop_map(|s| NodeStatus::from_u8(s).unwrap())
        }

        fn message() -> impl Strategy<Value = Message> {
            use Message::*;
            prop_oneof![
                blob().prop_map(|key| Get { key }),
                (blob(), blob()).prop_map(|(key, value)| Put { key, value }),
                blob().prop_map(|key| Delete { key }),
                (any::<u16>(), any::<u64>(), option::of(blob()))
                    .prop_map(|(hops, version, value)| GetReply { hops, version, value }),
                (any::<u16>(), any::<u64>()).prop_map(|(hops, version)| PutReply { hops, version }),
                (any::<u16>(), any::<u64>(), any::<bool>()).prop_map(|(hops, version, existed)| {
                    DeleteReply {
                        hops,
                        version,
                        existed,
                    }
                }),
                (any::<u16>(), node(), any::<bool>()).prop_map(|(hops, node, exact)| Redirect {
                    hops,
                    node,
                    exact
                }),
                (error_code(), any::<u16>(), ".{0,20}").prop_map(|(code, hops, text)| Error {
                    code,
                    hops,
                    text
                }),
                id().prop_map(|id| FindSuccessor { id }),
                (option::of(node()), nodes(), any::<u64>()).prop_map(|(predecessor, successors, down)| {
                    FindSuccessorReply {
                        lookup: Lookup::Found {
                            predecessor,
                            successors,
                            down,
                        },
                    }
                }),
                id().prop_map(|after| GetMembers { after }),
                (nodes(), any::<bool>()).prop_map(|(nodes, more)| Members { nodes, more }),
                (id(), vec((node(), any::<bool>(), any::<u64>()), 0..4)).prop_map(|(limit, events)| {
                    MemberEvents {
                        limit,
                        events: events
                            .into_iter()
                            .map(|(node, alive, stamp)| MemberEvent { node, alive, stamp })
                            .collect(),
                    }
                }),
                any::<u32>().prop_map(|applied| MemberEventsAck { applied }),
                node().prop_map(|node| FindSuccessorReply {
                    lookup: Lookup::Closer { node }
                }),
                Just(GetNeighbors),
                (nodes(), nodes(), any::<u64>(), nodes()).prop_map(
                    |(predecessors, successors, down, gone)| {
                        Neighbors {
                            predecessors,
                            successors,
                            down,
                            gone,
                        }
                    }
                ),
                (node(), any::<u64>(), any::<bool>()).prop_map(|(node, incarnation, active)| Notify {
                    node,
                    incarnation,
                    active
                }),
                (node(), id(), node()).prop_map(|(primary, start, holder)| Lease {
                    primary,
                    start,
                    holder
                }),
                (any::<bool>(), option::of(node()), any::<u64>(), any::<u64>()).prop_map(
                    |(granted, holder, fence, clock)| LeaseReply {
                        granted,
                        holder,
                        fence,
                        clock
                    }
                ),
                node().prop_map(|node| Forget { node }),
                any::<bool>().prop_map(|forgotten| ForgetReply { forgotten }),
                (any::<bool>(), option::of(node()), any::<u64>()).prop_map(|(accepted, previous, clock)| {
                    NotifyReply {
                        accepted,
                        previous,
                        clock,
                    }
                }),
                Just(Ping),
                node().prop_map(|node| Pong { node }),
                (node(), option::of(node()), nodes(), any::<u64>(), nodes()).prop_map(
                    |(node, predecessor, successors, clock, gone)| {
                        Leaving {
                            node,
                            predecessor,
                            successors,
                            clock,
                            gone,
                        }
                    }
                ),
                any::<bool>().prop_map(|accepted| LeavingReply { accepted }),
                (
                    any::<u64>(),
                    id(),
                    id(),
                    vec(item(), 0..6),
                    any::<bool>(),
                    any::<u64>()
                )
                    .prop_map(|(transfer_id, start, end, items, last, clock)| {
                        Transfer {
                            transfer_id,
                            start,
                            end,
                            items,
                            last,
                            clock,
                        }
                    }),
                (any::<u64>(), any::<bool>()).prop_map(|(transfer_id, accepted)| TransferAck {
                    transfer_id,
                    accepted
                }),
                vec(item(), 0..6).prop_map(|items| Replicate { items }),
                any::<u32>().prop_map(|applied| ReplicateAck { applied }),
                (id(), id(), vec(any::<u64>(), 0..8)).prop_map(|(start, end, digests)| SyncDigests {
                    start,
                    end,
                    digests
                }),
                vec(any::<u32>(), 0..8).prop_map(|differing| SyncDigestsReply { differing }),
                (id(), id(), vec((blob(), any::<u64>()), 0..6)).prop_map(|(start, end, keys)| SyncKeys {
                    start,
                    end,
                    keys
                }),
                (vec(blob(), 0..6), vec(item(), 0..6)).prop_map(|(want, newer)| SyncKeysReply {
                    want,
                    newer,
                    truncated: true
                }),
                (id(), id(), any::<u64>()).prop_map(|(start, end, before)| CollectTombstones {
                    start,
                    end,
                    before
                }),
                any::<u32>().prop_map(|removed| CollectTombstonesReply { removed }),
                Just(GetInfo),
                (
                    node(),
                    status(),
                    option::of(node()),
                    nodes(),
                    nodes(),
                    any::<u64>(),
                    any::<bool>()
                )
                    .prop_map(
                        |(node, status, predecessor, successors, fingers, keys, keeps_down_members)| {
                            Info(NodeInfo {
                                node,
                                status,
                                predecessor,
                                successors,
                                fingers,
                                keys,
                                keeps_down_members,
                            })
                        }
                    ),
                Just(GetStats),
                vec((".{0,12}", any::<u64>()), 0..6).prop_map(|counters| Stats { counters }),
            ]
        }

        fn frame() -> impl Strategy<Value = Frame> {
            (
                any::<u64>(),
                0..=(FLAG_DIRECT | FLAG_FAILOVER),
                any::<u64>(),
                message(),
            )
                .prop_map(|(request_id, flags, deadline_ms, message)| Frame {
                    request_id,
                    flags,
                    deadline_ms,
                    message,
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            #[test]
            fn encode_then_decode_is_identity(frame in frame(), split in any::<prop::sample::Index>()) {
                let bytes = frame.to_bytes().unwrap();
                prop_assert_eq!(bytes.len(), frame.encoded_len().unwrap());
                prop_assert_eq!(decode_frame(Bytes::from(bytes.clone())), Ok(frame.clone()));
                // Delivered in two parts, split anywhere.
                let at = split.index(bytes.len());
                let mut buf = BytesMut::from(&bytes[..at]);
                prop_assert_eq!(decode(&mut buf), Ok(None));
                buf.extend_from_slice(&bytes[at..]);
                prop_assert_eq!(decode(&mut buf), Ok(Some(frame)));
                prop_assert!(buf.is_empty());
            }
        }
    }
}
