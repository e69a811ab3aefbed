//! 160-bit identifiers on the Chord ring and the interval arithmetic over them.
//!
//! Every node and every key has an [`Id`]: the SHA-1 of the node's advertised address (unless
//! the operator gives one) or of the key's bytes (Chord, SIGCOMM'01 section 4.2). Ids live on a
//! circle of 2^160 points; key `k` is stored at `successor(id(k))`, the first node clockwise
//! from `id(k)`.
//!
//! ```text
//!                 0
//!            N56 .-'-. N1
//!          N51  /     \  N8        key K54 -> successor(54) = N56
//!         N48  |       |  N14      key K10 -> successor(10) = N14
//!          N42  \     /  N21
//!            N38 '-.-' N32
//! ```
//!
//! The interval helpers are written once, generically over any totally ordered type, so that
//! the exhaustive tests can check them on an 8-bit ring (every `(a, b, x)` triple) against a
//! brute-force walk of the circle; [`Id`] then uses the very same functions.
//!
//! Ids live in `protocol` rather than in the node because clients must hash keys exactly as the
//! nodes do to route requests themselves (owner-aware client routing).

use std::fmt;

use sha1::{Digest, Sha1};

/// Bytes in an [`Id`].
pub const ID_BYTES: usize = 20;
/// Bits in an [`Id`]: the ring has 2^160 points and a classic finger table 160 entries.
pub const ID_BITS: usize = ID_BYTES * 8;

/// A point on the 160-bit identifier circle, big-endian.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Id(pub [u8; ID_BYTES]);

// Ordered as the big-endian integer, which is the byte order; compared as integers rather
// than by `memcmp`, because routing compares ids on every step: the first 64 bits first,
// which decide nearly every comparison of two different points (one load and byte swap a
// side), then the other 96.
impl Ord for Id {
    #[inline]
    fn cmp(&self, other: &Id) -> std::cmp::Ordering {
        let (a, b) = (&self.0, &other.0);
        let word = |id: &[u8; ID_BYTES], at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&id[at..at + 8]);
            u64::from_be_bytes(w)
        };
        let tail = |id: &[u8; ID_BYTES]| u32::from_be_bytes([id[16], id[17], id[18], id[19]]);
        word(a, 0)
            .cmp(&word(b, 0))
            .then_with(|| word(a, 8).cmp(&word(b, 8)))
            .then_with(|| tail(a).cmp(&tail(b)))
    }
}

impl PartialOrd for Id {
    #[inline]
    fn partial_cmp(&self, other: &Id) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Id {
    /// The point 0.
    pub const ZERO: Id = Id([0; ID_BYTES]);
    /// The point 2^160 - 1.
    pub const MAX: Id = Id([0xff; ID_BYTES]);

    /// SHA-1 of arbitrary bytes: a key's id, or a node's id from its address.
    ///
    /// Input of at most 55 bytes (most keys) fits in one padded block (FIPS 180-4 section
    /// 5.1.1: the bytes, `0x80`, zeros, the length in bits as a big-endian u64), which goes
    /// straight to the compression function; the hash of every request's key skips the
    /// streaming hasher's buffering. Longer input takes the streaming hasher.
    pub fn hash(bytes: &[u8]) -> Id {
        const BLOCK: usize = 64;
        if bytes.len() > BLOCK - 9 {
            let digest = Sha1::digest(bytes);
            let mut id = [0u8; ID_BYTES];
            id.copy_from_slice(&digest);
            return Id(id);
        }
        let mut block = [0u8; BLOCK];
        block[..bytes.len()].copy_from_slice(bytes);
        block[bytes.len()] = 0x80;
        block[BLOCK - 8..].copy_from_slice(&((bytes.len() as u64) * 8).to_be_bytes());
        // The initial hash value H(0), FIPS 180-4 section 5.3.1.
        let mut state = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0u32];
        sha1::compress(&mut state, &[block.into()]);
        let mut id = [0u8; ID_BYTES];
        for (out, word) in id.chunks_exact_mut(4).zip(state) {
            out.copy_from_slice(&word.to_be_bytes());
        }
        Id(id)
    }

    /// The id a key is placed by: [`Id::hash`] of its *hash tag* when it has one, else of the
    /// whole key. The hash tag is Redis Cluster's: the bytes between the first `{` and the
    /// first `}` after it, when there are any (`{user1000}.following` and
    /// `{user1000}.followers` share the id of `user1000`; `{}x`, `x{` and `x}y` have no tag and
    /// are hashed whole). Keys with one tag have one owner and one preference list, which is
    /// what lets a transaction or a multi-key command run atomically at that owner
    /// (redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec, "Hash tags").
    ///
    /// Every placement of a key (routing, the stores' ring order, handoff, repair, client
    /// routing) goes through this function.
    pub fn of_key(key: &[u8]) -> Id {
        Id::hash(hash_tag(key).unwrap_or(key))
    }

    /// The id of a node advertised at `addr` (SHA-1 of its `ip:port` text).
    pub fn of_addr(addr: &std::net::SocketAddr) -> Id {
        Id::hash(addr.to_string().as_bytes())
    }

    /// An id from a small number, for tests and pictures: `Id::from_u64(5)` is the point 5.
    pub fn from_u64(v: u64) -> Id {
        let mut id = [0u8; ID_BYTES];
        id[ID_BYTES - 8..].copy_from_slice(&v.to_be_bytes());
        Id(id)
    }

    /// Parses 40 hex digits.
    pub fn from_hex(s: &str) -> Option<Id> {
        if s.len() != ID_BYTES * 2 || !s.is_ascii() {
            return None;
        }
        let mut id = [0u8; ID_BYTES];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Id(id))
    }

    /// The id as (high 32 bits, low 128 bits): integers that compare like the id, for hot
    /// paths that search sorted ids (the routing table).
    #[inline]
    pub fn limbs(&self) -> (u32, u128) {
        let b = &self.0;
        let hi = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let mut lo = [0u8; 16];
        lo.copy_from_slice(&b[4..]);
        (hi, u128::from_be_bytes(lo))
    }

    #[inline]
    fn from_limbs(hi: u32, lo: u128) -> Id {
        let mut id = [0u8; ID_BYTES];
        id[..4].copy_from_slice(&hi.to_be_bytes());
        id[4..].copy_from_slice(&lo.to_be_bytes());
        Id(id)
    }

    /// `self + other (mod 2^160)`.
    #[inline]
    pub fn wrapping_add(&self, other: &Id) -> Id {
        let (ah, al) = self.limbs();
        let (bh, bl) = other.limbs();
        let (lo, carry) = al.overflowing_add(bl);
        Id::from_limbs(ah.wrapping_add(bh).wrapping_add(carry as u32), lo)
    }

    /// `self - other (mod 2^160)`: the clockwise distance from `other` to `self`.
    #[inline]
    pub fn wrapping_sub(&self, other: &Id) -> Id {
        let (ah, al) = self.limbs();
        let (bh, bl) = other.limbs();
        let (lo, borrow) = al.overflowing_sub(bl);
        Id::from_limbs(ah.wrapping_sub(bh).wrapping_sub(borrow as u32), lo)
    }

    /// `2^exp` for `exp < 160`.
    pub fn pow2(exp: usize) -> Id {
        assert!(exp < ID_BITS, "2^{exp} is outside the 160-bit ring"); // faulty code
        let mut id = [0u8; ID_BYTES];
        id[ID_BYTES - 1 - exp / 8] = 1 << (exp % 8);
        Id(id)
    }

    /// `self + 2^exp (mod 2^160)`: the start of classic finger `exp`.
    pub fn add_pow2(&self, exp: usize) -> Id {
        self.wrapping_add(&Id::pow2(exp))
    }

    /// Clockwise distance from `self` to `to`.
    #[inline]
    pub fn distance_to(&self, to: &Id) -> Id {
        to.wrapping_sub(self)
    }

    /// Clockwise distance from `self` to `to` as limbs (see [`Id::limbs`]), without building an
    /// `Id`.
    #[inline]
    pub fn distance_limbs(&self, to: &Id) -> (u32, u128) {
        let (ah, al) = to.limbs();
        let (bh, bl) = self.limbs();
        let (lo, borrow) = al.overflowing_sub(bl);
        (ah.wrapping_sub(bh).wrapping_sub(borrow as u32), lo)
    }

    /// `self / divisor`, rounded down (`divisor > 0`).
    pub fn div_small(&self, divisor: u32) -> Id {
        assert!(divisor > 0, "division by zero"); // faulty code
        let mut out = [0u8; ID_BYTES];
        let mut rem: u64 = 0;
        for (i, b) in self.0.iter().enumerate() {
            let cur = (rem << 8) | *b as u64;
            out[i] = (cur / divisor as u64) as u8;
            rem = cur % divisor as u64;
        }
        Id(out)
    }

    /// `self * factor`, or `None` when the product does not fit in 160 bits (no wrapping):
    /// finger distances such as `j * floor(2^160 / B^i)` are built with it.
    pub fn checked_mul_small(&self, factor: u32) -> Option<Id> {
        let mut out = [0u8; ID_BYTES];
        let mut carry: u64 = 0;
        for i in (0..ID_BYTES).rev() {
            let cur = self.0[i] as u64 * factor as u64 + carry;
            out[i] = cur as u8;
            carry = cur >> 8;
        }
        (carry == 0).then_some(Id(out))
    }

    /// `base^exp`, or `None` when it does not fit in 160 bits.
    pub fn checked_pow_small(base: u32, exp: u32) -> Option<Id> {
        let mut v = Id::from_u64(1);
        for _ in 0..exp {
            v = v.checked_mul_small(base)?;
        }
        Some(v)
    }

    /// The position of the highest set bit plus one (0 for zero): `floor(log2(self)) + 1`.
    pub fn bit_len(&self) -> u32 {
        let (hi, lo) = self.limbs();
        if hi != 0 {
            160 - hi.leading_zeros()
        } else {
            128 - lo.leading_zeros()
        }
    }

    /// Splits the ring range `(start, end]` into `parts` consecutive sub-ranges of (nearly)
    /// equal width and returns their upper bounds; the last is `end`. Sub-range `j` is
    /// `(bounds[j-1], bounds[j]]` with `bounds[-1] = start`. `start == end` splits the whole
    /// ring. Both sides of an anti-entropy exchange compute the same bounds.
    pub fn split_range(start: &Id, end: &Id, parts: u32) -> Vec<Id> {
        let parts = parts.max(1);
        let width = if start == end {
            Id::MAX
        } else {
            end.wrapping_sub(start)
        };
        let step = width.div_small(parts);
        let mut bounds = Vec::with_capacity(parts as usize);
        let mut at = *start;
        for _ in 1..parts {
            at = at.wrapping_add(&step);
            bounds.push(at);
        }
        bounds.push(*end);
        bounds
    }

    /// The first `n` hex digits, for tables and logs.
    pub fn short(&self, n: usize) -> String {
        let mut s = self.to_string();
        s.truncate(n.min(ID_BYTES * 2));
        s
    }

    /// The id as an approximate fraction of the ring in [0, 1), for plots and load figures.
    pub fn as_fraction(&self) -> f64 {
        // The top 53 bits, exactly representable, so the result never rounds up to 1.0.
        let (hi, lo) = self.limbs();
        ((u64::from(hi) << 21) | (lo >> 107) as u64) as f64 / 2f64.powi(53)
    }
}

/// A key's hash tag (see [`Id::of_key`]): the non-empty text between its first `{` and the
/// first `}` after that, if there is one.
pub fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    // memchr: every request's key is searched, and a vector compare finds no `{` in a
    // 16-byte key in a few instructions where a byte loop takes about 50.
    let open = memchr::memchr(b'{', key)?;
    let len = memchr::memchr(b'}', &key[open + 1..])?;
    (len > 0).then(|| &key[open + 1..open + 1 + len])
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short(10))
    }
}

/// `x ∈ (a, b)` on the circle. When `a == b` the interval is the whole circle but `a`.
#[inline]
pub fn in_open<T: Ord>(x: &T, a: &T, b: &T) -> bool {
    match a.cmp(b) {
        std::cmp::Ordering::Less => a < x && x < b,
        std::cmp::Ordering::Greater => a < x || x < b,
        std::cmp::Ordering::Equal => x != a,
    }
}

/// `x ∈ (a, b]` on the circle. When `a == b` the interval is the whole circle: this is how a
/// single-node ring (`successor == self`) owns every key.
#[inline]
pub fn in_half_open<T: Ord>(x: &T, a: &T, b: &T) -> bool {
    match a.cmp(b) {
        std::cmp::Ordering::Less => a < x && x <= b,
        std::cmp::Ordering::Greater => a < x || x <= b,
        std::cmp::Ordering::Equal => true,
    }
}

/// `x ∈ [a, b)` on the circle. When `a == b` the interval is the whole circle.
#[inline]
pub fn in_closed_open<T: Ord>(x: &T, a: &T, b: &T) -> bool {
    x == a || (in_open(x, a, b) && x != b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-block path agrees with the streaming hasher at every length around the block
    /// boundary (0 to 130 bytes), and with published digests (FIPS 180-4's "abc" example and
    /// the empty message).
    #[test]
    fn hash_is_sha1_at_every_length() {
        for len in 0..130usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
            let digest = Sha1::digest(&bytes);
            assert_eq!(&Id::hash(&bytes).0[..], &digest[..], "length {len}");
        }
        assert_eq!(
            Id::hash(b"abc"),
            Id::from_hex("a9993e364706816aba3e25717850c26c9cd0d89d").expect("hex")
        );
        assert_eq!(
            Id::hash(b""),
            Id::from_hex("da39a3ee5e6b4b0d3255bfef95601890afd80709").expect("hex")
        );
    }

    /// The brute-force definition: walk clockwise from `a` (exclusive) and see whether we meet
    /// `x` before `b`. `b_inclusive` decides whether `b` itself counts.
    fn walk(x: u8, a: u8, b: u8, b_inclusive: bool) -> bool {
        let mut p = a;
        loop {
            p = p.wrapping_add(1);
            if p == b {
                return b_inclusive && x == b;
            }
            if p == x {
                return true;
            }
        }
    }

    #[test]
    fn open_interval_matches_walk_on_every_8_bit_triple() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                for x in 0..=255u8 {
                    assert_eq!(in_open(&x, &a, &b), walk(x, a, b, false), "x={x} in ({a},{b})");
                }
            }
        }
    }

    #[test]
    fn half_open_interval_matches_walk_on_every_8_bit_triple() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                for x in 0..=255u8 {
                    let expect = if a == b { true } else { walk(x, a, b, true) };
                    assert_eq!(in_half_open(&x, &a, &b), expect, "x={x} in ({a},{b}]");
                }
            }
        }
    }

    #[test]
    fn closed_open_interval_on_every_8_bit_triple() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                for x in 0..=255u8 {
                    let expect = a == b || x == a || walk(x, a, b, false);
                    assert_eq!(in_closed_open(&x, &a, &b), expect, "x={x} in [{a},{b})");
                }
            }
        }
    }

    #[test]
    fn single_node_ring_owns_everything() {
        let n = Id::hash(b"127.0.0.1:7000");
        for k in [Id::ZERO, Id::MAX, n, Id::hash(b"key")] {
            assert!(in_half_open(&k, &n, &n));
        }
        assert!(!in_open(&n, &n, &n));
    }

    #[test]
    fn id_intervals_wrap_around_zero() {
        let a = Id::MAX.wrapping_sub(&Id::from_u64(10)); // 2^160 - 11
        let b = Id::from_u64(10);
        assert!(in_open(&Id::ZERO, &a, &b));
        assert!(in_open(&Id::MAX, &a, &b));
        assert!(!in_open(&Id::from_u64(11), &a, &b));
        assert!(in_half_open(&b, &a, &b));
        assert!(!in_half_open(&a, &a, &b));
    }

    #[test]
    fn arithmetic_wraps() {
        assert_eq!(Id::MAX.wrapping_add(&Id::from_u64(1)), Id::ZERO);
        assert_eq!(Id::ZERO.wrapping_sub(&Id::from_u64(1)), Id::MAX);
        assert_eq!(
            Id::from_u64(3).distance_to(&Id::from_u64(1)),
            Id::MAX.wrapping_sub(&Id::from_u64(1))
        );
        assert_eq!(Id::ZERO.add_pow2(159).0[0], 0x80);
        assert_eq!(Id::ZERO.add_pow2(0), Id::from_u64(1));
        assert_eq!(Id::ZERO.add_pow2(100).add_pow2(100), Id::ZERO.add_pow2(101));
        // Carry out of the low 128 bits into the high 32.
        let below = Id::pow2(128).wrapping_sub(&Id::from_u64(1));
        assert_eq!(below.wrapping_add(&Id::from_u64(1)), Id::pow2(128));
    }

    #[test]
    fn split_range_covers_the_range_in_order() {
        let (a, b) = (Id::from_u64(1000), Id::from_u64(2000));
        let bounds = Id::split_range(&a, &b, 4);
        assert_eq!(
            bounds,
            vec![Id::from_u64(1250), Id::from_u64(1500), Id::from_u64(1750), b]
        );
        // Wrapping and whole-ring ranges: every point of the range falls in exactly one part.
        for (start, end) in [
            (Id::MAX.wrapping_sub(&Id::from_u64(99)), Id::from_u64(300)),
            (a, a),
        ] {
            let bounds = Id::split_range(&start, &end, 7);
            assert_eq!(bounds.len(), 7);
            for x in [
                start.wrapping_add(&Id::from_u64(1)),
                Id::ZERO,
                Id::from_u64(150),
                end,
            ] {
                let mut lo = start;
                let hits = bounds
                    .iter()
                    .filter(|hi| {
                        let hit = in_half_open(&x, &lo, hi) && lo != **hi;
                        lo = **hi;
                        hit
                    })
                    .count();
                assert_eq!(hits, 1, "{x:?} in ({start:?}, {end:?}]");
            }
        }
        assert_eq!(Id::from_u64(1001).div_small(10), Id::from_u64(100));
    }

    #[test]
    fn ids_order_like_their_bytes() {
        let ids: Vec<Id> = (0..200u32)
            .map(|i| Id::hash(&i.to_be_bytes()))
            .chain([Id::ZERO, Id::MAX, Id::pow2(127), Id::pow2(128), Id::pow2(159)])
            // Ids that share their first 8 or 16 bytes, so the later words decide.
            .chain((0..40u32).map(|i| {
                let mut b = [0xab; ID_BYTES];
                let at = if i % 2 == 0 { 8 } else { 16 };
                b[at..].copy_from_slice(&Id::hash(&i.to_be_bytes()).0[..ID_BYTES - at]);
                Id(b)
            }))
            .collect();
        for a in &ids {
            for b in &ids {
                assert_eq!(a.cmp(b), a.0.cmp(&b.0), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn small_multiplication_and_powers() {
        assert_eq!(Id::from_u64(7).checked_mul_small(6), Some(Id::from_u64(42)));
        assert_eq!(Id::checked_pow_small(2, 100), Some(Id::pow2(100)));
        assert_eq!(Id::checked_pow_small(16, 39), Some(Id::pow2(156)));
        assert_eq!(Id::checked_pow_small(16, 40), None);
        assert_eq!(Id::pow2(159).checked_mul_small(2), None);
        assert_eq!(
            Id::pow2(158).checked_mul_small(3),
            Some(Id::pow2(159).add_pow2(158))
        );
        // A carry that crosses every byte.
        let below = Id::pow2(128).wrapping_sub(&Id::from_u64(1));
        assert_eq!(
            below.checked_mul_small(2),
            Some(Id::pow2(129).wrapping_sub(&Id::from_u64(2)))
        );
        assert_eq!(Id::checked_pow_small(3, 5), Some(Id::from_u64(243)));
        assert_eq!(Id::ZERO.bit_len(), 0);
        assert_eq!(Id::from_u64(1).bit_len(), 1);
        assert_eq!(Id::pow2(140).bit_len(), 141);
        assert_eq!(Id::MAX.bit_len(), 160);
    }

    #[test]
    fn hash_tags_follow_redis_cluster() {
        let tag = |k: &str| hash_tag(k.as_bytes()).map(|t| String::from_utf8(t.to_vec()).unwrap());
        // The examples of the Redis Cluster specification.
        assert_eq!(tag("{user1000}.following").as_deref(), Some("user1000"));
        assert_eq!(tag("foo{}{bar}"), None);
        assert_eq!(tag("foo{{bar}}zap").as_deref(), Some("{bar"));
        assert_eq!(tag("foo{bar}{zap}").as_deref(), Some("bar"));
        assert_eq!(tag("plain"), None);
        assert_eq!(tag("x{"), None);
        assert_eq!(tag("x}y{"), None);
        assert_eq!(Id::of_key(b"{u1}a"), Id::of_key(b"{u1}b"));
        assert_eq!(Id::of_key(b"{u1}a"), Id::hash(b"u1"));
        assert_eq!(Id::of_key(b"plain"), Id::hash(b"plain"));
        assert_eq!(Id::of_key(b"foo{}{bar}"), Id::hash(b"foo{}{bar}"));
    }

    #[test]
    fn hash_and_hex_round_trip() {
        let id = Id::hash(b"hello");
        assert_eq!(id.to_string(), "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d");
        assert_eq!(Id::from_hex(&id.to_string()), Some(id));
        assert_eq!(Id::from_hex("zz"), None);
        assert!(Id::from_u64(0).as_fraction() == 0.0 && Id::MAX.as_fraction() < 1.0);
    }
}
