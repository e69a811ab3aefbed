//! A tiny workload against a real local 3-node cluster, end to end: the run starts the
//! cluster itself from the workload's `cluster:` section. Needs the `chordkv` binary:
//!
//! ```text
//! cargo build --bins && cargo test -p loadgen
//! ```
//!
//! No timing assertions: only that the run completes, verifies, and writes its files.

use std::path::PathBuf;

use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use loadgen::run::{run, RunOptions};
use loadgen::workload::Workload;

fn out_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("loadgen-tests")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn workload(text: &str) -> Workload {
    Workload::from_yaml(text, "inline").unwrap_or_else(|e| panic!("{e}"))
}

fn run_tiny(name: &str, text: &str) -> (serde_json::Value, PathBuf) {
    let dir = out_dir(name);
    let outcome = run(RunOptions {
        workload: workload(text),
        nodes: None,
        out_dir: Some(dir.clone()),
        results_root: dir.clone(),
        chordkv_bin: None,
        progress: true,
    })
    .unwrap_or_else(|e| panic!("the run failed: {e:#}"));
    assert_eq!(outcome.out_dir, dir);
    let text = std::fs::read_to_string(dir.join("summary.json")).unwrap();
    (serde_json::from_str(&text).unwrap(), dir)
}

#[test]
fn closed_loop_run_writes_a_verified_summary_and_histograms() {
    let (s, dir) = run_tiny(
        "closed",
        "name: tiny-closed
duration_s: 2
connections: 4
threads: 2
keys: 200
mix: { get: 0.5, put: 0.4, delete: 0.1 }
distribution: zipfian
preload: true
seed: 42
cluster: { nodes: 3, replicas: 1, stabilize_ms: 100 }
",
    );
    assert_eq!(s["loop"], "closed");
    assert_eq!(s["verify"]["lost"], 0, "{s:#}");
    assert_eq!(s["verify"]["unexpected"], 0, "{s:#}");
    // Every read of the run was judged by real-time order, and none was stale.
    assert!(s["verify"]["reads_checked"].as_u64().unwrap() > 0, "{s:#}");
    assert_eq!(s["verify"]["stale_reads"], 0, "{s:#}");
    assert_eq!(s["verify"]["resurrected"], 0, "{s:#}");
    assert_eq!(s["cluster"]["partition_policy"], "consistent", "{s:#}");
    assert!(s["verify"]["acknowledged"].as_u64().unwrap() >= 200, "{s:#}");
    assert!(s["throughput_ops"].as_f64().unwrap() > 0.0, "{s:#}");
    assert!(s["ops"]["get"]["count"].as_u64().unwrap() > 0, "{s:#}");
    assert!(s["ops"]["all"]["p99_us"].as_u64().unwrap() >= s["ops"]["all"]["p50_us"].as_u64().unwrap());
    assert_eq!(s["seed"], 42);
    assert_eq!(s["workload"]["name"], "tiny-closed");
    assert_eq!(s["cluster"]["nodes"].as_array().unwrap().len(), 3);
    assert!(s["machine"]["cores"].as_u64().unwrap() >= 1);
    for file in ["get.hgrm", "put.hgrm", "delete.hgrm", "all.hgrm", "hops.hgrm"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"),
            "{file}"
        );
        assert!(text.contains("#[Mean    ="), "{file}");
        assert!(text.contains("#[Buckets ="), "{file}");
    }
    // The interval log parses, one histogram per timeline row.
    let hlog = std::fs::read(dir.join("all.hlog")).unwrap();
    let intervals = IntervalLogIterator::new(&hlog)
        .filter_map(|entry| match entry.expect("a well-formed interval log") {
            LogEntry::Interval(h) => Some(h),
            _ => None,
        })
        .count();
    let timeline = std::fs::read_to_string(dir.join("timeline.csv")).unwrap();
    assert_eq!(intervals, timeline.lines().count() - 1, "{timeline}");
    assert!(timeline.starts_with("elapsed_s,interval_s,phase,ops_per_s,p50_us,p99_us,errors,faults\n"));
    assert!(timeline.lines().count() >= 2, "{timeline}");
    for file in ["latency.svg", "timeline.svg"] {
        let svg = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{file}: {svg}"
        );
        assert!(svg.contains("tiny-closed"), "{file}: {svg}");
    }
}

#[test]
fn open_loop_run_records_service_time_apart() {
    let (s, dir) = run_tiny(
        "open",
        "name: tiny-open
duration_s: 2
warmup_s: 0.5
rate_per_s: 200
connections: 2
threads: 2
keys: 100
mix: { get: 0.5, put: 0.5 }
distribution: uniform
seed: 7
cluster: { nodes: 3, stabilize_ms: 100 }
",
    );
    assert_eq!(s["loop"], "open");
    assert_eq!(s["target_rate_ops"], 200.0);
    assert_eq!(s["verify"]["lost"], 0, "{s:#}");
    assert!(s["service_time"]["all"]["count"].as_u64().unwrap() > 0, "{s:#}");
    // The rate bounds the count: 200 ops/s for 2.5 s, whatever the machine.
    assert!(s["ops"]["all"]["count"].as_u64().unwrap() <= 500, "{s:#}");
    for file in ["get.hgrm", "put-service.hgrm"] {
        assert!(dir.join(file).is_file(), "{file}");
    }
}
