//! Redis' *generic* (keyspace) group: DEL and EXISTS. Both take one or more keys and answer
//! how many counted; each key is one request to the core, as in [`super::strings`]:
//!
//! ```text
//!  DEL k1 k2 …      ─► Delete { k1 }, Delete { k2 } …  ─► :n, the keys that existed
//!  EXISTS k1 k2 …   ─► Get { k1 }, Get { k2 } …        ─► :n, the keys found (a key named
//!                                                           twice counts twice, as in Redis)
//! ```
//!
//! Redis' pages: redis.io/docs/latest/commands/{del,exists}. A multi-key DEL is not atomic:
//! each key is its own write. A failed key fails the command with the first error received.

use bytes::Bytes;
use chordkv_protocol::resp::{self, Proto};
use chordkv_protocol::Message;

use super::{error_text, refuse_large_keys, Cx, Gather, Translation};

/// `DEL key [key ...]`.
pub(crate) fn del(keys: &[Bytes], cx: &mut Cx<'_>) -> Translation {
    count(keys, cx, |key| Message::Delete { key })
}

/// `EXISTS key [key ...]`: a read of each key, counting the ones with a value.
pub(crate) fn exists(keys: &[Bytes], cx: &mut Cx<'_>) -> Translation {
    count(keys, cx, |key| Message::Get { key })
}

fn count(keys: &[Bytes], cx: &mut Cx<'_>, request: fn(Bytes) -> Message) -> Translation {
    if let Some(refused) = refuse_large_keys(keys) {
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
