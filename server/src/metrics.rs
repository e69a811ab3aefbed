//! `/metrics`: the node's counters in the Prometheus text format (`chordkv node --metrics
//! ADDR`).
//!
//! The event loop never waits for a scraper. It keeps what only it can see in plain fields
//! ([`Recorder`]: requests by command and result, their latency, failures per peer), and once
//! per [`PUBLISH_INTERVAL_MS`] it copies them, with the host's `GET_STATS` counters (asked of
//! the core like any client's `GET_STATS`, answered to a reply address of its own, every
//! [`STATS_INTERVAL_MS`]: counting keys scans the store) and its connection counts, into a [`Snapshot`] behind a mutex it only ever `try_lock`s: a scrape in
//! progress makes it skip one publication, never wait. The metrics thread encodes the latest
//! snapshot per scrape:
//!
//! ```text
//!   event loop (mio)                         metrics thread (std::net, one at a time)
//!   ────────────────                         ───────────────────────────────────────
//!   request in  ─► Recorder::start            accept ─► read ≤ 8 KiB, ≤ 2 s ─► httparse
//!   reply out   ─► Recorder::finish           GET /metrics ─► lock, clone the Snapshot
//!   every 10 s  ─► GET_STATS to the core                   ─► prometheus-client encodes
//!               ─► try_lock: publish ───► Arc<Mutex<Snapshot>>
//! ```
//!
//! Scrapes are served one connection at a time with a total deadline of
//! [`SCRAPE_DEADLINE_MS`] and a request head of at most [`MAX_REQUEST_HEAD_BYTES`], so many
//! concurrent scrapers wait in the listen backlog instead of growing memory or threads; a slow
//! one delays the others by at most the deadline. A wrong path is 404, a method other than GET
//! or HEAD 405.
//!
//! Cost per request, only with `--metrics`: one hash-map insert when a client request enters the
//! core, a removal and a few adds when its reply leaves; the latency is the loop's own
//! measurement, kept with or without `--metrics` (`latency.rs`), not a second one. Without
//! `--metrics` the loop holds no recorder and pays one branch.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use chordkv_core::chord::Stats;
use chordkv_protocol::{ErrorCode, Frame, Message};
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::latency::Histogram;
use crate::{Error, Result};

/// How often the event loop publishes a snapshot (requests, latency, connections).
pub const PUBLISH_INTERVAL_MS: u64 = 1_000;
/// How often it asks the core for its `GET_STATS` counters. Less often than it publishes: the
/// key counts scan every vnode's primary range (measured under callgrind: about 200
/// instructions per key held, so some 50 ms of the loop per million keys), which is a cost
/// per ask, not per request.
pub const STATS_INTERVAL_MS: u64 = 10_000;
/// A `GET_STATS` unanswered this long is given up and asked again.
pub const STATS_RETRY_MS: u64 = 10_000;
/// Time one scrape may take from accept to the last byte written.
pub const SCRAPE_DEADLINE_MS: u64 = 2_000;
/// Longest request line and headers a scraper may send.
pub const MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
/// Peers whose failures are counted one by one; beyond, they are not added (a ring's hosts
/// are far fewer).
pub const MAX_PEERS_TRACKED: usize = 1_024;
/// A request whose reply has not left after this long is forgotten by the recorder (its
/// connection closed, or the core dropped it): it is not counted.
pub const FORGET_REQUEST_MS: u64 = 300_000;
/// A client request's kind, as the `command` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Get,
    Put,
    Delete,
    Execute,
    Scan,
    Ring,
    Other,
}

const COMMANDS: [(Command, &str); 7] = [
    (Command::Get, "get"),
    (Command::Put, "put"),
    (Command::Delete, "delete"),
    (Command::Execute, "execute"),
    (Command::Scan, "scan"),
    (Command::Ring, "ring"),
    (Command::Other, "other"),
];
/// The `result` label: the reply was the command's own, a redirect, or an error.
const RESULTS: [&str; 3] = ["ok", "redirect", "error"];

impl Command {
    fn of(message: &Message) -> Command {
        match message {
            Message::Get { .. } => Command::Get,
            Message::Put { .. } => Command::Put,
            Message::Delete { .. } => Command::Delete,
            Message::Execute { .. } => Command::Execute,
            Message::ScanKeys { .. } | Message::ScanRange { .. } => Command::Scan,
            Message::RingCommand { .. } | Message::RangeCommand { .. } => Command::Ring,
            _ => Command::Other,
        }
    }
}

/// The `code` label of `chordkv_request_errors_total`, by [`ErrorCode`] wire value (index 0:
/// a code this build does not know).
const ERROR_CODES: [&str; 12] = [
    "unknown",
    "bad_request",
    "too_large",
    "unavailable",
    "timeout",
    "store_failed",
    "not_ready",
    "shutting_down",
    "busy",
    "internal",
    "unauthorized",
    "forbidden",
];

fn error_code_index(code: ErrorCode) -> usize {
    let i = code as usize;
    if i < ERROR_CODES.len() {
        i
    } else {
        0
    }
}

fn result_of(message: &Message) -> usize {
    match message {
        Message::Redirect { .. } => 1,
        Message::Error { .. } => 2,
        _ => 0,
    }
}

/// What the event loop records as requests pass: owned by the loop, no atomics.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    /// `(reply address, request id)` of client requests in the core, with their command and
    /// the loop's clock (ms) when they entered (to forget those never answered).
    started: HashMap<(u64, u64), (Command, u64)>,
    requests: [[u64; RESULTS.len()]; COMMANDS.len()],
    /// Error replies by command and [`ERROR_CODES`] index.
    errors: [[u64; ERROR_CODES.len()]; COMMANDS.len()],
    latency: [Histogram; COMMANDS.len()],
    peer_failures: BTreeMap<SocketAddr, u64>,
}

impl Recorder {
    /// A client's request enters the core at `now_ms` with replies going to `to`.
    pub fn start(&mut self, to: u64, frame: &Frame, now_ms: u64) {
        self.started
            .insert((to, frame.request_id), (Command::of(&frame.message), now_ms));
    }

    /// The core's reply to `to` leaves (or is dropped for a closed connection), `elapsed` after
    /// its request entered the core when the loop timed it (`latency::Started`: the one
    /// measurement, shared with `GET_STATS`' latency buckets).
    pub fn finish(&mut self, to: u64, frame: &Frame, elapsed: Option<Duration>) {
        if let Some((command, _)) = self.started.remove(&(to, frame.request_id)) {
            let c = command as usize;
            self.requests[c][result_of(&frame.message)] += 1;
            if let Message::Error { code, .. } = &frame.message {
                self.errors[c][error_code_index(*code)] += 1;
            }
            if let Some(elapsed) = elapsed {
                self.latency[c].observe(elapsed);
            }
        }
    }

    pub fn peer_failed(&mut self, peer: SocketAddr) {
        if let Some(n) = self.peer_failures.get_mut(&peer) {
            *n += 1;
        } else if self.peer_failures.len() < MAX_PEERS_TRACKED {
            self.peer_failures.insert(peer, 1);
        }
    }

    /// Forgets requests whose reply will not come.
    fn forget_stale(&mut self, now_ms: u64) {
        self.started
            .retain(|_, (_, at)| now_ms.saturating_sub(*at) < FORGET_REQUEST_MS);
    }
}

/// What one scrape shows: the event loop's last publication.
#[derive(Clone, Debug, Default)]
struct Snapshot {
    /// The host's `GET_STATS` counters (merged over its vnodes), as last answered.
    counters: Vec<(String, u64)>,
    requests: [[u64; RESULTS.len()]; COMMANDS.len()],
    errors: [[u64; ERROR_CODES.len()]; COMMANDS.len()],
    latency: [Histogram; COMMANDS.len()],
    peer_failures: BTreeMap<SocketAddr, u64>,
    facts: LoopFacts,
}

/// What the event loop counts of its own state at each publication.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LoopFacts {
    /// Open connections: clients, peers that connected to us, peers we connected to.
    pub clients: u64,
    pub peers_inbound: u64,
    pub peers_outbound: u64,
    /// Peers the loop last found unreachable and has not reached since.
    pub peers_down: u64,
    /// The most ring members one of this host's vnodes knows (its routing table; the whole
    /// ring with one-hop routing).
    pub ring_nodes_known: u64,
    /// 1 while the host is a member of the ring (not joining, not left).
    pub in_ring: u64,
    /// Commands read on the RESP port, those answered on the spot (PING, INFO, CLIENT, ...)
    /// included: INFO's `total_commands_processed`.
    pub resp_commands: u64,
}

/// The event loop's side: its recorder, the shared snapshot and when to publish.
pub(crate) struct Metrics {
    pub recorder: Recorder,
    shared: Arc<Mutex<Snapshot>>,
    /// Counters of the last `GET_STATS` answer, kept for publications that cannot lock.
    counters: Vec<(String, u64)>,
    next_publish_ms: u64,
    /// When the `GET_STATS` in flight was asked, if one is.
    stats_asked_ms: Option<u64>,
    /// When the next `GET_STATS` is due.
    next_stats_ms: u64,
    pub addr: SocketAddr,
}

impl Metrics {
    /// Binds `addr` and starts the metrics thread: an address that cannot be bound is an
    /// error here, before the node starts.
    pub fn start(addr: SocketAddr) -> Result<Metrics> {
        let listener = TcpListener::bind(addr).map_err(|e| match crate::event_loop::bind_error(addr, e) {
            Error::Listen { addr, reason } => Error::Listen {
                addr,
                reason: format!("{reason} (the --metrics address)"),
            },
            other => other,
        })?;
        let addr = listener
            .local_addr()
            .map_err(Error::io("reading the metrics address"))?;
        let shared = Arc::new(Mutex::new(Snapshot::default()));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(SnapshotCollector(Arc::clone(&shared))));
        thread::Builder::new()
            .name("chordkv-metrics".into())
            .spawn(move || serve(listener, registry))
            .map_err(Error::io("starting the metrics thread"))?;
        Ok(Metrics {
            recorder: Recorder::default(),
            shared,
            counters: Vec::new(),
            next_publish_ms: 0,
            stats_asked_ms: None,
            next_stats_ms: 0,
            addr,
        })
    }

    /// Whether the loop should ask the core for its counters now (and notes that it did).
    pub fn should_ask_stats(&mut self, now: u64) -> bool {
        match self.stats_asked_ms {
            Some(at) if now < at + STATS_RETRY_MS => false,
            _ if now < self.next_stats_ms => false,
            _ => {
                self.stats_asked_ms = Some(now);
                self.next_stats_ms = now + STATS_INTERVAL_MS;
                true
            }
        }
    }

    /// The core answered the loop's `GET_STATS`.
    pub fn stats_answered(&mut self, frame: Frame) {
        self.stats_asked_ms = None;
        if let Message::Stats { counters } = frame.message {
            self.counters = counters;
        }
    }

    /// Whether a publication is due at `now`.
    pub fn due(&self, now: u64) -> bool {
        now >= self.next_publish_ms
    }

    /// Publishes `facts` (what the loop counted) with the recorder's counts, unless a scrape
    /// holds the snapshot: then the next turn tries again.
    pub fn publish(&mut self, now: u64, facts: LoopFacts) {
        let Some(mut shared) = self.shared.try_lock() else {
            return;
        };
        self.recorder.forget_stale(now);
        *shared = Snapshot {
            counters: self.counters.clone(),
            requests: self.recorder.requests,
            errors: self.recorder.errors,
            latency: self.recorder.latency.clone(),
            peer_failures: self.recorder.peer_failures.clone(),
            facts,
        };
        self.next_publish_ms = now + PUBLISH_INTERVAL_MS;
    }
}

// ---- the metrics thread -------------------------------------------------------------------

fn serve(listener: TcpListener, registry: Registry) {
    for stream in listener.incoming() {
        match stream {
            // A failed scrape concerns that scraper only.
            Ok(stream) => drop(scrape(stream, &registry)),
            // Out of file descriptors, say: wait rather than spin.
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Serves one connection: one request, then close.
fn scrape(mut stream: TcpStream, registry: &Registry) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_millis(SCRAPE_DEADLINE_MS);
    let mut head = [0u8; MAX_REQUEST_HEAD_BYTES];
    let mut len = 0;
    let (method, path) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return respond(
                &mut stream,
                "408 Request Timeout",
                "text/plain",
                "request too slow\n",
                true,
            );
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut head[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                let method = request.method.unwrap_or("").to_string();
                let path = request.path.unwrap_or("").to_string();
                break (method, path);
            }
            Ok(httparse::Status::Partial) if len < head.len() => continue,
            Ok(httparse::Status::Partial) => {
                let status = "431 Request Header Fields Too Large";
                return respond(&mut stream, status, "text/plain", "request head too long\n", true);
            }
            Err(e) => {
                let body = format!("bad request: {e}\n");
                return respond(&mut stream, "400 Bad Request", "text/plain", &body, true);
            }
        }
    };
    stream.set_write_timeout(Some(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1)),
    ))?;
    let path = path.split('?').next().unwrap_or("");
    let body_wanted = method != "HEAD";
    if path != "/metrics" {
        return respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            "only /metrics is here\n",
            body_wanted,
        );
    }
    if method != "GET" && method != "HEAD" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "use GET\n",
            true,
        );
    }
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        return respond(
            &mut stream,
            "500 Internal Server Error",
            "text/plain",
            "encoding failed\n",
            true,
        );
    }
    let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    respond(&mut stream, "200 OK", kind, &text, body_wanted)
}

fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &str, with_body: bool) -> io::Result<()> {
    let allow = if status.starts_with("405") {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if with_body {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

// ---- encoding -------------------------------------------------------------------------------

/// Encodes the latest snapshot on each scrape.
#[derive(Debug)]
struct SnapshotCollector(Arc<Mutex<Snapshot>>);

/// Core counters that are not monotonic (gauges despite being in [`Stats`]).
const STATS_GAUGES: &[&str] = &["hops_max", "anti_entropy_last_round_repaired"];

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::result::Result<(), std::fmt::Error> {
        // Copy out and let go at once: the event loop `try_lock`s, and should rarely miss.
        let s = self.0.lock().clone();
        let f = s.facts;
        let e = &mut encoder;

        let help = "Client requests answered, by command and result (ok, redirect, error)";
        let mut m = e.encode_descriptor("chordkv_requests", help, None, MetricType::Counter)?;
        for (c, command) in COMMANDS {
            for (r, result) in RESULTS.iter().enumerate() {
                let labels = [("command", command), ("result", *result)];
                let n = s.requests[c as usize][r];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, u64, f64>(&n, None)?;
            }
        }
        let help = "Error replies to client requests, by command and error code (codes never \
                    returned yet are left out)";
        let mut m = e.encode_descriptor("chordkv_request_errors", help, None, MetricType::Counter)?;
        for (c, command) in COMMANDS {
            for (code, name) in ERROR_CODES.iter().enumerate() {
                let n = s.errors[c as usize][code];
                if n > 0 {
                    let labels = [("command", command), ("code", *name)];
                    m.encode_family(&labels)?
                        .encode_counter::<NoLabelSet, u64, f64>(&n, None)?;
                }
            }
        }
        let help = "Time from a client request entering the node to its reply leaving, by command";
        let mut m = e.encode_descriptor(
            "chordkv_request_duration",
            help,
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (c, command) in COMMANDS {
            let h = &s.latency[c as usize];
            m.encode_family(&[("command", command)])?
                .encode_histogram::<NoLabelSet>(
                    h.sum_seconds(),
                    h.count(),
                    &h.buckets(),
                    None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
                )?;
        }
        let help = "Failures to reach a peer (connect, write, lost connection), by peer address";
        let mut m = e.encode_descriptor("chordkv_peer_failures", help, None, MetricType::Counter)?;
        for (peer, n) in &s.peer_failures {
            m.encode_family(&[("peer", peer.to_string())])?
                .encode_counter::<NoLabelSet, u64, f64>(n, None)?;
        }
        let help = "Open connections: clients, peers connected to this node, peers it connected to";
        let mut m = e.encode_descriptor("chordkv_connections", help, None, MetricType::Gauge)?;
        for (kind, n) in [
            ("client", f.clients),
            ("peer_inbound", f.peers_inbound),
            ("peer_outbound", f.peers_outbound),
        ] {
            m.encode_family(&[("kind", kind)])?.encode_gauge(&(n as i64))?;
        }
        let help = "Commands read on the Redis-protocol port, those answered without the ring \
                    (PING, INFO, CLIENT, HELLO, ...) included: INFO's total_commands_processed";
        e.encode_descriptor("chordkv_resp_commands", help, None, MetricType::Counter)?
            .encode_counter::<NoLabelSet, u64, f64>(&f.resp_commands, None)?;
        gauge(
            e,
            "chordkv_peers_down",
            "Peers found unreachable and not reached since",
            f.peers_down,
        )?;
        gauge(
            e,
            "chordkv_ring_nodes_known",
            "Ring members known to this node: the most any of its vnodes has in its routing table \
             (itself included; the whole ring with one-hop routing)",
            f.ring_nodes_known,
        )?;
        gauge(
            e,
            "chordkv_in_ring",
            "1 while this node is a member of the ring",
            f.in_ring,
        )?;

        // The core's GET_STATS counters, by their names (`chordkv stats` shows the same).
        let is_counter =
            |name: &str| Stats::default().counters().any(|(n, _)| n == name) && !STATS_GAUGES.contains(&name);
        let mut per_vnode: BTreeMap<&str, Vec<(&str, u64)>> = BTreeMap::new();
        for (name, value) in &s.counters {
            if let Some(rest) = name.strip_prefix("vnode.") {
                if let Some((vnode, what)) = rest.split_once('.') {
                    per_vnode.entry(what).or_default().push((vnode, *value));
                }
                continue;
            }
            core_metric(e, name, *value, is_counter(name))?;
        }
        for (what, values) in per_vnode {
            let name = format!("vnode_{what}");
            let help = format!("{what} of one vnode (GET_STATS' vnode.<i>.{what})");
            let (name, ty) = core_name(&name, is_counter(what));
            let mut m = e.encode_descriptor(&name, &help, None, ty)?;
            for (vnode, value) in values {
                let labels = [("vnode", vnode)];
                encode_u64(m.encode_family(&labels)?, ty, value)?;
            }
        }
        Ok(())
    }
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> std::result::Result<(), std::fmt::Error> {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&(v as i64))
}

/// The metric name and type of a core counter: `chordkv_` before it, milliseconds as seconds
/// (the value is scaled in [`core_metric`]).
fn core_name(name: &str, counter: bool) -> (String, MetricType) {
    let name = name.replace('.', "_");
    let name = match name.strip_suffix("_ms") {
        Some(stem) => format!("{stem}_seconds"),
        None => name,
    };
    let ty = if counter {
        MetricType::Counter
    } else {
        MetricType::Gauge
    };
    // A counter's `_total` is added by the encoder.
    let name = if counter {
        name.strip_suffix("_total").map(str::to_string).unwrap_or(name)
    } else {
        name
    };
    (format!("chordkv_{name}"), ty)
}

fn core_metric(
    e: &mut DescriptorEncoder,
    name: &str,
    value: u64,
    counter: bool,
) -> std::result::Result<(), std::fmt::Error> {
    let (metric, ty) = core_name(name, counter);
    let help = format!("GET_STATS' {name} (see `chordkv stats`)");
    let m = e.encode_descriptor(&metric, &help, None, ty)?;
    if name.ends_with("_ms") {
        encode_f64(m, ty, value as f64 / 1000.0)
    } else {
        encode_u64(m, ty, value)
    }
}

fn encode_u64(mut m: MetricEncoder, ty: MetricType, value: u64) -> std::result::Result<(), std::fmt::Error> {
    match ty {
        MetricType::Counter => m.encode_counter::<NoLabelSet, u64, f64>(&value, None),
        _ => m.encode_gauge(&(value.min(i64::MAX as u64) as i64)),
    }
}

fn encode_f64(mut m: MetricEncoder, ty: MetricType, value: f64) -> std::result::Result<(), std::fmt::Error> {
    match ty {
        MetricType::Counter => m.encode_counter::<NoLabelSet, f64, f64>(&value, None),
        _ => m.encode_gauge(&value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_labels_follow_the_wire_values() {
        for (i, name) in ERROR_CODES.iter().enumerate().skip(1) {
            let code = ErrorCode::from_u16(i as u16).expect("a known code");
            assert_eq!(error_code_index(code), i);
            // `BadRequest` is `bad_request`.
            let mut snake = String::new();
            for ch in format!("{code:?}").chars() {
                if ch.is_uppercase() && !snake.is_empty() {
                    snake.push('_');
                }
                snake.push(ch.to_ascii_lowercase());
            }
            assert_eq!(*name, snake);
        }
        let next = ERROR_CODES.len() as u16;
        assert_eq!(ErrorCode::from_u16(next), None, "a new code needs its label");
    }

    #[test]
    fn error_replies_are_counted_by_command_and_code() {
        let mut r = Recorder::default();
        let get = Frame::new(
            7,
            Message::Get {
                key: bytes::Bytes::from_static(b"k"),
            },
        );
        r.start(1, &get, 0);
        let error = Message::Error {
            code: ErrorCode::Unavailable,
            hops: 0,
            text: "no quorum".into(),
        };
        r.finish(1, &Frame::new(7, error), None);
        let (c, code) = (Command::Get as usize, ErrorCode::Unavailable as usize);
        assert_eq!(r.errors[c][code], 1);
        assert_eq!(r.requests[c][2], 1, "and as result=error");
        assert_eq!(r.errors.iter().flatten().sum::<u64>(), 1);
    }

    #[test]
    fn core_counters_get_prometheus_names() {
        assert_eq!(
            core_name("ops_get", true),
            ("chordkv_ops_get".into(), MetricType::Counter)
        );
        assert_eq!(
            core_name("uptime_ms", false),
            ("chordkv_uptime_seconds".into(), MetricType::Gauge)
        );
        assert_eq!(core_name("keys_primary", false).0, "chordkv_keys_primary");
        // No unit but seconds, and no `_sum` that is not a histogram's.
        assert_eq!(
            core_name("keys_primary_ttl_remaining_ms", false).0,
            "chordkv_keys_primary_ttl_remaining_seconds"
        );
    }

    #[test]
    fn a_snapshot_encodes_as_openmetrics_text() {
        let shared = Arc::new(Mutex::new(Snapshot::default()));
        let mut rec = Recorder::default();
        let get = Frame::new(
            7,
            Message::Get {
                key: bytes::Bytes::from_static(b"k"),
            },
        );
        for id in [7, 8] {
            rec.start(
                9,
                &Frame {
                    request_id: id,
                    ..get.clone()
                },
                0,
            );
            rec.finish(9, &Frame::new(id, Message::Ping), Some(Duration::from_micros(30)));
        }
        rec.peer_failed("127.0.0.1:1".parse().unwrap());
        rec.start(
            9,
            &Frame {
                request_id: 99,
                ..get.clone()
            },
            0,
        );
        let busy = Message::Error {
            code: ErrorCode::Busy,
            hops: 0,
            text: "queue full".into(),
        };
        rec.finish(9, &Frame::new(99, busy), None);
        *shared.lock() = Snapshot {
            counters: vec![
                ("ops_get".into(), 4),
                ("keys".into(), 2),
                ("vnode.0.keys".into(), 2),
            ],
            requests: rec.requests,
            errors: rec.errors,
            latency: rec.latency.clone(),
            peer_failures: rec.peer_failures.clone(),
            facts: LoopFacts {
                clients: 1,
                ..LoopFacts::default()
            },
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(SnapshotCollector(shared)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "chordkv_requests_total{command=\"get\",result=\"ok\"} 2",
            "chordkv_requests_total{command=\"get\",result=\"error\"} 1",
            "chordkv_request_errors_total{command=\"get\",code=\"busy\"} 1",
            "chordkv_request_duration_seconds_count{command=\"get\"} 2",
            // Cumulative, and no bucket above the count.
            "chordkv_request_duration_seconds_bucket{le=\"10.0\",command=\"get\"} 2",
            "chordkv_request_duration_seconds_bucket{le=\"+Inf\",command=\"get\"} 2",
            "chordkv_peer_failures_total{peer=\"127.0.0.1:1\"} 1",
            "chordkv_connections{kind=\"client\"} 1",
            "chordkv_ops_get_total 4",
            "chordkv_keys 2",
            "chordkv_vnode_keys{vnode=\"0\"} 2",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
