//! The Redis-protocol (RESP2) front end: one [`RespSession`] per connection accepted on the
//! `--resp` listener, turning Redis commands into the same client requests a binary client
//! sends.
//!
//! ```text
//!  redis client ──RESP──► conn rbuf ─► resp::decode ─► RespSession::next_command
//!                                                      │ PING, ECHO, INFO's own lines ... answered here
//!                                                      │ GET k ──► Message::Get  ─┐  handle_request(ReplyTo =
//!                                                      │ MSET ... ► n × Put       ─┤  this connection's token,
//!                                                      ▼                          │  request id = next rid)
//!                               slots (one per command, in order)   ◄──────────── Output::Reply (any order)
//!                               head slot complete ─► encode RESP ─► conn wbuf ─► flush
//! ```
//!
//! - **Routing.** Every key operation enters the core through [`Node::handle_request`], exactly
//!   as a frame from a binary client would: the core routes it around the ring, with
//!   replication, failover and redirects behind it. A command with several keys (DEL, EXISTS,
//!   MGET, MSET) becomes one request per key and one reply built from all of theirs.
//! - **Order.** Replies come out of the core in any order (a local key is answered at once, a
//!   remote one after a round trip). Each command takes a *slot* in a queue and its requests
//!   take consecutive request ids; a reply fills its slot, found by id, and slots are encoded
//!   strictly from the front. So pipelined commands are answered in the order sent. A
//!   command answered on the spot takes a slot too when others are still waiting before it.
//! - **Limits.** At most [`MAX_REQUESTS_IN_FLIGHT`] core requests per connection: beyond that
//!   the connection's input is not decoded until replies drain (the event loop reads it again
//!   then), so one client cannot fill the node's memory with pipelined requests. Keys over
//!   the binary protocol's [`MAX_KEY_BYTES`] are refused.
//! - **Errors.** Bytes that are not RESP get Redis' `-ERR Protocol error: ...` and the
//!   connection is closed once the replies before the error have gone out; so does `QUIT`
//!   (`+OK` first). Unknown commands get Redis' `-ERR unknown command '...'` wording; a failed
//!   core request (`Message::Error`) becomes `-ERR <code>: <text>`.
//! - **Not supported, with a clear error:** `SET` with `NX`/`XX`/`GET` (the store has no atomic
//!   conditional or read-and-write put) and with `EX`/`PX`/`EXAT`/`PXAT` (keys never expire);
//!   databases other than 0; RESP3 (`HELLO 3` answers `-NOPROTO`). `MSET` and multi-key `DEL`
//!   are not atomic: each key is its own write.
//! - **DBSIZE** is this node's count of live keys it is *primary* for (`keys_primary` of
//!   GET_STATS), like `DBSIZE` on one Redis Cluster master: the sum over the nodes is the
//!   ring's count. INFO's keyspace line gives the same figure, and its `# chordkv` section the
//!   node's ring neighbours and every counter of GET_STATS.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use chordkv_protocol::resp::{self, RespError};
use chordkv_protocol::{Frame, Message, NodeInfo, NodeRef, NodeStatus, MAX_KEY_BYTES};

use crate::chord::{Millis, Node, ReplyTo};

/// Core requests one connection may have in flight before its input waits.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 4_096;
/// The Redis version INFO and HELLO report: the dialect of the commands answered.
pub const REDIS_VERSION: &str = "7.0.0";
/// Longest command name echoed back in an unknown-command error (Redis' own cut-off).
const ERROR_ECHO_BYTES: usize = 128;

/// What the event loop needs to know of the node for INFO, shared by all sessions.
pub(super) struct Facts {
    pub resp_addr: SocketAddr,
    pub started: Instant,
}

/// What [`RespSession::next_command`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// A command was taken off the input (answered, or handed to the core).
    Command,
    /// Nothing to do until more input arrives or replies drain.
    Idle,
}

/// A command the front end knows, for `COMMAND`: name, Redis arity (negative: at least),
/// flags, first key, last key, key step.
type CommandSpec = (&'static str, i64, &'static [&'static str], i64, i64, i64);

const COMMANDS: &[CommandSpec] = &[
    ("get", 2, &["readonly", "fast"], 1, 1, 1),
    ("set", -3, &["write", "denyoom"], 1, 1, 1),
    ("del", -2, &["write"], 1, -1, 1),
    ("exists", -2, &["readonly", "fast"], 1, -1, 1),
    ("mget", -2, &["readonly", "fast"], 1, -1, 1),
    ("mset", -3, &["write", "denyoom"], 1, -1, 2),
    ("ping", -1, &["fast", "stale"], 0, 0, 0),
    ("echo", 2, &["fast", "stale"], 0, 0, 0),
    ("info", -1, &["loading", "stale"], 0, 0, 0),
    ("dbsize", 1, &["readonly", "fast"], 0, 0, 0),
    ("command", -1, &["loading", "stale"], 0, 0, 0),
    ("client", -2, &["loading", "stale"], 0, 0, 0),
    ("config", -2, &["admin", "loading", "stale"], 0, 0, 0),
    ("select", 2, &["loading", "stale", "fast"], 0, 0, 0),
    ("hello", -1, &["noscript", "loading", "stale", "fast"], 0, 0, 0),
    ("auth", -2, &["noscript", "loading", "stale", "fast"], 0, 0, 0),
    ("quit", -1, &["loading", "stale", "fast"], 0, 0, 0),
];

/// One command's place in the reply order.
struct Slot {
    /// The request id of its first core request; the others follow it.
    first: u64,
    /// Core requests sent for it, and replies received so far.
    sent: u32,
    got: u32,
    kind: Kind,
}

/// What a slot is waiting for, and what it has received.
enum Kind {
    /// An answer already encoded, waiting for the slots before it.
    Ready(Vec<u8>),
    Get(Option<Message>),
    Set(Option<Message>),
    /// DEL and EXISTS: how many keys counted, or the first error.
    Count {
        n: i64,
        error: Option<String>,
    },
    MGet(Vec<Option<Message>>),
    MSet {
        error: Option<String>,
    },
    DbSize(Option<Message>),
    Info {
        section: String,
        /// The `# Server` section, written when the command arrived.
        server: String,
        info: Option<NodeInfo>,
        stats: Option<Vec<(String, u64)>>,
        error: Option<String>,
    },
}

/// The RESP state of one connection. See the module docs.
pub(super) struct RespSession {
    /// The connection's id (its token), for `CLIENT ID`.
    id: u64,
    peer: SocketAddr,
    name: Option<Bytes>,
    /// The next request id to give the core.
    next_rid: u64,
    slots: VecDeque<Slot>,
    /// Core requests sent and not answered.
    in_flight: usize,
    /// Input decoding stopped at [`MAX_REQUESTS_IN_FLIGHT`]; the loop must read again once
    /// replies drain.
    blocked: bool,
    /// QUIT or a protocol error: decode nothing more, close once every slot is written.
    closing: bool,
}

impl RespSession {
    pub fn new(id: u64, peer: SocketAddr) -> RespSession {
        RespSession {
            id,
            peer,
            name: None,
            next_rid: 1,
            slots: VecDeque::new(),
            in_flight: 0,
            blocked: false,
            closing: false,
        }
    }

    /// Whether the connection should be closed now: QUIT or a protocol error was answered and
    /// every reply before it has been written.
    pub fn wants_close(&self) -> bool {
        self.closing && self.slots.is_empty()
    }

    /// Whether decoding stopped at the in-flight limit and may go on now (reported once).
    pub fn take_unblocked(&mut self) -> bool {
        if self.blocked && self.in_flight < MAX_REQUESTS_IN_FLIGHT {
            self.blocked = false;
            return true;
        }
        false
    }

    /// Decodes the next command in `input` and runs it: answers it into `out` (in order), or
    /// hands its requests to `node` with `to` as their reply address.
    pub fn next_command(
        &mut self,
        now: Millis,
        node: &mut Node,
        to: ReplyTo,
        input: &mut BytesMut,
        out: &mut Vec<u8>,
        facts: &Facts,
    ) -> Step {
        if self.closing {
            input.clear();
            return Step::Idle;
        }
        if self.in_flight >= MAX_REQUESTS_IN_FLIGHT {
            self.blocked = true;
            return Step::Idle;
        }
        let args = match resp::decode(input) {
            Ok(Some(args)) => args,
            Ok(None) => return Step::Idle,
            Err(e) => {
                self.protocol_error(&e, out);
                input.clear();
                return Step::Command;
            }
        };
        let mut ctx = Ctx {
            session: self,
            now,
            node,
            to,
            out,
        };
        ctx.run(&args, facts);
        Step::Command
    }

    fn protocol_error(&mut self, e: &RespError, out: &mut Vec<u8>) {
        let mut reply = Vec::new();
        resp::write_error(&mut reply, &format!("ERR {e}"));
        self.push_ready(reply, out);
        self.closing = true;
    }

    /// A reply from the core to one of this connection's requests: fills its slot and writes
    /// every complete slot at the front to `out`.
    pub fn on_reply(&mut self, frame: Frame, out: &mut Vec<u8>) {
        let rid = frame.request_id;
        // Usually the front slot; else the one whose ids hold `rid` (ids grow along the queue).
        let index = match self.slots.front() {
            Some(s) if rid >= s.first && rid < s.first + u64::from(s.sent) => 0,
            _ => self.slots.partition_point(|s| s.first + u64::from(s.sent) <= rid),
        };
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        if rid < slot.first || rid >= slot.first + u64::from(slot.sent) {
            return; // not one of ours (cannot happen: ids are only ever given once)
        }
        let offset = (rid - slot.first) as usize;
        slot.got += 1;
        self.in_flight = self.in_flight.saturating_sub(1);
        slot.kind.accept(offset, frame.message);
        self.write_ready(out);
    }

    /// Writes the complete slots at the front of the queue.
    fn write_ready(&mut self, out: &mut Vec<u8>) {
        while self.slots.front().is_some_and(|s| s.got == s.sent) {
            if let Some(slot) = self.slots.pop_front() {
                slot.kind.encode(out);
            }
        }
    }

    /// Queues an answer that needs no core request: straight out if nothing waits before it.
    fn push_ready(&mut self, reply: Vec<u8>, out: &mut Vec<u8>) {
        if self.slots.is_empty() {
            out.extend_from_slice(&reply);
        } else {
            self.slots.push_back(Slot {
                first: self.next_rid,
                sent: 0,
                got: 0,
                kind: Kind::Ready(reply),
            });
        }
    }
}

/// One command being run.
struct Ctx<'a> {
    session: &'a mut RespSession,
    now: Millis,
    node: &'a mut Node,
    to: ReplyTo,
    out: &'a mut Vec<u8>,
}

impl Ctx<'_> {
    fn run(&mut self, args: &[Bytes], facts: &Facts) {
        let Some((name, rest)) = args.split_first() else {
            return;
        };
        let mut upper = [0u8; 16];
        let name_upper = match upper.get_mut(..name.len()) {
            Some(buf) => {
                buf.copy_from_slice(name);
                buf.make_ascii_uppercase();
                &buf[..]
            }
            None => &b"?"[..], // longer than any command we know
        };
        let Some(&(lower, arity, ..)) = COMMANDS
            .iter()
            .find(|c| c.0.as_bytes().eq_ignore_ascii_case(name_upper))
        else {
            return self.unknown_command(name, rest);
        };
        let argc = args.len() as i64;
        if (arity > 0 && argc != arity) || (arity < 0 && argc < -arity) {
            return self.error(&format!("ERR wrong number of arguments for '{lower}' command"));
        }
        match name_upper {
            b"GET" => self.get(&rest[0]),
            b"SET" => self.set(rest),
            b"DEL" => self.count(rest, true),
            b"EXISTS" => self.count(rest, false),
            b"MGET" => self.mget(rest),
            b"MSET" => self.mset(rest),
            b"PING" => match rest {
                [] => self.simple("PONG"),
                [msg] => self.bulk(msg),
                _ => self.error("ERR wrong number of arguments for 'ping' command"),
            },
            b"ECHO" => self.bulk(&rest[0]),
            b"INFO" => self.info(rest, facts),
            b"DBSIZE" => {
                let rid = self.request(Message::GetStats);
                self.slot(rid, 1, Kind::DbSize(None));
            }
            b"COMMAND" => self.command(rest),
            b"CLIENT" => self.client(rest),
            b"CONFIG" => self.config(rest),
            b"SELECT" => match parse_int(&rest[0]) {
                Some(0) => self.simple("OK"),
                Some(_) => self.error("ERR DB index is out of range"),
                None => self.error("ERR value is not an integer or out of range"),
            },
            b"HELLO" => self.hello(rest),
            b"AUTH" => self.error(
                "ERR AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?",
            ),
            b"QUIT" => {
                self.simple("OK");
                self.session.closing = true;
            }
            _ => self.unknown_command(name, rest),
        }
    }

    // ---- key commands ---------------------------------------------------------------------

    fn get(&mut self, key: &Bytes) {
        if self.key_too_large(std::slice::from_ref(key)) {
            return;
        }
        let rid = self.request(Message::Get { key: key.clone() });
        self.slot(rid, 1, Kind::Get(None));
    }

    fn set(&mut self, rest: &[Bytes]) {
        let (key, value, options) = (&rest[0], &rest[1], &rest[2..]);
        for option in options {
            let o = option.to_ascii_uppercase();
            match &o[..] {
                b"NX" | b"XX" => {
                    return self.error(
                        "ERR SET NX and XX are not supported: chordkv has no atomic conditional write",
                    )
                }
                b"GET" => {
                    return self.error("ERR SET GET is not supported: chordkv has no atomic read-and-write")
                }
                b"EX" | b"PX" | b"EXAT" | b"PXAT" => {
                    return self
                        .error("ERR SET EX, PX, EXAT and PXAT are not supported: chordkv keys do not expire")
                }
                // Keys have no time to live, so there is none to keep.
                b"KEEPTTL" => {}
                _ => return self.error("ERR syntax error"),
            }
        }
        if self.key_too_large(std::slice::from_ref(key)) {
            return;
        }
        let rid = self.request(Message::Put {
            key: key.clone(),
            value: value.clone(),
        });
        self.slot(rid, 1, Kind::Set(None));
    }

    /// DEL (`delete`) or EXISTS: one request per key, the reply counts them.
    fn count(&mut self, keys: &[Bytes], delete: bool) {
        if self.key_too_large(keys) {
            return;
        }
        let first = self.session.next_rid;
        for key in keys {
            let key = key.clone();
            self.request(if delete {
                Message::Delete { key }
            } else {
                Message::Get { key }
            });
        }
        self.slot(first, keys.len(), Kind::Count { n: 0, error: None });
    }

    fn mget(&mut self, keys: &[Bytes]) {
        if self.key_too_large(keys) {
            return;
        }
        let first = self.session.next_rid;
        for key in keys {
            self.request(Message::Get { key: key.clone() });
        }
        self.slot(first, keys.len(), Kind::MGet(vec![None; keys.len()]));
    }

    fn mset(&mut self, pairs: &[Bytes]) {
        if pairs.len() % 2 != 0 {
            return self.error("ERR wrong number of arguments for 'mset' command");
        }
        let keys: Vec<Bytes> = pairs.iter().step_by(2).cloned().collect();
        if self.key_too_large(&keys) {
            return;
        }
        let first = self.session.next_rid;
        for pair in pairs.chunks_exact(2) {
            self.request(Message::Put {
                key: pair[0].clone(),
                value: pair[1].clone(),
            });
        }
        self.slot(first, keys.len(), Kind::MSet { error: None });
    }

    fn key_too_large(&mut self, keys: &[Bytes]) -> bool {
        match keys.iter().find(|k| k.len() > MAX_KEY_BYTES) {
            Some(k) => {
                self.error(&format!(
                    "ERR key of {} bytes is over chordkv's maximum of {MAX_KEY_BYTES}",
                    k.len()
                ));
                true
            }
            None => false,
        }
    }

    // ---- server commands ------------------------------------------------------------------

    fn info(&mut self, rest: &[Bytes], facts: &Facts) {
        let section = match rest {
            [] => "default".to_string(),
            [s, ..] => String::from_utf8_lossy(s).to_ascii_lowercase(),
        };
        // The `# Server` lines come from the loop's facts, which the slot cannot reach later.
        let server = if wants_section(&section, "server") {
            server_lines(facts)
        } else {
            String::new()
        };
        let first = self.request(Message::GetInfo);
        self.request(Message::GetStats);
        let kind = Kind::Info {
            section,
            server,
            info: None,
            stats: None,
            error: None,
        };
        self.slot(first, 2, kind);
    }

    fn command(&mut self, rest: &[Bytes]) {
        let sub = rest.first().map(|s| s.to_ascii_uppercase());
        let mut reply = Vec::new();
        match sub.as_deref() {
            None => {
                resp::write_array_len(&mut reply, COMMANDS.len());
                for c in COMMANDS {
                    command_entry(&mut reply, c);
                }
            }
            Some(b"COUNT") => resp::write_integer(&mut reply, COMMANDS.len() as i64),
            Some(b"LIST") => {
                resp::write_array_len(&mut reply, COMMANDS.len());
                for c in COMMANDS {
                    resp::write_bulk(&mut reply, c.0.as_bytes());
                }
            }
            Some(b"INFO") => {
                let names = &rest[1..];
                resp::write_array_len(&mut reply, names.len());
                for name in names {
                    match COMMANDS
                        .iter()
                        .find(|c| c.0.as_bytes().eq_ignore_ascii_case(name))
                    {
                        Some(c) => command_entry(&mut reply, c),
                        None => reply.extend_from_slice(b"*-1\r\n"),
                    }
                }
            }
            // No documentation is served; an empty map (a flat array in RESP2) is a valid answer.
            Some(b"DOCS") => resp::write_array_len(&mut reply, 0),
            Some(other) => {
                let other = String::from_utf8_lossy(other).into_owned();
                resp::write_error(
                    &mut reply,
                    &format!("ERR unknown subcommand '{other}'. Try COMMAND HELP."),
                );
            }
        }
        self.ready(reply);
    }

    fn client(&mut self, rest: &[Bytes]) {
        let sub = rest[0].to_ascii_uppercase();
        match (&sub[..], rest.len()) {
            (b"SETNAME", 2) => {
                let name = &rest[1];
                if name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
                    return self
                        .error("ERR Client names cannot contain spaces, newlines or special characters.");
                }
                self.session.name = (!name.is_empty()).then(|| name.clone());
                self.simple("OK")
            }
            (b"GETNAME", 1) => match self.session.name.clone() {
                Some(name) => self.bulk(&name),
                None => self.null(),
            },
            (b"ID", 1) => self.integer(self.session.id as i64),
            (b"INFO", 1) | (b"LIST", _) => {
                let name = self
                    .session
                    .name
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                let line = format!(
                    "id={} addr={} name={name} db=0 resp=2\n",
                    self.session.id, self.session.peer
                );
                self.bulk(line.as_bytes())
            }
            // What clients send as they connect: library name and version, eviction hints.
            (b"SETINFO", 3) | (b"NO-EVICT", 2) | (b"NO-TOUCH", 2) => self.simple("OK"),
            (b"REPLY", 2) if rest[1].eq_ignore_ascii_case(b"ON") => self.simple("OK"),
            (b"SETNAME" | b"GETNAME" | b"ID" | b"INFO" | b"SETINFO" | b"NO-EVICT" | b"NO-TOUCH", _) => {
                let sub = String::from_utf8_lossy(&sub).to_ascii_lowercase();
                self.error(&format!(
                    "ERR wrong number of arguments for 'client|{sub}' command"
                ))
            }
            _ => {
                let sub = String::from_utf8_lossy(&rest[0]).into_owned();
                self.error(&format!("ERR unknown subcommand '{sub}'. Try CLIENT HELP."))
            }
        }
    }

    /// `CONFIG GET`: the few parameters benchmark tools ask for, with values that describe
    /// chordkv (nothing saved to disk, one database); `*` lists them all.
    fn config(&mut self, rest: &[Bytes]) {
        const PARAMS: [(&str, &str); 4] = [
            ("save", ""),
            ("appendonly", "no"),
            ("databases", "1"),
            ("maxmemory", "0"),
        ];
        if !rest[0].eq_ignore_ascii_case(b"GET") {
            let sub = String::from_utf8_lossy(&rest[0]).into_owned();
            return self.error(&format!("ERR CONFIG {sub} is not supported by chordkv"));
        }
        let mut found: Vec<(&str, &str)> = Vec::new();
        for pattern in &rest[1..] {
            for (name, value) in PARAMS {
                if (&pattern[..] == b"*" || pattern.eq_ignore_ascii_case(name.as_bytes()))
                    && !found.iter().any(|(n, _)| *n == name)
                {
                    found.push((name, value));
                }
            }
        }
        let mut reply = Vec::new();
        resp::write_array_len(&mut reply, found.len() * 2);
        for (name, value) in found {
            resp::write_bulk(&mut reply, name.as_bytes());
            resp::write_bulk(&mut reply, value.as_bytes());
        }
        self.ready(reply);
    }

    /// `HELLO [2 [SETNAME name]]`: the server map as a RESP2 array. RESP3 is not spoken.
    fn hello(&mut self, rest: &[Bytes]) {
        if let Some(version) = rest.first() {
            match parse_int(version) {
                Some(2) => {}
                Some(_) => return self.error("NOPROTO sorry, this protocol version is not supported"),
                None => return self.error("ERR Protocol version is not an integer or out of range"),
            }
        }
        let mut options = rest.iter().skip(1);
        while let Some(option) = options.next() {
            let o = option.to_ascii_uppercase();
            match (&o[..], options.next()) {
                (b"SETNAME", Some(name)) => self.session.name = Some(name.clone()),
                (b"AUTH", _) => {
                    return self.error(
                        "ERR AUTH <password> called without any password configured for the default \
                         user. Are you sure your configuration is correct?",
                    )
                }
                _ => {
                    let o = String::from_utf8_lossy(option).into_owned();
                    return self.error(&format!("ERR Syntax error in HELLO option '{o}'"));
                }
            }
        }
        let mut reply = Vec::new();
        resp::write_array_len(&mut reply, 14);
        for (k, v) in [("server", "chordkv"), ("version", REDIS_VERSION)] {
            resp::write_bulk(&mut reply, k.as_bytes());
            resp::write_bulk(&mut reply, v.as_bytes());
        }
        resp::write_bulk(&mut reply, b"proto");
        resp::write_integer(&mut reply, 2);
        resp::write_bulk(&mut reply, b"id");
        resp::write_integer(&mut reply, self.session.id as i64);
        for (k, v) in [("mode", "standalone"), ("role", "master")] {
            resp::write_bulk(&mut reply, k.as_bytes());
            resp::write_bulk(&mut reply, v.as_bytes());
        }
        resp::write_bulk(&mut reply, b"modules");
        resp::write_array_len(&mut reply, 0);
        self.ready(reply);
    }

    /// Redis' wording: `unknown command 'x', with args beginning with: 'a' 'b' `.
    fn unknown_command(&mut self, name: &[u8], rest: &[Bytes]) {
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
        self.error(&format!(
            "ERR unknown command '{name}', with args beginning with: {list}"
        ));
    }

    // ---- plumbing -------------------------------------------------------------------------

    /// Hands one request to the core; returns its request id.
    fn request(&mut self, message: Message) -> u64 {
        let rid = self.session.next_rid;
        self.session.next_rid += 1;
        self.session.in_flight += 1;
        self.node
            .handle_request(self.now, self.to, Frame::new(rid, message));
        rid
    }

    /// Queues a command waiting for `sent` replies to requests `first..first + sent`. The
    /// core may already have answered some of them (a local key, memory store): those
    /// replies arrive after this, through the event loop's pump, so none is missed.
    fn slot(&mut self, first: u64, sent: usize, kind: Kind) {
        self.session.slots.push_back(Slot {
            first,
            sent: sent as u32,
            got: 0,
            kind,
        });
        self.session.write_ready(self.out);
    }

    fn ready(&mut self, reply: Vec<u8>) {
        self.session.push_ready(reply, self.out);
    }

    fn simple(&mut self, text: &str) {
        if self.session.slots.is_empty() {
            return resp::write_simple(self.out, text);
        }
        let mut reply = Vec::new();
        resp::write_simple(&mut reply, text);
        self.ready(reply);
    }

    fn error(&mut self, text: &str) {
        let mut reply = Vec::new();
        resp::write_error(&mut reply, text);
        self.ready(reply);
    }

    fn bulk(&mut self, data: &[u8]) {
        let mut reply = Vec::new();
        resp::write_bulk(&mut reply, data);
        self.ready(reply);
    }

    fn null(&mut self) {
        let mut reply = Vec::new();
        resp::write_null(&mut reply);
        self.ready(reply);
    }

    fn integer(&mut self, n: i64) {
        let mut reply = Vec::new();
        resp::write_integer(&mut reply, n);
        self.ready(reply);
    }
}

impl Kind {
    /// Takes the core's reply to the slot's request number `offset`.
    fn accept(&mut self, offset: usize, message: Message) {
        match self {
            Kind::Ready(_) => {}
            Kind::Get(reply) | Kind::Set(reply) | Kind::DbSize(reply) => *reply = Some(message),
            Kind::Count { n, error } => match message {
                Message::DeleteReply { existed, .. } => *n += i64::from(existed),
                Message::GetReply { value, .. } => *n += i64::from(value.is_some()),
                other => {
                    if error.is_none() {
                        *error = Some(error_text(&other));
                    }
                }
            },
            Kind::MGet(replies) => {
                if let Some(r) = replies.get_mut(offset) {
                    *r = Some(message);
                }
            }
            Kind::MSet { error } => {
                if !matches!(message, Message::PutReply { .. }) && error.is_none() {
                    *error = Some(error_text(&message));
                }
            }
            Kind::Info {
                info, stats, error, ..
            } => match message {
                Message::Info(i) => *info = Some(i),
                Message::Stats { counters } => *stats = Some(counters),
                other => {
                    if error.is_none() {
                        *error = Some(error_text(&other));
                    }
                }
            },
        }
    }

    /// The RESP reply of a complete slot.
    fn encode(self, out: &mut Vec<u8>) {
        match self {
            Kind::Ready(bytes) => out.extend_from_slice(&bytes),
            Kind::Get(reply) => match reply {
                Some(Message::GetReply { value: Some(v), .. }) => resp::write_bulk(out, &v),
                Some(Message::GetReply { value: None, .. }) => resp::write_null(out),
                other => write_failure(out, other.as_ref()),
            },
            Kind::Set(reply) => match reply {
                Some(Message::PutReply { .. }) => resp::write_simple(out, "OK"),
                other => write_failure(out, other.as_ref()),
            },
            Kind::Count { error: Some(e), .. } | Kind::MSet { error: Some(e) } => resp::write_error(out, &e),
            Kind::Count { n, error: None } => resp::write_integer(out, n),
            Kind::MSet { error: None } => resp::write_simple(out, "OK"),
            Kind::MGet(replies) => {
                // Redis answers MGET with nulls for keys it cannot read; a failed read here
                // fails the whole command instead, so a missing key and an unreachable one
                // are never confused.
                if let Some(failed) = replies
                    .iter()
                    .find(|r| !matches!(r, Some(Message::GetReply { .. })))
                {
                    return write_failure(out, failed.as_ref());
                }
                resp::write_array_len(out, replies.len());
                for reply in replies {
                    match reply {
                        Some(Message::GetReply { value: Some(v), .. }) => resp::write_bulk(out, &v),
                        _ => resp::write_null(out),
                    }
                }
            }
            Kind::DbSize(reply) => match reply {
                Some(Message::Stats { counters }) => {
                    let keys = counter(&counters, "keys_primary").or_else(|| counter(&counters, "keys"));
                    resp::write_integer(out, keys.unwrap_or(0) as i64)
                }
                other => write_failure(out, other.as_ref()),
            },
            Kind::Info {
                section,
                server,
                info,
                stats,
                error,
            } => match (info, stats, error) {
                (Some(info), Some(stats), None) => {
                    let text = info_text(&section, &server, &info, &stats);
                    resp::write_bulk(out, text.as_bytes())
                }
                (_, _, Some(e)) => resp::write_error(out, &e),
                _ => resp::write_error(out, "ERR no reply from the node"),
            },
        }
    }
}

/// The error reply for a core reply that is not the expected one.
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

fn counter(counters: &[(String, u64)], name: &str) -> Option<u64> {
    counters.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

/// Whether INFO with `asked` includes `section` (Redis: no argument and `default` give the
/// usual sections, `all` and `everything` all of them).
fn wants_section(asked: &str, section: &str) -> bool {
    matches!(asked, "default" | "all" | "everything") || asked == section
}

fn server_lines(facts: &Facts) -> String {
    let mut s = String::from("# Server\r\n");
    let _ = write!(
        s,
        "redis_version:{REDIS_VERSION}\r\nchordkv_version:{}\r\nredis_mode:standalone\r\n\
         os:{} {}\r\narch_bits:{}\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\
         uptime_in_days:{}\r\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH,
        usize::BITS,
        std::process::id(),
        facts.resp_addr.port(),
        facts.started.elapsed().as_secs(),
        facts.started.elapsed().as_secs() / 86_400,
    );
    s
}

/// INFO's text: `# Server`, `# Replication`, `# Keyspace` and `# chordkv`, as asked.
fn info_text(section: &str, server: &str, info: &NodeInfo, stats: &[(String, u64)]) -> String {
    let mut s = String::new();
    if wants_section(section, "server") {
        s.push_str(server);
        s.push_str("\r\n");
    }
    if wants_section(section, "replication") {
        s.push_str("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\r\n");
    }
    if wants_section(section, "keyspace") {
        let keys = counter(stats, "keys_primary").unwrap_or(info.keys);
        let _ = write!(s, "# Keyspace\r\ndb0:keys={keys},expires=0,avg_ttl=0\r\n\r\n");
    }
    if wants_section(section, "chordkv") {
        let addrs = |nodes: &[NodeRef]| {
            nodes
                .iter()
                .map(|n| n.addr.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let status = match info.status {
            NodeStatus::Joining => "joining",
            NodeStatus::Active => "active",
            NodeStatus::Leaving => "leaving",
        };
        let _ = write!(
            s,
            "# chordkv\r\nnode_id:{}\r\nnode_addr:{}\r\nstatus:{status}\r\npredecessor:{}\r\n\
             successor_list:{}\r\nrouting_table:{}\r\nrouting_table_size:{}\r\nkeys_stored:{}\r\n",
            info.node.id,
            info.node.addr,
            info.predecessor
                .map_or_else(|| "-".to_string(), |p| p.addr.to_string()),
            addrs(&info.successors),
            addrs(&info.fingers),
            info.fingers.len(),
            info.keys,
        );
        let coordinated = counter(stats, "ops_coordinated").unwrap_or(0);
        let hops = counter(stats, "hops_total").unwrap_or(0);
        if coordinated > 0 {
            let _ = write!(s, "hops_mean:{:.3}\r\n", hops as f64 / coordinated as f64);
        }
        for (name, value) in stats {
            let _ = write!(s, "{name}:{value}\r\n");
        }
    }
    s
}

/// One `COMMAND` entry: name, arity, flags, first key, last key, step.
fn command_entry(out: &mut Vec<u8>, c: &CommandSpec) {
    let (name, arity, flags, first, last, step) = *c;
    resp::write_array_len(out, 6);
    resp::write_bulk(out, name.as_bytes());
    resp::write_integer(out, arity);
    resp::write_array_len(out, flags.len());
    for f in flags {
        resp::write_simple(out, f);
    }
    resp::write_integer(out, first);
    resp::write_integer(out, last);
    resp::write_integer(out, step);
}

/// A decimal integer argument, as Redis reads one.
fn parse_int(arg: &[u8]) -> Option<i64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chord::{Config, Output};
    use crate::store::{self, MemoryStore, Store};

    /// A single-node ring driven by hand, with the session between the bytes and the core: the
    /// core's replies are held back and delivered in any order the test chooses.
    struct Rig {
        node: Node,
        store: MemoryStore,
        session: RespSession,
        facts: Facts,
        input: BytesMut,
        out: Vec<u8>,
        held: Vec<Frame>,
    }

    const TO: ReplyTo = ReplyTo(9);

    impl Rig {
        fn new() -> Rig {
            let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
            let mut node = Node::new(
                NodeRef::from_addr(addr),
                Config::with_stabilize_interval_ms(100),
                0,
            );
            node.create(0);
            Rig {
                node,
                store: MemoryStore::new(),
                session: RespSession::new(9, "127.0.0.1:40000".parse().unwrap()),
                facts: Facts {
                    resp_addr: "127.0.0.1:6379".parse().unwrap(),
                    started: Instant::now(),
                },
                input: BytesMut::new(),
                out: Vec::new(),
                held: Vec::new(),
            }
        }

        /// Feeds bytes and runs every whole command; the core's replies are held.
        fn send(&mut self, bytes: &[u8]) {
            self.input.extend_from_slice(bytes);
            while self.session.next_command(
                1,
                &mut self.node,
                TO,
                &mut self.input,
                &mut self.out,
                &self.facts,
            ) == Step::Command
            {
                self.run_core();
            }
        }

        /// Runs the core's store ops and holds its replies.
        fn run_core(&mut self) {
            while let Some(output) = self.node.poll_output() {
                match output {
                    Output::Store { id, op } => {
                        let result = store::execute(&self.store as &dyn Store, op);
                        self.node.store_done(1, id, result);
                    }
                    Output::Reply { to, frame } => {
                        assert_eq!(to, TO);
                        self.held.push(frame);
                    }
                    Output::Send { .. } | Output::Left => {}
                }
            }
        }

        /// Delivers the held replies, last first.
        fn deliver_reversed(&mut self) {
            while let Some(frame) = self.held.pop() {
                self.session.on_reply(frame, &mut self.out);
            }
        }

        fn take_out(&mut self) -> String {
            String::from_utf8(std::mem::take(&mut self.out)).unwrap()
        }
    }

    #[test]
    fn replies_delivered_out_of_order_are_written_in_command_order() {
        let mut rig = Rig::new();
        rig.send(b"SET a 1\r\nSET b 2\r\n");
        rig.deliver_reversed();
        assert_eq!(rig.take_out(), "+OK\r\n+OK\r\n");

        // An immediate answer (PING) between keyed commands waits for the ones before it.
        rig.send(b"GET a\r\nPING\r\nMGET b nope a\r\nEXISTS a b nope a\r\nDEL b nope\r\nGET b\r\n");
        assert_eq!(rig.take_out(), "", "nothing is written before the first reply");
        rig.deliver_reversed();
        assert_eq!(
            rig.take_out(),
            "$1\r\n1\r\n+PONG\r\n*3\r\n$1\r\n2\r\n$-1\r\n$1\r\n1\r\n:3\r\n:1\r\n$-1\r\n"
        );
        assert!(!rig.session.wants_close());
    }

    #[test]
    fn quit_and_protocol_errors_close_after_the_replies_before_them() {
        let mut rig = Rig::new();
        rig.send(b"SET k v\r\nQUIT\r\nPING\r\n");
        assert_eq!(rig.take_out(), "");
        assert!(!rig.session.wants_close(), "SET is still waiting");
        rig.deliver_reversed();
        assert_eq!(rig.take_out(), "+OK\r\n+OK\r\n", "PING after QUIT is not run");
        assert!(rig.session.wants_close());

        let mut rig = Rig::new();
        rig.send(b"GET k\r\n*1\r\n:1\r\nPING\r\n");
        rig.deliver_reversed();
        assert_eq!(
            rig.take_out(),
            "$-1\r\n-ERR Protocol error: expected '$', got ':'\r\n"
        );
        assert!(rig.session.wants_close());
    }

    #[test]
    fn input_waits_at_the_in_flight_limit() {
        let mut rig = Rig::new();
        let mut many = Vec::new();
        for i in 0..MAX_REQUESTS_IN_FLIGHT + 10 {
            many.extend_from_slice(format!("GET k{i}\r\n").as_bytes());
        }
        rig.send(&many);
        assert_eq!(rig.held.len(), MAX_REQUESTS_IN_FLIGHT);
        assert!(!rig.input.is_empty(), "the rest waits in the buffer");
        assert!(!rig.session.take_unblocked(), "nothing drained yet");
        let first = rig.held.remove(0);
        rig.session.on_reply(first, &mut rig.out);
        assert!(rig.session.take_unblocked());
        rig.send(b"");
        assert_eq!(rig.held.len(), MAX_REQUESTS_IN_FLIGHT);
    }

    #[test]
    fn server_commands() {
        let mut rig = Rig::new();
        rig.send(b"ECHO hi\r\nSELECT 0\r\nSELECT 3\r\nCLIENT SETNAME me\r\nCLIENT GETNAME\r\n");
        assert_eq!(
            rig.take_out(),
            "$2\r\nhi\r\n+OK\r\n-ERR DB index is out of range\r\n+OK\r\n$2\r\nme\r\n"
        );
        rig.send(b"HELLO 3\r\nSET k v NX\r\nset k v px 5\r\nNOPE x\r\nGET\r\n");
        assert_eq!(
            rig.take_out(),
            "-NOPROTO sorry, this protocol version is not supported\r\n\
             -ERR SET NX and XX are not supported: chordkv has no atomic conditional write\r\n\
             -ERR SET EX, PX, EXAT and PXAT are not supported: chordkv keys do not expire\r\n\
             -ERR unknown command 'NOPE', with args beginning with: 'x' \r\n\
             -ERR wrong number of arguments for 'get' command\r\n"
        );
        rig.send(b"SET k v\r\nDBSIZE\r\nINFO\r\n");
        rig.held.sort_by_key(|f| f.request_id);
        rig.held.reverse();
        rig.deliver_reversed();
        let out = rig.take_out();
        assert!(out.starts_with("+OK\r\n:1\r\n$"), "{out}");
        for line in [
            "# Server\r\n",
            "tcp_port:6379\r\n",
            "db0:keys=1,",
            "# chordkv\r\n",
            "status:active\r\n",
        ] {
            assert!(out.contains(line), "INFO lacks {line:?}: {out}");
        }
    }
}
