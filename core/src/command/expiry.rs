//! Redis' expiry commands (expire.c, t_string.c): a key's expiry is the absolute time, in
//! milliseconds since the Unix epoch on the owner's clock, stored with its value and
//! versioned with it. Relative times are taken from the keyspace's `now`.
//!
//! ```text
//!  SETEX k 10 v      k = v, expires at now + 10 s      EXPIRE k 10 [NX|XX|GT|LT]  ─► 1 | 0
//!  TTL k             ─► seconds left, -1 none, -2 no key      PERSIST k  ─► 1 | 0
//! ```

use bytes::Bytes;
use chordkv_protocol::CommandReply;

use super::numbers::parse_int;
use super::{err, not_an_integer, syntax_error, value_or_nil, Keyspace};

/// Why an expiry argument was refused.
pub(super) enum Refused {
    NotAnInteger,
    /// Not positive, or past the largest time (Redis: `invalid expire time in '<cmd>'`).
    Invalid,
}

impl Refused {
    pub(super) fn reply(&self, command: &str) -> CommandReply {
        match self {
            Refused::NotAnInteger => not_an_integer(),
            Refused::Invalid => err(&format!("ERR invalid expire time in '{command}' command")),
        }
    }
}

/// The absolute expiry of `EX s`, `PX ms`, `EXAT ts` or `PXAT ms-ts` (`unit`, upper case) at
/// `now`; the time must be positive, as SET, SETEX and GETEX require.
pub(super) fn parse(unit: &[u8], arg: &[u8], now: u64) -> Result<u64, Refused> {
    let n = parse_int(arg).ok_or(Refused::NotAnInteger)?;
    if n <= 0 {
        return Err(Refused::Invalid);
    }
    at(unit, n, now)
}

/// `n` of `unit` as an absolute time in ms (may be in the past for negative relative times).
fn at(unit: &[u8], n: i64, now: u64) -> Result<u64, Refused> {
    let ms = match unit {
        b"EX" | b"EXAT" => n.checked_mul(1000).ok_or(Refused::Invalid)?,
        _ => n,
    };
    let when = match unit {
        b"EX" | b"PX" => ms.checked_add(now as i64).ok_or(Refused::Invalid)?,
        _ => ms,
    };
    Ok(when.max(0) as u64)
}

/// `SETEX key seconds value`.
pub(super) fn setex(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    set_with(w, ks, b"EX", "setex")
}

/// `PSETEX key milliseconds value`.
pub(super) fn psetex(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    set_with(w, ks, b"PX", "psetex")
}

fn set_with(w: &[Bytes], ks: &mut Keyspace, unit: &[u8], name: &str) -> CommandReply {
    match parse(unit, &w[2], ks.now) {
        Ok(when) => {
            ks.set_expiring(&w[1], w[3].clone(), when);
            super::ok()
        }
        Err(e) => e.reply(name),
    }
}

/// `GETEX key [EX s | PX ms | EXAT ts | PXAT ms-ts | PERSIST]`: the value, its expiry changed.
pub(super) fn getex(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    let change = match w.len() {
        2 => None,
        3 if w[2].eq_ignore_ascii_case(b"PERSIST") => Some(0),
        4 => {
            let unit = w[2].to_ascii_uppercase();
            if !matches!(&unit[..], b"EX" | b"PX" | b"EXAT" | b"PXAT") {
                return syntax_error();
            }
            match parse(&unit, &w[3], ks.now) {
                Ok(when) => Some(when),
                Err(e) => return e.reply("getex"),
            }
        }
        _ => return syntax_error(),
    };
    let value = ks.get(&w[1]).cloned();
    if value.is_some() {
        match change {
            Some(when) if when != 0 && when <= ks.now => {
                ks.delete(&w[1]);
            }
            // PERSIST of a key without an expiry writes nothing.
            Some(0) if ks.expires_at(&w[1]) == 0 => {}
            Some(when) => {
                ks.set_expiry(&w[1], when);
            }
            None => {}
        }
    }
    value_or_nil(value.as_ref())
}

pub(super) fn expire(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    expire_generic(w, ks, b"EX", "expire")
}

pub(super) fn pexpire(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    expire_generic(w, ks, b"PX", "pexpire")
}

pub(super) fn expireat(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    expire_generic(w, ks, b"EXAT", "expireat")
}

pub(super) fn pexpireat(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    expire_generic(w, ks, b"PXAT", "pexpireat")
}

/// `EXPIRE key n [NX | XX | GT | LT]` and its three siblings (expire.c
/// expireGenericCommand): 1 when the expiry was set (a time already past deletes the key), 0
/// for a missing key or an unmet condition.
fn expire_generic(w: &[Bytes], ks: &mut Keyspace, unit: &[u8], name: &str) -> CommandReply {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for option in &w[3..] {
        match &option.to_ascii_uppercase()[..] {
            b"NX" => nx = true,
            b"XX" => xx = true,
            b"GT" => gt = true,
            b"LT" => lt = true,
            _ => {
                let shown = String::from_utf8_lossy(&option[..option.len().min(128)]).into_owned();
                return err(&format!("ERR Unsupported option {shown}"));
            }
        }
    }
    if nx && (xx || gt || lt) {
        return err("ERR NX and XX, GT or LT options at the same time are not compatible");
    }
    if gt && lt {
        return err("ERR GT and LT options at the same time are not compatible");
    }
    let Some(n) = parse_int(&w[2]) else {
        return not_an_integer();
    };
    let when = match at(unit, n, ks.now) {
        Ok(when) => when,
        Err(e) => return e.reply(name),
    };
    let key = &w[1];
    if ks.get(key).is_none() {
        return CommandReply::Int(0);
    }
    let current = ks.expires_at(key);
    let refused = (nx && current != 0)
        || (xx && current == 0)
        || (gt && (current == 0 || when <= current))
        || (lt && current != 0 && when >= current);
    if refused {
        return CommandReply::Int(0);
    }
    if when <= ks.now {
        ks.delete(key);
    } else {
        ks.set_expiry(key, when);
    }
    CommandReply::Int(1)
}

/// TTL's family: -2 for a missing key, -1 for one without an expiry, else the time left
/// (`absolute`: the expiry itself), in ms or rounded to seconds as Redis rounds it.
fn ttl_generic(w: &[Bytes], ks: &mut Keyspace, ms: bool, absolute: bool) -> CommandReply {
    let key = &w[1];
    if ks.get(key).is_none() {
        return CommandReply::Int(-2);
    }
    let expires_at = ks.expires_at(key);
    if expires_at == 0 {
        return CommandReply::Int(-1);
    }
    let t = if absolute {
        expires_at as i64
    } else {
        (expires_at as i64 - ks.now as i64).max(0)
    };
    CommandReply::Int(if ms { t } else { (t + 500) / 1000 })
}

pub(super) fn ttl(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    ttl_generic(w, ks, false, false)
}

pub(super) fn pttl(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    ttl_generic(w, ks, true, false)
}

pub(super) fn expiretime(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    ttl_generic(w, ks, false, true)
}

pub(super) fn pexpiretime(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    ttl_generic(w, ks, true, true)
}

/// `PERSIST key`: 1 when an expiry was removed.
pub(super) fn persist(w: &[Bytes], ks: &mut Keyspace) -> CommandReply {
    if ks.get(&w[1]).is_some() && ks.expires_at(&w[1]) != 0 {
        ks.set_expiry(&w[1], 0);
        return CommandReply::Int(1);
    }
    CommandReply::Int(0)
}
