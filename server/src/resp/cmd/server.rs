//! Redis' *server* group: INFO, DBSIZE, COMMAND, CONFIG.
//!
//! INFO and DBSIZE report state the core owns, so they ask the core for it with the requests
//! a binary client's `chordkv info` sends, and wait in the reply order like any GET:
//!
//! ```text
//!  DBSIZE           ─► RingCommand Count   ─► :n, the live keys of the whole ring (each
//!                                             member counts its primary range)
//!  FLUSHALL [ASYNC|SYNC], FLUSHDB
//!                   ─► RingCommand Flush   ─► +OK once every member has replaced its keys
//!                                             with tombstones (no flushed key comes back)
//!  FUNCTION FLUSH   ─► +OK: chordkv runs no functions, so there are none to flush
//!  INFO [section]   ─► GetInfo, GetStats   ─► $<len> text (see super::super::info), with the
//!                                             `# Server`, `# Clients`, `# Memory` and `# Stats`
//!                                             lines of the event loop's Facts
//!  COMMAND [...]    ─► answered from the command table (super::COMMANDS)
//!  CONFIG GET p …   ─► answered from a fixed list and the node's limits
//!  TIME             ─► the event loop's clock
//! ```
//!
//! Redis' pages: redis.io/docs/latest/commands/{info,dbsize,command,config-get}.

use bytes::Bytes;
use chordkv_protocol::resp::{self, Proto};
use chordkv_protocol::{Message, NodeInfo, RangeCommand};

use super::super::info::{info_text, local_lines, server_lines, wants_section};
use super::{error_text, find, Cx, Gather, OneReply, Spec, Translation, COMMANDS};

/// `INFO [section]`: `server`, `replication`, `keyspace`, `chordkv`, or `default`/`all`/
/// `everything` for them all (the default).
pub(crate) fn info(rest: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    let section = match rest {
        [] => "default".to_string(),
        [s, ..] => String::from_utf8_lossy(s).to_ascii_lowercase(),
    };
    // The `# Server`, `# Clients`, `# Memory` and `# Stats` lines come from the loop's facts,
    // out of the reply's reach later.
    let mut server = if wants_section(&section, "server") {
        server_lines(cx.facts) + "\r\n"
    } else {
        String::new()
    };
    server.push_str(&local_lines(cx.facts, &section));
    cx.ask(Message::GetInfo);
    cx.ask(Message::GetStats);
    Translation::wait(Box::new(Info {
        section,
        server,
        info: None,
        stats: None,
        error: None,
    }))
}

/// `DBSIZE`: the live keys of the whole ring (INFO's `# Keyspace` keeps this node's count).
pub(crate) fn dbsize(_: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    cx.ask(Message::RingCommand {
        command: RangeCommand::Count,
    });
    Translation::wait(OneReply::new(write_ring_count))
}

/// `FLUSHALL [ASYNC | SYNC]` and `FLUSHDB [ASYNC | SYNC]` (one database): every key of the
/// ring is deleted, member by member, before `+OK`.
pub(crate) fn flushall(rest: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    match rest {
        [] => {}
        [mode] if mode.eq_ignore_ascii_case(b"ASYNC") || mode.eq_ignore_ascii_case(b"SYNC") => {}
        _ => return Translation::error("ERR syntax error"),
    }
    cx.ask(Message::RingCommand {
        command: RangeCommand::Flush,
    });
    Translation::wait(OneReply::new(write_flushed))
}

/// `FUNCTION FLUSH` answers `+OK` (chordkv runs no functions, so none is stored), as do
/// `FUNCTION LIST` (an empty list); the rest of `FUNCTION` is refused.
pub(crate) fn function(rest: &mut [Bytes], _: &mut Cx<'_>) -> Translation {
    let sub = rest.first().map(|s| s.to_ascii_uppercase());
    match sub.as_deref() {
        Some(b"FLUSH") => Translation::simple("OK"),
        Some(b"LIST") => Translation::Reply(b"*0\r\n".to_vec()),
        _ => Translation::error("ERR chordkv does not run Redis functions (FUNCTION FLUSH and LIST only)"),
    }
}

fn write_ring_count(reply: &Message, _: Proto, out: &mut Vec<u8>) -> bool {
    let Message::RingCommandReply { value } = reply else {
        return false;
    };
    resp::write_integer(out, *value as i64);
    true
}

fn write_flushed(reply: &Message, _: Proto, out: &mut Vec<u8>) -> bool {
    if !matches!(reply, Message::RingCommandReply { .. }) {
        return false;
    }
    resp::write_ok(out);
    true
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND LIST`, `COMMAND INFO name ...`, `COMMAND DOCS`.
pub(crate) fn command(rest: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    let proto = cx.proto();
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
        Some(b"HELP") => {
            return super::help_lines(&[
                "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "(no subcommand)",
                "    Return details about all commands chordkv serves.",
                "COUNT",
                "    Return the number of commands.",
                "LIST",
                "    Return the names of the commands.",
                "INFO <command-name> [<command-name> ...]",
                "    Return details about the named commands.",
                "DOCS [<command-name> ...]",
                "    Return the summary, first version and group of the named commands (or of all).",
            ])
        }
        Some(b"LIST") => {
            resp::write_array_len(&mut reply, COMMANDS.len());
            for c in COMMANDS {
                resp::write_bulk(&mut reply, c.name.as_bytes());
            }
        }
        Some(b"INFO") => {
            let names = &rest[1..];
            resp::write_array_len(&mut reply, names.len());
            for name in names {
                match find(name) {
                    Some(c) => command_entry(&mut reply, c),
                    None => resp::write_null_array_in(&mut reply, proto),
                }
            }
        }
        Some(b"DOCS") => super::docs::write_docs(&rest[1..], proto, &mut reply),
        Some(other) => {
            let other = String::from_utf8_lossy(other).into_owned();
            return Translation::error(&format!("ERR unknown subcommand '{other}'. Try COMMAND HELP."));
        }
    }
    Translation::Reply(reply)
}

/// One `COMMAND` entry: name, arity, flags, first key, last key, step.
fn command_entry(out: &mut Vec<u8>, c: &Spec) {
    let (first, last, step) = c.keys;
    resp::write_array_len(out, 6);
    resp::write_bulk(out, c.name.as_bytes());
    resp::write_integer(out, c.arity);
    resp::write_array_len(out, c.flags.len());
    for f in c.flags {
        resp::write_simple(out, f);
    }
    resp::write_integer(out, first);
    resp::write_integer(out, last);
    resp::write_integer(out, step);
}

/// `TIME`: seconds and microseconds since the Unix epoch, as two bulk strings (the event
/// loop's clock, read just before the command).
pub(crate) fn time(_: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    let micros = cx.facts.unix_micros.get();
    let mut reply = Vec::new();
    resp::write_array_len(&mut reply, 2);
    resp::write_bulk(&mut reply, (micros / 1_000_000).to_string().as_bytes());
    resp::write_bulk(&mut reply, (micros % 1_000_000).to_string().as_bytes());
    Translation::Reply(reply)
}

/// `CONFIG GET pattern ...`: the parameters benchmark tools and clients ask for, with values
/// that describe chordkv (nothing saved to disk, one database, no eviction) and its limits
/// (`maxclients`: `--max-clients`; `proto-max-bulk-len`: `--max-value-bytes`;
/// `client-query-buffer-limit`; `timeout`: `--idle-timeout-secs`);
/// `*` lists them all.
pub(crate) fn config(rest: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    let max_clients = cx.facts.max_clients.to_string();
    let max_bulk = cx.facts.max_value_bytes.to_string();
    let query_buffer = cx.facts.query_buffer_bytes.to_string();
    let timeout = cx.facts.idle_timeout_secs.to_string();
    let params: [(&str, &str); 8] = [
        ("save", ""),
        ("appendonly", "no"),
        ("databases", "1"),
        ("maxmemory", "0"),
        ("maxclients", &max_clients),
        ("proto-max-bulk-len", &max_bulk),
        ("client-query-buffer-limit", &query_buffer),
        ("timeout", &timeout),
    ];
    let [sub, patterns @ ..] = rest else {
        return Translation::wrong_arity("config");
    };
    if !sub.eq_ignore_ascii_case(b"GET") {
        let sub = String::from_utf8_lossy(sub).into_owned();
        return Translation::error(&format!("ERR CONFIG {sub} is not supported by chordkv"));
    }
    if patterns.is_empty() {
        return Translation::wrong_arity("config|get");
    }
    let mut found: Vec<(&str, &str)> = Vec::new();
    for pattern in patterns {
        for (name, value) in params {
            // Redis matches the names as glob patterns, without regard to case.
            let pattern = pattern.to_ascii_lowercase();
            if chordkv_core::command::glob_match(&pattern, name.as_bytes())
                && !found.iter().any(|(n, _)| *n == name)
            {
                found.push((name, value));
            }
        }
    }
    let mut reply = Vec::new();
    resp::write_map_len_in(&mut reply, found.len(), cx.proto());
    for (name, value) in found {
        resp::write_bulk(&mut reply, name.as_bytes());
        resp::write_bulk(&mut reply, value.as_bytes());
    }
    Translation::Reply(reply)
}

/// DBSIZE's answer: the core's `keys_primary` counter (`keys` from a core without it).
/// INFO's reply: the node's info and stats, written as the section asked.
pub(crate) struct Info {
    section: String,
    /// The sections the event loop knows (`# Server`, `# Clients`, `# Memory`, `# Stats`, as
    /// asked), written when the command arrived.
    server: String,
    info: Option<NodeInfo>,
    stats: Option<Vec<(String, u64)>>,
    error: Option<String>,
}

impl Gather for Info {
    fn accept(&mut self, _: usize, reply: Message) {
        match reply {
            Message::Info(i) => self.info = Some(*i),
            Message::Stats { counters } => self.stats = Some(counters),
            other => {
                if self.error.is_none() {
                    self.error = Some(error_text(&other));
                }
            }
        }
    }

    fn encode(self, out: &mut Vec<u8>, proto: Proto) {
        match (self.info, self.stats, self.error) {
            (Some(info), Some(stats), None) => {
                let text = info_text(&self.section, &self.server, &info, &stats);
                resp::write_verbatim_in(out, text.as_bytes(), proto)
            }
            (_, _, Some(e)) => resp::write_error(out, &e),
            _ => resp::write_error(out, "ERR no reply from the node"),
        }
    }
}
