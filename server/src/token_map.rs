//! A `HashMap` for keys the event loop chooses itself, hashed with one multiplication instead
//! of SipHash: the map of outbound peer connections, keyed by peer address.
//!
//! It is looked up for every message to a peer (SipHash of a `SocketAddr` was 1.6% of an entry
//! node's instructions, 8 nodes at -P 16). Its keys are the addresses this loop connects to
//! itself, one per ring member it talks to, never a client's choice, so a hash that resists
//! chosen inputs buys nothing. Multiplying by an odd constant (Fibonacci hashing, as rustc's
//! `FxHasher` does) spreads consecutive inputs over the buckets (low bits) and mixes the high
//! bits (hashbrown's 7-bit tag). (Connections by token are in `conn_table.rs`, a slab.)

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map keyed by what the loop chooses itself, not a client (peer addresses; tokens in its test).
pub(super) type TokenMap<K, V> = HashMap<K, V, BuildHasherDefault<TokenHasher>>;

/// 2^64 / the golden ratio, odd.
const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

#[derive(Default)]
pub(super) struct TokenHasher(u64);

impl Hasher for TokenHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(MULTIPLIER);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    /// Other key types still hash correctly, a byte at a time.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::Token;

    #[test]
    fn tokens_round_trip_and_spread_over_buckets() {
        let mut map: TokenMap<Token, usize> = TokenMap::default();
        for i in 0..10_000 {
            map.insert(Token(i), i);
        }
        for i in 0..10_000 {
            assert_eq!(map.get(&Token(i)), Some(&i));
        }
        assert!(map.remove(&Token(42)).is_some());
        assert_eq!(map.get(&Token(42)), None);
        // Consecutive tokens land in distinct buckets of a 1024-bucket table.
        let buckets: std::collections::HashSet<u64> = (0..1024u64)
            .map(|i| {
                let mut h = TokenHasher::default();
                h.write_u64(i);
                h.finish() & 1023
            })
            .collect();
        assert_eq!(buckets.len(), 1024);
    }
}
