//! `recovery`: how long a ring of real `chordkv node` processes takes to recover from
//! simultaneous crashes.
//!
//! ```text
//! cargo build --release --bins
//! cargo run --release -p chordkv-bench --bin recovery -- --keys 2000 --nodes 8 --replicas 2 \
//!     --kill 2 --stabilize-ms 100 [--seed S] [--out results/recovery.md]
//! ```
//!
//! 1. Start `--nodes` nodes on loopback (`--replicas R --stabilize-ms MS`), wait for a
//!    consistent ring.
//! 2. Load `--keys` K keys (100-byte values, a function of the seed and the key) with
//!    `--load-threads` threads, each with its own connection, and wait until the `keys`
//!    counters of all nodes sum to (R+1)*K: every copy is in place.
//! 3. SIGKILL `--kill` nodes (SIGSTOP with `--pause`: hung nodes), chosen by the seed, one
//!    right after the other. Time 0 is the first signal. Then, concurrently:
//!    - (a) sweeps: every key is read through the live nodes by `--sweep-threads` threads,
//!      sweep after sweep, until a sweep in which every key reads back its value; the end of
//!      that sweep is the "all readable" time (its start is reported too, as is the first
//!      sweep's, so the length of a sweep is visible);
//!    - (b) copies: every 100 ms the `keys` counters of the live nodes are summed, until the
//!      sum is (R+1)*K again (then watched for another second);
//!    - the time until the ring walk is consistent with exactly the live nodes.
//!
//! At the end it shows every live node's copies against those of its replica ranges (from a
//! ring walk and each node's `keys_primary`), so that extra or missing copies are located.
//!
//! Every phase is bounded by `--timeout-s`. The run prints its seed and configuration and a
//! markdown table row; `--out` adds the run to a results file (its command to the list at the
//! top, its row to the summary table, a section with the details at the end). The exit status
//! is 1 when the keys did not all become readable, the copies were not restored, or the ring
//! never became consistent.

mod common;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use chordkv_client::{walk_ring, Client};
use chordkv_core::rng::Rng;
use chordkv_harness::cluster::{wait_for_ring, ClusterSpec, LocalCluster};
use clap::Parser;

/// Per-request client timeout: above the node's own end-to-end request timeout (10 s), so that
/// a request the node is still routing is not abandoned by the client first.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Timeout of a `GET_STATS` probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Period of the copy count (b).
const COPIES_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Polls for which the restored count is watched after it is first reached.
const COPIES_HOLD_POLLS: u32 = 10;
/// Most samples of the copy count shown in the report.
const SERIES_MAX_ENTRIES: usize = 200;
/// Bound of the wait for the first consistent ring.
const RING_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts of one PUT of the load before the run fails.
const LOAD_ATTEMPTS: u32 = 50;
/// Pause between two attempts of a PUT that failed with a retryable error.
const LOAD_RETRY_PAUSE: Duration = Duration::from_millis(20);

#[derive(Parser, Debug)]
#[command(
    about = "Time for a chordkv ring to make every key readable and to restore every \
                   copy after simultaneous crashes"
)]
struct Args {
    /// Keys to load.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// Nodes in the ring.
    #[arg(long, default_value_t = 8)]
    nodes: usize,
    /// Each node's `--replicas` (copies after the primary).
    #[arg(long, default_value_t = 2)]
    replicas: u64,
    /// Nodes to SIGKILL (or, with `--pause`, SIGSTOP) at once.
    #[arg(long, default_value_t = 2)]
    kill: usize,
    /// SIGSTOP the `--kill` nodes instead of killing them: hung nodes, whose ports still accept
    /// connections but which answer nothing, so that only timeouts reveal them.
    #[arg(long)]
    pause: bool,
    /// Each node's `--stabilize-ms`.
    #[arg(long, default_value_t = 100)]
    stabilize_ms: u64,
    /// Each node's `--ack` policy (`all` or `one`).
    #[arg(long, default_value = "all")]
    ack: String,
    /// Each node's `--partition-policy`: under `consistent` (the node's default) a killed
    /// member stays a member until `chordkv forget`, so its ranges are not re-copied; under
    /// `available` the ring drops it and re-creates the missing copies.
    #[arg(long, default_value = "consistent", value_parser = ["consistent", "available"])]
    partition_policy: String,
    /// Seed of the choice of nodes to kill and of the values [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,
    /// Threads (each with its own connection) that load the keys.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    load_threads: u64,
    /// Threads (each with its own connection) that read every key in a sweep.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    sweep_threads: u64,
    /// Bytes of every value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Bound, in seconds, of the load, of the wait for the copies, and of the recovery after the
    /// kill.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_s: u64,
    /// Append the results (a markdown section with the command) to this file.
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// The `chordkv` binary [default: `chordkv` next to this executable].
    #[arg(long, value_name = "PATH")]
    chordkv: Option<PathBuf>,
    /// Node i listens on port P + i, so node ids (SHA-1 of the address) and, with the seed,
    /// the choice of nodes to kill repeat exactly [default: free ports picked at random].
    #[arg(long, value_name = "P")]
    base_port: Option<u16>,
    /// Write each node's log to DIR [default: discard node output].
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
}

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("recovery: error: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Runs the measurement; `Ok(false)` when the ring did not recover within the bound.
fn run() -> anyhow::Result<bool> {
    let args = Args::parse();
    if args.nodes == 0 || args.kill >= args.nodes {
        bail!(
            "--kill {} must leave at least one of --nodes {} alive",
            args.kill,
            args.nodes
        );
    }
    let seed = args.seed.unwrap_or_else(common::clock_seed);
    let command = common::command_line("recovery");
    let binary = common::chordkv_binary(args.chordkv.clone())?;
    let timeout = Duration::from_secs(args.timeout_s);
    let node_args: Vec<String> = vec![
        "--stabilize-ms".into(),
        args.stabilize_ms.to_string(),
        "--replicas".into(),
        args.replicas.to_string(),
        "--ack".into(),
        args.ack.clone(),
        "--partition-policy".into(),
        args.partition_policy.clone(),
    ];
    let date = common::utc_now();
    let source = common::source_version();
    println!("recovery: {command}");
    println!(
        "seed {seed} (repeat with --seed {seed}); {} keys of {} bytes; {} nodes `chordkv node {}`; \
         kill {}; {} load threads, {} sweep threads; bound {} s per phase",
        args.keys,
        args.value_bytes,
        args.nodes,
        node_args.join(" "),
        args.kill,
        args.load_threads,
        args.sweep_threads,
        args.timeout_s
    );
    println!(
        "binary {} (source {source}); {}; {date}",
        binary.display(),
        common::machine()
    );

    let mut spec = ClusterSpec::new(&binary, args.nodes);
    spec.node_args = node_args.clone();
    spec.log_dir = args.log_dir.clone();
    spec.base_port = args.base_port;
    let mut cluster = LocalCluster::start(spec)?;
    cluster
        .wait_consistent(RING_START_TIMEOUT)
        .context("the new ring did not converge")?;
    let addrs = cluster.addrs();
    let copies_of = |live: usize| (args.replicas + 1).min(live as u64) * args.keys;

    // Load, then wait until every copy is counted.
    let load_started = Instant::now();
    let retries = load(&addrs, &args, seed, load_started + timeout)?;
    let load_time = load_started.elapsed();
    println!(
        "loaded {} keys in {} s ({:.0} keys/s, {retries} retried PUTs)",
        args.keys,
        common::secs(load_time),
        args.keys as f64 / load_time.as_secs_f64()
    );
    let full = copies_of(args.nodes);
    let settle_started = Instant::now();
    let settled = wait_copies(&addrs, full, settle_started + timeout)?;
    let settle_time = settle_started.elapsed();
    println!(
        "{settled} copies counted {} s after the load",
        common::secs(settle_time)
    );

    // Kill, then measure the three recoveries at once.
    let victims = choose_victims(args.nodes, args.kill, seed);
    let t0 = Instant::now();
    for &v in &victims {
        if args.pause {
            cluster.pause(v)?;
        } else {
            cluster.kill(v)?;
        }
    }
    let kill_spread = t0.elapsed();
    let deadline = t0 + timeout;
    let killed: Vec<String> = victims
        .iter()
        .map(|&v| format!("node {v} ({})", addrs[v]))
        .collect();
    let fault = if args.pause { "SIGSTOP" } else { "SIGKILL" };
    println!(
        "{fault}: {} within {} s",
        killed.join(", "),
        common::secs(kill_spread)
    );
    let live = cluster.live_addrs();
    let expected = copies_of(live.len());

    let (sweeps, copies, ring) = std::thread::scope(|s| {
        let copies = s.spawn(|| watch_copies(&live, expected, t0, deadline));
        let ring = s.spawn(|| {
            let result = wait_for_ring(
                &live,
                deadline.saturating_duration_since(Instant::now()),
                None,
                &chordkv_client::NO_ACCESS,
            );
            result.map(|_| t0.elapsed()).map_err(|e| format!("{e:#}"))
        });
        let sweeps = sweep_until_readable(&live, &args, seed, t0, deadline);
        let copies = copies.join().expect("copy watcher panicked");
        let ring = ring.join().expect("ring watcher panicked");
        (sweeps, copies, ring)
    });

    // Report.
    let first = &sweeps[0];
    let readable = sweeps.last().filter(|s| s.all_ok(args.keys));
    let cell_first = format!(
        "{}–{}, {} not read back",
        common::secs(first.start),
        common::secs(first.end),
        args.keys - first.ok
    );
    let cell_readable = match readable {
        Some(s) => format!(
            "**{}** (sweep {}: {}–{})",
            common::secs(s.end),
            sweeps.len(),
            common::secs(s.start),
            common::secs(s.end)
        ),
        None => format!(
            "**not within {} s** ({} sweeps; last: {} of {} read back)",
            args.timeout_s,
            sweeps.len(),
            sweeps.last().map_or(0, |s| s.ok),
            args.keys
        ),
    };
    let cell_ring = match &ring {
        Ok(at) => common::secs(*at),
        Err(_) => "not consistent".to_string(),
    };
    let cell_copies = match copies.restored {
        Some(at) => format!(
            "**{}**{}",
            common::secs(at),
            if copies.held { "" } else { " (did not hold)" }
        ),
        None => format!(
            "**not within {} s** (last count {}; expected {expected})",
            args.timeout_s,
            copies.last_sum().map_or("unknown".to_string(), |n| n.to_string())
        ),
    };
    let header = table_header(&[]);
    let row = format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        args.keys,
        args.nodes,
        args.replicas,
        args.partition_policy,
        args.kill,
        args.stabilize_ms,
        common::secs(load_time),
        settled,
        cell_first,
        cell_readable,
        cell_ring,
        cell_copies
    );
    println!("\n{header}\n{row}\n");

    let mut details = String::new();
    let _ = writeln!(
        details,
        "- {fault}: {} (all within {} s); times are seconds after the first signal",
        killed.join(", "),
        common::secs(kill_spread)
    );
    let _ = writeln!(
        details,
        "- load: {} keys of {} bytes in {} s ({:.0} keys/s, {} threads, {retries} retried PUTs); \
         all {settled} copies counted {} s after the load",
        args.keys,
        args.value_bytes,
        common::secs(load_time),
        args.keys as f64 / load_time.as_secs_f64(),
        args.load_threads,
        common::secs(settle_time)
    );
    let _ = writeln!(
        details,
        "- sweeps (every key read through the {} live nodes, {} threads):",
        live.len(),
        args.sweep_threads
    );
    for (n, sweep) in sweeps.iter().enumerate() {
        let _ = writeln!(details, "  - sweep {}: {}", n + 1, sweep.describe());
    }
    match &ring {
        Ok(at) => {
            let _ = writeln!(
                details,
                "- ring walk consistent with the {} live nodes at {} s",
                live.len(),
                common::secs(*at)
            );
        }
        Err(e) => {
            let _ = writeln!(details, "- ring walk never consistent: {e}");
        }
    }
    let _ = writeln!(
        details,
        "- copies (sum of `keys` over the live nodes; expected {expected}): {}",
        copies.series()
    );
    if let Some(min) = copies.min() {
        let _ = writeln!(details, "- lowest count {} at {} s", min.1, common::secs(min.0));
    }
    if let Some(at) = copies.reached(expected) {
        let _ = writeln!(
            details,
            "- count first at or above {expected} at {} s",
            common::secs(at)
        );
    }
    match layout(&live, args.replicas) {
        Ok(text) => {
            let _ = write!(details, "{text}");
        }
        Err(e) => {
            let _ = writeln!(details, "- no per-node breakdown at the end: {e}");
        }
    }
    print!("{details}");

    if let Some(path) = &args.out {
        let section = format!(
            "\n## `{command}`\n\n{date}; seed {seed}; chordkv source {source}; every node runs \
             `chordkv node {}`; loopback.\n\n{header}\n{row}\n\n{details}",
            node_args.join(" ")
        );
        let summary_row = format!("| {seed} {row}");
        record(path, &date, &command, &summary_row, &section)?;
        println!("recorded in {}", path.display());
    }
    Ok(readable.is_some() && copies.restored.is_some() && ring.is_ok())
}

/// Key `i` of the run.
fn key(i: u64) -> Bytes {
    Bytes::from(format!("recovery-{i:08}"))
}

/// The value of key `i`: `len` lowercase letters drawn from the seed and `i`, so every key
/// has its own value and a sweep can check it without remembering it.
fn value(seed: u64, i: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        for b in rng.next_u64().to_le_bytes() {
            if v.len() < len {
                v.push(b'a' + b % 26);
            }
        }
    }
    v
}

/// The `kill` nodes to crash: the first of a seeded shuffle, in index order.
fn choose_victims(nodes: usize, kill: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut order: Vec<usize> = (0..nodes).collect();
    for i in (1..nodes).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let mut victims = order[..kill].to_vec();
    victims.sort_unstable();
    victims
}

/// PUTs every key; thread `t` writes keys `t, t + T, ...` through node `t mod nodes` on its own
/// connection, retrying retryable errors. Returns the number of retried PUTs.
fn load(addrs: &[SocketAddr], args: &Args, seed: u64, deadline: Instant) -> anyhow::Result<u64> {
    let threads = args.load_threads;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let addr = addrs[t as usize % addrs.len()];
                s.spawn(move || -> anyhow::Result<u64> {
                    let mut client = None;
                    let mut retried = 0;
                    let mut i = t;
                    while i < args.keys {
                        if Instant::now() >= deadline {
                            bail!("the load did not finish within {} s", args.timeout_s);
                        }
                        let v = Bytes::from(value(seed, i, args.value_bytes));
                        retried += put_retrying(&mut client, addr, key(i), v)?;
                        i += threads;
                    }
                    Ok(retried)
                })
            })
            .collect();
        let mut retried = 0;
        for h in handles {
            retried += h.join().expect("load thread panicked")?;
        }
        Ok(retried)
    })
}

/// One PUT, retried on retryable errors (reconnecting when the error breaks the connection).
/// Returns 1 if it had to be retried, else 0.
fn put_retrying(
    client: &mut Option<Client>,
    addr: SocketAddr,
    key: Bytes,
    value: Bytes,
) -> anyhow::Result<u64> {
    let mut last = String::new();
    for attempt in 0..LOAD_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(LOAD_RETRY_PAUSE);
        }
        let c = match client {
            Some(c) => c,
            None => match Client::connect(addr, REQUEST_TIMEOUT) {
                Ok(c) => client.insert(c),
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            },
        };
        match c.put(key.clone(), value.clone()) {
            Ok(_) => return Ok(u64::from(attempt > 0)),
            Err(e) if e.is_retryable() => {
                if e.breaks_connection() {
                    *client = None;
                }
                last = e.to_string();
            }
            Err(e) => bail!("PUT {} through {addr} failed: {e}", String::from_utf8_lossy(&key)),
        }
    }
    bail!(
        "PUT {} through {addr} failed {LOAD_ATTEMPTS} times; last error: {last}",
        String::from_utf8_lossy(&key)
    )
}

/// The `keys` counter of every node in `addrs`, or why one could not be read.
fn count_copies(addrs: &[SocketAddr]) -> Result<Vec<u64>, String> {
    addrs
        .iter()
        .map(|&addr| {
            let stats = Client::connect(addr, PROBE_TIMEOUT)
                .and_then(|mut c| c.stats())
                .map_err(|e| format!("stats of {addr}: {e}"))?;
            stats
                .iter()
                .find(|(name, _)| name == "keys")
                .map(|(_, n)| *n)
                .ok_or_else(|| format!("{addr} reports no `keys` counter"))
        })
        .collect()
}

/// Polls until the `keys` counters of `addrs` sum to `expected`; returns the sum.
fn wait_copies(addrs: &[SocketAddr], expected: u64, deadline: Instant) -> anyhow::Result<u64> {
    loop {
        let counted = count_copies(addrs);
        if let Ok(per_node) = &counted {
            if per_node.iter().sum::<u64>() == expected {
                return Ok(expected);
            }
        }
        if Instant::now() >= deadline {
            bail!("the copies never reached {expected} before the kill; last count: {counted:?}");
        }
        std::thread::sleep(COPIES_POLL_INTERVAL);
    }
}

/// What the copy watcher (b) saw.
struct CopiesWatch {
    /// (time after the kill, per-node counts or why they could not be read), one per poll.
    samples: Vec<(Duration, Result<Vec<u64>, String>)>,
    /// When the sum first equalled the expected count.
    restored: Option<Duration>,
    /// Whether it stayed equal for the next `COPIES_HOLD_POLLS` polls.
    held: bool,
}

impl CopiesWatch {
    fn sum(sample: &Result<Vec<u64>, String>) -> Option<u64> {
        sample.as_ref().ok().map(|v| v.iter().sum())
    }

    fn last_sum(&self) -> Option<u64> {
        self.samples.iter().rev().find_map(|(_, s)| Self::sum(s))
    }

    fn min(&self) -> Option<(Duration, u64)> {
        self.samples
            .iter()
            .filter_map(|(at, s)| Some((*at, Self::sum(s)?)))
            .min_by_key(|&(at, n)| (n, at))
    }

    /// Every sample whose count differs from the one before (the first included), and the
    /// last sample; at most `SERIES_MAX_ENTRIES` of them.
    fn series(&self) -> String {
        let mut parts = Vec::new();
        let mut previous: Option<Option<u64>> = None;
        for (n, (at, s)) in self.samples.iter().enumerate() {
            let sum = Self::sum(s);
            let last = n + 1 == self.samples.len();
            if previous != Some(sum) || last {
                if parts.len() == SERIES_MAX_ENTRIES {
                    parts.push("...".to_string());
                    break;
                }
                let count = match s {
                    Ok(v) => v.iter().sum::<u64>().to_string(),
                    Err(e) => format!("? ({e})"),
                };
                let unchanged = if previous == Some(sum) { " (unchanged)" } else { "" };
                parts.push(format!("{} s {count}{unchanged}", common::secs(*at)));
            }
            previous = Some(sum);
        }
        parts.join(", ")
    }

    /// When the count was first at least `expected`.
    fn reached(&self, expected: u64) -> Option<Duration> {
        self.samples
            .iter()
            .find(|(_, s)| Self::sum(s).is_some_and(|n| n >= expected))
            .map(|(at, _)| *at)
    }
}

/// (b): polls the live nodes' `keys` counters every 100 ms until their sum is `expected`,
/// then for `COPIES_HOLD_POLLS` more polls, or until `deadline`.
fn watch_copies(live: &[SocketAddr], expected: u64, t0: Instant, deadline: Instant) -> CopiesWatch {
    let mut watch = CopiesWatch {
        samples: Vec::new(),
        restored: None,
        held: true,
    };
    let mut polls_after = 0;
    let mut next_print = 0;
    loop {
        let tick = Instant::now();
        let counted = count_copies(live);
        let at = t0.elapsed();
        let sum = CopiesWatch::sum(&counted);
        if at.as_secs() >= next_print {
            next_print = at.as_secs() + 1;
            let count = sum.map_or_else(|| "?".to_string(), |n| n.to_string());
            println!("  copies at {} s: {count} of {expected}", common::secs(at));
        }
        watch.samples.push((at, counted));
        match watch.restored {
            None if sum == Some(expected) => {
                watch.restored = Some(at);
                println!("  copies restored at {} s", common::secs(at));
            }
            None => {}
            Some(_) => {
                watch.held &= sum == Some(expected);
                polls_after += 1;
                if polls_after >= COPIES_HOLD_POLLS {
                    return watch;
                }
            }
        }
        if Instant::now() >= deadline {
            return watch;
        }
        std::thread::sleep(COPIES_POLL_INTERVAL.saturating_sub(tick.elapsed()));
    }
}

/// One read of every key.
struct Sweep {
    start: Duration,
    end: Duration,
    ok: u64,
    missing: u64,
    wrong: u64,
    errors: u64,
    /// Keys not asked for: the `--timeout-s` bound passed during the sweep.
    unread: u64,
    first_error: Option<String>,
}

impl Sweep {
    fn all_ok(&self, keys: u64) -> bool {
        self.ok == keys
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "{}–{} s: {} read back, {} not found, {} wrong value, {} errors",
            common::secs(self.start),
            common::secs(self.end),
            self.ok,
            self.missing,
            self.wrong,
            self.errors
        );
        if self.unread > 0 {
            s.push_str(&format!(
                ", {} not read (the --timeout-s bound passed)",
                self.unread
            ));
        }
        if let Some(e) = &self.first_error {
            s.push_str(&format!(" (first: {e})"));
        }
        s
    }
}

/// (a): sweeps until one reads every key back, or until `deadline`. Returns every sweep.
fn sweep_until_readable(
    live: &[SocketAddr],
    args: &Args,
    seed: u64,
    t0: Instant,
    deadline: Instant,
) -> Vec<Sweep> {
    let mut sweeps = Vec::new();
    loop {
        let sweep = sweep(live, args, seed, t0, deadline);
        println!("  sweep {}: {}", sweeps.len() + 1, sweep.describe());
        let done = sweep.all_ok(args.keys);
        sweeps.push(sweep);
        if done || Instant::now() >= deadline {
            return sweeps;
        }
    }
}

/// Reads every key once; thread `t` reads keys `t, t + T, ...` through live node `t mod live`.
/// Stops asking at `deadline`: a refused key's GET waits out its retries, so a sweep over many
/// refused keys would otherwise run far past the bound.
fn sweep(live: &[SocketAddr], args: &Args, seed: u64, t0: Instant, deadline: Instant) -> Sweep {
    let threads = args.sweep_threads;
    let start = t0.elapsed();
    let parts: Vec<Sweep> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let addr = live[t as usize % live.len()];
                s.spawn(move || {
                    let mut part = Sweep {
                        start,
                        end: start,
                        ok: 0,
                        missing: 0,
                        wrong: 0,
                        errors: 0,
                        unread: 0,
                        first_error: None,
                    };
                    let mut client: Option<Client> = None;
                    let mut i = t;
                    while i < args.keys {
                        if Instant::now() >= deadline {
                            part.unread += (args.keys - i).div_ceil(threads);
                            break;
                        }
                        let outcome = match &mut client {
                            Some(c) => c.get(key(i)),
                            None => Client::connect(addr, REQUEST_TIMEOUT)
                                .and_then(|c| client.insert(c).get(key(i))),
                        };
                        match outcome {
                            Ok(r) => match r.value {
                                Some(v) if v[..] == value(seed, i, args.value_bytes)[..] => part.ok += 1,
                                Some(_) => part.wrong += 1,
                                None => part.missing += 1,
                            },
                            Err(e) => {
                                part.errors += 1;
                                if part.first_error.is_none() {
                                    part.first_error = Some(format!("GET {:?} through {addr}: {e}", key(i)));
                                }
                                if e.breaks_connection() {
                                    client = None;
                                }
                            }
                        }
                        i += threads;
                    }
                    part
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("sweep thread panicked"))
            .collect()
    });
    let end = t0.elapsed();
    parts.into_iter().fold(
        Sweep {
            start,
            end,
            ok: 0,
            missing: 0,
            wrong: 0,
            errors: 0,
            unread: 0,
            first_error: None,
        },
        |mut acc, p| {
            acc.ok += p.ok;
            acc.missing += p.missing;
            acc.wrong += p.wrong;
            acc.errors += p.errors;
            acc.unread += p.unread;
            acc.first_error = acc.first_error.or(p.first_error);
            acc
        },
    )
}

/// The columns of a run's row.
const COLUMNS: [&str; 12] = [
    "keys",
    "nodes",
    "replicas",
    "policy",
    "killed",
    "stabilize (ms)",
    "load (s)",
    "copies before kill",
    "first sweep (s), keys not read back",
    "all keys readable (s)",
    "ring consistent (s)",
    "copies restored (s)",
];

/// A markdown table header of `first` columns and then [`COLUMNS`].
fn table_header(first: &[&str]) -> String {
    let names: Vec<&str> = first.iter().chain(COLUMNS.iter()).copied().collect();
    format!("| {} |\n|{}", names.join(" | "), "---|".repeat(names.len()))
}

/// Counters summed over the live nodes at the end, when the node reports them.
const END_COUNTERS: [&str; 6] = [
    "anti_entropy_keys_repaired",
    "stray_copies_collected",
    "failovers_served",
    "rpc_timeouts",
    "peers_failed",
    "ops_failed",
];

/// Each live node in ring order with the copies it holds against those it should hold (its own
/// primary count plus its `replicas` predecessors'), and some counters summed over the nodes.
fn layout(live: &[SocketAddr], replicas: u64) -> Result<String, String> {
    let ring = walk_ring(live[0], PROBE_TIMEOUT, (live.len() * 2 + 8) * 256).map_err(|e| e.to_string())?;
    let mut stats = Vec::new();
    for node in &ring.nodes {
        let s = Client::connect(node.addr.host, PROBE_TIMEOUT)
            .and_then(|mut c| c.stats())
            .map_err(|e| format!("stats of {}: {e}", node.addr))?;
        stats.push(s);
    }
    let get = |s: &[(String, u64)], name: &str| s.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    let primary: Vec<u64> = stats
        .iter()
        .map(|s| get(s, "keys_primary").unwrap_or(0))
        .collect();
    let m = ring.nodes.len();
    let span = (replicas as usize + 1).min(m);
    let mut text = format!(
        "- at the end, every live node in ring order (id, address: copies held / copies of its \
         replica ranges, i.e. its own and its {} predecessors' primary counts){}:",
        span - 1,
        if ring.consistent {
            ""
        } else {
            " (the ring walk was not consistent)"
        }
    );
    let (mut extra, mut missing) = (0u64, 0u64);
    for (i, (node, s)) in ring.nodes.iter().zip(&stats).enumerate() {
        let held = get(s, "keys").unwrap_or(0);
        let should: u64 = (0..span).map(|d| primary[(i + m - d) % m]).sum();
        extra += held.saturating_sub(should);
        missing += should.saturating_sub(held);
        let _ = write!(text, " {} {} {held}/{should};", node.id.short(8), node.addr);
    }
    text.pop();
    let _ = writeln!(
        text,
        "; {extra} copies beyond those ranges, {missing} short, {} primary keys in all",
        primary.iter().sum::<u64>()
    );
    let sums: Vec<String> = END_COUNTERS
        .iter()
        .filter_map(|name| {
            let values: Vec<u64> = stats.iter().filter_map(|s| get(s, name)).collect();
            (!values.is_empty()).then(|| format!("{name} {}", values.iter().sum::<u64>()))
        })
        .collect();
    let _ = writeln!(
        text,
        "- counters summed over the live nodes at the end: {}",
        sums.join(", ")
    );
    Ok(text)
}

/// Ends the list of commands at the top of a results file.
const COMMANDS_END: &str = "```\n<!-- end of commands -->\n";
/// Ends the summary table at the top of a results file.
const SUMMARY_END: &str = "<!-- end of summary -->\n";

/// A new results file: what it measures, the machine and the date, then (filled in run by run)
/// the commands, a summary table with a row per run, and a section per run.
fn results_preamble(date: &str) -> String {
    format!(
        "# Recovery after simultaneous crashes\n\n\
         How long a ring of real `chordkv node` processes on loopback takes, after `--kill` of its \
         nodes are SIGKILLed (or, with `--pause`, SIGSTOPped: hung) at once, until every key is \
         readable again through the live nodes \
         and until the copy count (the `keys` counters summed over the live nodes) is back to \
         (replicas + 1) x keys; measured by `bench/src/bin/recovery.rs` on {}, first run {date}, \
         with these commands, in this order, after `cargo build --release --bins`:\n\n\
         ```sh\n{COMMANDS_END}\n\
         Times are seconds after the first signal. One row per run (copied from its section \
         below, which has the details); every number comes from these commands.\n\n\
         {}\n\
         {SUMMARY_END}",
        common::machine(),
        table_header(&["seed"])
    )
}

/// Adds a run to the results file at `path` (created with [`results_preamble`] if new or
/// empty): its command to the list, its row to the summary table, its section at the end.
fn record(path: &Path, date: &str, command: &str, summary_row: &str, section: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut doc = match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => text,
        Ok(_) => results_preamble(date),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => results_preamble(date),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let Some(at) = doc.find(COMMANDS_END) else {
        bail!(
            "{} was not written by `recovery` (no command list); give another --out",
            path.display()
        );
    };
    doc.insert_str(at, &format!("{command}\n"));
    let Some(at) = doc.find(SUMMARY_END) else {
        bail!(
            "{} was not written by `recovery` (no summary table); give another --out",
            path.display()
        );
    };
    doc.insert_str(at, &format!("{summary_row}\n"));
    doc.push_str(section);
    std::fs::write(path, doc).with_context(|| format!("cannot write {}", path.display()))
}
