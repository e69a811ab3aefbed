//! Partition faults end to end: refused up front where they cannot run (a cluster loadgen did
//! not start, or no root), and a short run on a local cluster in network namespaces whose
//! summary, timeline and plot carry the partition, the heal and the real-time checker's
//! counts. The run needs root and `ip`; without them it prints why and passes without
//! running. Needs the binaries:
//!
//! ```text
//! cargo build --bins && cargo test -p loadgen --test partition
//! ```
//!
//! No timing assertions, and none on the counts of anomalies: what a partition costs is the
//! core's to decide (and the experiment's to measure), not this test's.

use std::path::PathBuf;
use std::process::Command;

use loadgen::run::{run, RunOptions};
use loadgen::workload::Workload;

const WORKLOAD: &str = "name: tiny-partition
duration_s: 4
connections: 4
threads: 4
keys: 200
mix: { get: 0.5, put: 0.4, delete: 0.1 }
distribution: uniform
preload: true
seed: 5
request_timeout_ms: 1000
cluster: { nodes: 3, replicas: 1, stabilize_ms: 100, partition_policy: available }
faults:
  - { at_s: 1, action: partition, groups: [[0, 1], [2]], duration_s: 1.5 }
";

fn out_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("loadgen-tests")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn workload_file(name: &str) -> PathBuf {
    let dir = out_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("workload.yaml");
    std::fs::write(&path, WORKLOAD).unwrap();
    path
}

/// The loadgen binary next to this test's directory (target/<profile>/).
fn loadgen_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("loadgen");
    assert!(
        bin.is_file(),
        "{} missing: run `cargo build --bins` first",
        bin.display()
    );
    bin
}

#[test]
fn partition_faults_against_a_cluster_loadgen_did_not_start_are_refused() {
    let dir = out_dir("partition-refused");
    let mut workload = Workload::from_yaml(WORKLOAD, "inline").unwrap();
    // Only the partition: `faults need a local cluster` would come first otherwise.
    workload.faults.truncate(1);
    let e = run(RunOptions {
        workload,
        nodes: Some(vec!["127.0.0.1:1".parse().unwrap()]),
        out_dir: Some(dir.clone()),
        results_root: dir,
        chordkv_bin: None,
        progress: false,
    })
    .expect_err("a partition of --nodes");
    assert!(e.to_string().contains("faults need a local cluster"), "{e:#}");

    // The command refuses it before anything starts, as a bad argument.
    let out = Command::new(loadgen_bin())
        .arg("--workload")
        .arg(workload_file("partition-refused-cli"))
        .args(["--nodes", "127.0.0.1:1", "--quiet"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot be partitioned"), "{stderr}");
}

#[test]
fn partition_faults_without_root_are_refused_with_the_reason() {
    let file = workload_file("partition-no-root");
    // As root, run loadgen as `nobody` to see the refusal.
    let as_root = chordkv_harness::netns::unavailable().is_none();
    let mut cmd = if as_root {
        if Command::new("setpriv").arg("--version").output().is_err() {
            eprintln!("SKIPPED: running as root and setpriv (util-linux) is not installed");
            return;
        }
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(loadgen_bin());
        c
    } else {
        Command::new(loadgen_bin())
    };
    let out = cmd
        .arg("--workload")
        .arg(&file)
        .arg("--quiet")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("partition faults need the local cluster in network namespaces")
            && stderr.contains("need root"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("starting a local cluster"),
        "refused before: {stderr}"
    );
}

#[test]
fn a_short_partition_run_reports_the_partition_and_the_checker() {
    if let Some(why) = chordkv_harness::netns::unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let dir = out_dir("partition-run");
    let workload = Workload::from_yaml(WORKLOAD, "inline").unwrap_or_else(|e| panic!("{e}"));
    let outcome = run(RunOptions {
        workload,
        nodes: None,
        out_dir: Some(dir.clone()),
        results_root: dir.clone(),
        chordkv_bin: None,
        progress: true,
    })
    .unwrap_or_else(|e| panic!("the run failed: {e:#}"));
    let text = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    let s: serde_json::Value = serde_json::from_str(&text).unwrap();
    let v = &s["verify"];
    for field in [
        "lost",
        "stale_reads",
        "resurrected",
        "unexpected",
        "recovered",
        "reads_checked",
    ] {
        assert!(v[field].is_u64(), "verify.{field}: {s:#}");
    }
    assert!(v["reads_checked"].as_u64().unwrap() > 0, "{s:#}");
    assert_eq!(
        outcome.summary.verify.stale_reads,
        v["stale_reads"].as_u64().unwrap()
    );
    assert_eq!(s["cluster"]["partition_policy"], "available");
    assert!(!outcome.summary.cluster.promises_consistency());

    // The nodes ran in namespaces, each on its own address.
    let nodes: Vec<&str> = s["cluster"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n.starts_with("10.78.")), "{nodes:?}");

    // The partition and its heal (after duration_s), in order.
    let faults = s["faults"].as_array().unwrap();
    let actions: Vec<&str> = faults.iter().map(|f| f["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["partition", "heal"], "{s:#}");
    assert!(faults.iter().all(|f| f.get("error").is_none()), "{s:#}");
    let groups = &faults[0]["groups"];
    assert_eq!(groups[0], serde_json::json!([nodes[0], nodes[1]]), "{s:#}");
    assert_eq!(groups[1], serde_json::json!([nodes[2]]), "{s:#}");
    let (cut, healed) = (
        faults[0]["at_s"].as_f64().unwrap(),
        faults[1]["at_s"].as_f64().unwrap(),
    );
    // The heal is due duration_s after the partition was due (at_s 1).
    assert!(cut >= 1.0 && healed >= 2.5, "{s:#}");

    let timeline = std::fs::read_to_string(dir.join("timeline.csv")).unwrap();
    let entry = format!("partition {} {} | {}", nodes[0], nodes[1], nodes[2]);
    assert_eq!(
        timeline.lines().filter(|l| l.ends_with(&entry)).count(),
        1,
        "{timeline}"
    );
    assert_eq!(
        timeline.lines().filter(|l| l.ends_with(",heal")).count(),
        1,
        "{timeline}"
    );
    let svg = std::fs::read_to_string(dir.join("timeline.svg")).unwrap();
    assert!(
        svg.contains(">\npartition 2|1\n<") && svg.contains(">\nheal\n<"),
        "{svg}"
    );
}
