//! `LCS key1 key2 [LEN] [IDX] [MINMATCHLEN len] [WITHMATCHLEN]`: the longest common
//! subsequence of two values (Redis 7.0 t_string.c lcsCommand, the same dynamic program and
//! the same walk back through it, so the matches come out in Redis' order).

use bytes::Bytes;
use chordkv_protocol::CommandReply;

use super::numbers::parse_int;
use super::{err, not_an_integer, syntax_error, Keyspace};

/// Most cells of the table (`(len1 + 1) * (len2 + 1)`, 4 bytes each) one LCS may use: 256 MiB
/// and well under a second of work on the owner's event loop.
const MAX_CELLS: u64 = 64 * 1024 * 1024;

pub(super) fn lcs(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    let (mut len_only, mut idx, mut with_len, mut min_len) = (false, false, false, 0u64);
    let mut i = 3;
    while i < w.len() {
        match &w[i].to_ascii_uppercase()[..] {
            b"LEN" => len_only = true,
            b"IDX" => idx = true,
            b"WITHMATCHLEN" => with_len = true,
            b"MINMATCHLEN" if i + 1 < w.len() => {
                let Some(n) = parse_int(&w[i + 1]) else {
                    return not_an_integer();
                };
                min_len = n.max(0) as u64;
                i += 1;
            }
            _ => return syntax_error(),
        }
        i += 1;
    }
    if len_only && idx {
        return err("ERR If you want both the length and indexes, please just use IDX.");
    }
    let a = ks.get(&w[1]).cloned().unwrap_or_default();
    let b = ks.get(&w[2]).cloned().unwrap_or_default();
    let (alen, blen) = (a.len(), b.len());
    if (alen as u64 + 1) * (blen as u64 + 1) > MAX_CELLS {
        return err("ERR Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len");
    }
    let width = blen + 1;
    let mut table = vec![0u32; (alen + 1) * width];
    for i in 1..=alen {
        for j in 1..=blen {
            table[i * width + j] = if a[i - 1] == b[j - 1] {
                table[(i - 1) * width + j - 1] + 1
            } else {
                table[(i - 1) * width + j].max(table[i * width + j - 1])
            };
        }
    }
    let cell = |i: usize, j: usize| table[i * width + j];
    let total = cell(alen, blen);
    if len_only {
        return CommandReply::Int(total.into());
    }
    let mut result = vec![0u8; total as usize];
    let mut matches = Vec::new();
    let (mut i, mut j, mut k) = (alen, blen, total as usize);
    // The range being extended backwards: a start of `alen` means none is open.
    let (mut a_start, mut a_end, mut b_start, mut b_end) = (alen, 0, 0, 0);
    while i > 0 && j > 0 {
        let mut emit = false;
        if a[i - 1] == b[j - 1] {
            result[k - 1] = a[i - 1];
            if a_start == alen {
                (a_start, a_end, b_start, b_end) = (i - 1, i - 1, j - 1, j - 1);
            } else if a_start == i && b_start == j {
                a_start -= 1;
                b_start -= 1;
            } else {
                emit = true;
            }
            if a_start == 0 || b_start == 0 {
                emit = true;
            }
            k -= 1;
            i -= 1;
            j -= 1;
        } else {
            if cell(i - 1, j) > cell(i, j - 1) {
                i -= 1;
            } else {
                j -= 1;
            }
            if a_start != alen {
                emit = true;
            }
        }
        if emit {
            let match_len = (a_end - a_start + 1) as u64;
            if idx && (min_len == 0 || match_len >= min_len) {
                let pair = |s: usize, e: usize| {
                    CommandReply::Array(vec![CommandReply::Int(s as i64), CommandReply::Int(e as i64)])
                };
                let mut m = vec![pair(a_start, a_end), pair(b_start, b_end)];
                if with_len {
                    m.push(CommandReply::Int(match_len as i64));
                }
                matches.push(CommandReply::Array(m));
            }
            a_start = alen;
        }
    }
    if idx {
        // Redis answers a map; it is written here as RESP2 writes it, name-value pairs.
        return CommandReply::Array(vec![
            CommandReply::Bulk(Bytes::from_static(b"matches")),
            CommandReply::Array(matches),
            CommandReply::Bulk(Bytes::from_static(b"len")),
            CommandReply::Int(total.into()),
        ]);
    }
    CommandReply::Bulk(Bytes::from(result))
}
