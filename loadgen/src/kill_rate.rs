//! The second data-loss sweep (`sweep: kill_intervals_s`): one node killed every T seconds
//! under steady load.
//!
//! ```text
//!   for N in replicas, T in kill_intervals_s, trial in 0..trials (seed = seed + trial):
//!     a normal run (fresh local cluster with --replicas N, preload, the workload's mix for
//!     duration_s) whose faults are: at T, 2T, 3T, ... SIGKILL one random live node and
//!     start a fresh, empty node in its place (the ring keeps its size, the data must move)
//!     -> at the end, wait for the ring, read every written key -> lost / written keys
//! ```
//!
//! Where the first sweep asks how many simultaneous failures the replicas absorb, this one
//! asks how fast failures may come before re-replication falls behind: with N >= 1, a key
//! is only lost when all N + 1 of its holders die within one repair window (failure
//! detection plus the anti-entropy round that copies the key again), so loss should start
//! when T drops towards that window. With N = 0 every kill loses the keys of the dead node.
//! Writes `kill-rate.md` and `kill-rate.svg` (lost fraction against kills per second).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

use crate::plot::{self, XySeries};
use crate::report;
use crate::run::{run, RunOptions};
use crate::workload::{Fault, FaultAction, Sweep, Workload};

pub const KILL_RATE_MD: &str = "kill-rate.md";
pub const KILL_RATE_SVG: &str = "kill-rate.svg";

/// One trial's result.
#[derive(Clone, Debug, PartialEq)]
pub struct RateTrial {
    pub replicas: u64,
    pub interval_s: f64,
    pub seed: u64,
    /// Nodes killed (and replaced) during the run.
    pub kills: usize,
    /// Keys written (and acknowledged at least once).
    pub keys: u64,
    /// Keys whose last acknowledged write is missing or older at the end.
    pub lost: u64,
    pub unreadable: u64,
    /// Failed operations during the run (after retries).
    pub errors: u64,
    pub throughput_ops: f64,
    /// Where the trial's own results (summary.json, timeline, plots) are.
    pub dir: PathBuf,
}

impl RateTrial {
    /// Whether every written key could be read at the end, so that the trial's loss is
    /// known. A trial whose ring had not re-formed (a node that joined through a node killed
    /// before the join finished waits for it forever) has unreadable keys and is not judged.
    pub fn judged(&self) -> bool {
        self.unreadable == 0 && self.keys > 0
    }

    pub fn lost_fraction(&self) -> f64 {
        if self.keys == 0 {
            0.0
        } else {
            self.lost as f64 / self.keys as f64
        }
    }
}

/// The faults of a trial: a kill and a fresh node every `interval_s` within the run.
pub fn kill_schedule(duration_s: f64, interval_s: f64) -> Vec<Fault> {
    let mut faults = Vec::new();
    let mut k = 1.0;
    while k * interval_s < duration_s {
        let at_s = (k * interval_s * 1000.0).round() / 1000.0;
        for action in [FaultAction::Kill, FaultAction::Add] {
            faults.push(Fault::new(at_s, action));
        }
        k += 1.0;
    }
    faults
}

/// Runs every trial of the kill-rate sweep into `out_dir/kill-rate-trials/` and writes
/// `kill-rate.md` and `kill-rate.svg`; returns the trials and the table.
pub fn run_kill_rate(
    w: &Workload,
    sweep: &Sweep,
    chordkv_bin: Option<PathBuf>,
    out_dir: &Path,
    command: &str,
    started_utc: &str,
    progress: bool,
) -> Result<(Vec<RateTrial>, String)> {
    let total = sweep.replicas.len() * sweep.kill_intervals_s.len() * sweep.trials as usize;
    eprintln!(
        "loadgen: kill-rate sweep {}: {} nodes, {} s of load, N in {:?}, T in {:?} s, {} trials each \
         ({total} trials)",
        w.name, w.cluster.nodes, w.duration_s, sweep.replicas, sweep.kill_intervals_s, sweep.trials
    );
    let mut trials = Vec::with_capacity(total);
    for &replicas in &sweep.replicas {
        for &interval_s in &sweep.kill_intervals_s {
            for t in 0..sweep.trials {
                let seed = w.seed.wrapping_add(u64::from(t));
                let mut tw = w.clone();
                tw.sweep = None;
                tw.seed = seed;
                tw.preload = true;
                tw.cluster.node.replicas = replicas;
                tw.faults = kill_schedule(w.duration_s, interval_s);
                let kills = tw.faults.len() / 2;
                let dir = out_dir
                    .join("kill-rate-trials")
                    .join(format!("N{replicas}-T{interval_s}-seed{seed}"));
                let outcome = run(RunOptions {
                    workload: tw,
                    nodes: None,
                    out_dir: Some(dir.clone()),
                    results_root: out_dir.to_path_buf(),
                    chordkv_bin: chordkv_bin.clone(),
                    progress: false,
                })
                .map_err(|e| Error::step(format!("trial N={replicas} T={interval_s} s seed {seed}"), e))?;
                let s = &outcome.summary;
                let trial = RateTrial {
                    replicas,
                    interval_s,
                    seed,
                    kills,
                    keys: s.verify.keys_checked,
                    lost: s.verify.lost,
                    unreadable: s.verify.unreadable,
                    errors: s.errors.total,
                    throughput_ops: s.throughput_ops,
                    dir,
                };
                if progress {
                    eprintln!(
                        "[{}/{total}] N={replicas} T={interval_s} s seed {seed}: {kills} kills, lost {} of \
                         {} keys ({:.4}), {} errors, {:.0} ops/s",
                        trials.len() + 1,
                        trial.lost,
                        trial.keys,
                        trial.lost_fraction(),
                        trial.errors,
                        trial.throughput_ops
                    );
                }
                trials.push(trial);
            }
        }
    }
    let table = markdown(w, command, started_utc, &trials);
    report::write_file(out_dir, KILL_RATE_MD, &table)?;
    report::write_file(out_dir, KILL_RATE_SVG, &svg(w, &trials))?;
    Ok((trials, table))
}

/// (N, T) cells in the order they ran: (replicas, interval, trials of the cell).
fn cells(trials: &[RateTrial]) -> Vec<(u64, f64, Vec<&RateTrial>)> {
    let mut cells: Vec<(u64, f64, Vec<&RateTrial>)> = Vec::new();
    for t in trials {
        match cells
            .iter_mut()
            .find(|c| c.0 == t.replicas && c.1 == t.interval_s)
        {
            Some(c) => c.2.push(t),
            None => cells.push((t.replicas, t.interval_s, vec![t])),
        }
    }
    cells
}

/// `kill-rate.md`.
pub fn markdown(w: &Workload, command: &str, date: &str, trials: &[RateTrial]) -> String {
    let m = report::machine();
    let memory = m.memory_bytes.map_or("unknown memory".to_string(), |b| {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    });
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Data loss: one of {} nodes killed every T seconds under load\n",
        w.cluster.nodes
    );
    let _ = writeln!(out, "```\n{command}\n```\n");
    let _ = writeln!(
        out,
        "- date: {date}\n- machine: {} cores, {memory}\n- seed: {} (trial t uses seed + t)\n\
         - cluster: {} local nodes, store {}, stabilize {} ms\n\
         - per trial: fresh cluster, preload {} keys, then {} s of closed-loop load ({} threads, \
         mix get {} / put {} / delete {}); every T s one random live node is SIGKILLed and a \
         fresh empty node joins in its place; at the end, wait for the ring (under the \
         `available` policy also for an anti-entropy round on every node, so that a key is \
         lost only when no copy of it is left) and read every written key\n\
         - lost: keys whose last acknowledged write is missing or older at the end, as a \
         fraction of the keys written, over the judged trials: those in which every key could \
         be read at the end. `ring not settled` counts the others (the ring had not re-formed \
         within 60 s, so their keys could not be read; see the trial's `nodes/` logs). Each \
         trial's own results are in `kill-rate-trials/N<N>-T<T>-seed<seed>/`\n",
        m.cores,
        w.seed,
        w.cluster.nodes,
        w.cluster.node.store,
        w.cluster.node.stabilize_ms,
        w.keys,
        w.duration_s,
        w.threads.min(w.connections),
        w.mix.get,
        w.mix.put,
        w.mix.delete,
    );
    out.push_str(
        "| N | T (s) | kills | trials | judged | lost (mean) | lost (min-max) | errors | ops/s (mean) | ring not settled |\n\
         |---|-------|-------|--------|--------|-------------|----------------|--------|--------------|------------------|\n",
    );
    for (replicas, interval, ts) in cells(trials) {
        let fractions: Vec<f64> = ts
            .iter()
            .filter(|t| t.judged())
            .map(|t| t.lost_fraction())
            .collect();
        let n = ts.len() as f64;
        let (mean, range) = if fractions.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            (
                format!("{:.4}", fractions.iter().sum::<f64>() / fractions.len() as f64),
                format!(
                    "{:.4}-{:.4}",
                    fractions.iter().copied().fold(f64::INFINITY, f64::min),
                    fractions.iter().copied().fold(0.0, f64::max)
                ),
            )
        };
        let _ = writeln!(
            out,
            "| {replicas} | {interval} | {} | {} | {} | {mean} | {range} | {} | {:.0} | {} |",
            ts[0].kills,
            ts.len(),
            fractions.len(),
            ts.iter().map(|t| t.errors).sum::<u64>(),
            ts.iter().map(|t| t.throughput_ops).sum::<f64>() / n,
            ts.len() - fractions.len(),
        );
    }
    out
}

/// `kill-rate.svg`: mean lost fraction against kills per second, one line per N.
fn svg(w: &Workload, trials: &[RateTrial]) -> String {
    let mut series: Vec<XySeries> = Vec::new();
    for (replicas, interval, ts) in cells(trials) {
        let judged: Vec<f64> = ts
            .iter()
            .filter(|t| t.judged())
            .map(|t| t.lost_fraction())
            .collect();
        if judged.is_empty() {
            continue;
        }
        let mean = judged.iter().sum::<f64>() / judged.len() as f64;
        let point = (1.0 / interval, mean);
        match series.iter_mut().find(|s| s.color == replicas as usize) {
            Some(s) => s.points.push(point),
            None => series.push(XySeries {
                name: format!("N = {replicas}"),
                points: vec![point],
                color: replicas as usize,
                dashed: false,
                bars: Vec::new(),
            }),
        }
    }
    plot::xy_svg(
        &format!(
            "{}: keys lost with one of {} nodes killed every T s ({} s of load)",
            w.name, w.cluster.nodes, w.duration_s
        ),
        "kills per second (1 / T)",
        "fraction of written keys lost",
        &series,
        &|x| format!("{}", (x * 100.0).round() / 100.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_kills_and_replaces_within_the_run() {
        let f = kill_schedule(10.0, 3.0);
        let times: Vec<f64> = f.iter().map(|f| f.at_s).collect();
        assert_eq!(times, vec![3.0, 3.0, 6.0, 6.0, 9.0, 9.0]);
        assert_eq!(f[0].action, FaultAction::Kill);
        assert_eq!(f[1].action, FaultAction::Add);
        assert!(kill_schedule(2.0, 2.0).is_empty());
        assert_eq!(kill_schedule(1.0, 0.25).len(), 6);
    }
}
