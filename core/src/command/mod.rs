//! Redis' string and keyspace commands, evaluated at the key's owner.
//!
//! A command that reads and then writes (INCR, SETNX, APPEND, SET ... GET) is right only if
//! nothing else writes its key in between, and the one place that can promise that is the key's
//! owner: it receives the command's words in a [`chordkv_protocol::Message::Execute`], reads the
//! entries of the keys, runs the command here over a [`Keyspace`] holding them, and stores and
//! replicates the values that changed as one batch with one fresh version. A transaction
//! (`MULTI` ... `EXEC` over keys of one hash tag) is several commands run over one keyspace.
//!
//! Everything here is a pure function of the words and the values: no store, no clock, no
//! node. The semantics (replies, errors, edge cases) are Redis 7.0's, from its command
//! reference (redis.io/docs/latest/commands/<name>) and its `t_string.c` / `bitops.c`, and the
//! tests check them against the cases of Redis' own `tests/unit/type/string.tcl`.
//!
//! ```text
//!  words                       keys                  reply            writes
//!  ["INCR", "n"]               ["n"]                 Int(8)           n = "8"
//!  ["SET", "k", "v", "NX"]     ["k"]                 Nil (k exists)   -
//!  ["MSETNX", "{t}a", 1, ...]  ["{t}a", ...]         Int(1)           {t}a = "1", ...
//! ```
//!
//! Values are strings only: chordkv stores no lists, sets, hashes or sorted sets, so no
//! command here answers `WRONGTYPE`.

mod bits;
mod expiry;
mod glob;
mod lcs;
mod numbers;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Bytes, BytesMut};
use chordkv_protocol::{CommandReply, MAX_VALUE_BYTES};

pub use glob::glob_match;
use numbers::{format_float, parse_float, parse_int};

/// One command the owner evaluates: its name (lower case), Redis' arity (negative: at least
/// that many words, the name included), where its keys are (first, last with -1 the last
/// word, step: Redis' key specification) and its evaluation.
pub struct Spec {
    pub name: &'static str,
    pub arity: i64,
    pub keys: (usize, i64, usize),
    /// Whether the command may change a value (Redis' `write` flag).
    pub write: bool,
    run: fn(&[Bytes], &mut Keyspace) -> CommandReply,
}

/// Every command evaluated at the owner.
#[rustfmt::skip]
pub const COMMANDS: &[Spec] = &[
    spec("get",         2,  (1, 1, 1),  false, get),
    spec("set",         -3, (1, 1, 1),  true,  set),
    spec("setnx",       3,  (1, 1, 1),  true,  setnx),
    spec("getset",      3,  (1, 1, 1),  true,  getset),
    spec("getdel",      2,  (1, 1, 1),  true,  getdel),
    spec("del",         -2, (1, -1, 1), true,  del),
    spec("unlink",      -2, (1, -1, 1), true,  del),
    spec("exists",      -2, (1, -1, 1), false, exists),
    spec("type",        2,  (1, 1, 1),  false, type_),
    spec("mget",        -2, (1, -1, 1), false, mget),
    spec("mset",        -3, (1, -1, 2), true,  mset),
    spec("msetnx",      -3, (1, -1, 2), true,  msetnx),
    spec("incr",        2,  (1, 1, 1),  true,  incr),
    spec("decr",        2,  (1, 1, 1),  true,  decr),
    spec("incrby",      3,  (1, 1, 1),  true,  incrby),
    spec("decrby",      3,  (1, 1, 1),  true,  decrby),
    spec("incrbyfloat", 3,  (1, 1, 1),  true,  incrbyfloat),
    spec("append",      3,  (1, 1, 1),  true,  append),
    spec("strlen",      2,  (1, 1, 1),  false, strlen),
    spec("setrange",    4,  (1, 1, 1),  true,  setrange),
    spec("getrange",    4,  (1, 1, 1),  false, getrange),
    spec("substr",      4,  (1, 1, 1),  false, getrange),
    spec("setbit",      4,  (1, 1, 1),  true,  bits::setbit),
    spec("getbit",      3,  (1, 1, 1),  false, bits::getbit),
    spec("bitcount",    -2, (1, 1, 1),  false, bits::bitcount),
    spec("lcs",         -3, (1, 2, 1),  false, lcs::lcs),
    spec("rename",      3,  (1, 2, 1),  true,  rename),
    spec("renamenx",    3,  (1, 2, 1),  true,  renamenx),
    spec("copy",        -3, (1, 2, 1),  true,  copy),
    spec("setex",       4,  (1, 1, 1),  true,  expiry::setex),
    spec("psetex",      4,  (1, 1, 1),  true,  expiry::psetex),
    spec("getex",       -2, (1, 1, 1),  true,  expiry::getex),
    spec("expire",      -3, (1, 1, 1),  true,  expiry::expire),
    spec("pexpire",     -3, (1, 1, 1),  true,  expiry::pexpire),
    spec("expireat",    -3, (1, 1, 1),  true,  expiry::expireat),
    spec("pexpireat",   -3, (1, 1, 1),  true,  expiry::pexpireat),
    spec("ttl",         2,  (1, 1, 1),  false, expiry::ttl),
    spec("pttl",        2,  (1, 1, 1),  false, expiry::pttl),
    spec("expiretime",  2,  (1, 1, 1),  false, expiry::expiretime),
    spec("pexpiretime", 2,  (1, 1, 1),  false, expiry::pexpiretime),
    spec("persist",     2,  (1, 1, 1),  true,  expiry::persist),
];

const fn spec(
    name: &'static str,
    arity: i64,
    keys: (usize, i64, usize),
    write: bool,
    run: fn(&[Bytes], &mut Keyspace) -> CommandReply,
) -> Spec {
    Spec {
        name,
        arity,
        keys,
        write,
        run,
    }
}

/// The row of the command called `name` (any case).
pub fn find(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS
        .iter()
        .find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
}

/// The keys of `words` (a command with its name first), in order and with repeats; or the
/// error Redis would answer for a command the owner cannot run (unknown here, wrong arity).
pub fn keys(words: &[Bytes]) -> Result<Vec<Bytes>, String> {
    let spec = check(words)?;
    let (first, last, step) = spec.keys;
    let last = if last < 0 { words.len() as i64 + last } else { last };
    Ok((first..=last.max(0) as usize)
        .step_by(step)
        .filter_map(|i| words.get(i).cloned())
        .collect())
}

/// The row of `words`' command, its arity checked.
fn check(words: &[Bytes]) -> Result<&'static Spec, String> {
    let Some(name) = words.first() else {
        return Err("ERR empty command".to_string());
    };
    let Some(spec) = find(name) else {
        let shown = String::from_utf8_lossy(&name[..name.len().min(128)]).into_owned();
        return Err(format!(
            "ERR command '{shown}' cannot run at a key's owner (not a string or keyspace command chordkv serves)"
        ));
    };
    let n = words.len() as i64;
    if (spec.arity > 0 && n != spec.arity) || (spec.arity < 0 && n < -spec.arity) {
        return Err(format!(
            "ERR wrong number of arguments for '{}' command",
            spec.name
        ));
    }
    // Key-value pairs: an odd count is Redis' arity error too.
    if spec.keys.2 == 2 && (n - 1) % 2 != 0 {
        return Err(format!(
            "ERR wrong number of arguments for '{}' command",
            spec.name
        ));
    }
    Ok(spec)
}

/// Runs one command over `keyspace`: its reply, and its writes recorded in the keyspace.
/// Never panics, whatever the words.
pub fn run(words: &[Bytes], keyspace: &mut Keyspace) -> CommandReply {
    match check(words) {
        Ok(spec) => (spec.run)(words, keyspace),
        Err(e) => CommandReply::Error(e),
    }
}

/// The values of the keys a batch of commands touches, as the commands see them: read from
/// the store before the first command, changed by each write, at one time `now` (milliseconds
/// since the Unix epoch, the owner's clock). Keys read but absent, tombstones and values whose
/// expiry has come at `now` are absent.
#[derive(Clone, Debug)]
pub struct Keyspace {
    now: u64,
    /// Longest value a command may make (the node's `--max-value-bytes`).
    max_value: usize,
    values: BTreeMap<Bytes, Value>,
    written: BTreeSet<Bytes>,
}

/// A key's value with its expiry (`expires_at`: ms since the epoch, 0 for none).
#[derive(Clone, Debug, Default)]
struct Value {
    value: Option<Bytes>,
    expires_at: u64,
}

impl Default for Keyspace {
    /// An empty keyspace at time 0.
    fn default() -> Keyspace {
        Keyspace::new(0, [])
    }
}

impl Keyspace {
    /// The keyspace at time `now` holding `entries`, `(key, value, expires_at)` (every key the
    /// commands may touch must be among them; one missing reads as absent).
    pub fn new(now: u64, entries: impl IntoIterator<Item = (Bytes, Option<Bytes>, u64)>) -> Keyspace {
        let values = entries
            .into_iter()
            .map(|(key, value, expires_at)| {
                let v = if crate::store::is_expired(expires_at, now) {
                    Value::default()
                } else {
                    Value { value, expires_at }
                };
                (key, v)
            })
            .collect();
        Keyspace {
            now,
            max_value: MAX_VALUE_BYTES,
            values,
            written: BTreeSet::new(),
        }
    }

    /// The keyspace with values of at most `bytes` (APPEND, SETRANGE and SETBIT past it answer
    /// `string exceeds maximum allowed size`); [`MAX_VALUE_BYTES`] unless set.
    pub fn with_max_value(mut self, bytes: usize) -> Keyspace {
        self.max_value = bytes.min(MAX_VALUE_BYTES);
        self
    }

    /// The longest value a command may make, in bytes.
    pub fn max_value(&self) -> usize {
        self.max_value
    }

    /// The value of `key`, if it has one.
    pub fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.values.get(key).and_then(|v| v.value.as_ref())
    }

    /// The expiry of `key` (0: none, or no value).
    fn expires_at(&self, key: &[u8]) -> u64 {
        self.values
            .get(key)
            .filter(|v| v.value.is_some())
            .map_or(0, |v| v.expires_at)
    }

    /// Sets `key` to `value` without an expiry (SET, MSET, GETSET: Redis discards the old one).
    fn set(&mut self, key: &Bytes, value: Bytes) {
        self.set_expiring(key, value, 0);
    }

    /// Sets `key` to `value`, keeping its expiry (INCR, APPEND, SETRANGE, SETBIT, KEEPTTL).
    fn set_keep_ttl(&mut self, key: &Bytes, value: Bytes) {
        let expires_at = self.expires_at(key);
        self.set_expiring(key, value, expires_at);
    }

    fn set_expiring(&mut self, key: &Bytes, value: Bytes, expires_at: u64) {
        self.values.insert(
            key.clone(),
            Value {
                value: Some(value),
                expires_at,
            },
        );
        self.written.insert(key.clone());
    }

    /// Gives `key`'s value the expiry `expires_at` (0: none); false when it has no value.
    fn set_expiry(&mut self, key: &Bytes, expires_at: u64) -> bool {
        match self.values.get_mut(key) {
            Some(v) if v.value.is_some() => {
                v.expires_at = expires_at;
                self.written.insert(key.clone());
                true
            }
            _ => false,
        }
    }

    /// Deletes `key`; whether it had a value.
    fn delete(&mut self, key: &Bytes) -> bool {
        let existed = self.get(key).is_some();
        if existed {
            self.values.insert(key.clone(), Value::default());
            self.written.insert(key.clone());
        }
        existed
    }

    /// Whether any command wrote.
    pub fn is_written(&self) -> bool {
        !self.written.is_empty()
    }

    /// The keys written, each with its final value (`None`: deleted) and expiry, in key order.
    pub fn into_writes(self) -> Vec<(Bytes, Option<Bytes>, u64)> {
        let Keyspace {
            mut values, written, ..
        } = self;
        written
            .into_iter()
            .map(|k| {
                let v = values.remove(&k).unwrap_or_default();
                (k, v.value, v.expires_at)
            })
            .collect()
    }
}

// --- replies ---------------------------------------------------------------------------------

fn ok() -> CommandReply {
    CommandReply::Status("OK".to_string())
}

fn err(text: &str) -> CommandReply {
    CommandReply::Error(text.to_string())
}

fn syntax_error() -> CommandReply {
    err("ERR syntax error")
}

fn not_an_integer() -> CommandReply {
    err("ERR value is not an integer or out of range")
}

fn too_long() -> CommandReply {
    err("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
}

fn value_or_nil(v: Option<&Bytes>) -> CommandReply {
    match v {
        Some(v) => CommandReply::Bulk(v.clone()),
        None => CommandReply::Nil,
    }
}

// --- the commands ----------------------------------------------------------------------------

fn get(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    value_or_nil(ks.get(&w[1]))
}

/// `SET key value [NX | XX] [GET] [EX s | PX ms | EXAT ts | PXAT ms-ts | KEEPTTL]`.
fn set(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    let (key, value) = (&w[1], &w[2]);
    let (mut nx, mut xx, mut get) = (false, false, false);
    let mut ttl: Option<Ttl> = None;
    let mut i = 3;
    while i < w.len() {
        let option = w[i].to_ascii_uppercase();
        match &option[..] {
            b"NX" if !xx => nx = true,
            b"XX" if !nx => xx = true,
            b"GET" => get = true,
            b"KEEPTTL" if ttl.is_none() => ttl = Some(Ttl::Keep),
            b"EX" | b"PX" | b"EXAT" | b"PXAT" if ttl.is_none() && i + 1 < w.len() => {
                i += 1;
                match expiry::parse(&option, &w[i], ks.now) {
                    Ok(at) => ttl = Some(Ttl::At(at)),
                    Err(e) => return e.reply("set"),
                }
            }
            _ => return syntax_error(),
        }
        i += 1;
    }
    let old = ks.get(key).cloned();
    let apply = !(nx && old.is_some() || xx && old.is_none());
    if apply {
        match ttl {
            None => ks.set(key, value.clone()),
            Some(Ttl::Keep) => ks.set_keep_ttl(key, value.clone()),
            // A time already past: Redis sets the key and expires it at once.
            Some(Ttl::At(at)) if at <= ks.now => {
                ks.delete(key);
            }
            Some(Ttl::At(at)) => ks.set_expiring(key, value.clone(), at),
        }
    }
    match (get, apply) {
        (true, _) => value_or_nil(old.as_ref()),
        (false, true) => ok(),
        (false, false) => CommandReply::Nil,
    }
}

/// SET's expiry option.
#[derive(Clone, Copy, Debug)]
enum Ttl {
    Keep,
    At(u64),
}

fn setnx(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    if ks.get(&w[1]).is_some() {
        return CommandReply::Int(0);
    }
    ks.set(&w[1], w[2].clone());
    CommandReply::Int(1)
}

fn getset(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    let old = ks.get(&w[1]).cloned();
    ks.set(&w[1], w[2].clone());
    value_or_nil(old.as_ref())
}

fn getdel(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    let old = ks.get(&w[1]).cloned();
    ks.delete(&w[1]);
    value_or_nil(old.as_ref())
}

/// `DEL` and `UNLINK`: the keys that existed (a key named twice counts once).
fn del(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    CommandReply::Int(w[1..].iter().filter(|k| ks.delete(k)).count() as i64)
}

/// `EXISTS`: the keys with a value (a key named twice counts twice, as in Redis).
fn exists(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    CommandReply::Int(w[1..].iter().filter(|k| ks.get(k).is_some()).count() as i64)
}

fn type_(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    let t = if ks.get(&w[1]).is_some() { "string" } else { "none" };
    CommandReply::Status(t.to_string())
}

/// `RENAME key newkey`: the value and its expiry move; `ERR no such key` without one.
fn rename(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    match move_key(w, ks, false) {
        Some(_) => ok(),
        None => err("ERR no such key"),
    }
}

/// `RENAMENX key newkey`: 1 when moved, 0 when `newkey` exists (or is `key`).
fn renamenx(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    match move_key(w, ks, true) {
        Some(moved) => CommandReply::Int(moved.into()),
        None => err("ERR no such key"),
    }
}

/// Moves `w[1]`'s value and expiry to `w[2]`: `None` without a value, `Some(false)` when
/// `only_new` and the destination exists (or is the source).
fn move_key(w: &[Bytes], ks: &mut Keyspace, only_new: bool) -> Option<bool> {
    let (src, dst) = (&w[1], &w[2]);
    let value = ks.get(src)?.clone();
    if only_new && (src == dst || ks.get(dst).is_some()) {
        return Some(false);
    }
    if src == dst {
        return Some(true);
    }
    let expires_at = ks.expires_at(src);
    ks.delete(src);
    ks.set_expiring(dst, value, expires_at);
    Some(true)
}

/// `COPY source destination [DB 0] [REPLACE]`: 1 when copied (value and expiry), 0 when the
/// source has no value or the destination exists without REPLACE.
fn copy(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    let mut replace = false;
    let mut i = 3;
    while i < w.len() {
        match &w[i].to_ascii_uppercase()[..] {
            b"REPLACE" => replace = true,
            b"DB" if i + 1 < w.len() => {
                i += 1;
                match parse_int(&w[i]) {
                    Some(0) => {}
                    Some(_) => return err("ERR DB index is out of range"),
                    None => return not_an_integer(),
                }
            }
            _ => return syntax_error(),
        }
        i += 1;
    }
    let (src, dst) = (&w[1], &w[2]);
    if src == dst {
        return err("ERR source and destination objects are the same");
    }
    let Some(value) = ks.get(src).cloned() else {
        return CommandReply::Int(0);
    };
    if ks.get(dst).is_some() && !replace {
        return CommandReply::Int(0);
    }
    let expires_at = ks.expires_at(src);
    ks.set_expiring(dst, value, expires_at);
    CommandReply::Int(1)
}

fn mget(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    CommandReply::Array(w[1..].iter().map(|k| value_or_nil(ks.get(k))).collect())
}

fn mset(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    for pair in w[1..].chunks_exact(2) {
        ks.set(&pair[0], pair[1].clone());
    }
    ok()
}

/// `MSETNX`: all the keys are set, or none is when any exists.
fn msetnx(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    if w[1..].chunks_exact(2).any(|p| ks.get(&p[0]).is_some()) {
        return CommandReply::Int(0);
    }
    mset(w, ks);
    CommandReply::Int(1)
}

fn incr(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    add(&w[1], 1, ks)
}

fn decr(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    add(&w[1], -1, ks)
}

fn incrby(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    match parse_int(&w[2]) {
        Some(by) => add(&w[1], by, ks),
        None => not_an_integer(),
    }
}

fn decrby(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    match parse_int(&w[2]) {
        // Negating i64::MIN overflows: Redis' own words.
        Some(i64::MIN) => err("ERR decrement would overflow"),
        Some(by) => add(&w[1], -by, ks),
        None => not_an_integer(),
    }
}

/// INCR's core (t_string.c incrDecrCommand): the value read as a 64-bit integer (absent: 0),
/// plus `by`, stored as its decimal text.
fn add(key: &Bytes, by: i64, ks: &mut Keyspace) -> CommandReply {
    let current = match ks.get(key) {
        None => 0,
        Some(v) => match parse_int(v) {
            Some(n) => n,
            None => return not_an_integer(),
        },
    };
    let Some(next) = current.checked_add(by) else {
        return err("ERR increment or decrement would overflow");
    };
    ks.set_keep_ttl(key, Bytes::from(next.to_string()));
    CommandReply::Int(next)
}

fn incrbyfloat(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    let current = match ks.get(&w[1]) {
        None => 0.0,
        Some(v) => match parse_float(v) {
            Some(x) => x,
            None => return err("ERR value is not a valid float"),
        },
    };
    let Some(by) = parse_float(&w[2]) else {
        return err("ERR value is not a valid float");
    };
    let next = current + by;
    if !next.is_finite() {
        return err("ERR increment would produce NaN or Infinity");
    }
    let text = Bytes::from(format_float(next));
    ks.set_keep_ttl(&w[1], text.clone());
    CommandReply::Bulk(text)
}

fn append(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    let old = ks.get(&w[1]).cloned().unwrap_or_default();
    if old.len() + w[2].len() > ks.max_value {
        return too_long();
    }
    let mut v = BytesMut::with_capacity(old.len() + w[2].len());
    v.extend_from_slice(&old);
    v.extend_from_slice(&w[2]);
    let len = v.len();
    ks.set_keep_ttl(&w[1], v.freeze());
    CommandReply::Int(len as i64)
}

fn strlen(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    CommandReply::Int(ks.get(&w[1]).map_or(0, |v| v.len()) as i64)
}

/// `SETRANGE key offset value`: overwrites from `offset`, padding with zero bytes; an empty
/// value changes nothing (and creates no key).
fn setrange(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    let Some(offset) = parse_int(&w[2]) else {
        return not_an_integer();
    };
    if offset < 0 {
        return err("ERR offset is out of range");
    }
    let old = ks.get(&w[1]).cloned().unwrap_or_default();
    let value = &w[3];
    if value.is_empty() {
        return CommandReply::Int(old.len() as i64);
    }
    let offset = offset as u64;
    if offset + value.len() as u64 > ks.max_value as u64 {
        return too_long();
    }
    let offset = offset as usize;
    let mut v = BytesMut::from(&old[..]);
    if v.len() < offset + value.len() {
        v.resize(offset + value.len(), 0);
    }
    v[offset..offset + value.len()].copy_from_slice(value);
    let len = v.len();
    ks.set_keep_ttl(&w[1], v.freeze());
    CommandReply::Int(len as i64)
}

/// `GETRANGE key start end` (and the old `SUBSTR`): inclusive offsets, negative ones from the
/// end, clamped as Redis 7 does.
fn getrange(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    let (Some(start), Some(end)) = (parse_int(&w[2]), parse_int(&w[3])) else {
        return not_an_integer();
    };
    let v = ks.get(&w[1]).cloned().unwrap_or_default();
    match byte_range(v.len(), start, end) {
        Some((s, e)) => CommandReply::Bulk(v.slice(s..=e)),
        None => CommandReply::Bulk(Bytes::new()),
    }
}

/// The inclusive byte range `start..=end` of a `len`-byte string, Redis' way (t_string.c
/// getrangeCommand): negative offsets count from the end; `None` for an empty range.
fn byte_range(len: usize, start: i64, end: i64) -> Option<(usize, usize)> {
    let len = len as i64;
    if start < 0 && end < 0 && start > end {
        return None;
    }
    let start = if start < 0 { (len + start).max(0) } else { start };
    let mut end = if end < 0 { (len + end).max(0) } else { end };
    if end >= len {
        end = len - 1;
    }
    if start > end || len == 0 {
        return None;
    }
    Some((start as usize, end as usize))
}
