//! The hand-written binary encoding of a [`Frame`]: an 18-byte header followed by the payload
//! of one [`Message`].
//!
//! Decoding follows the shape of tokio mini-redis's `frame.rs`: [`check`] looks at the bytes
//! buffered so far and answers, from the header alone and without allocating, whether a whole
//! frame is there (and rejects garbage as early as the first byte); only then does the parser
//! run, over exactly that frame. Every length read from the wire is compared with a named
//! maximum *and* with the bytes actually left in the frame before anything is allocated, so a
//! tiny frame that claims a huge key or a list of a billion nodes costs nothing. Keys and values
//! are zero-copy [`Bytes::slice`](bytes::Bytes::slice)s of the received frame. The decoder never
//! panics: it does no unchecked indexing and no unchecked arithmetic on lengths.
//!
//! Encoding runs one writer per message twice: once to check every limit and count the bytes,
//! then, with exactly that much room reserved, to write them. A frame over a limit is refused
//! before a byte is written, and the size reserved cannot disagree with the bytes written.
//!
//! # Where things are
//!
//! - `opcode.rs`: the opcode table, one line per message kind. The opcode constants,
//!   [`opcode::ALL`], [`opcode::is_known`], [`opcode_of`], [`Message::name`] and
//!   [`Message::is_reply`] are generated from it.
//! - `encode.rs`: [`Frame::encode`], [`Frame::encoded_len`] and `write_message`, the writer of
//!   every payload layout below.
//! - `decode.rs`: [`check`], [`decode`], [`decode_frame`] and `Reader::frame`, the reader of
//!   every payload layout below.
//! - `tests.rs`: every message round-trips, golden bytes, every error, allocation counts, random
//!   bytes and property tests.
//! - The limits (`MAX_*`) live in [`crate::limits`], shared with the RESP codec.
//!
//! Adding a message takes its variant in [`crate::message`], one line in the table of
//! `opcode.rs` and one arm in `write_message` (the compiler asks for both: their matches are
//! exhaustive), one arm in `Reader::frame`, one line in the opcode table below (a test compares
//! it with `opcode.rs`), and a sample in the tests (a test fails until every opcode is sampled,
//! and every sample must round-trip).
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
//!                             bit 2 = FLAG_DEADLINE, bit 3 = FLAG_VNODE,
//!                             bit 4 = FLAG_REPLICA_READ; every other bit must be 0
//!       6     8  request_id   chosen by the requester, echoed by the reply
//!      14     4  payload_len  bytes after the header, <= MAX_FRAME_BYTES
//!      18     n  payload      payload_len bytes: with FLAG_DEADLINE first the deadline
//!                             (u64, milliseconds on the sender's wall clock), then with
//!                             FLAG_VNODE the receiving vnode (u16), then the message laid
//!                             out by opcode (below)
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
//!  NodeRef           27/39  id Id | addr SocketAddr                 (vnode 0)
//!                    29/41  id Id | addr SocketAddr with tag | 0x80 | vnode u16
//!  Option<T>         1+     tag u8: 0 = None, 1 = Some followed by T
//!  Key               4+len  len u32 | len bytes            len <= MAX_KEY_BYTES
//!  Value             4+len  len u32 | len bytes            len <= MAX_VALUE_BYTES
//!  String            4+len  len u32 | len bytes of UTF-8   len <= MAX_TEXT_BYTES
//!  Vec<T>            4+     count u32 | count x T          count <= MAX_LIST_LEN
//!  Item              21+    key Key | version u64 | expires_at u64 | value Option<Value>
//!  KeyVersion        12+    key Key | version u64
//!  Lookup            14+    tag u8 = 1 (Found)  | predecessor Option<NodeRef>
//!                                                | successors Vec<NodeRef> | down u64
//!                    28+    tag u8 = 2 (Closer) | node NodeRef
//!  ErrorCode         2      u16, the discriminant of message::ErrorCode (unknown = Malformed)
//!  NodeStatus        1      u8: 1 Joining, 2 Active, 3 Leaving (unknown = Malformed)
//!  Counter           12+    name String | value u64
//!  MemberEvent       36+    node NodeRef | alive bool | stamp u64
//!  RangeCommand      1      u8: 1 Count, 2 Flush (unknown = Malformed)
//!  CommandReply      1+     tag u8: 0 Nil | 1 Status String | 2 Int u64 (two's complement)
//!                           | 3 Bulk Value | 4 Error String | 5 Array Vec<CommandReply>
//!                           (arrays nest at most MAX_REPLY_DEPTH deep)
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
//!  0x05  Execute                 key Key | commands Vec<Vec<Value>> | watched Vec<KeyVersion>
//!  0x06  RingCommand             command RangeCommand
//!  0x07  RangeCommand            command RangeCommand
//!  0x08  ScanKeys                cursor u64 | count u32 | pattern Option<Key> | random bool
//!  0x09  ScanRange               from Id | after_key Option<Key> | count u32
//!                                | pattern Option<Key>
//!  0x10  FindSuccessor           id Id
//!  0x11  GetNeighbors            (empty)
//!  0x12  Notify                  node NodeRef | incarnation u64 | active bool
//!  0x13  Ping                    (empty)
//!  0x14  Leaving                 node NodeRef | predecessor Option<NodeRef>
//!                                | successors Vec<NodeRef> | clock u64 | gone Vec<NodeRef>
//!  0x15  GetMembers              after Id
//!  0x16  MemberEvents            limit Id | events Vec<MemberEvent>
//!  0x17  Lease                   primary NodeRef | start Id | holder NodeRef
//!  0x18  Forget                  node NodeRef | whole_host bool
//!  0x19  ClaimPositions          seen u64 | nodes Vec<NodeRef>
//!  0x20  Transfer                transfer_id u64 | start Id | end Id | items Vec<Item>
//!                                | last bool | clock u64
//!  0x21  Replicate               items Vec<Item>
//!  0x22  SyncDigests             start Id | end Id | digests Vec<u64> | holder_ms u64
//!  0x23  SyncKeys                start Id | end Id | keys Vec<KeyVersion>
//!  0x24  CollectTombstones       start Id | end Id | before u64
//!  0x30  GetInfo                 (empty)
//!  0x31  GetStats                (empty)
//!  0x32  Login                   user String | password Bytes (len u32, <= MAX_PASSWORD_BYTES)
//!  ----  replies (bit 7 set) ----------------------------------------------------------------
//!  0x81  GetReply                hops u16 | version u64 | value Option<Value>
//!  0x82  PutReply                hops u16 | version u64
//!  0x83  DeleteReply             hops u16 | version u64 | existed bool
//!  0x84  Redirect                hops u16 | node NodeRef | exact bool
//!  0x85  ExecuteReply            hops u16 | version u64 | replies Option<Vec<CommandReply>>
//!  0x86  RingCommandReply        value u64
//!  0x87  RangeCommandReply       value u64 | successor NodeRef
//!  0x88  ScanKeysReply           cursor u64 | keys Vec<Key>
//!  0x89  ScanRangeReply          hops u16 | keys Vec<Key> | end Id | last Option<(Id, Key)>
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
//!  0x99  Claims                  version u64 | nodes Vec<NodeRef>
//!  0xA0  TransferAck             transfer_id u64 | accepted bool
//!  0xA1  ReplicateAck            applied u32
//!  0xA2  SyncDigestsReply        differing Vec<u32> | trusted bool
//!  0xA3  SyncKeysReply           want Vec<Key> | newer Vec<Item> | truncated bool
//!  0xA4  CollectTombstonesReply  removed u32
//!  0xB0  Info                    node NodeRef | status NodeStatus | predecessor Option<NodeRef>
//!                                | successors Vec<NodeRef> | fingers Vec<NodeRef> | keys u64
//!                                | keeps_down_members bool
//!  0xB1  Stats                   counters Vec<Counter>
//!  0xB2  LoginReply              user String
//!  0xFF  Error                   code ErrorCode | hops u16 | text String
//! ```
//!
//! # Example
//!
//! `GET "k"` with request id 7, not direct (23 bytes):
//!
//! ```text
//!  43 4B | 05 | 01 | 00 00 | 00 00 00 00 00 00 00 07 | 00 00 00 05 | 00 00 00 01 6B
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

mod decode;
mod encode;
pub mod opcode;
#[cfg(test)]
mod tests;

pub use crate::limits::{MAX_FRAME_BYTES, MAX_KEY_BYTES, MAX_LIST_LEN, MAX_TEXT_BYTES, MAX_VALUE_BYTES};
pub use decode::{check, decode, decode_frame, DecodeError};
pub use encode::EncodeError;
pub use opcode::{opcode_of, REPLY_BIT};

use crate::message::Message;

// --- header ------------------------------------------------------------------------------

/// Bytes in a frame header.
pub const HEADER_BYTES: usize = 18;
/// The first two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"CK";
/// The protocol version this build speaks (and the only one it accepts).
pub const VERSION: u8 = 5;
/// Header flag: a client operation must be served by the receiver itself or answered with
/// [`Message::Redirect`], never routed through the ring.
pub const FLAG_DIRECT: u16 = 1;
/// Header flag: a client operation sent to a replica because the key's primary did not
/// answer: the receiver may serve it as the new primary.
pub const FLAG_FAILOVER: u16 = 2;
/// Header flag: the payload starts with the request's deadline ([`Frame::deadline_ms`]). Set
/// by the encoder from the field, never by callers.
pub const FLAG_DEADLINE: u16 = 4;
/// Header flag: the payload carries [`Frame::vnode`] (after the deadline, if any). Set by the
/// encoder from the field, never by callers.
pub const FLAG_VNODE: u16 = 8;
/// Header flag: a `GET` (with [`FLAG_DIRECT`]) that any holder of a copy of the key may
/// answer from its store, the primary or a replica (`--read-from replicas`); a node that
/// holds no copy treats it as a plain direct `GET`.
pub const FLAG_REPLICA_READ: u16 = 16;
/// Every flag bit this version knows; a frame with any other bit set is rejected.
pub const KNOWN_FLAGS: u16 = FLAG_DIRECT | FLAG_FAILOVER | FLAG_DEADLINE | FLAG_VNODE | FLAG_REPLICA_READ;
/// The flags a caller may set on a [`Frame`].
const CALLER_FLAGS: u16 = FLAG_DIRECT | FLAG_FAILOVER | FLAG_REPLICA_READ;

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
    /// Which virtual node of the receiving host the request is for (a peer's request to a
    /// known ring position); `None`: the host chooses (a client's key operation goes to the
    /// vnode that serves the key, or that is closest before it). Replies carry `None`.
    pub vnode: Option<u16>,
    pub message: Message,
}

impl Frame {
    /// A frame without flags.
    pub fn new(request_id: u64, message: Message) -> Frame {
        Frame {
            request_id,
            flags: 0,
            deadline_ms: 0,
            vnode: None,
            message,
        }
    }

    /// A frame with [`FLAG_DIRECT`]: serve it here or answer `Redirect`.
    pub fn direct(request_id: u64, message: Message) -> Frame {
        Frame {
            request_id,
            flags: FLAG_DIRECT,
            deadline_ms: 0,
            vnode: None,
            message,
        }
    }

    /// This frame with a deadline (see [`Frame::deadline_ms`]).
    pub fn with_deadline(mut self, deadline_ms: u64) -> Frame {
        self.deadline_ms = deadline_ms;
        self
    }

    /// This frame addressed to virtual node `vnode` of the receiving host (see
    /// [`Frame::vnode`]).
    pub fn to_vnode(mut self, vnode: u16) -> Frame {
        self.vnode = Some(vnode);
        self
    }

    /// Whether [`FLAG_DIRECT`] is set.
    pub fn is_direct(&self) -> bool {
        self.flags & FLAG_DIRECT != 0
    }

    /// Whether this is a request a client may send on a connection that has not completed the
    /// peer handshake: a key operation (GET, PUT, DELETE, EXECUTE, with or without `FLAG_DIRECT`, never
    /// `FLAG_FAILOVER`, which only a replica standing in for a primary receives) or a read of
    /// the node's view (GET_INFO, GET_STATS, GET_MEMBERS). Everything else (maintenance,
    /// leases, handoff, replication, repair, FORGET) is a peer's or an operator's.
    pub fn is_client_request(&self) -> bool {
        use crate::message::Message::*;
        matches!(
            self.message,
            Get { .. }
                | Put { .. }
                | Delete { .. }
                | Execute { .. }
                | RingCommand { .. }
                | ScanKeys { .. }
                | GetInfo
                | GetStats
                | GetMembers { .. }
        ) && !self.is_failover()
    }

    /// Whether `FLAG_REPLICA_READ` is set.
    pub fn is_replica_read(&self) -> bool {
        self.flags & FLAG_REPLICA_READ != 0
    }

    /// Whether `FLAG_FAILOVER` is set.
    pub fn is_failover(&self) -> bool {
        self.flags & FLAG_FAILOVER != 0
    }
}

// --- tags shared by the encoder and the decoder ------------------------------------------

// The tag before a `SocketAddr`: its IP version; in a `NodeRef`, with `ADDR_TAG_VNODE` set
// when a vnode index follows the port (vnode 0 is written as the bare address).
const ADDR_TAG_V4: u8 = 4;
const ADDR_TAG_V6: u8 = 6;
const ADDR_TAG_VNODE: u8 = 0x80;
// The tag before a `Lookup`: which variant follows.
const LOOKUP_FOUND: u8 = 1;
const LOOKUP_CLOSER: u8 = 2;
// The tag before a `CommandReply`: which variant follows.
const REPLY_NIL: u8 = 0;
const REPLY_STATUS: u8 = 1;
const REPLY_INT: u8 = 2;
const REPLY_BULK: u8 = 3;
const REPLY_ERROR: u8 = 4;
const REPLY_ARRAY: u8 = 5;
