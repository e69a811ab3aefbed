//! `lookup_cluster`: the lookup schemes compared on a real local ring, with the simulator's
//! prediction for the same ring beside each row.
//!
//! ```text
//! cargo build --release --bins
//! cargo run --release -p chordkv-bench --bin lookup_cluster -- \
//!     [--workloads workloads/compare-hotkey.yaml,workloads/compare-uniform.yaml] \
//!     [--schemes classic,base:4,cache,onehop,owner] [--duration SECS] \
//!     [--out results/lookup-schemes/cluster.md]
//! ```
//!
//! For each workload and scheme: one loadgen run (the library, exactly what `loadgen
//! --workload FILE` does) on a fresh local ring, with the scheme put into the workload:
//!
//! | scheme    | nodes run with          | requests enter at            |
//! |-----------|-------------------------|------------------------------|
//! | `classic` | `--routing classic`     | a random node                |
//! | `base:B`  | `--routing base:B`      | a random node                |
//! | `cache`   | `--cache 1024`          | a random node                |
//! | `onehop`  | `--routing onehop`      | a random node                |
//! | `owner`   | `--routing classic`     | the key's owner (the client routes, `entry: owner`) |
//!
//! Then `chordkv sim` on the same number of nodes, scheme and key distribution predicts the
//! mean hops (the simulator counts hops as the node does: messages to other nodes on the way
//! to the owner, 0 when the entry owns the key). Client-side routing is 0 hops on a settled
//! ring by construction, so its prediction is 0 without a simulation. Each run's own results
//! directory (summary.json, plots) is kept next to the table.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use chordkv_core::chord::Routing;
use clap::Parser;
use loadgen::run::{run, RunOptions};
use loadgen::workload::{Distribution, Entry, Workload};

/// Location-cache entries of the `cache` scheme.
const CACHE_ENTRIES: usize = 1024;
/// Lookups of each simulator prediction.
const SIM_LOOKUPS: u64 = 200_000;

#[derive(Parser, Debug)]
#[command(about = "Lookup schemes on a real local ring, with the simulator's prediction beside each row")]
struct Args {
    /// Workload files, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "workloads/compare-hotkey.yaml,workloads/compare-uniform.yaml"
    )]
    workloads: Vec<PathBuf>,
    /// Schemes, comma-separated: classic, base:B, cache, onehop, owner.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "classic,base:4,cache,onehop,owner"
    )]
    schemes: Vec<String>,
    /// Measured seconds per run (overrides the files' duration_s).
    #[arg(long)]
    duration: Option<f64>,
    /// Write the table here (and each run's directory next to it, in `cluster-runs/`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The chordkv binary [default: next to this executable].
    #[arg(long)]
    chordkv: Option<PathBuf>,
}

/// One row of the table.
struct Row {
    workload: String,
    scheme: String,
    nodes: usize,
    throughput: f64,
    p50_us: u64,
    p99_us: u64,
    hops_mean: f64,
    hops_p99: u64,
    errors: u64,
    lost: u64,
    predicted_hops: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let chordkv = common::chordkv_binary(args.chordkv.clone())?;
    let runs_dir = match &args.out {
        Some(out) => out.parent().unwrap_or(Path::new(".")).join("cluster-runs"),
        None => std::env::temp_dir().join(format!("lookup-cluster-{}", std::process::id())),
    };
    let mut rows = Vec::new();
    for path in &args.workloads {
        let base = Workload::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        for scheme in &args.schemes {
            let mut w = base.clone();
            if let Some(d) = args.duration {
                w.duration_s = d;
            }
            apply_scheme(&mut w, scheme)?;
            let dir = runs_dir.join(format!("{}-{}", base.name, scheme.replace(':', "")));
            eprintln!(
                "lookup_cluster: {} with {scheme} ({} nodes)",
                base.name, w.cluster.nodes
            );
            let outcome = run(RunOptions {
                workload: w.clone(),
                nodes: None,
                out_dir: Some(dir),
                results_root: runs_dir.clone(),
                chordkv_bin: Some(chordkv.clone()),
                progress: false,
            })
            .with_context(|| format!("{} with {scheme}", base.name))?;
            let s = &outcome.summary;
            let predicted_hops = predict(&chordkv, &w, scheme)?;
            let row = Row {
                workload: base.name.clone(),
                scheme: scheme.clone(),
                nodes: w.cluster.nodes,
                throughput: s.throughput_ops,
                p50_us: s.ops["all"].p50_us,
                p99_us: s.ops["all"].p99_us,
                hops_mean: s.hops.mean,
                hops_p99: s.hops.p99,
                errors: s.errors.total,
                lost: s.verify.lost,
                predicted_hops,
            };
            eprintln!(
                "  {:.0} ops/s, p50 {} us, p99 {} us, hops {:.2} (predicted {})",
                row.throughput,
                row.p50_us,
                row.p99_us,
                row.hops_mean,
                row.predicted_hops.map_or("-".into(), |h| format!("{h:.2}"))
            );
            rows.push(row);
        }
    }
    let table = markdown(&rows);
    print!("{table}");
    if let Some(out) = &args.out {
        let text = format!(
            "# Lookup schemes on a real local ring\n\n```\n{}\n```\n\n- date: {}\n- machine: {}\n- source: {}\n\
             - each row: one loadgen run (closed loop) on a fresh local ring of `chordkv node` \
             processes; `predicted hops` is `chordkv sim` on the same ring size, scheme and key \
             distribution ({SIM_LOOKUPS} lookups); the runs' own results are in `cluster-runs/`\n\n{table}",
            common::command_line("lookup_cluster"),
            common::utc_now(),
            common::machine(),
            common::source_version(),
        );
        std::fs::write(out, text).with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("lookup_cluster: wrote {}", out.display());
    }
    Ok(())
}

/// Puts `scheme` into the workload (see the module docs).
fn apply_scheme(w: &mut Workload, scheme: &str) -> anyhow::Result<()> {
    w.entry = Entry::Random;
    w.cluster.node.cache = 0;
    w.cluster.node.routing = Routing::Classic;
    match scheme {
        "classic" => {}
        "cache" => w.cluster.node.cache = CACHE_ENTRIES,
        "owner" => w.entry = Entry::Owner,
        s if s == "onehop" || s.starts_with("base:") => {
            w.cluster.node.routing = s.parse().map_err(anyhow::Error::msg)?;
        }
        other => bail!("unknown scheme '{other}': classic, base:B, cache, onehop or owner"),
    }
    w.cluster.validate().map_err(anyhow::Error::from)
}

/// The simulator's mean hops for the run's ring, scheme and key distribution.
fn predict(chordkv: &Path, w: &Workload, scheme: &str) -> anyhow::Result<Option<f64>> {
    if scheme == "owner" {
        return Ok(Some(0.0));
    }
    let workload = match w.distribution {
        Distribution::Uniform | Distribution::Sequential | Distribution::Latest => "uniform",
        Distribution::Zipfian { .. } | Distribution::Hotspot { .. } => "zipfian",
        Distribution::Hotkey => "hotkey",
    };
    let mut cmd = Command::new(chordkv);
    cmd.args(["sim", "--nodes", &w.cluster.nodes.to_string()])
        .args(["--routing", &w.cluster.node.routing.to_string()])
        .args(["--workload", workload])
        .args(["--lookups", &SIM_LOOKUPS.to_string()])
        .args(["--seed", &w.seed.to_string(), "--json"]);
    if w.cluster.node.cache > 0 {
        cmd.args(["--cache", &w.cluster.node.cache.to_string()]);
    }
    let out = cmd.output().context("cannot run chordkv sim")?;
    if !out.status.success() {
        bail!(
            "chordkv sim failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("chordkv sim --json output")?;
    Ok(v["hops"]["mean"].as_f64())
}

fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| workload | scheme | nodes | ops/s | p50 µs | p99 µs | hops mean | hops p99 | predicted hops | errors | lost |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {} | {} | {:.2} | {} | {} | {} | {} |",
            r.workload,
            r.scheme,
            r.nodes,
            r.throughput,
            r.p50_us,
            r.p99_us,
            r.hops_mean,
            r.hops_p99,
            r.predicted_hops.map_or("-".into(), |h| format!("{h:.2}")),
            r.errors,
            r.lost
        );
    }
    out
}
