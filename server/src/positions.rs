//! Where a starting node puts its virtual nodes on the ring (issue 14; the allocation itself
//! is [`chordkv_core::tokens`]).
//!
//! In order:
//!
//! 1. **One vnode**: the SHA-1 of the advertised address, as ever.
//! 2. **Saved with the store**: a store that kept an earlier run's data (Redis) also kept the
//!    position of the vnode whose keys it holds; the vnode takes it back, so a restart never
//!    moves data between positions, even when the whole ring restarted.
//! 3. **A new ring**: positions evenly spaced from the SHA-1 of the address.
//! 4. **Joining**: the node reads the ring's positions through its join peers (`GET_INFO`
//!    along the successor lists, over the ring's keyring when it has one) and chooses
//!    positions that even out what each host owns as primary and what it stores counting the
//!    `--replicas` copies ([`tokens::allocate_positions`]), and claims them at the ring's
//!    lowest-address host against others joining at once ([`claim_hosts`]); a ring that still
//!    lists every vnode of this address (a restart before the others forgot it) gives each
//!    vnode its position back.
//! 5. **No join peer answers** (three rounds over the join peers, a second apart): random
//!    positions derived from the address
//!    ([`tokens::random_positions`], Chord section 6.9), with a warning: the node still
//!    joins when the ring comes back, only less evenly.
//!
//! The chosen positions are saved with each vnode's store partition (step 2 next time).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use chordkv_core::store::Store;
use chordkv_core::tokens;
use chordkv_protocol::{Frame, Id, Message, NodeAddr, NodeInfo, NodeRef};

use crate::keyring::Keyring;
use crate::secure::{connect_blocking, BlockingChannel};

/// The most positions read from a ring (a walk stops there).
pub const MAX_RING_POSITIONS: usize = 1 << 20;

/// The positions of a node's vnodes and how they were chosen (one line for the log).
pub struct Chosen {
    pub ids: Vec<Id>,
    pub how: String,
}

/// Chooses the positions of the `vnodes` vnodes of the node advertised at `me`, for a ring
/// keeping `replicas` copies beyond the primary (see the module docs), and saves them with
/// `stores` (one partition per vnode).
pub fn choose(
    me: SocketAddr,
    vnodes: u16,
    replicas: usize,
    join: &[SocketAddr],
    stores: &[Arc<dyn Store>],
    keyring: Option<&Keyring>,
    timeout: Duration,
) -> Chosen {
    let chosen = choose_unsaved(me, vnodes, replicas, join, stores, keyring, timeout);
    if vnodes > 1 {
        for (store, id) in stores.iter().zip(&chosen.ids) {
            if let Err(e) = store.save_position(id) {
                tracing::warn!(vnode_id = %id.short(8), error = %e, "cannot save the position with its store");
            }
        }
    }
    chosen
}

fn choose_unsaved(
    me: SocketAddr,
    vnodes: u16,
    replicas: usize,
    join: &[SocketAddr],
    stores: &[Arc<dyn Store>],
    keyring: Option<&Keyring>,
    timeout: Duration,
) -> Chosen {
    if vnodes <= 1 {
        return Chosen {
            ids: vec![Id::of_addr(&me)],
            how: "the hash of its address".into(),
        };
    }
    let saved: Vec<Option<Id>> = stores.iter().map(|s| s.saved_position().ok().flatten()).collect();
    if saved.len() == usize::from(vnodes) && saved.iter().all(|s| s.is_some()) {
        return Chosen {
            ids: saved.into_iter().flatten().collect(),
            how: "saved with the store".into(),
        };
    }
    if join.is_empty() {
        return Chosen {
            ids: tokens::allocate_positions(&[], me, vnodes, replicas),
            how: "evenly spaced (a new ring)".into(),
        };
    }
    let mut why = Vec::new();
    // A join peer that does not answer at once (busy, paused, restarting) is asked again, a
    // few rounds apart, before the node settles for random positions.
    let attempts = (0..READ_ROUNDS).flat_map(|round| {
        join.iter()
            .enumerate()
            .map(move |(i, via)| (round > 0 && i == 0, via))
    });
    for (new_round, via) in attempts {
        if new_round {
            std::thread::sleep(READ_ROUND_PAUSE);
        }
        match read_ring(*via, keyring, timeout) {
            Ok(listed) => {
                // A restart before the ring forgot us: each vnode takes back its own position
                // (peers know it by the vnode's address).
                let mut mine: BTreeMap<u16, Id> = listed
                    .iter()
                    .filter(|(_, a)| a.host == me)
                    .map(|(id, a)| (a.vnode, *id))
                    .collect();
                if (0..vnodes).all(|v| mine.contains_key(&v)) {
                    return Chosen {
                        ids: (0..vnodes).map(|v| mine[&v]).collect(),
                        how: format!("the ones the ring still lists for this address (read through {via})"),
                    };
                }
                let ring: Vec<(Id, SocketAddr)> = listed.iter().map(|(id, a)| (*id, a.host)).collect();
                let hosts = ring.iter().map(|(_, h)| *h).collect::<BTreeSet<_>>().len();
                // A vnode the ring still lists (this process was stopped while it joined, or
                // ran fewer vnodes) keeps its position, so no member is listed under two
                // ids; the others are placed around them.
                mine.retain(|v, _| *v < vnodes);
                let at = claim_hosts(me, &ring, *via);
                // Join peers listed before `via` did not answer just now.
                let peers = &join[join.iter().position(|j| j == via).unwrap_or(0)..];
                let (ids, claimed) =
                    allocate_and_claim(me, vnodes, replicas, &ring, &mine, &at, peers, keyring, timeout);
                let kept = mine.len();
                return Chosen {
                    ids,
                    how: format!(
                        "balanced against the {} positions of {hosts} host{} read through {via}{}{claimed}",
                        ring.len(),
                        if hosts == 1 { "" } else { "s" },
                        if kept > 0 {
                            format!(", {kept} of them its own still listed")
                        } else {
                            String::new()
                        }
                    ),
                };
            }
            Err(e) => {
                let e = match e.kind() {
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                        format!("no answer within {} ms", timeout.as_millis())
                    }
                    _ => e.to_string(),
                };
                why.push(format!("{via}: {e}"));
            }
        }
    }
    why.dedup();
    Chosen {
        ids: tokens::random_positions(&me, vnodes),
        how: format!(
            "random (hashes of the address), since the ring could not be read ({})",
            why.join("; ")
        ),
    }
}

/// Rounds of ring reads over the join peers before random positions, and the pause between.
const READ_ROUNDS: usize = 3;
const READ_ROUND_PAUSE: Duration = Duration::from_secs(1);

/// The most times a joiner chooses again after its claim was refused (each refusal means
/// another host's claim was accepted: with `n` hosts joining at once, `n - 1` at most).
const MAX_CLAIM_ROUNDS: usize = 64;

/// The most ring hosts a joiner tries for its claim before its join peer (each one that does
/// not answer costs a connection timeout).
const MAX_CLAIM_HOSTS: usize = 3;

/// Where a joiner claims its positions, in the order it tries them: the hosts of the ring it
/// read (`ring`, read through `via`), lowest address first, at most [`MAX_CLAIM_HOSTS`] of
/// them, then `via`. Every joiner that reads the same ring tries the same host first, whatever
/// its join peer: claims made at different hosts do not see each other, and hosts started at
/// once through different join peers chose the same positions (one of 8 owned nothing).
fn claim_hosts(me: SocketAddr, ring: &[(Id, SocketAddr)], via: SocketAddr) -> Vec<SocketAddr> {
    let hosts: BTreeSet<SocketAddr> = ring.iter().map(|(_, h)| *h).filter(|h| *h != me).collect();
    let mut at: Vec<SocketAddr> = hosts.into_iter().take(MAX_CLAIM_HOSTS).collect();
    if !at.contains(&via) {
        at.push(via);
    }
    at
}

/// Chooses the positions of the `vnodes` vnodes of `me` around `ring` and the positions other
/// joining hosts claimed at the first host of `at` that answers ([`claim_hosts`]), and claims
/// them there (`CLAIM_POSITIONS`; see [`chordkv_core::chord::claims`]); a refused claim means
/// another host's was accepted in between: choose again around it. `keep`: vnodes whose
/// positions the ring still lists, kept as they are; positions an earlier run of `me` claimed,
/// at that host, the others of `at` or the join `peers`, are taken back. Returns the positions
/// and how the claim went (for the log); when no host of `at` answers the read of its claims
/// (down, or an older version that keeps none), the positions go unclaimed.
#[allow(clippy::too_many_arguments)]
fn allocate_and_claim(
    me: SocketAddr,
    vnodes: u16,
    replicas: usize,
    ring: &[(Id, SocketAddr)],
    keep: &BTreeMap<u16, Id>,
    at: &[SocketAddr],
    peers: &[SocketAddr],
    keyring: Option<&Keyring>,
    timeout: Duration,
) -> (Vec<Id>, String) {
    let allocate = |keep: &BTreeMap<u16, Id>, claimed: &[NodeRef]| -> Vec<Id> {
        let mut all: BTreeMap<Id, SocketAddr> = ring.iter().copied().collect();
        for n in claimed.iter().filter(|n| n.addr.host != me) {
            all.entry(n.id).or_insert(n.addr.host);
        }
        let all: Vec<(Id, SocketAddr)> = all.into_iter().collect();
        let mut fresh = tokens::allocate_positions(&all, me, vnodes, replicas)
            .into_iter()
            .filter(|id| !keep.values().any(|m| m == id));
        (0..vnodes)
            .map(|v| keep.get(&v).copied().or_else(|| fresh.next()))
            .collect::<Option<Vec<Id>>>()
            .unwrap_or_else(|| tokens::random_positions(&me, vnodes))
    };
    let mut refusals = Vec::new();
    let mut read = None;
    for (k, host) in at.iter().enumerate() {
        match Channel::open(*host, keyring, timeout).and_then(|mut c| Ok((c.claim(0, Vec::new())?, c))) {
            Ok(r) => {
                read = Some((k, r));
                break;
            }
            Err(e) => refusals.push(format!("{host}: {e}")),
        }
    }
    let Some((k, ((mut seen, mut claimed), mut channel))) = read else {
        return (
            allocate(keep, &[]),
            format!(", unclaimed ({})", refusals.join("; ")),
        );
    };
    let via = at[k];
    // An earlier run of this process on this address claimed positions and was stopped
    // (killed, crashed) while its vnodes joined: some of them may be in peers' tables under
    // those ids, though not in the ring read yet. Its vnodes take them back, as they take
    // back positions the ring still lists; new ids at the same addresses would leave peers
    // listing a vnode under an id it no longer has. That run claimed at the lowest-address
    // host of the ring it read, which may have had fewer hosts: the claims here first, then
    // those of the other hosts we would claim at and of the join peers.
    let own = |n: &NodeRef| n.addr.host == me && n.addr.vnode < vnodes;
    let mut earlier: Vec<NodeRef> = claimed.iter().copied().filter(own).collect();
    let mut elsewhere: Vec<SocketAddr> = Vec::new();
    for h in at[k + 1..].iter().chain(peers) {
        if *h != via && *h != me && !elsewhere.contains(h) {
            elsewhere.push(*h);
        }
    }
    for host in elsewhere {
        if let Ok((_, listed)) =
            Channel::open(host, keyring, timeout).and_then(|mut c| c.claim(0, Vec::new()))
        {
            earlier.extend(listed.into_iter().filter(own));
        }
    }
    let mut keep = keep.clone();
    let mut taken_back = 0;
    for n in &earlier {
        let used = keep.values().any(|id| *id == n.id) || ring.iter().any(|(id, h)| *id == n.id && *h != me);
        if !used && !keep.contains_key(&n.addr.vnode) {
            keep.insert(n.addr.vnode, n.id);
            taken_back += 1;
        }
    }
    let taken_back = match taken_back {
        0 => String::new(),
        n => format!(", {n} taken back from its own earlier claim"),
    };
    for round in 0..MAX_CLAIM_ROUNDS {
        let ids = allocate(&keep, &claimed);
        let nodes: Vec<NodeRef> = (0..vnodes)
            .zip(&ids)
            .map(|(v, id)| NodeRef {
                id: *id,
                addr: NodeAddr::new(me, v),
            })
            .collect();
        match channel.claim(seen, nodes.clone()) {
            Ok((_, listed)) if nodes.iter().all(|n| listed.contains(n)) => {
                let others = claimed.iter().filter(|n| n.addr.host != me).count();
                let around = match (round, others) {
                    (0, 0) => String::new(),
                    _ => format!(" around {others} positions claimed there, after {round} refusals"),
                };
                return (ids, format!(", claimed at {via}{around}{taken_back}"));
            }
            Ok((version, listed)) => (seen, claimed) = (version, listed),
            Err(e) => return (ids, format!(", unclaimed ({via}: {e})")),
        }
    }
    let ids = allocate(&keep, &claimed);
    (
        ids,
        format!(", unclaimed (refused {MAX_CLAIM_ROUNDS} times at {via})"),
    )
}

/// A connection to one host for `GET_INFO`: over the keyring, or plain (as a client).
enum Channel {
    Peer(Box<BlockingChannel>),
    Plain(TcpStream, bytes::BytesMut),
}

impl Channel {
    fn open(host: SocketAddr, keyring: Option<&Keyring>, timeout: Duration) -> std::io::Result<Channel> {
        match keyring {
            Some(k) => {
                let c = connect_blocking(host, k)?;
                c.stream.set_read_timeout(Some(timeout))?;
                c.stream.set_write_timeout(Some(timeout))?;
                Ok(Channel::Peer(Box::new(c)))
            }
            None => {
                let s = TcpStream::connect_timeout(&host, timeout)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                s.set_nodelay(true)?;
                Ok(Channel::Plain(s, bytes::BytesMut::new()))
            }
        }
    }

    /// Sends `message` to vnode `vnode` of the host and waits for the reply.
    fn call(&mut self, vnode: u16, message: Message) -> std::io::Result<Message> {
        let frame = Frame::new(1, message);
        let frame = if vnode == 0 { frame } else { frame.to_vnode(vnode) };
        let bytes = frame
            .to_bytes()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let reply = match self {
            Channel::Peer(c) => {
                c.send(&bytes)?;
                c.recv_frame()?
            }
            Channel::Plain(s, buf) => {
                s.write_all(&bytes)?;
                let mut chunk = [0u8; 4096];
                loop {
                    if let Some(f) =
                        chordkv_protocol::decode(buf).map_err(|e| std::io::Error::other(e.to_string()))?
                    {
                        break f;
                    }
                    let n = s.read(&mut chunk)?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        };
        match reply.message {
            Message::Error { text, .. } => Err(std::io::Error::other(text)),
            m => Ok(m),
        }
    }

    fn info(&mut self, vnode: u16) -> std::io::Result<NodeInfo> {
        match self.call(vnode, Message::GetInfo)? {
            Message::Info(info) => Ok(*info),
            other => Err(std::io::Error::other(format!(
                "GET_INFO answered with {}",
                other.name()
            ))),
        }
    }

    /// `CLAIM_POSITIONS`: the claims' version and every position claimed, after claiming
    /// `nodes` if no claim was accepted since `seen`.
    fn claim(&mut self, seen: u64, nodes: Vec<NodeRef>) -> std::io::Result<(u64, Vec<NodeRef>)> {
        match self.call(0, Message::ClaimPositions { seen, nodes })? {
            Message::Claims { version, nodes } => Ok((version, nodes)),
            other => Err(std::io::Error::other(format!(
                "CLAIM_POSITIONS answered with {}",
                other.name()
            ))),
        }
    }
}

/// Every position of the ring `via` is in, as `(id, address)`: a walk along the successor
/// lists (each step jumps to the last successor a node lists), one connection per host.
pub fn read_ring(
    via: SocketAddr,
    keyring: Option<&Keyring>,
    timeout: Duration,
) -> std::io::Result<Vec<(Id, NodeAddr)>> {
    let mut channels: BTreeMap<SocketAddr, Channel> = BTreeMap::new();
    let mut positions: BTreeMap<Id, NodeAddr> = BTreeMap::new();
    let mut ask = |node: NodeRef| -> std::io::Result<NodeInfo> {
        let host = node.addr.host;
        if let std::collections::btree_map::Entry::Vacant(e) = channels.entry(host) {
            e.insert(Channel::open(host, keyring, timeout)?);
        }
        let result = channels.get_mut(&host).map(|c| c.info(node.addr.vnode));
        match result {
            Some(Ok(info)) => Ok(info),
            Some(Err(e)) => {
                channels.remove(&host);
                Err(e)
            }
            None => Err(std::io::Error::other("no channel")),
        }
    };
    let first = ask(NodeRef::from_addr(via))?;
    let start = first.node.id;
    positions.insert(start, first.node.addr);
    let mut info = first;
    let mut visited: BTreeSet<Id> = BTreeSet::from([start]);
    while positions.len() < MAX_RING_POSITIONS {
        let mut wrapped = false;
        for s in &info.successors {
            if s.id == start {
                wrapped = true;
                break;
            }
            positions.insert(s.id, s.addr);
        }
        // Jump to the farthest successor listed that answers (a dead one is skipped).
        let mut next = None;
        if !wrapped {
            for s in info.successors.iter().rev() {
                if let Ok(i) = ask(*s) {
                    next = Some(i);
                    break;
                }
            }
        }
        match next {
            Some(i) if !wrapped && visited.insert(i.node.id) => info = i,
            _ => break,
        }
    }
    Ok(positions.into_iter().collect())
}
