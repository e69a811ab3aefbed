//! Position claims of joining hosts (`CLAIM_POSITIONS`): the hosts that join at the same moment
//! reserve at this node, one after another, the positions they chose, so they do not all choose
//! the same ones.
//!
//! A joining host with several vnodes chooses its positions from the ring it read
//! ([`crate::tokens::allocate_positions`], deterministic in the ring). Hosts that read the same
//! ring at the same moment (a cluster started all at once, each `--join` the same node) would
//! choose the same positions, and the first to join would take what was meant for all of them:
//! 8 hosts started together left one host 75% of the ring and four none. So each joiner claims
//! its positions at one node, the lowest-address host of the ring it read (the same for every
//! joiner of that ring, whatever its join peer: `server/src/positions.rs`), an optimistic
//! check-and-set on the
//! claims' `version`: a claim is accepted only if no other was accepted since the claims the
//! joiner read; a refused joiner chooses again around the claims listed (as if those hosts had
//! joined already) and claims again. With `n` hosts joining at once each is refused at most
//! `n - 1` times.
//!
//! Claims are advisory, kept in memory only, and lapse after [`CLAIM_TTL_MS`] (a joiner that
//! died or a claim repeated by a late or duplicated message holds nothing for long; a joined
//! host's positions are in the ring by then). Joiners that read different rings (one before a
//! host joined, one after) may claim at different nodes and are not ordered; Cassandra
//! serializes joins for the same reason (consistent range movement,
//! CASSANDRA-2434). At most [`MAX_CLAIMED`] positions are held (the oldest claims make room), so
//! a flood of claims costs bounded memory and, at worst, an uneven ring.

use std::collections::VecDeque;
use std::net::SocketAddr;

use chordkv_protocol::NodeRef;

use super::Millis;

/// How long a claim holds its positions, in milliseconds of the claimed node's clock.
pub const CLAIM_TTL_MS: Millis = 60_000;
/// The most positions held by all claims together.
pub const MAX_CLAIMED: usize = 4096;

/// The claims accepted at this node and not yet lapsed, oldest first.
#[derive(Debug, Default)]
pub struct JoinClaims {
    /// Claims accepted so far (never decreases): what a joiner passes back as `seen`.
    version: u64,
    claims: VecDeque<Claim>,
}

#[derive(Debug)]
struct Claim {
    host: SocketAddr,
    nodes: Vec<NodeRef>,
    at: Millis,
}

/// Why a claim was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Another claim was accepted since the joiner read the claims: choose again.
    Stale,
    /// The claim names positions of more than one host, or more than [`MAX_CLAIMED`].
    Invalid(&'static str),
}

impl JoinClaims {
    /// Claims `nodes` (one host's vnodes) if no claim was accepted since version `seen`; an
    /// empty `nodes` claims nothing. A host claiming again replaces its earlier claim.
    pub fn claim(&mut self, now: Millis, seen: u64, nodes: Vec<NodeRef>) -> Result<(), Refused> {
        self.lapse(now);
        let Some(host) = nodes.first().map(|n| n.addr.host) else {
            return Ok(());
        };
        if nodes.iter().any(|n| n.addr.host != host) {
            return Err(Refused::Invalid("a claim names the positions of one host"));
        }
        if nodes.len() > MAX_CLAIMED {
            return Err(Refused::Invalid("a claim names too many positions"));
        }
        if self.holds(&host, &nodes) {
            // The same claim again (a duplicated or retried message): it holds already.
            return Ok(());
        }
        if seen != self.version {
            return Err(Refused::Stale);
        }
        self.claims.retain(|c| c.host != host);
        while self.claimed() + nodes.len() > MAX_CLAIMED {
            self.claims.pop_front();
        }
        self.claims.push_back(Claim { host, nodes, at: now });
        self.version += 1;
        Ok(())
    }

    /// The claims' version and every position they hold (lapsed ones dropped first).
    pub fn list(&mut self, now: Millis) -> (u64, Vec<NodeRef>) {
        self.lapse(now);
        let nodes = self.claims.iter().flat_map(|c| c.nodes.iter().copied()).collect();
        (self.version, nodes)
    }

    fn holds(&self, host: &SocketAddr, nodes: &[NodeRef]) -> bool {
        self.claims.iter().any(|c| c.host == *host && c.nodes == nodes)
    }

    fn claimed(&self) -> usize {
        self.claims.iter().map(|c| c.nodes.len()).sum()
    }

    fn lapse(&mut self, now: Millis) {
        while self
            .claims
            .front()
            .is_some_and(|c| now >= c.at.saturating_add(CLAIM_TTL_MS))
        {
            self.claims.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chordkv_protocol::{Id, NodeAddr};

    fn nodes(host: u16, n: u16) -> Vec<NodeRef> {
        let host: SocketAddr = format!("127.0.0.1:{host}").parse().unwrap();
        (0..n)
            .map(|v| NodeRef {
                id: Id::hash(format!("{host}#{v}").as_bytes()),
                addr: NodeAddr::new(host, v),
            })
            .collect()
    }

    #[test]
    fn joiners_that_read_the_same_claims_are_accepted_one_at_a_time() {
        let mut c = JoinClaims::default();
        let (seen, listed) = c.list(0);
        assert_eq!((seen, listed.len()), (0, 0));
        assert_eq!(c.claim(10, seen, nodes(1, 4)), Ok(()));
        // The second joiner read before the first claimed: it must choose again.
        assert_eq!(c.claim(11, seen, nodes(2, 4)), Err(Refused::Stale));
        let (seen, listed) = c.list(12);
        assert_eq!((seen, listed), (1, nodes(1, 4)));
        assert_eq!(c.claim(13, seen, nodes(2, 4)), Ok(()));
        assert_eq!(c.list(14).1.len(), 8);
    }

    #[test]
    fn a_claim_delivered_again_holds_and_a_new_claim_of_the_host_replaces_it() {
        let mut c = JoinClaims::default();
        assert_eq!(c.claim(0, 0, nodes(1, 4)), Ok(()));
        // Duplicated or late: the version moved on, but the claim is the one held.
        assert_eq!(c.claim(5, 0, nodes(1, 4)), Ok(()));
        assert_eq!(c.list(6), (1, nodes(1, 4)));
        assert_eq!(c.claim(7, 1, nodes(1, 2)), Ok(()));
        assert_eq!(c.list(8), (2, nodes(1, 2)));
    }

    #[test]
    fn claims_lapse_and_memory_stays_bounded() {
        let mut c = JoinClaims::default();
        assert_eq!(c.claim(0, 0, nodes(1, 4)), Ok(()));
        assert_eq!(c.list(CLAIM_TTL_MS - 1).1.len(), 4);
        assert_eq!(c.list(CLAIM_TTL_MS).1.len(), 0);
        let mut seen = c.list(CLAIM_TTL_MS).0;
        for host in 0..100 {
            assert_eq!(c.claim(CLAIM_TTL_MS, seen, nodes(1000 + host, 100)), Ok(()));
            seen += 1;
        }
        assert!(c.list(CLAIM_TTL_MS).1.len() <= MAX_CLAIMED);
        let mut mixed = nodes(1, 1);
        mixed.extend(nodes(2, 1));
        assert!(matches!(
            c.claim(CLAIM_TTL_MS, seen, mixed),
            Err(Refused::Invalid(_))
        ));
    }
}
