//! Merges without a script: a pipeline of puts whose stored records are read under `WATCH`,
//! merged here, and written in one `MULTI` ... `EXEC`, which Redis runs only if no watched key
//! changed in between (Redis' optimistic locking, "check-and-set":
//! <https://redis.io/docs/latest/develop/interact/transactions/#optimistic-locking-using-check-and-set>).
//!
//! ```text
//!  read stage    WATCH data marker ...            (every partition of the pipeline)
//!                EXISTS marker ...                (every partition's: all there?)
//!                HMGET data key...                (per partition)
//!                MULTI                            (so that a refusal is known before any write)
//!  merged here   each entry as LUA_PUTS merges it: a strictly newer version replaces the
//!                stored record, a later entry of a key sees the record an earlier one left,
//!                a record that does not read is left as it is (the entry fails as corrupt)
//!  write stage     ZADD index 0 member...        (the keys that had no record)
//!                  HSET data key record...       (the entries that replace)
//!                  INCRBY live delta             (when the live count moves)
//!                EXEC                            (per partition with writes)
//!                or DISCARD, when no entry is newer than what is stored
//! ```
//!
//! `EXEC` answers nil when a watched key changed after the `WATCH`: another connection wrote a
//! partition (a store worker's delete, a script's merge), or its data was flushed or evicted
//! (`FLUSHALL` and eviction touch watched keys). Nothing of the transaction ran, and the
//! pipeline is sent again as script calls ([`LUA_PUTS`](super::LUA_PUTS)), which merge
//! atomically whatever the other writers do. An `EXEC` refused as a whole (`EXECABORT`: a
//! command refused while queued, Redis out of memory) goes the same way, so that each
//! partition answers for itself as the script answers.
//!
//! Lost data: when the read stage finds a marker missing, nothing is written: `DISCARD`, and
//! the pipeline goes by script, whose calls tell which partitions lost their data and answer
//! for each (a loss is rare, and recorded as the scripts' are). Markers present at the `WATCH`
//! and still unchanged at the `EXEC` were there when the writes ran, as the script's check
//! before its writes guarantees. Unlike the
//! script, a partition whose index is of the wrong type (something else wrote our key) has its
//! records written before its `ZADD` fails (a transaction does not roll back): its entries
//! fail as corrupt, as they do by script, and its index needs repair either way.
//!
//! Why: redis-server runs a script call's arguments, tables and commands through its Lua
//! interpreter, several times the cost of the commands themselves. Counted by
//! `bench/redis-script-cost.sh` (instructions of redis-server per key, existing keys): one key
//! 25,100 this way against 63,300 by script (a plain `SET`: 4,600); 8 keys in each of 8
//! partitions 5,000 against 16,900 (results/redis-script-cost.md). The price is a second round
//! trip, and the records read back whole. So a pipeline goes by script as before when it
//! carries a read, when it has fewer than [`WATCHED_MIN_PUTS`] puts ([`WATCHED_MIN_PUTS_ON_LOOP`]
//! on the event loop's pipe), when its new values pass [`WATCHED_MAX_BYTES`] in all, or when one of its
//! partitions may hold a record of more than [`LARGE_RECORD_BYTES`] (`RedisStore::large_records`:
//! set when this process writes one, or reads one back here; a namespace filled by an earlier
//! process is found out by its first read stage). A server that refuses `WATCH` or `MULTI` (an
//! ACL, a proxy) gets scripts from then on (`Backend::transactions_refused`).

use std::sync::atomic::Ordering;

use chordkv_core::store::{PutOutcome, Result, StoreError, StoreOutcome};
use chordkv_protocol::resp;
use redis::Value;

use super::{
    decode_puts, id_hex, read_records, write_record, Attempt, Backend, Call, Failure, GroupFailure, Point,
    RedisStore, ID_HEX_BYTES, RECORD_HEADER_BYTES, TAG_LIVE, TAG_LIVE_EXPIRING, TAG_TOMBSTONE,
};

/// A pipeline whose new values pass this many bytes in all goes by script: the read stage
/// would bring the records they replace back whole.
pub const WATCHED_MAX_BYTES: usize = 64 << 10;
/// A pipeline of fewer puts goes by script: the second round trip (a write, a read and a
/// wake-up on both sides; each costs microseconds of system time on this machine) and the
/// replies of every command to parse cost the node about what the script costs redis-server
/// more, for a few keys. This is the threshold of the blocking pipelines, which run on a store
/// worker (a node with replicas); the event loop's pipe, whose loop also routes every request,
/// waits for more ([`WATCHED_MIN_PUTS_ON_LOOP`]). Measured with `bench/compare-redis.sh`
/// against a build without transactions (`BINS`; results/compare-redis-watched-5396cf8.md,
/// this threshold on both paths): 8 nodes with 2 replicas spent less CPU a SET at -P 16 (about
/// 30 puts a transaction, by `INFO commandstats`); at -P 1 the node's extra CPU ate what
/// redis-server saved, which is why fewer puts go by script.
pub const WATCHED_MIN_PUTS: usize = 16;
/// [`WATCHED_MIN_PUTS`] on the event loop's pipe (a node without replicas). With 8 nodes
/// without replicas and the threshold at 16 (results/compare-redis-watched-5396cf8.md, the
/// -r0 rows: about 50 puts a transaction at -P 16, and as many puts by script), the loop spent
/// more CPU a SET than redis-server saved; one node under -P 16 carries hundreds a pipeline,
/// where a transaction costs redis-server a third of the script.
pub const WATCHED_MIN_PUTS_ON_LOOP: usize = 64;
/// A partition that may hold a value of more than this many bytes has its merges go by
/// script (`RedisStore::large_records`): a record is not read back to be replaced.
pub const LARGE_RECORD_BYTES: usize = 16 << 10;

/// The puts of one pipeline, merged in two stages (see the module docs).
pub(super) struct Watched {
    /// Each partition's points, in the order given; partitions in order of first appearance.
    groups: Vec<(usize, Vec<usize>)>,
    /// Per group, once the read stage is in.
    decided: Vec<std::result::Result<Merge, GroupFailure>>,
    /// Commands queued by the write stage; 0 when it is a `DISCARD`.
    queued: usize,
}

/// What follows a read stage ([`Watched::decide`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// The write stage ([`Watched::encode_write`]).
    Write,
    /// The pipeline's script calls, after `end` (`DISCARD` or `UNWATCH`, to leave nothing of
    /// the transaction on the connection; its one reply ahead of theirs, not checked).
    Script { end: Option<&'static [u8]> },
}

/// What the read stage decided for one partition's entries.
struct Merge {
    /// Per entry: `None` for a stored record that does not read.
    outcomes: Vec<Option<PutOutcome>>,
    /// The points written, in order.
    writes: Vec<usize>,
    /// The points of keys without a record (their index members to add).
    members: Vec<usize>,
    /// How the live count moves.
    delta: i64,
}

/// What a stored record says for a merge: its version, and whether it is live, with which
/// expiry.
#[derive(Clone, Copy)]
struct Stored {
    version: u64,
    live: bool,
    expires_at: u64,
}

impl Stored {
    /// `None` when the record does not read (the script's `liveness`: too short, or a tag it
    /// does not know).
    fn of(record: &[u8]) -> Option<Stored> {
        let version = u64::from_be_bytes(record.get(..8)?.try_into().ok()?);
        let (live, expires_at) = match *record.get(8)? {
            TAG_TOMBSTONE => (false, 0),
            TAG_LIVE => (true, 0),
            TAG_LIVE_EXPIRING if record.len() >= RECORD_HEADER_BYTES + 8 => (
                true,
                u64::from_be_bytes(
                    record[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + 8]
                        .try_into()
                        .ok()?,
                ),
            ),
            _ => return None,
        };
        Some(Stored {
            version,
            live,
            expires_at,
        })
    }
}

impl Watched {
    /// The two-stage merge of a pipeline planned as `calls`, when it carries puts only, their
    /// values fit [`WATCHED_MAX_BYTES`] and no partition of theirs may hold a large record;
    /// `None` sends it by script. Notes the large records the pipeline writes either way.
    pub(super) fn of(
        backend: &Backend,
        parts: &[&RedisStore],
        points: &[(usize, Point)],
        calls: &[Call],
        min_puts: usize,
    ) -> Option<Watched> {
        // Every record a pipeline writes is noted, whichever way it goes.
        for (part, point) in points {
            if let Point::Put(_, _, entry) = point {
                parts[*part].note_record(entry);
            }
        }
        if points.len() < min_puts
            || !calls.iter().all(|c| matches!(c, Call::Puts { .. }))
            || backend.transactions_refused.load(Ordering::Relaxed)
        {
            return None;
        }
        let mut bytes = 0;
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (i, (part, point)) in points.iter().enumerate() {
            let Point::Put(_, _, entry) = point else {
                return None;
            };
            bytes += entry.value.as_ref().map_or(0, |v| v.len());
            match groups.iter_mut().find(|(p, _)| p == part) {
                Some((_, mine)) => mine.push(i),
                None => groups.push((*part, vec![i])),
            }
        }
        if bytes > WATCHED_MAX_BYTES
            || groups
                .iter()
                .any(|(part, _)| parts[*part].large_records.load(Ordering::Relaxed))
        {
            return None;
        }
        Some(Watched {
            groups,
            decided: Vec::new(),
            queued: 0,
        })
    }

    /// Writes the read stage into `out`; answers how many replies it gets.
    pub(super) fn encode_read(
        &self,
        parts: &[&RedisStore],
        points: &[(usize, Point)],
        out: &mut Vec<u8>,
    ) -> usize {
        resp::write_array_len(out, 1 + 2 * self.groups.len());
        resp::write_bulk(out, b"WATCH");
        for (part, _) in &self.groups {
            let k = &parts[*part].keys;
            resp::write_bulk(out, k.data.as_bytes());
            resp::write_bulk(out, k.marker.as_bytes());
        }
        resp::write_array_len(out, 1 + self.groups.len());
        resp::write_bulk(out, b"EXISTS");
        for (part, _) in &self.groups {
            resp::write_bulk(out, parts[*part].keys.marker.as_bytes());
        }
        for (part, mine) in &self.groups {
            let k = &parts[*part].keys;
            resp::write_array_len(out, 2 + mine.len());
            resp::write_bulk(out, b"HMGET");
            resp::write_bulk(out, k.data.as_bytes());
            for &i in mine {
                resp::write_bulk(out, put_of(points, i).0);
            }
        }
        resp::encode_command(&[b"MULTI".as_slice()], out);
        3 + self.groups.len()
    }

    /// Merges each entry with the record the read stage found (`replies`: the `WATCH`'s, the
    /// markers' `EXISTS`, each partition's `HMGET`, the `MULTI`'s) and answers [`Next::Write`];
    /// or [`Next::Script`] when Redis refused the `WATCH` or the `MULTI` (the pipeline goes by
    /// script, and so do the next ones), or when a marker is missing (a partition's data was
    /// lost: the scripts find which, each answering for its partition). Fails when the replies
    /// do not read as theirs.
    pub(super) fn decide(
        &mut self,
        backend: &Backend,
        parts: &[&RedisStore],
        points: &[(usize, Point)],
        mut replies: Vec<Value>,
    ) -> Attempt<Next> {
        if replies.len() != 3 + self.groups.len() {
            return Err(Failure::Corrupt(format!(
                "{} replies to a read stage of {} partitions",
                replies.len(),
                self.groups.len()
            )));
        }
        let multi = replies.pop();
        let mut replies = replies.into_iter();
        let watch = replies.next();
        // What leaves nothing of the transaction on the connection: DISCARD ends a MULTI and
        // the WATCH; UNWATCH a WATCH alone.
        let end: Option<&'static [u8]> = match (&watch, &multi) {
            (_, Some(m)) if is_ok(m) => Some(b"DISCARD"),
            (Some(w), _) if is_ok(w) => Some(b"UNWATCH"),
            _ => None,
        };
        for (reply, what) in [(&watch, "WATCH"), (&multi, "MULTI")] {
            match reply {
                Some(reply) if is_ok(reply) => {}
                // Refused (an ACL, a proxy): no write went out. Scripts from now on.
                Some(Value::ServerError(_)) => {
                    backend.transactions_refused.store(true, Ordering::Relaxed);
                    return Ok(Next::Script { end });
                }
                other => return Err(Failure::Corrupt(format!("unexpected reply to {what}: {other:?}"))),
            }
        }
        match replies.next() {
            Some(Value::Int(n)) if n == self.groups.len() as i64 => {}
            Some(Value::Int(_)) => return Ok(Next::Script { end }),
            Some(Value::ServerError(e)) => return Err(Failure::Redis(e.into())),
            other => return Err(Failure::Corrupt(format!("unexpected reply to EXISTS: {other:?}"))),
        }
        let mut decided = Vec::with_capacity(self.groups.len());
        for (part, mine) in &self.groups {
            let store = parts[*part];
            let read = replies.next().unwrap_or(Value::Nil);
            decided.push(match read_records(read, Value::Int(1), mine.len()) {
                Ok(Some(records)) => {
                    if records.iter().flatten().any(|r| r.len() > LARGE_RECORD_BYTES) {
                        store.large_records.store(true, Ordering::Relaxed);
                    }
                    Ok(merge(points, mine, records))
                }
                // Not reached (the markers were all there, by the EXISTS above); kept so that a
                // change to `read_records` cannot turn a loss into data.
                Ok(None) => Err(GroupFailure::Lost(format!(
                    "{} is gone: the data of this namespace was lost",
                    store.keys.marker
                ))),
                Err(f) => Err(GroupFailure::Call(store.store_error(f))),
            });
        }
        self.decided = decided;
        Ok(Next::Write)
    }

    /// Writes the write stage into `out` (after [`Watched::decide`]); answers how many replies
    /// it gets.
    pub(super) fn encode_write(
        &mut self,
        parts: &[&RedisStore],
        points: &[(usize, Point)],
        out: &mut Vec<u8>,
    ) -> usize {
        let mut queued = 0;
        let writing = self
            .decided
            .iter()
            .any(|d| matches!(d, Ok(m) if !m.writes.is_empty()));
        if !writing {
            resp::encode_command(&[b"DISCARD".as_slice()], out);
            self.queued = 0;
            return 1;
        }
        for ((part, _), decided) in self.groups.iter().zip(&self.decided) {
            let Ok(m) = decided else { continue };
            if m.writes.is_empty() {
                continue;
            }
            let k = &parts[*part].keys;
            if !m.members.is_empty() {
                resp::write_array_len(out, 2 + 2 * m.members.len());
                resp::write_bulk(out, b"ZADD");
                resp::write_bulk(out, k.index.as_bytes());
                for &i in &m.members {
                    let (key, id, _) = put_of(points, i);
                    resp::write_bulk(out, b"0");
                    resp::write_bulk_len(out, ID_HEX_BYTES + key.len());
                    out.extend_from_slice(&id_hex(id));
                    out.extend_from_slice(key);
                    out.extend_from_slice(b"\r\n");
                }
                queued += 1;
            }
            resp::write_array_len(out, 2 + 2 * m.writes.len());
            resp::write_bulk(out, b"HSET");
            resp::write_bulk(out, k.data.as_bytes());
            for &i in &m.writes {
                let (key, _, entry) = put_of(points, i);
                resp::write_bulk(out, key);
                write_record(out, entry);
            }
            queued += 1;
            if m.delta != 0 {
                resp::encode_command(
                    &[
                        b"INCRBY".as_slice(),
                        k.live.as_bytes(),
                        m.delta.to_string().as_bytes(),
                    ],
                    out,
                );
                queued += 1;
            }
        }
        resp::encode_command(&[b"EXEC".as_slice()], out);
        self.queued = queued;
        queued + 1
    }

    /// Each point's outcome from the write stage's replies; `None` when Redis did not run the
    /// transaction (a watched key changed, or it refused it whole): the pipeline goes again by
    /// script. A partition whose marker the read found missing gets `lost(part, detail)`.
    pub(super) fn finish(
        self,
        parts: &[&RedisStore],
        points: &[(usize, Point)],
        replies: Vec<Value>,
        lost: &mut dyn FnMut(usize, &str) -> StoreError,
    ) -> Attempt<Option<Vec<Result<StoreOutcome>>>> {
        let unexpected = |what: &dyn std::fmt::Debug| {
            Failure::Corrupt(format!("unexpected reply to a transaction of merges: {what:?}"))
        };
        let mut exec = if self.queued == 0 {
            match replies.as_slice() {
                [reply] if is_ok(reply) => Vec::new().into_iter(),
                other => return Err(unexpected(&other)),
            }
        } else {
            if replies.len() != self.queued + 1 {
                return Err(unexpected(&replies.len()));
            }
            let mut replies = replies.into_iter();
            // Each command QUEUED, or refused while queued (then EXEC is refused whole).
            for reply in replies.by_ref().take(self.queued) {
                match reply {
                    Value::SimpleString(s) if s == "QUEUED" => {}
                    Value::ServerError(_) => {}
                    other => return Err(unexpected(&other)),
                }
            }
            match replies.next() {
                Some(Value::Array(results)) if results.len() == self.queued => results.into_iter(),
                // Aborted: a watched key changed. Nothing ran.
                Some(Value::Nil) => return Ok(None),
                // Refused whole: a command was refused while queued (out of memory, ...).
                // Nothing ran; the script answers for each partition.
                Some(Value::ServerError(e)) if e.code() == "EXECABORT" => return Ok(None),
                Some(Value::ServerError(e)) => return Err(Failure::Redis(e.into())),
                other => return Err(unexpected(&other)),
            }
        };
        let mut results: Vec<Option<Result<StoreOutcome>>> = (0..points.len()).map(|_| None).collect();
        for ((part, mine), decided) in self.groups.iter().zip(self.decided) {
            let store = parts[*part];
            let outcome = decided.and_then(|m| {
                if m.writes.is_empty() {
                    return Ok(m.outcomes);
                }
                let ran = usize::from(!m.members.is_empty()) + 1 + usize::from(m.delta != 0);
                let mut failed = None;
                for reply in exec.by_ref().take(ran) {
                    if let Value::ServerError(e) = reply {
                        failed.get_or_insert(e);
                    }
                }
                match failed {
                    Some(e) => Err(GroupFailure::Call(store.store_error(Failure::Redis(e.into())))),
                    None => Ok(m.outcomes),
                }
            });
            decode_puts(store, *part, mine, points, outcome, &mut results, lost);
        }
        Ok(Some(
            results
                .into_iter()
                .map(|r| {
                    r.unwrap_or_else(|| {
                        Err(StoreError::Corrupt(
                            "faulty code: a merge of a transaction got no outcome".into(),
                        ))
                    })
                })
                .collect(),
        ))
    }
}

/// One partition's entries (`mine`) merged with their stored `records`, in order, as
/// `LUA_PUTS` merges them.
fn merge(points: &[(usize, Point)], mine: &[usize], records: Vec<Option<Vec<u8>>>) -> Merge {
    let mut m = Merge {
        outcomes: Vec::with_capacity(mine.len()),
        writes: Vec::with_capacity(mine.len()),
        members: Vec::new(),
        delta: 0,
    };
    // Only the entries of a key given more than once in the group look at, or leave, what the
    // entries before them wrote (the latest for the key is last in `written`).
    let repeated = repeated_keys(points, mine);
    let mut written: Vec<(&[u8], Stored)> = Vec::new();
    for (j, (&i, record)) in mine.iter().zip(records).enumerate() {
        let (key, _, entry) = put_of(points, i);
        let repeats = repeated.get(j) == Some(&true);
        let earlier = repeats
            .then(|| {
                written
                    .iter()
                    .rev()
                    .find(|(k, _)| *k == &key[..])
                    .map(|(_, s)| *s)
            })
            .flatten();
        let old = match earlier {
            Some(s) => Some(Some(s)),
            None => record.map(|r| Stored::of(&r)),
        };
        let (applied, previous) = match old {
            // A stored record that does not read: left as it is.
            Some(None) => {
                m.outcomes.push(None);
                continue;
            }
            Some(Some(s)) => (entry.version > s.version, Some(s)),
            None => {
                m.members.push(i);
                (true, None)
            }
        };
        let was_live = previous.is_some_and(|s| s.live);
        if applied {
            m.writes.push(i);
            m.delta += i64::from(entry.value.is_some()) - i64::from(was_live);
            if repeats {
                written.push((
                    &key[..],
                    Stored {
                        version: entry.version,
                        live: entry.value.is_some(),
                        expires_at: if entry.value.is_some() {
                            entry.expires_at
                        } else {
                            0
                        },
                    },
                ));
            }
        }
        m.outcomes.push(Some(PutOutcome {
            applied,
            previous_live: was_live,
            previous_expires_at: previous.map_or(0, |s| s.expires_at),
        }));
    }
    m
}

/// Which of the entries `mine` give a key that another of them gives too (indexed like `mine`;
/// empty when none does, as nearly always): the entries sorted by id, equal neighbours marked.
/// (Ids compare by their first 8 bytes first, where hashing every key cost the merge more than
/// the rest of it together.)
fn repeated_keys(points: &[(usize, Point)], mine: &[usize]) -> Vec<bool> {
    let mut by_id: Vec<(&chordkv_protocol::Id, usize)> = mine
        .iter()
        .enumerate()
        .map(|(j, &i)| (put_of(points, i).1, j))
        .collect();
    by_id.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut repeated = Vec::new();
    for pair in by_id.windows(2) {
        if pair[0].0 == pair[1].0 {
            if repeated.is_empty() {
                repeated = vec![false; mine.len()];
            }
            repeated[pair[0].1] = true;
            repeated[pair[1].1] = true;
        }
    }
    repeated
}

/// The key, id and entry of point `i`, a put: [`Watched::of`] takes pipelines of puts only.
fn put_of(
    points: &[(usize, Point)],
    i: usize,
) -> (&bytes::Bytes, &chordkv_protocol::Id, &chordkv_core::store::Entry) {
    match &points[i].1 {
        Point::Put(key, id, entry) => (key, id, entry),
        Point::Get(_) => unreachable!("faulty code: a watched pipeline carries puts only"),
    }
}

fn is_ok(v: &Value) -> bool {
    match v {
        Value::Okay => true,
        Value::SimpleString(s) => s == "OK",
        _ => false,
    }
}
