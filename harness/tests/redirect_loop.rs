//! Owners whose views disagree (during a partition, a node that thinks the other owns a key,
//! and the other the reverse) answer an operation with redirects to each other. The entry
//! must not bounce it between them without end: before this test, an entry on a partitioned
//! ring sent 65,536 hops in under six seconds and its hop counter overflowed (a panic in a
//! debug build; a wrapped count in release).

use std::net::SocketAddr;

use bytes::Bytes;
use chordkv_core::chord::config::PartitionPolicy;
use chordkv_core::chord::{Config, Node, Output, ReplyTo};
use chordkv_protocol::{Frame, Id, Message, NodeRef};

fn node_ref(port: u16) -> NodeRef {
    NodeRef::from_addr(SocketAddr::from(([127, 0, 0, 1], port)))
}

#[test]
fn owners_that_redirect_to_each_other_do_not_bounce_an_operation_for_ever() {
    let (a, b, c) = (node_ref(7001), node_ref(7002), node_ref(7003));
    let config = Config {
        partition_policy: PartitionPolicy::Available,
        replicas: 0,
        ..Config::default()
    };
    let max_hops = config.max_hops as usize;
    let mut entry = Node::new(a, config, 0);
    // A ring of three, as `a` sees it.
    let mut ring = [a, b, c];
    ring.sort_by_key(|n| n.id);
    let pos = ring.iter().position(|n| n.addr == a.addr).unwrap();
    let pred = ring[(pos + 2) % 3];
    let succs = [ring[(pos + 1) % 3], ring[(pos + 2) % 3]];
    let successor_of = |id: &Id| ring.iter().copied().find(|n| n.id >= *id).or(Some(ring[0]));
    entry.bootstrap(0, Some(pred), &succs, successor_of, None);
    while entry.poll_output().is_some() {}

    // A key `a` does not own.
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| {
            let id = Id::of_key(k.as_bytes());
            !chordkv_protocol::in_half_open(&id, &pred.id, &a.id)
        })
        .unwrap();
    let put = Message::Put {
        key: Bytes::from(key),
        value: Bytes::from_static(b"v"),
    };
    entry.handle_request(1, ReplyTo(1), Frame::new(1, put));

    // Every node asked answers: "the owner is the other one".
    let mut now = 1;
    let mut sent_in_a_row = 0usize;
    let mut most_in_a_row = 0usize;
    let mut answer = None;
    for _ in 0..100_000 {
        match entry.poll_output() {
            Some(Output::Send { to, frame }) => {
                sent_in_a_row += 1;
                most_in_a_row = most_in_a_row.max(sent_in_a_row);
                let other = if to == b.addr { c } else { b };
                let reply = match frame.message {
                    Message::FindSuccessor { .. } | Message::Put { .. } => Message::Redirect {
                        hops: 0,
                        node: other,
                        exact: true,
                    },
                    _ => continue,
                };
                entry.handle_reply(now, to.host, Frame::new(frame.request_id, reply));
            }
            Some(Output::Reply { frame, .. }) => {
                answer = Some(frame.message);
                break;
            }
            Some(_) => {}
            None => {
                // Nothing more now: the operation waits for a retry.
                sent_in_a_row = 0;
                now = entry.next_deadline().max(now + 1);
                entry.tick(now);
            }
        }
    }
    assert!(
        most_in_a_row <= max_hops + 1,
        "{most_in_a_row} hops in one attempt (at most {max_hops})"
    );
    match answer {
        Some(Message::Error { text, .. }) => assert!(text.contains("after retries"), "{text}"),
        other => panic!("the client gets an error once the retries are spent, got {other:?}"),
    }
}
