//! The decoder: [`check`], [`decode`] and [`decode_frame`].
//!
//! Two stages, as in mini-redis. The header is validated first, from as few bytes as have
//! arrived (a wrong magic is refused at the first byte), and tells how long the frame is;
//! nothing is allocated until the whole frame is buffered. Then a `Reader` walks exactly that
//! frame: `Reader::frame` has one arm per opcode, reading the message's fields in declaration
//! order with methods named after the field encodings of the module doc's table, and refuses
//! any bytes left over.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use bytes::{Bytes, BytesMut};

use super::{
    opcode, Frame, ADDR_TAG_V4, ADDR_TAG_V6, ADDR_TAG_VNODE, FLAG_DEADLINE, FLAG_VNODE, HEADER_BYTES,
    KNOWN_FLAGS, LOOKUP_CLOSER, LOOKUP_FOUND, MAGIC, VERSION,
};
use crate::id::{Id, ID_BYTES};
use crate::limits::{MAX_FRAME_BYTES, MAX_KEY_BYTES, MAX_LIST_LEN, MAX_TEXT_BYTES, MAX_VALUE_BYTES};
use crate::message::{
    CommandReply, ErrorCode, Item, LeaseRequest, LeaveNotice, Lookup, MemberEvent, Message, NodeAddr,
    NodeInfo, NodeRef, NodeStatus, RangeCommand, MAX_REPLY_DEPTH,
};

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

pub(super) type DResult<T> = Result<T, DecodeError>;

// --- header ------------------------------------------------------------------------------

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
/// `Ok(None)` when more bytes are needed: `buf` is left as it was. No room is reserved from
/// the header's length: a peer that announces 32 MiB and sends 18 bytes costs 18 bytes, and the
/// buffer grows only as the bytes arrive. `Ok(Some(frame))` removes the
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

// --- payload: fields ---------------------------------------------------------------------

pub(super) const TRUNCATED: DecodeError = DecodeError::Malformed("a field runs past the end of the payload");

// The fewest bytes one list element can take on the wire. A list's count times this must fit
// in what is left of the frame before its `Vec` is allocated, so the allocation is bounded by
// the frame's real size, not by what its count claims.
pub(super) const NODE_REF_MIN_BYTES: usize = ID_BYTES + 1 + 4 + 2; // id, then an IPv4 address: tag, ip, port
pub(super) const ITEM_MIN_BYTES: usize = 4 + 8 + 8 + 1;
pub(super) const KEY_VERSION_MIN_BYTES: usize = 4 + 8;
pub(super) const KEY_MIN_BYTES: usize = 4;
pub(super) const COUNTER_MIN_BYTES: usize = 4 + 8;
pub(super) const MEMBER_EVENT_MIN_BYTES: usize = NODE_REF_MIN_BYTES + 1 + 8;

/// A cursor over one whole frame; `pos` starts after the header and never passes the end.
///
/// One method per field encoding of the module doc's table, named after it; each reads its
/// field at `pos` and moves past it, or fails without panicking.
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

    fn text(&mut self, field: &'static str) -> DResult<String> {
        let len = self.len(field, MAX_TEXT_BYTES)?;
        let bytes = self.take(len)?;
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::Malformed("text is not UTF-8"))?;
        Ok(text.to_owned())
    }

    /// An `Option<T>`: a tag, then `T` (read by `read`) when the tag is 1.
    #[inline]
    fn option<T>(&mut self, read: impl FnOnce(&mut Self) -> DResult<T>) -> DResult<Option<T>> {
        match self.u8()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            _ => Err(DecodeError::Malformed("option tag is neither 0 nor 1")),
        }
    }

    /// A `Vec<T>`: a count, then that many elements read by `read`.
    ///
    /// The count is checked against [`MAX_LIST_LEN`] and, at `min_element_bytes` an element
    /// (the `*_MIN_BYTES` of `T`), against the bytes left in the frame, both *before* the
    /// `Vec` is allocated: a tiny frame claiming a list of 65,536 nodes allocates nothing.
    #[inline]
    fn list<T>(
        &mut self,
        field: &'static str,
        min_element_bytes: usize,
        mut read: impl FnMut(&mut Self) -> DResult<T>,
    ) -> DResult<Vec<T>> {
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
        let mut list = Vec::with_capacity(count);
        for _ in 0..count {
            list.push(read(self)?);
        }
        Ok(list)
    }

    fn node(&mut self) -> DResult<NodeRef> {
        let id = self.id()?;
        let tag = self.u8()?;
        let host = match tag & !ADDR_TAG_VNODE {
            ADDR_TAG_V4 => SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(self.array::<4>()?), self.u16()?)),
            ADDR_TAG_V6 => SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(self.array::<16>()?),
                self.u16()?,
                0,
                0,
            )),
            _ => return Err(DecodeError::Malformed("address tag is neither 4 nor 6")),
        };
        let vnode = if tag & ADDR_TAG_VNODE != 0 { self.u16()? } else { 0 };
        Ok(NodeRef {
            id,
            addr: NodeAddr::new(host, vnode),
        })
    }

    fn nodes(&mut self, field: &'static str) -> DResult<Vec<NodeRef>> {
        self.list(field, NODE_REF_MIN_BYTES, Self::node)
    }

    fn item(&mut self) -> DResult<Item> {
        let key = self.key()?;
        let version = self.u64()?;
        let expires_at = self.u64()?;
        let value = self.option(Self::value)?;
        Ok(Item {
            key,
            version,
            value,
            expires_at,
        })
    }

    fn key_version(&mut self) -> DResult<(Bytes, u64)> {
        let key = self.key()?;
        let version = self.u64()?;
        Ok((key, version))
    }

    fn command(&mut self) -> DResult<Vec<Bytes>> {
        self.list("command words", KEY_MIN_BYTES, Self::value)
    }

    /// A [`CommandReply`] whose arrays nest at most `MAX_REPLY_DEPTH - depth` deeper (a frame
    /// of nested arrays cannot recurse without bound).
    fn command_reply(&mut self, depth: usize) -> DResult<CommandReply> {
        Ok(match self.u8()? {
            super::REPLY_NIL => CommandReply::Nil,
            super::REPLY_STATUS => CommandReply::Status(self.text("status")?),
            super::REPLY_INT => CommandReply::Int(self.u64()? as i64),
            super::REPLY_BULK => CommandReply::Bulk(self.value()?),
            super::REPLY_ERROR => CommandReply::Error(self.text("error text")?),
            super::REPLY_ARRAY => {
                if depth + 1 > MAX_REPLY_DEPTH {
                    return Err(DecodeError::Malformed("reply arrays nest too deep"));
                }
                CommandReply::Array(self.list("reply array", 1, |r| r.command_reply(depth + 1))?)
            }
            _ => return Err(DecodeError::Malformed("unknown command reply tag")),
        })
    }

    fn counter(&mut self) -> DResult<(String, u64)> {
        let name = self.text("counter name")?;
        let value = self.u64()?;
        Ok((name, value))
    }

    fn member_event(&mut self) -> DResult<MemberEvent> {
        let node = self.node()?;
        let alive = self.bool()?;
        let stamp = self.u64()?;
        Ok(MemberEvent { node, alive, stamp })
    }

    fn lookup(&mut self) -> DResult<Lookup> {
        match self.u8()? {
            LOOKUP_FOUND => {
                let predecessor = self.option(Self::node)?;
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

    fn range_command(&mut self) -> DResult<RangeCommand> {
        RangeCommand::from_u8(self.u8()?).ok_or(DecodeError::Malformed("unknown range command"))
    }

    fn error_code(&mut self) -> DResult<ErrorCode> {
        ErrorCode::from_u16(self.u16()?).ok_or(DecodeError::Malformed("unknown error code"))
    }

    fn status(&mut self) -> DResult<NodeStatus> {
        NodeStatus::from_u8(self.u8()?).ok_or(DecodeError::Malformed("unknown node status"))
    }

    // --- payload: messages -----------------------------------------------------------------

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
            match self.u64()? {
                // The encoder sets the flag only with a deadline: a frame has one encoding.
                0 => return Err(DecodeError::Malformed("FLAG_DEADLINE with a deadline of 0")),
                d => d,
            }
        } else {
            0
        };
        let vnode = if h.flags & FLAG_VNODE != 0 {
            Some(self.u16()?)
        } else {
            None
        };
        macro_rules! done {
            ($message:expr) => {{
                let extra = self.remaining();
                if extra != 0 {
                    return Err(DecodeError::TrailingBytes(extra));
                }
                return Ok(wrap(Frame {
                    request_id: h.request_id,
                    flags: h.flags & !(FLAG_DEADLINE | FLAG_VNODE),
                    deadline_ms,
                    vnode,
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
            opcode::SCAN_KEYS => {
                let cursor = self.u64()?;
                let count = self.u32()?;
                let pattern = self.option(Self::key)?;
                let random = self.bool()?;
                done!(ScanKeys {
                    cursor,
                    count,
                    pattern,
                    random
                })
            }
            opcode::SCAN_RANGE => {
                let from = self.id()?;
                let after_key = self.option(Self::key)?;
                let count = self.u32()?;
                let pattern = self.option(Self::key)?;
                done!(ScanRange {
                    from,
                    after_key,
                    count,
                    pattern
                })
            }
            opcode::SCAN_KEYS_REPLY => {
                let cursor = self.u64()?;
                let keys = self.list("keys", KEY_MIN_BYTES, Self::key)?;
                done!(ScanKeysReply { cursor, keys })
            }
            opcode::SCAN_RANGE_REPLY => {
                let hops = self.u16()?;
                let keys = self.list("keys", KEY_MIN_BYTES, Self::key)?;
                let end = self.id()?;
                let last = self.option(|r| Ok(Box::new((r.id()?, r.key()?))))?;
                done!(ScanRangeReply {
                    hops,
                    keys,
                    end,
                    last
                })
            }
            opcode::RING_COMMAND => {
                let command = self.range_command()?;
                done!(RingCommand { command })
            }
            opcode::RANGE_COMMAND => {
                let command = self.range_command()?;
                done!(RangeCommand { command })
            }
            opcode::RING_COMMAND_REPLY => {
                let value = self.u64()?;
                done!(RingCommandReply { value })
            }
            opcode::RANGE_COMMAND_REPLY => {
                let value = self.u64()?;
                let successor = self.node()?;
                done!(RangeCommandReply { value, successor })
            }
            opcode::EXECUTE => {
                let key = self.key()?;
                let commands = self.list("commands", 4, Self::command)?;
                let watched = self.list("watched", KEY_VERSION_MIN_BYTES, Self::key_version)?;
                done!(Execute {
                    key,
                    commands,
                    watched
                })
            }
            opcode::EXECUTE_REPLY => {
                let hops = self.u16()?;
                let version = self.u64()?;
                let replies = self.option(|r| r.list("replies", 1, |r| r.command_reply(0)))?;
                done!(ExecuteReply {
                    hops,
                    version,
                    replies
                })
            }
            opcode::GET_REPLY => {
                let hops = self.u16()?;
                let version = self.u64()?;
                let value = self.option(Self::value)?;
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
                done!(Lease(Box::new(LeaseRequest {
                    primary,
                    start,
                    holder
                })))
            }
            opcode::LEASE_REPLY => {
                let granted = self.bool()?;
                let holder = self.option(Self::node)?;
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
                let whole_host = self.bool()?;
                done!(Forget { node, whole_host })
            }
            opcode::FORGET_REPLY => {
                let forgotten = self.bool()?;
                done!(ForgetReply { forgotten })
            }
            opcode::NOTIFY_REPLY => {
                let accepted = self.bool()?;
                let previous = self.option(Self::node)?;
                let clock = self.u64()?;
                done!(NotifyReply {
                    accepted,
                    previous,
                    clock
                })
            }
            opcode::PING => done!(Ping),
            opcode::LOGIN => {
                let user = self.text("user")?;
                let password = self.bytes("password", crate::limits::MAX_PASSWORD_BYTES)?;
                done!(Login { user, password })
            }
            opcode::LOGIN_REPLY => {
                let user = self.text("user")?;
                done!(LoginReply { user })
            }
            opcode::PONG => {
                let node = self.node()?;
                done!(Pong { node })
            }
            opcode::LEAVING => {
                let node = self.node()?;
                let predecessor = self.option(Self::node)?;
                let successors = self.nodes("successors")?;
                let clock = self.u64()?;
                let gone = self.nodes("gone")?;
                done!(Leaving(Box::new(LeaveNotice {
                    node,
                    predecessor,
                    successors,
                    clock,
                    gone
                })))
            }
            opcode::LEAVING_REPLY => {
                let accepted = self.bool()?;
                done!(LeavingReply { accepted })
            }
            opcode::GET_MEMBERS => {
                let after = self.id()?;
                done!(GetMembers { after })
            }
            opcode::CLAIM_POSITIONS => {
                let seen = self.u64()?;
                let nodes = self.nodes("nodes")?;
                done!(ClaimPositions { seen, nodes })
            }
            opcode::CLAIMS => {
                let version = self.u64()?;
                let nodes = self.nodes("nodes")?;
                done!(Claims { version, nodes })
            }
            opcode::MEMBERS => {
                let nodes = self.nodes("nodes")?;
                let more = self.bool()?;
                done!(Members { nodes, more })
            }
            opcode::MEMBER_EVENTS => {
                let limit = self.id()?;
                let events = self.list("events", MEMBER_EVENT_MIN_BYTES, Self::member_event)?;
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
                let items = self.list("items", ITEM_MIN_BYTES, Self::item)?;
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
                let items = self.list("items", ITEM_MIN_BYTES, Self::item)?;
                done!(Replicate { items })
            }
            opcode::REPLICATE_ACK => {
                let applied = self.u32()?;
                done!(ReplicateAck { applied })
            }
            opcode::SYNC_DIGESTS => {
                let start = self.id()?;
                let end = self.id()?;
                let digests = self.list("digests", size_of::<u64>(), Self::u64)?;
                let holder_ms = self.u64()?;
                done!(SyncDigests {
                    start,
                    end,
                    digests,
                    holder_ms
                })
            }
            opcode::SYNC_DIGESTS_REPLY => {
                let differing = self.list("differing", size_of::<u32>(), Self::u32)?;
                let trusted = self.bool()?;
                done!(SyncDigestsReply { differing, trusted })
            }
            opcode::SYNC_KEYS => {
                let start = self.id()?;
                let end = self.id()?;
                let keys = self.list("keys", KEY_VERSION_MIN_BYTES, Self::key_version)?;
                done!(SyncKeys { start, end, keys })
            }
            opcode::SYNC_KEYS_REPLY => {
                let want = self.list("want", KEY_MIN_BYTES, Self::key)?;
                let newer = self.list("newer", ITEM_MIN_BYTES, Self::item)?;
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
                let predecessor = self.option(Self::node)?;
                let successors = self.nodes("successors")?;
                let fingers = self.nodes("fingers")?;
                let keys = self.u64()?;
                let keeps_down_members = self.bool()?;
                done!(Info(Box::new(NodeInfo {
                    node,
                    status,
                    predecessor,
                    successors,
                    fingers,
                    keys,
                    keeps_down_members
                })))
            }
            opcode::GET_STATS => done!(GetStats),
            opcode::STATS => {
                let counters = self.list("counters", COUNTER_MIN_BYTES, Self::counter)?;
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
