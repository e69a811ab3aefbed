//! Redis' *generic* (keyspace) group: DEL and EXISTS. Both take one or more keys and answer
//! how many counted; each key is one request to the core, as in [`super::strings`]:
//!
//! ```text
//!  DEL k1 k2 …      ─► Delete { k1 }, Delete { k2 } …  ─► :n, the keys that existed
//!  EXISTS k1 k2 …   ─► Get { k1 }, Get { k2 } …        ─► :n, the keys found (a key named
//!                                                           twice counts twice, as in Redis)
//! ```
//!
//! Redis' pages: redis.io/docs/latest/commands/{del,exists,scan,keys,randomkey}. A multi-key
//! DEL is not atomic: each key is its own write. A failed key fails the command with the
//! first error received.
//!
//! ```text
//!  SCAN c [MATCH p] [COUNT n]  ─► ScanKeys { c, n, p }       ─► *2 cursor, keys (a walk of
//!                                                               the ring's ids)
//!  KEYS p                      ─► ScanKeys { 0, count 0, p } ─► every matching key
//!  RANDOMKEY                   ─► ScanKeys { random }        ─► a key, or null
//! ```

use bytes::Bytes;
use chordkv_protocol::resp::{self, Proto};
use chordkv_protocol::Message;

use super::{error_text, refuse_large_keys, Cx, Gather, OneReply, Translation};

/// `DEL key [key ...]` (and `UNLINK`, which is the same here: a delete is a tombstone, with
/// nothing to free in the background).
pub(crate) fn del(keys: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    count(keys, cx, |key| Message::Delete { key })
}

/// `EXISTS key [key ...]`: a read of each key, counting the ones with a value.
pub(crate) fn exists(keys: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    count(keys, cx, |key| Message::Get { key })
}

fn count(keys: &mut [Bytes], cx: &mut Cx<'_>, request: fn(Bytes) -> Message) -> Translation {
    if let Some(refused) = refuse_large_keys(&*keys) {
        return refused;
    }
    for key in keys {
        cx.ask(request(key.clone()));
    }
    Translation::wait(Counted { n: 0, error: None })
}

/// DEL's and EXISTS' reply: how many keys counted, or the first error.
pub(crate) struct Counted {
    n: i64,
    error: Option<String>,
}

impl Gather for Counted {
    fn accept(&mut self, _: usize, reply: Message) {
        match reply {
            Message::DeleteReply { existed, .. } => self.n += i64::from(existed),
            Message::GetReply { value, .. } => self.n += i64::from(value.is_some()),
            other => {
                if self.error.is_none() {
                    self.error = Some(error_text(&other));
                }
            }
        }
    }

    fn encode(self, out: &mut Vec<u8>, _: Proto) {
        match self.error {
            Some(e) => resp::write_error(out, &e),
            None => resp::write_integer(out, self.n),
        }
    }
}

/// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]` over the whole ring: a page of
/// keys and the cursor to go on from (see `chordkv_core::chord` scan.rs: every key present for
/// the whole scan comes at least once). Every key is a string, so `TYPE string` changes
/// nothing and any other type finds none.
pub(crate) fn scan(rest: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    let Some(cursor) = std::str::from_utf8(&rest[0])
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    else {
        return Translation::error("ERR invalid cursor");
    };
    let (mut pattern, mut count, mut other_type) = (None, 10u32, false);
    let mut i = 1;
    while i < rest.len() {
        let option = rest[i].to_ascii_uppercase();
        let Some(value) = rest.get(i + 1) else {
            return Translation::error("ERR syntax error");
        };
        match &option[..] {
            b"MATCH" => pattern = Some(value.clone()).filter(|p| &p[..] != b"*"),
            b"COUNT" => match super::parse_int(value) {
                Some(n) if n >= 1 => count = n.min(u32::MAX as i64) as u32,
                Some(_) => return Translation::error("ERR syntax error"),
                None => return Translation::error("ERR value is not an integer or out of range"),
            },
            b"TYPE" => other_type = !value.eq_ignore_ascii_case(b"string"),
            _ => return Translation::error("ERR syntax error"),
        }
        i += 2;
    }
    if other_type {
        return Translation::Reply(b"*2\r\n$1\r\n0\r\n*0\r\n".to_vec());
    }
    cx.ask(Message::ScanKeys {
        cursor,
        count,
        pattern,
        random: false,
    });
    Translation::wait(OneReply::new(write_page))
}

/// `KEYS pattern`: every key of the ring that matches (refused past a million: use SCAN).
pub(crate) fn keys(rest: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    let pattern = Some(rest[0].clone()).filter(|p| &p[..] != b"*");
    cx.ask(Message::ScanKeys {
        cursor: 0,
        count: 0,
        pattern,
        random: false,
    });
    Translation::wait(OneReply::new(write_keys))
}

/// `RANDOMKEY`: a key from a random place of the ring, or null when there is none.
pub(crate) fn randomkey(_: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    cx.ask(Message::ScanKeys {
        cursor: 0,
        count: 1,
        pattern: None,
        random: true,
    });
    Translation::wait(OneReply::new(write_random))
}

fn write_page(reply: &Message, _: Proto, out: &mut Vec<u8>) -> bool {
    let Message::ScanKeysReply { cursor, keys } = reply else {
        return false;
    };
    resp::write_array_len(out, 2);
    resp::write_bulk(out, cursor.to_string().as_bytes());
    resp::write_array_len(out, keys.len());
    for k in keys {
        resp::write_bulk(out, k);
    }
    true
}

fn write_keys(reply: &Message, _: Proto, out: &mut Vec<u8>) -> bool {
    let Message::ScanKeysReply { keys, .. } = reply else {
        return false;
    };
    resp::write_array_len(out, keys.len());
    for k in keys {
        resp::write_bulk(out, k);
    }
    true
}

fn write_random(reply: &Message, proto: Proto, out: &mut Vec<u8>) -> bool {
    let Message::ScanKeysReply { keys, .. } = reply else {
        return false;
    };
    match keys.first() {
        Some(k) => resp::write_bulk(out, k),
        None => resp::write_null_in(out, proto),
    }
    true
}
