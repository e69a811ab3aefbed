//! `chordkv top`: a live view of the whole ring, one row per host, refreshed every interval
//! (like `redis-cli --stat`, over every node of the ring).
//!
//! Each refresh walks the ring from `--node` ([`client::walk_ring_as`], as `chordkv ring`
//! does), asks every host it reached for its counters (`GET_STATS`, as `chordkv stats`), and
//! turns the differences between this refresh's counters and the last one's into rates over
//! the interval ([`Interval::between`]):
//!
//! ```text
//!   refresh k-1          refresh k
//!   counters c0 at t0    counters c1 at t1     ops/s  = (ops1 - ops0) / (t1 - t0)
//!                                              hops   = (hops_total1 - hops_total0)
//!                                                       / (ops_coordinated1 - ops_coordinated0)
//!                                              p99    = quantile 0.99 of (buckets1 - buckets0)
//! ```
//!
//! The p99 comes from the node's cumulative latency buckets (`GET_STATS`' `latency_le_us.*`,
//! server `latency.rs`): the counts of the interval are the differences of two snapshots, and
//! the quantile is interpolated linearly inside the bucket that holds it, which is what
//! Prometheus' `histogram_quantile` does ([`quantile_us`]).
//!
//! Rows are per host (one process), not per ring position: a host with virtual nodes answers
//! `GET_STATS` summed over its positions and times its requests once, so its rates are the
//! host's. A member the ring keeps listing though it does not answer (partition policy
//! `consistent`) is `down` for as long as it is listed. A host reached by an earlier walk that
//! this walk does not reach is taken as crashed or as gone by the traces it leaves in the ring
//! ([`Top::vanished_rows`]): a crashed one is `down` while they last, one that left
//! disappears.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Context};
use clap::Args;

use chordkv_client::{self as client, Access, Client, RingReport};
use chordkv_protocol::NodeStatus;
use chordkv_server::latency::BUCKET_PREFIX as LATENCY_BUCKET_PREFIX;

use crate::{parse_addr, Outcome, Target, RING_WALK_MAX_NODES};

/// The quantile shown in the `P99_MS` column.
pub const QUANTILE: f64 = 0.99;
/// Default time between refreshes, in seconds.
pub const DEFAULT_INTERVAL_SECS: f64 = 1.0;
/// Default time one node may take to connect and to answer one request, in milliseconds: a
/// node that does not answer costs a refresh at most this per request to it.
pub const DEFAULT_NODE_TIMEOUT_MS: u64 = 1_000;
/// How often the wait between refreshes looks for Ctrl-C.
const STOP_POLL: Duration = Duration::from_millis(50);
/// Clears the screen and moves the cursor home (ANSI: `ESC [ H`, `ESC [ 2 J`): the only
/// terminal control `top` uses, so there is no terminal mode to restore on exit.
const CLEAR_HOME: &str = "\x1b[H\x1b[2J";
/// Counters whose differences make the `ERRORS` column.
const ERROR_COUNTERS: [&str; 3] = ["ops_failed", "rpc_timeouts", "store_errors"];

/// `chordkv top`'s one-line help.
pub const ABOUT: &str = "Watch the whole ring live: one row per host, refreshed every interval";

/// `chordkv top --help`: what it shows, column by column, with units.
pub const LONG_ABOUT: &str = "\
Watch the whole ring live: one row per host, refreshed every interval

Each refresh walks the ring from --node (as `ring` does), asks every host for its
counters (as `stats` does), and shows the rates over the interval since the last
refresh (the first refresh has none: `-`). On a terminal the screen is redrawn in
place; otherwise (a pipe, a file) each refresh prints plain lines, for scripts:

  TIME ring nodes=N hosts=H consistent=yes|no ops/s=R [error=WHY, when no node walked]
  TIME node id=.. addr=.. state=.. keys=.. primary=.. replica=.. ops/s=.. p99_ms=.. hops=.. errors=..

TIME is UTC (RFC 3339, ms). The summary: ring positions walked (vnodes count one each,
members listed down included), hosts shown, the ring's verdict as `chordkv ring` gives
it, and the sum of the hosts' ops/s. The columns, per host (a process, with all its
vnodes):

  ID       first 12 hex digits of the host's first ring position
  STATE    active, joining, leaving (any of its positions is); down (a member that
           does not answer: listed down by the ring; or reached by an earlier refresh
           and gone from the walk as a crash would: while the ring was not
           consistent, or while its hosts came to remember more departed neighbours;
           shown until the ring is consistent and remembers none; a host that left
           gracefully disappears); unreachable (reached by the walk, but its counters
           did not come within --node-timeout-ms)
  KEYS     live keys held; PRIMARY those of its own ranges, REPLICA the copies it
           holds for others
  OPS/S    client operations (get, put, delete, execute, scan steps) it answered, per
           second over the interval
  P99_MS   99th percentile of their latency over the interval, in milliseconds, from
           a request entering the node to its reply leaving (from the node's cumulative
           latency buckets, as Prometheus' histogram_quantile computes it: interpolated
           inside a bucket, 25 us to 10 s)
  HOPS     mean hops of the operations it routed over the interval
  ERRORS   over the interval: operations answered with an error (ops_failed), requests
           to peers that timed out (rpc_timeouts) and store failures (store_errors)

A host that left disappears; a new one appears. Exits 0 after --count refreshes or
on Ctrl-C (SIGINT or SIGTERM; a second one exits at once, 130 or 143); 1 only when
the ring cannot be walked at the first refresh.

Cost: each refresh is one GET_INFO per ring position and one GET_STATS per host;
GET_STATS counts the host's keys, about 50 ms of its event loop per million keys
(server/src/metrics.rs measured it), so give hosts that hold millions of keys a
longer --interval.";

/// `chordkv top`'s flags.
#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    target: Target,
    /// Seconds between refreshes (fractions allowed, e.g. 0.2).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_INTERVAL_SECS, value_parser = parse_interval)]
    interval: f64,
    /// Stop after N refreshes [default: until Ctrl-C].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Time one node may take to connect and to answer one request, in milliseconds; a node
    /// slower than this is shown `unreachable` or `down` for that refresh. (The global
    /// --timeout-ms of the other client commands does not apply to `top`.)
    #[arg(
        long,
        value_name = "MS",
        default_value_t = DEFAULT_NODE_TIMEOUT_MS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    node_timeout_ms: u64,
    /// Print one JSON object per refresh on one line: {"time", "nodes", "hosts", "consistent",
    /// "ops_per_s", "error", "rows": [{"id", "addr", "state", "keys", "keys_primary",
    /// "keys_replica", "ops_per_s", "p99_ms", "hops_mean", "errors"}]} (null where a value is
    /// unknown).
    #[arg(long)]
    json: bool,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!(
            "invalid interval '{s}': expected seconds, more than 0, e.g. 1 or 0.2"
        )),
    }
}

// ---- counters and the interval math --------------------------------------------------------

/// What `top` reads of one host's `GET_STATS` at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    /// Client operations answered: the latency histogram's count, or `ops_coordinated` for a
    /// node that reports no histogram.
    pub ops: u64,
    /// `ops_coordinated`: operations this host routed, the denominator of the hop mean.
    pub coordinated: u64,
    /// `hops_total`.
    pub hops: u64,
    /// The sum of [`ERROR_COUNTERS`].
    pub errors: u64,
    /// Live keys held (`keys`), those of the primary range (`keys_primary`), and copies held
    /// for others (`keys_replica`).
    pub keys: u64,
    pub keys_primary: u64,
    pub keys_replica: u64,
    /// `departed`: neighbours that stopped answering and that this host still remembers
    /// (partition policy `available`, for `departed_ttl_ms`).
    pub departed: u64,
    /// Cumulative latency buckets `(upper bound in µs, requests within it)` in increasing
    /// bound order, `+inf` last; empty when the node reports none.
    pub latency: Vec<(f64, u64)>,
}

impl Counters {
    /// Reads `list` (`GET_STATS`' names and values); a name missing counts as 0.
    pub fn from_stats(list: &[(String, u64)]) -> Counters {
        let get = |name: &str| list.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v);
        let mut latency: Vec<(f64, u64)> = list
            .iter()
            .filter_map(|(name, v)| {
                let bound = name.strip_prefix(LATENCY_BUCKET_PREFIX)?;
                let bound = if bound == "inf" {
                    f64::INFINITY
                } else {
                    bound.parse::<f64>().ok()?
                };
                Some((bound, *v))
            })
            .collect();
        latency.sort_by(|a, b| a.0.total_cmp(&b.0));
        let ops = match latency.last() {
            Some((_, n)) => *n,
            None => get("ops_coordinated"),
        };
        Counters {
            ops,
            coordinated: get("ops_coordinated"),
            hops: get("hops_total"),
            errors: ERROR_COUNTERS.iter().map(|n| get(n)).sum(),
            keys: get("keys"),
            keys_primary: get("keys_primary"),
            keys_replica: get("keys_replica"),
            departed: get("departed"),
            latency,
        }
    }
}

/// One host's rates over the interval between two refreshes.
#[derive(Clone, Debug, PartialEq)]
pub struct Interval {
    /// Client operations answered per second.
    pub ops_per_s: f64,
    /// The [`QUANTILE`] of their latency in µs; `None` without requests or histogram.
    pub p99_us: Option<f64>,
    /// Mean hops of the operations the host routed; `None` when it routed none.
    pub hops_mean: Option<f64>,
    /// Errors counted in the interval ([`ERROR_COUNTERS`]).
    pub errors: u64,
}

impl Interval {
    /// The rates between `before` and `after`, `secs` apart; `None` when a counter went back
    /// (the node restarted: its counters began again) or no time passed.
    pub fn between(before: &Counters, after: &Counters, secs: f64) -> Option<Interval> {
        let ops = after.ops.checked_sub(before.ops)?;
        let coordinated = after.coordinated.checked_sub(before.coordinated)?;
        let hops = after.hops.checked_sub(before.hops)?;
        let errors = after.errors.checked_sub(before.errors)?;
        if secs <= 0.0 || !secs.is_finite() {
            return None;
        }
        Some(Interval {
            ops_per_s: ops as f64 / secs,
            p99_us: quantile_us(QUANTILE, &before.latency, &after.latency),
            hops_mean: (coordinated > 0).then(|| hops as f64 / coordinated as f64),
            errors,
        })
    }
}

/// The quantile `q` (0 to 1) in µs of the requests counted between two snapshots of the same
/// cumulative histogram (`(upper bound in µs, cumulative count)`, increasing bounds, `+inf`
/// last), as Prometheus' `histogram_quantile` computes it: the bucket where the rank
/// `q * count` falls, and linear interpolation between its bounds (the first bucket's lower
/// bound is 0; a rank in the `+inf` bucket answers the highest finite bound). `None` when no
/// request was counted or the snapshots do not have the same buckets.
pub fn quantile_us(q: f64, before: &[(f64, u64)], after: &[(f64, u64)]) -> Option<f64> {
    let same_bounds = before.len() == after.len() && before.iter().zip(after).all(|(b, a)| b.0 == a.0);
    if !same_bounds || after.is_empty() {
        return None;
    }
    let counts: Vec<(f64, u64)> = after
        .iter()
        .zip(before)
        .map(|(a, b)| Some((a.0, a.1.checked_sub(b.1)?)))
        .collect::<Option<_>>()?;
    let total = counts.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let i = counts.iter().position(|&(_, n)| n as f64 >= rank)?;
    let (upper, n) = counts[i];
    let (lower, below) = if i == 0 { (0.0, 0) } else { counts[i - 1] };
    if upper.is_infinite() {
        return Some(lower);
    }
    if n == below {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below as f64) / (n - below) as f64)
}

// ---- one refresh ----------------------------------------------------------------------------

/// A host's state in a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Active,
    Joining,
    Leaving,
    /// A member that does not answer: listed down by the ring, or reached before and gone
    /// from a ring that has not healed.
    Down,
    /// Reached by the walk, but its counters could not be read in time.
    Unreachable,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Joining => "joining",
            State::Leaving => "leaving",
            State::Down => "down",
            State::Unreachable => "unreachable",
        }
    }

    /// A host's state from its positions': leaving or joining if any is, else active.
    fn of_positions(statuses: impl Iterator<Item = NodeStatus>) -> State {
        statuses.fold(State::Active, |state, s| match (state, s) {
            (State::Leaving, _) | (_, NodeStatus::Leaving) => State::Leaving,
            (State::Joining, _) | (_, NodeStatus::Joining) => State::Joining,
            _ => State::Active,
        })
    }
}

/// One row: a host, what it holds, and its rates over the last interval.
#[derive(Clone, Debug)]
pub struct Row {
    /// The first 12 hex digits of the host's first ring position, `-` when unknown.
    pub id: String,
    pub addr: SocketAddr,
    pub state: State,
    /// Its counters now, when it answered.
    pub counters: Option<Counters>,
    /// Its rates since the last refresh, when it answered both.
    pub interval: Option<Interval>,
}

/// What one refresh shows.
#[derive(Clone, Debug)]
pub struct Refresh {
    /// Wall-clock time of the refresh.
    pub time: SystemTime,
    /// Ring positions in the walk (reached and listed down), and hosts among them.
    pub nodes: usize,
    pub hosts: usize,
    pub consistent: bool,
    /// Why the ring could not be walked, when it could not.
    pub error: Option<String>,
    pub rows: Vec<Row>,
}

impl Refresh {
    /// The ring's client operations per second: the sum over the rows that have a rate.
    pub fn ops_per_s(&self) -> Option<f64> {
        let rates: Vec<f64> = self
            .rows
            .iter()
            .filter_map(|r| r.interval.as_ref())
            .map(|i| i.ops_per_s)
            .collect();
        (!rates.is_empty()).then(|| rates.iter().sum())
    }
}

/// What a refresh saw of the traces a crash leaves in the ring ([`Top::vanished_rows`]).
#[derive(Clone, Copy, Debug)]
struct Traces {
    /// The walk found the ring consistent.
    consistent: bool,
    /// Departed neighbours remembered, summed over the hosts...
    departed: u64,
    /// ...and whether that is more than at the last refresh.
    more_departed: bool,
}

impl Traces {
    /// Whether a host gone from the walk is (still) shown as crashed, given whether it was
    /// taken as crashed before: it vanished as a crash would (the ring not consistent, or more
    /// departed neighbours remembered), and the ring has not yet healed and forgotten it.
    fn keep_as_crashed(self, was_crashed: bool) -> bool {
        let crashed = was_crashed || !self.consistent || self.more_departed;
        let healed = self.consistent && self.departed == 0;
        crashed && !healed
    }
}

/// What `top` remembers between refreshes.
struct Top {
    start: SocketAddr,
    access: Access,
    timeout: Duration,
    /// The hosts reached so far, with their id prefix and last state.
    known: BTreeMap<SocketAddr, (String, State)>,
    /// Each host's counters at the last refresh it answered.
    last: BTreeMap<SocketAddr, (Instant, Counters)>,
    /// Open connections for `GET_STATS`, kept across refreshes.
    conns: BTreeMap<SocketAddr, Client>,
    /// Hosts taken as crashed when they vanished from the walk ([`Top::vanished_rows`]).
    crashed: BTreeSet<SocketAddr>,
    /// Departed neighbours remembered, summed over the hosts, at the last refresh.
    departed: u64,
}

impl Top {
    /// One refresh. Fails only when the ring cannot be walked from any host known and none
    /// was ever reached (the first refresh): later, such a refresh is rows of known hosts.
    fn refresh(&mut self) -> anyhow::Result<Refresh> {
        let time = SystemTime::now();
        let (report, error) = match self.walk() {
            Ok(report) => (Some(report), None),
            Err(e) if self.known.is_empty() => return Err(e),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        let mut rows = match &report {
            Some(report) => self.walked_rows(report),
            None => Vec::new(),
        };
        let consistent = report.as_ref().is_some_and(|r| r.consistent);
        let vanished = self.vanished_rows(&rows, consistent, report.is_some());
        rows.extend(vanished);
        for row in &rows {
            self.known.insert(row.addr, (row.id.clone(), row.state));
        }
        let (nodes, hosts) = match &report {
            Some(r) => (r.nodes.len() + r.down.len(), rows.len()),
            None => (0, rows.len()),
        };
        Ok(Refresh {
            time,
            nodes,
            hosts,
            consistent,
            error,
            rows,
        })
    }

    /// The rows of the hosts `report` reached, in ring order of their first position, then
    /// those of the members it lists down.
    fn walked_rows(&mut self, report: &RingReport) -> Vec<Row> {
        let mut rows = Vec::new();
        for host in &report.hosts {
            let positions = report.nodes.iter().filter(|n| n.addr.host == host.host);
            let first = report.nodes.iter().find(|n| n.addr.host == host.host);
            let id = first.map_or_else(|| "-".to_string(), |n| n.id.short(12));
            let state = State::of_positions(positions.map(|n| n.status));
            rows.push(self.row(host.host, id, state));
        }
        let mut down: Vec<SocketAddr> = report.down.iter().map(|a| a.host).collect();
        down.sort();
        down.dedup();
        for host in down {
            if rows.iter().all(|r| r.addr != host) {
                let id = self
                    .known
                    .get(&host)
                    .map_or_else(|| "-".to_string(), |k| k.0.clone());
                rows.push(self.down_row(host, id));
            }
        }
        rows
    }

    /// The rows of hosts reached before and not by this walk (`shown`: its rows): each crashed,
    /// or left (or was forgotten). One is taken as crashed when it vanishes from a ring that is
    /// not consistent, or while more departed neighbours are remembered than at the last
    /// refresh (`available` drops a crashed node from the ring within a stabilize period, but
    /// its neighbours remember it as departed for `departed_ttl_ms`; a graceful leave does
    /// neither). A crashed host that does not answer is `down` until the ring is consistent
    /// and remembers no departed neighbour; a host that left disappears at once.
    fn vanished_rows(&mut self, shown: &[Row], consistent: bool, walked: bool) -> Vec<Row> {
        // Without a walk, the hosts' counters are not all there: the last sum stands.
        let departed = if walked {
            shown
                .iter()
                .filter_map(|r| r.counters.as_ref())
                .map(|c| c.departed)
                .sum()
        } else {
            self.departed
        };
        let traces = Traces {
            consistent,
            departed,
            more_departed: departed > self.departed,
        };
        self.departed = departed;
        let vanished: Vec<(SocketAddr, String, State)> = self
            .known
            .iter()
            .filter(|(h, _)| shown.iter().all(|r| r.addr != **h))
            .map(|(h, (id, state))| (*h, id.clone(), *state))
            .collect();
        let mut rows = Vec::new();
        for (host, id, state) in vanished {
            if !traces.keep_as_crashed(self.crashed.contains(&host)) {
                self.forget(host);
                continue;
            }
            self.crashed.insert(host);
            let row = self.row(host, id, state);
            match (row.counters.is_some(), walked) {
                // Answering, but not in the ring that was walked: not a member of it.
                (true, true) => self.forget(host),
                (true, false) => rows.push(row),
                (false, _) => rows.push(Row {
                    state: State::Down,
                    ..row
                }),
            }
        }
        rows
    }

    /// Walks from `--node`, else from each host known, until one walk succeeds.
    fn walk(&self) -> anyhow::Result<RingReport> {
        let starts =
            std::iter::once(self.start).chain(self.known.keys().copied().filter(|h| *h != self.start));
        let mut first_error = None;
        for start in starts {
            match client::walk_ring_as(start, self.timeout, RING_WALK_MAX_NODES, &self.access) {
                Ok(report) => return Ok(report),
                Err(e) => {
                    first_error.get_or_insert_with(|| {
                        anyhow!(e).context(format!("cannot walk the ring from {start}"))
                    });
                }
            }
        }
        Err(first_error.unwrap_or_else(|| anyhow!("no node to walk the ring from")))
    }

    /// The row of `host`, asking it for its counters: `Unreachable` when it does not answer.
    fn row(&mut self, host: SocketAddr, id: String, state: State) -> Row {
        let now = Instant::now();
        let Some(counters) = self.stats(host) else {
            self.last.remove(&host);
            return Row {
                id,
                addr: host,
                state: State::Unreachable,
                counters: None,
                interval: None,
            };
        };
        let interval = self.last.get(&host).and_then(|(at, before)| {
            Interval::between(before, &counters, now.duration_since(*at).as_secs_f64())
        });
        self.last.insert(host, (now, counters.clone()));
        Row {
            id,
            addr: host,
            state,
            counters: Some(counters),
            interval,
        }
    }

    fn down_row(&mut self, host: SocketAddr, id: String) -> Row {
        self.last.remove(&host);
        self.conns.remove(&host);
        Row {
            id,
            addr: host,
            state: State::Down,
            counters: None,
            interval: None,
        }
    }

    /// `host`'s counters over the connection kept for it, or a new one (once more when the
    /// kept one fails: the node may have closed it as idle). `None` when it does not answer.
    fn stats(&mut self, host: SocketAddr) -> Option<Counters> {
        if let Some(mut c) = self.conns.remove(&host) {
            if let Ok(list) = c.stats() {
                self.conns.insert(host, c);
                return Some(Counters::from_stats(&list));
            }
        }
        let mut c = Client::connect_as(host, self.timeout, &self.access).ok()?;
        let list = c.stats().ok()?;
        self.conns.insert(host, c);
        Some(Counters::from_stats(&list))
    }

    fn forget(&mut self, host: SocketAddr) {
        self.crashed.remove(&host);
        self.known.remove(&host);
        self.last.remove(&host);
        self.conns.remove(&host);
    }
}

// ---- output ---------------------------------------------------------------------------------

/// `-` for a value not known.
fn or_dash<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

/// The cells of a row, in [`COLUMNS`] order.
fn cells(row: &Row) -> [String; 10] {
    let c = row.counters.as_ref();
    let i = row.interval.as_ref();
    [
        row.id.clone(),
        row.addr.to_string(),
        row.state.name().to_string(),
        or_dash(c, |c| c.keys.to_string()),
        or_dash(c, |c| c.keys_primary.to_string()),
        or_dash(c, |c| c.keys_replica.to_string()),
        or_dash(i, |i| format!("{:.1}", i.ops_per_s)),
        or_dash(i.and_then(|i| i.p99_us), |us| format!("{:.3}", us / 1000.0)),
        or_dash(i.and_then(|i| i.hops_mean), |h| format!("{h:.2}")),
        or_dash(i, |i| i.errors.to_string()),
    ]
}

/// Column titles of the table, and the keys of the plain lines.
const COLUMNS: [(&str, &str); 10] = [
    ("ID", "id"),
    ("ADDRESS", "addr"),
    ("STATE", "state"),
    ("KEYS", "keys"),
    ("PRIMARY", "primary"),
    ("REPLICA", "replica"),
    ("OPS/S", "ops/s"),
    ("P99_MS", "p99_ms"),
    ("HOPS", "hops"),
    ("ERRORS", "errors"),
];

fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The plain summary: ring size, verdict, total rate, and why the ring could not be walked.
fn summary(r: &Refresh) -> String {
    let ops = or_dash(r.ops_per_s(), |v| format!("{v:.1}"));
    let text = format!(
        "nodes={} hosts={} consistent={} ops/s={ops}",
        r.nodes,
        r.hosts,
        yes_no(r.consistent)
    );
    match &r.error {
        // Last: the error's text has spaces.
        Some(e) => format!("{text} error={e}"),
        None => text,
    }
}

/// Plain lines for a pipe: `TIME ring SUMMARY`, then `TIME node key=value ...` per row.
pub fn plain_lines(r: &Refresh) -> String {
    let t = timestamp(r.time);
    let mut text = format!("{t} ring {}\n", summary(r));
    for row in &r.rows {
        let fields: Vec<String> = COLUMNS
            .iter()
            .zip(cells(row))
            .map(|((_, key), v)| format!("{key}={v}"))
            .collect();
        text.push_str(&format!("{t} node {}\n", fields.join(" ")));
    }
    text
}

/// The screen for a terminal: a title, the summary, a table with aligned columns.
pub fn screen(r: &Refresh, interval_secs: f64) -> String {
    let mut rows: Vec<[String; 10]> = vec![COLUMNS.map(|(title, _)| title.to_string())];
    rows.extend(r.rows.iter().map(cells));
    let mut widths = [0usize; 10];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let ops = or_dash(r.ops_per_s(), |v| format!("{v:.1}"));
    let ring = match &r.error {
        Some(e) => format!("ring: not walked ({e}); {} hosts known", r.hosts),
        None => format!(
            "ring: {} positions on {} hosts, consistent: {}, {ops} ops/s",
            r.nodes,
            r.hosts,
            yes_no(r.consistent)
        ),
    };
    let mut text = format!(
        "chordkv top  {}  every {interval_secs}s (Ctrl-C quits)\n{ring}\n\n",
        timestamp(r.time),
    );
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            // Names left, numbers right.
            .map(|(i, (cell, w))| {
                if i < 3 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// One JSON object for a refresh.
pub fn json_line(r: &Refresh) -> String {
    let rows: Vec<serde_json::Value> = r
        .rows
        .iter()
        .map(|row| {
            let c = row.counters.as_ref();
            let i = row.interval.as_ref();
            serde_json::json!({
                "id": row.id,
                "addr": row.addr.to_string(),
                "state": row.state.name(),
                "keys": c.map(|c| c.keys),
                "keys_primary": c.map(|c| c.keys_primary),
                "keys_replica": c.map(|c| c.keys_replica),
                "ops_per_s": i.map(|i| i.ops_per_s),
                "p99_ms": i.and_then(|i| i.p99_us).map(|us| us / 1000.0),
                "hops_mean": i.and_then(|i| i.hops_mean),
                "errors": i.map(|i| i.errors),
            })
        })
        .collect();
    serde_json::json!({
        "time": timestamp(r.time),
        "nodes": r.nodes,
        "hosts": r.hosts,
        "consistent": r.consistent,
        "ops_per_s": r.ops_per_s(),
        "error": r.error,
        "rows": rows,
    })
    .to_string()
}

// ---- the command ----------------------------------------------------------------------------

/// Runs `chordkv top` until `--count` refreshes or SIGINT/SIGTERM. Fails when the ring cannot
/// be walked at the first refresh (nothing could ever be shown); after that, nodes that do
/// not answer are rows, never an error.
pub fn run(args: TopArgs) -> anyhow::Result<Outcome> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The first signal ends the wait (or the refresh in progress, within its timeouts);
        // a second one exits at once, 128 + the signal as a shell reports it.
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&stop))
            .context("cannot install a signal handler")?;
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("cannot install a signal handler")?;
    }
    let mut top = Top {
        start: parse_addr(&args.target.node)?,
        access: args.target.access()?,
        timeout: Duration::from_millis(args.node_timeout_ms),
        known: BTreeMap::new(),
        last: BTreeMap::new(),
        conns: BTreeMap::new(),
        crashed: BTreeSet::new(),
        departed: 0,
    };
    let tty = !args.json && io::stdout().is_terminal();
    let interval = Duration::from_secs_f64(args.interval);
    for _ in 0..args.count.unwrap_or(u64::MAX) {
        let began = Instant::now();
        let refresh = top.refresh()?;
        let text = match (args.json, tty) {
            (true, _) => json_line(&refresh) + "\n",
            (false, true) => format!("{CLEAR_HOME}{}", screen(&refresh, args.interval)),
            (false, false) => plain_lines(&refresh),
        };
        let mut out = io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
        drop(out);
        if !wait_until(began + interval, &stop) {
            break;
        }
    }
    Ok(Outcome::Success)
}

/// Sleeps until `deadline`; `false` when a signal asked to stop first.
fn wait_until(deadline: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(STOP_POLL));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cumulative buckets over bounds 100, 1000, 10000 µs and +inf.
    fn buckets(counts: [u64; 4]) -> Vec<(f64, u64)> {
        [100.0, 1000.0, 10_000.0, f64::INFINITY]
            .into_iter()
            .zip(counts)
            .collect()
    }

    #[test]
    fn the_quantile_interpolates_inside_the_bucket_of_the_interval() {
        // Between the snapshots: 50 requests ≤ 100 µs, 40 in (100, 1000], 10 in (1000, 10000].
        let before = buckets([10, 10, 10, 10]);
        let after = buckets([60, 100, 110, 110]);
        // Rank 99 of 100 falls in (1000, 10000]: 9 of its 10, so 1000 + 9000 * 0.9.
        assert_eq!(quantile_us(0.99, &before, &after), Some(9_100.0));
        // Rank 50 is the last of the first bucket.
        assert_eq!(quantile_us(0.5, &before, &after), Some(100.0));
        // Rank 25 of 50 in [0, 100].
        assert_eq!(quantile_us(0.25, &before, &after), Some(50.0));
    }

    #[test]
    fn the_quantile_of_an_empty_or_mismatched_interval_is_unknown() {
        let same = buckets([5, 6, 7, 7]);
        assert_eq!(quantile_us(0.99, &same, &same), None);
        assert_eq!(quantile_us(0.99, &[], &[]), None);
        let other: Vec<(f64, u64)> = vec![(100.0, 5), (f64::INFINITY, 9)];
        assert_eq!(quantile_us(0.99, &same, &other), None);
        // Counts that went back: a restart between the snapshots.
        assert_eq!(
            quantile_us(0.99, &buckets([9, 9, 9, 9]), &buckets([1, 1, 1, 1])),
            None
        );
    }

    #[test]
    fn a_quantile_beyond_the_last_bound_is_the_last_bound() {
        let before = buckets([0, 0, 0, 0]);
        let after = buckets([0, 0, 1, 100]);
        assert_eq!(quantile_us(0.99, &before, &after), Some(10_000.0));
    }

    fn counters(ops: u64, coordinated: u64, hops: u64, errors: u64) -> Counters {
        Counters {
            ops,
            coordinated,
            hops,
            errors,
            ..Counters::default()
        }
    }

    #[test]
    fn rates_are_differences_over_the_interval() {
        let before = counters(1_000, 800, 900, 3);
        let after = counters(1_500, 1_200, 1_500, 5);
        let i = Interval::between(&before, &after, 2.0).unwrap();
        assert_eq!(i.ops_per_s, 250.0);
        assert_eq!(i.hops_mean, Some(1.5));
        assert_eq!(i.errors, 2);
        assert_eq!(i.p99_us, None);
    }

    #[test]
    fn an_idle_interval_has_no_hop_mean_and_a_restart_no_rates() {
        let c = counters(10, 10, 10, 0);
        let idle = Interval::between(&c, &c, 1.0).unwrap();
        assert_eq!((idle.ops_per_s, idle.hops_mean), (0.0, None));
        assert_eq!(Interval::between(&c, &counters(2, 2, 2, 0), 1.0), None);
        assert_eq!(Interval::between(&c, &c, 0.0), None);
    }

    #[test]
    fn counters_read_the_stats_list_by_name() {
        let list: Vec<(String, u64)> = [
            ("keys", 30),
            ("keys_primary", 10),
            ("keys_replica", 20),
            ("ops_coordinated", 7),
            ("hops_total", 4),
            ("ops_failed", 1),
            ("rpc_timeouts", 2),
            ("latency_le_us.inf", 9),
            ("latency_le_us.25", 3),
            ("latency_le_us.50", 5),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
        let c = Counters::from_stats(&list);
        assert_eq!((c.keys, c.keys_primary, c.keys_replica), (30, 10, 20));
        assert_eq!((c.ops, c.coordinated, c.hops, c.errors), (9, 7, 4, 3));
        assert_eq!(c.latency, vec![(25.0, 3), (50.0, 5), (f64::INFINITY, 9)]);
        // A node without a histogram: operations are those it coordinated.
        let old = Counters::from_stats(&list[..6]);
        assert_eq!((old.ops, old.latency.len()), (7, 0));
    }

    #[test]
    fn a_host_is_leaving_or_joining_if_one_of_its_positions_is() {
        use NodeStatus::*;
        assert_eq!(State::of_positions([Active, Active].into_iter()), State::Active);
        assert_eq!(State::of_positions([Active, Joining].into_iter()), State::Joining);
        assert_eq!(
            State::of_positions([Joining, Leaving, Active].into_iter()),
            State::Leaving
        );
    }

    #[test]
    fn a_vanished_host_is_crashed_by_the_traces_it_leaves_until_the_ring_heals() {
        let t = |consistent, departed, more_departed| Traces {
            consistent,
            departed,
            more_departed,
        };
        // A graceful leave: the ring stays consistent and nobody remembers a departure.
        assert!(!t(true, 0, false).keep_as_crashed(false));
        // While another crash is remembered, a leave is still no crash.
        assert!(!t(true, 1, false).keep_as_crashed(false));
        // A crash: the walk found the ring broken, or (`available`) a departure was noted.
        assert!(t(false, 0, false).keep_as_crashed(false));
        assert!(t(true, 1, true).keep_as_crashed(false));
        // Shown while remembered, dropped once the ring is whole and has forgotten it.
        assert!(t(true, 1, false).keep_as_crashed(true));
        assert!(!t(true, 0, false).keep_as_crashed(true));
    }

    #[test]
    fn plain_lines_carry_every_column_as_key_value() {
        let refresh = Refresh {
            time: SystemTime::UNIX_EPOCH,
            nodes: 2,
            hosts: 2,
            consistent: false,
            error: None,
            rows: vec![
                Row {
                    id: "0123456789ab".into(),
                    addr: "127.0.0.1:7000".parse().unwrap(),
                    state: State::Active,
                    counters: Some(counters(0, 0, 0, 0)),
                    interval: Some(Interval {
                        ops_per_s: 12.5,
                        p99_us: Some(250.0),
                        hops_mean: Some(1.0),
                        errors: 0,
                    }),
                },
                Row {
                    id: "-".into(),
                    addr: "127.0.0.1:7001".parse().unwrap(),
                    state: State::Down,
                    counters: None,
                    interval: None,
                },
            ],
        };
        let text = plain_lines(&refresh);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "1970-01-01T00:00:00.000Z ring nodes=2 hosts=2 consistent=no ops/s=12.5",
                "1970-01-01T00:00:00.000Z node id=0123456789ab addr=127.0.0.1:7000 state=active keys=0 \
                 primary=0 replica=0 ops/s=12.5 p99_ms=0.250 hops=1.00 errors=0",
                "1970-01-01T00:00:00.000Z node id=- addr=127.0.0.1:7001 state=down keys=- primary=- \
                 replica=- ops/s=- p99_ms=- hops=- errors=-",
            ]
        );
        let json: serde_json::Value = serde_json::from_str(&json_line(&refresh)).expect("JSON");
        assert_eq!(json["ops_per_s"], 12.5);
        assert_eq!(json["rows"][0]["p99_ms"], 0.25);
        assert_eq!(json["rows"][1]["state"], "down");
        assert!(json["rows"][1]["keys"].is_null());
        let screen = screen(&refresh, 1.0);
        assert!(
            screen.contains("ID            ADDRESS         STATE   KEYS"),
            "{screen}"
        );
    }
}
