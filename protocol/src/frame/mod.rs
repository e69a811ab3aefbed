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
mod tests;
