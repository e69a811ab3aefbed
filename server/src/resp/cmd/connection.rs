//! Redis' *connection* group: PING, ECHO, SELECT, HELLO, AUTH, QUIT and CLIENT. None of them
//! asks the core anything; what they know of the connection is its [`Client`]:
//!
//! ```text
//!  PING [msg]        ─► +PONG, or msg as a bulk string
//!  ECHO msg          ─► msg
//!  SELECT 0          ─► +OK (the only database)
//!  HELLO [2|3 …]     ─► the connection speaks RESP2 or RESP3 from here on; the server map
//!                       (a map in RESP3, a flat array in RESP2); HELLO 3 AUTH user pass
//!                       logs in first
//!  AUTH [user] pass  ─► +OK as `user` (`default` when not named), -WRONGPASS, or without
//!                       credentials configured the error Redis gives then
//!  QUIT              ─► +OK, then the connection closes
//!  RESET             ─► +RESET: RESP2, no name, logged out
//!  CLIENT SETNAME …  ─► the Client's name, id and address
//!  CLIENT LIST       ─► every RESP client of the node (the loop's rows in Facts)
//!  CLIENT KILL …     ─► the loop closes the clients named (ID, ADDR, LADDR, SKIPME; or the
//!                       old form, one address)
//! ```
//!
//! Redis' pages: redis.io/docs/latest/commands/{ping,echo,select,hello,auth,quit,client-*}.

use std::net::SocketAddr;

use bytes::Bytes;
use chordkv_protocol::resp::{self, Proto};

use super::super::REDIS_VERSION;
use super::{parse_int, Cx, Translation};
use crate::auth::Session;

/// What Redis' AUTH and HELLO AUTH answer when no password is configured.
const NO_PASSWORD: &str = "ERR AUTH <password> called without any password configured for the \
                           default user. Are you sure your configuration is correct?";

/// One connection as CLIENT and HELLO see it.
pub(crate) struct Client {
    /// The connection's id (its event-loop token), for `CLIENT ID`.
    id: u64,
    peer: SocketAddr,
    /// Set by `CLIENT SETNAME` or `HELLO ... SETNAME`.
    name: Option<Bytes>,
    /// The user logged in with AUTH or HELLO AUTH.
    pub session: Option<Session>,
    /// RESP2 until `HELLO 3`.
    pub proto: Proto,
    /// After MULTI, until EXEC or DISCARD.
    pub multi: Option<super::transactions::Multi>,
    /// The keys WATCH read, with their versions, until EXEC, DISCARD, UNWATCH or RESET.
    pub watched: super::transactions::Watched,
    /// Set by WATCH: decode no further command until every reply asked so far is in (the
    /// versions read must be known when a later EXEC is translated).
    pub await_replies: bool,
}

impl Client {
    pub fn new(id: u64, peer: SocketAddr) -> Client {
        Client {
            id,
            peer,
            name: None,
            session: None,
            proto: Proto::Resp2,
            multi: None,
            watched: Vec::new(),
            await_replies: false,
        }
    }
}

/// Logs `client` in as `user`: `None` when it worked, else the error to answer.
fn log_in(cx: &mut Cx<'_>, user: &[u8], password: &[u8]) -> Option<Translation> {
    let Some(users) = &cx.facts.users else {
        return Some(Translation::error(NO_PASSWORD));
    };
    match users.login(&String::from_utf8_lossy(user), password) {
        Ok(session) => {
            cx.client.session = Some(session);
            None
        }
        Err(text) => Some(Translation::error(text)),
    }
}

/// `PING [message]`.
pub(crate) fn ping(rest: &mut [Bytes], _: &mut Cx<'_>) -> Translation {
    match rest {
        [] => Translation::simple("PONG"),
        [msg] => Translation::bulk(msg),
        _ => Translation::wrong_arity("ping"),
    }
}

/// `ECHO message`.
pub(crate) fn echo(rest: &mut [Bytes], _: &mut Cx<'_>) -> Translation {
    match rest {
        [msg] => Translation::bulk(msg),
        _ => Translation::wrong_arity("echo"),
    }
}

/// `SELECT index`: only database 0 exists.
pub(crate) fn select(rest: &mut [Bytes], _: &mut Cx<'_>) -> Translation {
    match rest.first().map(|index| parse_int(index)) {
        Some(Some(0)) => Translation::simple("OK"),
        Some(Some(_)) => Translation::error("ERR DB index is out of range"),
        _ => Translation::error("ERR value is not an integer or out of range"),
    }
}

/// `AUTH [username] password`: `default` when no user is named.
pub(crate) fn auth(rest: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    let (user, password) = match rest {
        [password] => (&b"default"[..], password),
        [user, password] => (&user[..], password),
        _ => return Translation::error("ERR syntax error"),
    };
    log_in(cx, user, password).unwrap_or_else(|| Translation::simple("OK"))
}

/// `RESET`: the connection as it was when it connected: RESP2, no name, logged out (the
/// default user, when no credentials are configured); answers `+RESET`.
pub(crate) fn reset(_: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    let client = &mut *cx.client;
    client.proto = Proto::Resp2;
    client.name = None;
    client.session = None;
    client.multi = None;
    client.watched.clear();
    sync_row(cx);
    Translation::simple("RESET")
}

/// `QUIT`: `+OK`, then the connection closes.
pub(crate) fn quit(_: &mut [Bytes], _: &mut Cx<'_>) -> Translation {
    let mut reply = Vec::new();
    resp::write_ok(&mut reply);
    Translation::Close(reply)
}

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`: switches the connection to RESP2 or
/// RESP3 (`protover` 2 or 3; none keeps the current one) once every option is accepted, and
/// answers the server map in the new version (a map in RESP3, a flat array in RESP2).
pub(crate) fn hello(rest: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    let mut proto = cx.client.proto;
    if let Some(version) = rest.first() {
        proto = match parse_int(version) {
            Some(2) => Proto::Resp2,
            Some(3) => Proto::Resp3,
            Some(_) => return Translation::error("NOPROTO unsupported protocol version"),
            None => return Translation::error("ERR Protocol version is not an integer or out of range"),
        };
    }
    let mut options = rest.iter().skip(1);
    while let Some(option) = options.next() {
        let o = option.to_ascii_uppercase();
        match (&o[..], options.next()) {
            (b"SETNAME", Some(name)) => cx.client.name = Some(name.clone()),
            (b"AUTH", Some(user)) => {
                let Some(password) = options.next() else {
                    return Translation::error("ERR Syntax error in HELLO option 'AUTH'");
                };
                if let Some(error) = log_in(cx, user, password) {
                    return error;
                }
            }
            _ => {
                let o = String::from_utf8_lossy(option).into_owned();
                return Translation::error(&format!("ERR Syntax error in HELLO option '{o}'"));
            }
        }
    }
    cx.client.proto = proto;
    sync_row(cx);
    let mut reply = Vec::new();
    resp::write_map_len_in(&mut reply, 7, proto);
    for (k, v) in [("server", "chordkv"), ("version", REDIS_VERSION)] {
        resp::write_bulk(&mut reply, k.as_bytes());
        resp::write_bulk(&mut reply, v.as_bytes());
    }
    resp::write_bulk(&mut reply, b"proto");
    resp::write_integer(&mut reply, proto.version());
    resp::write_bulk(&mut reply, b"id");
    resp::write_integer(&mut reply, cx.client.id as i64);
    for (k, v) in [("mode", "standalone"), ("role", "master")] {
        resp::write_bulk(&mut reply, k.as_bytes());
        resp::write_bulk(&mut reply, v.as_bytes());
    }
    resp::write_bulk(&mut reply, b"modules");
    resp::write_array_len(&mut reply, 0);
    Translation::Reply(reply)
}

/// Writes this client's name and protocol into its row of CLIENT LIST.
fn sync_row(cx: &mut Cx<'_>) {
    if let Some(row) = cx.facts.client_rows.borrow_mut().get_mut(&cx.client.id) {
        row.name = cx.client.name.clone();
        row.proto = cx.client.proto;
    }
}

/// This client's CLIENT INFO / LIST line, from its own state.
fn own_line(cx: &Cx<'_>) -> String {
    let client = &*cx.client;
    let name = client
        .name
        .as_deref()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let since = cx
        .facts
        .client_rows
        .borrow()
        .get(&client.id)
        .map(|r| r.since_micros);
    let age = since.map_or(0, |s| cx.facts.unix_micros.get().saturating_sub(s) / 1_000_000);
    format!(
        "id={} addr={} laddr={} name={name} age={age} flags=N db=0 resp={}\n",
        client.id,
        client.peer,
        cx.facts.resp_addr,
        client.proto.version()
    )
}

/// `CLIENT KILL addr:port` (the old form): `+OK`, or an error when no client has that address.
/// The caller itself is closed after the reply.
fn kill_by_address(cx: &mut Cx<'_>, addr: &[u8]) -> Translation {
    let addr = String::from_utf8_lossy(addr);
    if cx.client.peer.to_string() == addr {
        return Translation::Close(b"+OK\r\n".to_vec());
    }
    let found = cx
        .facts
        .client_rows
        .borrow()
        .iter()
        .find(|(_, row)| row.addr.to_string() == addr)
        .map(|(id, _)| *id);
    match found {
        Some(id) => {
            cx.facts.to_kill.borrow_mut().push(id);
            Translation::simple("OK")
        }
        None => Translation::error("ERR No such client"),
    }
}

/// `CLIENT KILL <filter> <value> ...` with `ID`, `ADDR`, `LADDR` and `SKIPME yes|no` (the
/// caller is skipped unless `SKIPME no`): the number of clients closed.
fn kill_by_filters(cx: &mut Cx<'_>, filters: &[Bytes]) -> Translation {
    let mut id: Option<u64> = None;
    let mut addr: Option<String> = None;
    let mut laddr: Option<String> = None;
    let mut skip_me = true;
    for pair in filters.chunks(2) {
        let value = String::from_utf8_lossy(&pair[1]).into_owned();
        match &pair[0].to_ascii_uppercase()[..] {
            b"ID" => match value.parse() {
                Ok(n) => id = Some(n),
                Err(_) => return Translation::error("ERR client-id should be greater than 0"),
            },
            b"ADDR" => addr = Some(value),
            b"LADDR" => laddr = Some(value),
            b"SKIPME" => match value.to_ascii_lowercase().as_str() {
                "yes" => skip_me = true,
                "no" => skip_me = false,
                _ => return Translation::error("ERR syntax error"),
            },
            _ => return Translation::error("ERR syntax error"),
        }
    }
    let local = cx.facts.resp_addr.to_string();
    let matches = |cid: u64, peer: &str| {
        id.is_none_or(|i| i == cid)
            && addr.as_deref().is_none_or(|a| a == peer)
            && laddr.as_deref().is_none_or(|l| l == local)
    };
    let me = cx.client.id;
    let others: Vec<u64> = cx
        .facts
        .client_rows
        .borrow()
        .iter()
        .filter(|(cid, row)| **cid != me && matches(**cid, &row.addr.to_string()))
        .map(|(cid, _)| *cid)
        .collect();
    let kill_me = !skip_me && matches(me, &cx.client.peer.to_string());
    let count = others.len() as i64 + i64::from(kill_me);
    cx.facts.to_kill.borrow_mut().extend(others);
    if kill_me {
        let mut reply = Vec::new();
        resp::write_integer(&mut reply, count);
        return Translation::Close(reply);
    }
    Translation::integer(count)
}

/// `CLIENT SETNAME|GETNAME|ID|INFO|LIST|KILL`, and what client libraries send as they connect
/// (`SETINFO`, `NO-EVICT`, `NO-TOUCH`, `REPLY ON`), which is acknowledged.
pub(crate) fn client(rest: &mut [Bytes], cx: &mut Cx<'_>) -> Translation {
    let rest: &[Bytes] = rest;
    let Some(first) = rest.first() else {
        return Translation::wrong_arity("client");
    };
    let client = &mut *cx.client;
    let sub = first.to_ascii_uppercase();
    match (&sub[..], rest) {
        (b"SETNAME", [_, name]) => {
            if name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
                return Translation::error(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            client.name = (!name.is_empty()).then(|| name.clone());
            sync_row(cx);
            Translation::simple("OK")
        }
        (b"GETNAME", [_]) => match &client.name {
            Some(name) => Translation::bulk(name),
            None => Translation::null(client.proto),
        },
        (b"ID", [_]) => Translation::integer(client.id as i64),
        (b"INFO", [_]) => {
            let mut reply = Vec::new();
            resp::write_verbatim_in(&mut reply, own_line(cx).as_bytes(), cx.client.proto);
            Translation::Reply(reply)
        }
        (b"LIST", _) => {
            // Every client the loop lists, this one from its own state (the freshest).
            let me = cx.client.id;
            let mut text = String::new();
            let ids: Vec<u64> = cx.facts.client_rows.borrow().keys().copied().collect();
            let mut mine_written = false;
            for id in ids {
                if id == me {
                    text.push_str(&own_line(cx));
                    mine_written = true;
                } else if let Some(line) = cx.facts.client_line(id) {
                    text.push_str(&line);
                }
            }
            if !mine_written {
                text.push_str(&own_line(cx));
            }
            let mut reply = Vec::new();
            resp::write_verbatim_in(&mut reply, text.as_bytes(), cx.client.proto);
            Translation::Reply(reply)
        }
        (b"KILL", [_, addr]) => kill_by_address(cx, addr),
        (b"KILL", [_, filters @ ..]) if filters.len() % 2 == 0 => kill_by_filters(cx, filters),
        (b"SETINFO", [_, _, _]) | (b"NO-EVICT", [_, _]) | (b"NO-TOUCH", [_, _]) => Translation::simple("OK"),
        (b"REPLY", [_, on]) if on.eq_ignore_ascii_case(b"ON") => Translation::simple("OK"),
        (b"HELP", [_]) => super::help_lines(&[
            "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "ID",
            "    Return the ID of the current connection.",
            "INFO",
            "    Return information about the current client connection.",
            "LIST",
            "    Return information about the RESP client connections of this node.",
            "KILL <ip:port> | KILL <filter> <value> [<filter> <value> ...]",
            "    Kill connections; filters: ID, ADDR, LADDR, SKIPME yes|no.",
            "SETNAME <name>",
            "    Assign the name <name> to the current connection.",
            "GETNAME",
            "    Return the name of the current connection.",
            "SETINFO, NO-EVICT, NO-TOUCH, REPLY ON",
            "    Accepted for client libraries; they change nothing.",
        ]),
        (b"SETNAME" | b"GETNAME" | b"ID" | b"INFO" | b"KILL" | b"SETINFO" | b"NO-EVICT" | b"NO-TOUCH", _) => {
            let sub = String::from_utf8_lossy(&sub).to_ascii_lowercase();
            Translation::error(&format!(
                "ERR wrong number of arguments for 'client|{sub}' command"
            ))
        }
        _ => {
            let sub = String::from_utf8_lossy(first).into_owned();
            Translation::error(&format!("ERR unknown subcommand '{sub}'. Try CLIENT HELP."))
        }
    }
}
