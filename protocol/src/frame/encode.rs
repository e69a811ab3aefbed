//! The encoder: one writer per message, run twice.
//!
//! [`Frame::encoded_len`] runs the writer over a `Size`, which checks every limit and counts
//! bytes without storing any. [`Frame::encode`] reserves exactly that many bytes and runs the
//! same writer again over the output `Vec<u8>`. Because both passes run the same code, the size
//! reserved and the bytes written cannot disagree (a separate length function per message used
//! to be a second copy of every layout), and nothing is written for a frame that breaks a limit:
//! the sizing pass finds it first. The writing pass then checks nothing: its error type is
//! [`Infallible`], so the compiler drops the checks and the caller needs no error path that
//! could leave half a frame behind.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;

#[cfg(doc)]
use super::KNOWN_FLAGS;
use super::{
    opcode_of, Frame, ADDR_TAG_V4, ADDR_TAG_V6, ADDR_TAG_VNODE, CALLER_FLAGS, FLAG_DEADLINE, FLAG_VNODE,
    HEADER_BYTES, LOOKUP_CLOSER, LOOKUP_FOUND, MAGIC, VERSION,
};
use crate::id::Id;
use crate::limits::{MAX_FRAME_BYTES, MAX_KEY_BYTES, MAX_LIST_LEN, MAX_TEXT_BYTES, MAX_VALUE_BYTES};
use crate::message::{
    CommandReply, Item, LeaseRequest, LeaveNotice, Lookup, MemberEvent, Message, NodeRef, MAX_REPLY_DEPTH,
};

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

impl Frame {
    /// The frame's size on the wire (header + payload), checking every limit.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        if self.flags & !CALLER_FLAGS != 0 {
            return Err(EncodeError::UnknownFlags(self.flags));
        }
        let mut payload = Size(0);
        self.write_payload(&mut payload)?;
        let Size(payload) = payload;
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
        out.reserve(total);
        let start = out.len();
        // `encoded_len` has checked every limit, so writing cannot fail: `Result<(), Infallible>`.
        let Ok(()) = self.write_header(out, total - HEADER_BYTES);
        let Ok(()) = self.write_payload(out);
        debug_assert_eq!(
            out.len() - start,
            total,
            "the sizing and the writing pass disagree"
        );
        Ok(())
    }

    /// The encoded frame in a new buffer of exactly its size.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }

    /// The header flags on the wire: the caller's, and [`FLAG_DEADLINE`] when there is one.
    fn wire_flags(&self) -> u16 {
        let mut flags = self.flags;
        if self.deadline_ms != 0 {
            flags |= FLAG_DEADLINE;
        }
        if self.vnode.is_some() {
            flags |= FLAG_VNODE;
        }
        flags
    }

    /// The 18-byte header; `payload_len <= MAX_FRAME_BYTES < u32::MAX` (checked by
    /// `encoded_len`, asserted in `limits.rs`).
    fn write_header<S: Sink>(&self, out: &mut S, payload_len: usize) -> Result<(), S::Error> {
        out.put(&MAGIC);
        out.u8(VERSION)?;
        out.u8(opcode_of(&self.message))?;
        out.u16(self.wire_flags())?;
        out.u64(self.request_id)?;
        out.length(payload_len)
    }

    /// The payload: the deadline when there is one, then the message.
    fn write_payload<S: Sink>(&self, out: &mut S) -> Result<(), S::Error> {
        if self.deadline_ms != 0 {
            out.u64(self.deadline_ms)?;
        }
        if let Some(vnode) = self.vnode {
            out.u16(vnode)?;
        }
        write_message(&self.message, out)
    }
}

// --- sinks -------------------------------------------------------------------------------

/// Where the writers put a frame's bytes: a `Size` (the sizing pass) or a `Vec<u8>` (the
/// writing pass).
///
/// The provided methods are the writers, one per field encoding of the module doc's table and
/// named after it, like the decoder's `Reader` methods they mirror. Every writer returns a
/// `Result` so that all of them compose the same way; only `check` ever fails.
pub(super) trait Sink: Sized {
    /// What a broken limit is: an [`EncodeError`] when sizing, [`Infallible`] when writing.
    type Error;

    /// Refuses `len > max` (a key, value, text or list over its maximum).
    fn check(&mut self, field: &'static str, len: usize, max: usize) -> Result<(), Self::Error>;

    /// Appends raw bytes.
    fn put(&mut self, bytes: &[u8]);

    #[inline]
    fn u8(&mut self, v: u8) -> Result<(), Self::Error> {
        self.put(&[v]);
        Ok(())
    }

    #[inline]
    fn u16(&mut self, v: u16) -> Result<(), Self::Error> {
        self.put(&v.to_be_bytes());
        Ok(())
    }

    #[inline]
    fn u32(&mut self, v: u32) -> Result<(), Self::Error> {
        self.put(&v.to_be_bytes());
        Ok(())
    }

    #[inline]
    fn u64(&mut self, v: u64) -> Result<(), Self::Error> {
        self.put(&v.to_be_bytes());
        Ok(())
    }

    #[inline]
    fn bool(&mut self, v: bool) -> Result<(), Self::Error> {
        self.u8(v.into())
    }

    #[inline]
    fn id(&mut self, id: &Id) -> Result<(), Self::Error> {
        self.put(&id.0);
        Ok(())
    }

    /// A length or count prefix, already checked against a limit below `u32::MAX`.
    #[inline]
    fn length(&mut self, len: usize) -> Result<(), Self::Error> {
        self.u32(len as u32)
    }

    /// A length-prefixed byte string of at most `max` bytes.
    #[inline]
    fn bytes(&mut self, field: &'static str, max: usize, bytes: &[u8]) -> Result<(), Self::Error> {
        self.check(field, bytes.len(), max)?;
        self.length(bytes.len())?;
        self.put(bytes);
        Ok(())
    }

    #[inline]
    fn key(&mut self, key: &[u8]) -> Result<(), Self::Error> {
        self.bytes("key", MAX_KEY_BYTES, key)
    }

    #[inline]
    fn value(&mut self, value: &[u8]) -> Result<(), Self::Error> {
        self.bytes("value", MAX_VALUE_BYTES, value)
    }

    #[inline]
    fn text(&mut self, field: &'static str, text: &str) -> Result<(), Self::Error> {
        self.bytes(field, MAX_TEXT_BYTES, text.as_bytes())
    }

    /// An `Option<T>`: a tag, then `T` (written by `write`) when there is one.
    #[inline]
    fn option<T>(
        &mut self,
        v: &Option<T>,
        write: impl FnOnce(&mut Self, &T) -> Result<(), Self::Error>,
    ) -> Result<(), Self::Error> {
        match v {
            Some(v) => {
                self.u8(1)?;
                write(self, v)
            }
            None => self.u8(0),
        }
    }

    /// A `Vec<T>`: its count, checked against [`MAX_LIST_LEN`], then each element written by
    /// `write`.
    #[inline]
    fn list<T>(
        &mut self,
        field: &'static str,
        list: &[T],
        mut write: impl FnMut(&mut Self, &T) -> Result<(), Self::Error>,
    ) -> Result<(), Self::Error> {
        self.check(field, list.len(), MAX_LIST_LEN)?;
        self.length(list.len())?;
        list.iter().try_for_each(|element| write(self, element))
    }

    fn addr(&mut self, addr: &SocketAddr) -> Result<(), Self::Error> {
        match addr {
            SocketAddr::V4(a) => {
                self.u8(ADDR_TAG_V4)?;
                self.put(&a.ip().octets());
                self.u16(a.port())
            }
            // The flow info and scope id are dropped: they mean nothing to another host.
            SocketAddr::V6(a) => {
                self.u8(ADDR_TAG_V6)?;
                self.put(&a.ip().octets());
                self.u16(a.port())
            }
        }
    }

    fn node(&mut self, node: &NodeRef) -> Result<(), Self::Error> {
        self.id(&node.id)?;
        if node.addr.vnode == 0 {
            return self.addr(&node.addr.host);
        }
        let (tag, ip): (u8, &[u8]) = match &node.addr.host {
            SocketAddr::V4(a) => (ADDR_TAG_V4, &a.ip().octets()[..]),
            SocketAddr::V6(a) => (ADDR_TAG_V6, &a.ip().octets()[..]),
        };
        self.u8(tag | ADDR_TAG_VNODE)?;
        self.put(ip);
        self.u16(node.addr.host.port())?;
        self.u16(node.addr.vnode)
    }

    fn nodes(&mut self, field: &'static str, nodes: &[NodeRef]) -> Result<(), Self::Error> {
        self.list(field, nodes, Self::node)
    }

    fn opt_value(&mut self, value: &Option<Bytes>) -> Result<(), Self::Error> {
        self.option(value, |out, value| out.value(value))
    }

    fn item(&mut self, item: &Item) -> Result<(), Self::Error> {
        self.key(&item.key)?;
        self.u64(item.version)?;
        self.u64(item.expires_at)?;
        self.opt_value(&item.value)
    }

    fn key_version(&mut self, (key, version): &(Bytes, u64)) -> Result<(), Self::Error> {
        self.key(key)?;
        self.u64(*version)
    }

    /// A command's words: a list of values.
    fn command(&mut self, words: &[Bytes]) -> Result<(), Self::Error> {
        self.list("command words", words, |out, w| out.value(w))
    }

    /// A [`CommandReply`], its arrays at most `MAX_REPLY_DEPTH - depth` deeper.
    fn command_reply(&mut self, reply: &CommandReply, depth: usize) -> Result<(), Self::Error> {
        match reply {
            CommandReply::Nil => self.u8(super::REPLY_NIL),
            CommandReply::Status(text) => {
                self.u8(super::REPLY_STATUS)?;
                self.text("status", text)
            }
            CommandReply::Int(n) => {
                self.u8(super::REPLY_INT)?;
                self.u64(*n as u64)
            }
            CommandReply::Bulk(v) => {
                self.u8(super::REPLY_BULK)?;
                self.value(v)
            }
            CommandReply::Error(text) => {
                self.u8(super::REPLY_ERROR)?;
                self.text("error text", text)
            }
            CommandReply::Array(items) => {
                self.check("reply depth", depth + 1, MAX_REPLY_DEPTH)?;
                self.u8(super::REPLY_ARRAY)?;
                self.list("reply array", items, |out, r| out.command_reply(r, depth + 1))
            }
        }
    }

    fn counter(&mut self, (name, value): &(String, u64)) -> Result<(), Self::Error> {
        self.text("counter name", name)?;
        self.u64(*value)
    }

    fn member_event(&mut self, event: &MemberEvent) -> Result<(), Self::Error> {
        self.node(&event.node)?;
        self.bool(event.alive)?;
        self.u64(event.stamp)
    }

    fn lookup(&mut self, lookup: &Lookup) -> Result<(), Self::Error> {
        match lookup {
            Lookup::Found {
                predecessor,
                successors,
                down,
            } => {
                self.u8(LOOKUP_FOUND)?;
                self.option(predecessor, Self::node)?;
                self.nodes("successors", successors)?;
                self.u64(*down)
            }
            Lookup::Closer { node } => {
                self.u8(LOOKUP_CLOSER)?;
                self.node(node)
            }
        }
    }
}

/// The sizing pass: counts bytes and checks limits, stores nothing.
struct Size(usize);

impl Sink for Size {
    type Error = EncodeError;

    #[inline]
    fn check(&mut self, field: &'static str, len: usize, max: usize) -> Result<(), EncodeError> {
        if len > max {
            Err(EncodeError::TooLarge { field, len, max })
        } else {
            Ok(())
        }
    }

    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        // Saturating: 65,536 items of 512 MiB overflow a 32-bit usize. Any total that large is
        // over MAX_FRAME_BYTES anyway, and refused as such.
        self.0 = self.0.saturating_add(bytes.len());
    }
}

/// The writing pass, after the sizing pass has checked every limit.
impl Sink for Vec<u8> {
    type Error = Infallible;

    #[inline]
    fn check(&mut self, _: &'static str, _: usize, _: usize) -> Result<(), Infallible> {
        Ok(())
    }

    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

// --- messages ----------------------------------------------------------------------------

/// Writes `msg`'s fields in their declaration order (the payload layouts of the module doc).
fn write_message<S: Sink>(msg: &Message, out: &mut S) -> Result<(), S::Error> {
    use Message::*;
    match msg {
        Get { key } | Delete { key } => out.key(key),
        Put { key, value } => {
            out.key(key)?;
            out.value(value)
        }
        RingCommand { command } | RangeCommand { command } => out.u8(*command as u8),
        ScanKeys {
            cursor,
            count,
            pattern,
            random,
        } => {
            out.u64(*cursor)?;
            out.u32(*count)?;
            out.option(pattern, |out, p| out.key(p))?;
            out.bool(*random)
        }
        ScanRange {
            from,
            after_key,
            count,
            pattern,
        } => {
            out.id(from)?;
            out.option(after_key, |out, k| out.key(k))?;
            out.u32(*count)?;
            out.option(pattern, |out, p| out.key(p))
        }
        ScanKeysReply { cursor, keys } => {
            out.u64(*cursor)?;
            out.list("keys", keys, |out, k| out.key(k))
        }
        ScanRangeReply {
            hops,
            keys,
            end,
            last,
        } => {
            out.u16(*hops)?;
            out.list("keys", keys, |out, k| out.key(k))?;
            out.id(end)?;
            out.option(last, |out, last| {
                out.id(&last.0)?;
                out.key(&last.1)
            })
        }
        RingCommandReply { value } => out.u64(*value),
        RangeCommandReply { value, successor } => {
            out.u64(*value)?;
            out.node(successor)
        }
        Execute {
            key,
            commands,
            watched,
        } => {
            out.key(key)?;
            out.list("commands", commands, |out, w| out.command(w))?;
            out.list("watched", watched, S::key_version)
        }
        ExecuteReply {
            hops,
            version,
            replies,
        } => {
            out.u16(*hops)?;
            out.u64(*version)?;
            out.option(replies, |out, replies| {
                out.list("replies", replies, |out, r| out.command_reply(r, 0))
            })
        }
        GetReply { hops, version, value } => {
            out.u16(*hops)?;
            out.u64(*version)?;
            out.opt_value(value)
        }
        PutReply { hops, version } => {
            out.u16(*hops)?;
            out.u64(*version)
        }
        DeleteReply {
            hops,
            version,
            existed,
        } => {
            out.u16(*hops)?;
            out.u64(*version)?;
            out.bool(*existed)
        }
        Redirect { hops, node, exact } => {
            out.u16(*hops)?;
            out.node(node)?;
            out.bool(*exact)
        }
        Error { code, hops, text } => {
            out.u16(*code as u16)?;
            out.u16(*hops)?;
            out.text("error text", text)
        }
        FindSuccessor { id } => out.id(id),
        FindSuccessorReply { lookup } => out.lookup(lookup),
        GetNeighbors | Ping | GetInfo | GetStats => Ok(()),
        Login { user, password } => {
            out.text("user", user)?;
            out.bytes("password", crate::limits::MAX_PASSWORD_BYTES, password)
        }
        LoginReply { user } => out.text("user", user),
        Neighbors {
            predecessors,
            successors,
            down,
            gone,
        } => {
            out.nodes("predecessors", predecessors)?;
            out.nodes("successors", successors)?;
            out.u64(*down)?;
            out.nodes("gone", gone)
        }
        Notify {
            node,
            incarnation,
            active,
        } => {
            out.node(node)?;
            out.u64(*incarnation)?;
            out.bool(*active)
        }
        NotifyReply {
            accepted,
            previous,
            clock,
        } => {
            out.bool(*accepted)?;
            out.option(previous, S::node)?;
            out.u64(*clock)
        }
        Pong { node } => out.node(node),
        Forget { node, whole_host } => {
            out.node(node)?;
            out.bool(*whole_host)
        }
        Leaving(notice) => {
            let LeaveNotice {
                node,
                predecessor,
                successors,
                clock,
                gone,
            } = &**notice;
            out.node(node)?;
            out.option(predecessor, S::node)?;
            out.nodes("successors", successors)?;
            out.u64(*clock)?;
            out.nodes("gone", gone)
        }
        LeavingReply { accepted } => out.bool(*accepted),
        GetMembers { after } => out.id(after),
        ClaimPositions { seen: n, nodes } | Claims { version: n, nodes } => {
            out.u64(*n)?;
            out.nodes("nodes", nodes)
        }
        Members { nodes, more } => {
            out.nodes("nodes", nodes)?;
            out.bool(*more)
        }
        MemberEvents { limit, events } => {
            out.id(limit)?;
            out.list("events", events, S::member_event)
        }
        MemberEventsAck { applied: n }
        | ReplicateAck { applied: n }
        | CollectTombstonesReply { removed: n } => out.u32(*n),
        Lease(request) => {
            let LeaseRequest {
                primary,
                start,
                holder,
            } = &**request;
            out.node(primary)?;
            out.id(start)?;
            out.node(holder)
        }
        LeaseReply {
            granted,
            holder,
            fence,
            clock,
        } => {
            out.bool(*granted)?;
            out.option(holder, S::node)?;
            out.u64(*fence)?;
            out.u64(*clock)
        }
        ForgetReply { forgotten } => out.bool(*forgotten),
        Transfer {
            transfer_id,
            start,
            end,
            items,
            last,
            clock,
        } => {
            out.u64(*transfer_id)?;
            out.id(start)?;
            out.id(end)?;
            out.list("items", items, S::item)?;
            out.bool(*last)?;
            out.u64(*clock)
        }
        TransferAck {
            transfer_id,
            accepted,
        } => {
            out.u64(*transfer_id)?;
            out.bool(*accepted)
        }
        Replicate { items } => out.list("items", items, S::item),
        SyncDigests {
            start,
            end,
            digests,
            holder_ms,
        } => {
            out.id(start)?;
            out.id(end)?;
            out.list("digests", digests, |out, d| out.u64(*d))?;
            out.u64(*holder_ms)
        }
        SyncDigestsReply { differing, trusted } => {
            out.list("differing", differing, |out, i| out.u32(*i))?;
            out.bool(*trusted)
        }
        SyncKeys { start, end, keys } => {
            out.id(start)?;
            out.id(end)?;
            out.list("keys", keys, S::key_version)
        }
        SyncKeysReply {
            want,
            newer,
            truncated,
        } => {
            out.list("want", want, |out, key| out.key(key))?;
            out.list("newer", newer, S::item)?;
            out.bool(*truncated)
        }
        CollectTombstones { start, end, before } => {
            out.id(start)?;
            out.id(end)?;
            out.u64(*before)
        }
        Info(info) => {
            out.node(&info.node)?;
            out.u8(info.status as u8)?;
            out.option(&info.predecessor, S::node)?;
            out.nodes("successors", &info.successors)?;
            out.nodes("fingers", &info.fingers)?;
            out.u64(info.keys)?;
            out.bool(info.keeps_down_members)
        }
        Stats { counters } => out.list("counters", counters, S::counter),
    }
}
