//! Redis' *string* group: GET, SET, MGET, MSET. Each key is one request to the core, a
//! `Message::Get` or a `Message::Put`, routed to the key's owner like a binary client's:
//!
//! ```text
//!  GET k            ─► Get { k }                       ─► $<len> value, or $-1 (missing)
//!  SET k v          ─► Put { k, v }                    ─► +OK
//!  MGET k1 k2 …     ─► Get { k1 }, Get { k2 } …        ─► *n, one bulk or null per key
//!  MSET k1 v1 …     ─► Put { k1, v1 } …                ─► +OK once every key is written
//! ```
//!
//! Redis' pages: redis.io/docs/latest/commands/{get,set,mget,mset}. SET with options (NX, XX,
//! GET, an expiry) and the other string commands run at the key's owner ([`super::at_owner`],
//! `chordkv_core::command`). MSET is not atomic across owners: each key is its own write, and
//! the first failure is the command's answer (MSET over one hash tag inside MULTI is atomic).

use bytes::Bytes;
use chordkv_protocol::resp::{self, Proto};
use chordkv_protocol::Message;

use super::{
    error_text, refuse_large_key, refuse_large_keys, write_failure, Cx, Gather, OneReply, Translation,
};

/// `GET key`.
pub(crate) fn get(rest: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    let [key] = rest else {
        return Translation::wrong_arity("get");
    };
    if let Some(refused) = refuse_large_key(key) {
        return refused;
    }
    // The arguments are the command's own: moved, not cloned (a `Bytes` clone and its drop
    // are an atomic increment and decrement each).
    cx.ask(Message::Get {
        key: std::mem::take(key),
    });
    Translation::wait(OneReply::new(write_value))
}

/// `SET key value [NX | XX] [GET] [EX s | PX ms | EXAT ts | PXAT ms-ts | KEEPTTL]`: a plain
/// SET is a PUT (which drops any expiry, as Redis' SET does); with options it reads before it
/// writes, or sets an expiry, so it runs at the key's owner ([`super::at_owner`]).
pub(crate) fn set(rest: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    let [key, value, options @ ..] = rest else {
        return Translation::wrong_arity("set");
    };
    if !options.is_empty() {
        return super::at_owner("set", rest, cx);
    }
    if let Some(refused) = refuse_large_key(key) {
        return refused;
    }
    cx.ask(Message::Put {
        key: std::mem::take(key),
        value: std::mem::take(value),
    });
    Translation::wait(OneReply::new(write_stored))
}

/// `MGET key [key ...]`.
pub(crate) fn mget(keys: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    let keys: &[Bytes] = keys;
    if let Some(refused) = refuse_large_keys(keys) {
        return refused;
    }
    for key in keys {
        cx.ask(Message::Get { key: key.clone() });
    }
    Translation::wait(Values(vec![None; keys.len()]))
}

/// `MSET key value [key value ...]`.
pub(crate) fn mset(pairs: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    if pairs.len() % 2 != 0 {
        return Translation::wrong_arity("mset");
    }
    if let Some(refused) = refuse_large_keys(pairs.iter().step_by(2)) {
        return refused;
    }
    for pair in pairs.chunks_exact(2) {
        cx.ask(Message::Put {
            key: pair[0].clone(),
            value: pair[1].clone(),
        });
    }
    Translation::wait(AllStored { error: None })
}

/// GET's answer: the value, or null for a missing key.
fn write_value(reply: &Message, proto: Proto, out: &mut Vec<u8>) -> bool {
    match reply {
        Message::GetReply { value: Some(v), .. } => resp::write_bulk(out, v),
        Message::GetReply { value: None, .. } => resp::write_null_in(out, proto),
        _ => return false,
    }
    true
}

/// SET's answer: `+OK` once written.
fn write_stored(reply: &Message, _: Proto, out: &mut Vec<u8>) -> bool {
    if !matches!(reply, Message::PutReply { .. }) {
        return false;
    }
    resp::write_ok(out);
    true
}

/// MGET's reply: one core reply per key, in argument order.
pub(crate) struct Values(Vec<Option<Message>>);

impl Gather for Values {
    fn accept(&mut self, offset: usize, reply: Message) {
        if let Some(r) = self.0.get_mut(offset) {
            *r = Some(reply);
        }
    }

    fn encode(self, out: &mut Vec<u8>, proto: Proto) {
        // Redis answers MGET with nulls for keys it cannot read; a failed read here fails the
        // whole command instead, so a missing key and an unreachable one are never confused.
        if let Some(failed) = self
            .0
            .iter()
            .find(|r| !matches!(r, Some(Message::GetReply { .. })))
        {
            return write_failure(out, failed.as_ref());
        }
        resp::write_array_len(out, self.0.len());
        for reply in self.0 {
            match reply {
                Some(Message::GetReply { value: Some(v), .. }) => resp::write_bulk(out, &v),
                _ => resp::write_null_in(out, proto),
            }
        }
    }
}

/// MSET's reply: `+OK` when every key was written, else the first failure received.
pub(crate) struct AllStored {
    error: Option<String>,
}

impl Gather for AllStored {
    fn accept(&mut self, _: usize, reply: Message) {
        if !matches!(reply, Message::PutReply { .. }) && self.error.is_none() {
            self.error = Some(error_text(&reply));
        }
    }

    fn encode(self, out: &mut Vec<u8>, _: Proto) {
        match self.error {
            Some(e) => resp::write_error(out, &e),
            None => resp::write_ok(out),
        }
    }
}
