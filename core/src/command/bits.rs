//! Redis' bit commands over string values (bitops.c): SETBIT, GETBIT, BITCOUNT. Bit 0 is the
//! most significant bit of the first byte.

use bytes::{Bytes, BytesMut};
use chordkv_protocol::CommandReply;

use super::numbers::parse_int;
use super::{byte_range, err, not_an_integer, syntax_error, Keyspace};

/// A bit offset argument: a non-negative integer whose byte is within the longest value
/// (`max_value` bytes).
fn bit_offset(arg: &[u8], max_value: usize) -> Option<usize> {
    let offset = parse_int(arg)?;
    (offset >= 0 && (offset >> 3) < max_value as i64).then_some(offset as usize)
}

fn offset_error() -> CommandReply {
    err("ERR bit offset is not an integer or out of range")
}

/// `SETBIT key offset 0|1`: the bit's previous value; the string grows with zero bytes.
pub(super) fn setbit(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    let Some(offset) = bit_offset(&w[2], ks.max_value()) else {
        return offset_error();
    };
    let on = match &w[3][..] {
        b"0" => false,
        b"1" => true,
        _ => return err("ERR bit is not an integer or out of range"),
    };
    let (byte, mask) = (offset >> 3, 0x80u8 >> (offset & 7));
    let mut v = BytesMut::from(ks.get(&w[1]).map_or(&[][..], |v| &v[..]));
    if v.len() <= byte {
        v.resize(byte + 1, 0);
    }
    let was = v[byte] & mask != 0;
    if on {
        v[byte] |= mask;
    } else {
        v[byte] &= !mask;
    }
    ks.set_keep_ttl(&w[1], v.freeze());
    CommandReply::Int(was.into())
}

/// `GETBIT key offset`: 0 past the end of the string or for a missing key.
pub(super) fn getbit(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    let Some(offset) = bit_offset(&w[2], ks.max_value()) else {
        return offset_error();
    };
    let bit = ks
        .get(&w[1])
        .and_then(|v| v.get(offset >> 3))
        .is_some_and(|b| b & (0x80 >> (offset & 7)) != 0);
    CommandReply::Int(bit.into())
}

/// `BITCOUNT key [start end [BYTE | BIT]]`: the set bits of the string, or of a range of it
/// (inclusive, negative offsets from the end, in bytes or in bits).
pub(super) fn bitcount(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    let range = match w.len() {
        2 => None,
        4 | 5 => {
            let (Some(start), Some(end)) = (parse_int(&w[2]), parse_int(&w[3])) else {
                return not_an_integer();
            };
            let bits = match w.get(4).map(|u| u.to_ascii_uppercase()) {
                None => false,
                Some(u) if u == b"BYTE" => false,
                Some(u) if u == b"BIT" => true,
                Some(_) => return syntax_error(),
            };
            Some((start, end, bits))
        }
        _ => return syntax_error(),
    };
    let Some(v) = ks.get(&w[1]) else {
        return CommandReply::Int(0);
    };
    let count = |bytes: &[u8]| bytes.iter().map(|b| b.count_ones() as i64).sum::<i64>();
    let n = match range {
        None => count(v),
        Some((start, end, false)) => match byte_range(v.len(), start, end) {
            Some((s, e)) => count(&v[s..=e]),
            None => 0,
        },
        Some((start, end, true)) => match byte_range(v.len() * 8, start, end) {
            Some((s, e)) => (s..=e)
                .filter(|&bit| v[bit >> 3] & (0x80 >> (bit & 7)) != 0)
                .count() as i64,
            None => 0,
        },
    };
    CommandReply::Int(n)
}
