//! The Redis driver: one node's entries in three Redis keys, written by Lua scripts so that
//! every merge is atomic on the server.
//!
//! # Key layout
//!
//! Each node's keys live under its own namespace `NS` (the node's advertised `ip:port`), so
//! several nodes can share one `redis-server` without seeing each other's entries:
//!
//! ```text
//!  Redis key          type        contents
//!  ckv:{NS}:data      hash        field = key bytes
//!                                 value = version (8 bytes, big-endian) | tag (1 byte:
//!                                         0 tombstone, 1 live) | value bytes
//!  ckv:{NS}:index     sorted set  every score 0; member = hex(id(key)) (40 lowercase hex
//!                                 digits) followed by the key bytes
//!  ckv:{NS}:live      string      integer count of live (non-tombstone) entries
//!  ckv:{NS}:marker    string      exists while the store has its data (see "Lost data")
//! ```
//!
//! With equal scores a sorted set orders its members bytewise, and fixed-width lowercase hex
//! orders like the id it spells, so `ZRANGEBYLEX` walks the index in ring order `(id, key)`,
//! exactly the order of the memory driver's `BTreeMap`. A ring range `(start, end]` is one or
//! two lexicographic ranges, with `x + 1` turning "id > x" into an inclusive bound and
//! "id <= x" into an exclusive one:
//!
//! ```text
//!   start < end:   [hex(start+1) ... (hex(end+1)                      one ZRANGEBYLEX
//!   start >= end:  [hex(start+1) ... +    then    - ... (hex(end+1)   two (wraps past zero)
//!   x == MAX:      "id > MAX" is empty; "id <= MAX" is unbounded (+)
//! ```
//!
//! (`{NS}` in braces is also a Redis Cluster hash tag: one node's four keys share a slot.)
//!
//! # Atomicity
//!
//! Every operation that writes is a Lua script, or a transaction under `WATCH` ([`watched`]:
//! the merges of a pipeline of puts only): `put` (a merge: only a strictly higher
//! version replaces: a compare-and-set that a script makes atomic, or a `WATCH` makes
//! conditional on nothing else writing in between), `delete` (up to a
//! version) and `scan` are scripts so the hash, the index and the live counter change together
//! and a scan never sees an index member without its record; `len` is one too. Versions are
//! compared as 8-byte big-endian strings, byte by byte: Lua numbers are doubles and cannot
//! hold every `u64`. Scripts run by `EVALSHA` (loaded once per Redis by [`RedisStore::open`]);
//! a server that does not know a script (a restarted Redis) is sent `SCRIPT LOAD` and the call
//! is repeated. `put_many` and `delete_many` pipeline their calls: one round trip per
//! [`PIPELINE_MAX_ITEMS`] items.
//!
//! A `get` needs neither a script nor a transaction: a partition's gets are one
//! `HMGET data key...` followed by `EXISTS marker`, plain commands. (They were a transaction,
//! `MULTI`, `EXISTS`, `HMGET`, `EXEC`, so that the marker check (below) and the read happened at
//! one instant; its `MULTI`, `EXEC` and `QUEUED` replies cost redis-server more than the read
//! itself: results/redis-script-cost.md, 12,800 instructions for a transaction of one
//! partition's one key, 7,500 for the two commands alone, 3,400 for a plain `GET`.) The marker
//! is checked after the read, on the same connection, so Redis runs the two
//! in that order, and a read of the emptied store is caught either way: if the marker is still
//! missing when `EXISTS` runs, the op fails as lost; if it is back, this process wrote it again
//! after raising the loss epoch (the only writer of a namespace's marker besides
//! [`RedisStore::open`]), before the op returned, which is what the [`Store`] contract's epoch
//! promises a caller that checks it (the store workers and the event loop's pipe do:
//! `execute_since`). A check before the read would not do: a flush between the two would go
//! unseen.
//!
//! # Pipelining
//!
//! [`RedisPartitions`] opens a node's partitions (one namespace per vnode) on one connection
//! pool and runs the gets and puts (single, or the entries of a `PutMany`: a replica's copy)
//! pending at the same time as one pipeline: every call written at once, the replies read in
//! order, one round trip for up to [`PIPELINE_MAX_ITEMS`] ops. The puts of a run of writes
//! share one call of `LUA_PUTS` (each entry merged as `put` merges it; each partition answered
//! for alone, a lost one as lost), or, in a pipeline without reads, one read under `WATCH` and
//! one `MULTI` ... `EXEC` ([`watched`]: a third of the script's cost to redis-server, one more
//! round trip; sent again by script when Redis refuses the transaction) and the gets of a run of reads one `HMGET` and one `EXISTS`
//! per partition, whatever their partitions, unless an op of the other kind on the same partition comes between: a
//! partition's ops take effect in the order they were given ([`plan`]). A failed read or write ends the pipeline:
//! its connection is dropped and every op of it fails with [`StoreError::Unavailable`] (each
//! is a read or a merge, so running it again is harmless); an error reply fails its own ops
//! only.
//!
//! A node without replicas runs these pipelines on its event loop ([`pipe`]: one non-blocking
//! connection, one pipeline in flight, the next made of what queued meanwhile), with no thread
//! in between; a node with replicas (its loop also carries the replication), or one whose Redis
//! the pipe cannot reach (not over TCP), runs them with the blocking
//! [`super::Batch::execute_batch`] on a store worker: the same plan, encoding and decoding on a
//! pooled connection (see `store_pool` for the measurements). Both send each op's calls and
//! read its replies exactly alike.
//!
//! # Failures
//!
//! The store is shared by the node's store worker threads (every op but the gets and puts the
//! event loop's [`pipe`] carries). Each call takes a connection from a
//! small pool (one per Redis for the partitions opened together, so connections follow the
//! number of calls in flight, at most one per worker, not the number of vnodes) or opens one,
//! and puts it back only if the call succeeded, so a connection left in an unknown state by an
//! error is never reused. Connecting is bounded by
//! [`CONNECT_TIMEOUT_MS`] and every read and write by [`IO_TIMEOUT_MS`]: a Redis that is down
//! or frozen turns into [`StoreError::Unavailable`] within seconds, never a hang. When Redis
//! comes back, the next call connects again. A pooled connection that turns out to be dead
//! (Redis restarted since it was last used) empties the pool and the call is tried once on a
//! fresh connection; every operation is a merge, so running one twice stores the same data.
//! (If Redis restarted empty, that call finds the data lost: see below.)
//!
//! [`RedisStore::open`] connects once and fails if Redis cannot be reached, so a node with a
//! wrong URL stops at startup with a clear message instead of failing every request.
//!
//! # Lost data
//!
//! A Redis restarted without persistence (or flushed, or evicting) comes back without the
//! store's entries, and an unchecked store would answer "not found" for keys it held. So
//! [`RedisStore::open`] writes a marker key, and every operation checks that the marker
//! exists, atomically with what it writes (in its script) or after what it reads (a get: see
//! "Atomicity"; in a pipeline, every call checks for itself): an operation never takes the
//! emptied store's data for the store's without the loss epoch telling its caller, and a lost
//! store is noticed by the first operation that touches it, on any connection, whatever
//! removed the data. That operation fails with
//! [`StoreError::Lost`] (in a pipeline, every op of the calls that found it, the loss recorded
//! once); the store raises its [`loss_epoch`](Store::loss_epoch) and only then
//! writes the marker again (both under one lock, so a loss raises the epoch once), and the
//! operations after that run on the emptied store. (A loss the event loop's pipe finds is
//! recorded the same way, by a store worker: [`pipe::Losses`].) See [`Store`] for the
//! contract.
//!
//! Not detected by the marker: a Redis restarted from a snapshot older than the store's last
//! writes (the marker comes back with the snapshot, the last writes do not), and one that
//! evicts some of a namespace's keys but not its marker. So [`Backend::open`] refuses a Redis
//! configured for either (RDB snapshots without an append-only file; `maxmemory-policy
//! allkeys-*`), and a replica, and warns of an append-only file not synced at every write (a
//! crash of its machine loses the last seconds): `check_durability`. Not seen: a setting
//! changed after open (or set with `CONFIG SET` and lost at Redis' next restart), a stale
//! `dump.rdb` a Redis without save points loads at startup, a failover to a replica that
//! missed the last writes (Sentinel). Run Redis without persistence (and without a `dump.rdb`
//! in its directory), or with `appendonly yes` and `appendfsync always`.

pub mod pipe;
pub mod watched;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::Error;
use bytes::Bytes;
use chordkv_protocol::{resp, Id, Item};
use parking_lot::Mutex;
use redis::{Connection, ConnectionLike, RedisError, RedisResult, Script, ServerErrorKind, Value};

use chordkv_core::store::{
    self, Entry, KeyVersion, PutOutcome, Result, ScanCursor, Store, StoreError, StoreOp, StoreOutcome,
    SCAN_BATCH,
};

/// Bound of one connection attempt (TCP connect and the SELECT of the database).
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Bound of every read and every write on a connection.
pub const IO_TIMEOUT_MS: u64 = 5_000;
/// Idle connections kept for reuse; more are closed when returned.
pub const MAX_IDLE_CONNECTIONS: usize = 16;
/// Most script calls sent in one pipeline by `put_many` and `delete_many`.
pub const PIPELINE_MAX_ITEMS: usize = 512;
/// A pipeline is also sent once its keys and values reach this many bytes.
pub const PIPELINE_MAX_BYTES: usize = 16 << 20;
/// Most entries in one call of `LUA_PUTS`: the script passes twice as many values to one
/// command (`HSET`'s fields and records), and Redis' Lua takes at most 8,000 values on its
/// stack (`LUAI_MAXCSTACK`; an `unpack` of more fails the call).
pub const PUTS_MAX_ENTRIES: usize = 1_024;
const _: () = assert!(2 * PUTS_MAX_ENTRIES < 7_900);
/// The port of a `redis://HOST` URL without one.
pub const DEFAULT_PORT: u16 = 6379;

/// Bytes in front of the value in a stored record: version and tag.
const RECORD_HEADER_BYTES: usize = 9;
const TAG_TOMBSTONE: u8 = 0;
const TAG_LIVE: u8 = 1;
/// A live value with an expiry: 8 more bytes of header.
const TAG_LIVE_EXPIRING: u8 = 2;
/// Hex digits of an id at the front of every index member.
const ID_HEX_BYTES: usize = 40;
/// The error code our scripts answer when a stored record cannot be read.
const CORRUPT_CODE: &str = "CKVCORRUPT";
/// The error code our scripts answer when the marker is missing: the data is lost.
const LOST_CODE: &str = "CKVLOST";
/// What the marker key holds (only its existence matters), for a person who finds it.
const MARKER_VALUE: &str = "chordkv: while this key exists, this namespace holds its node's data";

/// Compares two records' (or a record's and a bare version's) first 8 bytes as big-endian
/// integers (one `string.byte` call per side: a call from Lua costs more than the compare);
/// checks a record's shape.
const LUA_HELPERS: &str = r#"
local byte, sub = string.byte, string.sub
local function newer(a, b)
  local a1, a2, a3, a4, a5, a6, a7, a8 = byte(a, 1, 8)
  local b1, b2, b3, b4, b5, b6, b7, b8 = byte(b, 1, 8)
  if a1 ~= b1 then return a1 > b1 end
  if a2 ~= b2 then return a2 > b2 end
  if a3 ~= b3 then return a3 > b3 end
  if a4 ~= b4 then return a4 > b4 end
  if a5 ~= b5 then return a5 > b5 end
  if a6 ~= b6 then return a6 > b6 end
  if a7 ~= b7 then return a7 > b7 end
  return a8 > b8
end
local function liveness(rec)
  if #rec < 9 then return nil end
  local tag = byte(rec, 9)
  if tag == 1 then return 1 elseif tag == 0 then return 0 end
  if tag == 2 and #rec >= 17 then return 1 end
  return nil
end
local function corrupt(field)
  return redis.error_reply('CKVCORRUPT malformed record in ' .. KEYS[1] .. ' for a key of ' .. #field .. ' bytes')
end
local function lost()
  return redis.call('EXISTS', KEYS[#KEYS]) == 0
end
local function lost_reply()
  return redis.error_reply('CKVLOST ' .. KEYS[#KEYS] .. ' is gone: the data of this namespace was lost')
end
"#;

/// Every script's last key is the marker; a script answers CKVLOST before anything else when
/// it is missing.
///
/// KEYS: live, marker. Returns the live count or nil.
const LUA_LEN: &str = r#"
if lost() then return lost_reply() end
return redis.call('GET', KEYS[1])
"#;

/// KEYS: data, index, live, marker. ARGV: key, index member, new record.
/// Returns {applied, previous_live, previous expiry}: two integers, and the old record's
/// 8-byte expiry (empty when it had none).
const LUA_PUT: &str = r#"
if lost() then return lost_reply() end
local old = redis.call('HGET', KEYS[1], ARGV[1])
local was = 0
local expiry = ''
if old then
  was = liveness(old)
  if was == nil then return corrupt(ARGV[1]) end
  if string.byte(old, 9) == 2 then expiry = string.sub(old, 10, 17) end
  if not newer(ARGV[3], old) then return {0, was, expiry} end
else
  redis.call('ZADD', KEYS[2], '0', ARGV[2])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
local now = liveness(ARGV[3])
if now ~= was then redis.call('INCRBY', KEYS[3], now - was) end
return {1, was, expiry}
"#;

/// `LUA_PUT` for many entries of one or more namespaces in one call, as the pipelined batches
/// send them (see [`Call::Puts`]). Each entry is merged exactly as `LUA_PUT` merges it, in the
/// order given. Redis 7's Lua costs per call, per argument, per command and per table and
/// string the script makes (each an allocation and later garbage) more than per step, so the
/// call pays per call or per namespace, not per entry, for what it can:
///
/// - one call for the puts of every namespace in a pipeline (a node's vnodes);
/// - per namespace, the marker check and one `HMGET` of every entry's stored record (an entry
///   later in the call sees the record an earlier one of the same key left: the call keeps what
///   it wrote, in a table made only when a namespace has several entries);
/// - per namespace, one `HSET` of every record it writes, one `ZADD` of the new keys' index
///   members (each made here from its id's 40 hex digits and the key: the ids come as one
///   argument, as a member is needed only for a new key), one `INCRBY` of the live count;
/// - one flat reply: per namespace a string of one outcome byte per entry and the expiries that
///   were there.
///
/// Measured with the script replayed by `redis-cli --pipe` (redis-server's CPU per entry, 3-byte
/// values, 100,000 keys), against the script of one namespace with a `HGET` and a `HSET` per
/// entry it replaced: 50 entries of one namespace 3.3 us against 4.3; 6 entries of each of 6
/// namespaces in one call 5.3 against 6.0 (6 calls); one entry of each of 6, 9.1 against 9.6;
/// a call of one entry, 9.8 against 8.1 (the tables it makes). Each entry's stored record and
/// new record are read with one `string.byte` call each (the version's 8 bytes and the tag
/// together) and compared inline, and the script defines no helper functions (`LUA_HELPERS`'
/// closures, made at every call): redis-server's instructions a key, counted by
/// `bench/redis-script-cost.sh` (results/redis-script-cost.md, and the same with
/// `DRIVER_SOURCE` set to 342f588's driver), went from 68,400 to 63,200 for a call of one key,
/// 56,100 to 52,200 for one key in each of 2 namespaces, 19,800 to 16,900 for 8 keys in each of
/// 8 (one `newer` and two `liveness` calls an entry before; a plain SET is 4,500).
///
/// A namespace whose marker is missing (its data lost) or whose keys fail a command (of the
/// wrong type, or Redis out of memory: `redis.pcall`) is answered for alone; the others' merges
/// go through.
///
/// KEYS: data, index, live, marker of each namespace in turn. ARGV: for each namespace in turn,
/// its entries' ids in hex, 40 digits each, as one string, then key, new record for each of its
/// entries. Returns, for each namespace in turn: `1, outcomes, e` and `e` expiries, `outcomes`
/// one byte per entry, `4 * (applied + 1) + 2 * previous_live + had_expiry`, `applied` 1
/// (merged), 0 (not newer) or -1 (the stored record cannot be read; it is left as it is), the
/// expiries the previous records' 8-byte expiries, in order, of the entries with `had_expiry`;
/// `0, text` when the marker is missing; `2, text` when a command failed.
const LUA_PUTS: &str = r#"
local byte, sub = string.byte, string.sub
local replies = {}
local r = 0
local at = 1
local fields, outcomes = {}, {}
for g = 0, #KEYS / 4 - 1 do
  local data, index, live, marker = KEYS[4 * g + 1], KEYS[4 * g + 2], KEYS[4 * g + 3], KEYS[4 * g + 4]
  local ids = ARGV[at]
  local n = #ids / 40
  local present = redis.pcall('EXISTS', marker)
  local failed
  if type(present) == 'table' then
    failed = present.err
  elseif present == 0 then
    replies[r + 1] = 0
    replies[r + 2] = marker .. ' is gone: the data of this namespace was lost'
    r = r + 2
  else
    for i = 1, n do fields[i] = ARGV[at + 2 * i - 1] end
    local stored = redis.pcall('HMGET', data, unpack(fields, 1, n))
    failed = stored.err
    if not failed then
      local written, expiries, writes, members
      local w, m, e, delta = 0, 0, 0, 0
      for i = 1, n do
        local key, rec = fields[i], ARGV[at + 2 * i]
        local old = stored[i]
        if written and written[key] then old = written[key] end
        local was = 0
        local expiry = 0
        local applied = 1
        local r1, r2, r3, r4, r5, r6, r7, r8, rt = byte(rec, 1, 9)
        if old then
          local o1, o2, o3, o4, o5, o6, o7, o8, ot = byte(old, 1, 9)
          if ot == 1 then was = 1
          elseif ot == 0 then was = 0
          elseif ot == 2 and #old >= 17 then
            was = 1
            expiry = 1
            expiries = expiries or {}
            e = e + 1
            expiries[e] = sub(old, 10, 17)
          else was = nil end
          if was == nil then
            applied, was = -1, 0
          else
            local up
            if r1 ~= o1 then up = r1 > o1
            elseif r2 ~= o2 then up = r2 > o2
            elseif r3 ~= o3 then up = r3 > o3
            elseif r4 ~= o4 then up = r4 > o4
            elseif r5 ~= o5 then up = r5 > o5
            elseif r6 ~= o6 then up = r6 > o6
            elseif r7 ~= o7 then up = r7 > o7
            else up = r8 > o8 end
            if not up then applied = 0 end
          end
        else
          members = members or {}
          members[m + 1] = '0'
          members[m + 2] = sub(ids, 40 * i - 39, 40 * i) .. key
          m = m + 2
        end
        if applied == 1 then
          if i < n then
            written = written or {}
            written[key] = rec
          end
          writes = writes or {}
          writes[w + 1] = key
          writes[w + 2] = rec
          w = w + 2
          delta = delta + (rt == 0 and 0 or 1) - was
        end
        outcomes[i] = 4 * (applied + 1) + 2 * was + expiry
      end
      -- The index first: a ZADD that fails (the key of the wrong type, or out of memory at
      -- the call's first write) leaves nothing written, and HSET cannot fail after it (HMGET
      -- read the hash, and a script that wrote may write on).
      if m > 0 then
        local x = redis.pcall('ZADD', index, unpack(members, 1, m))
        if type(x) == 'table' then failed = x.err end
      end
      if not failed and w > 0 then
        local x = redis.pcall('HSET', data, unpack(writes, 1, w))
        if type(x) == 'table' then failed = x.err end
      end
      if not failed and delta ~= 0 then
        local x = redis.pcall('INCRBY', live, delta)
        if type(x) == 'table' then failed = x.err end
      end
      if not failed then
        replies[r + 1] = 1
        replies[r + 2] = string.char(unpack(outcomes, 1, n))
        replies[r + 3] = e
        r = r + 3
        for j = 1, e do replies[r + j] = expiries[j] end
        r = r + e
      end
    end
  end
  if failed then
    replies[r + 1] = 2
    replies[r + 2] = failed
    r = r + 2
  end
  at = at + 1 + 2 * n
end
return replies
"#;

/// KEYS: data, index, live, marker. ARGV: key, index member, up-to version (8 bytes,
/// big-endian). Returns 1 if the key was removed.
const LUA_DELETE: &str = r#"
if lost() then return lost_reply() end
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
local was = liveness(old)
if was == nil then return corrupt(ARGV[1]) end
if newer(old, ARGV[3]) then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[2])
if was == 1 then redis.call('INCRBY', KEYS[3], -1) end
return 1
"#;

/// KEYS: data, index, marker. ARGV: limit, whole ("1": whole records; "0": headers only), max_bytes
/// (stop before the keys and records returned would exceed it; the first entry always comes),
/// then
/// (min, max) lexicographic bounds, one pair per segment in ring order.
/// Returns {key, record, key, record, ...}.
const LUA_SCAN: &str = r#"
if lost() then return lost_reply() end
local limit = tonumber(ARGV[1])
local whole = ARGV[2] == '1'
local max_bytes = tonumber(ARGV[3])
local out = {}
local n = 0
local bytes = 0
for i = 4, #ARGV, 2 do
  if n >= limit or bytes >= max_bytes then break end
  local members = redis.call('ZRANGEBYLEX', KEYS[2], ARGV[i], ARGV[i + 1], 'LIMIT', 0, limit - n)
  -- Headers are small: one HMGET per 512 of them, not one HGET each (a call from Lua costs
  -- more than the header). Whole records one by one, so the byte budget stops before large
  -- values are read.
  local recs = nil
  if not whole then
    recs = {}
    for first = 1, #members, 512 do
      local keys = {}
      for j = first, math.min(first + 511, #members) do
        if #members[j] < 40 then return corrupt(members[j]) end
        keys[#keys + 1] = string.sub(members[j], 41)
      end
      local got = redis.call('HMGET', KEYS[1], unpack(keys))
      for j = 1, #keys do recs[first + j - 1] = got[j] end
    end
  end
  for j, m in ipairs(members) do
    if #m < 40 then return corrupt(m) end
    local key = string.sub(m, 41)
    local rec
    if recs then rec = recs[j] else rec = redis.call('HGET', KEYS[1], key) end
    if not rec or liveness(rec) == nil then return corrupt(key) end
    if not whole then
      if string.byte(rec, 9) == 2 then rec = string.sub(rec, 1, 17) else rec = string.sub(rec, 1, 9) end
    end
    local size = #key + #rec
    if n > 0 and bytes + size > max_bytes then return out end
    out[#out + 1] = key
    out[#out + 1] = rec
    n = n + 1
    bytes = bytes + size
  end
end
return out
"#;

/// A parsed `redis://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisUrl {
    /// Host name or IP address (an IPv6 address in brackets).
    pub host: String,
    pub port: u16,
    /// The database index (SELECT).
    pub db: u32,
    /// `user:password` given before `@`, kept out of [`RedisUrl::shown`].
    credentials: Option<String>,
}

impl RedisUrl {
    /// Parses `redis://[USER:PASSWORD@]HOST[:PORT][/DB]` (port 6379 and database 0 when left
    /// out).
    pub fn parse(url: &str) -> crate::Result<RedisUrl> {
        let invalid = |why: &str| Error::InvalidStore {
            url: redact(url),
            reason: format!("{why}; expected redis://HOST:PORT/DB, e.g. redis://127.0.0.1:6379/0"),
        };
        let Some(rest) = url.strip_prefix("redis://") else {
            return Err(invalid("it does not start with redis://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (credentials, hostport) = match authority.rfind('@') {
            Some(i) => (Some(authority[..i].to_string()), &authority[i + 1..]),
            None => (None, authority),
        };
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let Some(close) = bracketed.find(']') else {
                return Err(invalid("an IPv6 address lacks its closing ]"));
            };
            let host = &hostport[..close + 2];
            match &bracketed[close + 1..] {
                "" => (host, None),
                tail => match tail.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(invalid("unexpected text after the IPv6 address")),
                },
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() || host.contains(['?', '#', ' ']) {
            return Err(invalid("the host is missing or invalid"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(invalid(&format!("invalid port '{p}'"))),
            },
        };
        let db = match path {
            "" => 0,
            p => p
                .parse::<u32>()
                .map_err(|_| invalid(&format!("invalid database '{p}' (a number is expected)")))?,
        };
        Ok(RedisUrl {
            host: host.to_string(),
            port,
            db,
            credentials,
        })
    }

    /// The URL without credentials, for messages.
    pub fn shown(&self) -> String {
        format!("redis://{}:{}/{}", self.host, self.port, self.db)
    }

    /// The full URL, for the client library.
    fn full(&self) -> String {
        match &self.credentials {
            Some(c) => format!("redis://{c}@{}:{}/{}", self.host, self.port, self.db),
            None => self.shown(),
        }
    }
}

/// `url` with anything before an `@` replaced, so that a password never reaches a log.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(a)) if a > s => format!("{}***{}", &url[..s + 3], &url[a..]),
        _ => url.to_string(),
    }
}

/// The Redis key names of one namespace.
struct Keys {
    data: String,
    index: String,
    live: String,
    marker: String,
    /// The ring position of the vnode this namespace belongs to, 40 hex digits.
    position: String,
}

/// What the partitions of one node opened together on one Redis share
/// ([`RedisStore::open_partitions`]): the client, the idle connections and the scripts, so a
/// pipelined batch ([`RedisPartitions`]) carries the ops of every partition on one connection,
/// and the scripts are loaded once.
struct Backend {
    client: redis::Client,
    /// The URL without credentials, for messages.
    shown: String,
    idle: Mutex<Vec<Connection>>,
    /// The longest value the server takes: its `proto-max-bulk-len` less our record header.
    max_value: usize,
    /// Redis refused a `WATCH` or a `MULTI` (an ACL, a proxy that does not carry them): every
    /// merge goes by script ([`watched`]).
    transactions_refused: AtomicBool,
    len_script: Script,
    put_script: Script,
    puts_script: Script,
    /// `puts_script`'s source, which the event loop's connection loads with `SCRIPT LOAD`.
    puts_source: String,
    delete_script: Script,
    scan_script: Script,
}

impl Backend {
    /// Connects to the Redis at `url`, loads the scripts and reads the server's largest
    /// argument; answers the connection it used with the backend.
    fn open(url: &str) -> crate::Result<(Arc<Backend>, Connection)> {
        let parsed = RedisUrl::parse(url)?;
        let shown = parsed.shown();
        let unavailable = |message: String| Error::StoreUnavailable {
            url: shown.clone(),
            message,
        };
        let client = redis::Client::open(parsed.full()).map_err(|e| Error::InvalidStore {
            url: shown.clone(),
            reason: describe(&e),
        })?;
        let mut backend = Backend {
            client,
            shown: shown.clone(),
            idle: Mutex::new(Vec::new()),
            max_value: chordkv_protocol::MAX_VALUE_BYTES,
            len_script: Script::new(&format!("{LUA_HELPERS}{LUA_LEN}")),
            put_script: Script::new(&format!("{LUA_HELPERS}{LUA_PUT}")),
            puts_script: Script::new(LUA_PUTS),
            puts_source: LUA_PUTS.to_string(),
            delete_script: Script::new(&format!("{LUA_HELPERS}{LUA_DELETE}")),
            scan_script: Script::new(&format!("{LUA_HELPERS}{LUA_SCAN}")),
            transactions_refused: AtomicBool::new(false),
        };
        // A server that wants a password the URL lacks refuses the first command: the SELECT
        // of a database other than 0 at connect, else the first script's load.
        let password_hint = format!(
            "{shown} requires a password: give it in the store URL, redis://:PASSWORD@HOST:PORT/DB \
             (or redis://USER:PASSWORD@HOST:PORT/DB for an ACL user)"
        );
        let needs_password = |e: &RedisError| {
            let text = e.to_string();
            e.code() == Some("NOAUTH") || text.contains("NOAUTH") || text.contains("Authentication required")
        };
        let mut conn = backend.connect().map_err(|e| {
            if needs_password(&e) {
                unavailable(password_hint.clone())
            } else {
                unavailable(format!("cannot connect to {shown}: {}", describe(&e)))
            }
        })?;
        // Loading the scripts now also checks that the server runs Lua scripts at all (and is
        // the first command: a server that wants a password the URL lacks refuses it).
        for script in backend.scripts() {
            script.prepare_invoke().load(&mut conn).map_err(|e| {
                if needs_password(&e) {
                    unavailable(password_hint.clone())
                } else {
                    unavailable(format!("{shown} does not accept our scripts: {}", describe(&e)))
                }
            })?;
        }
        // Merges go as transactions only where the server takes them (`watched`): an ACL or a
        // proxy may refuse WATCH or MULTI. (DISCARD ends the probe's MULTI and its WATCH.)
        let takes_transactions = redis::cmd("WATCH")
            .arg("ckv:transaction-probe")
            .exec(&mut conn)
            .and_then(|()| redis::cmd("MULTI").exec(&mut conn))
            .and_then(|()| redis::cmd("DISCARD").exec(&mut conn));
        if let Err(e) = takes_transactions {
            if e.code().is_none() {
                return Err(unavailable(format!(
                    "cannot connect to {shown}: {}",
                    describe(&e)
                )));
            }
            // Refused (an error reply): the connection may be left watching, or in a MULTI
            // that a refused DISCARD did not end; a new one takes its place.
            backend.transactions_refused = AtomicBool::new(true);
            conn = backend
                .connect()
                .map_err(|e| unavailable(format!("cannot connect to {shown}: {}", describe(&e))))?;
        }
        // A record is the value and at most RECORD_HEADER_BYTES + 8 bytes before it; Redis
        // refuses an argument over its proto-max-bulk-len (512 MiB unless configured; a server
        // that hides CONFIG is taken to run the default).
        let most: u64 = redis::cmd("CONFIG")
            .arg("GET")
            .arg("proto-max-bulk-len")
            .query::<Vec<String>>(&mut conn)
            .ok()
            .and_then(|pair| pair.get(1).and_then(|v| v.parse().ok()))
            .unwrap_or(512 * 1024 * 1024);
        backend.max_value = usize::try_from(most)
            .unwrap_or(usize::MAX)
            .saturating_sub(RECORD_HEADER_BYTES + 8);
        check_durability(&mut conn, &shown)?;
        Ok((Arc::new(backend), conn))
    }

    fn scripts(&self) -> [&Script; 5] {
        [
            &self.len_script,
            &self.put_script,
            &self.puts_script,
            &self.delete_script,
            &self.scan_script,
        ]
    }

    fn connect(&self) -> RedisResult<Connection> {
        let conn = self
            .client
            .get_connection_with_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))?;
        conn.set_read_timeout(Some(Duration::from_millis(IO_TIMEOUT_MS)))?;
        conn.set_write_timeout(Some(Duration::from_millis(IO_TIMEOUT_MS)))?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        if conn.is_open() {
            let mut idle = self.idle.lock();
            if idle.len() < MAX_IDLE_CONNECTIONS {
                idle.push(conn);
            }
        }
    }

    /// Runs `op` on a pooled connection, or on a new one (see the module docs on failures),
    /// and answers its result with the connection it ran on, none when no connection could be
    /// made. The caller decides whether the connection goes back to the pool.
    fn run<T>(&self, mut op: impl FnMut(&mut Connection) -> Attempt<T>) -> (Attempt<T>, Option<Connection>) {
        let pooled = self.idle.lock().pop();
        if let Some(mut conn) = pooled {
            match op(&mut conn) {
                // Redis went away since this connection was last used (probably restarted):
                // the other idle ones are as dead. Try once on a fresh connection.
                Err(Failure::Redis(e)) if is_stale(&e) => self.idle.lock().clear(),
                result => return (result, Some(conn)),
            }
        }
        match self.connect() {
            Ok(mut conn) => (op(&mut conn), Some(conn)),
            Err(e) => (Err(Failure::Redis(e)), None),
        }
    }

    /// The error of a call that could not connect.
    fn unreachable(&self, e: &RedisError) -> StoreError {
        StoreError::Unavailable(format!("cannot connect to {}: {}", self.shown, describe(e)))
    }
}

/// A [`Store`] in a Redis server; see the module docs for the layout.
pub struct RedisStore {
    backend: Arc<Backend>,
    namespace: String,
    keys: Keys,
    /// Losses detected since open: see the module docs.
    losses: AtomicU64,
    /// Held while a loss is recorded and the marker written again.
    loss_lock: Mutex<()>,
    /// Whether the marker of an earlier open was there when this one opened.
    kept_data: bool,
    /// Whether a record of more than [`watched::LARGE_RECORD_BYTES`] may be stored here: then
    /// this partition's merges go by script, which does not read records back
    /// ([`watched`]). Set when this process writes one or reads one back; never cleared.
    large_records: AtomicBool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.backend.shown)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// What one attempt of an operation failed with.
enum Failure {
    /// Redis failed or could not be reached.
    Redis(RedisError),
    /// Redis answered with data we cannot read.
    Corrupt(String),
}

impl From<RedisError> for Failure {
    fn from(e: RedisError) -> Failure {
        Failure::Redis(e)
    }
}

type Attempt<T> = std::result::Result<T, Failure>;

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://HOST:PORT/DB`) and keeps this node's entries
    /// under `namespace`. Fails if the URL is invalid or Redis cannot be reached now.
    ///
    /// # Errors
    /// [`Error::InvalidStore`] for a malformed URL; [`Error::StoreUnavailable`] when Redis
    /// cannot be reached, refuses our scripts, or holds a count we cannot read.
    pub fn open(url: &str, namespace: &str) -> crate::Result<RedisStore> {
        let (backend, mut conn) = Backend::open(url)?;
        let store = RedisStore::on(&backend, &mut conn, namespace)?;
        backend.give_back(conn);
        Ok(store)
    }

    /// [`RedisStore::open`] for each of `namespaces` (a node's partitions, one per vnode),
    /// sharing one client, one pool of connections and the loaded scripts: what
    /// [`RedisPartitions`] needs to send the ops of all of them in one pipeline.
    ///
    /// # Errors
    /// As [`RedisStore::open`].
    pub fn open_partitions<S: AsRef<str>>(url: &str, namespaces: &[S]) -> crate::Result<Vec<RedisStore>> {
        let (backend, mut conn) = Backend::open(url)?;
        let stores = namespaces
            .iter()
            .map(|ns| RedisStore::on(&backend, &mut conn, ns.as_ref()))
            .collect::<crate::Result<Vec<_>>>()?;
        backend.give_back(conn);
        Ok(stores)
    }

    /// The store of `namespace` on an opened backend, checked and marked on `conn`.
    fn on(backend: &Arc<Backend>, conn: &mut Connection, namespace: &str) -> crate::Result<RedisStore> {
        let shown = &backend.shown;
        let unavailable = |message: String| Error::StoreUnavailable {
            url: shown.clone(),
            message,
        };
        let mut store = RedisStore {
            backend: Arc::clone(backend),
            namespace: namespace.to_string(),
            keys: Keys {
                data: format!("ckv:{{{namespace}}}:data"),
                index: format!("ckv:{{{namespace}}}:index"),
                live: format!("ckv:{{{namespace}}}:live"),
                marker: format!("ckv:{{{namespace}}}:marker"),
                position: format!("ckv:{{{namespace}}}:position"),
            },
            losses: AtomicU64::new(0),
            loss_lock: Mutex::new(()),
            kept_data: false,
            large_records: AtomicBool::new(false),
        };
        let live: Option<i64> = redis::cmd("GET").arg(&store.keys.live).query(conn).map_err(|e| {
            unavailable(format!(
                "cannot read {} from {shown}: {}",
                store.keys.live,
                describe(&e)
            ))
        })?;
        if live.is_some_and(|n| n < 0) {
            return Err(unavailable(format!(
                "{shown}: {} holds a negative count",
                store.keys.live
            )));
        }
        // The marker of an earlier open: this database kept that run's data.
        let kept: bool = redis::cmd("EXISTS")
            .arg(&store.keys.marker)
            .query(conn)
            .map_err(|e| {
                unavailable(format!(
                    "cannot read {} from {shown}: {}",
                    store.keys.marker,
                    describe(&e)
                ))
            })?;
        store.kept_data = kept;
        // A store opened without its marker is not a loss to report: whatever it holds now is
        // what the node starts with.
        store.write_marker(conn).map_err(|e| {
            unavailable(format!(
                "cannot write {} to {shown}: {}",
                store.keys.marker,
                describe(&e)
            ))
        })?;
        Ok(store)
    }

    fn write_marker(&self, conn: &mut Connection) -> RedisResult<()> {
        redis::cmd("SET")
            .arg(&self.keys.marker)
            .arg(MARKER_VALUE)
            .arg("NX")
            .exec(conn)
    }

    /// Records the loss an operation found on `conn` (`detail` says how): raises the epoch,
    /// then writes the marker again, unless another call did both since that operation ran
    /// (the marker is back).
    fn record_loss(&self, conn: &mut Connection, detail: &str) -> StoreError {
        let _one_at_a_time = self.loss_lock.lock();
        let back: RedisResult<bool> = redis::cmd("EXISTS").arg(&self.keys.marker).query(conn);
        let epoch = match back {
            Ok(true) => self.losses.load(Ordering::SeqCst),
            // If Redis cannot be asked, count the loss: counting one twice is harmless, missing
            // one is not.
            _ => {
                let epoch = self.losses.fetch_add(1, Ordering::SeqCst) + 1;
                // If this fails the marker stays missing, and the next operation finds it so.
                let _ = self.write_marker(conn);
                epoch
            }
        };
        self.lost_error(epoch, detail)
    }

    /// [`RedisStore::record_loss`] on a connection of the pool (or a new one) for a loss found
    /// elsewhere (on the event loop's connection, [`pipe`]). If Redis cannot be reached the loss
    /// is counted: counting one twice is harmless, missing one is not.
    fn record_loss_apart(&self, detail: &str) -> StoreError {
        // An idle connection of the pool may be dead (a restart of Redis is how data is often
        // lost): a PING first, so that `run` moves to a fresh connection if it is.
        let record = |conn: &mut Connection| -> Attempt<StoreError> {
            redis::cmd("PING").exec(conn)?;
            Ok(self.record_loss(conn, detail))
        };
        match self.backend.run(record) {
            (Ok(error), Some(conn)) => {
                self.backend.give_back(conn);
                error
            }
            (Ok(error), None) => error, // faulty code: an op ran without a connection
            (Err(_), _) => {
                let _one_at_a_time = self.loss_lock.lock();
                let epoch = self.losses.fetch_add(1, Ordering::SeqCst) + 1;
                self.lost_error(epoch, detail)
            }
        }
    }

    fn lost_error(&self, epoch: u64, detail: &str) -> StoreError {
        StoreError::Lost(format!(
            "{} ({}): loss {epoch} since the store was opened: {detail} (Redis restarted without \
             persistence, or the database was flushed or evicted)",
            self.backend.shown, self.namespace,
        ))
    }

    /// Notes a record about to be written that is too large to read back for a merge
    /// ([`RedisStore::large_records`]).
    fn note_record(&self, entry: &Entry) {
        if entry
            .value
            .as_ref()
            .is_some_and(|v| v.len() > watched::LARGE_RECORD_BYTES)
        {
            self.large_records.store(true, Ordering::Relaxed);
        }
    }

    /// The Redis URL, without credentials.
    pub fn url(&self) -> &str {
        &self.backend.shown
    }

    /// The namespace this store's keys live under.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The names of the three Redis keys that hold this store: data hash, ring index, live
    /// counter.
    pub fn redis_keys(&self) -> [&str; 3] {
        [&self.keys.data, &self.keys.index, &self.keys.live]
    }

    /// The name of the marker key, which exists while the store has its data.
    pub fn marker_key(&self) -> &str {
        &self.keys.marker
    }

    /// Runs `op` on a pooled connection, or on a new one; see the module docs on failures.
    fn with_conn<T>(&self, op: impl FnMut(&mut Connection) -> Attempt<T>) -> Result<T> {
        match self.backend.run(op) {
            (Ok(v), Some(conn)) => {
                self.backend.give_back(conn);
                Ok(v)
            }
            (Ok(v), None) => Ok(v), // faulty code: an op ran without a connection
            (Err(f), Some(conn)) => Err(self.failed(f, conn)),
            (Err(Failure::Redis(e)), None) => Err(self.backend.unreachable(&e)),
            (Err(f), None) => Err(self.store_error(f)),
        }
    }

    /// The error of an operation that failed on `conn`. A lost store is recorded on the same
    /// connection (Redis answered, so it is usable); after any other failure the connection
    /// is in an unknown state and is dropped.
    fn failed(&self, f: Failure, mut conn: Connection) -> StoreError {
        match f {
            Failure::Redis(e) if is_lost(&e) => {
                let error = self.record_loss(&mut conn, e.detail().unwrap_or("the marker is gone"));
                self.backend.give_back(conn);
                error
            }
            f => self.store_error(f),
        }
    }

    fn store_error(&self, f: Failure) -> StoreError {
        let shown = &self.backend.shown;
        match f {
            Failure::Corrupt(why) => StoreError::Corrupt(format!("{shown} ({}): {why}", self.namespace)),
            Failure::Redis(e) if is_corrupt(&e) => {
                StoreError::Corrupt(format!("{shown} ({}): {}", self.namespace, describe(&e)))
            }
            Failure::Redis(e) => StoreError::Unavailable(format!("{shown}: {}", describe(&e))),
        }
    }

    /// The scan script's answer for `(start, end]` after `after`: `(key, record)` pairs, whole
    /// records or only their headers.
    fn scan_records(
        &self,
        start: &Id,
        end: &Id,
        after: Option<&ScanCursor>,
        limit: usize,
        whole: bool,
        max_bytes: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let segments = lex_segments(start, end, after);
        if limit == 0 || segments.is_empty() {
            return Ok(Vec::new());
        }
        self.with_conn(|conn| {
            let mut call = self.backend.scan_script.prepare_invoke();
            call.key(&self.keys.data)
                .key(&self.keys.index)
                .key(&self.keys.marker)
                // Lua numbers are doubles: keep the limit exact (no scan returns 2^40 items).
                .arg(limit.min(1 << 40))
                .arg(if whole { "1" } else { "0" })
                .arg(max_bytes.min(1 << 50));
            for (lo, hi) in &segments {
                call.arg(lo.encode()).arg(hi.encode());
            }
            let flat: Vec<Vec<u8>> = call.invoke(conn)?;
            if flat.len() % 2 != 0 {
                return Err(Failure::Corrupt(
                    "the scan script answered an odd number of items".into(),
                ));
            }
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(key), Some(record)) = (it.next(), it.next()) {
                pairs.push((key, record));
            }
            Ok(pairs)
        })
    }

    /// Sends `calls` in pipelines of script invocations, answering each call's reply in order.
    /// Calls the server answers NOSCRIPT (its script cache was flushed) are sent again after
    /// loading the script.
    fn pipelined<C, T>(
        &self,
        script: &Script,
        calls: &[C],
        bytes_of: impl Fn(&C) -> usize,
        args_of: impl Fn(&C, &mut redis::Cmd),
        parse: impl Fn(Value) -> Attempt<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::with_capacity(calls.len());
        let mut first = 0;
        while first < calls.len() {
            let mut last = first;
            let mut bytes = 0;
            while last < calls.len()
                && last - first < PIPELINE_MAX_ITEMS
                && (last == first || bytes < PIPELINE_MAX_BYTES)
            {
                bytes += bytes_of(&calls[last]);
                last += 1;
            }
            let chunk = &calls[first..last];
            let replies = self.with_conn(|conn| {
                let mut replies = run_pipeline(script, chunk.iter(), &self.keys, &args_of, conn)?;
                let missing: Vec<usize> = (0..replies.len()).filter(|&i| is_noscript(&replies[i])).collect();
                if !missing.is_empty() {
                    script.prepare_invoke().load(conn)?;
                    let again = run_pipeline(
                        script,
                        missing.iter().map(|&i| &chunk[i]),
                        &self.keys,
                        &args_of,
                        conn,
                    )?;
                    for (i, reply) in missing.into_iter().zip(again) {
                        replies[i] = reply;
                    }
                }
                replies.into_iter().map(&parse).collect::<Attempt<Vec<T>>>()
            })?;
            out.extend(replies);
            first = last;
        }
        Ok(out)
    }
}

/// A node's store partitions (one [`RedisStore`] per vnode) opened together on one Redis: they
/// share a client, a pool of connections and the loaded scripts, so that the ops pending at
/// the same time, whatever their partitions, go to Redis in one pipeline
/// ([`super::Batch`]; see the module docs on pipelining).
pub struct RedisPartitions {
    backend: Arc<Backend>,
    parts: Vec<Arc<RedisStore>>,
}

impl std::fmt::Debug for RedisPartitions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPartitions")
            .field("url", &self.backend.shown)
            .field("partitions", &self.parts.len())
            .finish()
    }
}

impl RedisPartitions {
    /// [`RedisStore::open`] for each of `namespaces` (partition `i` keeps its entries under
    /// `namespaces[i]`), on one connection pool.
    ///
    /// # Errors
    /// As [`RedisStore::open`].
    pub fn open<S: AsRef<str>>(url: &str, namespaces: &[S]) -> crate::Result<RedisPartitions> {
        let (backend, mut conn) = Backend::open(url)?;
        let parts = namespaces
            .iter()
            .map(|ns| RedisStore::on(&backend, &mut conn, ns.as_ref()).map(Arc::new))
            .collect::<crate::Result<Vec<_>>>()?;
        backend.give_back(conn);
        Ok(RedisPartitions { backend, parts })
    }

    /// The partitions, in the order of the namespaces they were opened with.
    pub fn partitions(&self) -> &[Arc<RedisStore>] {
        &self.parts
    }
}

impl super::Batch for RedisPartitions {
    /// Gets, puts and the entries of `PutMany`s in pipelines ([`run_points`]); any other op
    /// alone, after them.
    fn execute_batch(&self, ops: Vec<(u16, StoreOp)>) -> Vec<Result<StoreOutcome>> {
        let batch = PointBatch::of(self.parts.len(), &ops);
        let parts: Vec<&RedisStore> = self.parts.iter().map(|p| &**p).collect();
        let point_results = run_points(&self.backend, &parts, &batch.points);
        let results = batch.fold(&ops, point_results);
        ops.into_iter()
            .zip(results)
            .map(|((vnode, op), result)| {
                result.unwrap_or_else(|| store::execute(&*self.parts[usize::from(vnode)], op))
            })
            .collect()
    }

    fn nonblocking(self: Arc<Self>) -> Option<Arc<RedisPartitions>> {
        Some(self)
    }
}

/// The ops a pipeline can carry ([`pipelined`]), cut into [`Point`]s: one per key read or
/// merged (a `PutMany` gives one per entry), each with the op it belongs to.
struct PointBatch {
    points: Vec<(usize, Point)>,
    /// The index in the ops of each point's op.
    owners: Vec<usize>,
    /// The result of each op known without Redis (an empty `PutMany`, a partition that does
    /// not exist).
    early: Vec<Option<Result<StoreOutcome>>>,
}

/// Whether a pipeline carries `op` (gets and merges); [`RedisPartitions::execute_batch`] runs
/// any other op alone.
pub(crate) fn pipelined(op: &StoreOp) -> bool {
    matches!(
        op,
        StoreOp::Get { .. } | StoreOp::Put { .. } | StoreOp::PutMany { .. }
    )
}

impl PointBatch {
    fn of(partitions: usize, ops: &[(u16, StoreOp)]) -> PointBatch {
        let mut points = Vec::with_capacity(ops.len());
        let mut owners = Vec::with_capacity(ops.len());
        let mut early: Vec<Option<Result<StoreOutcome>>> = (0..ops.len()).map(|_| None).collect();
        for (i, (vnode, op)) in ops.iter().enumerate() {
            let part = usize::from(*vnode);
            if part >= partitions {
                // faulty code: the node has as many vnodes as partitions
                early[i] = Some(Err(StoreError::Unavailable(format!(
                    "no store partition {part} of {partitions}"
                ))));
                continue;
            }
            match op {
                StoreOp::Get { key, .. } => points.push((part, Point::Get(key.clone()))),
                StoreOp::Put { id, key, entry } => {
                    points.push((part, Point::Put(key.clone(), *id, entry.clone())))
                }
                StoreOp::PutMany { items } if items.is_empty() => {
                    early[i] = Some(Ok(StoreOutcome::PutMany { applied: 0 }));
                }
                StoreOp::PutMany { items } => points.extend(items.iter().map(|it| {
                    let entry = Entry {
                        version: it.version,
                        value: it.value.clone(),
                        expires_at: it.expires_at,
                    };
                    (part, Point::Put(it.key.clone(), Id::of_key(&it.key), entry))
                })),
                _ => continue,
            }
            owners.resize(points.len(), i);
        }
        PointBatch {
            points,
            owners,
            early,
        }
    }

    /// Each op's result from its points' (`None` for an op no point belongs to: one a pipeline
    /// does not carry).
    fn fold(
        self,
        ops: &[(u16, StoreOp)],
        point_results: Vec<Result<StoreOutcome>>,
    ) -> Vec<Option<Result<StoreOutcome>>> {
        let mut results = self.early;
        for (i, result) in self.owners.into_iter().zip(point_results) {
            let slot = &mut results[i];
            *slot = Some(match (slot.take(), result, &ops[i].1) {
                // A PutMany's entries: how many were applied, or the first error (a loss
                // first: it must reach the caller whatever else failed).
                (None, Ok(StoreOutcome::Put(o)), StoreOp::PutMany { .. }) => Ok(StoreOutcome::PutMany {
                    applied: usize::from(o.applied),
                }),
                (Some(Ok(StoreOutcome::PutMany { applied })), Ok(StoreOutcome::Put(o)), _) => {
                    Ok(StoreOutcome::PutMany {
                        applied: applied + usize::from(o.applied),
                    })
                }
                (Some(Err(StoreError::Lost(e))), _, _) => Err(StoreError::Lost(e)),
                (Some(Ok(_)) | None, Err(e), _) | (Some(Err(_)), Err(e @ StoreError::Lost(_)), _) => Err(e),
                (Some(Err(e)), _, _) => Err(e),
                (None, result, _) => result,
                // faulty code: a point answers Got or Put
                (Some(Ok(_)), Ok(other), _) => {
                    Err(StoreError::Corrupt(format!("a batch entry answered {other:?}")))
                }
            });
        }
        results
    }
}

/// A read or a merge of one key (with the key's id, for its index member), as a pipeline
/// sends it. It owns what it sends (shared `Bytes`), so a pipeline in flight on the event
/// loop ([`pipe`]) outlives the turn that made it.
enum Point {
    Get(Bytes),
    Put(Bytes, Id, Entry),
}

impl Point {
    /// What the op sends, for cutting pipelines at [`PIPELINE_MAX_BYTES`].
    fn bytes(&self) -> usize {
        match self {
            Point::Get(key) => key.len(),
            Point::Put(key, _, entry) => key.len() + entry.value.as_ref().map_or(0, |v| v.len()),
        }
    }
}

/// One call of a pipeline: the indices of its points (in the pipeline's points), all of one
/// partition.
enum Call {
    /// The gets of one or more partitions (`(partition, points)`, each partition once): for
    /// each partition `HMGET data key...`, then `EXISTS marker`, the marker checked after the
    /// read (why that is enough without a transaction: the module docs, "Atomicity").
    Gets { groups: Vec<(usize, Vec<usize>)> },
    /// Merges into one or more partitions (`(partition, points)`, each partition once): one
    /// `EVALSHA` of `LUA_PUTS` (a compare-and-set on the version, which only a script makes
    /// atomic, for each entry in turn), of at most [`PUTS_MAX_ENTRIES`] entries in all.
    Puts {
        groups: Vec<(usize, Vec<usize>)>,
        entries: usize,
    },
}

impl Call {
    /// A call of op `i` (of `part`) alone.
    fn of(part: usize, point: &Point, i: usize) -> Call {
        let groups = vec![(part, vec![i])];
        match point {
            Point::Get(_) => Call::Gets { groups },
            Point::Put(..) => Call::Puts { groups, entries: 1 },
        }
    }

    /// Adds op `i` (of `part`) to its partition's group, or to a new one, if the call is of
    /// its kind (and, for puts, has room); whether it did.
    fn take(&mut self, part: usize, point: &Point, i: usize) -> bool {
        let groups = match (self, point) {
            (Call::Gets { groups }, Point::Get(_)) => groups,
            (Call::Puts { groups, entries }, Point::Put(..)) if *entries < PUTS_MAX_ENTRIES => {
                *entries += 1;
                groups
            }
            _ => return false,
        };
        match groups.iter_mut().find(|(p, _)| *p == part) {
            Some((_, mine)) => mine.push(i),
            None => groups.push((part, vec![i])),
        }
        true
    }

    /// Replies the call gets.
    fn replies(&self) -> usize {
        match self {
            Call::Gets { groups } => 2 * groups.len(),
            Call::Puts { .. } => 1,
        }
    }

    fn encode(&self, backend: &Backend, parts: &[&RedisStore], points: &[(usize, Point)], out: &mut Vec<u8>) {
        // Written straight into `out` (RESP arrays of bulk strings, as `redis::Cmd` packs them),
        // without a `Cmd` per command: the builder copies every argument into a buffer of its
        // own and a record into a `Vec` of its own before `out` gets them.
        match self {
            Call::Gets { groups } => {
                for (part, mine) in groups {
                    let k = &parts[*part].keys;
                    let gets = mine
                        .iter()
                        .filter(|&&i| matches!(points[i].1, Point::Get(_)))
                        .count();
                    resp::write_array_len(out, 2 + gets);
                    resp::write_bulk(out, b"HMGET");
                    resp::write_bulk(out, k.data.as_bytes());
                    for &i in mine {
                        if let Point::Get(key) = &points[i].1 {
                            resp::write_bulk(out, key);
                        }
                    }
                    // After the read: see `Call::Gets`.
                    resp::encode_command(&[b"EXISTS".as_slice(), k.marker.as_bytes()], out);
                }
            }
            Call::Puts { groups, .. } => {
                let puts: usize = groups
                    .iter()
                    .flat_map(|(_, mine)| mine)
                    .filter(|&&i| matches!(points[i].1, Point::Put(..)))
                    .count();
                // EVALSHA sha numkeys, 4 keys and the ids per namespace, a key and a record per entry.
                resp::write_array_len(out, 3 + 5 * groups.len() + 2 * puts);
                resp::write_bulk(out, b"EVALSHA");
                resp::write_bulk(out, backend.puts_script.get_hash().as_bytes());
                resp::write_bulk(out, (4 * groups.len()).to_string().as_bytes());
                for (part, _) in groups {
                    let k = &parts[*part].keys;
                    for key in [&k.data, &k.index, &k.live, &k.marker] {
                        resp::write_bulk(out, key.as_bytes());
                    }
                }
                for (_, mine) in groups {
                    let ids = mine
                        .iter()
                        .filter(|&&i| matches!(points[i].1, Point::Put(..)))
                        .count();
                    resp::write_bulk_len(out, ID_HEX_BYTES * ids);
                    for &i in mine {
                        if let Point::Put(_, id, _) = &points[i].1 {
                            out.extend_from_slice(&id_hex(id));
                        }
                    }
                    out.extend_from_slice(b"\r\n");
                    for &i in mine {
                        if let Point::Put(key, _, entry) = &points[i].1 {
                            resp::write_bulk(out, key);
                            write_record(out, entry);
                        }
                    }
                }
            }
        }
    }
}

/// The calls that run `points` (each with its partition), in order, except that an op joins
/// its partition's last call when that call is of its kind (gets or puts; a puts call takes at
/// most [`PUTS_MAX_ENTRIES`]), else the pipeline's last call when that is of its kind and not
/// the partition's (no op of the partition comes after it): a partition's ops take effect in
/// the order given (a get after a put of the same key sees it), and a batch spread over the
/// partitions costs about one `HMGET` per partition for its reads and one script call for its
/// writes.
fn plan(partitions: usize, points: &[(usize, Point)]) -> Vec<Call> {
    let mut calls: Vec<Call> = Vec::with_capacity(points.len());
    // Each partition's last call.
    let mut last: Vec<Option<usize>> = vec![None; partitions];
    for (i, (part, point)) in points.iter().enumerate() {
        let part = *part;
        if let Some(c) = last[part] {
            if calls[c].take(part, point, i) {
                continue;
            }
        }
        // The pipeline's last call comes after every op of the partition so far, unless it
        // is the partition's own (of the other kind, or full).
        if let Some(t) = calls.len().checked_sub(1) {
            if last[part] != Some(t) && calls[t].take(part, point, i) {
                last[part] = Some(t);
                continue;
            }
        }
        last[part] = Some(calls.len());
        calls.push(Call::of(part, point, i));
    }
    calls
}

/// How many of `points`, from the first, make one pipeline: at most [`PIPELINE_MAX_ITEMS`],
/// and no more once their bytes reach [`PIPELINE_MAX_BYTES`] (at least one).
fn pipeline_len(points: &[(usize, Point)]) -> usize {
    let mut n = 0;
    let mut bytes = 0;
    while n < points.len() && n < PIPELINE_MAX_ITEMS && (n == 0 || bytes < PIPELINE_MAX_BYTES) {
        bytes += points[n].1.bytes();
        n += 1;
    }
    n
}

/// Runs `points` (each with the index of its partition in `parts`, which all live on
/// `backend`) in pipelines ([`pipeline_len`]): each one write and its replies read in order,
/// on one connection. Answers each op's outcome (`Got` or `Put`) in order.
fn run_points(
    backend: &Backend,
    parts: &[&RedisStore],
    points: &[(usize, Point)],
) -> Vec<Result<StoreOutcome>> {
    let mut out = Vec::with_capacity(points.len());
    let mut first = 0;
    while first < points.len() {
        let last = first + pipeline_len(&points[first..]);
        let chunk = &points[first..last];
        let calls = plan(parts.len(), chunk);
        match backend.run(|conn| pipeline_points(backend, parts, chunk, &calls, conn)) {
            (Ok(results), conn) => {
                // Replies to every call were read, so the connection is in step; still, one
                // that brought an error other than a loss is not kept (see the module docs).
                if let Some(conn) = conn {
                    if results
                        .iter()
                        .all(|r| matches!(r, Ok(_) | Err(StoreError::Lost(_))))
                    {
                        backend.give_back(conn);
                    }
                }
                out.extend(results);
            }
            // The connection, if any, stopped in an unknown state: dropped here. Every op of the
            // pipeline fails alike, whether or not Redis ran it: each is a read or a merge, so
            // trying it again stores the same data.
            (Err(f), conn) => {
                let error = match f {
                    Failure::Redis(e) if conn.is_none() => backend.unreachable(&e),
                    Failure::Redis(e) => {
                        StoreError::Unavailable(format!("{}: {}", backend.shown, describe(&e)))
                    }
                    Failure::Corrupt(why) => StoreError::Corrupt(format!("{}: {why}", backend.shown)),
                };
                out.extend(chunk.iter().map(|_| Err(error.clone())));
            }
        }
        first = last;
    }
    out
}

/// Where each call's replies start among a pipeline's replies.
fn reply_starts(calls: &[Call]) -> Vec<usize> {
    calls
        .iter()
        .scan(0, |at, c| {
            let start = *at;
            *at += c.replies();
            Some(start)
        })
        .collect()
}

/// The puts calls whose script the server did not know (its script cache was flushed): they
/// did nothing and are sent again after `SCRIPT LOAD`.
fn noscript_calls(calls: &[Call], replies: &[Value]) -> Vec<usize> {
    let starts = reply_starts(calls);
    (0..calls.len())
        .filter(|&c| matches!(calls[c], Call::Puts { .. }) && is_noscript(&replies[starts[c]]))
        .collect()
}

/// Sends `calls` in one write and reads their replies; puts the server answers NOSCRIPT (its
/// script cache was flushed) are sent again after loading the script. Fails as a whole only
/// when the connection does (the first read or write error ends it: each read is bounded by
/// [`IO_TIMEOUT_MS`], and after one timeout no other is waited for); otherwise answers each of
/// the points, a loss recorded once per partition.
fn pipeline_points(
    backend: &Backend,
    parts: &[&RedisStore],
    points: &[(usize, Point)],
    calls: &[Call],
    conn: &mut Connection,
) -> Attempt<Vec<Result<StoreOutcome>>> {
    let mut packed = Vec::new();
    // Replies to skip ahead of the script calls' (an UNWATCH's).
    let mut skip = 0;
    if let Some(mut watched) = watched::Watched::of(backend, parts, points, calls, watched::WATCHED_MIN_PUTS)
    {
        let expected = watched.encode_read(parts, points, &mut packed);
        conn.send_packed_command(&packed)?;
        let replies = recv_replies(conn, expected)?;
        packed.clear();
        let next = watched.decide(backend, parts, points, replies)?;
        if let watched::Next::Script { end: Some(end) } = next {
            resp::encode_command(&[end], &mut packed);
            skip = 1;
        }
        if next == watched::Next::Write {
            let expected = watched.encode_write(parts, points, &mut packed);
            conn.send_packed_command(&packed)?;
            let replies = recv_replies(conn, expected)?;
            packed.clear();
            let mut losses: Vec<Option<StoreError>> = vec![None; parts.len()];
            let mut lost = |part: usize, detail: &str| -> StoreError {
                losses[part]
                    .get_or_insert_with(|| parts[part].record_loss(conn, detail))
                    .clone()
            };
            if let Some(results) = watched.finish(parts, points, replies, &mut lost)? {
                return Ok(results);
            }
        }
        // Redis refused the WATCH, a marker is missing, or a watched key changed between
        // the stages: the merges go by script.
    }
    for call in calls {
        call.encode(backend, parts, points, &mut packed);
    }
    conn.send_packed_command(&packed)?;
    for _ in 0..skip {
        conn.recv_response()?;
    }
    let expected: usize = calls.iter().map(Call::replies).sum();
    let mut replies = Vec::with_capacity(expected);
    for _ in 0..expected {
        replies.push(conn.recv_response()?);
    }
    let missing = noscript_calls(calls, &replies);
    if !missing.is_empty() {
        backend.puts_script.prepare_invoke().load(conn)?;
        packed.clear();
        for &c in &missing {
            calls[c].encode(backend, parts, points, &mut packed);
        }
        conn.send_packed_command(&packed)?;
        let starts = reply_starts(calls);
        for &c in &missing {
            replies[starts[c]] = conn.recv_response()?;
        }
    }
    // A partition's loss, recorded at its first sight in this pipeline.
    let mut losses: Vec<Option<StoreError>> = vec![None; parts.len()];
    let mut lost = |part: usize, detail: &str| -> StoreError {
        losses[part]
            .get_or_insert_with(|| parts[part].record_loss(conn, detail))
            .clone()
    };
    Ok(decode_replies(parts, points, calls, replies, &mut lost))
}

/// The next `n` replies on `conn`.
fn recv_replies(conn: &mut Connection, n: usize) -> RedisResult<Vec<Value>> {
    (0..n).map(|_| conn.recv_response()).collect()
}

/// Each point's outcome from the replies to `calls` (NOSCRIPT answers already replaced by the
/// replies of the calls sent again). A partition whose marker a call found missing gets
/// `lost(part, detail)`, the error for every op of that call.
fn decode_replies(
    parts: &[&RedisStore],
    points: &[(usize, Point)],
    calls: &[Call],
    replies: Vec<Value>,
    lost: &mut dyn FnMut(usize, &str) -> StoreError,
) -> Vec<Result<StoreOutcome>> {
    let mut results: Vec<Option<Result<StoreOutcome>>> = (0..points.len()).map(|_| None).collect();
    let mut replies = replies.into_iter();
    for call in calls {
        match call {
            Call::Gets { groups } => {
                for (part, mine) in groups {
                    let read = replies.next().unwrap_or(Value::Nil);
                    let marker = replies.next().unwrap_or(Value::Nil);
                    decode_gets(parts[*part], *part, mine, read, marker, &mut results, lost);
                }
            }
            Call::Puts { groups, .. } => {
                let reply = replies.next().unwrap_or(Value::Nil);
                let mut items = match reply {
                    Value::Array(items) => Ok(items.into_iter()),
                    Value::ServerError(e) => Err(Failure::Redis(e.into())),
                    other => Err(Failure::Corrupt(format!(
                        "unexpected reply to the put script: {other:?}"
                    ))),
                };
                for (part, mine) in groups {
                    let store = parts[*part];
                    let outcome = match &mut items {
                        Ok(items) => next_put_group(items, mine.len()),
                        Err(Failure::Redis(e)) => {
                            Err(GroupFailure::Call(store.store_error(Failure::Redis(e.clone()))))
                        }
                        Err(Failure::Corrupt(why)) => Err(GroupFailure::Call(
                            store.store_error(Failure::Corrupt(why.clone())),
                        )),
                    };
                    decode_puts(store, *part, mine, points, outcome, &mut results, lost);
                }
            }
        }
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(StoreError::Corrupt(
                    "faulty code: an op of a pipeline got no reply".into(),
                ))
            })
        })
        .collect()
}

/// Why a partition's puts in a script call failed as a whole.
enum GroupFailure {
    /// The whole call failed (the error already made for this partition).
    Call(StoreError),
    /// The partition's marker is gone: its data was lost (the script's text).
    Lost(String),
    /// One of the partition's commands failed (Redis' error text).
    Command(String),
    /// The reply does not read as the script's.
    Unreadable(String),
}

/// The next partition's part of a `LUA_PUTS` reply (see there), of `n` entries: their outcomes
/// (`None` for a stored record the script could not read).
fn next_put_group(
    items: &mut std::vec::IntoIter<Value>,
    n: usize,
) -> std::result::Result<Vec<Option<PutOutcome>>, GroupFailure> {
    let text = |v: Option<Value>| match v {
        Some(Value::BulkString(t)) => String::from_utf8_lossy(&t).into_owned(),
        other => format!("{other:?}"),
    };
    match items.next() {
        Some(Value::Int(1)) => {
            let (Some(Value::BulkString(codes)), Some(Value::Int(e))) = (items.next(), items.next()) else {
                return Err(GroupFailure::Unreadable("no outcomes".into()));
            };
            let expiries = (0..e.max(0))
                .map(|_| match items.next() {
                    Some(Value::BulkString(e)) => Some(e),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>();
            expiries
                .and_then(|expiries| decode_put_outcomes(&codes, expiries))
                .filter(|outcomes| outcomes.len() == n)
                .ok_or_else(|| GroupFailure::Unreadable(format!("its outcomes do not read as {n}")))
        }
        Some(Value::Int(0)) => Err(GroupFailure::Lost(text(items.next()))),
        Some(Value::Int(2)) => Err(GroupFailure::Command(text(items.next()))),
        other => Err(GroupFailure::Unreadable(format!("{other:?}"))),
    }
}

/// The outcomes of one partition's puts (`mine`, indices into `results`) from its part of a
/// [`Call::Puts`] script call's reply ([`next_put_group`]).
fn decode_puts(
    store: &RedisStore,
    part: usize,
    mine: &[usize],
    points: &[(usize, Point)],
    outcome: std::result::Result<Vec<Option<PutOutcome>>, GroupFailure>,
    results: &mut [Option<Result<StoreOutcome>>],
    lost: &mut dyn FnMut(usize, &str) -> StoreError,
) {
    let shown = &store.backend.shown;
    let error = match outcome {
        Ok(outcomes) => {
            for (&i, outcome) in mine.iter().zip(outcomes) {
                results[i] = Some(match outcome {
                    Some(outcome) => Ok(StoreOutcome::Put(outcome)),
                    None => {
                        let key_len = match &points[i].1 {
                            Point::Put(key, ..) | Point::Get(key) => key.len(),
                        };
                        Err(store.store_error(Failure::Corrupt(format!(
                            "malformed record in {} for a key of {key_len} bytes",
                            store.keys.data,
                        ))))
                    }
                });
            }
            return;
        }
        Err(GroupFailure::Call(e)) => e,
        Err(GroupFailure::Lost(text)) => lost(part, &text),
        // Redis' own error text: WRONGTYPE (something else wrote our keys), OOM, ...
        Err(GroupFailure::Command(text)) if text.starts_with("WRONGTYPE") => {
            StoreError::Corrupt(format!("{shown} ({}): {text}", store.namespace))
        }
        Err(GroupFailure::Command(text)) => StoreError::Unavailable(format!("{shown}: {text}")),
        Err(GroupFailure::Unreadable(why)) => {
            store.store_error(Failure::Corrupt(format!("the put script's answer: {why}")))
        }
    };
    for &i in mine {
        results[i] = Some(Err(error.clone()));
    }
}

/// The outcomes of one partition's gets (`mine`, indices into `results`) from its replies in
/// a [`Call::Gets`]: the `HMGET`'s (`read`), then the marker's `EXISTS`.
fn decode_gets(
    store: &RedisStore,
    part: usize,
    mine: &[usize],
    read: Value,
    marker: Value,
    results: &mut [Option<Result<StoreOutcome>>],
    lost: &mut dyn FnMut(usize, &str) -> StoreError,
) {
    match read_records(read, marker, mine.len()) {
        Ok(Some(records)) => {
            if records
                .iter()
                .flatten()
                .any(|r| r.len() > watched::LARGE_RECORD_BYTES)
            {
                store.large_records.store(true, Ordering::Relaxed);
            }
            for (&i, record) in mine.iter().zip(records) {
                let entry = record.map(decode_record).transpose();
                results[i] = Some(entry.map(StoreOutcome::Got).map_err(|f| store.store_error(f)));
            }
        }
        Ok(None) => {
            let error = lost(part, "the marker is gone");
            for &i in mine {
                results[i] = Some(Err(error.clone()));
            }
        }
        Err(f) => {
            let error = store.store_error(f);
            for &i in mine {
                results[i] = Some(Err(error.clone()));
            }
        }
    }
}

/// The records a [`Call::Gets`] read, `n` of them, from the replies to its `HMGET` (`read`)
/// and to the `EXISTS` of the marker after it; `None` when the marker was missing (the data is
/// lost, or was lost before the read).
fn read_records(read: Value, marker: Value, n: usize) -> Attempt<Option<Vec<Option<Vec<u8>>>>> {
    let unexpected = |what: &Value| Failure::Corrupt(format!("unexpected reply to a read: {what:?}"));
    match marker {
        Value::Int(0) => return Ok(None),
        Value::Int(1) => {}
        Value::ServerError(e) => return Err(Failure::Redis(e.into())),
        other => return Err(unexpected(&other)),
    }
    match read {
        Value::Array(values) if values.len() == n => values
            .into_iter()
            .map(|v| match v {
                Value::Nil => Ok(None),
                Value::BulkString(record) => Ok(Some(record)),
                other => Err(unexpected(&other)),
            })
            .collect::<Attempt<Vec<_>>>()
            .map(Some),
        Value::ServerError(e) => Err(Failure::Redis(e.into())),
        other => Err(unexpected(&other)),
    }
}

/// One pipeline of EVALSHA calls; replies that are errors are returned as values.
fn run_pipeline<'a, C: 'a>(
    script: &Script,
    calls: impl Iterator<Item = &'a C>,
    keys: &Keys,
    args_of: &impl Fn(&C, &mut redis::Cmd),
    conn: &mut Connection,
) -> RedisResult<Vec<Value>> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for c in calls {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash())
            .arg(4)
            .arg(&keys.data)
            .arg(&keys.index)
            .arg(&keys.live)
            .arg(&keys.marker);
        args_of(c, &mut cmd);
        pipe.add_command(cmd);
    }
    pipe.query(conn)
}

fn is_noscript(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript))
}

/// A reply of one pipelined call: an error reply becomes the call's error.
fn reply_value<T: redis::FromRedisValue>(v: Value) -> Attempt<T> {
    if let Value::ServerError(e) = v {
        return Err(Failure::Redis(e.into()));
    }
    redis::from_redis_value(v).map_err(|e| Failure::Corrupt(format!("unexpected script reply: {e}")))
}

/// A pooled connection's error that means the connection (not Redis) is dead: worth one
/// retry on a fresh connection. A timeout is not: Redis may be frozen, and waiting again
/// would double the caller's wait.
fn is_stale(e: &RedisError) -> bool {
    e.is_connection_dropped() && !e.is_timeout()
}

/// Our scripts' answer when the marker is missing.
fn is_lost(e: &RedisError) -> bool {
    e.code() == Some(LOST_CODE)
}

/// Our scripts' complaint about a record, or a namespace key of the wrong type (something else
/// wrote there).
fn is_corrupt(e: &RedisError) -> bool {
    matches!(e.code(), Some(CORRUPT_CODE) | Some("WRONGTYPE"))
}

/// Refuses a Redis whose configuration could take the store's data away in a way the marker
/// does not show (module docs, "Lost data"), and warns of one that could in rarer cases. Read
/// from the running server (`CONFIG GET`, `INFO replication`): a setting changed later, or one
/// made with `CONFIG SET` and not in its configuration file (lost at its next restart), is not
/// seen.
///
/// Refused:
/// - `maxmemory-policy allkeys-*` evicts any key when memory is full (with a `maxmemory` set):
///   one namespace's hash, index or live count alone (its marker may stay), which loses
///   acknowledged writes and leaves an index that names records that are gone. (`volatile-*`
///   policies evict only keys with a TTL; the store sets none. `noeviction` fails the writes
///   instead, with an error the node reports.) Refused even while `maxmemory` is 0 (no limit),
///   which a `CONFIG SET` can change.
/// - RDB snapshots without an append-only file (`save` set, `appendonly no`): a redis-server
///   that restarts, after a crash or `SHUTDOWN`, loads the last snapshot, marker included,
///   and every write since is gone or rolled back to an older version, deletes undone,
///   without any sign (<https://redis.io/docs/latest/operate/oss_and_stack/management/persistence/>).
///   (Without `save`, a `dump.rdb` left in its directory by an earlier run or a manual `SAVE`
///   is loaded all the same at startup: the message says to remove it.)
/// - A replica (`role:slave`): writes are refused (`READONLY`) or, writable, lost at the next
///   sync with its master.
///
/// Warned: an append-only file not synced at every write (`appendfsync everysec` or `no`, or
/// `no-appendfsync-on-rewrite yes`), which a crash of the machine (and, while a slow disk
/// delays the writes, of redis-server) can roll back by its last seconds; a server that hides
/// `CONFIG` or `INFO` (renamed, or an ACL), which cannot be checked.
///
/// # Errors
/// [`Error::UnsafeStore`] naming the setting and what to set instead.
fn check_durability(conn: &mut Connection, shown: &str) -> crate::Result<()> {
    let mut setting = |name: &str| -> RedisResult<String> {
        let pair: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(name).query(conn)?;
        Ok(pair.get(1).cloned().unwrap_or_default())
    };
    let read = (|| -> RedisResult<[String; 5]> {
        Ok([
            setting("maxmemory-policy")?,
            setting("save")?,
            setting("appendonly")?,
            setting("appendfsync")?,
            setting("no-appendfsync-on-rewrite")?,
        ])
    })();
    let role = redis::cmd("INFO")
        .arg("replication")
        .query::<String>(conn)
        .map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("role:").map(|r| r.trim().to_string()))
                .unwrap_or_default()
        });
    let unsafe_store = |message: String| Error::UnsafeStore {
        url: shown.to_string(),
        message,
    };
    if let Ok("slave") = role.as_deref() {
        return Err(unsafe_store(format!(
            "{shown} is a replica of another Redis (role:slave): it refuses writes, or loses them \
             at its next sync with its master; give the node a master"
        )));
    }
    let [policy, save, appendonly, appendfsync, no_fsync_on_rewrite] = match read {
        Ok(settings) => settings,
        Err(e) => {
            tracing::warn!(
                url = %shown,
                "cannot read the Redis configuration ({}): make sure it never evicts keys \
                 (maxmemory-policy noeviction) and never reloads an older snapshot (no save \
                 points and no dump.rdb, or appendonly yes): the store cannot notice either",
                describe(&e)
            );
            return Ok(());
        }
    };
    if policy.starts_with("allkeys-") {
        return Err(unsafe_store(format!(
            "{shown} evicts keys when its memory is full (maxmemory-policy {policy}): it could \
             drop part of a node's data (a hash, an index) and lose acknowledged writes without \
             notice; set maxmemory-policy noeviction (full memory then fails writes with an \
             error)"
        )));
    }
    if appendonly != "yes" && !save.trim().is_empty() {
        return Err(unsafe_store(format!(
            "{shown} keeps its data only in RDB snapshots (save \"{save}\", appendonly no): \
             after a restart it would reload the last snapshot and the writes since would be \
             gone or older, deletes undone, without notice; run it without persistence (save \
             \"\" and appendonly no in its redis.conf or on its command line, and no dump.rdb \
             left in its directory, which it would load at startup: a restart then empties it, \
             which the store notices and recovers from) or with an append-only file \
             (appendonly yes, appendfsync always)"
        )));
    }
    if appendonly == "yes" && (appendfsync != "always" || no_fsync_on_rewrite == "yes") {
        tracing::warn!(
            url = %shown,
            "Redis does not sync its append-only file at every write (appendfsync {appendfsync}, \
             no-appendfsync-on-rewrite {no_fsync_on_rewrite}): a crash of its machine can roll \
             back its last writes (seconds of them; with appendfsync no, as many as the OS \
             holds) without notice; appendfsync always and no-appendfsync-on-rewrite no close that"
        );
    }
    if !matches!(role.as_deref(), Ok("master")) {
        tracing::warn!(
            url = %shown,
            "cannot read the Redis role (INFO replication: {}): make sure it is not a replica",
            match &role {
                Ok(r) => format!("role {r:?}"),
                Err(e) => describe(e),
            }
        );
    }
    Ok(())
}

/// A short description of a Redis error for a message.
fn describe(e: &RedisError) -> String {
    if e.is_connection_refusal() {
        "connection refused".to_string()
    } else if e.is_timeout() {
        "timed out".to_string()
    } else {
        e.to_string()
    }
}

/// The 40-hex-digit id at the front of an index member.
fn id_hex(id: &Id) -> [u8; ID_HEX_BYTES] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; ID_HEX_BYTES];
    for (i, b) in id.0.iter().enumerate() {
        out[2 * i] = DIGITS[(b >> 4) as usize];
        out[2 * i + 1] = DIGITS[(b & 0xf) as usize];
    }
    out
}

/// The outcomes `LUA_PUTS` answers (see there): per entry, `None` for a stored record it could
/// not read, else what the merge did. `None` when the answer does not read as outcomes (a byte
/// out of range, expiries that are not 8 bytes or do not match the bytes that announce them).
fn decode_put_outcomes(codes: &[u8], expiries: Vec<Vec<u8>>) -> Option<Vec<Option<PutOutcome>>> {
    let mut expiries = expiries.into_iter();
    let outcomes = codes
        .iter()
        .map(|&code| {
            if code > 11 {
                return None;
            }
            let previous_expires_at = if code & 1 == 1 {
                u64::from_be_bytes(expiries.next()?.try_into().ok()?)
            } else {
                0
            };
            Some(match code >> 2 {
                0 => None,
                applied => Some(PutOutcome {
                    applied: applied == 2,
                    previous_live: code & 2 != 0,
                    previous_expires_at,
                }),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    expiries.next().is_none().then_some(outcomes)
}

/// The index member of a key: its id in hex, then the key.
fn member(id: &Id, key: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(ID_HEX_BYTES + key.len());
    m.extend_from_slice(&id_hex(id));
    m.extend_from_slice(key);
    m
}

/// A record: version (8 bytes, big-endian), tag, then for [`TAG_LIVE_EXPIRING`] the expiry
/// (8 bytes, ms since the epoch), then the value. Records of entries without an expiry are
/// as earlier releases wrote them.
fn encode_record(entry: &Entry) -> Vec<u8> {
    let (header, len) = record_header(entry);
    let value = entry.value.as_deref().unwrap_or_default();
    let mut rec = Vec::with_capacity(len + value.len());
    rec.extend_from_slice(&header[..len]);
    rec.extend_from_slice(value);
    rec
}

/// Writes `entry`'s record ([`encode_record`]) into `out` as a RESP bulk string, without
/// making the record first.
fn write_record(out: &mut Vec<u8>, entry: &Entry) {
    let (header, len) = record_header(entry);
    let value = entry.value.as_deref().unwrap_or_default();
    resp::write_bulk_len(out, len + value.len());
    out.extend_from_slice(&header[..len]);
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A record's bytes before its value (see [`encode_record`]) and how many of the 17 they are:
/// the version (8 bytes, big-endian), the tag, and for an expiring entry its expiry (8 bytes).
fn record_header(entry: &Entry) -> ([u8; RECORD_HEADER_BYTES + 8], usize) {
    let mut header = [0u8; RECORD_HEADER_BYTES + 8];
    header[..8].copy_from_slice(&entry.version.to_be_bytes());
    match (&entry.value, entry.expires_at) {
        (None, _) => header[8] = TAG_TOMBSTONE,
        (Some(_), 0) => header[8] = TAG_LIVE,
        (Some(_), at) => {
            header[8] = TAG_LIVE_EXPIRING;
            header[RECORD_HEADER_BYTES..].copy_from_slice(&at.to_be_bytes());
            return (header, RECORD_HEADER_BYTES + 8);
        }
    }
    (header, RECORD_HEADER_BYTES)
}

/// A stored record as an entry; with `whole == false` only its header was read, and a live
/// entry's value is left empty.
fn decode_record(record: Vec<u8>) -> Attempt<Entry> {
    if record.len() < RECORD_HEADER_BYTES {
        return Err(Failure::Corrupt(format!("a record of {} bytes", record.len())));
    }
    let mut version = [0u8; 8];
    version.copy_from_slice(&record[..8]);
    let version = u64::from_be_bytes(version);
    let (value, expires_at) = match record[8] {
        TAG_TOMBSTONE => (None, 0),
        TAG_LIVE => (Some(Bytes::from(record).slice(RECORD_HEADER_BYTES..)), 0),
        TAG_LIVE_EXPIRING if record.len() >= RECORD_HEADER_BYTES + 8 => {
            let at = u64::from_be_bytes(record[9..17].try_into().unwrap_or_default());
            (Some(Bytes::from(record).slice(RECORD_HEADER_BYTES + 8..)), at)
        }
        tag => return Err(Failure::Corrupt(format!("a record with tag {tag}"))),
    };
    Ok(Entry {
        version,
        value,
        expires_at,
    })
}

/// One end of a `ZRANGEBYLEX` range.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Lex {
    /// `-`
    Min,
    /// `+`
    Max,
    /// `[member`
    Incl(Vec<u8>),
    /// `(member`
    Excl(Vec<u8>),
}

impl Lex {
    fn encode(&self) -> Vec<u8> {
        match self {
            Lex::Min => b"-".to_vec(),
            Lex::Max => b"+".to_vec(),
            Lex::Incl(m) => [b"[".as_slice(), m].concat(),
            Lex::Excl(m) => [b"(".as_slice(), m].concat(),
        }
    }
}

/// The lexicographic ranges of the index, in ring order, that make up `(start, end]` after
/// `after` (the same segments as the memory driver's, over index members).
fn lex_segments(start: &Id, end: &Id, after: Option<&ScanCursor>) -> Vec<(Lex, Lex)> {
    let one = Id::from_u64(1);
    // "id > x": every member from hex(x + 1) on; nothing when x is the top of the ring.
    let above = |id: &Id| -> Option<Lex> {
        (*id != Id::MAX).then(|| Lex::Incl(id_hex(&id.wrapping_add(&one)).to_vec()))
    };
    // "id <= x": every member before hex(x + 1).
    let up_to = |id: &Id| -> Lex {
        if *id == Id::MAX {
            Lex::Max
        } else {
            Lex::Excl(id_hex(&id.wrapping_add(&one)).to_vec())
        }
    };
    let mut segments = Vec::with_capacity(2);
    if start < end {
        if let Some(lo) = above(start) {
            segments.push((lo, up_to(end)));
        }
    } else {
        if let Some(lo) = above(start) {
            segments.push((lo, Lex::Max));
        }
        segments.push((Lex::Min, up_to(end)));
    }
    let Some((cid, ckey)) = after else { return segments };
    let cursor = member(cid, ckey);
    let holds = |(lo, hi): &(Lex, Lex)| -> bool {
        let lo_ok = match lo {
            Lex::Min => true,
            Lex::Max => false,
            Lex::Incl(b) => &cursor >= b,
            Lex::Excl(b) => &cursor > b,
        };
        let hi_ok = match hi {
            Lex::Min => false,
            Lex::Max => true,
            Lex::Incl(b) => &cursor <= b,
            Lex::Excl(b) => &cursor < b,
        };
        lo_ok && hi_ok
    };
    match segments.iter().position(holds) {
        Some(pos) => {
            segments.drain(..pos);
            segments[0].0 = Lex::Excl(cursor);
        }
        None => segments.clear(), // a cursor outside the range: nothing after it
    }
    segments
}

impl Store for RedisStore {
    /// Plain commands (see [`Call::Gets`]), not a script.
    fn get(&self, key: &[u8]) -> Result<Option<Entry>> {
        match run_points(
            &self.backend,
            &[self],
            &[(0, Point::Get(Bytes::copy_from_slice(key)))],
        )
        .pop()
        {
            Some(Ok(StoreOutcome::Got(entry))) => Ok(entry),
            Some(Err(e)) => Err(e),
            // faulty code: one get is answered by one Got or one error
            other => Err(StoreError::Corrupt(format!("a get answered {other:?}"))),
        }
    }

    fn put(&self, key: &Bytes, entry: Entry) -> Result<PutOutcome> {
        self.note_record(&entry);
        let member = member(&Id::of_key(key), key);
        let record = encode_record(&entry);
        let (applied, previous_live, expiry): (i64, i64, Vec<u8>) = self.with_conn(|conn| {
            Ok(self
                .backend
                .put_script
                .key(&self.keys.data)
                .key(&self.keys.index)
                .key(&self.keys.live)
                .key(&self.keys.marker)
                .arg(key.as_ref())
                .arg(&member)
                .arg(&record)
                .invoke(conn)?)
        })?;
        Ok(PutOutcome {
            applied: applied == 1,
            previous_live: previous_live == 1,
            previous_expires_at: expiry.try_into().map_or(0, u64::from_be_bytes),
        })
    }

    fn delete(&self, key: &[u8], up_to_version: u64) -> Result<bool> {
        let member = member(&Id::of_key(key), key);
        let removed: i64 = self.with_conn(|conn| {
            Ok(self
                .backend
                .delete_script
                .key(&self.keys.data)
                .key(&self.keys.index)
                .key(&self.keys.live)
                .key(&self.keys.marker)
                .arg(key)
                .arg(&member)
                .arg(&up_to_version.to_be_bytes()[..])
                .invoke(conn)?)
        })?;
        Ok(removed == 1)
    }

    fn scan(&self, start: &Id, end: &Id, after: Option<&ScanCursor>, limit: usize) -> Result<Vec<Item>> {
        self.scan_limited(start, end, after, limit, usize::MAX)
    }

    /// The script stops at the byte budget, so a handoff batch of large values does not pull
    /// a thousand of them across the network to keep a few.
    fn scan_limited(
        &self,
        start: &Id,
        end: &Id,
        after: Option<&ScanCursor>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Item>> {
        self.scan_records(start, end, after, limit, true, max_bytes)?
            .into_iter()
            .map(|(key, record)| {
                let e = decode_record(record).map_err(|f| self.store_error(f))?;
                Ok(Item {
                    key: Bytes::from(key),
                    version: e.version,
                    value: e.value,
                    expires_at: e.expires_at,
                })
            })
            .collect()
    }

    fn put_many(&self, items: Vec<Item>) -> Result<usize> {
        let calls: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = items
            .into_iter()
            .map(|it| {
                let member = member(&Id::of_key(&it.key), &it.key);
                let entry = Entry {
                    version: it.version,
                    value: it.value,
                    expires_at: it.expires_at,
                };
                self.note_record(&entry);
                let record = encode_record(&entry);
                (it.key.to_vec(), member, record)
            })
            .collect();
        let outcomes = self.pipelined(
            &self.backend.put_script,
            &calls,
            |(key, _, record)| key.len() + record.len(),
            |(key, member, record), cmd| {
                cmd.arg(key).arg(member).arg(record);
            },
            reply_value::<(i64, i64, Vec<u8>)>,
        )?;
        Ok(outcomes.iter().filter(|(applied, _, _)| *applied == 1).count())
    }

    fn delete_many(&self, keys: Vec<(Bytes, u64)>) -> Result<usize> {
        let calls: Vec<(Bytes, Vec<u8>, [u8; 8])> = keys
            .into_iter()
            .map(|(key, version)| {
                let member = member(&Id::of_key(&key), &key);
                (key, member, version.to_be_bytes())
            })
            .collect();
        let removed = self.pipelined(
            &self.backend.delete_script,
            &calls,
            |(key, _, _)| key.len(),
            |(key, member, version), cmd| {
                cmd.arg(key.as_ref()).arg(member).arg(&version[..]);
            },
            reply_value::<i64>,
        )?;
        Ok(removed.iter().filter(|r| **r == 1).count())
    }

    /// From the records' headers, so that values never cross the network.
    fn scan_versions(
        &self,
        start: &Id,
        end: &Id,
        after: Option<&ScanCursor>,
        limit: usize,
    ) -> Result<Vec<KeyVersion>> {
        self.scan_records(start, end, after, limit, false, usize::MAX)?
            .into_iter()
            .map(|(key, header)| {
                let e = decode_record(header).map_err(|f| self.store_error(f))?;
                Ok(KeyVersion {
                    key: Bytes::from(key),
                    version: e.version,
                    live: e.is_live(),
                })
            })
            .collect()
    }

    /// Counts from the records' headers, so that values never cross the network.
    fn count_range(&self, start: &Id, end: &Id) -> Result<u64> {
        Ok(self.range_counts(start, end, 0)?.live)
    }

    /// From the records' headers (which carry the expiry).
    fn range_counts(&self, start: &Id, end: &Id, now: u64) -> Result<chordkv_core::store::RangeCounts> {
        let mut counts = chordkv_core::store::RangeCounts::default();
        let mut after: Option<ScanCursor> = None;
        loop {
            let batch = self.scan_records(start, end, after.as_ref(), SCAN_BATCH, false, usize::MAX)?;
            let full = batch.len() == SCAN_BATCH;
            let mut last = None;
            for (key, header) in batch {
                let entry = decode_record(header).map_err(|f| self.store_error(f))?;
                counts.add(entry.is_live(), entry.expires_at, now);
                last = Some(key);
            }
            match last {
                Some(key) if full => after = Some((Id::of_key(&key), Bytes::from(key))),
                _ => return Ok(counts),
            }
        }
    }

    fn len(&self) -> Result<u64> {
        let live: Option<i64> = self.with_conn(|conn| {
            Ok(self
                .backend
                .len_script
                .key(&self.keys.live)
                .key(&self.keys.marker)
                .invoke(conn)?)
        })?;
        match live {
            None => Ok(0),
            Some(n) if n >= 0 => Ok(n as u64),
            Some(n) => Err(self.store_error(Failure::Corrupt(format!("{} holds {n}", self.keys.live)))),
        }
    }

    /// Redis' `MEMORY USAGE` of this namespace's data hash and ring index (its estimate,
    /// sampling 5 elements of each: O(1) per call, <https://redis.io/docs/latest/commands/memory-usage/>).
    fn bytes(&self) -> Result<Option<u64>> {
        let used: Vec<Option<u64>> = self.with_conn(|conn| {
            let mut pipe = redis::pipe();
            for key in [&self.keys.data, &self.keys.index] {
                pipe.cmd("MEMORY").arg("USAGE").arg(key);
            }
            Ok(pipe.query(conn)?)
        })?;
        Ok(Some(used.into_iter().flatten().sum()))
    }

    fn loss_epoch(&self) -> u64 {
        self.losses.load(Ordering::SeqCst)
    }

    fn kept_data(&self) -> bool {
        self.kept_data
    }

    fn saved_position(&self) -> Result<Option<Id>> {
        let hex: Option<String> =
            self.with_conn(|conn| Ok(redis::cmd("GET").arg(&self.keys.position).query(conn)?))?;
        Ok(hex.and_then(|h| Id::from_hex(&h)))
    }

    fn save_position(&self, position: &Id) -> Result<()> {
        self.with_conn(|conn| {
            Ok(redis::cmd("SET")
                .arg(&self.keys.position)
                .arg(position.to_string())
                .query::<()>(conn)?)
        })
    }

    fn is_blocking(&self) -> bool {
        true
    }

    fn max_value_bytes(&self) -> Option<usize> {
        (self.backend.max_value < chordkv_protocol::MAX_VALUE_BYTES).then_some(self.backend.max_value)
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = RedisUrl::parse("redis://127.0.0.1:6380/3").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.db), ("127.0.0.1", 6380, 3));
        assert_eq!(u.shown(), "redis://127.0.0.1:6380/3");
        assert_eq!(
            RedisUrl::parse("redis://localhost").unwrap().shown(),
            "redis://localhost:6379/0"
        );
        assert_eq!(RedisUrl::parse("redis://h:1/").unwrap().db, 0);
        assert_eq!(
            RedisUrl::parse("redis://[::1]:7000/2").unwrap().shown(),
            "redis://[::1]:7000/2"
        );
        let secret = RedisUrl::parse("redis://:hunter2@h:1/0").unwrap();
        assert_eq!(secret.shown(), "redis://h:1/0");
        assert_eq!(secret.full(), "redis://:hunter2@h:1/0");
        for bad in [
            "memory",
            "rediss://h:1/0",
            "redis://",
            "redis://:6379/0",
            "redis://h:0/0",
            "redis://h:99999/0",
            "redis://h:x/0",
            "redis://h:1/zero",
            "redis://h:1/0/1",
            "redis://[::1/0",
            "redis://h:1/0?protocol=resp3",
        ] {
            let err = RedisUrl::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid store URL '"), "{bad}: {err}");
            assert!(err.contains("redis://HOST:PORT/DB"), "{bad}: {err}");
        }
        let err = RedisUrl::parse("redis://u:hunter2@h:x/0")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn members_sort_like_ring_order() {
        let mut keys: Vec<Vec<u8>> = (0..300).map(|i| format!("k{i}").into_bytes()).collect();
        keys.push(Vec::new());
        keys.push(vec![0, 255]);
        let mut by_id: Vec<(Id, Vec<u8>)> = keys.iter().map(|k| (Id::of_key(k), k.clone())).collect();
        let mut by_member: Vec<Vec<u8>> = keys.iter().map(|k| member(&Id::of_key(k), k)).collect();
        by_id.sort();
        by_member.sort();
        let expect: Vec<Vec<u8>> = by_id.iter().map(|(id, k)| member(id, k)).collect();
        assert_eq!(by_member, expect);
        assert_eq!(
            id_hex(&Id::hash(b"x")).as_slice(),
            Id::hash(b"x").to_string().as_bytes()
        );
    }

    #[test]
    fn records_round_trip() {
        for entry in [
            Entry {
                version: u64::MAX,
                value: Some(Bytes::from_static(b"v")),
                expires_at: 0,
            },
            Entry {
                version: 1 << 60,
                value: Some(Bytes::new()),
                expires_at: 0,
            },
            Entry {
                version: 0,
                value: None,
                expires_at: 0,
            },
        ] {
            assert!(matches!(decode_record(encode_record(&entry)), Ok(e) if e == entry));
        }
        assert!(matches!(decode_record(vec![0; 8]), Err(Failure::Corrupt(_))));
        assert!(matches!(decode_record(vec![2; 9]), Err(Failure::Corrupt(_))));
    }

    /// A pipeline's gets share one call per run of reads, its puts one script call per
    /// run of writes, each partition once in it; a partition's ops keep their order (a write
    /// splits its reads), other partitions' ops join the call before.
    #[test]
    fn reads_and_writes_of_several_partitions_share_a_call() {
        let g = |p: usize| (p, Point::Get(Bytes::from_static(b"k")));
        let w = |p: usize| {
            (
                p,
                Point::Put(Bytes::from_static(b"k"), Id::ZERO, Entry::new(1, None)),
            )
        };
        let shape = |calls: Vec<Call>| -> Vec<String> {
            calls
                .iter()
                .map(|c| match c {
                    Call::Gets { groups } => format!("gets {groups:?}"),
                    Call::Puts { groups, .. } => format!("puts {groups:?}"),
                })
                .collect()
        };
        assert_eq!(
            shape(plan(3, &[g(0), g(1), g(0), g(2)])),
            vec!["gets [(0, [0, 2]), (1, [1]), (2, [3])]"]
        );
        assert_eq!(
            shape(plan(3, &[g(0), g(1), w(0), g(0), g(1), g(2)])),
            vec![
                "gets [(0, [0]), (1, [1, 4])]",
                "puts [(0, [2])]",
                "gets [(0, [3]), (2, [5])]"
            ]
        );
        assert_eq!(
            Call::Gets {
                groups: vec![(0, vec![0]), (1, vec![1])]
            }
            .replies(),
            4
        );
        // Writes likewise: one script call for the partitions' puts, split by a read of a
        // partition that wrote, and by PUTS_MAX_ENTRIES.
        assert_eq!(
            shape(plan(3, &[w(0), w(1), w(0), g(1), w(2), w(1)])),
            vec![
                "puts [(0, [0, 2]), (1, [1])]",
                "gets [(1, [3])]",
                "puts [(2, [4]), (1, [5])]"
            ]
        );
        let many: Vec<_> = (0..PUTS_MAX_ENTRIES + 1).map(|i| w(i % 2)).collect();
        let calls = plan(2, &many);
        assert_eq!(calls.len(), 2);
        assert!(
            matches!(&calls[1], Call::Puts { groups, entries: 1 } if groups == &[(0, vec![PUTS_MAX_ENTRIES])])
        );
    }

    #[test]
    fn segments_at_the_top_of_the_ring() {
        let hex_of = |id: Id| id_hex(&id).to_vec();
        let one = Id::from_u64(1);
        assert_eq!(lex_segments(&Id::MAX, &Id::MAX, None), vec![(Lex::Min, Lex::Max)]);
        assert_eq!(
            lex_segments(&Id::ZERO, &Id::ZERO, None),
            vec![
                (Lex::Incl(hex_of(one)), Lex::Max),
                (Lex::Min, Lex::Excl(hex_of(one)))
            ]
        );
        assert_eq!(
            lex_segments(&Id::ZERO, &Id::MAX, None),
            vec![(Lex::Incl(hex_of(one)), Lex::Max)]
        );
        assert_eq!(
            lex_segments(&Id::MAX, &Id::ZERO, None),
            vec![(Lex::Min, Lex::Excl(hex_of(one)))]
        );
        // A cursor outside the range gives nothing; one inside starts just after it.
        let k = Bytes::from_static(b"k");
        let outside = (Id::from_u64(5), k.clone());
        assert!(lex_segments(&Id::from_u64(10), &Id::from_u64(20), Some(&outside)).is_empty());
        let inside = (Id::from_u64(15), k.clone());
        assert_eq!(
            lex_segments(&Id::from_u64(10), &Id::from_u64(20), Some(&inside)),
            vec![(
                Lex::Excl(member(&inside.0, &k)),
                Lex::Excl(hex_of(Id::from_u64(21)))
            )]
        );
        // In a wrapping range, a cursor past zero drops the first segment.
        let past_zero = (Id::from_u64(3), k.clone());
        assert_eq!(
            lex_segments(&Id::from_u64(10), &Id::from_u64(5), Some(&past_zero)),
            vec![(
                Lex::Excl(member(&past_zero.0, &k)),
                Lex::Excl(hex_of(Id::from_u64(6)))
            )]
        );
    }
}
