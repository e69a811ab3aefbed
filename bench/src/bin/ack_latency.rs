//! `ack_latency`: what acknowledging a write after every replica (`--ack all`) costs against
//! acknowledging it after the primary (`--ack one`), with a ring without replicas
//! (`--replicas 0`) as the baseline.
//!
//! ```text
//! cargo build --release --bins
//! cargo run --release -p chordkv-bench --bin ack_latency -- --nodes 8 --seconds 10 --threads 16 \
//!     [--out results/ack-latency.md]
//! ```
//!
//! For each configuration: start a fresh ring of `--nodes` real `chordkv node` processes on
//! loopback and wait until it is consistent; run a closed loop of PUTs from `--threads` threads
//! (each with its own connection to a node chosen by the seed; keys uniform over a
//! `--keyspace` of keys; `--value-bytes` values) for `--warmup-seconds`, unrecorded, then for
//! `--seconds`, recording every PUT's latency (send to whole reply, microseconds) in an
//! HdrHistogram per thread; stop the ring. Closed loop: a thread sends its next PUT when the
//! last one is answered, so the latencies are those of a saturated ring, not of a given rate
//! (no coordinated-omission correction applies). A failed PUT is counted, not recorded.
//!
//! Prints the seed and configuration, a markdown table (throughput, p50/p90/p99/p99.9/max,
//! slowest and fastest second), and with `--out` writes it to a file with the command.

mod common;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use chordkv_client::Client;
use chordkv_core::rng::Rng;
use chordkv_harness::cluster::{ClusterSpec, LocalCluster};
use clap::Parser;
use hdrhistogram::Histogram;

/// Per-request client timeout: above the node's own end-to-end request timeout (10 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound of the wait for a new ring to become consistent.
const RING_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Highest latency the histograms track, in microseconds (longer ones are clamped to it).
const MAX_LATENCY_US: u64 = 60_000_000;
/// Significant decimal digits of the histograms.
const HISTOGRAM_DIGITS: u8 = 3;
/// Pause before reconnecting after a connection failed.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

#[derive(Parser, Debug)]
#[command(
    about = "PUT latency and throughput of a chordkv ring with --ack all, --ack one, and \
                   without replicas"
)]
struct Args {
    /// Nodes in each ring.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    nodes: u64,
    /// Recorded seconds of load per configuration.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Unrecorded seconds of load before the recorded ones.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=600))]
    warmup_seconds: u64,
    /// Client threads, each with its own connection.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: u64,
    /// Distinct keys written (uniformly at random).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    keyspace: u64,
    /// Bytes of every value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Replicas of the `--ack all` and `--ack one` rings (the baseline has 0).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=16))]
    replicas: u64,
    /// Each node's `--stabilize-ms` [default: the node's default].
    #[arg(long)]
    stabilize_ms: Option<u64>,
    /// Seed of the keys and of each thread's node [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,
    /// Write the results (markdown, with the command) to this file, replacing it.
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// The `chordkv` binary [default: `chordkv` next to this executable].
    #[arg(long, value_name = "PATH")]
    chordkv: Option<PathBuf>,
    /// Write each node's log to DIR/<configuration>/ [default: discard node output].
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
}

/// One ring configuration under test.
struct Config {
    name: &'static str,
    node_args: Vec<String>,
}

/// What one configuration measured.
struct Outcome {
    histogram: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    /// Successful PUTs completed in each recorded second.
    per_second: Vec<u64>,
    elapsed: Duration,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("ack_latency: error: {e:#}");
        std::process::exit(2);
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(common::clock_seed);
    let command = common::command_line("ack_latency");
    let binary = common::chordkv_binary(args.chordkv.clone())?;
    let date = common::utc_now();
    let source = common::source_version();
    let machine = common::machine();

    let mut base: Vec<String> = Vec::new();
    if let Some(ms) = args.stabilize_ms {
        base.extend(["--stabilize-ms".into(), ms.to_string()]);
    }
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter()
            .cloned()
            .chain(extra.iter().map(|s| s.to_string()))
            .collect()
    };
    let replicas = args.replicas.to_string();
    let configs = [
        Config {
            name: "ack all",
            node_args: with(&["--replicas", &replicas, "--ack", "all"]),
        },
        Config {
            name: "ack one",
            node_args: with(&["--replicas", &replicas, "--ack", "one"]),
        },
        Config {
            name: "no replicas",
            node_args: with(&["--replicas", "0"]),
        },
    ];

    println!("ack_latency: {command}");
    println!(
        "seed {seed} (repeat with --seed {seed}); {} nodes; {} threads; {} s warm-up + {} s recorded \
         per configuration; keyspace {}; values of {} bytes",
        args.nodes, args.threads, args.warmup_seconds, args.seconds, args.keyspace, args.value_bytes
    );
    println!("binary {} (source {source}); {machine}; {date}", binary.display());

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for (n, config) in configs.iter().enumerate() {
        println!("{}: chordkv node {}", config.name, config.node_args.join(" "));
        let outcome = measure(&binary, config, &args, seed.wrapping_add(n as u64))
            .with_context(|| format!("configuration `{}`", config.name))?;
        let row = table_row(config, &outcome);
        println!("{row}");
        if let Some(e) = &outcome.first_error {
            notes.push(format!(
                "- {}: {} failed PUTs; first: {e}",
                config.name, outcome.errors
            ));
        }
        rows.push(row);
    }

    let table = format!("{}\n{}", TABLE_HEADER, rows.join("\n"));
    println!("\n{table}\n");
    for note in &notes {
        println!("{note}");
    }

    if let Some(path) = &args.out {
        let mut doc = String::new();
        let _ = writeln!(
            doc,
            "# PUT latency: `--ack all` against `--ack one` and no replicas\n\n\
             Closed-loop PUT throughput and latency of a chordkv ring of {} nodes on loopback with \
             {} replicas acknowledged after every replica (`--ack all`) or after the primary \
             (`--ack one`), and with no replicas as the baseline; measured on {machine}, {date}, \
             by\n\n```sh\ncargo build --release --bins\n{command}\n```\n",
            args.nodes, args.replicas
        );
        let _ = writeln!(
            doc,
            "Seed {seed}; chordkv source {source}. Each configuration runs on a fresh ring. \
             Client threads: {} (in the same process, on the same {} CPUs as the nodes), each \
             with its own connection to a node chosen by the seed, writing keys chosen uniformly from \
             {} with {}-byte values, one PUT at a time, for {} s unrecorded and then {} s \
             recorded. Latency is from sending a PUT to reading its whole reply, in \
             microseconds (HdrHistogram, 3 significant digits). \"Slowest / fastest second\" are \
             the fewest and most PUTs completed in one second of the recorded run.\n",
            args.threads,
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            args.keyspace,
            args.value_bytes,
            args.warmup_seconds,
            args.seconds
        );
        let _ = writeln!(doc, "{table}");
        if !notes.is_empty() {
            let _ = writeln!(doc, "\n{}", notes.join("\n"));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(path, doc).with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

const TABLE_HEADER: &str = "| configuration | node flags | PUTs | failed | PUT/s | p50 (µs) | p90 (µs) | \
                            p99 (µs) | p99.9 (µs) | max (µs) | slowest / fastest second (PUTs) |\n\
                            |---|---|---|---|---|---|---|---|---|---|---|";

fn table_row(config: &Config, o: &Outcome) -> String {
    let h = &o.histogram;
    let slowest = o.per_second.iter().min().copied().unwrap_or(0);
    let fastest = o.per_second.iter().max().copied().unwrap_or(0);
    format!(
        "| {} | `{}` | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} / {} |",
        config.name,
        config.node_args.join(" "),
        h.len(),
        o.errors,
        h.len() as f64 / o.elapsed.as_secs_f64(),
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.90),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        slowest,
        fastest
    )
}

/// Starts a ring for `config`, runs the load, stops the ring.
fn measure(binary: &std::path::Path, config: &Config, args: &Args, seed: u64) -> anyhow::Result<Outcome> {
    let mut spec = ClusterSpec::new(binary, args.nodes as usize);
    spec.node_args = config.node_args.clone();
    spec.log_dir = args
        .log_dir
        .as_ref()
        .map(|d| d.join(config.name.replace(' ', "-")));
    let mut cluster = LocalCluster::start(spec)?;
    cluster
        .wait_consistent(RING_START_TIMEOUT)
        .context("the new ring did not converge")?;
    let addrs = cluster.addrs();

    let start = Instant::now();
    let recording = start + Duration::from_secs(args.warmup_seconds);
    let end = recording + Duration::from_secs(args.seconds);
    let value = Bytes::from(vec![b'v'; args.value_bytes]);
    let parts: Vec<anyhow::Result<Outcome>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.threads)
            .map(|t| {
                let mut rng = Rng::new(seed ^ (t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let addr = addrs[rng.below(addrs.len() as u64) as usize];
                let value = value.clone();
                s.spawn(move || put_loop(addr, rng, args, value, recording, end))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("load thread panicked"))
            .collect()
    });
    let elapsed = end.saturating_duration_since(recording);
    cluster.kill_all();

    let mut total = Outcome {
        histogram: new_histogram(),
        errors: 0,
        first_error: None,
        per_second: vec![0; args.seconds as usize],
        elapsed,
    };
    for part in parts {
        let part = part?;
        total
            .histogram
            .add(&part.histogram)
            .context("merging histograms")?;
        total.errors += part.errors;
        total.first_error = total.first_error.or(part.first_error);
        for (sum, n) in total.per_second.iter_mut().zip(&part.per_second) {
            *sum += n;
        }
    }
    Ok(total)
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, HISTOGRAM_DIGITS).expect("valid histogram bounds")
}

/// One thread's closed loop of PUTs through `addr` until `end`, recording from `recording`.
fn put_loop(
    addr: SocketAddr,
    mut rng: Rng,
    args: &Args,
    value: Bytes,
    recording: Instant,
    end: Instant,
) -> anyhow::Result<Outcome> {
    let mut out = Outcome {
        histogram: new_histogram(),
        errors: 0,
        first_error: None,
        per_second: vec![0; args.seconds as usize],
        elapsed: Duration::ZERO,
    };
    let mut client: Option<Client> = None;
    loop {
        let now = Instant::now();
        if now >= end {
            return Ok(out);
        }
        let c = match &mut client {
            Some(c) => c,
            None => match Client::connect(addr, REQUEST_TIMEOUT) {
                Ok(c) => client.insert(c),
                Err(e) => {
                    if now >= recording {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| e.to_string());
                    }
                    std::thread::sleep(RECONNECT_PAUSE);
                    continue;
                }
            },
        };
        let key = Bytes::from(format!("key-{:06}", rng.below(args.keyspace)));
        let sent = Instant::now();
        let result = c.put(key, value.clone());
        let done = Instant::now();
        let recorded = sent >= recording;
        match result {
            Ok(_) if !recorded => {}
            Ok(_) => {
                let us = done
                    .duration_since(sent)
                    .as_micros()
                    .min(u128::from(MAX_LATENCY_US)) as u64;
                out.histogram.saturating_record(us.max(1));
                let second = done.duration_since(recording).as_secs() as usize;
                if let Some(n) = out.per_second.get_mut(second) {
                    *n += 1;
                }
            }
            Err(e) => {
                if !e.is_retryable() {
                    bail!("PUT through {addr} failed: {e}");
                }
                if recorded {
                    out.errors += 1;
                    out.first_error
                        .get_or_insert_with(|| format!("PUT through {addr}: {e}"));
                }
                if e.breaks_connection() {
                    client = None;
                }
            }
        }
    }
}
