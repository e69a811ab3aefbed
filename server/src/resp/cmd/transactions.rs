//! Redis' *transactions* group: MULTI, EXEC, DISCARD, WATCH and UNWATCH, run atomically at
//! the owner of the keys' one hash tag.
//!
//! ```text
//!  WATCH k …         ─► Get { k } …, each key's version kept ─► +OK
//!  MULTI             ─► +OK; the commands after it are checked (name, arity, served at an
//!                       owner) and queued: +QUEUED, or the error (EXEC then aborts, as Redis)
//!  EXEC              ─► every key (queued and watched) placed by one id: Execute { key,
//!                       commands, watched } to that owner ─► *n, one reply per command, or a
//!                       null array when a watched key changed; keys of two ids: -CROSSSLOT,
//!                       nothing applied
//!  DISCARD, UNWATCH  ─► +OK, the queue or the watched keys dropped
//! ```
//!
//! The owner runs the commands one after the other with its key id held, so no other write of
//! those keys comes between them (see `chordkv_core::chord` execute.rs), and stores their
//! writes as one batch with one version. An error inside one command is that command's reply,
//! as in Redis: the others still run. Nothing queued is ever applied when EXEC answers an
//! error.
//!
//! WATCH reads the versions before anything after it is translated: the session decodes no
//! further command until the WATCH's replies are in (a pipelined `WATCH k; GET k; MULTI; ...;
//! EXEC` must send the versions WATCH read, and they arrive later than the EXEC is read).
//!
//! Redis' pages: redis.io/docs/latest/commands/{multi,exec,discard,watch,unwatch},
//! redis.io/docs/latest/develop/interact/transactions; cluster-spec "Hash tags" for CROSSSLOT.

use bytes::Bytes;
use chordkv_protocol::resp::{self, Proto};
use chordkv_protocol::{Id, Message};

use super::{error_text, refuse_large_keys, write_command_reply, Cx, Gather, OneReply, Translation};
use chordkv_core::chord::CROSSSLOT;
use chordkv_core::command;

/// A transaction being queued (after MULTI, until EXEC or DISCARD).
#[derive(Clone, Debug, Default)]
pub(crate) struct Multi {
    /// The commands queued, each its words (name first).
    pub queued: Vec<Vec<Bytes>>,
    /// A command failed to queue (unknown, wrong arity, not served at an owner): EXEC aborts.
    pub failed: bool,
}

/// A watched key and the version WATCH read (0: absent; `u64::MAX`: the read failed, so EXEC
/// aborts).
pub(crate) type Watched = Vec<(Bytes, u64)>;

/// `MULTI`: starts queueing.
pub(crate) fn multi(_: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    if cx.client.multi.is_some() {
        return Translation::error("ERR MULTI calls can not be nested");
    }
    cx.client.multi = Some(Multi::default());
    Translation::simple("OK")
}

/// Queues one command inside MULTI: `+QUEUED`, or the error that makes EXEC abort.
pub(crate) fn queue(name: &'static str, rest: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    let Some(m) = cx.client.multi.as_mut() else {
        return Translation::error("ERR not in a transaction");
    };
    let mut words = Vec::with_capacity(rest.len() + 1);
    words.push(Bytes::from_static(name.as_bytes()));
    words.extend_from_slice(rest);
    // A transaction runs at its keys' owner, which serves the string and keyspace commands.
    let keys = match command::keys(&words) {
        Ok(keys) => keys,
        Err(_) => {
            m.failed = true;
            return Translation::error(&format!(
                "ERR '{name}' cannot be queued: a chordkv transaction runs at the owner of its keys, \
                 which runs the string, expiry and key commands only (not server, connection or \
                 ring-wide commands such as PING, INFO, SCAN or KEYS)"
            ));
        }
    };
    // One command over keys of two hash tags is refused as it is queued, as Redis Cluster does.
    if keys.windows(2).any(|k| Id::of_key(&k[0]) != Id::of_key(&k[1])) {
        m.failed = true;
        return Translation::error(CROSSSLOT);
    }
    if let Some(refused) = refuse_large_keys(&keys) {
        m.failed = true;
        return refused;
    }
    m.queued.push(words);
    Translation::simple("QUEUED")
}

/// `EXEC`: runs the queue at its keys' owner (see the module docs).
pub(crate) fn exec(_: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    let Some(m) = cx.client.multi.take() else {
        return Translation::error("ERR EXEC without MULTI");
    };
    let watched = std::mem::take(&mut cx.client.watched);
    if m.failed {
        return Translation::error("EXECABORT Transaction discarded because of previous errors.");
    }
    let keys: Vec<Bytes> = m
        .queued
        .iter()
        .filter_map(|w| command::keys(w).ok())
        .flatten()
        .chain(watched.iter().map(|(k, _)| k.clone()))
        .collect();
    let Some(first) = keys.first().cloned() else {
        // Nothing queued and nothing watched: Redis answers an empty array.
        return Translation::Reply(b"*0\r\n".to_vec());
    };
    let id = Id::of_key(&first);
    if keys.iter().any(|k| Id::of_key(k) != id) {
        return Translation::error(&format!(
            "{CROSSSLOT} (a chordkv transaction runs at one owner: give its keys one hash tag, \
             e.g. {{user1}}.a and {{user1}}.b); nothing was applied"
        ));
    }
    cx.ask(Message::Execute {
        key: first,
        commands: m.queued,
        watched,
    });
    Translation::wait(OneReply::new(write_exec))
}

/// EXEC's answer: one reply per command, or a null array when a watched key had changed.
fn write_exec(reply: &Message, proto: Proto, out: &mut Vec<u8>) -> bool {
    match reply {
        Message::ExecuteReply { replies: Some(r), .. } => {
            resp::write_array_len(out, r.len());
            for one in r {
                write_command_reply(out, one, proto);
            }
        }
        Message::ExecuteReply { replies: None, .. } => resp::write_null_array_in(out, proto),
        _ => return false,
    }
    true
}

/// `DISCARD`: drops the queue (and the watched keys, as Redis does).
pub(crate) fn discard(_: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    match cx.client.multi.take() {
        None => Translation::error("ERR DISCARD without MULTI"),
        Some(_) => {
            cx.client.watched.clear();
            Translation::simple("OK")
        }
    }
}

/// `WATCH key [key ...]`: reads each key's version; `+OK` once all are read.
pub(crate) fn watch(keys: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    let keys: &[Bytes] = keys;
    if cx.client.multi.is_some() {
        return Translation::error("ERR WATCH inside MULTI is not allowed");
    }
    if let Some(refused) = refuse_large_keys(keys) {
        return refused;
    }
    // The keys watched must all have the owner the transaction will run at.
    let first = keys.first().or(cx.client.watched.first().map(|(k, _)| k));
    if let Some(first) = first {
        let id = Id::of_key(first);
        let watched = cx.client.watched.iter().map(|(k, _)| k);
        if keys.iter().chain(watched).any(|k| Id::of_key(k) != id) {
            return Translation::error(CROSSSLOT);
        }
    }
    for key in keys {
        cx.ask(Message::Get { key: key.clone() });
    }
    cx.client.await_replies = true;
    Translation::wait(Watch {
        keys: keys.to_vec(),
        versions: vec![u64::MAX; keys.len()],
        error: None,
    })
}

/// `UNWATCH`: forgets the watched keys.
pub(crate) fn unwatch(_: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    cx.client.watched.clear();
    Translation::simple("OK")
}

/// WATCH's reply: the versions read, which the session hands to the connection's
/// [`super::Client`] when the reply is written ([`Watch::take_watched`]).
pub(crate) struct Watch {
    keys: Vec<Bytes>,
    versions: Vec<u64>,
    error: Option<String>,
}

impl Watch {
    /// The keys with the versions read (a failed read keeps `u64::MAX`: EXEC will abort).
    pub fn take_watched(&mut self) -> Watched {
        let keys = std::mem::take(&mut self.keys);
        keys.into_iter().zip(self.versions.iter().copied()).collect()
    }
}

impl Gather for Watch {
    fn accept(&mut self, offset: usize, reply: Message) {
        match reply {
            Message::GetReply { version, .. } => {
                if let Some(v) = self.versions.get_mut(offset) {
                    *v = version;
                }
            }
            other => {
                if self.error.is_none() {
                    self.error = Some(error_text(&other));
                }
            }
        }
    }

    fn encode(self, out: &mut Vec<u8>, _: Proto) {
        match self.error {
            Some(e) => resp::write_error(out, &format!("{e} (the transaction will abort)")),
            None => resp::write_ok(out),
        }
    }
}
