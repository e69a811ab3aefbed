//! Failure injection end to end: a short workload on a real local 5-node cluster with 2
//! replicas kills one node under load, and every acknowledged write is still there at the
//! end. The cluster runs the partition policy `available`, under which the ring drops a node
//! that stops answering and re-replicates its keys (what this test is about; under the
//! default `consistent` a dead node stays a member until it returns or is forgotten). Needs
//! the `chordkv` binary:
//!
//! ```text
//! cargo build --bins && cargo test -p loadgen
//! ```
//!
//! No timing assertions.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use loadgen::run::{run, RunOptions};
use loadgen::workload::Workload;

const WORKLOAD: &str = "name: tiny-kill
duration_s: 3
connections: 4
threads: 4
keys: 300
mix: { get: 0.5, put: 0.5 }
distribution: uniform
preload: true
seed: 3
request_timeout_ms: 1000
cluster: { nodes: 5, replicas: 2, ack: all, stabilize_ms: 100, partition_policy: available }
faults:
  - { at_s: 1, action: kill, count: 1 }
";

fn out_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("loadgen-tests")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Runs the workload `yaml` on a local cluster with its results in `dir`: its summary.json, and
/// the keys the run found lost.
fn run_in(dir: &Path, yaml: &str, progress: bool) -> (serde_json::Value, Vec<String>) {
    let workload = Workload::from_yaml(yaml, "inline").unwrap_or_else(|e| panic!("{e}"));
    let outcome = run(RunOptions {
        workload,
        nodes: None,
        out_dir: Some(dir.to_path_buf()),
        results_root: dir.to_path_buf(),
        chordkv_bin: None,
        progress,
    })
    .unwrap_or_else(|e| panic!("the run failed: {e:#}"));
    let text = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    let summary = serde_json::from_str(&text).unwrap();
    (summary, outcome.lost_keys)
}

#[test]
fn killing_a_node_under_load_loses_nothing_and_is_recorded() {
    let dir = out_dir("kill");
    let (s, lost_keys) = run_in(&dir, WORKLOAD, true);
    assert_eq!(s["verify"]["lost"], 0, "{s:#}\n{lost_keys:?}");
    assert_eq!(s["verify"]["unexpected"], 0, "{s:#}");
    assert!(s["verify"]["acknowledged"].as_u64().unwrap() >= 300, "{s:#}");

    let faults = s["faults"].as_array().expect("a faults list");
    assert_eq!(faults.len(), 1, "{s:#}");
    assert_eq!(faults[0]["action"], "kill");
    assert!(faults[0]["at_s"].as_f64().unwrap() >= 1.0, "{s:#}");
    let nodes = faults[0]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{s:#}");
    let killed = nodes[0].as_str().unwrap();
    killed.parse::<SocketAddr>().expect("an address");
    let all: Vec<&str> = s["cluster"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(all.contains(&killed), "{s:#}");

    let timeline = std::fs::read_to_string(dir.join("timeline.csv")).unwrap();
    assert!(timeline.starts_with("elapsed_s,interval_s,phase,ops_per_s,p50_us,p99_us,errors,faults\n"));
    let entry = format!("kill {killed}");
    let rows: Vec<&str> = timeline.lines().filter(|l| l.ends_with(&entry)).collect();
    assert_eq!(rows.len(), 1, "{timeline}");
    let svg = std::fs::read_to_string(dir.join("timeline.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "{svg}");
    assert!(svg.contains(">\nkill\n<"), "{svg}");
}

#[test]
fn faults_against_given_nodes_are_refused() {
    let dir = out_dir("refused");
    let workload = Workload::from_yaml(WORKLOAD, "inline").unwrap();
    let e = run(RunOptions {
        workload,
        nodes: Some(vec!["127.0.0.1:1".parse().unwrap()]),
        out_dir: Some(dir.clone()),
        results_root: dir,
        chordkv_bin: None,
        progress: false,
    })
    .expect_err("faults with --nodes");
    assert!(
        e.to_string().contains("faults need a local cluster (no --nodes)"),
        "{e:#}"
    );
}

/// Under the default partition policy `consistent`, 2 of 4 nodes killed at once leave the
/// ranges that had 2 of their 3 copies on them without a majority: they refuse requests, as
/// they must (a node cannot tell a crash from a partition). Forgetting the dead nodes, as an
/// operator does, lets the next members serve them from the copy left: every key is readable
/// again and no acknowledged write is lost.
const KILL_AND_FORGET: &str = "name: kill-and-forget
duration_s: 6
connections: 4
threads: 4
keys: 300
mix: { get: 0.5, put: 0.5 }
distribution: uniform
preload: true
seed: 5
request_timeout_ms: 1000
cluster: { nodes: 4, replicas: 2, ack: all, stabilize_ms: 100 }
faults:
  - { at_s: 1, action: kill, nodes: [1, 2] }
  - { at_s: 2, action: forget, count: 2 }
";

#[test]
fn forgetting_killed_nodes_brings_back_the_ranges_that_lost_their_majority() {
    let dir = out_dir("forget");
    let (s, lost_keys) = run_in(&dir, KILL_AND_FORGET, false);
    assert_eq!(s["verify"]["lost"], 0, "{s:#}\n{lost_keys:?}");
    assert_eq!(s["verify"]["unreadable"], 0, "{s:#}");
    assert_eq!(s["verify"]["unexpected"], 0, "{s:#}");
    assert_eq!(s["verify"]["stale_reads"], 0, "{s:#}");
    assert_eq!(s["verify"]["resurrected"], 0, "{s:#}");

    let faults = s["faults"].as_array().expect("a faults list");
    assert_eq!(faults.len(), 2, "{s:#}");
    assert_eq!(faults[1]["action"], "forget", "{s:#}");
    assert!(faults[1]["error"].is_null(), "{s:#}");
    // The forget names the two nodes the kill took.
    assert_eq!(faults[1]["nodes"], faults[0]["nodes"], "{s:#}");
}
