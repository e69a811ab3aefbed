//! The encoder.

use super::*;

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

type EResult<T> = Result<T, EncodeError>;

impl Frame {
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

pub(super) fn put_node(out: &mut Vec<u8>, node: &NodeRef) {
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
