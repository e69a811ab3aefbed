//! The data-loss experiment (a workload with `sweep:`; the kill-rate sweep is in
//! [`crate::kill_rate`], the partition and pause sweep in [`crate::fault_sweep`]): "at what
//! rate of failure do we start to see data loss?"
//!
//! ```text
//!   for N in replicas, f in kill_counts, trial in 0..trials (seed = seed + trial):
//!     fresh local cluster (--replicas N) -> preload every key (acknowledged)
//!     -> SIGKILL f random nodes at once -> wait for the survivors' ring (bounded)
//!     -> read every key through live nodes -> lost / acknowledged keys
//! ```
//!
//! Next to each measured fraction, the prediction for f random simultaneous failures out of
//! n nodes: a key is lost iff all N+1 of its holders are among the f killed, so
//! P = C(f, N+1) / C(n, N+1) ([`predicted_loss`]). Writes `data-loss.md` (the table) and
//! `data-loss.svg` (measured against predicted).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use chordkv_core::rng::Rng;
use chordkv_harness::cluster::{ClusterSpec, LocalCluster};

use crate::fault_sweep;
use crate::faults::Targets;
use crate::kill_rate;
use crate::oplog::RunClock;
use crate::plot::{self, XySeries};
use crate::report;
use crate::run::{find_chordkv, preload, verify_all, CONVERGE_TIMEOUT, DEFAULT_RESULTS_DIR};
use crate::workload::{Sweep, Workload};

pub const DATA_LOSS_MD: &str = "data-loss.md";
pub const DATA_LOSS_SVG: &str = "data-loss.svg";
/// Mixed into a trial's seed for the choice of the nodes it kills.
const KILL_SEED: u64 = 0x4b49_4c4c_5357_4550;

/// What to sweep and where to write it.
#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// A workload with a `sweep:` section.
    pub workload: Workload,
    /// The results directory; `None`: `results/<name>-<UTC timestamp>/`.
    pub out_dir: Option<PathBuf>,
    /// The `chordkv` binary; `None`: see [`find_chordkv`].
    pub chordkv_bin: Option<PathBuf>,
    /// The command line, for the head of `data-loss.md`.
    pub command: String,
    /// A line on stderr per trial.
    pub progress: bool,
}

/// One trial's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Trial {
    pub replicas: u64,
    pub kills: usize,
    pub seed: u64,
    /// Keys whose preload write was acknowledged.
    pub keys: u64,
    /// Acknowledged keys missing (or older) at the end.
    pub lost: u64,
    /// Keys that could not be read at the end (not judged).
    pub unreadable: u64,
    /// Whether the survivors' ring became consistent within the bound.
    pub settled: bool,
}

impl Trial {
    pub fn lost_fraction(&self) -> f64 {
        if self.keys == 0 {
            0.0
        } else {
            self.lost as f64 / self.keys as f64
        }
    }
}

/// The trials of one (N, f) cell, summed up.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    pub replicas: u64,
    pub kills: usize,
    pub trials: usize,
    /// Acknowledged keys per trial (mean).
    pub keys: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    pub predicted: f64,
    pub unreadable: u64,
    /// Trials whose ring did not settle within the bound.
    pub unsettled: usize,
}

/// The outcome of a sweep.
#[derive(Debug)]
pub struct SweepOutcome {
    pub trials: Vec<Trial>,
    pub cells: Vec<Cell>,
    pub out_dir: PathBuf,
    /// The text of `kill-rate.md`, `partition-faults.md` and `data-loss.md`, those the sweep
    /// wrote.
    pub table: String,
}

/// C(n, k) as a float (exact for the small numbers here).
fn choose(n: u64, k: u64) -> f64 {
    if k > n {
        return 0.0;
    }
    let k = k.min(n - k);
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

/// The fraction of keys lost when `f` of `n` nodes, picked at random, fail at once and every
/// key has `replicas` extra copies on distinct nodes: C(f, N+1) / C(n, N+1), with N+1
/// capped at n; 0 when f < N+1.
pub fn predicted_loss(n: usize, f: usize, replicas: u64) -> f64 {
    let (n, f) = (n as u64, f as u64);
    let holders = (replicas + 1).min(n);
    if f < holders || n == 0 {
        return 0.0;
    }
    choose(f, holders) / choose(n, holders)
}

/// Runs every trial of the sweep and writes `data-loss.md` and `data-loss.svg`.
pub fn run_sweep(opts: SweepOptions) -> Result<SweepOutcome> {
    let w = &opts.workload;
    w.validate()?;
    let sweep: &Sweep = w
        .sweep
        .as_ref()
        .ok_or_else(|| Error::Invalid("the workload has no sweep: section".to_string()))?;
    let started = SystemTime::now();
    let (stamp, started_utc) = report::utc_timestamps(started);
    let out_dir = opts
        .out_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RESULTS_DIR).join(format!("{}-{stamp}", w.name)));
    std::fs::create_dir_all(&out_dir).map_err(|e| {
        Error::step(
            format!("cannot create the results directory {}", out_dir.display()),
            e,
        )
    })?;
    let binary = match &opts.chordkv_bin {
        Some(b) => b.clone(),
        None => find_chordkv()?,
    };
    let total = sweep.replicas.len() * sweep.kill_counts.len() * sweep.trials as usize;
    if total > 0 {
        eprintln!(
            "loadgen: data-loss sweep {}: {} nodes, {} keys, N in {:?}, f in {:?}, {} trials each \
         ({total} trials), seed {}, results in {}",
            w.name,
            w.cluster.nodes,
            w.keys,
            sweep.replicas,
            sweep.kill_counts,
            sweep.trials,
            w.seed,
            out_dir.display()
        );
    }
    let mut trials = Vec::with_capacity(total);
    let mut table = String::new();
    if !sweep.kill_intervals_s.is_empty() {
        let (_, rate_table) = kill_rate::run_kill_rate(
            w,
            sweep,
            opts.chordkv_bin.clone(),
            &out_dir,
            &opts.command,
            &started_utc,
            opts.progress,
        )?;
        table.push_str(&rate_table);
    }
    if sweep.has_fault_trials() {
        let (_, fault_table) = fault_sweep::run_fault_sweep(
            w,
            sweep,
            opts.chordkv_bin.clone(),
            &out_dir,
            &opts.command,
            &started_utc,
            opts.progress,
        )?;
        if !table.is_empty() {
            table.push('\n');
        }
        table.push_str(&fault_table);
    }
    if sweep.kill_counts.is_empty() {
        return Ok(SweepOutcome {
            trials,
            cells: Vec::new(),
            out_dir,
            table,
        });
    }
    for &replicas in &sweep.replicas {
        for &kills in &sweep.kill_counts {
            for t in 0..sweep.trials {
                let seed = w.seed.wrapping_add(u64::from(t));
                let trial = run_trial(w, sweep, &binary, replicas, kills, seed)
                    .map_err(|e| Error::step(format!("trial N={replicas} f={kills} seed {seed}"), e))?;
                if opts.progress {
                    eprintln!(
                        "[{}/{total}] N={replicas} f={kills} seed {seed}: lost {} of {} keys \
                         ({:.4}), predicted {:.4}{}{}",
                        trials.len() + 1,
                        trial.lost,
                        trial.keys,
                        trial.lost_fraction(),
                        predicted_loss(w.cluster.nodes, kills, replicas),
                        if trial.unreadable > 0 {
                            format!(", {} unreadable", trial.unreadable)
                        } else {
                            String::new()
                        },
                        if trial.settled { "" } else { ", ring not settled" }
                    );
                }
                trials.push(trial);
            }
        }
    }
    let cells = summarize(w.cluster.nodes, &trials);
    let loss_table = markdown(w, &opts.command, &started_utc, &cells);
    report::write_file(&out_dir, DATA_LOSS_MD, &loss_table)?;
    if !table.is_empty() {
        table.push('\n');
    }
    table.push_str(&loss_table);
    report::write_file(
        &out_dir,
        DATA_LOSS_SVG,
        &loss_svg(
            &format!(
                "{}: keys lost when f of {} nodes die at once ({} keys, {} trials per point)",
                w.name, w.cluster.nodes, w.keys, sweep.trials
            ),
            w.cluster.nodes,
            &cells,
        ),
    )?;
    Ok(SweepOutcome {
        trials,
        cells,
        out_dir,
        table,
    })
}

/// One trial: fresh cluster, preload, kill, settle, verify.
fn run_trial(
    base: &Workload,
    sweep: &Sweep,
    binary: &std::path::Path,
    replicas: u64,
    kills: usize,
    seed: u64,
) -> Result<Trial> {
    let mut w = base.clone();
    w.seed = seed;
    w.preload = true;
    w.cluster.node.replicas = replicas;
    let mut spec = ClusterSpec::new(binary, w.cluster.nodes);
    spec.node_args = w.cluster.node_args();
    spec.access = w.access.clone();
    let mut cluster = LocalCluster::start(spec)?;
    cluster.wait_consistent(CONVERGE_TIMEOUT)?;
    let targets = Targets::new(cluster.addrs());
    let clock = RunClock::start();
    let (history, _errors, log) = preload(&w, &targets, &clock)?;
    let keys = history.keys.values().filter(|r| r.acked.is_some()).count() as u64;

    // f distinct nodes, a uniform sample (partial Fisher-Yates).
    let mut rng = Rng::new(seed ^ KILL_SEED ^ (replicas << 32) ^ kills as u64);
    let mut nodes: Vec<usize> = (0..w.cluster.nodes).collect();
    for k in 0..kills {
        let j = k + rng.below((nodes.len() - k) as u64) as usize;
        nodes.swap(k, j);
    }
    for &i in &nodes[..kills] {
        cluster.kill(i)?;
    }
    let settled = cluster
        .wait_consistent(Duration::from_secs_f64(sweep.settle_timeout_s))
        .is_ok();
    targets.set(cluster.live_addrs());
    let (report, _) = verify_all(&w, &targets, &history, log);
    drop(cluster);
    Ok(Trial {
        replicas,
        kills,
        seed,
        keys,
        lost: report.lost,
        unreadable: report.unreadable,
        settled,
    })
}

/// The trials grouped by (N, f), in the order they ran.
pub fn summarize(nodes: usize, trials: &[Trial]) -> Vec<Cell> {
    let mut cells: Vec<Cell> = Vec::new();
    for t in trials {
        let x = t.lost_fraction();
        match cells
            .iter_mut()
            .find(|c| c.replicas == t.replicas && c.kills == t.kills)
        {
            Some(c) => {
                c.keys = (c.keys * c.trials as f64 + t.keys as f64) / (c.trials + 1) as f64;
                c.mean = (c.mean * c.trials as f64 + x) / (c.trials + 1) as f64;
                c.min = c.min.min(x);
                c.max = c.max.max(x);
                c.trials += 1;
                c.unreadable += t.unreadable;
                c.unsettled += usize::from(!t.settled);
            }
            None => cells.push(Cell {
                replicas: t.replicas,
                kills: t.kills,
                trials: 1,
                keys: t.keys as f64,
                mean: x,
                min: x,
                max: x,
                predicted: predicted_loss(nodes, t.kills, t.replicas),
                unreadable: t.unreadable,
                unsettled: usize::from(!t.settled),
            }),
        }
    }
    cells
}

/// `data-loss.md`.
pub fn markdown(w: &Workload, command: &str, date: &str, cells: &[Cell]) -> String {
    let m = report::machine();
    let memory = m.memory_bytes.map_or("unknown memory".to_string(), |b| {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    });
    let sweep = w.sweep.as_ref();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Data loss: f of {} nodes killed at once\n",
        w.cluster.nodes
    );
    let _ = writeln!(out, "```\n{command}\n```\n");
    let _ = writeln!(
        out,
        "- date: {date}\n- machine: {} cores, {memory}\n- seed: {} (trial t uses seed + t)\n\
         - cluster: {} local nodes, store {}, ack {}, stabilize {} ms\n\
         - per trial: fresh cluster, preload {} keys, SIGKILL f random nodes at once, wait for \
         the survivors' ring (at most {} s), read every key through live nodes\n\
         - lost: acknowledged but missing or older at the end, as a fraction of the \
         acknowledged keys\n\
         - predicted: a key is lost iff all N+1 holders are among the f killed: \
         C(f, N+1) / C(n, N+1), the expectation over random kills. A key's holders are \
         consecutive nodes of the ring, so a trial loses whole arcs or nothing, and the arcs \
         differ in size: single trials scatter widely around the prediction\n",
        m.cores,
        w.seed,
        w.cluster.nodes,
        w.cluster.node.store,
        w.cluster.node.ack,
        w.cluster.node.stabilize_ms,
        w.keys,
        sweep.map_or(0.0, |s| s.settle_timeout_s),
    );
    out.push_str(
        "| N | f | trials | keys | lost (mean) | lost (min-max) | predicted | unreadable | ring not settled |\n\
         |---|---|--------|------|-------------|----------------|-----------|------------|------------------|\n",
    );
    for c in cells {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.4} | {:.4}-{:.4} | {:.4} | {} | {} |",
            c.replicas,
            c.kills,
            c.trials,
            c.keys,
            c.mean,
            c.min,
            c.max,
            c.predicted,
            c.unreadable,
            c.unsettled
        );
    }
    out
}

/// `data-loss.svg`: lost fraction against f, one color per N; measured as points joined by
/// solid lines (a bar from the lowest to the highest trial), predicted as dashed lines.
pub fn loss_svg(title: &str, nodes: usize, cells: &[Cell]) -> String {
    let f_max = cells.iter().map(|c| c.kills).max().unwrap_or(1);
    let mut replicas: Vec<u64> = cells.iter().map(|c| c.replicas).collect();
    replicas.sort_unstable();
    replicas.dedup();
    let mut series = Vec::new();
    for (i, &n) in replicas.iter().enumerate() {
        let measured: Vec<&Cell> = cells.iter().filter(|c| c.replicas == n).collect();
        series.push(XySeries {
            name: format!("N = {n}, measured"),
            points: measured.iter().map(|c| (c.kills as f64, c.mean)).collect(),
            color: i,
            dashed: false,
            bars: measured.iter().map(|c| (c.kills as f64, c.min, c.max)).collect(),
        });
        // Through every f from 0 to the largest, so the prediction's shape shows.
        series.push(XySeries {
            name: format!("N = {n}, predicted"),
            points: (0..=f_max)
                .map(|f| (f as f64, predicted_loss(nodes, f, n)))
                .collect(),
            color: i,
            dashed: true,
            bars: Vec::new(),
        });
    }
    plot::xy_svg(
        title,
        &format!("f: nodes killed at once (of {nodes})"),
        "fraction of acknowledged keys lost",
        &series,
        &|x| format!("{x}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prediction() {
        assert!((predicted_loss(8, 3, 2) - 1.0 / 56.0).abs() < 1e-12);
        assert_eq!(predicted_loss(8, 2, 2), 0.0);
        assert_eq!(predicted_loss(8, 1, 1), 0.0);
        assert!((predicted_loss(8, 1, 0) - 1.0 / 8.0).abs() < 1e-12);
        assert!((predicted_loss(8, 4, 1) - 6.0 / 28.0).abs() < 1e-12);
        assert!((predicted_loss(8, 8, 2) - 1.0).abs() < 1e-12);
        // More replicas than nodes: every node holds every key.
        assert!((predicted_loss(2, 2, 5) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn cells_and_outputs() {
        let t = |replicas, kills, keys, lost| Trial {
            replicas,
            kills,
            seed: 1,
            keys,
            lost,
            unreadable: 0,
            settled: true,
        };
        let trials = [t(0, 1, 100, 10), t(0, 1, 100, 20), t(1, 2, 100, 0)];
        let cells = summarize(8, &trials);
        assert_eq!(cells.len(), 2);
        assert_eq!(cells[0].trials, 2);
        assert!((cells[0].mean - 0.15).abs() < 1e-12);
        assert_eq!((cells[0].min, cells[0].max), (0.1, 0.2));
        assert!((cells[1].predicted - 1.0 / 28.0).abs() < 1e-12);
        let svg = loss_svg("t <1>", 8, &cells);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;1&gt;"), "{svg}");
        for name in ["N = 0, measured", "N = 0, predicted", "N = 1, measured"] {
            assert!(
                svg.contains(&format!(">{name}<")) || svg.contains(&format!(">\n{name}\n<")),
                "{name}: {svg}"
            );
        }
    }
}
