//! # chordkv-protocol
//!
//! The vocabulary chordkv nodes and clients share, with no I/O and no clock:
//!
//! - [`id`]: 160-bit SHA-1 ring identifiers and the ring's interval arithmetic;
//! - [`message`]: every request and reply, as Rust values;
//! - [`limits`]: the maximum sizes of keys, values, texts, lists and frames, shared by both
//!   codecs;
//! - [`frame`]: the hand-written binary encoding of a [`Frame`] (header + message), with a
//!   decoder that returns `Ok(None)` until a whole frame is buffered, checks every length
//!   against a named maximum before allocating, rejects trailing bytes, and never panics; its
//!   opcodes come from one table ([`frame::opcode`]);
//! - [`resp`]: RESP2, the Redis protocol, so that Redis clients can talk to a node.
//!
//! Each module uses only those listed before it.

pub mod frame;
pub mod handshake;
pub mod id;
pub mod limits;
pub mod message;
pub mod resp;
#[cfg(test)]
mod testing;

pub use frame::{
    decode, decode_frame, DecodeError, EncodeError, Frame, FLAG_DIRECT, FLAG_FAILOVER, FLAG_REPLICA_READ,
    HEADER_BYTES, MAX_FRAME_BYTES, MAX_KEY_BYTES, MAX_VALUE_BYTES,
};
pub use id::{hash_tag, in_half_open, in_open, Id};
pub use message::{
    CommandReply, ErrorCode, Item, LeaseRequest, LeaveNotice, Lookup, MemberEvent, Message, NodeAddr,
    NodeInfo, NodeRef, NodeStatus, RangeCommand,
};
