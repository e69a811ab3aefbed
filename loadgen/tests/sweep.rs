//! The data-loss sweep: its `sweep:` section, the prediction, and a tiny sweep end to end
//! against real local clusters (needs the `chordkv` binary: `cargo build --bins`). The kill
//! sweeps measure re-replication onto the survivors, so their clusters run the partition
//! policy `available`, which drops dead nodes from the ring (`consistent` keeps them).

use std::path::PathBuf;

use loadgen::fault_sweep::{PARTITION_FAULTS_MD, PARTITION_FAULTS_SVG, PAUSE_FAULTS_SVG, TRIALS_DIR};
use loadgen::kill_rate::{KILL_RATE_MD, KILL_RATE_SVG};
use loadgen::sweep::{predicted_loss, run_sweep, SweepOptions, DATA_LOSS_MD, DATA_LOSS_SVG};
use loadgen::workload::Workload;

/// The sweeps' clusters run one ring position per process (`vnodes: 1`): these tests check
/// the sweep machinery (points, repeats, tables, plots), and a ring of 8-vnode processes
/// (the default) costs them 20 s of CI for nothing they check.
const BASE: &str = "name: dl
keys: 200
cluster: { nodes: 4, vnodes: 1, stabilize_ms: 100, partition_policy: available }
";

fn parse(sweep: &str) -> Result<Workload, String> {
    Workload::from_yaml(&format!("{BASE}{sweep}"), "inline").map_err(|e| e.to_string())
}

#[test]
fn sweep_section_parses_with_defaults() {
    let w = parse("sweep: { kill_counts: [1, 2], replicas: [0, 1] }\n").unwrap();
    let s = w.sweep.expect("a sweep");
    assert_eq!(s.kill_counts, vec![1, 2]);
    assert_eq!(s.replicas, vec![0, 1]);
    assert_eq!(s.trials, 1);
    assert!(s.settle_timeout_s > 0.0);
    assert!(parse("").unwrap().sweep.is_none());
}

#[test]
fn shipped_data_loss_workload_is_a_sweep() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../workloads/data-loss.yaml");
    let w = Workload::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let s = w.sweep.expect("a sweep");
    assert_eq!(s.replicas, vec![0, 1, 2]);
    assert_eq!(s.kill_counts, vec![1, 2, 3, 4]);
}

#[test]
fn shipped_kill_rate_workload_is_a_rate_sweep() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../workloads/kill-rate.yaml");
    let w = Workload::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let s = w.sweep.expect("a sweep");
    assert!(s.kill_counts.is_empty());
    assert!(!s.kill_intervals_s.is_empty());
}

#[test]
fn bad_sweeps_are_rejected_with_the_field() {
    let cases = [
        ("sweep: { kill_counts: [], replicas: [0] }\n", "sweep.kill_counts"),
        ("sweep: { replicas: [0] }\n", "sweep.kill_intervals_s"),
        (
            "sweep: { kill_intervals_s: [0], replicas: [1] }\n",
            "sweep.kill_intervals_s",
        ),
        (
            "duration_s: 5\nsweep: { kill_intervals_s: [5], replicas: [1] }\n",
            "sweep.kill_intervals_s",
        ),
        ("sweep: { kill_counts: [1], replicas: [] }\n", "sweep.replicas"),
        (
            "sweep: { kill_counts: [0], replicas: [1] }\n",
            "sweep.kill_counts",
        ),
        (
            "sweep: { kill_counts: [4], replicas: [1] }\n",
            "sweep.kill_counts",
        ),
        (
            "sweep: { kill_counts: [1], replicas: [1], trials: 0 }\n",
            "sweep.trials",
        ),
        (
            "sweep: { kill_counts: [1], replicas: [1], settle_timeout_s: -1 }\n",
            "sweep.settle_timeout_s",
        ),
        (
            "sweep: { kill_counts: [1], replicas: [1], typo: 3 }\n",
            "unknown field `typo`",
        ),
        (
            "faults: [{ at_s: 1, action: kill }]\nsweep: { kill_counts: [1], replicas: [1] }\n",
            "remove faults",
        ),
        (
            "sweep: { partition_lengths_s: [0] }\n",
            "sweep.partition_lengths_s",
        ),
        ("sweep: { pause_lengths_s: [-1] }\n", "sweep.pause_lengths_s"),
        (
            "sweep: { pause_lengths_s: [1], after_fault_s: 0 }\n",
            "sweep.after_fault_s",
        ),
        (
            "sweep: { pause_lengths_s: [1], fault_at_s: -1 }\n",
            "sweep.fault_at_s",
        ),
        (
            "sweep: { partition_lengths_s: [1], partition_groups: [[0, 1], [4]] }\n",
            "sweep.partition_groups: node 4 does not exist",
        ),
        (
            "sweep: { partition_lengths_s: [1], acks: [most] }\n",
            "unknown variant `most`",
        ),
        (
            "sweep: { partition_lengths_s: [1], partition_policies: [eventual] }\n",
            "unknown variant `eventual`",
        ),
    ];
    for (text, want) in cases {
        let err = parse(text).expect_err(text);
        assert!(err.contains(want), "{text:?}: {err:?} should mention {want:?}");
    }
    // A typo inside the section is reported at its line.
    let err = Workload::from_yaml(&format!("{BASE}sweep:\n  kill_count: [1]\n"), "f").unwrap_err();
    assert_eq!(err.line, Some(5), "{err}");
}

#[test]
fn fault_sweep_section_parses_with_defaults() {
    let w = parse("sweep: { partition_lengths_s: [1, 5], pause_lengths_s: [2] }\n").unwrap();
    let s = w.sweep.expect("a sweep");
    assert!(s.has_fault_trials() && !s.has_kill_trials());
    assert!(
        s.replicas.is_empty(),
        "the fault sweep uses the cluster's replicas"
    );
    assert!(
        s.acks.is_empty() && s.partition_policies.is_empty(),
        "the cluster's"
    );
    assert_eq!((s.fault_at_s, s.after_fault_s), (2.0, 5.0));
    assert_eq!(s.groups(4), vec![vec![0, 1], vec![2, 3]]);
    assert_eq!(s.groups(5), vec![vec![0, 1, 2], vec![3, 4]]);
}

#[test]
fn shipped_partition_faults_workload_is_a_fault_sweep() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../workloads/partition-faults.yaml");
    let w = Workload::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let s = w.sweep.expect("a sweep");
    assert_eq!(s.partition_lengths_s, vec![1.0, 2.0, 5.0, 10.0, 20.0]);
    assert_eq!(s.pause_lengths_s, vec![1.0, 2.0, 5.0, 10.0]);
    assert_eq!(s.acks.len(), 2);
    assert_eq!(s.partition_policies.len(), 2);
}

#[test]
fn prediction_is_c_f_over_c_n() {
    assert!((predicted_loss(8, 3, 2) - 1.0 / 56.0).abs() < 1e-12);
    assert!((predicted_loss(8, 2, 1) - 1.0 / 28.0).abs() < 1e-12);
    assert!((predicted_loss(8, 1, 0) - 1.0 / 8.0).abs() < 1e-12);
    for (f, n) in [(1, 1), (2, 2), (1, 2)] {
        assert_eq!(predicted_loss(8, f, n), 0.0, "f {f} < N+1 = {}", n + 1);
    }
}

#[test]
fn tiny_sweep_end_to_end() {
    let w = parse(
        "request_timeout_ms: 1000
sweep: { kill_counts: [1, 2], replicas: [0, 1], trials: 1, settle_timeout_s: 3 }
",
    )
    .unwrap();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("loadgen-tests")
        .join(format!("sweep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let outcome = run_sweep(SweepOptions {
        workload: w,
        out_dir: Some(dir.clone()),
        chordkv_bin: None,
        command: "test".into(),
        progress: true,
    })
    .unwrap_or_else(|e| panic!("the sweep failed: {e:#}"));
    assert_eq!(outcome.trials.len(), 4);
    assert!(outcome.trials.iter().all(|t| t.keys == 200));
    let one_replica_one_kill = outcome
        .trials
        .iter()
        .find(|t| t.replicas == 1 && t.kills == 1)
        .unwrap();
    assert_eq!(one_replica_one_kill.lost, 0, "{one_replica_one_kill:?}");
    let table = std::fs::read_to_string(dir.join(DATA_LOSS_MD)).unwrap();
    assert!(table.contains("| N | f |") && table.contains("| 1 | 1 | 1 | 200 |"));
    let svg = std::fs::read_to_string(dir.join(DATA_LOSS_SVG)).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("predicted"), "{svg}");
}

#[test]
fn tiny_kill_rate_sweep_end_to_end() {
    let w = parse(
        "duration_s: 3
warmup_s: 0
threads: 2
connections: 2
mix: { get: 0.5, put: 0.5 }
request_timeout_ms: 1000
sweep: { kill_intervals_s: [1.4], replicas: [2], trials: 1 }
",
    )
    .unwrap();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("loadgen-tests")
        .join(format!("kill-rate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let outcome = run_sweep(SweepOptions {
        workload: w,
        out_dir: Some(dir.clone()),
        chordkv_bin: None,
        command: "test".into(),
        progress: true,
    })
    .unwrap_or_else(|e| panic!("the sweep failed: {e:#}"));
    // Two kills (at 1.4 and 2.8 s), each followed by a fresh node: with two replicas, and
    // each kill well apart, nothing acknowledged may be lost.
    assert!(
        outcome.table.contains("| 2 | 1.4 | 2 | 1 | 1 | 0.0000 |"),
        "{}",
        outcome.table
    );
    assert!(dir.join(KILL_RATE_MD).exists());
    let svg = std::fs::read_to_string(dir.join(KILL_RATE_SVG)).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("N = 2"));
    assert!(!dir.join(DATA_LOSS_MD).exists());
    let trial = dir.join("kill-rate-trials").join("N2-T1.4-seed1");
    assert!(trial.join("summary.json").exists(), "{}", trial.display());
}

#[test]
fn tiny_fault_sweep_end_to_end() {
    // Partition trials need root; without it the sweep runs its pause trials only.
    let root = chordkv_harness::netns::unavailable().is_none();
    if !root {
        eprintln!(
            "partition trials SKIPPED: {}",
            chordkv_harness::netns::unavailable().unwrap()
        );
    }
    let w = Workload::from_yaml(
        &format!(
            "name: pf
keys: 100
threads: 2
connections: 2
mix: {{ get: 0.5, put: 0.4, delete: 0.1 }}
request_timeout_ms: 1000
cluster: {{ nodes: 3, vnodes: 1, replicas: 1, stabilize_ms: 100 }}
sweep:
  {}pause_lengths_s: [0.5]
  acks: [all, one]
  partition_policies: [available]
  fault_at_s: 0.5
  after_fault_s: 1
",
            if root {
                "partition_lengths_s: [0.5]\n  "
            } else {
                ""
            }
        ),
        "inline",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("loadgen-tests")
        .join(format!("fault-sweep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let outcome = run_sweep(SweepOptions {
        workload: w,
        out_dir: Some(dir.clone()),
        chordkv_bin: None,
        command: "loadgen --workload tiny.yaml".into(),
        progress: true,
    })
    .unwrap_or_else(|e| panic!("the sweep failed: {e:#}"));
    let table = std::fs::read_to_string(dir.join(PARTITION_FAULTS_MD)).unwrap();
    assert_eq!(outcome.table, table);
    assert!(
        table.contains("```\nloadgen --workload tiny.yaml\n```"),
        "{table}"
    );
    for row in [
        "| pause | 0.5 | all | available | 1 | 100 |",
        "| pause | 0.5 | one | available | 1 | 100 |",
    ] {
        assert!(table.contains(row), "{row}: {table}");
    }
    assert!(std::fs::read_to_string(dir.join(PAUSE_FAULTS_SVG))
        .unwrap()
        .starts_with("<svg"));
    let pause_trial = dir.join(TRIALS_DIR).join("pause-L0.5-ack-all-available-seed1");
    let summary = std::fs::read_to_string(pause_trial.join("summary.json")).unwrap();
    let s: serde_json::Value = serde_json::from_str(&summary).unwrap();
    let actions: Vec<&str> = s["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["pause", "resume"], "{s:#}");
    assert_eq!(s["workload"]["duration_s"], 2.0, "0.5 + 0.5 + 1");
    if root {
        assert!(
            table.contains("| partition | 0.5 | one | available | 1 | 100 |"),
            "{table}"
        );
        let svg = std::fs::read_to_string(dir.join(PARTITION_FAULTS_SVG)).unwrap();
        assert!(svg.contains("ack one, available: stale"), "{svg}");
        let trial = dir
            .join(TRIALS_DIR)
            .join("partition-L0.5-ack-one-available-seed1");
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(trial.join("summary.json")).unwrap()).unwrap();
        let actions: Vec<&str> = s["faults"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, ["partition", "heal"], "{s:#}");
    } else {
        assert!(!dir.join(PARTITION_FAULTS_SVG).exists());
    }
}
