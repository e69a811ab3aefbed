//! `loadgen --workload FILE [--nodes ADDR,...] [--duration SECS] [--rate OPS] [--out DIR]
//! [--seed S]`: runs a workload and writes `results/<name>-<UTC timestamp>/`. Exit code 0
//! when every acknowledged write was found at the end, 1 when writes were lost, keys could
//! not be read back, or the run failed; 2 for bad arguments or a bad workload file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use loadgen::run::{run, RunOptions, DEFAULT_RESULTS_DIR};
use loadgen::workload::Workload;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "Replays a YAML workload against a chordkv cluster"
)]
struct Args {
    /// The workload file (see workloads/).
    #[arg(long)]
    workload: PathBuf,
    /// Target a running cluster (comma-separated addresses) instead of starting a local one.
    #[arg(long, value_delimiter = ',')]
    nodes: Option<Vec<SocketAddr>>,
    /// Measured seconds (overrides the file's duration_s).
    #[arg(long)]
    duration: Option<f64>,
    /// Open loop at this many operations per second in total (overrides rate_per_s).
    #[arg(long)]
    rate: Option<f64>,
    /// The results directory [default: results/<name>-<UTC timestamp>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed of every random choice (overrides the file's seed).
    #[arg(long)]
    seed: Option<u64>,
    /// The chordkv binary for a local cluster [default: $CHORDKV_BIN, else next to loadgen].
    #[arg(long)]
    chordkv: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut workload = match Workload::load(&args.workload) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(d) = args.duration {
        workload.duration_s = d;
    }
    if let Some(r) = args.rate {
        workload.rate_per_s = Some(r);
    }
    if let Some(s) = args.seed {
        workload.seed = s;
    }
    if let Err(e) = workload.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if args.nodes.is_some() && !workload.faults.is_empty() {
        eprintln!("error: faults need a local cluster (no --nodes) until ssh control lands");
        return ExitCode::from(2);
    }
    let opts = RunOptions {
        workload,
        nodes: args.nodes,
        out_dir: args.out,
        results_root: PathBuf::from(DEFAULT_RESULTS_DIR),
        chordkv_bin: args.chordkv,
        progress: !args.quiet,
    };
    let outcome = match run(opts) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(1);
        }
    };
    let s = &outcome.summary;
    let all = &s.ops["all"];
    println!(
        "{}: {:.0} ops/s ({} loop), p50 {} us, p99 {} us, p99.9 {} us, max {} us, errors {}, hops mean {:.2}",
        s.name,
        s.throughput_ops,
        s.r#loop,
        all.p50_us,
        all.p99_us,
        all.p999_us,
        all.max_us,
        s.errors.total,
        s.hops.mean
    );
    let v = &s.verify;
    println!(
        "verify: acknowledged {}, keys checked {}, lost {}, unexpected {}, recovered {}, unreadable {}",
        v.acknowledged, v.keys_checked, v.lost, v.unexpected, v.recovered, v.read_errors
    );
    println!("results: {}", outcome.out_dir.display());
    eprintln!(
        "plots: {} {}",
        outcome.out_dir.join(loadgen::plot::LATENCY_SVG).display(),
        outcome.out_dir.join(loadgen::plot::TIMELINE_SVG).display()
    );
    if v.lost > 0 {
        eprintln!("!!!!!!!! {} ACKNOWLEDGED WRITES LOST !!!!!!!!", v.lost);
        for line in &outcome.lost_keys {
            eprintln!("!!! lost {line}");
        }
        return ExitCode::from(1);
    }
    if v.read_errors > 0 {
        eprintln!(
            "!!! verification incomplete: {} written keys could not be read at the end",
            v.read_errors
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
