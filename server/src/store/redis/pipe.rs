//! The node's gets and puts on its event loop: one non-blocking connection to Redis, our own
//! pipelining, no thread in between (for a node without replicas: see `store_pool`).
//!
//! ```text
//!   event loop turn:  ops of the turn ─► queue ──(nothing in flight)──► one flight:
//!                                                 HMGET/EXISTS and EVALSHA calls,
//!                                                 planned and encoded as the blocking
//!                                                 pipelines are (`plan`, `Call::encode`);
//!                                                 or, for many puts and no reads, a
//!                                                 transaction's read stage (`Watched`)
//!   readable:         read until WouldBlock ─► frame replies (`reply_len`) ─► parse
//!                     (`reply_value`) ─► all in: the transaction's write stage (or the
//!                     calls by script, when it was refused), or results (`decode_replies`,
//!                     `Watched::finish`) and the next flight at once with what queued
//!                     meanwhile
//! ```
//!
//! One flight at a time, as the blocking pipeline worker ran one pipeline at a time: while
//! Redis works on one, the next ops queue and make the next, so the flights grow with the
//! load, and a request costs a share of one write and one read on each side instead of a
//! channel, a thread wake-up and a loop wake-up (measured: `bench/cpu-per-request.sh`).
//!
//! Every guarantee of the blocking pipelines (the module docs of [`super`]) holds here:
//!
//! - **Order.** A flight carries the ops in the order submitted, planned by the same
//!   [`plan`](super::plan): a partition's ops take effect in the order given.
//! - **Lost data.** Every call checks its partition's marker, atomically with its write or
//!   after its read (see the parent module's "Atomicity"). A partition found lost is recorded off the loop: the flight's results become a
//!   [`Losses`], which the caller runs on a worker thread ([`Losses::record`]: the blocking
//!   [`RedisStore::record_loss`], which raises the loss epoch once, then writes the marker
//!   again), so the loop never waits on Redis. Flights sent meanwhile find the marker missing
//!   too and report the same loss; the epoch is raised once.
//! - **Errors.** An error reply fails its own call's ops only. NOSCRIPT (Redis lost its script
//!   cache): `SCRIPT LOAD` and the calls it refused are sent again, as the blocking path does.
//! - **Failures never hang.** A connect is bounded by [`CONNECT_TIMEOUT_MS`], each stage of a
//!   flight by [`IO_TIMEOUT_MS`] (see [`RedisPipe::deadline`], which the loop's `poll` timeout
//!   honours; a flight has at most four: a transaction's read and write, `super::watched`,
//!   the calls sent again by script, and again after `SCRIPT LOAD`); a read or write error, a
//!   closed connection, a timeout or bytes that are not RESP fail every op of the flight with
//!   [`StoreError::Unavailable`] (each is a read or a merge: running it again is harmless) and
//!   drop the connection. The next flight connects again.
//!
//! The address is resolved once, when the pipe is made: a host name that moves needs a
//! restart of the node.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use chordkv_protocol::resp;
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use redis::{ConnectionAddr, Value};

use super::watched::{Next, Watched};
use super::{
    decode_replies, describe, noscript_calls, pipeline_len, pipelined, plan, reply_starts, Call, PointBatch,
    RedisPartitions, RedisStore, CONNECT_TIMEOUT_MS, IO_TIMEOUT_MS,
};
use chordkv_core::store::{Result, StoreError, StoreOp, StoreOutcome};

/// Milliseconds on the caller's clock (the event loop's `now`).
pub type Millis = u64;

/// Bytes asked of the socket per `read`.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// The longest reply header line (`+`, `-`, `:`, `$`, `*` up to its CRLF) taken; a longer one is
/// not Redis speaking.
const MAX_LINE_BYTES: usize = 64 * 1024;
/// The longest bulk string taken in a reply: Redis' own limit on a value (`proto-max-bulk-len`
/// can be raised up to this) and our record header.
const MAX_BULK_BYTES: usize = (1 << 32) + 64;

/// The most arrays a reply may have nested one in another: the redis crate's parser refuses
/// 100 (its `MAX_RECURSE_DEPTH`), so that [`reply_value`] refuses what the crate refuses.
const MAX_REPLY_DEPTH: usize = 99;

/// A node's gets and puts on one non-blocking connection to its Redis, driven by the event
/// loop; `T` is what the caller tags each op with (the loop: its id and vnode).
pub struct RedisPipe<T> {
    parts: Arc<RedisPartitions>,
    addr: SocketAddr,
    /// `AUTH` and `SELECT` for a new connection, when the URL asks for them.
    prelude: Vec<u8>,
    prelude_replies: usize,
    token: Token,
    link: Option<Link>,
    queue: VecDeque<(T, u16, StoreOp)>,
    flight: Option<Flight<T>>,
    /// The queued ops have been held once ([`RedisPipe::flush`]).
    held: bool,
    done: Vec<(T, Result<StoreOutcome>)>,
    losses: Vec<Losses<T>>,
    scratch: Box<[u8]>,
}

/// The connection.
struct Link {
    stream: TcpStream,
    /// The connect has completed.
    connected: bool,
    /// When a connect still under way fails.
    connect_deadline: Millis,
    /// Whether `WRITABLE` is registered (while a connect or a write is under way).
    writable: bool,
    out: Vec<u8>,
    written: usize,
    input: Vec<u8>,
    /// Bytes of `input` already parsed.
    parsed: usize,
    /// The prelude (`AUTH`, `SELECT`) went out ahead of a flight.
    prelude_sent: bool,
}

/// The ops sent and waiting for their replies.
struct Flight<T> {
    tags: Vec<T>,
    ops: Vec<(u16, StoreOp)>,
    batch: PointBatch,
    calls: Vec<Call>,
    /// The replies to `calls`, in order, once all are in.
    replies: Vec<Value>,
    /// The replies of the stage under way.
    incoming: Vec<Value>,
    expected: usize,
    /// Replies to the prelude at the front of `incoming` (a new connection's first flight).
    prelude: usize,
    /// Replies after the prelude's that are skipped unread (a `DISCARD` or `UNWATCH` ahead of
    /// a fallback's script calls, `super::watched`).
    skip: usize,
    /// `Some(calls)` while the puts calls the server answered NOSCRIPT are sent again, after
    /// `SCRIPT LOAD`.
    reloading: Option<Vec<usize>>,
    /// A flight of puts only, merged in two stages ([`Watched`]): which stage is under way.
    /// `None` once the flight goes by script (from the start, or after an aborted `EXEC`).
    watched: Option<(Watched, Stage)>,
    deadline: Millis,
}

impl<T> Flight<T> {
    /// Writes the flight's calls (by script, where a transaction did not go) into `out`;
    /// answers how many replies they get.
    fn encode_calls(&self, backend: &super::Backend, parts: &[&RedisStore], out: &mut Vec<u8>) -> usize {
        for call in &self.calls {
            call.encode(backend, parts, &self.batch.points, out);
        }
        self.calls.iter().map(Call::replies).sum()
    }
}

/// The stage of a [`Watched`] flight under way.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Read,
    Write,
}

/// A flight whose calls found partitions' data lost: [`Losses::record`] records each loss
/// (blocking: run it on a worker thread) and answers every op.
pub struct Losses<T> {
    parts: Arc<RedisPartitions>,
    tags: Vec<T>,
    ops: Vec<(u16, StoreOp)>,
    batch: PointBatch,
    point_results: Vec<Result<StoreOutcome>>,
    /// The partitions found lost, with what the call said.
    lost: Vec<(usize, String)>,
}

impl<T> Losses<T> {
    /// The tags of the flight's ops.
    pub fn tags(&self) -> &[T] {
        &self.tags
    }

    /// Records each loss as [`RedisStore::record_loss`] does (the epoch raised once, then the
    /// marker written again), on a connection of the blocking pool, and answers every op: those
    /// of a lost partition [`StoreError::Lost`], the others as Redis answered them.
    pub fn record(self) -> Vec<(T, Result<StoreOutcome>)> {
        let parts: Vec<&RedisStore> = self.parts.parts.iter().map(|p| &**p).collect();
        let errors: Vec<(usize, StoreError)> = self
            .lost
            .iter()
            .map(|(part, detail)| (*part, parts[*part].record_loss_apart(detail)))
            .collect();
        let mut point_results = self.point_results;
        for (i, result) in point_results.iter_mut().enumerate() {
            if matches!(result, Err(StoreError::Lost(s)) if s.is_empty()) {
                let part = self.batch.points[i].0;
                if let Some((_, e)) = errors.iter().find(|(p, _)| *p == part) {
                    *result = Err(e.clone());
                }
            }
        }
        answer(self.tags, &self.ops, self.batch, point_results)
    }
}

/// Notes partition `part` lost (once) and answers a placeholder error, replaced once the loss
/// is recorded ([`Losses::record`]).
fn placeholder_loss(lost: &mut Vec<(usize, String)>, part: usize, detail: &str) -> StoreError {
    if !lost.iter().any(|(p, _)| *p == part) {
        lost.push((part, detail.to_string()));
    }
    StoreError::Lost(String::new())
}

/// The error of a flight whose replies do not read as what it sent.
fn pipe_error(shown: &str, f: super::Failure) -> StoreError {
    match f {
        super::Failure::Redis(e) => StoreError::Unavailable(format!("{shown}: {}", describe(&e))),
        super::Failure::Corrupt(why) => StoreError::Unavailable(format!("{shown}: {why}")),
    }
}

/// Each op's result, with its tag.
fn answer<T>(
    tags: Vec<T>,
    ops: &[(u16, StoreOp)],
    batch: PointBatch,
    point_results: Vec<Result<StoreOutcome>>,
) -> Vec<(T, Result<StoreOutcome>)> {
    let results = batch.fold(ops, point_results);
    tags.into_iter()
        .zip(results)
        .map(|(tag, r)| {
            let r = r.unwrap_or_else(|| {
                Err(StoreError::Corrupt(
                    "faulty code: an op a pipeline does not carry reached the event loop's pipe".into(),
                ))
            });
            (tag, r)
        })
        .collect()
}

impl<T> RedisPipe<T> {
    /// A pipe for `parts` whose connection will be registered with `token`; `None` when the
    /// Redis is not a TCP address that resolves now (the caller keeps the blocking pipelines).
    pub fn new(parts: Arc<RedisPartitions>, token: Token) -> Option<RedisPipe<T>> {
        let info = parts.backend.client.get_connection_info();
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        let addr = (host.as_str(), *port).to_socket_addrs().ok()?.next()?;
        let settings = info.redis_settings();
        let mut prelude = Vec::new();
        let mut prelude_replies = 0;
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(password).write_packed_command(&mut prelude);
            prelude_replies += 1;
        }
        if settings.db() != 0 {
            redis::cmd("SELECT")
                .arg(settings.db())
                .write_packed_command(&mut prelude);
            prelude_replies += 1;
        }
        Some(RedisPipe {
            parts,
            addr,
            prelude,
            prelude_replies,
            token,
            link: None,
            queue: VecDeque::new(),
            flight: None,
            held: false,
            done: Vec::new(),
            losses: Vec::new(),
            scratch: vec![0u8; READ_CHUNK_BYTES].into_boxed_slice(),
        })
    }

    /// Whether the pipe carries `op` (gets, puts, `PutMany`s); others run on store workers.
    pub fn carries(op: &StoreOp) -> bool {
        pipelined(op)
    }

    /// Queues an op ([`RedisPipe::carries`]) on partition `vnode`; it is sent with the next
    /// flight ([`RedisPipe::flush`]).
    pub fn submit(&mut self, tag: T, vnode: u16, op: StoreOp) {
        self.queue.push_back((tag, vnode, op));
    }

    /// Whether ops wait for a flush, nothing being in flight. The event loop holds the ops of
    /// a turn for one more turn when more input is already there (it polls without waiting
    /// while this is true, and flushes before it sleeps): a flight then carries the ops of two
    /// turns, and Redis runs fewer, larger pipelines (fewer script calls and wake-ups on both
    /// sides) at the price of one `epoll_wait` that does not wait.
    pub fn holding(&self) -> bool {
        self.flight.is_none() && !self.queue.is_empty()
    }

    /// Whether nothing is queued or in flight.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.flight.is_none()
    }

    /// The ops answered since the last call.
    pub fn take_done(&mut self) -> Vec<(T, Result<StoreOutcome>)> {
        std::mem::take(&mut self.done)
    }

    /// Flights that found lost data, to be recorded off the loop ([`Losses::record`]).
    pub fn take_losses(&mut self) -> Vec<Losses<T>> {
        std::mem::take(&mut self.losses)
    }

    /// When [`RedisPipe::tick`] must run next: a connect's or a flight's deadline.
    pub fn deadline(&self) -> Option<Millis> {
        let connect = self
            .link
            .as_ref()
            .filter(|l| !l.connected)
            .map(|l| l.connect_deadline);
        let flight = self.flight.as_ref().map(|f| f.deadline);
        connect.into_iter().chain(flight).min()
    }

    /// Sends the queued ops as a flight, unless one is in flight (they go when it lands).
    /// With `hold`, ops that have not been held yet wait for the next call instead (see
    /// [`RedisPipe::holding`]).
    pub fn flush(&mut self, registry: &Registry, now: Millis, hold: bool) {
        if self.flight.is_some() || self.queue.is_empty() {
            return;
        }
        if hold && !self.held {
            self.held = true;
            return;
        }
        self.held = false;
        if self.link.is_none() {
            match self.connect(registry, now) {
                Ok(link) => self.link = Some(link),
                Err(e) => {
                    let error = self.unreachable(&e.to_string());
                    let all: Vec<_> = self
                        .queue
                        .drain(..)
                        .map(|(tag, _, _)| (tag, Err(error.clone())))
                        .collect();
                    self.done.extend(all);
                    return;
                }
            }
        }
        self.launch(registry, now);
    }

    /// Fails a flight whose deadline has passed, and drops its connection.
    pub fn tick(&mut self, registry: &Registry, now: Millis) {
        if self.deadline().is_some_and(|d| now >= d) {
            let connecting = self.link.as_ref().is_some_and(|l| !l.connected);
            let why = if connecting {
                self.unreachable("timed out")
            } else {
                StoreError::Unavailable(format!("{}: timed out", self.parts.backend.shown))
            };
            self.fail(registry, why);
        }
    }

    /// Handles readiness of the connection (an event with the pipe's token).
    pub fn on_event(&mut self, registry: &Registry, event: &Event, now: Millis) {
        if self.link.is_none() {
            return;
        }
        if let Err(e) = self.drive(registry, event.is_writable() || event.is_error(), now) {
            self.fail(registry, e);
        }
    }

    fn drive(
        &mut self,
        registry: &Registry,
        writable: bool,
        now: Millis,
    ) -> std::result::Result<(), StoreError> {
        let parts = Arc::clone(&self.parts);
        let shown = &parts.backend.shown;
        let Some(link) = &mut self.link else { return Ok(()) };
        if !link.connected {
            if !writable {
                return Ok(());
            }
            if let Some(e) = link.stream.take_error().ok().flatten() {
                return Err(StoreError::Unavailable(format!(
                    "cannot connect to {shown}: {}",
                    describe_io(&e)
                )));
            }
            match link.stream.peer_addr() {
                Ok(_) => {
                    link.connected = true;
                    let _ = link.stream.set_nodelay(true);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => {
                    return Err(StoreError::Unavailable(format!(
                        "cannot connect to {shown}: {}",
                        describe_io(&e)
                    )))
                }
            }
        }
        link.write(registry, self.token)
            .map_err(|e| StoreError::Unavailable(format!("{shown}: {}", describe_io(&e))))?;
        // Read until the socket is drained (the registration is edge-triggered): until
        // WouldBlock, or a read that did not fill the buffer, which took all there was (bytes
        // arriving later raise a new edge) and saves the read that would say so.
        loop {
            match link.stream.read(&mut self.scratch) {
                Ok(0) => {
                    return Err(StoreError::Unavailable(format!(
                        "{shown}: Redis closed the connection"
                    )));
                }
                Ok(n) if n < self.scratch.len() => {
                    link.input.extend_from_slice(&self.scratch[..n]);
                    break;
                }
                Ok(n) => link.input.extend_from_slice(&self.scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::Unavailable(format!("{shown}: {}", describe_io(&e)))),
            }
        }
        // Frame and parse the replies that are in.
        loop {
            // Landing a flight may have launched the next, and a failed write dropped the link.
            let Some(link) = self.link.as_mut() else {
                return Ok(());
            };
            let Some(flight) = &mut self.flight else {
                if link.parsed < link.input.len() {
                    return Err(StoreError::Unavailable(format!(
                        "{shown}: Redis sent a reply nothing asked for"
                    )));
                }
                break;
            };
            if flight.incoming.len() == flight.expected {
                self.land(registry, now)?;
                continue;
            }
            let pending = &link.input[link.parsed..];
            let len = match reply_len(pending) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(why) => return Err(StoreError::Unavailable(format!("{shown}: {why}"))),
            };
            let value = reply_value(&pending[..len])
                .map_err(|e| StoreError::Unavailable(format!("{shown}: a reply that is not RESP: {e}")))?;
            link.parsed += len;
            flight.incoming.push(value);
        }
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        if link.parsed == link.input.len() {
            link.input.clear();
            link.parsed = 0;
        } else if link.parsed > READ_CHUNK_BYTES {
            link.input.drain(..link.parsed);
            link.parsed = 0;
        }
        Ok(())
    }

    /// Every reply of the flight's stage is in: answers its ops, or sends the calls refused
    /// for a missing script again; then sends what queued meanwhile.
    fn land(&mut self, registry: &Registry, now: Millis) -> std::result::Result<(), StoreError> {
        let shown = self.parts.backend.shown.clone();
        let Some(mut flight) = self.flight.take() else {
            return Ok(());
        };
        let mut incoming = std::mem::take(&mut flight.incoming).into_iter();
        for reply in incoming.by_ref().take(flight.prelude) {
            if let Value::ServerError(e) = reply {
                let e: redis::RedisError = e.into();
                self.flight = Some(flight);
                return Err(StoreError::Unavailable(format!(
                    "cannot connect to {shown}: {}",
                    describe(&e)
                )));
            }
        }
        flight.prelude = 0;
        // Replies not checked: the DISCARD or UNWATCH ahead of a fallback's script calls.
        incoming.by_ref().take(flight.skip).for_each(drop);
        flight.skip = 0;
        let parts: Vec<&RedisStore> = self.parts.parts.iter().map(|p| &**p).collect();
        match flight.watched.take() {
            Some((mut watched, Stage::Read)) => {
                let backend = &self.parts.backend;
                let link = self.link.as_mut().expect("a flight has a link");
                match watched.decide(backend, &parts, &flight.batch.points, incoming.collect()) {
                    Ok(Next::Write) => {
                        flight.expected = watched.encode_write(&parts, &flight.batch.points, &mut link.out);
                        flight.watched = Some((watched, Stage::Write));
                    }
                    // WATCH or MULTI refused, or a marker missing: by script, after the DISCARD
                    // or UNWATCH that ends what was taken (its reply skipped unread).
                    Ok(Next::Script { end }) => {
                        if let Some(end) = end {
                            resp::encode_command(&[end], &mut link.out);
                            flight.skip = 1;
                        }
                        flight.expected = flight.skip + flight.encode_calls(backend, &parts, &mut link.out);
                    }
                    Err(f) => {
                        self.flight = Some(flight);
                        return Err(pipe_error(&shown, f));
                    }
                }
                return self.relaunch(registry, now, flight);
            }
            Some((watched, Stage::Write)) => {
                let mut lost: Vec<(usize, String)> = Vec::new();
                let finished = watched.finish(
                    &parts,
                    &flight.batch.points,
                    incoming.collect(),
                    &mut |part, detail| placeholder_loss(&mut lost, part, detail),
                );
                match finished {
                    Ok(Some(point_results)) => {
                        self.settle(flight, point_results, lost);
                        if !self.queue.is_empty() {
                            self.launch(registry, now);
                        }
                        return Ok(());
                    }
                    // A watched key changed between the stages: the flight goes by script.
                    Ok(None) => {
                        let link = self.link.as_mut().expect("a flight has a link");
                        flight.expected = flight.encode_calls(&self.parts.backend, &parts, &mut link.out);
                        return self.relaunch(registry, now, flight);
                    }
                    Err(f) => {
                        self.flight = Some(flight);
                        return Err(pipe_error(&shown, f));
                    }
                }
            }
            None => {}
        }
        match flight.reloading.take() {
            None => {
                flight.replies = incoming.collect();
                let missing = noscript_calls(&flight.calls, &flight.replies);
                if !missing.is_empty() {
                    let backend = &self.parts.backend;
                    let link = self.link.as_mut().expect("a flight has a link");
                    redis::cmd("SCRIPT")
                        .arg("LOAD")
                        .arg(&backend.puts_source)
                        .write_packed_command(&mut link.out);
                    for &c in &missing {
                        flight.calls[c].encode(backend, &parts, &flight.batch.points, &mut link.out);
                    }
                    flight.expected = 1 + missing.len();
                    flight.reloading = Some(missing);
                    return self.relaunch(registry, now, flight);
                }
            }
            Some(missing) => {
                if let Some(Value::ServerError(e)) = incoming.next() {
                    let e: redis::RedisError = e.into();
                    self.flight = Some(flight);
                    return Err(StoreError::Unavailable(format!("{shown}: {}", describe(&e))));
                }
                let starts = reply_starts(&flight.calls);
                for (c, reply) in missing.into_iter().zip(incoming) {
                    flight.replies[starts[c]] = reply;
                }
            }
        }
        self.finish(flight);
        if !self.queue.is_empty() {
            self.launch(registry, now);
        }
        Ok(())
    }

    /// Sends the next stage of `flight`, already encoded into the link's output, and waits
    /// for its `flight.expected` replies.
    fn relaunch(
        &mut self,
        registry: &Registry,
        now: Millis,
        mut flight: Flight<T>,
    ) -> std::result::Result<(), StoreError> {
        flight.incoming = Vec::with_capacity(flight.expected);
        flight.deadline = now + IO_TIMEOUT_MS;
        self.flight = Some(flight);
        let link = self.link.as_mut().expect("a flight has a link");
        link.write(registry, self.token).map_err(|e| {
            StoreError::Unavailable(format!("{}: {}", self.parts.backend.shown, describe_io(&e)))
        })
    }

    /// Answers the ops of a flight whose replies are all in.
    fn finish(&mut self, mut flight: Flight<T>) {
        let parts: Vec<&RedisStore> = self.parts.parts.iter().map(|p| &**p).collect();
        let mut lost: Vec<(usize, String)> = Vec::new();
        let point_results = decode_replies(
            &parts,
            &flight.batch.points,
            &flight.calls,
            std::mem::take(&mut flight.replies),
            &mut |part, detail| placeholder_loss(&mut lost, part, detail),
        );
        self.settle(flight, point_results, lost);
    }

    /// Answers the ops of a flight from its points' results, or keeps them for
    /// [`Losses::record`] when partitions were found `lost`.
    fn settle(
        &mut self,
        flight: Flight<T>,
        point_results: Vec<Result<StoreOutcome>>,
        lost: Vec<(usize, String)>,
    ) {
        if lost.is_empty() {
            let answered = answer(flight.tags, &flight.ops, flight.batch, point_results);
            self.done.extend(answered);
        } else {
            self.losses.push(Losses {
                parts: Arc::clone(&self.parts),
                tags: flight.tags,
                ops: flight.ops,
                batch: flight.batch,
                point_results,
                lost,
            });
        }
    }

    /// Takes queued ops for one pipeline, encodes them (behind the prelude on a new
    /// connection), and writes what the socket takes.
    fn launch(&mut self, registry: &Registry, now: Millis) {
        let partitions = self.parts.parts.len();
        // As many ops as make one pipeline: the points of an op stay together.
        let cap = self.queue.len().min(super::PIPELINE_MAX_ITEMS);
        let mut tags = Vec::with_capacity(cap);
        let mut ops = Vec::with_capacity(cap);
        let mut points = 0;
        let mut bytes = 0;
        while let Some((_, _, op)) = self.queue.front() {
            let (n, b) = op_size(op);
            if !ops.is_empty()
                && (points + n > super::PIPELINE_MAX_ITEMS || bytes >= super::PIPELINE_MAX_BYTES)
            {
                break;
            }
            let (tag, vnode, op) = self.queue.pop_front().expect("front exists");
            tags.push(tag);
            ops.push((vnode, op));
            points += n;
            bytes += b;
        }
        let batch = PointBatch::of(partitions, &ops);
        debug_assert!(pipeline_len(&batch.points) <= batch.points.len());
        let calls = plan(partitions, &batch.points);
        let expected: usize = calls.iter().map(Call::replies).sum();
        let parts: Vec<&RedisStore> = self.parts.parts.iter().map(|p| &**p).collect();
        let watched = Watched::of(
            &self.parts.backend,
            &parts,
            &batch.points,
            &calls,
            super::watched::WATCHED_MIN_PUTS_ON_LOOP,
        );
        let link = self
            .link
            .as_mut()
            .expect("faulty code: `flush` and `land` launch on a link");
        let prelude = if expected > 0 && !link.prelude_sent {
            link.out.extend_from_slice(&self.prelude);
            link.prelude_sent = true;
            self.prelude_replies
        } else {
            0
        };
        let expected = match &watched {
            Some(w) => w.encode_read(&parts, &batch.points, &mut link.out),
            None => {
                for call in &calls {
                    call.encode(&self.parts.backend, &parts, &batch.points, &mut link.out);
                }
                expected
            }
        };
        let flight = Flight {
            tags,
            ops,
            batch,
            calls,
            replies: Vec::new(),
            incoming: Vec::with_capacity(expected + prelude),
            expected: expected + prelude,
            prelude,
            skip: 0,
            reloading: None,
            watched: watched.map(|w| (w, Stage::Read)),
            deadline: now + IO_TIMEOUT_MS,
        };
        let empty = flight.expected == 0;
        self.flight = Some(flight);
        if empty {
            // Only ops answered without Redis (an empty PutMany).
            if let Some(flight) = self.flight.take() {
                self.finish(flight);
            }
            return;
        }
        let shown = &self.parts.backend.shown;
        if let Err(e) = link.write(registry, self.token) {
            let error = StoreError::Unavailable(format!("{shown}: {}", describe_io(&e)));
            self.fail(registry, error);
        }
    }

    fn connect(&self, registry: &Registry, now: Millis) -> io::Result<Link> {
        let mut stream = TcpStream::connect(self.addr)?;
        registry.register(&mut stream, self.token, Interest::READABLE | Interest::WRITABLE)?;
        Ok(Link {
            stream,
            connected: false,
            connect_deadline: now + CONNECT_TIMEOUT_MS,
            writable: true,
            out: Vec::new(),
            written: 0,
            input: Vec::new(),
            parsed: 0,
            prelude_sent: false,
        })
    }

    /// Fails every op of the flight with `error` and drops the connection (its state is
    /// unknown); queued ops wait for the next flight, on a new connection.
    fn fail(&mut self, registry: &Registry, error: StoreError) {
        if let Some(mut link) = self.link.take() {
            let _ = registry.deregister(&mut link.stream);
        }
        if let Some(flight) = self.flight.take() {
            self.done
                .extend(flight.tags.into_iter().map(|tag| (tag, Err(error.clone()))));
        }
    }

    fn unreachable(&self, why: &str) -> StoreError {
        StoreError::Unavailable(format!("cannot connect to {}: {why}", self.parts.backend.shown))
    }
}

impl Link {
    /// Writes what the socket takes of the queued bytes; `WRITABLE` is registered while some
    /// are left.
    fn write(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        if self.connected {
            while self.written < self.out.len() {
                match self.stream.write(&self.out[self.written..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => self.written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            if self.written == self.out.len() {
                self.out.clear();
                self.written = 0;
            }
        }
        let want = !self.connected || self.written < self.out.len();
        if want != self.writable {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            registry.reregister(&mut self.stream, token, interest)?;
            self.writable = want;
        }
        Ok(())
    }
}

/// The points an op makes and the bytes it sends.
fn op_size(op: &StoreOp) -> (usize, usize) {
    match op {
        StoreOp::Get { key, .. } => (1, key.len()),
        StoreOp::Put { key, entry, .. } => (1, key.len() + entry.value.as_ref().map_or(0, |v| v.len())),
        StoreOp::PutMany { items } => (
            items.len(),
            items
                .iter()
                .map(|it| it.key.len() + it.value.as_ref().map_or(0, |v| v.len()))
                .sum(),
        ),
        _ => (1, 0),
    }
}

fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        io::ErrorKind::TimedOut => "timed out".to_string(),
        _ => e.to_string(),
    }
}

/// The length of the RESP2 reply at the front of `buf` (`+`, `-`, `:`, `$`, `*`, nested):
/// `Ok(None)` while it is not all in. Nothing is allocated and no bulk is copied: a reply is
/// checked whole before it is parsed (mini-redis' `Frame::check`), so bytes arriving in pieces
/// cost one scan of the headers per read. Errs on bytes that are not a RESP2 reply.
pub fn reply_len(buf: &[u8]) -> std::result::Result<Option<usize>, String> {
    let mut at = 0;
    // Values still to read: one, plus the elements of every array header met.
    let mut pending: u64 = 1;
    while pending > 0 {
        let Some(&kind) = buf.get(at) else { return Ok(None) };
        let Some(line_len) = buf[at..].iter().take(MAX_LINE_BYTES).position(|&b| b == b'\n') else {
            if buf.len() - at >= MAX_LINE_BYTES {
                return Err(format!("a reply line over {MAX_LINE_BYTES} bytes"));
            }
            return Ok(None);
        };
        if line_len < 2 || buf[at + line_len - 1] != b'\r' {
            return Err("a reply line not ended by CRLF".into());
        }
        let line = &buf[at + 1..at + line_len - 1];
        at += line_len + 1;
        pending -= 1;
        match kind {
            b'+' | b'-' | b':' => {}
            b'$' => {
                let n = length(line)?;
                if n >= 0 {
                    let n = n as usize;
                    if n > MAX_BULK_BYTES {
                        return Err(format!("a bulk string of {n} bytes"));
                    }
                    if buf.len() < at + n + 2 {
                        return Ok(None);
                    }
                    if &buf[at + n..at + n + 2] != b"\r\n" {
                        return Err("a bulk string not ended by CRLF".into());
                    }
                    at += n + 2;
                }
            }
            b'*' => {
                let n = length(line)?;
                if n > 0 {
                    pending += n as u64;
                }
            }
            other => return Err(format!("a reply of unknown type {:?}", other as char)),
        }
    }
    Ok(Some(at))
}

/// The `redis::Value` of one whole reply, `buf` being exactly the bytes [`reply_len`] framed:
/// the value `redis::parse_redis_value` gives for them (RESP2: `+` a simple string, `Okay`
/// for `+OK`; `-` a server error; `:` an integer; `$` a bulk string or `Nil`; `*` an array or
/// `Nil`), built in one pass without the crate's parser combinators, which cost a node with
/// the Redis store a fifth of its instructions per request (callgrind, one node, -P 16 SET and
/// GET: 1,870 of 9,360). An error reply is handed to the crate's parser, line by line, so that
/// its kind and code are the crate's own.
///
/// Errors: a string saying what is wrong with bytes that are not one RESP2 reply (a caller that
/// framed them with [`reply_len`] never sees one).
pub fn reply_value(buf: &[u8]) -> std::result::Result<Value, String> {
    let mut at = 0;
    // The arrays being filled, innermost last: their elements so far and how many are to come.
    let mut open: Vec<(Vec<Value>, usize)> = Vec::new();
    loop {
        let start = at;
        let kind = *buf.get(at).ok_or("a reply cut short")?;
        let line_len = buf[at..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("a reply line not ended by CRLF")?;
        if line_len < 2 || buf[at + line_len - 1] != b'\r' {
            return Err("a reply line not ended by CRLF".into());
        }
        let line = &buf[at + 1..at + line_len - 1];
        at += line_len + 1;
        let mut value = match kind {
            b'+' => match std::str::from_utf8(line) {
                Ok("OK") => Value::Okay,
                Ok(text) => Value::SimpleString(text.to_string()),
                Err(_) => return Err("a simple string that is not UTF-8".into()),
            },
            b'-' => redis::parse_redis_value(&buf[start..at]).map_err(|e| format!("an error reply: {e}"))?,
            b':' => Value::Int(
                std::str::from_utf8(line)
                    .ok()
                    .and_then(|text| text.trim().parse::<i64>().ok())
                    .ok_or("an integer reply that is not one")?,
            ),
            b'$' => {
                let n = length(line)?;
                if n < 0 {
                    Value::Nil
                } else {
                    let n = n as usize;
                    let data = buf.get(at..at + n).ok_or("a bulk string cut short")?;
                    if buf.get(at + n..at + n + 2) != Some(b"\r\n") {
                        return Err("a bulk string not ended by CRLF".into());
                    }
                    at += n + 2;
                    Value::BulkString(data.to_vec())
                }
            }
            b'*' => match length(line)? {
                n if n < 0 => Value::Nil,
                0 => Value::Array(Vec::new()),
                n => {
                    // Every element takes at least 3 bytes: a count beyond them is not Redis'.
                    let n = n as usize;
                    if n > (buf.len() - at) / 3 {
                        return Err("an array longer than its reply".into());
                    }
                    // The crate's own limit: a deeper value would be dropped, cloned and
                    // printed by recursion, on this thread's stack.
                    if open.len() == MAX_REPLY_DEPTH {
                        return Err(format!("a reply nested over {MAX_REPLY_DEPTH} deep"));
                    }
                    open.push((Vec::with_capacity(n), n));
                    continue;
                }
            },
            other => return Err(format!("a reply of unknown type {:?}", other as char)),
        };
        // The value completes its array, which may complete the one around it, and so on.
        loop {
            let Some((items, left)) = open.last_mut() else {
                return if at == buf.len() {
                    Ok(value)
                } else {
                    Err("bytes after a whole reply".into())
                };
            };
            items.push(value);
            *left -= 1;
            if *left > 0 {
                break;
            }
            let Some((items, _)) = open.pop() else {
                unreachable!("the array just filled is open")
            };
            value = Value::Array(items);
        }
    }
}

/// A `$` or `*` header's length: -1 (null) or a count.
fn length(line: &[u8]) -> std::result::Result<i64, String> {
    // The common case, 1 to 12 digits (under 2^40), without going through `str` (which accepts
    // a `+` sign too, as Redis would never send, and answers the same for these).
    if !line.is_empty() && line.len() <= 12 && line.iter().all(u8::is_ascii_digit) {
        return Ok(line.iter().fold(0i64, |n, &d| n * 10 + i64::from(d - b'0')));
    }
    let text = std::str::from_utf8(line).map_err(|_| "a length that is not a number".to_string())?;
    match text.parse::<i64>() {
        Ok(n) if (-1..=(1i64 << 40)).contains(&n) => Ok(n),
        _ => Err(format!("an invalid length {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lengths() {
        let whole: &[&[u8]] = &[
            b"+OK\r\n",
            b"-ERR no\r\n",
            b":12\r\n",
            b"$-1\r\n",
            b"$0\r\n\r\n",
            b"$3\r\na\r\n\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*2\r\n:1\r\n*3\r\n$1\r\nx\r\n$-1\r\n$2\r\nyz\r\n",
        ];
        for &reply in whole {
            assert_eq!(reply_len(reply), Ok(Some(reply.len())), "{reply:?}");
            // Every prefix is incomplete, and a second reply behind it is not taken.
            for cut in 0..reply.len() {
                assert_eq!(reply_len(&reply[..cut]), Ok(None), "{reply:?} cut at {cut}");
            }
            let two = [reply, b"+OK\r\n".as_slice()].concat();
            assert_eq!(reply_len(&two), Ok(Some(reply.len())));
            assert!(redis::parse_redis_value(reply).is_ok());
        }
        for bad in [&b"?x\r\n"[..], b"+OK\n", b"$3\r\nabcd\r\n", b"*x\r\n", b"$-2\r\n"] {
            assert!(reply_len(bad).is_err(), "{bad:?}");
        }
    }

    /// Random bytes and mutations of valid replies never panic the framing.
    #[test]
    fn random_bytes_never_panic() {
        let mut rng = chordkv_core::rng::Rng::new(0x9e37_79b9_7f4a_7c15u64);
        let mut next = move || rng.next_u64();
        let alphabet = b"+-:$*0123456789\r\nab-";
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            if let Ok(Some(n)) = reply_len(&bytes) {
                assert!(n <= bytes.len());
                // What the framing takes, the builder reads as the redis crate's parser does.
                let ours = reply_value(&bytes[..n]);
                let theirs = redis::parse_redis_value(&bytes[..n]);
                match (&ours, &theirs) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "{bytes:?}"),
                    (Err(_), Err(_)) => {}
                    _ => panic!("{bytes:?}: ours {ours:?}, the crate's {theirs:?}"),
                }
            }
        }
    }

    /// Random well-formed replies, nested arrays with every RESP2 type (binary bulk strings,
    /// nulls, errors of known and unknown kinds), build the value the redis crate's parser
    /// builds, and a reply cut anywhere is not framed.
    #[test]
    fn reply_values_are_the_crates() {
        let mut rng = chordkv_core::rng::Rng::new(0x2545_f491_4f6c_dd1du64);
        let mut next = move || rng.next_u64();
        fn reply(next: &mut dyn FnMut() -> u64, depth: u32, out: &mut Vec<u8>) {
            match next() % if depth < 3 { 8 } else { 7 } {
                0 => out.extend_from_slice(b"+OK\r\n"),
                1 => out.extend_from_slice(format!("+QUEUED{}\r\n", next() % 3).as_bytes()),
                2 => {
                    let errors = [
                        "-ERR no\r\n",
                        "-NOSCRIPT No matching script\r\n",
                        "-WRONGTYPE Op\r\n",
                    ];
                    out.extend_from_slice(errors[(next() % 3) as usize].as_bytes());
                }
                3 => out.extend_from_slice(format!(":{}\r\n", next() as i64).as_bytes()),
                4 => out.extend_from_slice(b"$-1\r\n"),
                5 | 6 => {
                    let data: Vec<u8> = (0..next() % 12).map(|_| next() as u8).collect();
                    out.extend_from_slice(format!("${}\r\n", data.len()).as_bytes());
                    out.extend_from_slice(&data);
                    out.extend_from_slice(b"\r\n");
                }
                _ => match next() % 6 {
                    0 => out.extend_from_slice(b"*-1\r\n"),
                    n => {
                        let n = n as usize - 1;
                        out.extend_from_slice(format!("*{n}\r\n").as_bytes());
                        for _ in 0..n {
                            reply(next, depth + 1, out);
                        }
                    }
                },
            }
        }
        for _ in 0..5_000 {
            let mut bytes = Vec::new();
            reply(&mut next, 0, &mut bytes);
            assert_eq!(reply_len(&bytes), Ok(Some(bytes.len())), "{bytes:?}");
            let theirs = redis::parse_redis_value(&bytes).expect("well-formed");
            assert_eq!(reply_value(&bytes), Ok(theirs), "{bytes:?}");
            let cut = (next() % bytes.len() as u64) as usize;
            assert_eq!(reply_len(&bytes[..cut]), Ok(None));
            assert!(reply_value(&bytes[..cut]).is_err());
        }
        // Nesting: as deep as the crate takes, and one deeper refused by both.
        for depth in [98, 99, 100, 100_000] {
            let mut bytes = b"*1\r\n".repeat(depth);
            bytes.extend_from_slice(b":1\r\n");
            assert_eq!(reply_len(&bytes), Ok(Some(bytes.len())));
            let ours = reply_value(&bytes);
            if depth <= MAX_REPLY_DEPTH {
                assert_eq!(
                    ours,
                    Ok(redis::parse_redis_value(&bytes).expect("the crate takes it"))
                );
            } else {
                assert!(ours.is_err(), "depth {depth}");
                if depth == 100 {
                    assert!(redis::parse_redis_value(&bytes).is_err());
                }
            }
        }
    }
}
