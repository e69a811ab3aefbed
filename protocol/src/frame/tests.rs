use super::decode::{
    DResult, COUNTER_MIN_BYTES, ITEM_MIN_BYTES, KEY_MIN_BYTES, KEY_VERSION_MIN_BYTES, MEMBER_EVENT_MIN_BYTES,
    NODE_REF_MIN_BYTES, TRUNCATED,
};
use super::encode::Sink;
use super::*;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

use bytes::{Bytes, BytesMut};

use crate::id::{Id, ID_BYTES};
use crate::message::{CommandReply, ErrorCode, Item, Lookup, MemberEvent, NodeInfo, NodeRef, NodeStatus};
use crate::testing::{feed_random_inputs, Rng};

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
        addr: SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), port)).into(),
    }
}

fn info(
    status: NodeStatus,
    predecessor: Option<NodeRef>,
    successors: Vec<NodeRef>,
    fingers: Vec<NodeRef>,
) -> Message {
    Message::Info(Box::new(NodeInfo {
        node: v4(7000),
        status,
        predecessor,
        successors,
        fingers,
        keys: 12_345,
        keeps_down_members: true,
    }))
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
        Execute {
            key: b("{u}a"),
            commands: vec![vec![b("INCR"), b("{u}a")], vec![], vec![b("GET"), Bytes::new()]],
            watched: vec![(b("{u}b"), 7), (Bytes::new(), 0)],
        },
        Execute {
            key: Bytes::new(),
            commands: vec![],
            watched: vec![],
        },
        RingCommand {
            command: crate::RangeCommand::Flush,
        },
        RangeCommand {
            command: crate::RangeCommand::Count,
        },
        RingCommandReply { value: u64::MAX },
        ScanKeys {
            cursor: 0,
            count: 10,
            pattern: Some(b("k*")),
            random: false,
        },
        ScanKeys {
            cursor: u64::MAX,
            count: 0,
            pattern: None,
            random: true,
        },
        ScanRange {
            from: Id::MAX,
            after_key: Some(b("a")),
            count: 5,
            pattern: None,
        },
        ScanKeysReply {
            cursor: 7,
            keys: vec![b("a"), Bytes::new()],
        },
        ScanRangeReply {
            hops: 1,
            keys: vec![],
            end: Id::ZERO,
            last: Some(Box::new((Id::MAX, b("z")))),
        },
        ScanRangeReply {
            hops: 0,
            keys: vec![b("k")],
            end: Id::MAX,
            last: None,
        },
        RangeCommandReply {
            value: 0,
            successor: v6(9),
        },
        ExecuteReply {
            hops: 3,
            version: u64::MAX,
            replies: None,
        },
        ExecuteReply {
            hops: 0,
            version: 0,
            replies: Some(vec![
                CommandReply::Nil,
                CommandReply::Status("OK".into()),
                CommandReply::Int(i64::MIN),
                CommandReply::Int(-1),
                CommandReply::Bulk(b("v")),
                CommandReply::Error("ERR value is not an integer or out of range".into()),
                CommandReply::Array(vec![]),
                CommandReply::Array(vec![
                    CommandReply::Nil,
                    CommandReply::Array(vec![CommandReply::Array(vec![CommandReply::Array(vec![])])]),
                ]),
            ]),
        },
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
        Lease(Box::new(crate::LeaseRequest {
            primary: v4(1),
            start: Id::hash(b"p"),
            holder: v6(2),
        })),
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
        Forget {
            node: v6(3),
            whole_host: false,
        },
        Forget {
            node: v4(2),
            whole_host: true,
        },
        ForgetReply { forgotten: true },
        ClaimPositions {
            seen: 0,
            nodes: vec![],
        },
        ClaimPositions {
            seen: 3,
            nodes: vec![v4(1), v6(2)],
        },
        Claims {
            version: u64::MAX,
            nodes: vec![v4(2)],
        },
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
        Leaving(Box::new(crate::LeaveNotice {
            node: v4(1),
            predecessor: None,
            successors: vec![],
            clock: 0,
            gone: vec![],
        })),
        Leaving(Box::new(crate::LeaveNotice {
            node: v6(1),
            predecessor: Some(v4(2)),
            successors: vec![v4(3), v6(4)],
            clock: u64::MAX,
            gone: vec![v4(5)],
        })),
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
                    expires_at: 0,
                },
                Item {
                    key: b("a"),
                    version: 7,
                    value: Some(b("alpha")),
                    expires_at: 0,
                },
                Item {
                    key: b("b"),
                    version: 8,
                    value: Some(Bytes::new()),
                    expires_at: 0,
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
                    expires_at: 0,
                },
                Item {
                    key: Bytes::new(),
                    version: 1,
                    value: None,
                    expires_at: 0,
                },
            ],
        },
        ReplicateAck { applied: 0 },
        ReplicateAck { applied: u32::MAX },
        SyncDigests {
            start: Id::ZERO,
            end: Id::MAX,
            digests: vec![],
            holder_ms: 0,
        },
        SyncDigests {
            start: Id::from_u64(10),
            end: Id::from_u64(3),
            digests: vec![0, 1, u64::MAX, 0xDEAD_BEEF],
            holder_ms: 1_700_000_000_000,
        },
        SyncDigestsReply {
            differing: vec![],
            trusted: false,
        },
        SyncDigestsReply {
            differing: vec![0, 3, u32::MAX],
            trusted: true,
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
                    expires_at: 0,
                },
                Item {
                    key: b("t"),
                    version: 10,
                    value: None,
                    expires_at: 0,
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
        Login {
            user: "alice".into(),
            password: Bytes::from_static(b"s3cret \x00 bytes"),
        },
        Login {
            user: String::new(),
            password: Bytes::new(),
        },
        LoginReply {
            user: "default".into(),
        },
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
                    vnode: (i % 2 == 0).then_some(i as u16),
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
    let Ok(()) = out.node(node);
    out
}

fn df(bytes: &[u8]) -> DResult<Frame> {
    decode_frame(Bytes::copy_from_slice(bytes))
}

/// The decoder bounds a list's allocation by `count x minimum <= bytes left`: each minimum must
/// be the size of the smallest element of its kind (a larger one would refuse valid frames, a
/// smaller one would loosen the bound).
#[test]
fn list_element_minimums_are_the_smallest_encodings() {
    fn size(write: impl FnOnce(&mut Vec<u8>) -> Result<(), Infallible>) -> usize {
        let mut out = Vec::new();
        let Ok(()) = write(&mut out);
        out.len()
    }
    let node = NodeRef {
        id: Id::ZERO,
        addr: SocketAddr::from(([0, 0, 0, 0], 0)).into(),
    };
    let item = Item {
        key: Bytes::new(),
        version: 0,
        value: None,
        expires_at: 0,
    };
    let event = MemberEvent {
        node,
        alive: false,
        stamp: 0,
    };
    assert_eq!(size(|out| out.node(&node)), NODE_REF_MIN_BYTES);
    assert_eq!(size(|out| out.item(&item)), ITEM_MIN_BYTES);
    assert_eq!(
        size(|out| out.key_version(&(Bytes::new(), 0))),
        KEY_VERSION_MIN_BYTES
    );
    assert_eq!(size(|out| out.key(&[])), KEY_MIN_BYTES);
    assert_eq!(size(|out| out.counter(&(String::new(), 0))), COUNTER_MIN_BYTES);
    assert_eq!(size(|out| out.member_event(&event)), MEMBER_EVENT_MIN_BYTES);
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
        vnode: None,
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
        [0x43, 0x4B, 5, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 5, 0, 0, 0, 1, b'k']
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
            node: NodeRef {
                id: Id::ZERO,
                addr: addr.into(),
            },
        },
    );
    let Message::Pong { node } = df(&frame.to_bytes().unwrap()).unwrap().message else {
        panic!()
    };
    assert_eq!(
        node.addr.host,
        SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 7000, 0, 0))
    );
}

/// The opcode table in the module doc is what a reader (or another implementation) goes by:
/// it must list exactly the opcodes of `opcode.rs`, in the same order, each with its message.
#[test]
fn the_module_doc_lists_the_opcode_table() {
    let listed: Vec<(u8, &str)> = include_str!("mod.rs")
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("//!  0x")?.split_whitespace();
            let op = u8::from_str_radix(words.next()?, 16).ok()?;
            Some((op, words.next()?))
        })
        .collect();
    assert_eq!(listed, opcode::VARIANTS);
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
        "EXECUTE",
        "RING_COMMAND",
        "RANGE_COMMAND",
        "SCAN_KEYS",
        "SCAN_RANGE",
        "FIND_SUCCESSOR",
        "GET_NEIGHBORS",
        "NOTIFY",
        "PING",
        "LEAVING",
        "GET_MEMBERS",
        "MEMBER_EVENTS",
        "LEASE",
        "FORGET",
        "CLAIM_POSITIONS",
        "TRANSFER",
        "REPLICATE",
        "SYNC_DIGESTS",
        "SYNC_KEYS",
        "COLLECT_TOMBSTONES",
        "GET_INFO",
        "GET_STATS",
        "LOGIN",
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
            assert!(
                buf.capacity() < HEADER_BYTES + MAX_FRAME_BYTES,
                "nothing reserved from the header: the buffer grows as bytes arrive"
            );
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
    for op in [0x00, 0x04, 0x0A, 0x7f, 0x80, 0x8A, 0xfe] {
        let bytes = raw(op, 0, 1, &[]);
        header_error(&bytes, DecodeError::UnknownOpcode(op));
        header_error(&bytes[..4], DecodeError::UnknownOpcode(op));
    }
}

#[test]
fn unknown_flags() {
    for flags in [32, 36, 0x8000, 0x8001, u16::MAX] {
        let bytes = raw(opcode::PING, flags, 1, &[]);
        header_error(&bytes, DecodeError::UnknownFlags(flags));
        header_error(&bytes[..6], DecodeError::UnknownFlags(flags));
    }
    assert_eq!(
        Frame {
            request_id: 1,
            flags: FLAG_DEADLINE,
            deadline_ms: 0,
            vnode: None,
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
    // Exactly the maximum is fine: more bytes needed, and nothing reserved for them (a peer
    // that announces 32 MiB and sends 18 bytes costs 18 bytes).
    let bytes = raw_len(opcode::GET, 0, 1, MAX_FRAME_BYTES as u32, &[]);
    assert_eq!(check(&bytes), Ok(None));
    let mut buf = BytesMut::from(&bytes[..]);
    let (_, allocated) = allocated_during(|| assert_eq!(decode(&mut buf), Ok(None)));
    assert_eq!(allocated, 0);
    assert!(buf.capacity() < 1024);
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
    let too_long = |field, max: usize| DecodeError::FieldTooLarge {
        field,
        len: max + 1,
        max,
    };
    let mut payload = vec![0, 1, 0, 0];
    payload.extend_from_slice(&be32(MAX_TEXT_BYTES + 1));
    payload_error(
        &raw(opcode::ERROR, 0, 1, &payload),
        too_long("error text", MAX_TEXT_BYTES),
    );
    let mut payload = be32(1).to_vec();
    payload.extend_from_slice(&be32(MAX_TEXT_BYTES + 1));
    payload.extend_from_slice(&[0; 8]);
    payload_error(
        &raw(opcode::STATS, 0, 1, &payload),
        too_long("counter name", MAX_TEXT_BYTES),
    );
    // Each list, after the fields that precede it, claiming one element too many.
    let info = [node_bytes(&v4(1)), vec![2, 0, 0, 0, 0, 0]].concat();
    for (op, before, field) in [
        (opcode::NEIGHBORS, be32(0).to_vec(), "successors"),
        (opcode::STATS, vec![], "counters"),
        (opcode::TRANSFER, vec![0; 8 + 40], "items"),
        (opcode::FIND_SUCCESSOR_REPLY, vec![LOOKUP_FOUND, 0], "successors"),
        (opcode::INFO, info, "fingers"),
        (opcode::REPLICATE, vec![], "items"),
        (opcode::SYNC_DIGESTS, vec![0; 40], "digests"),
        (opcode::SYNC_DIGESTS_REPLY, vec![], "differing"),
        (opcode::SYNC_KEYS, vec![0; 40], "keys"),
        (opcode::SYNC_KEYS_REPLY, vec![], "want"),
        (opcode::SYNC_KEYS_REPLY, be32(0).to_vec(), "newer"),
    ] {
        let payload = [before, be32(MAX_LIST_LEN + 1).to_vec()].concat();
        payload_error(&raw(op, 0, 1, &payload), too_long(field, MAX_LIST_LEN));
    }
    // An oversize key inside a key list.
    let mut keys = vec![0; 40];
    keys.extend_from_slice(&be32(1));
    keys.extend_from_slice(&be32(MAX_KEY_BYTES + 1));
    keys.extend_from_slice(&[0; 8]);
    payload_error(
        &raw(opcode::SYNC_KEYS, 0, 1, &keys),
        too_long("key", MAX_KEY_BYTES),
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
    for code in [0u16, 12, u16::MAX] {
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
        "unsupported protocol version 9 (this build speaks version 5)"
    );
    assert_eq!(shown[3], "unknown opcode 0x7f");
    assert_eq!(shown[4], "unknown flag bits in 0x0002");
    assert_eq!(shown[6], "key length 5 exceeds the maximum of 4");
    assert_eq!(shown[7], "malformed frame: bool is neither 0 nor 1");
    assert_eq!(shown[8], "3 trailing bytes after the message");
    assert!(shown.iter().all(|s| !s.is_empty()));
}

// --- encode limits -------------------------------------------------------------------

/// The last batch of a transfer of the whole ring.
fn transfer(items: Vec<Item>) -> Message {
    Message::Transfer {
        transfer_id: 1,
        start: Id::ZERO,
        end: Id::MAX,
        items,
        last: true,
        clock: 0,
    }
}

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
        expires_at: 0,
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
            holder_ms: 0,
        },
        too_long("digests", MAX_LIST_LEN),
    );
    encode_error(
        Message::SyncDigestsReply {
            differing: vec![0; MAX_LIST_LEN + 1],
            trusted: true,
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
        Message::Leaving(Box::new(crate::LeaveNotice {
            node: v4(1),
            predecessor: None,
            successors: nodes,
            clock: 0,
            gone: vec![],
        })),
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
            value: Some(value),
            expires_at: 0
        };
        3
    ];
    let message = transfer(items);
    let len = 8 + 20 + 20 + 4 + 3 * (4 + 1 + 8 + 8 + 1 + 4 + MAX_VALUE_BYTES) + 1 + 8;
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
                holder_ms: u64::MAX,
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
    let encoded: Vec<Vec<u8>> = sample_frames().iter().map(|f| f.to_bytes().unwrap()).collect();
    let make = |i: usize, rng: &mut Rng, buf: &mut Vec<u8>| match i % 4 {
        // Pure noise.
        0 => rng.noise(buf, 256),
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
            rng.change_bytes(buf, 4, Rng::byte);
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
    };
    let decoded = feed_random_inputs(0x00C0_FFEE, 240_000, make, feed);
    // Sanity: the generator reaches deep into the parser, not only the header checks.
    assert!(decoded > 10_000, "only {decoded} random frames decoded");
}

// --- property-based round trip -------------------------------------------------------

mod prop {
    use std::net::{Ipv6Addr, SocketAddr};

    use crate::{CommandReply, NodeAddr};

    use bytes::{Bytes, BytesMut};
    use proptest::collection::vec;
    use proptest::option;
    use proptest::prelude::*;

    use super::super::*;
    use crate::id::Id;
    use crate::message::{ErrorCode, Item, Lookup, MemberEvent, NodeInfo, NodeRef, NodeStatus};

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
        (id(), addr(), prop_oneof![Just(0u16), any::<u16>()]).prop_map(|(id, host, vnode)| NodeRef {
            id,
            addr: NodeAddr::new(host, vnode),
        })
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
            expires_at: 0,
        })
    }

    fn command_reply() -> impl Strategy<Value = CommandReply> {
        let leaf = prop_oneof![
            Just(CommandReply::Nil),
            ".{0,8}".prop_map(CommandReply::Status),
            any::<i64>().prop_map(CommandReply::Int),
            blob().prop_map(CommandReply::Bulk),
            ".{0,8}".prop_map(CommandReply::Error),
        ];
        // Nested at most MAX_REPLY_DEPTH deep, as the wire allows.
        leaf.prop_recursive(4, 16, 3, |inner| vec(inner, 0..3).prop_map(CommandReply::Array))
    }

    fn error_code() -> impl Strategy<Value = ErrorCode> {
        (1u16..=11).prop_map(|c| ErrorCode::from_u16(c).unwrap())
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
            (
                blob(),
                vec(vec(blob(), 0..3), 0..3),
                vec((blob(), any::<u64>()), 0..3)
            )
                .prop_map(|(key, commands, watched)| Execute {
                    key,
                    commands,
                    watched
                }),
            (1u8..=2).prop_map(|c| RingCommand {
                command: crate::RangeCommand::from_u8(c).unwrap()
            }),
            (1u8..=2).prop_map(|c| RangeCommand {
                command: crate::RangeCommand::from_u8(c).unwrap()
            }),
            any::<u64>().prop_map(|value| RingCommandReply { value }),
            (any::<u64>(), any::<u32>(), option::of(blob()), any::<bool>()).prop_map(
                |(cursor, count, pattern, random)| ScanKeys {
                    cursor,
                    count,
                    pattern,
                    random
                }
            ),
            (id(), option::of(blob()), any::<u32>(), option::of(blob())).prop_map(
                |(from, after_key, count, pattern)| ScanRange {
                    from,
                    after_key,
                    count,
                    pattern
                }
            ),
            (any::<u64>(), vec(blob(), 0..3)).prop_map(|(cursor, keys)| ScanKeysReply { cursor, keys }),
            (any::<u16>(), vec(blob(), 0..3), id(), option::of((id(), blob()))).prop_map(
                |(hops, keys, end, last)| ScanRangeReply {
                    hops,
                    keys,
                    end,
                    last: last.map(Box::new)
                }
            ),
            (any::<u64>(), node()).prop_map(|(value, successor)| RangeCommandReply { value, successor }),
            (any::<u16>(), any::<u64>(), option::of(vec(command_reply(), 0..4))).prop_map(
                |(hops, version, replies)| ExecuteReply {
                    hops,
                    version,
                    replies
                }
            ),
            (any::<u16>(), any::<u64>(), option::of(blob())).prop_map(|(hops, version, value)| GetReply {
                hops,
                version,
                value
            }),
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
            (error_code(), any::<u16>(), ".{0,20}").prop_map(|(code, hops, text)| Error { code, hops, text }),
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
            (nodes(), nodes(), any::<u64>(), nodes()).prop_map(|(predecessors, successors, down, gone)| {
                Neighbors {
                    predecessors,
                    successors,
                    down,
                    gone,
                }
            }),
            (node(), any::<u64>(), any::<bool>()).prop_map(|(node, incarnation, active)| Notify {
                node,
                incarnation,
                active
            }),
            (node(), id(), node()).prop_map(|(primary, start, holder)| Lease(Box::new(
                crate::LeaseRequest {
                    primary,
                    start,
                    holder
                }
            ))),
            (any::<bool>(), option::of(node()), any::<u64>(), any::<u64>()).prop_map(
                |(granted, holder, fence, clock)| LeaseReply {
                    granted,
                    holder,
                    fence,
                    clock
                }
            ),
            (node(), any::<bool>()).prop_map(|(node, whole_host)| Forget { node, whole_host }),
            any::<bool>().prop_map(|forgotten| ForgetReply { forgotten }),
            (any::<u64>(), nodes()).prop_map(|(seen, nodes)| ClaimPositions { seen, nodes }),
            (any::<u64>(), nodes()).prop_map(|(version, nodes)| Claims { version, nodes }),
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
                    Leaving(Box::new(crate::LeaveNotice {
                        node,
                        predecessor,
                        successors,
                        clock,
                        gone,
                    }))
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
            (id(), id(), vec(any::<u64>(), 0..8), any::<u64>()).prop_map(
                |(start, end, digests, holder_ms)| {
                    SyncDigests {
                        start,
                        end,
                        digests,
                        holder_ms,
                    }
                }
            ),
            (vec(any::<u32>(), 0..8), any::<bool>())
                .prop_map(|(differing, trusted)| SyncDigestsReply { differing, trusted }),
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
                        Info(Box::new(NodeInfo {
                            node,
                            status,
                            predecessor,
                            successors,
                            fingers,
                            keys,
                            keeps_down_members,
                        }))
                    }
                ),
            Just(GetStats),
            vec((".{0,12}", any::<u64>()), 0..6).prop_map(|counters| Stats { counters }),
            (".{0,12}", blob()).prop_map(|(user, password)| Login { user, password }),
            ".{0,12}".prop_map(|user| LoginReply { user }),
        ]
    }

    fn frame() -> impl Strategy<Value = Frame> {
        (
            any::<u64>(),
            (0..=(FLAG_DIRECT | FLAG_FAILOVER), any::<bool>()).prop_map(|(f, r)| {
                if r {
                    f | crate::frame::FLAG_REPLICA_READ
                } else {
                    f
                }
            }),
            any::<u64>(),
            proptest::option::of(any::<u16>()),
            message(),
        )
            .prop_map(|(request_id, flags, deadline_ms, vnode, message)| Frame {
                request_id,
                flags,
                deadline_ms,
                vnode,
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
