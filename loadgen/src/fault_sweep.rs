//! The fault sweep (`sweep: partition_lengths_s` and `pause_lengths_s`): at what length of a
//! partition, or of a pause, do acknowledged writes get lost and reads go stale?
//!
//! ```text
//!   for kind in [partition, pause], L in its lengths, ack in acks, policy in partition_policies,
//!   trial in 0..trials (seed = seed + trial):
//!     a normal run (fresh local cluster with --ack ack --partition-policy policy, preload,
//!     fault_at_s + L + after_fault_s seconds of the workload's mix) whose one fault is, at
//!     fault_at_s: partition the nodes between partition_groups for L s (the cluster in
//!     network namespaces), or pause one random node for L s
//!     -> at the end, read every written key; the real-time checker judges every read
//! ```
//!
//! The seed's question, "at what rate of failure do we start to see data loss", for the faults
//! of real networks: a node cut off (its packets dropped, delivered late after the heal) or
//! frozen (a GC pause, a stalled VM; its sockets fill, and it answers late). Writes
//! `partition-faults.md` (the table, with the command), `partition-faults.svg` (lost and stale
//! fractions against partition length) and `pause-faults.svg` (against pause length); each
//! trial's own run is in `partition-faults-trials/`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

use crate::plot::{self, XySeries};
use crate::report;
use crate::run::{run, RunOptions};
use crate::workload::{AckPolicy, Fault, FaultAction, PartitionPolicy, Sweep, Workload};

pub const PARTITION_FAULTS_MD: &str = "partition-faults.md";
pub const PARTITION_FAULTS_SVG: &str = "partition-faults.svg";
pub const PAUSE_FAULTS_SVG: &str = "pause-faults.svg";
/// Where each trial's own results go, under the sweep's directory.
pub const TRIALS_DIR: &str = "partition-faults-trials";

/// The fault of a trial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    Partition,
    Pause,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Partition => "partition",
            FaultKind::Pause => "pause",
        }
    }
}

/// One trial's result.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultTrial {
    pub kind: FaultKind,
    pub length_s: f64,
    pub ack: AckPolicy,
    pub policy: PartitionPolicy,
    pub seed: u64,
    /// Writes acknowledged (preload included).
    pub acknowledged: u64,
    /// Keys read at the end.
    pub keys: u64,
    /// Keys whose final read misses an acknowledged write.
    pub lost: u64,
    /// Reads judged by real-time order, and those that were stale or resurrected a delete.
    pub reads: u64,
    pub stale: u64,
    pub resurrected: u64,
    /// Keys that could not be read at the end (not judged).
    pub unreadable: u64,
    /// Operations that failed during the run (after retries).
    pub errors: u64,
    pub throughput_ops: f64,
    /// Where the trial's own results (summary.json, timeline, plots, node logs) are.
    pub dir: PathBuf,
}

/// The trials of one (kind, L, ack, policy) cell, summed.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultCell {
    pub kind: FaultKind,
    pub length_s: f64,
    pub ack: AckPolicy,
    pub policy: PartitionPolicy,
    pub trials: usize,
    pub keys: u64,
    pub lost: u64,
    pub reads: u64,
    pub stale: u64,
    pub resurrected: u64,
    pub unreadable: u64,
    pub errors: u64,
}

impl FaultCell {
    /// Lost keys over keys read at the end.
    pub fn lost_fraction(&self) -> f64 {
        ratio(self.lost, self.keys)
    }

    /// Stale reads over reads judged.
    pub fn stale_fraction(&self) -> f64 {
        ratio(self.stale, self.reads)
    }
}

fn ratio(n: u64, d: u64) -> f64 {
    if d == 0 {
        0.0
    } else {
        n as f64 / d as f64
    }
}

/// The workload of one trial: `base` with the sweep removed, the trial's seed, ack and
/// policy, a preload, and one fault of `length_s` at `fault_at_s`.
pub fn trial_workload(
    base: &Workload,
    sweep: &Sweep,
    kind: FaultKind,
    length_s: f64,
    ack: AckPolicy,
    policy: PartitionPolicy,
    seed: u64,
) -> Workload {
    let mut w = base.clone();
    w.sweep = None;
    w.seed = seed;
    w.preload = true;
    w.cluster.node.ack = ack;
    w.cluster.node.partition_policy = policy;
    w.duration_s = sweep.fault_at_s + length_s + sweep.after_fault_s;
    let mut fault = match kind {
        FaultKind::Partition => {
            let mut f = Fault::new(sweep.fault_at_s, FaultAction::Partition);
            f.groups = Some(sweep.groups(w.cluster.nodes));
            f
        }
        FaultKind::Pause => {
            let mut f = Fault::new(sweep.fault_at_s, FaultAction::Pause);
            f.count = Some(1);
            f
        }
    };
    fault.duration_s = Some(length_s);
    w.faults = vec![fault];
    w
}

/// Runs every partition and pause trial of the sweep into `out_dir/partition-faults-trials/`
/// and writes `partition-faults.md`, `partition-faults.svg` and `pause-faults.svg`; returns
/// the trials and the table.
pub fn run_fault_sweep(
    w: &Workload,
    sweep: &Sweep,
    chordkv_bin: Option<PathBuf>,
    out_dir: &Path,
    command: &str,
    started_utc: &str,
    progress: bool,
) -> Result<(Vec<FaultTrial>, String)> {
    if !sweep.partition_lengths_s.is_empty() {
        if let Some(why) = chordkv_harness::netns::unavailable() {
            return Err(Error::Invalid(format!(
                "the partition trials need network namespaces, but {why}"
            )));
        }
    }
    let acks = if sweep.acks.is_empty() {
        vec![w.cluster.node.ack]
    } else {
        sweep.acks.clone()
    };
    let policies = if sweep.partition_policies.is_empty() {
        vec![w.cluster.policy()]
    } else {
        sweep.partition_policies.clone()
    };
    let mut plan = Vec::new();
    for (kind, lengths) in [
        (FaultKind::Partition, &sweep.partition_lengths_s),
        (FaultKind::Pause, &sweep.pause_lengths_s),
    ] {
        for &length_s in lengths {
            for &ack in &acks {
                for &policy in &policies {
                    for t in 0..sweep.trials {
                        plan.push((kind, length_s, ack, policy, w.seed.wrapping_add(u64::from(t))));
                    }
                }
            }
        }
    }
    let total = plan.len();
    eprintln!(
        "loadgen: fault sweep {}: {} nodes, partitions of {:?} s ({}), pauses of {:?} s, ack in {:?}, \
         policy in {:?}, {} trials each ({total} trials)",
        w.name,
        w.cluster.nodes,
        sweep.partition_lengths_s,
        describe_groups(&sweep.groups(w.cluster.nodes)),
        sweep.pause_lengths_s,
        acks.iter().map(|a| a.name()).collect::<Vec<_>>(),
        policies.iter().map(|p| p.name()).collect::<Vec<_>>(),
        sweep.trials
    );
    let mut trials = Vec::with_capacity(total);
    for (kind, length_s, ack, policy, seed) in plan {
        let tw = trial_workload(w, sweep, kind, length_s, ack, policy, seed);
        let dir = out_dir.join(TRIALS_DIR).join(format!(
            "{}-L{length_s}-ack-{}-{}-seed{seed}",
            kind.name(),
            ack.name(),
            policy.name()
        ));
        let outcome = run(RunOptions {
            workload: tw,
            nodes: None,
            out_dir: Some(dir.clone()),
            results_root: out_dir.to_path_buf(),
            chordkv_bin: chordkv_bin.clone(),
            progress: false,
        })
        .map_err(|e| {
            Error::step(
                {
                    format!(
                        "trial {} L={length_s} s ack {} policy {} seed {seed}",
                        kind.name(),
                        ack.name(),
                        policy.name()
                    )
                },
                e,
            )
        })?;
        let s = &outcome.summary;
        let trial = FaultTrial {
            kind,
            length_s,
            ack,
            policy,
            seed,
            acknowledged: s.verify.acknowledged,
            keys: s.verify.keys_checked,
            lost: s.verify.lost,
            reads: s.verify.reads_checked,
            stale: s.verify.stale_reads,
            resurrected: s.verify.resurrected,
            unreadable: s.verify.unreadable,
            errors: s.errors.total,
            throughput_ops: s.throughput_ops,
            dir,
        };
        if progress {
            eprintln!(
                "[{}/{total}] {} L={length_s} s ack {} {} seed {seed}: lost {} of {} keys, stale {} of {} \
                 reads, resurrected {}, {} errors{}",
                trials.len() + 1,
                kind.name(),
                ack.name(),
                policy.name(),
                trial.lost,
                trial.keys,
                trial.stale,
                trial.reads,
                trial.resurrected,
                trial.errors,
                if trial.unreadable > 0 {
                    format!(", {} unreadable", trial.unreadable)
                } else {
                    String::new()
                }
            );
        }
        trials.push(trial);
    }
    let cells = summarize(&trials);
    let table = markdown(w, sweep, command, started_utc, &cells);
    report::write_file(out_dir, PARTITION_FAULTS_MD, &table)?;
    for (kind, file) in [
        (FaultKind::Partition, PARTITION_FAULTS_SVG),
        (FaultKind::Pause, PAUSE_FAULTS_SVG),
    ] {
        if cells.iter().any(|c| c.kind == kind) {
            report::write_file(out_dir, file, &svg(w, kind, &cells))?;
        }
    }
    Ok((trials, table))
}

/// The trials grouped by (kind, L, ack, policy), in the order they ran.
pub fn summarize(trials: &[FaultTrial]) -> Vec<FaultCell> {
    let mut cells: Vec<FaultCell> = Vec::new();
    for t in trials {
        let same = |c: &&mut FaultCell| {
            c.kind == t.kind && c.length_s == t.length_s && c.ack == t.ack && c.policy == t.policy
        };
        let cell = match cells.iter_mut().find(|c| same(c)) {
            Some(c) => c,
            None => {
                cells.push(FaultCell {
                    kind: t.kind,
                    length_s: t.length_s,
                    ack: t.ack,
                    policy: t.policy,
                    trials: 0,
                    keys: 0,
                    lost: 0,
                    reads: 0,
                    stale: 0,
                    resurrected: 0,
                    unreadable: 0,
                    errors: 0,
                });
                cells.last_mut().expect("just pushed")
            }
        };
        cell.trials += 1;
        cell.keys += t.keys;
        cell.lost += t.lost;
        cell.reads += t.reads;
        cell.stale += t.stale;
        cell.resurrected += t.resurrected;
        cell.unreadable += t.unreadable;
        cell.errors += t.errors;
    }
    cells
}

fn describe_groups(groups: &[Vec<usize>]) -> String {
    groups
        .iter()
        .map(|g| g.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", "))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// `partition-faults.md`.
pub fn markdown(w: &Workload, sweep: &Sweep, command: &str, date: &str, cells: &[FaultCell]) -> String {
    let m = report::machine();
    let memory = m.memory_bytes.map_or("unknown memory".to_string(), |b| {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    });
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Acknowledged writes lost and stale reads against partition and pause length\n"
    );
    let _ = writeln!(out, "```\n{command}\n```\n");
    let _ = writeln!(
        out,
        "- date: {date}\n- machine: {} cores, {memory}\n- seed: {} (trial t uses seed + t); trials per row: {}\n\
         - cluster: {} local nodes, replicas {}, store {}, stabilize {} ms\n\
         - per trial: fresh cluster, preload {} keys, then {} load ({} threads, mix get {} / put {} / \
         delete {}, request timeout {} ms, {} retries): {} s, the fault for L s, {} s more; then every \
         written key read back\n\
         - partition: every node in its own network namespace; packets between nodes {} are dropped \
         silently (TCP retransmits them after the heal); loadgen reaches every node throughout\n\
         - pause: one random node SIGSTOPped, then SIGCONTed\n\
         - lost: keys whose final read misses an acknowledged write (the last one by version, or \
         one that superseded the value read in real time), as a fraction of the keys read back. \
         stale: reads during the run that missed an acknowledged put completed before they began, \
         as a fraction of the reads judged. resurrected: reads that returned a value an \
         acknowledged delete had removed. Each trial's own results are in `{TRIALS_DIR}/`\n",
        m.cores,
        w.seed,
        sweep.trials,
        w.cluster.nodes,
        w.cluster.node.replicas,
        w.cluster.node.store,
        w.cluster.node.stabilize_ms,
        w.keys,
        w.rate_per_s
            .map_or("closed-loop".to_string(), |r| format!("open-loop ({r} ops/s)")),
        w.threads.min(w.connections),
        w.mix.get,
        w.mix.put,
        w.mix.delete,
        w.request_timeout_ms,
        w.retries,
        sweep.fault_at_s,
        sweep.after_fault_s,
        describe_groups(&sweep.groups(w.cluster.nodes)),
    );
    out.push_str(
        "| fault | L (s) | ack | policy | trials | keys | lost | lost fraction | reads | stale | stale fraction | resurrected | errors | unreadable |\n\
         |-------|-------|-----|--------|--------|------|------|---------------|-------|-------|----------------|-------------|--------|------------|\n",
    );
    for c in cells {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {:.4} | {} | {} | {:.4} | {} | {} | {} |",
            c.kind.name(),
            c.length_s,
            c.ack.name(),
            c.policy.name(),
            c.trials,
            c.keys,
            c.lost,
            c.lost_fraction(),
            c.reads,
            c.stale,
            c.stale_fraction(),
            c.resurrected,
            c.errors,
            c.unreadable
        );
    }
    out
}

/// The plot of one kind of fault: lost fraction (solid) and stale fraction (dashed) against
/// L, one color per (ack, policy).
pub fn svg(w: &Workload, kind: FaultKind, cells: &[FaultCell]) -> String {
    let mut combos: Vec<(AckPolicy, PartitionPolicy)> = Vec::new();
    for c in cells.iter().filter(|c| c.kind == kind) {
        if !combos.contains(&(c.ack, c.policy)) {
            combos.push((c.ack, c.policy));
        }
    }
    let mut series = Vec::new();
    for (i, &(ack, policy)) in combos.iter().enumerate() {
        let mine: Vec<&FaultCell> = cells
            .iter()
            .filter(|c| c.kind == kind && c.ack == ack && c.policy == policy)
            .collect();
        let label = format!("ack {}, {}", ack.name(), policy.name());
        series.push(XySeries {
            name: format!("{label}: lost"),
            points: mine.iter().map(|c| (c.length_s, c.lost_fraction())).collect(),
            color: i,
            dashed: false,
            bars: Vec::new(),
        });
        series.push(XySeries {
            name: format!("{label}: stale"),
            points: mine.iter().map(|c| (c.length_s, c.stale_fraction())).collect(),
            color: i,
            dashed: true,
            bars: Vec::new(),
        });
    }
    plot::xy_svg(
        &format!(
            "{}: acknowledged writes lost and stale reads against {} length ({} nodes)",
            w.name,
            kind.name(),
            w.cluster.nodes
        ),
        &format!("L: seconds of the {}", kind.name()),
        "fraction (solid: keys lost; dashed: reads stale)",
        &series,
        &|x| format!("{x}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Workload {
        Workload::from_yaml(
            "name: pf
cluster: { nodes: 5, replicas: 2 }
sweep: { partition_lengths_s: [1, 2], pause_lengths_s: [1], acks: [all, one], partition_policies: [consistent, available] }
",
            "inline",
        )
        .unwrap()
    }

    #[test]
    fn a_trial_has_one_fault_of_its_length() {
        let w = base();
        let sweep = w.sweep.clone().unwrap();
        let t = trial_workload(
            &w,
            &sweep,
            FaultKind::Partition,
            5.0,
            AckPolicy::One,
            PartitionPolicy::Available,
            9,
        );
        assert!(t.sweep.is_none() && t.preload);
        assert_eq!(t.seed, 9);
        assert_eq!(t.duration_s, 2.0 + 5.0 + 5.0);
        assert_eq!(t.cluster.node.ack, AckPolicy::One);
        assert_eq!(t.cluster.policy(), PartitionPolicy::Available);
        assert_eq!(t.faults.len(), 1);
        assert_eq!(t.faults[0].action, FaultAction::Partition);
        assert_eq!(t.faults[0].groups, Some(vec![vec![0, 1, 2], vec![3, 4]]));
        assert_eq!((t.faults[0].at_s, t.faults[0].duration_s), (2.0, Some(5.0)));
        t.validate().unwrap();
        let p = trial_workload(
            &w,
            &sweep,
            FaultKind::Pause,
            1.5,
            AckPolicy::All,
            PartitionPolicy::Consistent,
            1,
        );
        assert_eq!(p.faults[0].action, FaultAction::Pause);
        assert_eq!((p.faults[0].count, p.faults[0].duration_s), (Some(1), Some(1.5)));
        p.validate().unwrap();
    }

    #[test]
    fn cells_sum_their_trials_and_the_outputs_draw() {
        let t = |kind, length_s, ack, lost, stale| FaultTrial {
            kind,
            length_s,
            ack,
            policy: PartitionPolicy::Consistent,
            seed: 1,
            acknowledged: 100,
            keys: 100,
            lost,
            reads: 1000,
            stale,
            resurrected: 0,
            unreadable: 0,
            errors: 0,
            throughput_ops: 1.0,
            dir: PathBuf::new(),
        };
        let trials = [
            t(FaultKind::Partition, 1.0, AckPolicy::All, 0, 10),
            t(FaultKind::Partition, 1.0, AckPolicy::All, 4, 30),
            t(FaultKind::Partition, 2.0, AckPolicy::All, 10, 100),
            t(FaultKind::Pause, 1.0, AckPolicy::One, 1, 0),
        ];
        let cells = summarize(&trials);
        assert_eq!(cells.len(), 3);
        assert_eq!((cells[0].trials, cells[0].lost, cells[0].stale), (2, 4, 40));
        assert!((cells[0].lost_fraction() - 0.02).abs() < 1e-12);
        assert!((cells[0].stale_fraction() - 0.02).abs() < 1e-12);
        let w = base();
        let md = markdown(
            &w,
            w.sweep.as_ref().unwrap(),
            "loadgen --workload x",
            "today",
            &cells,
        );
        assert!(md.contains("```\nloadgen --workload x\n```"), "{md}");
        assert!(
            md.contains("| partition | 1 | all | consistent | 2 | 200 | 4 | 0.0200 | 2000 | 40 | 0.0200 |"),
            "{md}"
        );
        assert!(md.contains("| pause | 1 | one | consistent | 1 |"), "{md}");
        let svg = svg(&w, FaultKind::Partition, &cells);
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("\nack all, consistent: lost\n"), "{svg}");
        assert!(svg.contains("\nack all, consistent: stale\n"), "{svg}");
    }
}
