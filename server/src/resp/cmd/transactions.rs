//! Redis' *transactions* group as far as chordkv goes today: MULTI, EXEC and DISCARD with
//! Redis' queueing rules, and EXEC refusing with nothing applied.
//!
//! ```text
//!  MULTI             ─► +OK; the commands after it are checked (name, arity) and queued:
//!                       +QUEUED, or the error (which makes EXEC abort, as in Redis)
//!  EXEC              ─► -EXECABORT after a queueing error, else -ERR: chordkv cannot yet run
//!                       the queued commands atomically, so it runs none of them
//!  DISCARD           ─► +OK, the queue dropped
//! ```
//!
//! Before these rows existed, MULTI was an unknown command and the "queued" commands ran at
//! once, so a client (redis-py's default `pipeline()`, node-redis' and ioredis' `multi()`) saw
//! an error after its writes had been applied, and a retry applied them twice. Atomic EXEC at
//! the owner of one hash tag is issue 15's item 2; until then nothing queued is ever applied.
//!
//! Redis' pages: redis.io/docs/latest/commands/{multi,exec,discard},
//! redis.io/docs/latest/develop/interact/transactions.

use bytes::Bytes;

use super::{Cx, Translation};

/// A transaction being queued (after MULTI, until EXEC or DISCARD).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Multi {
    /// Commands queued.
    pub queued: usize,
    /// A command failed to queue (unknown, wrong arity): EXEC aborts.
    pub failed: bool,
}

/// What EXEC answers when every command queued: none of them runs.
pub(crate) const EXEC_UNSUPPORTED: &str = "ERR EXEC is not supported by chordkv yet (transactions need \
                                           every key on one owner, which hash tags will give): the \
                                           transaction was discarded and none of its commands ran";

/// `MULTI`: starts queueing.
pub(crate) fn multi(_: &[Bytes], cx: &mut Cx<'_>) -> Translation {
    if cx.client.multi.is_some() {
        return Translation::error("ERR MULTI calls can not be nested");
    }
    cx.client.multi = Some(Multi::default());
    Translation::simple("OK")
}

/// `EXEC`: ends the transaction without running it (see the module docs).
pub(crate) fn exec(_: &[Bytes], cx: &mut Cx<'_>) -> Translation {
    match cx.client.multi.take() {
        None => Translation::error("ERR EXEC without MULTI"),
        Some(m) if m.failed => {
            Translation::error("EXECABORT Transaction discarded because of previous errors.")
        }
        Some(_) => Translation::error(EXEC_UNSUPPORTED),
    }
}

/// `DISCARD`: drops the queue.
pub(crate) fn discard(_: &[Bytes], cx: &mut Cx<'_>) -> Translation {
    match cx.client.multi.take() {
        None => Translation::error("ERR DISCARD without MULTI"),
        Some(_) => Translation::simple("OK"),
    }
}
