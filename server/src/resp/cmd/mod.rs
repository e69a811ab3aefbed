//! The command table, and what a command translates into.
//!
//! [`translate`] finds the command's row in [`COMMANDS`], checks its arity as Redis does, and
//! calls the row's function with the arguments after the name. The function reads them and
//! returns a [`Translation`]: an answer given on the spot, or the core requests it has asked
//! (through [`Cx::ask`]) and a [`Pending`] reply that gathers the core's answers to them.
//! Nothing here reaches the core, a socket or the clock:
//!
//! ```text
//!  ["GET", "k"]        ─► row "get"  ─► strings::get  ─► asks Get { key: "k" }
//!                                                         Wait(Pending::One)
//!  ["MSET", a 1, b 2]  ─► row "mset" ─► strings::mset ─► asks Put { a, 1 }, Put { b, 2 }
//!                                                         Wait(Pending::AllStored)
//!  ["INFO"]            ─► row "info" ─► server::info  ─► asks GetInfo, GetStats
//!                                                         Wait(Pending::Info)
//!  ["INCR", "n"]      ─► row "incr" (owner) ─► at_owner ─► asks Execute { n, [["incr", n]] }
//!                                                         Wait(Pending::One)
//!  ["PING"]            ─► row "ping" ─► connection::ping ─► Reply(b"+PONG\r\n")
//!  ["NOPE", "x"]       ─► no row     ─► Reply(b"-ERR unknown command 'NOPE', ...")
//! ```
//!
//! The families follow the groups of Redis' command reference (redis.io/docs/latest/commands):
//! [`strings`] (GET, SET, MGET, MSET), [`keys`] (the *generic* group: DEL, EXISTS), [`server`]
//! (INFO, DBSIZE, COMMAND, CONFIG), [`connection`] (PING, ECHO, SELECT, HELLO, AUTH, QUIT,
//! CLIENT) and [`transactions`] (MULTI, EXEC, DISCARD, WATCH, UNWATCH). The commands run at
//! their key's owner (INCR, SETNX, EXPIRE, TTL, ...: the `owner(...)` rows) have no function
//! here: their words go to the owner in an `Execute` ([`at_owner`]), where
//! `chordkv_core::command` runs them.
//!
//! **Adding a command**: its function in its group's file, and its row in [`COMMANDS`] (which
//! `COMMAND` lists too); a string or keyspace command, its function in
//! `chordkv_core::command` and an `owner(...)` row here. One that sends the core a single request waits with a [`OneReply`]
//! and a function writing its answer; one that gathers several replies in a new way defines a
//! type implementing [`Gather`] in its file and names it in the `pending!` list below.

mod connection;
mod docs;
mod keys;
mod server;
mod strings;
mod transactions;

use std::fmt::Write as _;

use bytes::Bytes;
use chordkv_protocol::resp::{self, Proto};
use chordkv_protocol::{CommandReply, Frame, Message, MAX_KEY_BYTES};

use super::info::Facts;
pub(crate) use connection::Client;

/// Longest command name or argument text echoed back in an unknown-command error (Redis' own
/// cut-off).
const ERROR_ECHO_BYTES: usize = 128;

/// One row of the command table.
pub(crate) struct Spec {
    /// Lower case, as `COMMAND` lists it; matched without regard to case.
    pub name: &'static str,
    /// Redis' arity: the argument count, the name included; negative: at least that many.
    pub arity: i64,
    /// Redis' command flags, for `COMMAND`.
    pub flags: &'static [&'static str],
    /// Where the keys are, for `COMMAND`: first, last (-1: the last argument) and step, or
    /// zeros for a command without keys.
    pub keys: (i64, i64, i64),
    /// Translates the arguments after the name, whose count `arity` has been checked against.
    pub translate: fn(&mut [Bytes], &mut Cx<'_>) -> Translation,
    /// The command is run at its keys' owner as it is (`chordkv_core::command`): the
    /// translation sends its words in an `Execute` (see [`at_owner`]).
    pub at_owner: bool,
}

/// Every command the front end knows, in the order `COMMAND` lists them.
#[rustfmt::skip]
pub(crate) const COMMANDS: &[Spec] = &[
    // name, arity, flags, keys (first, last, step), and the function that translates it
    row("get",     2,  &["readonly", "fast"],                     (1, 1, 1),  strings::get),
    row("set",     -3, &["write", "denyoom"],                     (1, 1, 1),  strings::set),
    row("del",     -2, &["write"],                                (1, -1, 1), keys::del),
    row("exists",  -2, &["readonly", "fast"],                     (1, -1, 1), keys::exists),
    row("unlink",  -2, &["write", "fast"],                        (1, -1, 1), keys::del),
    row("mget",    -2, &["readonly", "fast"],                     (1, -1, 1), strings::mget),
    row("mset",    -3, &["write", "denyoom"],                     (1, -1, 2), strings::mset),
    row("scan",    -2, &["readonly"],                             (0, 0, 0),  keys::scan),
    row("keys",    2,  &["readonly"],                             (0, 0, 0),  keys::keys),
    row("randomkey", 1, &["readonly"],                            (0, 0, 0),  keys::randomkey),
    row("ping",    -1, &["fast", "stale"],                        (0, 0, 0),  connection::ping),
    row("echo",    2,  &["fast", "stale"],                        (0, 0, 0),  connection::echo),
    row("info",    -1, &["loading", "stale"],                     (0, 0, 0),  server::info),
    row("dbsize",  1,  &["readonly", "fast"],                     (0, 0, 0),  server::dbsize),
    row("flushall", -1, &["write"],                               (0, 0, 0),  server::flushall),
    row("flushdb", -1, &["write"],                                (0, 0, 0),  server::flushall),
    row("function", -2, &["noscript"],                            (0, 0, 0),  server::function),
    row("command", -1, &["loading", "stale"],                     (0, 0, 0),  server::command),
    row("client",  -2, &["loading", "stale"],                     (0, 0, 0),  connection::client),
    row("config",  -2, &["admin", "loading", "stale"],            (0, 0, 0),  server::config),
    row("select",  2,  &["loading", "stale", "fast"],             (0, 0, 0),  connection::select),
    row("hello",   -1, &["noscript", "loading", "stale", "fast"], (0, 0, 0),  connection::hello),
    row("auth",    -2, &["noscript", "loading", "stale", "fast"], (0, 0, 0),  connection::auth),
    row("quit",    -1, &["loading", "stale", "fast"],             (0, 0, 0),  connection::quit),
    row("reset",   1,  &["noscript", "loading", "stale", "fast"], (0, 0, 0),  connection::reset),
    row("time",    1,  &["loading", "stale", "fast"],             (0, 0, 0),  server::time),
    row("multi",   1,  &["noscript", "loading", "stale", "fast"], (0, 0, 0),  transactions::multi),
    row("exec",    1,  &["noscript", "loading", "stale"],         (0, 0, 0),  transactions::exec),
    row("discard", 1,  &["noscript", "loading", "stale", "fast"], (0, 0, 0),  transactions::discard),
    row("watch",   -2, &["noscript", "loading", "stale", "fast"], (1, -1, 1), transactions::watch),
    row("unwatch", 1,  &["noscript", "loading", "stale", "fast"], (0, 0, 0),  transactions::unwatch),
    // Run at the keys' owner, atomically (chordkv_core::command has their semantics).
    owner("setnx",       3,  &["write", "denyoom", "fast"], (1, 1, 1)),
    owner("getset",      3,  &["write", "denyoom", "fast"], (1, 1, 1)),
    owner("getdel",      2,  &["write", "fast"],            (1, 1, 1)),
    owner("type",        2,  &["readonly", "fast"],         (1, 1, 1)),
    owner("msetnx",      -3, &["write", "denyoom"],         (1, -1, 2)),
    owner("incr",        2,  &["write", "denyoom", "fast"], (1, 1, 1)),
    owner("decr",        2,  &["write", "denyoom", "fast"], (1, 1, 1)),
    owner("incrby",      3,  &["write", "denyoom", "fast"], (1, 1, 1)),
    owner("decrby",      3,  &["write", "denyoom", "fast"], (1, 1, 1)),
    owner("incrbyfloat", 3,  &["write", "denyoom", "fast"], (1, 1, 1)),
    owner("append",      3,  &["write", "denyoom", "fast"], (1, 1, 1)),
    owner("strlen",      2,  &["readonly", "fast"],         (1, 1, 1)),
    owner("setrange",    4,  &["write", "denyoom"],         (1, 1, 1)),
    owner("getrange",    4,  &["readonly"],                 (1, 1, 1)),
    owner("substr",      4,  &["readonly"],                 (1, 1, 1)),
    owner("setbit",      4,  &["write", "denyoom"],         (1, 1, 1)),
    owner("getbit",      3,  &["readonly", "fast"],         (1, 1, 1)),
    owner("bitcount",    -2, &["readonly"],                 (1, 1, 1)),
    owner("lcs",         -3, &["readonly"],                 (1, 2, 1)),
    owner("rename",      3,  &["write"],                    (1, 2, 1)),
    owner("renamenx",    3,  &["write", "fast"],            (1, 2, 1)),
    owner("copy",        -3, &["write", "denyoom"],         (1, 2, 1)),
    owner("setex",       4,  &["write", "denyoom"],         (1, 1, 1)),
    owner("psetex",      4,  &["write", "denyoom"],         (1, 1, 1)),
    owner("getex",       -2, &["write", "fast"],            (1, 1, 1)),
    owner("expire",      -3, &["write", "fast"],            (1, 1, 1)),
    owner("pexpire",     -3, &["write", "fast"],            (1, 1, 1)),
    owner("expireat",    -3, &["write", "fast"],            (1, 1, 1)),
    owner("pexpireat",   -3, &["write", "fast"],            (1, 1, 1)),
    owner("ttl",         2,  &["readonly", "fast"],         (1, 1, 1)),
    owner("pttl",        2,  &["readonly", "fast"],         (1, 1, 1)),
    owner("expiretime",  2,  &["readonly", "fast"],         (1, 1, 1)),
    owner("pexpiretime", 2,  &["readonly", "fast"],         (1, 1, 1)),
    owner("persist",     2,  &["write", "fast"],            (1, 1, 1)),
];

const fn row(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
    translate: fn(&mut [Bytes], &mut Cx<'_>) -> Translation,
) -> Spec {
    Spec {
        name,
        arity,
        flags,
        keys,
        translate,
        at_owner: false,
    }
}

/// The row of a command run at its keys' owner as it is (see [`at_owner`]).
const fn owner(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
) -> Spec {
    Spec {
        name,
        arity,
        flags,
        keys,
        translate: not_translated,
        at_owner: true,
    }
}

/// The `translate` of an [`owner`] row, which [`translate`] never calls.
fn not_translated(_: &mut [Bytes], _: &mut Cx<'_>) -> Translation {
    Translation::error("ERR internal: command run at the owner")
}

/// Sends the command `name rest…` to its keys' owner in an `Execute`, where it runs
/// atomically (`chordkv_core::command`); its keys must be placed by one id (one hash tag),
/// else Redis Cluster's `CROSSSLOT` error and nothing is sent.
pub(crate) fn at_owner(name: &str, rest: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    let mut words = Vec::with_capacity(rest.len() + 1);
    words.push(Bytes::copy_from_slice(name.as_bytes()));
    words.extend_from_slice(rest);
    let keys = match chordkv_core::command::keys(&words) {
        Ok(keys) => keys,
        Err(e) => return Translation::error(&e),
    };
    if let Some(refused) = refuse_large_keys(&keys) {
        return refused;
    }
    let Some(first) = keys.first().cloned() else {
        return Translation::error("ERR a command run at an owner needs a key");
    };
    let id = chordkv_protocol::Id::of_key(&first);
    if keys.iter().any(|k| chordkv_protocol::Id::of_key(k) != id) {
        return Translation::error(chordkv_core::chord::CROSSSLOT);
    }
    cx.ask(Message::Execute {
        key: first,
        commands: vec![words],
        watched: Vec::new(),
    });
    Translation::wait(OneReply::new(write_first_reply))
}

/// The answer of a command run at the owner: its one reply.
fn write_first_reply(reply: &Message, proto: Proto, out: &mut Vec<u8>) -> bool {
    match reply {
        Message::ExecuteReply {
            replies: Some(replies),
            ..
        } if replies.len() == 1 => write_command_reply(out, &replies[0], proto),
        _ => return false,
    }
    true
}

/// Writes a reply computed at an owner in the connection's RESP version.
pub(crate) fn write_command_reply(out: &mut Vec<u8>, reply: &CommandReply, proto: Proto) {
    match reply {
        CommandReply::Nil => resp::write_null_in(out, proto),
        CommandReply::Status(s) => resp::write_simple(out, s),
        CommandReply::Int(n) => resp::write_integer(out, *n),
        CommandReply::Bulk(b) => resp::write_bulk(out, b),
        CommandReply::Error(e) => resp::write_error(out, e),
        CommandReply::Array(items) => {
            resp::write_array_len(out, items.len());
            for item in items {
                write_command_reply(out, item, proto);
            }
        }
    }
}

impl Spec {
    /// The permission the command needs (see [`crate::auth`]): from its Redis flags, `admin`
    /// first, then `write`, then `readonly`; none for the connection and server commands.
    pub fn need(&self) -> crate::auth::Need {
        use crate::auth::Need;
        if self.flags.contains(&"admin") {
            Need::Admin
        } else if self.flags.contains(&"write") {
            Need::Write
        } else if self.flags.contains(&"readonly") {
            Need::Read
        } else {
            Need::Nothing
        }
    }
}

/// The row of the command called `name`, in any case.
fn find(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS
        .iter()
        .find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Translates one command, `name` and the arguments after it.
pub(crate) fn translate(name: &[u8], rest: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    let Some(spec) = find(name) else {
        if let Some(m) = cx.client.multi.as_mut() {
            m.failed = true;
        }
        return unknown_command(name, rest);
    };
    if cx.facts.users.is_some() && !matches!(spec.name, "auth" | "hello" | "quit" | "reset") {
        match &cx.client.session {
            None => return Translation::error(crate::auth::NOAUTH),
            Some(s) if !s.perms.allow(spec.need()) => {
                return Translation::error(&format!(
                    "NOPERM User {} has no permissions to run the '{}' command",
                    s.user, spec.name
                ))
            }
            Some(_) => {}
        }
    }
    let argc = rest.len() as i64 + 1;
    let arity = spec.arity;
    if (arity > 0 && argc != arity) || (arity < 0 && argc < -arity) {
        if let Some(m) = cx.client.multi.as_mut() {
            m.failed = true;
        }
        return Translation::wrong_arity(spec.name);
    }
    // Inside MULTI every command but the transaction's own is queued, never run.
    if cx.client.multi.is_some()
        && !matches!(
            spec.name,
            "exec" | "discard" | "multi" | "quit" | "reset" | "watch"
        )
    {
        return transactions::queue(spec.name, rest, cx);
    }
    if spec.at_owner {
        return at_owner(spec.name, rest, cx);
    }
    (spec.translate)(rest, cx)
}

/// A `HELP` subcommand's answer: an array of simple strings, one per line, as Redis writes it.
fn help_lines(lines: &[&str]) -> Translation {
    let mut reply = Vec::new();
    resp::write_array_len(&mut reply, lines.len());
    for line in lines {
        resp::write_simple(&mut reply, line);
    }
    Translation::Reply(reply)
}

/// Redis' wording: `unknown command 'x', with args beginning with: 'a' 'b' `.
fn unknown_command(name: &[u8], rest: &[Bytes]) -> Translation {
    let name = String::from_utf8_lossy(&name[..name.len().min(ERROR_ECHO_BYTES)]).into_owned();
    let mut list = String::new();
    for arg in rest {
        if list.len() >= ERROR_ECHO_BYTES {
            break;
        }
        let room = ERROR_ECHO_BYTES - list.len();
        let arg = String::from_utf8_lossy(&arg[..arg.len().min(room)]).into_owned();
        let _ = write!(list, "'{arg}' ");
    }
    Translation::error(&format!(
        "ERR unknown command '{name}', with args beginning with: {list}"
    ))
}

/// What a command may use while it is translated: its connection's own state, the event
/// loop's facts, and a place to ask the core for something. Never the core itself.
pub(crate) struct Cx<'a> {
    /// This connection, as CLIENT and HELLO see and name it.
    pub client: &'a mut Client,
    /// What the event loop knows that the core does not (INFO's `# Server` lines).
    pub facts: &'a Facts,
    /// Where asked requests wait for the event loop.
    pub requests: &'a mut Requests,
}

impl Cx<'_> {
    /// The RESP version the connection speaks now.
    pub fn proto(&self) -> Proto {
        self.client.proto
    }

    /// Asks the core for `message`. Its reply goes to the [`Pending`] the command returns,
    /// with `offset` counting this command's requests from 0 in the order asked.
    pub fn ask(&mut self, message: Message) {
        self.requests.push(message);
    }
}

/// Requests whose room [`Requests`] keeps between commands (a few KiB).
const RETAINED_REQUESTS: usize = 16;

/// Core requests asked and not yet taken by the event loop, numbered with the connection's
/// request ids (which the core's replies carry back).
pub(crate) struct Requests {
    /// The id the next request takes; ids start at 1 and are never given twice.
    next_rid: u64,
    frames: Vec<Frame>,
}

impl Requests {
    pub fn new() -> Requests {
        Requests {
            next_rid: 1,
            frames: Vec::new(),
        }
    }

    /// The request id the next request will take.
    pub fn next_rid(&self) -> u64 {
        self.next_rid
    }

    fn push(&mut self, message: Message) {
        self.frames.push(Frame::new(self.next_rid, message));
        self.next_rid += 1;
    }

    /// Hands the requests asked since the last call to `each`, in order. The buffer is kept
    /// for the next ones, unless a command with many keys grew it past
    /// [`RETAINED_REQUESTS`]: an idle connection does not hold on to its largest MGET.
    pub fn drain_into(&mut self, mut each: impl FnMut(Frame)) {
        if self.frames.len() == 1 {
            // Most commands ask one request: popped, without a drain's bookkeeping.
            if let Some(frame) = self.frames.pop() {
                each(frame);
            }
        } else {
            self.frames.drain(..).for_each(each);
        }
        if self.frames.capacity() > RETAINED_REQUESTS {
            self.frames = Vec::new();
        }
    }
}

/// What a command translated into.
pub(crate) enum Translation {
    /// Answered without the core: one RESP reply.
    Reply(Vec<u8>),
    /// Waiting for the core's replies to the requests the command asked, which this gathers
    /// into one RESP reply.
    Wait(Pending),
    /// This reply, then the connection closes once every reply before it is out (QUIT).
    Close(Vec<u8>),
}

impl Translation {
    pub fn wait(pending: impl Into<Pending>) -> Translation {
        Translation::Wait(pending.into())
    }

    /// `+text`.
    pub fn simple(text: &str) -> Translation {
        Translation::Reply(encoded(|out| resp::write_simple(out, text)))
    }

    /// `-text`: `text` starts with the error code (`ERR`, `NOPROTO`).
    pub fn error(text: &str) -> Translation {
        Translation::Reply(encoded(|out| resp::write_error(out, text)))
    }

    pub fn bulk(data: &[u8]) -> Translation {
        Translation::Reply(encoded(|out| resp::write_bulk(out, data)))
    }

    /// A null (the null bulk string in RESP2).
    pub fn null(proto: Proto) -> Translation {
        Translation::Reply(encoded(|out| resp::write_null_in(out, proto)))
    }

    pub fn integer(n: i64) -> Translation {
        Translation::Reply(encoded(|out| resp::write_integer(out, n)))
    }

    /// Redis' `wrong number of arguments for '<name>' command`.
    pub fn wrong_arity(name: &str) -> Translation {
        Translation::error(&format!("ERR wrong number of arguments for '{name}' command"))
    }
}

fn encoded(write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    write(&mut out);
    out
}

/// The error for the first key over the binary protocol's [`MAX_KEY_BYTES`] (Redis has no such
/// limit; a chordkv frame does), before anything is asked.
fn refuse_large_keys<'k>(keys: impl IntoIterator<Item = &'k Bytes>) -> Option<Translation> {
    let key = keys.into_iter().find(|k| k.len() > MAX_KEY_BYTES)?;
    Some(key_too_large(key.len()))
}

/// [`refuse_large_keys`] for a command of one key (GET, SET): a length compare.
#[inline]
fn refuse_large_key(key: &Bytes) -> Option<Translation> {
    (key.len() > MAX_KEY_BYTES).then(|| key_too_large(key.len()))
}

#[cold]
fn key_too_large(len: usize) -> Translation {
    Translation::error(&format!(
        "ERR key of {len} bytes is over chordkv's maximum of {MAX_KEY_BYTES}"
    ))
}

/// A reply waiting for the core: takes the core's replies to a command's requests, in any
/// order, and then writes the command's one RESP reply.
pub(crate) trait Gather {
    /// Takes the core's reply to the command's request number `offset` (0 for the first).
    fn accept(&mut self, offset: usize, reply: Message);
    /// Writes the RESP reply in `proto` (the connection's when the command arrived), once
    /// every request has been answered.
    fn encode(self, out: &mut Vec<u8>, proto: Proto);
}

/// Declares [`Pending`], one variant per [`Gather`] type, with `From` for each and the
/// dispatch of `accept` and `encode`: an enum rather than a `Box<dyn Gather>`, so that waiting
/// for a GET allocates nothing.
macro_rules! pending {
    ($($variant:ident($ty:ty),)*) => {
        /// Every kind of reply a command can wait for. See [`Gather`].
        pub(crate) enum Pending {
            $($variant($ty),)*
        }

        $(impl From<$ty> for Pending {
            fn from(p: $ty) -> Pending {
                Pending::$variant(p)
            }
        })*

        impl Gather for Pending {
            fn accept(&mut self, offset: usize, reply: Message) {
                match self {
                    $(Pending::$variant(p) => p.accept(offset, reply),)*
                }
            }

            fn encode(self, out: &mut Vec<u8>, proto: Proto) {
                match self {
                    $(Pending::$variant(p) => p.encode(out, proto),)*
                }
            }
        }
    };
}

pending! {
    One(OneReply),
    Values(strings::Values),
    AllStored(strings::AllStored),
    Counted(keys::Counted),
    Watch(transactions::Watch),
    // Boxed: INFO is rare, and its text's parts would double the size of every slot.
    Info(Box<server::Info>),
}

impl<G: Gather> Gather for Box<G> {
    fn accept(&mut self, offset: usize, reply: Message) {
        (**self).accept(offset, reply);
    }

    fn encode(self, out: &mut Vec<u8>, proto: Proto) {
        (*self).encode(out, proto);
    }
}

/// The reply of a command that sends one request (GET, SET, DBSIZE): the core's reply, kept
/// until `write` turns it into RESP.
pub(crate) struct OneReply {
    reply: Option<Message>,
    /// Writes the answer to the reply the command expects, in the connection's RESP version;
    /// false, having written nothing, for any other (which is then written as a failure).
    write: fn(&Message, Proto, &mut Vec<u8>) -> bool,
}

impl OneReply {
    pub fn new(write: fn(&Message, Proto, &mut Vec<u8>) -> bool) -> OneReply {
        OneReply { reply: None, write }
    }
}

impl Gather for OneReply {
    fn accept(&mut self, _: usize, reply: Message) {
        self.reply = Some(reply);
    }

    fn encode(self, out: &mut Vec<u8>, proto: Proto) {
        match &self.reply {
            Some(reply) if (self.write)(reply, proto, out) => {}
            other => write_failure(out, other.as_ref()),
        }
    }
}

/// The error reply for a core reply that is not the expected one (or none at all).
fn write_failure(out: &mut Vec<u8>, reply: Option<&Message>) {
    match reply {
        Some(m) => resp::write_error(out, &error_text(m)),
        None => resp::write_error(out, "ERR no reply from the node"),
    }
}

/// `ERR <code>: <text>` for a core error; any other unexpected reply is named.
fn error_text(message: &Message) -> String {
    match message {
        Message::Error { code, text, .. } => format!("ERR {code:?}: {text}"),
        other => format!("ERR unexpected reply {} from the node", other.name()),
    }
}

/// A decimal integer argument, as Redis reads one.
fn parse_int(arg: &[u8]) -> Option<i64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    //! Translation alone, with no core anywhere: what each command asks for, or answers.

    use super::*;

    fn translate_line(line: &str) -> (Translation, Vec<Message>) {
        let args: Vec<Bytes> = line
            .split(' ')
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect();
        translate_args(&args)
    }

    /// Translates `args` for a fresh connection; returns what the command asked the core.
    fn translate_args(args: &[Bytes]) -> (Translation, Vec<Message>) {
        let mut client = Client::new(7, "127.0.0.1:40000".parse().unwrap());
        let facts = Facts::new("127.0.0.1:6379".parse().unwrap(), None, 10_000);
        let mut requests = Requests::new();
        let mut cx = Cx {
            client: &mut client,
            facts: &facts,
            requests: &mut requests,
        };
        let mut rest = args[1..].to_vec();
        let translation = translate(&args[0], &mut rest, &mut cx);
        let mut asked = Vec::new();
        requests.drain_into(|f| asked.push(f.message));
        (translation, asked)
    }

    fn reply_text(t: &Translation) -> &str {
        match t {
            Translation::Reply(bytes) | Translation::Close(bytes) => std::str::from_utf8(bytes).unwrap(),
            Translation::Wait(_) => panic!("waits for the core"),
        }
    }

    /// Every command with arguments drawn from words the commands look for and random bytes:
    /// nothing panics, an answer on the spot asks the core nothing, and a wait asks at least
    /// once and encodes whatever the core replies (here: an error or a wrong kind of reply).
    #[test]
    fn any_arguments_translate_without_panicking() {
        let mut words: Vec<&[u8]> =
            "0 2 3 -1 * GET SETNAME LIST INFO NX KEEPTTL on AUTH COUNT KILL ID ADDR SKIPME no"
                .split(' ')
                .map(str::as_bytes)
                .collect();
        words.extend([&b""[..], b"\r\n\xff"]);
        let mut rng = chordkv_core::rng::Rng::new(12);
        for _ in 0..20_000 {
            let spec = &COMMANDS[rng.below(COMMANDS.len() as u64) as usize];
            let mut args = vec![Bytes::from_static(spec.name.as_bytes())];
            for _ in 0..rng.below(6) {
                let arg = if rng.chance(0.7) {
                    Bytes::copy_from_slice(words[rng.below(words.len() as u64) as usize])
                } else {
                    let mut random = vec![0u8; rng.below(40) as usize];
                    rng.fill(&mut random);
                    Bytes::from(random)
                };
                args.push(arg);
            }
            let line: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
            let (translation, asked) = translate_args(&args);
            match translation {
                Translation::Reply(_) | Translation::Close(_) => {
                    assert!(asked.is_empty(), "{line:?} answered and asked {asked:?}")
                }
                Translation::Wait(mut pending) => {
                    assert!(!asked.is_empty(), "{line:?} waits for nothing");
                    for (offset, request) in asked.iter().enumerate() {
                        let reply = if offset % 2 == 0 {
                            Message::Error {
                                code: chordkv_protocol::ErrorCode::Internal,
                                hops: 0,
                                text: "no".into(),
                            }
                        } else {
                            request.clone()
                        };
                        pending.accept(offset, reply);
                    }
                    let mut out = Vec::new();
                    pending.encode(&mut out, Proto::Resp2);
                    assert!(out.starts_with(b"-ERR"), "{line:?}: {out:?}");
                }
            }
        }
    }

    #[test]
    fn key_commands_become_one_request_per_key() {
        let key = |k: &str| Bytes::copy_from_slice(k.as_bytes());
        let (t, asked) = translate_line("get k");
        assert!(matches!(t, Translation::Wait(Pending::One(_))));
        assert_eq!(asked, [Message::Get { key: key("k") }]);

        let (t, asked) = translate_line("MSET a 1 b 2");
        assert!(matches!(t, Translation::Wait(Pending::AllStored(_))));
        assert_eq!(
            asked,
            [
                Message::Put {
                    key: key("a"),
                    value: key("1")
                },
                Message::Put {
                    key: key("b"),
                    value: key("2")
                },
            ]
        );

        let (_, asked) = translate_line("DEL a b");
        assert_eq!(
            asked,
            [
                Message::Delete { key: key("a") },
                Message::Delete { key: key("b") }
            ]
        );
        let (_, asked) = translate_line("INFO");
        assert_eq!(asked, [Message::GetInfo, Message::GetStats]);
        let (_, asked) = translate_line("DBSIZE");
        assert_eq!(
            asked,
            [Message::RingCommand {
                command: chordkv_protocol::RangeCommand::Count
            }]
        );
    }

    #[test]
    fn answers_on_the_spot_ask_nothing() {
        for (line, reply) in [
            ("PING", "+PONG\r\n"),
            ("ping hi", "$2\r\nhi\r\n"),
            ("SELECT 1", "-ERR DB index is out of range\r\n"),
            ("CLIENT ID", ":7\r\n"),
            ("GET", "-ERR wrong number of arguments for 'get' command\r\n"),
            (
                "MSET a 1 b",
                "-ERR wrong number of arguments for 'mset' command\r\n",
            ),
            (
                "MSETNX {a}x 1 {b}y 2",
                "-CROSSSLOT Keys in request don't hash to the same slot\r\n",
            ),
            ("INCR", "-ERR wrong number of arguments for 'incr' command\r\n"),
            ("QUIT", "+OK\r\n"),
            ("RESET", "+RESET\r\n"),
            (
                "CLIENT NOPE",
                "-ERR unknown subcommand 'NOPE'. Try CLIENT HELP.\r\n",
            ),
            ("TIME", "*2\r\n$1\r\n0\r\n$1\r\n0\r\n"),
            (
                "CONFIG GET maxclients",
                "*2\r\n$10\r\nmaxclients\r\n$5\r\n10000\r\n",
            ),
            // Glob patterns, without regard to case, as Redis matches them.
            (
                "CONFIG GET PROTO-* *query*",
                "*4\r\n$18\r\nproto-max-bulk-len\r\n$9\r\n536870912\r\n\
                 $25\r\nclient-query-buffer-limit\r\n$10\r\n1073741824\r\n",
            ),
        ] {
            let (t, asked) = translate_line(line);
            assert_eq!(reply_text(&t), reply, "{line}");
            assert!(asked.is_empty(), "{line} asked {asked:?}");
        }
        assert!(matches!(translate_line("QUIT").0, Translation::Close(_)));
        // The HELP an unknown subcommand's error points at exists.
        for (line, first) in [
            ("CLIENT HELP", "+CLIENT <subcommand>"),
            ("command help", "+COMMAND <subcommand>"),
        ] {
            let (t, asked) = translate_line(line);
            let text = reply_text(&t);
            assert!(text.starts_with('*'), "{line}: {text}");
            assert!(
                text.lines().nth(1).is_some_and(|l| l.starts_with(first)),
                "{line}: {text}"
            );
            assert!(asked.is_empty());
        }
        let long = format!("GET {}", "k".repeat(MAX_KEY_BYTES + 1));
        let (t, asked) = translate_line(&long);
        assert!(reply_text(&t).starts_with("-ERR key of "));
        assert!(asked.is_empty());
    }
}
