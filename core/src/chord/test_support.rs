//! What the core's unit tests share.

use chordkv_protocol::NodeAddr;

use chordkv_protocol::{Id, NodeRef};

/// The node with id `v`, at 127.0.0.1:(1000 + v).
pub(crate) fn node(v: u64) -> NodeRef {
    NodeRef {
        id: Id::from_u64(v),
        addr: NodeAddr::host(std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + v as u16))),
    }
}
