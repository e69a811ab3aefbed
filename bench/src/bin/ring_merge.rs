//! `ring_merge`: how long a ring cut in two by a partition takes to be one ring again after
//! the partition heals, in the simulator (the real node state machines on a simulated network).
//!
//! ```text
//! cargo run --release -p chordkv-bench --bin ring_merge -- --nodes 10 --seeds 50 \
//!     --partition-ms 10000 [--out results/ring-merge.md]
//! ```
//!
//! Per seed and partition policy: build a ring of `--nodes` nodes (`--stabilize-ms`, default
//! 100), cut it into two random halves (messages across the cut dropped) for
//! `--partition-ms`, heal, and step the simulation a tenth of a stabilize period at a time
//! until the ring satisfies Zave's invariants again (one cycle through every live member in
//! identifier order, ordered successor lists: `Sim::zave_problem`) and every node's exact
//! predecessor and successor list are right (`Sim::ring_problem`). Under `available` each
//! side forms its own ring during the cut, and the merge is the ring unification of Chord ToN
//! 2003 (departed nodes are probed; a node that answers again is adopted as a successor and
//! stabilize zips the two rings together). Under `consistent` the ring never splits: members
//! that stop answering stay members, so the measure is how long the nodes take to see each
//! other as up again. Prints a markdown table of the time to one ring, in stabilize periods
//! (median, 90th percentile, maximum) and the seeds that did not merge within `--max-periods`.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

use chordkv_core::chord::config::PartitionPolicy;
use chordkv_core::chord::Config;
use chordkv_core::rng::Rng;
use chordkv_harness::sim::{Sim, SimConfig};

#[derive(Parser, Debug)]
struct Args {
    /// Nodes in the ring.
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// Seeds to run (1..=SEEDS).
    #[arg(long, default_value_t = 50)]
    seeds: u64,
    /// How long the two halves are cut apart, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    partition_ms: u64,
    /// Stabilize period of every node, in milliseconds.
    #[arg(long, default_value_t = 100)]
    stabilize_ms: u64,
    /// Give up on a seed after this many stabilize periods.
    #[arg(long, default_value_t = 600)]
    max_periods: u64,
    /// Append the table and its command to this markdown file.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Stabilize periods from the heal until one ring by Zave's invariants, and until every
/// successor list is exact; `None` when that did not happen within `max_periods`.
fn merge_periods(args: &Args, seed: u64, policy: PartitionPolicy) -> Option<(f64, f64)> {
    let mut chord = Config::with_stabilize_interval_ms(args.stabilize_ms);
    chord.partition_policy = policy;
    let mut s = Sim::new(SimConfig {
        seed,
        min_delay_ms: 1,
        max_delay_ms: 5,
        chord,
        ..SimConfig::default()
    });
    let mut rng = Rng::new(seed);
    s.add_first();
    for _ in 1..args.nodes {
        let alive = s.alive();
        let via = alive[rng.below(alive.len() as u64) as usize];
        s.add_joining(via);
        s.run_for(2 * args.stabilize_ms);
    }
    if !s.run_until_consistent(args.stabilize_ms, 120_000) {
        eprintln!("seed {seed}: the ring did not form: {:?}", s.ring_problem());
        return None;
    }
    s.run_for(20 * args.stabilize_ms);
    // Two random halves.
    let mut order: Vec<usize> = (0..args.nodes).collect();
    for i in (1..order.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let (a, b) = order.split_at(args.nodes / 2);
    s.partition(a, b);
    s.run_for(args.partition_ms);
    s.heal();
    let healed = s.now();
    let step = (args.stabilize_ms / 10).max(1);
    let limit = healed + args.max_periods * args.stabilize_ms;
    let periods = |now: u64| (now - healed) as f64 / args.stabilize_ms as f64;
    let mut one_ring = None;
    while s.now() < limit {
        if one_ring.is_none() && s.zave_problem().is_none() {
            one_ring = Some(periods(s.now()));
        }
        if let Some(z) = one_ring {
            if s.ring_problem().is_none() {
                return Some((z, periods(s.now())));
            }
        }
        s.run_for(step);
    }
    eprintln!(
        "seed {seed} ({policy}): not one ring {} periods after the heal: {:?}",
        args.max_periods,
        s.zave_problem().or(s.ring_problem())
    );
    None
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let command = format!(
        "cargo run --release -p chordkv-bench --bin ring_merge -- --nodes {} --seeds {} --partition-ms {} --stabilize-ms {}",
        args.nodes, args.seeds, args.partition_ms, args.stabilize_ms
    );
    let mut table = String::new();
    writeln!(
        table,
        "| policy | seeds | one ring (Zave's invariants): median | p90 | max | every successor list exact: median | p90 | max | did not merge |"
    )?;
    writeln!(table, "|---|---|---|---|---|---|---|---|---|")?;
    for policy in [PartitionPolicy::Available, PartitionPolicy::Consistent] {
        let mut rings = Vec::new();
        let mut times = Vec::new();
        let mut failed = Vec::new();
        for seed in 1..=args.seeds {
            match merge_periods(&args, seed, policy) {
                Some((z, p)) => {
                    rings.push(z);
                    times.push(p);
                }
                None => failed.push(seed),
            }
        }
        rings.sort_by(|a, b| a.total_cmp(b));
        times.sort_by(|a, b| a.total_cmp(b));
        let failed_text = if failed.is_empty() {
            "none".to_string()
        } else {
            format!("{} (seeds {:?})", failed.len(), failed)
        };
        writeln!(
            table,
            "| {policy} | {} | {:.1} periods | {:.1} | {:.1} | {:.1} periods | {:.1} | {:.1} | {failed_text} |",
            args.seeds,
            percentile(&rings, 0.5),
            percentile(&rings, 0.9),
            rings.last().copied().unwrap_or(f64::NAN),
            percentile(&times, 0.5),
            percentile(&times, 0.9),
            times.last().copied().unwrap_or(f64::NAN),
        )?;
    }
    let text = format!(
        "## {} nodes cut in two halves for {} ms (stabilize {} ms)\n\n`{command}`\n\n{table}",
        args.nodes, args.partition_ms, args.stabilize_ms
    );
    println!("{text}");
    if let Some(out) = &args.out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .with_context(|| format!("opening {}", out.display()))?;
        writeln!(f, "{text}")?;
    }
    Ok(())
}
