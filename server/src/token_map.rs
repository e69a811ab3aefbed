//! A `HashMap` for connection tokens, hashed with one multiplication instead of SipHash.
//!
//! The event loop looks a connection up by its token on every command and every reply.
//! Tokens are numbers the loop hands out itself from a counter, never chosen by a client, so
//! a hash that resists chosen inputs (`std`'s SipHash) buys nothing here and cost about a
//! tenth of a request's instructions. Multiplying by an odd constant (Fibonacci hashing, as
//! rustc's `FxHasher` does) is a bijection: consecutive tokens get distinct low bits (the
//! bucket) and mixed high bits (hashbrown's 7-bit tag).
//!
//! The map of outbound peer connections uses it too, keyed by peer address: it is looked up
//! for every message to a peer (SipHash of a `SocketAddr` was 1.6% of an entry node's
//! instructions, 8 nodes at -P 16), and its keys are the addresses this loop connects to
//! itself, one per ring member it talks to, not a client's choice.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map keyed by token numbers (or any key the loop chooses itself, not a client).
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
