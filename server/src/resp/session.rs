//! One RESP connection's session: decodes its commands, has each translated ([`super::cmd`]),
//! keeps their core requests for the event loop to apply ([`RespSession::apply_requests`]), and writes
//! the replies the loop brings back ([`RespSession::on_reply`]) in the order the commands came.
//! It never sees the core.
//!
//! Each command takes a *slot* at the back of a queue, and its requests the consecutive
//! request ids `first..first + sent`. Ids grow along the queue, so the slot of a reply's id is
//! found by binary search (it is usually the front one); slots are written from the front,
//! each once all its replies are in (`got == sent`). After `GET a`, `PING`, `MGET b c`, with
//! the reply for `c` in:
//!
//! ```text
//!  front ─► [GET a     first 7, sent 1, got 0, Waiting(Value)]   nothing written yet
//!           [PING      first 8, sent 0, got 0, Ready(+PONG)  ]   complete, waits for GET
//!           [MGET b c  first 8, sent 2, got 1, Waiting(Values)]
//!  reply id 7 ─► GET complete ─► $1 … and +PONG written; MGET waits for id 8
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use chordkv_protocol::resp::{self, Proto, RespError};
use chordkv_protocol::Frame;

use super::cmd::{self, Client, Cx, Gather, Pending, Requests, Translation};
use super::info::Facts;

/// Core requests one connection may have in flight before its input waits.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 4_096;

/// What [`RespSession::next_command`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A command was taken off the input (answered, or translated into core requests).
    Command,
    /// Nothing to do until more input arrives or replies drain.
    Idle,
}

/// One command's place in the reply order.
struct Slot {
    /// The request id of its first core request; the others follow it.
    first: u64,
    /// Core requests sent for it, and replies received so far.
    sent: u32,
    got: u32,
    reply: SlotReply,
    /// The RESP version the connection spoke when the command arrived (a later HELLO changes
    /// the replies of later commands only).
    proto: Proto,
}

enum SlotReply {
    /// An answer already encoded, waiting for the slots before it.
    Ready(Vec<u8>),
    /// Gathering the core's replies.
    Waiting(Pending),
}

/// The RESP state of one connection. See the module docs.
pub(crate) struct RespSession {
    client: Client,
    /// Requests translated and not yet taken by the event loop, and the next request id.
    requests: Requests,
    slots: VecDeque<Slot>,
    /// Core requests sent and not answered.
    in_flight: usize,
    /// Input decoding stopped at [`MAX_REQUESTS_IN_FLIGHT`]; the loop must read again once
    /// replies drain.
    blocked: bool,
    /// QUIT or a protocol error: decode nothing more, close once every slot is written.
    closing: bool,
    /// The connection is refused (protected mode): its first command is answered with this
    /// error, then it closes. Answering a command, rather than writing at accept and closing,
    /// lets the client read the words before the close.
    denied: Option<&'static str>,
    /// Bytes of replies ready but held behind a reply still waiting for the core: counted with
    /// the connection's unwritten output, so a client cannot pile up answers (1 MiB `ECHO`s
    /// behind one stuck `SET`) without being paused.
    held_bytes: usize,
    /// A command with a value over the maximum is being skipped as its bytes arrive (none is
    /// kept), then answered with the error; the connection stays open.
    skipping: Option<Skip>,
    /// The arguments of the command being translated, kept from command to command so that
    /// decoding one allocates no vector (dropped after a command of more than
    /// [`KEPT_ARGS_CAPACITY`] arguments: a connection keeps no large one).
    args: Vec<Bytes>,
}

/// Arguments the kept vector of a connection holds room for at most between commands.
const KEPT_ARGS_CAPACITY: usize = 16;

/// What is left to skip of a command with an over-long bulk string.
struct Skip {
    /// Bytes of the current argument's data and CRLF still to come.
    bytes_left: u64,
    /// Arguments after it, still to skip.
    args_left: usize,
    /// The error to answer once it is all skipped.
    error: String,
}

impl RespSession {
    pub fn new(id: u64, peer: SocketAddr) -> RespSession {
        RespSession {
            client: Client::new(id, peer),
            requests: Requests::new(),
            slots: VecDeque::new(),
            in_flight: 0,
            blocked: false,
            closing: false,
            denied: None,
            held_bytes: 0,
            skipping: None,
            args: Vec::new(),
        }
    }

    /// Bytes of ready replies held behind one still waiting for the core.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Refuses the connection: its first command is answered with `error` (without the `-`),
    /// then it closes.
    pub fn deny(&mut self, error: &'static str) {
        self.denied = Some(error);
    }

    /// Whether the connection should be closed now: QUIT or a protocol error was answered and
    /// every reply before it has been written.
    pub fn wants_close(&self) -> bool {
        self.closing && self.slots.is_empty()
    }

    /// Whether decoding stopped at the in-flight limit: the connection is not read until
    /// replies drain (TCP flow control then slows the client down).
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Whether the client has nothing in flight and nothing unwritten queued in the session.
    pub fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.slots.is_empty()
    }

    /// Whether decoding stopped at the in-flight limit and may go on now (reported once).
    pub fn take_unblocked(&mut self) -> bool {
        let waits = self.client.await_replies && self.in_flight > 0;
        if self.blocked && self.in_flight < MAX_REQUESTS_IN_FLIGHT && !waits {
            self.blocked = false;
            return true;
        }
        false
    }

    /// Decodes the next command in `input` and translates it: an answer goes to `out` (in
    /// order), core requests wait for the event loop's [`RespSession::apply_requests`].
    pub fn next_command(&mut self, input: &mut BytesMut, out: &mut Vec<u8>, facts: &Facts) -> Step {
        if self.closing {
            input.clear();
            return Step::Idle;
        }
        if let Some(error) = self.denied.take() {
            input.clear();
            self.protocol_error_text(error, out);
            return Step::Command;
        }
        if self.in_flight >= MAX_REQUESTS_IN_FLIGHT || (self.client.await_replies && self.in_flight > 0) {
            self.blocked = true;
            return Step::Idle;
        }
        self.client.await_replies = false;
        if self.skipping.is_some() {
            return self.skip(input, out);
        }
        let mut args = std::mem::take(&mut self.args);
        let decoded = resp::decode_limited_into(input, facts.max_value_bytes, &mut args);
        let step = self.translate_decoded(decoded, &mut args, input, out, facts);
        args.clear();
        if args.capacity() <= KEPT_ARGS_CAPACITY {
            self.args = args;
        }
        step
    }

    /// [`RespSession::next_command`]'s translation of what it decoded into `args`.
    fn translate_decoded(
        &mut self,
        decoded: Result<bool, RespError>,
        args: &mut [Bytes],
        input: &mut BytesMut,
        out: &mut Vec<u8>,
        facts: &Facts,
    ) -> Step {
        match decoded {
            Ok(true) => {}
            Ok(false) => return Step::Idle,
            Err(
                e @ RespError::BulkTooLarge {
                    len,
                    data_from,
                    args_after,
                    ..
                },
            ) => {
                input.advance(data_from);
                self.skipping = Some(Skip {
                    bytes_left: len + 2,
                    args_left: args_after,
                    error: format!("ERR {e}"),
                });
                return self.skip(input, out);
            }
            Err(e) => {
                self.protocol_error(&e, out);
                input.clear();
                return Step::Command;
            }
        };
        // `decode` never returns an empty command.
        let Some((name, rest)) = args.split_first_mut() else {
            return Step::Command;
        };
        let first = self.requests.next_rid();
        let mut cx = Cx {
            client: &mut self.client,
            facts,
            requests: &mut self.requests,
        };
        let reply = match cmd::translate(name, rest, &mut cx) {
            Translation::Reply(bytes) => SlotReply::Ready(bytes),
            Translation::Wait(pending) => SlotReply::Waiting(pending),
            Translation::Close(bytes) => {
                self.closing = true;
                SlotReply::Ready(bytes)
            }
        };
        let sent = self.requests.next_rid() - first;
        self.in_flight += sent as usize;
        self.push_slot(first, sent, reply, out);
        Step::Command
    }

    /// Skips what has arrived of a command with an over-long value (`self.skipping`): its
    /// bytes are dropped as they come, so a 100 MiB value costs no memory; once all of it is
    /// skipped, the error takes the command's place in the reply order and the next command
    /// is read as usual.
    fn skip(&mut self, input: &mut BytesMut, out: &mut Vec<u8>) -> Step {
        let Some(skip) = self.skipping.as_mut() else {
            return Step::Idle;
        };
        loop {
            let n = skip.bytes_left.min(input.len() as u64);
            input.advance(n as usize);
            skip.bytes_left -= n;
            if skip.bytes_left > 0 {
                return Step::Idle;
            }
            if skip.args_left == 0 {
                break;
            }
            match resp::bulk_header(input) {
                Ok(Some((len, used))) => {
                    input.advance(used);
                    skip.bytes_left = len + 2;
                    skip.args_left -= 1;
                }
                Ok(None) => return Step::Idle,
                Err(e) => {
                    self.skipping = None;
                    self.protocol_error(&e, out);
                    input.clear();
                    return Step::Command;
                }
            }
        }
        let error = self.skipping.take().map(|s| s.error).unwrap_or_default();
        // A command refused while a transaction is being queued aborts it, as any other error
        // in queueing does: EXEC answers EXECABORT and nothing queued is applied.
        if let Some(m) = self.client.multi.as_mut() {
            m.failed = true;
        }
        let mut reply = Vec::new();
        resp::write_error(&mut reply, &error);
        self.push_slot(self.requests.next_rid(), 0, SlotReply::Ready(reply), out);
        Step::Command
    }

    /// Hands the core requests of the commands translated since the last call to `apply`, in
    /// order, with this connection's request ids: the event loop passes each to
    /// `Node::handle_request` with the connection's token as the reply address.
    pub fn apply_requests(&mut self, apply: impl FnMut(Frame)) {
        self.requests.drain_into(apply);
    }

    fn protocol_error(&mut self, e: &RespError, out: &mut Vec<u8>) {
        self.protocol_error_text(&format!("ERR {e}"), out);
    }

    /// Answers `error` in order with the replies before it, and closes after it.
    fn protocol_error_text(&mut self, error: &str, out: &mut Vec<u8>) {
        let mut reply = Vec::new();
        resp::write_error(&mut reply, error);
        self.push_slot(self.requests.next_rid(), 0, SlotReply::Ready(reply), out);
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
        if let SlotReply::Waiting(pending) = &mut slot.reply {
            pending.accept(offset, frame.message);
        }
        self.write_ready(out);
    }

    /// Queues a command's reply behind the others, waiting for `sent` replies to requests
    /// `first..first + sent`, and writes what is complete at the front (an answer given on
    /// the spot with nothing before it goes straight out). The core may already have answered
    /// some of the requests (a local key, memory store): those replies reach
    /// [`RespSession::on_reply`] after this, through the event loop's pump, so none is missed.
    fn push_slot(&mut self, first: u64, sent: u64, reply: SlotReply, out: &mut Vec<u8>) {
        if let SlotReply::Ready(bytes) = &reply {
            self.held_bytes += bytes.len();
        }
        self.slots.push_back(Slot {
            first,
            sent: sent as u32,
            got: 0,
            reply,
            proto: self.client.proto,
        });
        self.write_ready(out);
    }

    /// Writes the complete slots at the front of the queue.
    fn write_ready(&mut self, out: &mut Vec<u8>) {
        while self.slots.front().is_some_and(|s| s.got == s.sent) {
            if let Some(slot) = self.slots.pop_front() {
                match slot.reply {
                    SlotReply::Ready(bytes) => {
                        self.held_bytes -= bytes.len();
                        out.extend_from_slice(&bytes);
                    }
                    SlotReply::Waiting(mut pending) => {
                        // WATCH's versions go to the connection as its reply is written.
                        if let Pending::Watch(w) = &mut pending {
                            self.client.watched.extend(w.take_watched());
                        }
                        pending.encode(out, slot.proto)
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use chordkv_protocol::NodeRef;

    use super::*;
    use chordkv_core::chord::{Config, Node, Output, ReplyTo};
    use chordkv_core::store::{self, MemoryStore, Store};

    /// A single-node ring driven by hand, with the session between the bytes and the core as
    /// the event loop has it: the session's requests are handed to the core, and the core's
    /// replies are held back and delivered in any order the test chooses.
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
                facts: Facts::new("127.0.0.1:6379".parse().unwrap(), None, 10_000),
                input: BytesMut::new(),
                out: Vec::new(),
                held: Vec::new(),
            }
        }

        /// Feeds bytes and runs every whole command; the core's replies are held.
        fn send(&mut self, bytes: &[u8]) {
            self.input.extend_from_slice(bytes);
            while self
                .session
                .next_command(&mut self.input, &mut self.out, &self.facts)
                == Step::Command
            {
                let node = &mut self.node;
                self.session
                    .apply_requests(|frame| node.handle_request(1, TO, frame));
                self.run_core();
            }
        }

        /// Runs the core's store ops and holds its replies.
        fn run_core(&mut self) {
            while let Some(output) = self.node.poll_output() {
                match output {
                    Output::Store { id, op, .. } => {
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

    /// `HELLO 3` switches the connection to RESP3 (redis-py 8 and node-redis 6 send it first and
    /// stopped at `-NOPROTO`): the server map is a map, nulls are `_`, INFO and CLIENT INFO are
    /// verbatim strings; `HELLO 2` switches back. A command sent before the HELLO is answered
    /// in the version it was sent in, even when its reply is encoded after.
    #[test]
    fn hello_3_speaks_resp3_until_hello_2() {
        let mut rig = Rig::new();
        // A GET waiting for the core, then HELLO 3, then another GET.
        rig.send(b"GET missing\r\nHELLO 3 SETNAME app\r\nGET missing\r\n");
        rig.deliver_reversed();
        let out = rig.take_out();
        let hello = "%7\r\n$6\r\nserver\r\n$7\r\nchordkv\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n\
                     $5\r\nproto\r\n:3\r\n$2\r\nid\r\n:9\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n\
                     $4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n";
        assert_eq!(out, format!("$-1\r\n{hello}_\r\n"));
        rig.send(b"CLIENT INFO\r\nCLIENT GETNAME\r\nCONFIG GET databases\r\nCOMMAND INFO nope\r\n");
        let out = rig.take_out();
        let line = "id=9 addr=127.0.0.1:40000 laddr=127.0.0.1:6379 name=app age=0 flags=N db=0 resp=3\n";
        assert_eq!(
            out,
            format!(
                "={}\r\ntxt:{line}\r\n$3\r\napp\r\n%1\r\n$9\r\ndatabases\r\n$1\r\n1\r\n*1\r\n_\r\n",
                line.len() + 4
            )
        );
        rig.send(b"SET k v\r\nINFO keyspace\r\nMGET k missing\r\n");
        rig.deliver_reversed();
        let out = rig.take_out();
        assert!(out.starts_with("+OK\r\n="), "{out}");
        assert!(out.contains("\r\ntxt:# Keyspace\r\n"), "{out}");
        assert!(out.ends_with("*2\r\n$1\r\nv\r\n_\r\n"), "{out}");
        // Back to RESP2; a HELLO without a version keeps the current one.
        rig.send(b"HELLO 2\r\nHELLO\r\nGET missing\r\n");
        rig.deliver_reversed();
        let out = rig.take_out();
        assert!(out.starts_with("*14\r\n"), "{out}");
        assert!(out.contains("$5\r\nproto\r\n:2\r\n"), "{out}");
        assert!(out.ends_with("$-1\r\n"), "{out}");
        assert_eq!(out.matches("*14\r\n").count(), 2, "{out}");
        // A failed HELLO changes nothing.
        rig.send(b"HELLO 3 AUTH u p\r\nGET missing\r\n");
        rig.deliver_reversed();
        let out = rig.take_out();
        assert!(out.starts_with("-ERR AUTH"), "{out}");
        assert!(out.ends_with("$-1\r\n"), "{out}");
        // RESET: RESP2 and no name again.
        rig.send(b"HELLO 3 SETNAME app\r\nRESET\r\nCLIENT GETNAME\r\n");
        let out = rig.take_out();
        assert!(out.ends_with("+RESET\r\n$-1\r\n"), "{out}");
    }

    /// A value over the node's maximum is answered with the error, not a connection reset:
    /// the command's bytes are skipped as they arrive (the session keeps none of them), nothing
    /// is written, and the next command is read as usual. Before, the decoder's protocol error
    /// closed the connection while the client was still sending, and the client saw a reset.
    #[test]
    fn a_value_over_the_maximum_is_skipped_and_refused_and_the_connection_stays() {
        let mut rig = Rig::new();
        rig.facts.max_value_bytes = 4 << 20;
        let big = (4 << 20) + 1;
        // MSET a <big> b 1: the pair after the big value is skipped too.
        rig.send(format!("*5\r\n$4\r\nMSET\r\n$1\r\na\r\n${big}\r\n").as_bytes());
        let chunk = vec![b'x'; 1 << 20];
        let mut sent = 0;
        while sent < big {
            let n = chunk.len().min(big - sent);
            rig.send(&chunk[..n]);
            sent += n;
            assert!(
                rig.input.len() <= chunk.len(),
                "the session keeps none of the value"
            );
        }
        assert_eq!(rig.take_out(), "", "no answer before the command has all arrived");
        rig.send(b"\r\n$1\r\nb\r\n$1\r\n1\r\nGET a\r\nGET b\r\nPING\r\n");
        rig.deliver_reversed();
        assert_eq!(
            rig.take_out(),
            format!(
                "-ERR value of {big} bytes is over the node's maximum of {} bytes \
                 (proto-max-bulk-len, --max-value-bytes)\r\n$-1\r\n$-1\r\n+PONG\r\n",
                big - 1
            )
        );
        assert!(rig.held.is_empty() && rig.input.is_empty());
    }

    /// MULTI queues, EXEC runs the queue at the keys' owner in one go, keys of two hash tags
    /// are refused with nothing applied, and a queueing error aborts EXEC (redis-py's default
    /// pipeline and node-redis' / ioredis' multi() saw an error after their writes had been
    /// applied when MULTI was an unknown command).
    #[test]
    fn transactions_run_at_the_owner_or_not_at_all() {
        let mut rig = Rig::new();
        rig.send(b"MULTI\r\nSET {u}a 1\r\nINCR {u}a\r\nGET {u}a\r\nMULTI\r\nEXEC\r\nGET {u}a\r\n");
        assert_eq!(rig.held.len(), 2, "one Execute and the last GET: {:?}", rig.held);
        rig.deliver_reversed();
        assert_eq!(
            rig.take_out(),
            "+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n-ERR MULTI calls can not be nested\r\n\
             *3\r\n+OK\r\n:2\r\n$1\r\n2\r\n$1\r\n2\r\n"
        );
        // A command over two tags is refused as it is queued (EXEC then aborts).
        rig.send(b"MULTI\r\nMSET {a}x 1 {b}y 2\r\nEXEC\r\nWATCH {a}x {b}y\r\n");
        assert_eq!(
            rig.take_out(),
            "+OK\r\n-CROSSSLOT Keys in request don't hash to the same slot\r\n\
             -EXECABORT Transaction discarded because of previous errors.\r\n\
             -CROSSSLOT Keys in request don't hash to the same slot\r\n"
        );
        rig.send(b"MULTI\r\nSET {a}x 1\r\nSET {b}y 2\r\nEXEC\r\nGET {a}x\r\n");
        rig.deliver_reversed();
        let out = rig.take_out();
        assert!(
            out.starts_with(
                "+OK\r\n+QUEUED\r\n+QUEUED\r\n-CROSSSLOT Keys in request don't hash to the same slot"
            ),
            "{out}"
        );
        assert!(out.ends_with("nothing was applied\r\n$-1\r\n"), "{out}");
        // A queueing error aborts EXEC; DISCARD drops the queue; EXEC or DISCARD alone errs.
        rig.send(
            b"MULTI\r\nNOPE\r\nSET k\r\nPING\r\nEXEC\r\nMULTI\r\nSET k v\r\nDISCARD\r\nEXEC\r\nDISCARD\r\n",
        );
        let out = rig.take_out();
        assert!(rig.held.is_empty(), "{:?}", rig.held);
        assert_eq!(
            out,
            "+OK\r\n-ERR unknown command 'NOPE', with args beginning with: \r\n\
             -ERR wrong number of arguments for 'set' command\r\n\
             -ERR 'ping' cannot be queued: a chordkv transaction runs at the owner of its keys, which \
             runs the string, expiry and key commands only (not server, connection or ring-wide \
             commands such as PING, INFO, SCAN or KEYS)\r\n\
             -EXECABORT Transaction discarded because of previous errors.\r\n\
             +OK\r\n+QUEUED\r\n+OK\r\n-ERR EXEC without MULTI\r\n-ERR DISCARD without MULTI\r\n"
        );

        // Values over 64 KiB queue (the key limit is for keys); a value over the node's
        // maximum is refused as it arrives and aborts the transaction: nothing is applied.
        rig.facts.max_value_bytes = 100_000;
        let big = "v".repeat(70_000);
        let over = "v".repeat(100_001);
        let set = |k: &str, v: &str| {
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n{v}\r\n",
                k.len(),
                v.len()
            )
        };
        let pipeline = format!(
            "MULTI\r\n{}{}{}EXEC\r\n",
            set("{t}1", &big),
            set("{t}2", &over),
            set("{t}3", "v")
        );
        rig.send(pipeline.as_bytes());
        let out = rig.take_out();
        assert!(rig.held.is_empty(), "{:?}", rig.held);
        assert!(
            out.starts_with("+OK\r\n+QUEUED\r\n-ERR value of 100001 bytes is over"),
            "{out}"
        );
        assert!(
            out.ends_with("+QUEUED\r\n-EXECABORT Transaction discarded because of previous errors.\r\n"),
            "{out}"
        );
    }

    /// WATCH reads the versions before the session reads on (the EXEC pipelined behind it
    /// must carry them); a write of a watched key in between makes EXEC answer a null array
    /// with nothing run; an unchanged key lets it run.
    #[test]
    fn watch_aborts_exec_when_a_watched_key_changed() {
        let mut rig = Rig::new();
        rig.send(b"SET k 1\r\n");
        rig.deliver_reversed();
        rig.send(b"WATCH k\r\nSET k 2\r\nMULTI\r\nINCR k\r\nEXEC\r\nGET k\r\n");
        assert_eq!(rig.held.len(), 1, "only WATCH's read went out: {:?}", rig.held);
        rig.deliver_reversed();
        assert!(
            rig.session.take_unblocked(),
            "the session reads on once WATCH is answered"
        );
        rig.send(b"");
        rig.deliver_reversed();
        assert_eq!(
            rig.take_out(),
            "+OK\r\n+OK\r\n+OK\r\n+OK\r\n+QUEUED\r\n*-1\r\n$1\r\n2\r\n"
        );
        rig.send(b"WATCH k\r\nMULTI\r\nINCR k\r\nEXEC\r\nUNWATCH\r\n");
        rig.deliver_reversed();
        assert!(rig.session.take_unblocked());
        rig.send(b"");
        rig.deliver_reversed();
        assert_eq!(rig.take_out(), "+OK\r\n+OK\r\n+QUEUED\r\n*1\r\n:3\r\n+OK\r\n");
    }

    /// Read-modify-write commands run at the owner, one reply each.
    #[test]
    fn counters_and_conditional_sets_run_at_the_owner() {
        let mut rig = Rig::new();
        rig.send(b"INCR n\r\nINCRBY n 10\r\nSET l me NX\r\nSET l you NX\r\nSET l x XX GET\r\nAPPEND l y\r\nMSETNX {t}a 1 {t}b 2\r\nMSETNX a 1 b 2\r\nTYPE l\r\n");
        rig.deliver_reversed();
        assert_eq!(
            rig.take_out(),
            ":1\r\n:11\r\n+OK\r\n$-1\r\n$2\r\nme\r\n:2\r\n:1\r\n\
             -CROSSSLOT Keys in request don't hash to the same slot\r\n+string\r\n"
        );
    }

    #[test]
    fn server_commands() {
        let mut rig = Rig::new();
        rig.send(b"ECHO hi\r\nSELECT 0\r\nSELECT 3\r\nCLIENT SETNAME me\r\nCLIENT GETNAME\r\n");
        assert_eq!(
            rig.take_out(),
            "$2\r\nhi\r\n+OK\r\n-ERR DB index is out of range\r\n+OK\r\n$2\r\nme\r\n"
        );
        rig.send(b"HELLO 4\r\nNOPE x\r\nGET\r\n");
        assert_eq!(
            rig.take_out(),
            "-NOPROTO unsupported protocol version\r\n\
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
            "\r\n\r\n# Clients\r\nconnected_clients:0\r\nblocked_clients:0\r\nmaxclients:10000\r\n",
            "\r\n\r\n# Memory\r\nused_memory:",
            "\r\n\r\n# Stats\r\ntotal_connections_received:0\r\ntotal_commands_processed:0\r\n",
            "\r\n\r\n# Replication\r\n",
            "db0:keys=1,",
            "# chordkv\r\n",
            "status:active\r\n",
        ] {
            assert!(out.contains(line), "INFO lacks {line:?}: {out}");
        }
    }
}
