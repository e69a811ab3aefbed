//! `entry: owner` (client-side routing) end to end on real local clusters: on a settled ring
//! every request reaches its owner directly (0 hops); through a join and a crash the stale
//! views are corrected by redirects and failover, and no acknowledged write is lost. Needs
//! the `chordkv` binary (`cargo build --bins`). No timing assertions.

use std::path::PathBuf;

use loadgen::run::{run, RunOptions};
use loadgen::workload::{Entry, Workload};

fn run_workload(name: &str, text: &str) -> loadgen::report::Summary {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("loadgen-tests")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let workload = Workload::from_yaml(text, "inline").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(workload.entry, Entry::Owner);
    run(RunOptions {
        workload,
        nodes: None,
        out_dir: Some(dir.clone()),
        results_root: dir,
        chordkv_bin: None,
        progress: false,
    })
    .unwrap_or_else(|e| panic!("the run failed: {e:#}"))
    .summary
}

#[test]
fn a_settled_ring_is_served_in_zero_hops() {
    let s = run_workload(
        "owner-steady",
        "name: owner-steady
duration_s: 1.5
connections: 2
threads: 2
keys: 300
mix: { get: 0.5, put: 0.4, delete: 0.1 }
distribution: uniform
preload: true
seed: 5
entry: owner
cluster: { nodes: 4, replicas: 1, stabilize_ms: 100 }
",
    );
    assert!(s.ops["all"].count > 0);
    assert_eq!(s.errors.total, 0, "{s:?}");
    assert_eq!(s.hops.max, 0, "{:?}", s.hops);
    assert_eq!(s.verify.lost, 0);
    assert_eq!(s.verify.unexpected, 0);
}

#[test]
fn stale_views_lose_nothing_through_a_join_and_a_crash() {
    let s = run_workload(
        "owner-churn",
        "name: owner-churn
duration_s: 4
connections: 3
threads: 3
keys: 400
mix: { get: 0.5, put: 0.5 }
distribution: uniform
preload: true
seed: 6
entry: owner
request_timeout_ms: 1000
cluster: { nodes: 4, replicas: 2, ack: all, stabilize_ms: 100, partition_policy: available }
faults:
  - { at_s: 1, action: add }
  - { at_s: 2.5, action: kill, count: 1 }
",
    );
    assert_eq!(s.faults.len(), 2, "{:?}", s.faults);
    // The join moved keys away from the nodes the views named: some request was redirected.
    assert!(s.hops.max >= 1, "{:?}", s.hops);
    assert!(s.faults.iter().all(|f| f.error.is_none()), "{:?}", s.faults);
    assert_eq!(s.verify.lost, 0, "{:?}", s.verify);
    assert_eq!(s.verify.unexpected, 0, "{:?}", s.verify);
    assert_eq!(s.verify.unreadable, 0, "{:?}", s.verify);
}
