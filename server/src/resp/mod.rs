//! The Redis-protocol (RESP2 and RESP3) front end: a translator between Redis commands and the core's
//! client requests, one [`RespSession`] per connection accepted on the `--resp` listener.
//!
//! Translate, then apply (mini-redis' `cmd/`: `Get::parse_frames`, then `apply`). A command is
//! decoded and *translated* into core requests, or into an answer given on the spot, without
//! the core in reach; the event loop *applies* the requests with [`Node::handle_request`], as it
//! does a binary client's frames, and routes the core's replies back to the session, which
//! puts them in command order and encodes RESP:
//!
//! ```text
//!  event loop                 session: translate                                core (Node)
//!  read ─► rbuf ─► next_command ─► resp::decode ─► cmd::translate(args)
//!                     PING, CLIENT, errors … ─► Reply(bytes)  ─► a slot (or straight out)
//!                     GET k, MSET k v …      ─► Wait(pending) ─► a slot, waiting for
//!                                               + requests       request ids first..first+n
//!  apply:  session.apply_requests ─► Node::handle_request(ReplyTo = token, frame) ─► routes
//!  pump:   Output::Reply { to: token, frame } ─► session.on_reply ─► the slot holding its id
//!                       front slots complete ─► encode RESP ─► wbuf ─► flush
//! ```
//!
//! - **Layout.** [`session`]: reply order, the in-flight limit, QUIT and protocol errors.
//!   [`cmd`]: the command table and one file per Redis command group (`strings`, `keys`,
//!   `server`, `connection`), each command a function from its arguments to a
//!   [`cmd::Translation`]. [`info`]: INFO's text. Adding a command touches its group's file
//!   and the table in `cmd/mod.rs`.
//! - **Routing.** Every key operation is a [`Message`](chordkv_protocol::Message) handed to
//!   [`Node::handle_request`], exactly as a frame from a binary client would be: the core
//!   routes it around the ring, with replication, failover and redirects behind it. A command
//!   with several keys (DEL, EXISTS, MGET, MSET) becomes one request per key and one reply
//!   built from all of theirs.
//! - **State the core owns** (INFO, DBSIZE) is asked for the same way: INFO translates into
//!   `GET_INFO` and `GET_STATS`, DBSIZE into `GET_STATS`, the requests `chordkv info` sends
//!   over the binary protocol. So the session never borrows the node, the answer is the
//!   core's own at the moment it handles the request, and a pipelined INFO takes its place
//!   in the reply order like any GET; no second path (a snapshot API, a `&Node` handed in)
//!   exists to keep in step with the binary one. What only the event loop knows (the RESP
//!   address, the start time: INFO's `# Server` lines) is a read-only [`Facts`] it passes to
//!   [`RespSession::next_command`].
//! - **Order.** Replies come out of the core in any order (a local key is answered at once, a
//!   remote one after a round trip). Each command takes a *slot* in a queue and its requests
//!   take consecutive request ids; a reply fills its slot, found by id, and slots are encoded
//!   strictly from the front. So pipelined commands are answered in the order sent. A command
//!   answered on the spot takes a slot too when others are still waiting before it.
//! - **Limits.** At most [`session::MAX_REQUESTS_IN_FLIGHT`] core requests per connection: beyond that
//!   the connection's input is not decoded until replies drain (the event loop reads it again
//!   then), so one client cannot fill the node's memory with pipelined requests. Keys over the
//!   binary protocol's [`MAX_KEY_BYTES`](chordkv_protocol::MAX_KEY_BYTES) are refused. A value
//!   over [`MAX_VALUE_BYTES`](chordkv_protocol::MAX_VALUE_BYTES) (up to Redis' own 512 MiB) is
//!   skipped as its bytes arrive and answered with the error in its place; the connection
//!   stays (closing it while the client still sends made the client see a reset instead).
//! - **Errors.** Bytes that are not RESP get Redis' `-ERR Protocol error: ...` and the
//!   connection is closed once the replies before the error have gone out; so does `QUIT`
//!   (`+OK` first). Unknown commands get Redis' `-ERR unknown command '...'` wording; a failed
//!   core request (`Message::Error`) becomes `-ERR <code>: <text>`.
//! - **Not supported, with a clear error:** `SET` with `NX`/`XX`/`GET` (the store has no atomic
//!   conditional or read-and-write put) and with `EX`/`PX`/`EXAT`/`PXAT` (keys never expire);
//!   databases other than 0; transactions (MULTI queues, EXEC refuses, nothing queued is
//!   ever applied: [`cmd`]'s `transactions`). `MSET` and multi-key `DEL` are not atomic: each
//!   key is its own write.
//! - **RESP3.** `HELLO 3` switches the connection to RESP3 (`HELLO 2` back); each slot keeps
//!   the version its command arrived in and [`cmd::Gather::encode`] writes its reply in it:
//!   nulls, maps and verbatim strings as Redis 7 sends them (`chordkv_protocol::resp`).
//! - **DBSIZE** is this node's count of live keys it is *primary* for (`keys_primary` of
//!   GET_STATS), like `DBSIZE` on one Redis Cluster master: the sum over the nodes is the
//!   ring's count. INFO's keyspace line gives the same figure, and its `# chordkv` section the
//!   node's ring neighbours and every counter of GET_STATS.
//!
//! [`Node::handle_request`]: chordkv_core::chord::Node::handle_request

mod cmd;
mod info;
mod session;

pub(crate) use info::{ClientRow, Facts};
pub(crate) use session::{RespSession, Step};

/// The Redis version INFO and HELLO report: the dialect of the commands answered.
pub const REDIS_VERSION: &str = "7.0.0";
