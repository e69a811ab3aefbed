//! Jepsen set-checker accounting for a key-value store: every write is tracked, and at the
//! end every written key is read once and judged.
//!
//! A value names its write: its first 32 bytes are the write id and the key index in hex, the
//! rest a filler derived from the write id ([`value_for`]). So a value read back can be
//! traced to the one write that produced it, and a value no write produced is detected.
//!
//! Per key we keep the acknowledged write with the highest version (a put with its id, or a
//! delete) and the writes that were attempted but never acknowledged. Judging the final read:
//!
//! | last acknowledged | read                          | verdict                     |
//! |-------------------|-------------------------------|-----------------------------|
//! | put v, id w       | same id at version v          | ok                          |
//! | put v             | missing, or a version below v | lost (unless an unacked delete explains a missing key: recovered) |
//! | put or delete v   | newer version, unacked id     | recovered                   |
//! | delete v          | missing                       | ok                          |
//! | delete v          | a value at version <= v       | lost (the delete is undone) |
//! | none              | an unacked id                 | recovered                   |
//! | any               | an id never written to it     | unexpected                  |

use std::collections::HashMap;

use serde::Serialize;

/// Bits of a write id that count writes within one writer.
const SEQ_BITS: u32 = 40;
/// Bytes at the start of a value that name the write and the key.
const HEADER_BYTES: usize = 32;

/// A write's id: the writer (a thread, or a preload thread) and its sequence number.
pub fn write_id(writer: u64, seq: u64) -> u64 {
    (writer << SEQ_BITS) | (seq & ((1 << SEQ_BITS) - 1))
}

fn split_id(id: u64) -> (u64, u64) {
    (id >> SEQ_BITS, id & ((1 << SEQ_BITS) - 1))
}

fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The value write `id` puts under key index `key`: a pure function of both and the size
/// range, so the checker can rebuild it. `min_bytes >= 32`.
pub fn value_for(id: u64, key: u64, min_bytes: usize, max_bytes: usize) -> Vec<u8> {
    let h = mix64(id);
    let span = (max_bytes - min_bytes + 1) as u64;
    let len = min_bytes + (h % span) as usize;
    let mut v = format!("{id:016x}{key:016x}").into_bytes();
    let mut state = h;
    while v.len() < len {
        state = mix64(state);
        v.extend(state.to_le_bytes().iter().map(|b| b'a' + b % 26));
    }
    v.truncate(len);
    v
}

/// The write id and key index a value names, if it is well formed.
pub fn parse_value(v: &[u8]) -> Option<(u64, u64)> {
    let header = std::str::from_utf8(v.get(..HEADER_BYTES)?).ok()?;
    let id = u64::from_str_radix(&header[..16], 16).ok()?;
    let key = u64::from_str_radix(&header[16..], 16).ok()?;
    Some((id, key))
}

/// What is known about one key's writes.
#[derive(Clone, Debug, Default)]
pub struct KeyRecord {
    /// The acknowledged write with the highest version: `(version, Some(id))` for a put,
    /// `(version, None)` for a delete.
    pub acked: Option<(u64, Option<u64>)>,
    /// Puts attempted and never acknowledged.
    pub unacked_puts: Vec<u64>,
    /// Whether a delete was attempted and never acknowledged.
    pub unacked_delete: bool,
}

/// One thread's (or all threads') write history.
#[derive(Debug, Default)]
pub struct History {
    pub keys: HashMap<u64, KeyRecord>,
    /// Acknowledged writes.
    pub acknowledged: u64,
    /// Writes attempted, by writer id (to tell a real id from garbage).
    pub attempted: HashMap<u64, u64>,
}

impl History {
    pub fn ack_put(&mut self, key: u64, id: u64, version: u64) {
        self.acknowledged += 1;
        self.ack(key, version, Some(id));
    }

    pub fn ack_delete(&mut self, key: u64, version: u64) {
        self.acknowledged += 1;
        self.ack(key, version, None);
    }

    fn ack(&mut self, key: u64, version: u64, id: Option<u64>) {
        let rec = self.keys.entry(key).or_default();
        if rec.acked.is_none_or(|(v, _)| version > v) {
            rec.acked = Some((version, id));
        }
    }

    pub fn unacked_put(&mut self, key: u64, id: u64) {
        self.keys.entry(key).or_default().unacked_puts.push(id);
    }

    pub fn unacked_delete(&mut self, key: u64) {
        self.keys.entry(key).or_default().unacked_delete = true;
    }

    /// Notes that `writer` has attempted `count` writes (ids `0..count`).
    pub fn set_attempted(&mut self, writer: u64, count: u64) {
        self.attempted.insert(writer, count);
    }

    /// Folds another thread's history in.
    pub fn merge(&mut self, other: History) {
        self.acknowledged += other.acknowledged;
        for (writer, count) in other.attempted {
            let c = self.attempted.entry(writer).or_default();
            *c = (*c).max(count);
        }
        for (key, rec) in other.keys {
            let mine = self.keys.entry(key).or_default();
            if let Some((version, id)) = rec.acked {
                if mine.acked.is_none_or(|(v, _)| version > v) {
                    mine.acked = Some((version, id));
                }
            }
            mine.unacked_puts.extend(rec.unacked_puts);
            mine.unacked_delete |= rec.unacked_delete;
        }
    }

    fn was_attempted(&self, id: u64) -> bool {
        let (writer, seq) = split_id(id);
        self.attempted.get(&writer).is_some_and(|&n| seq < n)
    }
}

/// The checker's verdict on one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Lost,
    Unexpected,
    Recovered,
}

/// The final read of a key: its value (if any) and version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalRead {
    pub value: Option<Vec<u8>>,
    pub version: u64,
}

/// Judges one key's final read against its history (see the module docs).
pub fn judge(
    history: &History,
    key: u64,
    rec: &KeyRecord,
    read: &FinalRead,
    sizes: (usize, usize),
) -> Verdict {
    let named = match &read.value {
        None => None,
        Some(v) => match parse_value(v) {
            Some((id, k))
                if k == key && history.was_attempted(id) && value_for(id, key, sizes.0, sizes.1) == *v =>
            {
                Some(id)
            }
            _ => return Verdict::Unexpected,
        },
    };
    let unacked = |id: u64| rec.unacked_puts.contains(&id);
    match (rec.acked, named) {
        (None, None) => Verdict::Ok,
        (None, Some(id)) if unacked(id) => Verdict::Recovered,
        (None, Some(_)) => Verdict::Unexpected,
        (Some((_, Some(_))), None) if rec.unacked_delete => Verdict::Recovered,
        (Some((_, Some(_))), None) => Verdict::Lost,
        (Some((_, None)), None) => Verdict::Ok,
        (Some((v, acked_id)), Some(id)) => {
            if read.version < v || (read.version == v && acked_id.is_none()) {
                Verdict::Lost
            } else if read.version == v {
                if acked_id == Some(id) {
                    Verdict::Ok
                } else {
                    Verdict::Unexpected
                }
            } else if acked_id == Some(id) {
                // A retried put that was applied again after its acknowledgement.
                Verdict::Ok
            } else if unacked(id) {
                Verdict::Recovered
            } else {
                Verdict::Unexpected
            }
        }
    }
}

/// The counts in `summary.json`: the final reads judged by version (this module) and every
/// read of the run judged by real-time order ([`chordkv_harness::history`], fed by
/// [`crate::oplog`]); a key's final read counts once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Writes (puts and deletes, preload included) the cluster acknowledged.
    pub acknowledged: u64,
    /// Keys read at the end.
    pub keys_checked: u64,
    /// Successful reads judged by real-time order: those of the run and the final ones.
    pub reads_checked: u64,
    /// Keys whose final read misses an acknowledged write: the last acknowledged one by
    /// version is missing or older, or the value read was superseded, in real time, by an
    /// acknowledged put (one invoked after that value's write could last have taken effect).
    pub lost: u64,
    /// Reads during the run that missed an acknowledged put which completed before they began.
    pub stale_reads: u64,
    /// Reads (during the run or final) that returned a value an acknowledged delete, invoked
    /// after that value's write had ended, removed.
    pub resurrected: u64,
    /// Reads (during the run or final) that returned a value no write to that key produced, or
    /// one whose write began after the read ended; a key holding such a value at the end.
    pub unexpected: u64,
    /// Keys holding an unacknowledged write.
    pub recovered: u64,
    /// Keys that could not be read at the end (not judged).
    pub unreadable: u64,
    /// A few of the anomalies found by real-time order, described.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub anomalies: Vec<String>,
}
