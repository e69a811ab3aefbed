//! One run: start (or find) the cluster, preload, drive the load, verify, write the results.
//!
//! ```text
//!   thread 0 ── conn 0, conn T, ...  ┐  each thread: one request in flight, round-robin over
//!   thread 1 ── conn 1, ...          ├─ its connections; records into its own histograms
//!   ...                              ┘  and into a per-second interval the main thread drains
//!   main: every second drains the intervals -> timeline.csv row + progress (bar or line)
//! ```
//!
//! Open loop (`rate_per_s`): request i of thread t (of T) has the intended send time
//! `start + (i + t / T) / thread_rate` ([`Schedule`]): the threads' schedules are interleaved,
//! so the requests of all threads together are evenly spaced at the configured rate, at any
//! thread count (at 2 ops/s with 8 threads: one request every 0.5 s, not 8 at once every
//! 4 s). A thread that falls behind sends at once, and latency is measured from the intended
//! time (wrk2's coordinated-omission correction), service time from the actual send. Closed
//! loop: the next request goes when the last one completes.
//!
//! Throughput is the successful operations over the configured window (`duration_s`), not
//! over the time to the last completion (an open loop at a low rate would report too high a
//! rate), unless `max_ops` ended the run earlier.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};
use bytes::Bytes;
use chordkv_client::owner::OwnerClient;
use chordkv_client::{Access, Client, ClientError, DeleteResult, GetResult, PutResult};
use chordkv_core::rng::Rng;
use chordkv_harness::cluster::{ClusterSpec, LocalCluster, NetworkMode, NodeControl};
use chordkv_harness::history::{Anomaly, History as TimedHistory};
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;

use crate::faults::{self, Targets};
use crate::keys::{key_name, KeySpace, Purpose};
use crate::oplog::{failed_write_end, write_named_by, Attempts, OpLog, RunClock, UNKNOWN_WRITE};
use crate::plot;
use crate::progress::Progress;
use crate::report::{
    self, ClusterInfo, ErrorSummary, FaultRecord, HopsSummary, LatencySummary, Summary, TimelineRow,
};
use crate::verify::{self, FinalRead, History, Verdict, VerifyReport};
use crate::workload::{Entry, Workload};
use chordkv_core::chord::config::PartitionPolicy;

/// Where a run without `--out` puts its results directory, relative to the current one.
pub const DEFAULT_RESULTS_DIR: &str = "results";
/// Highest latency a histogram holds, in microseconds (longer ones are clamped to it).
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Significant digits of every latency histogram.
const SIGFIG: u8 = 3;
/// Bound of the wait for a local cluster's ring to become consistent.
pub(crate) const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause before retry n is `n * RETRY_BACKOFF`.
const RETRY_BACKOFF: Duration = Duration::from_millis(10);
/// Attempts of each final read of the verification.
const VERIFY_ATTEMPTS: u32 = 5;
/// How often the main thread reports progress and closes a timeline row.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Longest sleep of a thread waiting for its next intended send time, so it sees a stop.
const MAX_SLEEP: Duration = Duration::from_millis(50);
/// Failed requests in a row after which the preload or the final reads give up: the cluster
/// is unreachable, and retrying every key would take minutes.
const MAX_FAILURES_IN_A_ROW: u64 = 50;
/// Bound of the final reads: keys a cluster will not serve (under the `consistent` policy,
/// those whose majority of holders is dead) each cost every attempt's full timeout, and a
/// whole arc of them would keep a run for many minutes. The keys not read by then are
/// counted unreadable.
const VERIFY_BUDGET: Duration = Duration::from_secs(120);
/// Keys listed on stderr when writes are lost.
const LOST_KEYS_SHOWN: usize = 20;
/// Keys whose operations `LOADGEN_TRACE_KEY=anomalies` prints.
const TRACED_ANOMALIES: usize = 3;

/// The operations, in the order of the per-operation arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Get,
    Put,
    Delete,
}

impl Op {
    pub const ALL: [Op; 3] = [Op::Get, Op::Put, Op::Delete];

    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Delete => "delete",
        }
    }
}

/// What to run and where.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub workload: Workload,
    /// Target these nodes; `None`: start a local cluster per the workload's `cluster:`.
    pub nodes: Option<Vec<SocketAddr>>,
    /// The results directory; `None`: `<results_root>/<name>-<UTC timestamp>/`.
    pub out_dir: Option<PathBuf>,
    pub results_root: PathBuf,
    /// The `chordkv` binary for a local cluster; `None`: see [`find_chordkv`].
    pub chordkv_bin: Option<PathBuf>,
    /// Print a progress line to stderr every second.
    pub progress: bool,
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    pub summary: Summary,
    pub out_dir: PathBuf,
    /// Keys with lost writes, with what was expected and found (at most a few).
    pub lost_keys: Vec<String>,
}

/// The `chordkv` binary loadgen starts a local cluster with
/// ([`chordkv_harness::cluster::chordkv_binary`]); `--nodes` needs none.
pub fn find_chordkv() -> Result<PathBuf> {
    chordkv_harness::cluster::chordkv_binary().map_err(|e| {
        Error::step(
            "loadgen starts a local cluster with it; give --nodes to use a running one",
            e,
        )
    })
}

fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGFIG).expect("valid histogram bounds")
    // faulty code
}

fn hops_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 1 << 16, SIGFIG).expect("valid histogram bounds")
    // faulty code
}

/// Runs the workload and writes its results.
pub fn run(opts: RunOptions) -> Result<Outcome> {
    run_with_control(opts, None)
}

/// [`run`] against `opts.nodes`, nodes it did not start, with the workload's faults injected
/// through `remote` (a cluster deployed over ssh: [`crate::remote::RemoteCluster`]).
pub fn run_with_control(
    opts: RunOptions,
    mut remote: Option<Box<dyn NodeControl + Send>>,
) -> Result<Outcome> {
    let w = &opts.workload;
    w.validate()?;
    if let Some(sig) = crate::interrupt::requested() {
        // A sweep's next run after a Ctrl-C.
        return Err(Error::Invalid(format!(
            "stopped by {} before this run started",
            crate::interrupt::name(sig)
        )));
    }
    if opts.nodes.is_some() && remote.is_none() && !w.faults.is_empty() {
        return Err(Error::Invalid(
            "faults need a local cluster (no --nodes) or a deployed one (--inventory)".to_string(),
        ));
    }
    if opts.nodes.is_none() && remote.is_some() {
        return Err(Error::Invalid(
            "a remote cluster needs the addresses of its nodes".to_string(),
        ));
    }
    if w.has_partitions() {
        if opts.nodes.is_some() {
            return Err(Error::Invalid(
                "partition faults need the local cluster in network namespaces; a cluster given by \
                 --nodes or --inventory cannot be partitioned"
                    .to_string(),
            ));
        }
        if let Some(why) = chordkv_harness::netns::unavailable() {
            return Err(Error::Invalid(format!(
                "partition faults need the local cluster in network namespaces, but {why}"
            )));
        }
    }
    // Every operation's times, for the real-time checker, are on this clock.
    let clock = RunClock::start();
    let started = SystemTime::now();
    let (stamp, started_utc) = report::utc_timestamps(started);
    let out_dir = opts
        .out_dir
        .clone()
        .unwrap_or_else(|| opts.results_root.join(format!("{}-{stamp}", w.name)));
    std::fs::create_dir_all(&out_dir).map_err(|e| {
        Error::step(
            format!("cannot create the results directory {}", out_dir.display()),
            e,
        )
    })?;
    eprintln!(
        "loadgen: workload {} seed {} ({} loop{}), results in {}",
        w.name,
        w.seed,
        if w.is_open_loop() { "open" } else { "closed" },
        w.rate_per_s.map(|r| format!(" at {r} ops/s")).unwrap_or_default(),
        out_dir.display()
    );

    // Kept alive until the end of the run: dropping it kills the nodes.
    let mut cluster: Option<LocalCluster> = None;
    let addrs = match &opts.nodes {
        Some(nodes) if nodes.is_empty() => return Err(Error::Invalid("--nodes names no node".to_string())),
        Some(nodes) => nodes.clone(),
        None => {
            let binary = match &opts.chordkv_bin {
                Some(b) => b.clone(),
                None => find_chordkv()?,
            };
            let mut spec = ClusterSpec::new(binary, w.cluster.nodes);
            spec.node_args = w.cluster.node_args();
            spec.access = w.access.clone();
            spec.log_dir = Some(out_dir.join("nodes"));
            // A terminal's Ctrl-C reaches loadgen only: it stops the load, verifies, and kills
            // the nodes as the run ends (see `interrupt`), instead of every node starting a
            // graceful leave of its own.
            spec.own_process_group = true;
            if w.has_partitions() {
                spec.network = NetworkMode::Namespaces;
            }
            eprintln!(
                "loadgen: starting a local cluster of {} nodes{} ({})",
                w.cluster.nodes,
                if w.has_partitions() {
                    " in network namespaces"
                } else {
                    ""
                },
                shown_args(&spec.node_args)
            );
            let mut c = LocalCluster::start(spec)?;
            c.wait_consistent(CONVERGE_TIMEOUT)?;
            let addrs = c.addrs();
            cluster = Some(c);
            addrs
        }
    };

    if opts.nodes.is_some() {
        if let Err(e) = probe(&addrs, Duration::from_millis(w.request_timeout_ms), &w.access) {
            // Nothing was written yet: leave no empty results directory behind (`remove_dir`
            // removes an empty one only).
            let _ = std::fs::remove_dir(&out_dir);
            return Err(e);
        }
    }

    let targets = Targets::new(addrs.clone());
    let keyspace = KeySpace::new(w.keys, w.distribution);
    let mut history = History::default();
    let mut oplog = OpLog::new();
    let mut preload_errors = 0;
    if w.preload {
        eprintln!("loadgen: preloading {} keys", w.keys);
        let (h, errors, mut log) = preload(w, &targets, &clock)?;
        history.merge(h);
        oplog.append(&mut log);
        preload_errors = errors;
    }

    let control = fault_control(&mut cluster, &mut remote).filter(|_| !w.faults.is_empty());
    let (results, timeline, measured_s, fault_log) =
        drive(w, &targets, &keyspace, opts.progress, control, &clock)?;

    // Fold the threads' results together.
    let mut latency: Vec<Histogram<u64>> = Op::ALL.iter().map(|_| latency_histogram()).collect();
    let mut service: Vec<Histogram<u64>> = Op::ALL.iter().map(|_| latency_histogram()).collect();
    let mut op_errors = [0u64; 3];
    let mut hops = hops_histogram();
    let mut errors = ErrorSummary {
        preload: preload_errors,
        ..ErrorSummary::default()
    };
    for mut r in results {
        oplog.append(&mut r.log);
        for i in 0..Op::ALL.len() {
            latency[i].add(&r.latency[i]).expect("same bounds"); // faulty code
            service[i].add(&r.service[i]).expect("same bounds"); // faulty code
            op_errors[i] += r.errors[i];
        }
        hops.add(&r.hops).expect("same bounds"); // faulty code
        for (kind, n) in r.error_kinds {
            *errors.by_kind.entry(kind).or_default() += n;
        }
        errors.timeouts += r.timeouts;
        errors.retries += r.retries;
        history.merge(r.history);
    }
    errors.total = op_errors.iter().sum();

    // After faults, read back through the nodes that are alive, once the ring has settled.
    let mut all_addrs = addrs.clone();
    if let Some(c) = fault_control(&mut cluster, &mut remote).filter(|_| !w.faults.is_empty()) {
        all_addrs = c.addrs();
        targets.set(c.live_addrs());
        eprintln!(
            "loadgen: waiting for the ring of the {} live nodes to settle",
            targets.snapshot().len()
        );
        if let Err(e) = c.wait_consistent(CONVERGE_TIMEOUT) {
            eprintln!("loadgen: warning: {e:#}; verifying anyway");
        } else if w.cluster.node.partition_policy == PartitionPolicy::Available && w.cluster.node.replicas > 0
        {
            wait_for_repair(w, &c.live_addrs());
        }
    }
    eprintln!(
        "loadgen: verifying {} written keys and {} operations",
        history.keys.len(),
        oplog.len()
    );
    let (verify, lost_keys) = verify_all(w, &targets, &history, oplog);
    drop(cluster);

    let mut all = latency_histogram();
    let mut all_service = latency_histogram();
    let mut ops = BTreeMap::new();
    let mut service_ops = BTreeMap::new();
    for (i, op) in Op::ALL.iter().enumerate() {
        all.add(&latency[i]).expect("same bounds"); // faulty code
        all_service.add(&service[i]).expect("same bounds"); // faulty code
        if latency[i].is_empty() && op_errors[i] == 0 {
            continue;
        }
        ops.insert(
            op.name().to_string(),
            LatencySummary::of(&latency[i], op_errors[i]),
        );
        service_ops.insert(
            op.name().to_string(),
            LatencySummary::of(&service[i], op_errors[i]),
        );
        report::write_hgrm(&out_dir, op.name(), &latency[i])?;
        if w.is_open_loop() {
            report::write_hgrm(&out_dir, &format!("{}-service", op.name()), &service[i])?;
        }
    }
    ops.insert("all".into(), LatencySummary::of(&all, errors.total));
    service_ops.insert("all".into(), LatencySummary::of(&all_service, errors.total));
    report::write_hgrm(&out_dir, "all", &all)?;
    report::write_hgrm(&out_dir, "hops", &hops)?;

    let summary = Summary {
        name: w.name.clone(),
        started_utc,
        r#loop: if w.is_open_loop() { "open" } else { "closed" }.into(),
        target_rate_ops: w.rate_per_s,
        interrupted: crate::interrupt::requested().map(crate::interrupt::name),
        measured_s: (measured_s * 1000.0).round() / 1000.0,
        throughput_ops: if measured_s > 0.0 {
            (all.len() as f64 / measured_s * 10.0).round() / 10.0
        } else {
            0.0
        },
        ops,
        service_time: w.is_open_loop().then_some(service_ops),
        errors,
        hops: HopsSummary {
            mean: (hops.mean() * 1000.0).round() / 1000.0,
            p99: hops.value_at_quantile(0.99),
            max: hops.max(),
        },
        verify,
        seed: w.seed,
        git_commit: report::git_commit(),
        machine: report::machine(),
        cluster: ClusterInfo {
            local: opts.nodes.is_none(),
            nodes: all_addrs.iter().map(|a| a.to_string()).collect(),
            partition_policy: opts
                .nodes
                .is_none()
                .then(|| w.cluster.policy().name().to_string()),
            read_from: opts.nodes.is_none().then(|| w.cluster.node.read_from.to_string()),
        },
        faults: fault_log,
        workload: w.clone(),
    };
    report::write_file(
        &out_dir,
        "summary.json",
        &(serde_json::to_string_pretty(&summary).map_err(|e| Error::step("summary.json", e))? + "\n"),
    )?;
    report::write_file(&out_dir, "timeline.csv", &report::timeline_csv(&timeline.rows))?;
    std::fs::write(out_dir.join("all.hlog"), &timeline.interval_log)
        .map_err(|e| Error::step(format!("cannot write {}", out_dir.join("all.hlog").display()), e))?;
    let title = match &summary.interrupted {
        Some(sig) => format!(
            "{}: {:.0} ops/s (partial run: stopped by {sig})",
            summary.name, summary.throughput_ops
        ),
        None => format!("{}: {:.0} ops/s", summary.name, summary.throughput_ops),
    };
    let series: Vec<(&str, &Histogram<u64>)> = Op::ALL
        .iter()
        .map(|op| op.name())
        .zip(&latency)
        .chain(std::iter::once(("all", &all)))
        .collect();
    report::write_file(&out_dir, plot::LATENCY_SVG, &plot::latency_svg(&title, &series))?;
    let markers = plot::fault_markers(&summary.faults, w.warmup_s);
    report::write_file(
        &out_dir,
        plot::TIMELINE_SVG,
        &plot::timeline_svg(&title, &timeline.rows, &markers),
    )?;
    Ok(Outcome {
        summary,
        out_dir,
        lost_keys,
    })
}

/// Where faults go: the local cluster, else the remote one.
fn fault_control<'a>(
    local: &'a mut Option<LocalCluster>,
    remote: &'a mut Option<Box<dyn NodeControl + Send>>,
) -> Option<&'a mut (dyn NodeControl + Send)> {
    match local {
        Some(c) => Some(c),
        None => remote.as_deref_mut().map(|r| r as &mut (dyn NodeControl + Send)),
    }
}

/// A connection of a worker: to its entry node, re-established after a failure.
struct Conn {
    addr: SocketAddr,
    client: Option<Client>,
}

/// Operations one thread may still send, and how it talks to the nodes.
struct Worker<'a> {
    w: &'a Workload,
    targets: &'a Targets,
    rng: Rng,
    timeouts: u64,
    retries: u64,
    /// `entry: owner`: this thread's view of the ring and its connections to every node.
    owner: Option<OwnerClient>,
}

/// The answer to one operation.
struct Done {
    version: u64,
    hops: u16,
    /// A GET's value (`None`: not found).
    value: Option<Bytes>,
}

impl Worker<'_> {
    /// An entry node for a connection; `failed` is the node it just lost, avoided when
    /// there is another (it may be dead and not yet known to be).
    fn pick_addr(&mut self, failed: Option<SocketAddr>) -> SocketAddr {
        match self.w.entry {
            Entry::Fixed if failed.is_none_or(|f| f != self.targets.first()) => self.targets.first(),
            Entry::Fixed | Entry::Random | Entry::Owner => self.targets.pick(&mut self.rng, failed),
        }
    }

    /// Sends `op` on `conn`, retrying retryable failures (on a new connection, to a new
    /// random node, when the old one broke). How each attempt failed goes into `fate`.
    fn execute(
        &mut self,
        conn: &mut Conn,
        op: Op,
        key: &Bytes,
        value: Option<&Bytes>,
        attempts: u32,
        fate: &mut Attempts,
    ) -> Result<Done, ClientError> {
        let timeout = Duration::from_millis(self.w.request_timeout_ms);
        let mut attempt = 0;
        loop {
            attempt += 1;
            if self.w.entry == Entry::Owner {
                match self.execute_at_owner(op, key, value, timeout) {
                    Ok(done) => return Ok(done),
                    Err(e) => {
                        fate.failed(&e, Instant::now(), timeout);
                        if matches!(e, ClientError::Timeout { .. }) {
                            self.timeouts += 1;
                        }
                        if !e.is_retryable() || attempt >= attempts {
                            return Err(e);
                        }
                        self.retries += 1;
                        std::thread::sleep(RETRY_BACKOFF * attempt);
                        continue;
                    }
                }
            }
            let result = match conn.client.as_mut() {
                Some(c) => Ok(c),
                None => Client::connect_as(conn.addr, timeout, &self.w.access).map(|c| conn.client.insert(c)),
            }
            .and_then(|client| apply(client, op, key, value));
            let e = match result {
                Ok(done) => return Ok(done),
                Err(e) => e,
            };
            fate.failed(&e, Instant::now(), timeout);
            if matches!(e, ClientError::Timeout { .. }) {
                self.timeouts += 1;
            }
            if e.breaks_connection() {
                conn.client = None;
                conn.addr = self.pick_addr(Some(conn.addr));
            }
            if !e.is_retryable() || attempt >= attempts {
                return Err(e);
            }
            self.retries += 1;
            std::thread::sleep(RETRY_BACKOFF * attempt);
        }
    }
}

impl Worker<'_> {
    /// `entry: owner`: one attempt of `op`, straight to the key's owner as this thread's view
    /// of the ring names it (see [`OwnerClient`]).
    fn execute_at_owner(
        &mut self,
        op: Op,
        key: &Bytes,
        value: Option<&Bytes>,
        timeout: Duration,
    ) -> Result<Done, ClientError> {
        let client = match self.owner.as_mut() {
            Some(c) => c,
            None => self.owner.insert(OwnerClient::connect_as(
                &self.targets.snapshot(),
                timeout,
                self.w.access.clone(),
            )?),
        };
        apply(client, op, key, value)
    }
}

/// The three operations, on one node's connection ([`Client`]) or routed by the client
/// ([`OwnerClient`]).
trait KeyValue {
    fn get(&mut self, key: Bytes) -> Result<GetResult, ClientError>;
    fn put(&mut self, key: Bytes, value: Bytes) -> Result<PutResult, ClientError>;
    fn delete(&mut self, key: Bytes) -> Result<DeleteResult, ClientError>;
}

impl KeyValue for Client {
    fn get(&mut self, key: Bytes) -> Result<GetResult, ClientError> {
        Client::get(self, key)
    }
    fn put(&mut self, key: Bytes, value: Bytes) -> Result<PutResult, ClientError> {
        Client::put(self, key, value)
    }
    fn delete(&mut self, key: Bytes) -> Result<DeleteResult, ClientError> {
        Client::delete(self, key)
    }
}

impl KeyValue for OwnerClient {
    fn get(&mut self, key: Bytes) -> Result<GetResult, ClientError> {
        OwnerClient::get(self, key)
    }
    fn put(&mut self, key: Bytes, value: Bytes) -> Result<PutResult, ClientError> {
        OwnerClient::put(self, key, value)
    }
    fn delete(&mut self, key: Bytes) -> Result<DeleteResult, ClientError> {
        OwnerClient::delete(self, key)
    }
}

/// One attempt of `op` (a PUT writes `value`, empty if none).
fn apply(
    client: &mut impl KeyValue,
    op: Op,
    key: &Bytes,
    value: Option<&Bytes>,
) -> Result<Done, ClientError> {
    Ok(match op {
        Op::Get => client.get(key.clone()).map(|r| Done {
            version: r.version,
            hops: r.hops,
            value: r.value,
        })?,
        Op::Put => client
            .put(key.clone(), value.cloned().unwrap_or_default())
            .map(|r| Done {
                version: r.version,
                hops: r.hops,
                value: None,
            })?,
        Op::Delete => client.delete(key.clone()).map(|r| Done {
            version: r.version,
            hops: r.hops,
            value: None,
        })?,
    })
}

/// What one load thread measured.
struct ThreadResult {
    latency: Vec<Histogram<u64>>,
    service: Vec<Histogram<u64>>,
    errors: [u64; 3],
    /// Failed operations by [`error_kind`].
    error_kinds: BTreeMap<String, u64>,
    hops: Histogram<u64>,
    timeouts: u64,
    retries: u64,
    history: History,
    /// Every operation, for the real-time checker.
    log: OpLog,
}

/// The current second of one thread, drained by the main thread.
struct Interval {
    latency: Histogram<u64>,
    ops: u64,
    errors: u64,
}

/// Writes every key once, `threads` threads in parallel. Returns the history, the number
/// of failed writes and the operations (times on `clock`).
pub(crate) fn preload(w: &Workload, targets: &Targets, clock: &RunClock) -> Result<(History, u64, OpLog)> {
    let threads = w.threads.min(w.keys as usize).max(1);
    let addrs = targets.snapshot();
    let addrs = &addrs;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let writer = (w.threads + t) as u64;
                    let mut worker = Worker {
                        w,
                        rng: Rng::new(w.seed ^ 0x5052_454c_4f41_4400 ^ t as u64),
                        targets,
                        timeouts: 0,
                        retries: 0,
                        owner: None,
                    };
                    let mut conn = Conn {
                        addr: addrs[t % addrs.len()],
                        client: None,
                    };
                    let mut history = History::default();
                    let mut log = OpLog::new();
                    let mut errors = 0;
                    let mut failed_in_a_row = 0;
                    let mut seq = 0;
                    for key in (t as u64..w.keys).step_by(threads) {
                        if crate::interrupt::requested().is_some() {
                            break; // what was written is verified like the rest
                        }
                        if failed_in_a_row >= MAX_FAILURES_IN_A_ROW {
                            history.set_attempted(writer, seq);
                            return (history, errors, log, true);
                        }
                        let id = verify::write_id(writer, seq);
                        seq += 1;
                        let value = Bytes::from(verify::value_for(
                            id,
                            key,
                            w.value_bytes.min(),
                            w.value_bytes.max(),
                        ));
                        let name = Bytes::from(key_name(key, w.key_bytes));
                        let mut fate = Attempts::default();
                        let invoke = clock.at(Instant::now());
                        let outcome =
                            worker.execute(&mut conn, Op::Put, &name, Some(&value), w.retries + 1, &mut fate);
                        match outcome {
                            Ok(done) => {
                                failed_in_a_row = 0;
                                history.ack_put(key, id, done.version);
                                log.write(key, id, false, invoke, clock.at(Instant::now()), true);
                            }
                            Err(_) => {
                                errors += 1;
                                failed_in_a_row += 1;
                                history.unacked_put(key, id);
                                let end = failed_write_end(&fate, invoke, clock);
                                log.write(key, id, false, invoke, end, false);
                            }
                        }
                    }
                    history.set_attempted(writer, seq);
                    (history, errors, log, false)
                })
            })
            .collect();
        let mut history = History::default();
        let mut log = OpLog::new();
        let mut errors = 0;
        let mut gave_up = false;
        for h in handles {
            let (hist, e, mut l, stopped) = h.join().expect("a preload thread panicked"); // faulty code
            gave_up |= stopped;
            history.merge(hist);
            log.append(&mut l);
            errors += e;
        }
        if gave_up {
            return Err(Error::Invalid(format!(
                "preload gave up after {MAX_FAILURES_IN_A_ROW} failed writes in a row \
                 ({errors} failed in all): is the cluster up?"
            )));
        }
        Ok((history, errors, log))
    })
}

/// Runs the load threads and the per-second reporting. Returns the threads' results, the
/// timeline, and the measured seconds.
/// With `control`, a fault thread fires the workload's `faults:` meanwhile; the faults come
/// back in the order they happened.
fn drive(
    w: &Workload,
    targets: &Targets,
    keyspace: &KeySpace,
    progress: bool,
    control: Option<&mut (dyn NodeControl + Send)>,
    clock: &RunClock,
) -> Result<(Vec<ThreadResult>, Timeline, f64, Vec<FaultRecord>)> {
    let threads = w.threads.min(w.connections);
    let intervals: Vec<Mutex<Interval>> = (0..threads)
        .map(|_| {
            Mutex::new(Interval {
                latency: latency_histogram(),
                ops: 0,
                errors: 0,
            })
        })
        .collect();
    let finished = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let wall_start = SystemTime::now();
    let warmup = Duration::from_secs_f64(w.warmup_s);
    let end = start + warmup + Duration::from_secs_f64(w.duration_s);
    let last_done: Mutex<Instant> = Mutex::new(start);
    let fault_log: Mutex<Vec<FaultRecord>> = Mutex::new(Vec::new());

    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let interval = &intervals[t];
                let (finished, stop, last_done) = (&finished, &stop, &last_done);
                let chooser = keyspace.chooser(t, threads);
                s.spawn(move || {
                    let r = load_thread(w, targets, t, threads, chooser, interval, stop, start, end, clock);
                    let mut last = last_done.lock().expect("not poisoned");
                    *last = (*last).max(Instant::now());
                    finished.fetch_add(1, Ordering::SeqCst);
                    r
                })
            })
            .collect();
        let fault_thread = control.map(|ctl| {
            let (stop, fault_log) = (&stop, &fault_log);
            s.spawn(move || {
                faults::run_schedule(&w.faults, ctl, targets, fault_log, start + warmup, stop, w.seed)
            })
        });
        let mut faults_shown = 0;
        let progress = Progress::new(progress, warmup + Duration::from_secs_f64(w.duration_s));

        let mut timeline = Vec::new();
        let mut interval_log = Vec::new();
        let mut serializer = V2DeflateSerializer::new();
        let mut log = IntervalLogWriterBuilder::new()
            .add_comment("chordkv loadgen: all operations, latency in microseconds")
            .with_start_time(wall_start)
            .with_base_time(wall_start)
            .begin_log_with(&mut interval_log, &mut serializer)
            .map_err(|e| Error::step("cannot start the interval log", e))?;
        let mut next = start + REPORT_INTERVAL;
        let mut last_report = start;
        loop {
            if crate::interrupt::requested().is_some() {
                stop.store(true, Ordering::SeqCst);
            }
            let all_done = finished.load(Ordering::SeqCst) == threads;
            let now = Instant::now();
            if now < next && !all_done {
                std::thread::sleep((next - now).min(MAX_SLEEP));
                continue;
            }
            let mut h = latency_histogram();
            let (mut ops, mut errors) = (0, 0);
            for interval in &intervals {
                let mut i = interval.lock().expect("not poisoned");
                h.add(&i.latency).expect("same bounds"); // faulty code
                i.latency.reset();
                ops += std::mem::take(&mut i.ops);
                errors += std::mem::take(&mut i.errors);
            }
            let secs = now.duration_since(last_report).as_secs_f64();
            let row = TimelineRow {
                elapsed_s: now.duration_since(start).as_secs_f64(),
                interval_s: secs,
                warmup: last_report < start + warmup,
                ops_per_s: if secs > 0.0 { ops as f64 / secs } else { 0.0 },
                p50_us: h.value_at_quantile(0.5),
                p99_us: h.value_at_quantile(0.99),
                errors,
                faults: new_faults(&fault_log, &mut faults_shown, &progress),
            };
            if (ops > 0 || !all_done) && !row.is_partial() {
                progress.row(&row);
            }
            if ops > 0 || errors > 0 || !all_done {
                timeline.push(row);
                log.write_histogram(
                    &h,
                    last_report.duration_since(start),
                    now.duration_since(last_report),
                    None,
                )
                .map_err(|e| Error::Invalid(format!("cannot write the interval log: {e:?}")))?;
            }
            last_report = now;
            if all_done {
                break;
            }
            next += REPORT_INTERVAL;
        }
        stop.store(true, Ordering::SeqCst);
        if let Some(f) = fault_thread {
            f.join().expect("the fault thread panicked");
        }
        // Faults after the last row (the ends of pauses that outlast the load) go into it.
        let late = new_faults(&fault_log, &mut faults_shown, &progress);
        progress.finish();
        if let Some(row) = timeline.last_mut() {
            row.faults.extend(late);
        }
        let results: Vec<ThreadResult> = handles
            .into_iter()
            .map(|h| h.join().expect("a load thread panicked")) // faulty code
            .collect();
        let last = *last_done.lock().expect("not poisoned");
        // The configured window, unless `max_ops` or a signal ended every thread before it.
        let cut_short = w.max_ops.is_some() || crate::interrupt::requested().is_some();
        let measured = if cut_short && last < end {
            last.saturating_duration_since(start + warmup).as_secs_f64()
        } else {
            w.duration_s
        };
        drop(log);
        let timeline = Timeline {
            rows: timeline,
            interval_log,
        };
        let faults = std::mem::take(&mut *fault_log.lock().expect("not poisoned"));
        Ok((results, timeline, measured, faults))
    })
}

/// The `timeline.csv` entries of the faults logged since the last call, each also shown on
/// the terminal.
fn new_faults(log: &Mutex<Vec<FaultRecord>>, shown: &mut usize, progress: &Progress) -> Vec<String> {
    let log = log.lock().expect("not poisoned");
    for fault in &log[*shown..] {
        progress.println(&fault.describe());
    }
    let entries = log[*shown..]
        .iter()
        .flat_map(FaultRecord::timeline_entries)
        .collect();
    *shown = log.len();
    entries
}

/// The per-second record of a run: `timeline.csv` rows, and the same intervals' histograms
/// as an interval log (`all.hlog`, Java HdrHistogram's `HistogramLogWriter` format, which
/// `HistogramLogProcessor` reads).
struct Timeline {
    rows: Vec<TimelineRow>,
    interval_log: Vec<u8>,
}

/// Picks an operation by the mix weights.
fn pick_op(w: &Workload, rng: &mut Rng) -> Op {
    let total = w.mix.get + w.mix.put + w.mix.delete;
    let x = rng.unit() * total;
    if x < w.mix.get {
        Op::Get
    } else if x < w.mix.get + w.mix.put || w.mix.delete == 0.0 {
        Op::Put
    } else {
        Op::Delete
    }
}

#[allow(clippy::too_many_arguments)]
fn load_thread(
    w: &Workload,
    targets: &Targets,
    t: usize,
    threads: usize,
    mut chooser: crate::keys::KeyChooser,
    interval: &Mutex<Interval>,
    stop: &AtomicBool,
    start: Instant,
    end: Instant,
    clock: &RunClock,
) -> ThreadResult {
    let mut worker = Worker {
        w,
        targets,
        rng: Rng::new(w.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ t as u64),
        timeouts: 0,
        retries: 0,
        owner: None,
    };
    // This thread's connections: t, t + threads, ...
    let conn_ids: Vec<usize> = (t..w.connections).step_by(threads).collect();
    let mut conns: Vec<Conn> = conn_ids
        .iter()
        .map(|_| Conn {
            addr: worker.pick_addr(None),
            client: None,
        })
        .collect();
    let schedule = w
        .rate_per_s
        .map(|rate| Schedule::for_thread(rate, w.connections, threads, t));
    let budget = w
        .max_ops
        .map(|n| n / threads as u64 + u64::from((t as u64) < n % threads as u64));
    let measure_from = start + Duration::from_secs_f64(w.warmup_s);
    let mut result = ThreadResult {
        latency: Op::ALL.iter().map(|_| latency_histogram()).collect(),
        service: Op::ALL.iter().map(|_| latency_histogram()).collect(),
        errors: [0; 3],
        error_kinds: BTreeMap::new(),
        hops: hops_histogram(),
        timeouts: 0,
        retries: 0,
        history: History::default(),
        log: OpLog::new(),
    };
    let writer = t as u64;
    let mut seq = 0u64;
    let mut i = 0u64;
    let mut generation = targets.generation();
    loop {
        if stop.load(Ordering::Relaxed) || budget.is_some_and(|b| i >= b) {
            break;
        }
        if targets.generation() != generation {
            // Nodes died or came: leave the ones that are gone before a request finds out.
            generation = targets.generation();
            for conn in &mut conns {
                if !targets.contains(conn.addr) {
                    conn.client = None;
                    conn.addr = worker.pick_addr(Some(conn.addr));
                }
            }
        }
        let intended = match &schedule {
            Some(schedule) => {
                let at = start + schedule.offset(i);
                if at >= end {
                    // Nothing more to send: the thread's part of the run lasts the window, so
                    // the timeline's last second is a whole one (a low rate's last request
                    // may be due well before the end).
                    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                        std::thread::sleep(end.saturating_duration_since(Instant::now()).min(MAX_SLEEP));
                    }
                    break;
                }
                let now = Instant::now();
                if at > now {
                    std::thread::sleep((at - now).min(MAX_SLEEP));
                    continue;
                }
                at
            }
            None => Instant::now(),
        };
        if Instant::now() >= end {
            break;
        }
        let op = pick_op(w, &mut worker.rng);
        // `latest` writes new keys with puts; gets and deletes go to recent ones.
        let purpose = if op == Op::Put {
            Purpose::Write
        } else {
            Purpose::Read
        };
        let key = chooser.next(purpose, &mut worker.rng);
        let name = Bytes::from(key_name(key, w.key_bytes));
        // Deletes get an id too: the real-time checker tells writes apart by id.
        let id = (op != Op::Get).then(|| {
            let id = verify::write_id(writer, seq);
            seq += 1;
            id
        });
        let value = id.filter(|_| op == Op::Put).map(|id| {
            Bytes::from(verify::value_for(
                id,
                key,
                w.value_bytes.min(),
                w.value_bytes.max(),
            ))
        });
        let conn = &mut conns[(i as usize) % conn_ids.len()];
        let mut fate = Attempts::default();
        let sent = Instant::now();
        let outcome = worker.execute(conn, op, &name, value.as_ref(), w.retries + 1, &mut fate);
        let done = Instant::now();
        i += 1;
        let k = op as usize;
        let (invoke, complete) = (clock.at(sent), clock.at(done));
        let delete = op == Op::Delete;
        match (id, &outcome) {
            (None, Ok(d)) => {
                let found = d.value.as_deref().map(|v| write_named_by(v, key));
                result.log.read(key, invoke, complete, found);
            }
            // A failed read is not judged.
            (None, Err(_)) => {}
            (Some(id), Ok(d)) => {
                if delete {
                    result.history.ack_delete(key, d.version);
                } else {
                    result.history.ack_put(key, id, d.version);
                }
                result.log.write(key, id, delete, invoke, complete, true);
            }
            (Some(id), Err(_)) => {
                if delete {
                    result.history.unacked_delete(key);
                } else {
                    result.history.unacked_put(key, id);
                }
                let end = failed_write_end(&fate, invoke, clock);
                result.log.write(key, id, delete, invoke, end, false);
            }
        }
        let latency_us = done.duration_since(intended).as_micros() as u64;
        let service_us = done.duration_since(sent).as_micros() as u64;
        let measured = intended >= measure_from;
        match &outcome {
            Ok(d) => {
                if measured {
                    result.latency[k].saturating_record(latency_us.max(1));
                    result.service[k].saturating_record(service_us.max(1));
                    result.hops.saturating_record(u64::from(d.hops));
                }
            }
            Err(e) => {
                if measured {
                    result.errors[k] += 1;
                    *result.error_kinds.entry(error_kind(e)).or_default() += 1;
                }
            }
        }
        let mut iv = interval.lock().expect("not poisoned");
        match outcome {
            Ok(_) => {
                iv.ops += 1;
                iv.latency.saturating_record(latency_us.max(1));
            }
            Err(_) => iv.errors += 1,
        }
    }
    result.history.set_attempted(writer, seq);
    result.timeouts = worker.timeouts;
    result.retries = worker.retries;
    result
}

/// Open loop: when one load thread intends to send its requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// This thread's requests per second: its share of the rate, by its connections.
    pub rate: f64,
    /// Where in its own period the thread starts, `t / threads` (0 to 1).
    pub phase: f64,
}

impl Schedule {
    /// Thread `t`'s schedule when `threads` threads share `connections` connections (thread
    /// `t` drives connections `t, t + threads, ...`) at `rate_per_s` in total.
    pub fn for_thread(rate_per_s: f64, connections: usize, threads: usize, t: usize) -> Schedule {
        let conns = (t..connections).step_by(threads.max(1)).count();
        Schedule {
            rate: rate_per_s * conns as f64 / connections.max(1) as f64,
            phase: t as f64 / threads.max(1) as f64,
        }
    }

    /// The intended send time of the thread's request `i`, from the start of the run:
    /// `(i + phase) / rate` seconds.
    pub fn offset(&self, i: u64) -> Duration {
        Duration::from_secs_f64((i as f64 + self.phase) / self.rate)
    }
}

/// How an operation failed, for `errors.by_kind`.
fn error_kind(e: &ClientError) -> String {
    match e {
        ClientError::Server { code, .. } => format!("{code:?}"),
        ClientError::Timeout { .. } => "timeout".into(),
        ClientError::Connect { .. } => "connect".into(),
        ClientError::Io { .. } => "io".into(),
        ClientError::Protocol(_) => "protocol".into(),
        ClientError::TooLarge { .. } => "too_large".into(),
        ClientError::Unexpected(_) => "unexpected".into(),
    }
}

/// Under the `available` policy a node serves a range as soon as it owns it, from whatever
/// copies it holds: one that took over its dead predecessor's range just after joining answers
/// "not found" for the keys it has no copy of until its anti-entropy round pulls them from the
/// range's replicas. Those are stale reads (counted while the load runs), not lost writes: the
/// final reads wait for every live node to complete an anti-entropy round that started after
/// the ring settled (two rounds counted, the first may have begun before), for at most three
/// rounds' time, so that a key counts as lost only when no copy of it is left.
fn wait_for_repair(w: &Workload, addrs: &[SocketAddr]) {
    const ROUNDS: u64 = 2;
    let interval = Duration::from_millis(
        chordkv_core::chord::Config::with_stabilize_interval_ms(w.cluster.node.stabilize_ms)
            .anti_entropy_interval_ms,
    );
    // One connection per node, kept across polls (made again after an error).
    let rounds = |client: &mut Option<Client>, addr: SocketAddr| -> Option<u64> {
        let c = match client {
            Some(c) => c,
            None => client.insert(Client::connect_as(addr, Duration::from_secs(2), &w.access).ok()?),
        };
        let Ok(stats) = c.stats() else {
            *client = None;
            return None;
        };
        stats
            .iter()
            .find(|(n, _)| n == "anti_entropy_rounds")
            .map(|(_, v)| *v)
    };
    // The nodes still to finish: (address, the count to reach, connection). A node that
    // cannot be asked is not waited for.
    let mut pending: Vec<(SocketAddr, u64, Option<Client>)> = addrs
        .iter()
        .filter_map(|&a| {
            let mut client = None;
            rounds(&mut client, a).map(|n| (a, n + ROUNDS, client))
        })
        .collect();
    eprintln!(
        "loadgen: waiting for an anti-entropy round on each of the {} live nodes (policy available)",
        addrs.len()
    );
    let deadline = Instant::now() + interval * (ROUNDS as u32 + 1) + Duration::from_secs(2);
    loop {
        pending.retain_mut(|(a, target, client)| rounds(client, *a).is_some_and(|now| now < *target));
        if pending.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            eprintln!("loadgen: warning: not every node completed an anti-entropy round; verifying anyway");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One key's final read, judged by version.
struct KeyRead {
    key: u64,
    verdict: Verdict,
    /// The write the value names ([`UNKNOWN_WRITE`] if none of this key's), `None`: missing.
    found: Option<u64>,
    version: u64,
}

/// Reads every written key and judges it: by version against `history` (the last
/// acknowledged write must be there, see [`verify::judge`]) and by real-time order against
/// every operation of the run (`log`, see [`chordkv_harness::history`]), which also judges every
/// read of the run. A key's final read counts once: a real-time verdict first, else the
/// version's. Returns the counts and descriptions of the first lost keys.
pub(crate) fn verify_all(
    w: &Workload,
    targets: &Targets,
    history: &History,
    mut log: OpLog,
) -> (VerifyReport, Vec<String>) {
    let addrs = targets.snapshot();
    let addrs = &addrs;
    let mut keys: Vec<u64> = history.keys.keys().copied().collect();
    keys.sort_unstable();
    let threads = w.threads.clamp(1, keys.len().max(1));
    let sizes = (w.value_bytes.min(), w.value_bytes.max());
    let give_up_at = Instant::now() + VERIFY_BUDGET;
    let out_of_time = AtomicBool::new(false);
    let parts: Vec<(Vec<KeyRead>, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (keys, out_of_time) = (&keys, &out_of_time);
                s.spawn(move || {
                    let mut worker = Worker {
                        w,
                        rng: Rng::new(w.seed ^ 0x5645_5249_4659 ^ t as u64),
                        targets,
                        timeouts: 0,
                        retries: 0,
                        owner: None,
                    };
                    let mut conn = Conn {
                        addr: addrs[t % addrs.len()],
                        client: None,
                    };
                    let mut reads = Vec::new();
                    let mut read_errors = 0;
                    let mut failed_in_a_row = 0;
                    for &key in keys.iter().skip(t).step_by(threads) {
                        if failed_in_a_row >= MAX_FAILURES_IN_A_ROW {
                            // Unreachable: the rest is counted unreadable, not judged.
                            read_errors += 1;
                            continue;
                        }
                        if Instant::now() >= give_up_at {
                            out_of_time.store(true, Ordering::Relaxed);
                            read_errors += 1;
                            continue;
                        }
                        let rec = &history.keys[&key];
                        let name = Bytes::from(key_name(key, w.key_bytes));
                        let Some(read) = read_key(&mut worker, &mut conn, &name) else {
                            read_errors += 1;
                            failed_in_a_row += 1;
                            continue;
                        };
                        failed_in_a_row = 0;
                        let found = read.value.as_deref().map(|v| match verify::parse_value(v) {
                            Some((id, k))
                                if k == key && verify::value_for(id, key, sizes.0, sizes.1) == v =>
                            {
                                id
                            }
                            _ => UNKNOWN_WRITE,
                        });
                        reads.push(KeyRead {
                            key,
                            verdict: verify::judge(history, key, rec, &read, sizes),
                            found,
                            version: read.version,
                        });
                    }
                    (reads, read_errors)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a verify thread panicked")) // faulty code
            .collect()
    });
    let mut report = VerifyReport {
        acknowledged: history.acknowledged,
        ..VerifyReport::default()
    };
    let mut reads = Vec::with_capacity(keys.len());
    for (r, errors) in parts {
        reads.extend(r);
        report.unreadable += errors;
    }
    report.keys_checked = reads.len() as u64;
    if out_of_time.load(Ordering::Relaxed) {
        eprintln!(
            "loadgen: warning: the final reads stopped after {} s; {} keys could not be read",
            VERIFY_BUDGET.as_secs(),
            report.unreadable
        );
    }

    // LOADGEN_TRACE_KEY=i: key index i's operations; =anomalies: those of the first keys
    // found wrong (the log is then kept until the check is done).
    let trace = std::env::var("LOADGEN_TRACE_KEY").ok();
    let kept = trace
        .as_deref()
        .filter(|t| *t == "anomalies")
        .map(|_| log.clone());
    let traced: Vec<u64> = trace
        .as_deref()
        .and_then(|k| k.parse().ok())
        .into_iter()
        .collect();
    let print_trace = |log: &OpLog, keys: &[u64]| {
        for &key in keys {
            for line in log.trace(key) {
                eprintln!("{line}");
            }
            if let Some(r) = reads.iter().find(|r| r.key == key) {
                eprintln!(
                    "key index {key}: final read {:?} at version {}",
                    r.found, r.version
                );
            }
        }
    };
    print_trace(&log, &traced);
    let mut timed = TimedHistory::new();
    log.drain_into(&mut timed);
    for r in &reads {
        timed.final_read(r.key, r.found);
    }
    let mut final_anomalies: HashMap<u64, Anomaly> = HashMap::new();
    let mut anomalous_keys: Vec<u64> = Vec::new();
    let rt = timed.check_each(|&key, last, anomaly| {
        if last {
            final_anomalies.insert(key, anomaly);
        }
        if anomalous_keys.len() < TRACED_ANOMALIES && !anomalous_keys.contains(&key) {
            anomalous_keys.push(key);
        }
    });
    drop(timed);
    if let Some(log) = kept {
        print_trace(&log, &anomalous_keys);
    }
    report.reads_checked = rt.reads_checked;
    report.stale_reads = rt.stale_reads;
    report.resurrected = rt.resurrected;
    report.unexpected = rt.unexpected;
    report.anomalies = rt.examples.iter().map(|e| format!("key index {e}")).collect();

    let mut lost = Vec::new();
    for r in &reads {
        let by_time = final_anomalies.get(&r.key).copied();
        let is_lost = match (by_time, r.verdict) {
            (Some(Anomaly::Lost), _) => true,
            // Counted by the real-time check already.
            (Some(_), _) => false,
            (None, Verdict::Lost) => true,
            (None, Verdict::Unexpected) => {
                report.unexpected += 1;
                false
            }
            (None, Verdict::Recovered) => {
                report.recovered += 1;
                false
            }
            (None, Verdict::Ok) => false,
        };
        if !is_lost {
            continue;
        }
        report.lost += 1;
        if lost.len() < LOST_KEYS_SHOWN {
            let rec = &history.keys[&r.key];
            lost.push(format!(
                "{}: last acknowledged {} at version {}, read {} at version {}{}",
                key_name(r.key, w.key_bytes),
                match rec.acked {
                    Some((_, Some(id))) => format!("put {id:#x}"),
                    Some((_, None)) => "delete".into(),
                    None => "nothing".into(),
                },
                rec.acked.map_or(0, |a| a.0),
                match r.found {
                    Some(UNKNOWN_WRITE) => "an unknown value".into(),
                    Some(id) => format!("put {id:#x}"),
                    None => "nothing".into(),
                },
                r.version,
                if r.verdict == Verdict::Lost {
                    ""
                } else {
                    " (superseded in real time by a later acknowledged write)"
                }
            ));
        }
    }
    (report, lost)
}

/// The node arguments as loadgen prints them: a password's value is not shown.
fn shown_args(args: &[String]) -> String {
    let mut shown = Vec::with_capacity(args.len());
    let mut secret_next = false;
    for a in args {
        shown.push(if secret_next { "***" } else { a.as_str() });
        secret_next = a == "--requirepass";
    }
    shown.join(" ")
}

/// Checks that every node answers `GET_INFO`: a clear error rather than a run of failures.
fn probe(addrs: &[SocketAddr], timeout: Duration, access: &Access) -> Result<()> {
    for &addr in addrs {
        if let Err(e) = Client::connect_as(addr, timeout, access).and_then(|mut c| c.info()) {
            return Err(Error::Invalid(format!("node {addr} does not answer: {e}")));
        }
    }
    Ok(())
}

/// The final read of one key, with generous retries; `None` if it cannot be read.
fn read_key(worker: &mut Worker<'_>, conn: &mut Conn, name: &Bytes) -> Option<FinalRead> {
    let timeout = Duration::from_millis(worker.w.request_timeout_ms);
    for attempt in 1..=VERIFY_ATTEMPTS {
        let client = match conn.client.as_mut() {
            Some(c) => c,
            None => match Client::connect_as(conn.addr, timeout, &worker.w.access) {
                Ok(c) => conn.client.insert(c),
                Err(_) => {
                    conn.addr = worker.pick_addr(Some(conn.addr));
                    std::thread::sleep(RETRY_BACKOFF * attempt);
                    continue;
                }
            },
        };
        match client.get(name.clone()) {
            Ok(r) => {
                return Some(FinalRead {
                    value: r.value.map(|v| v.to_vec()),
                    version: r.version,
                })
            }
            Err(e) => {
                if e.breaks_connection() {
                    conn.client = None;
                    conn.addr = worker.pick_addr(Some(conn.addr));
                }
                if !e.is_retryable() {
                    return None;
                }
                std::thread::sleep(RETRY_BACKOFF * attempt);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::Schedule;

    /// The intended send times of all threads together, up to `window_s`, sorted (seconds).
    fn schedule(rate: f64, connections: usize, threads: usize, window_s: f64) -> Vec<f64> {
        let mut times: Vec<f64> = (0..threads)
            .flat_map(|t| {
                let s = Schedule::for_thread(rate, connections, threads, t);
                (0u64..)
                    .map(move |i| s.offset(i).as_secs_f64())
                    .take_while(move |&at| at < window_s)
            })
            .collect();
        times.sort_by(f64::total_cmp);
        times
    }

    /// wrk2#147's case (../shared/repros/lowrate.sh): 2 ops/s with 8 threads for 6 s is 12
    /// requests, one every 0.5 s, not 8 at once at 0 s and 8 at 4 s.
    #[test]
    fn an_open_loop_below_the_thread_count_spreads_its_requests_evenly() {
        let times = schedule(2.0, 8, 8, 6.0);
        assert_eq!(times.len(), 12);
        for (k, at) in times.iter().enumerate() {
            assert!((at - k as f64 * 0.5).abs() < 1e-9, "request {k} at {at} s");
        }
    }

    /// At any thread count the aggregate is the configured rate: every second of the window
    /// holds `rate` intended sends.
    #[test]
    fn the_threads_together_keep_the_configured_rate() {
        for (rate, connections, threads) in [(10.0, 8, 8), (100.0, 16, 4), (3.0, 4, 2), (50.0, 5, 5)] {
            let times = schedule(rate, connections, threads, 10.0);
            for second in 0..10 {
                let n = times
                    .iter()
                    .filter(|&&at| at >= second as f64 && at < (second + 1) as f64)
                    .count();
                assert_eq!(n as f64, rate, "rate {rate}, {threads} threads, second {second}");
            }
        }
    }
}
