//! What a run leaves behind: `summary.json`, one `.hgrm` per histogram, `timeline.csv`; and
//! the facts about the machine and the code that go into the summary.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::hgrm;
use crate::verify::VerifyReport;
use crate::workload::Workload;

/// Latency percentiles of one operation, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Successful operations measured (after the warm-up).
    pub count: u64,
    /// Operations that failed after their retries (not in the percentiles).
    pub errors: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>, errors: u64) -> LatencySummary {
        LatencySummary {
            count: h.len(),
            errors,
            mean_us: round3(h.mean()),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ErrorSummary {
    /// Operations that failed after their retries.
    pub total: u64,
    /// Requests that timed out (each attempt counts).
    pub timeouts: u64,
    /// Attempts after a retryable failure.
    pub retries: u64,
    /// Failed writes of the preload.
    pub preload: u64,
    /// The operations that failed, by the last error each got: the server's error code
    /// (`Unavailable`, `NotReady`, `Busy`, ...) or `timeout`, `connect`, `io`, `protocol`.
    pub by_kind: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HopsSummary {
    pub mean: f64,
    pub p99: u64,
    pub max: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClusterInfo {
    /// Whether loadgen started the cluster itself (from the workload's `cluster:` section).
    pub local: bool,
    pub nodes: Vec<String>,
    /// The local cluster's `--partition-policy` (`consistent` or `available`); `null` for a
    /// cluster loadgen did not start, which is judged as `consistent`.
    pub partition_policy: Option<String>,
    /// The local cluster's `--read-from` (`primary` or `replicas`); `null` for a cluster
    /// loadgen did not start, which is judged as `primary`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_from: Option<String>,
}

impl ClusterInfo {
    /// Whether a stale read or a resurrected delete is a failure of the run: unless the
    /// cluster is known to run the `available` policy, which trades them for availability, or
    /// to read from any copy (`--read-from replicas`, Dynamo's R = 1), where a copy that
    /// missed a write answers with an older version.
    pub fn promises_consistency(&self) -> bool {
        self.partition_policy.as_deref() != Some("available") && self.read_from.as_deref() != Some("replicas")
    }

    /// What allows stale reads, when [`ClusterInfo::promises_consistency`] is false.
    pub fn why_stale_allowed(&self) -> String {
        if self.read_from.as_deref() == Some("replicas") {
            "reads from any copy (read_from: replicas) allow".to_string()
        } else {
            format!(
                "partition policy {} allows",
                self.partition_policy.as_deref().unwrap_or("unknown")
            )
        }
    }
}

/// `summary.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub name: String,
    pub started_utc: String,
    /// `closed` (each thread sends when its previous request completes) or `open` (requests
    /// at `target_rate_ops`, latency from each request's intended send time).
    pub r#loop: String,
    pub target_rate_ops: Option<f64>,
    /// The signal (`SIGINT`, `SIGTERM`) that stopped the run before its end: the figures are
    /// those of a partial run. Absent when the run went to its end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<String>,
    /// Seconds measured (after the warm-up).
    pub measured_s: f64,
    /// Successful operations per second over the measured time.
    pub throughput_ops: f64,
    /// Latency per operation (`get`, `put`, `delete`) and `all`. Open loop: from the intended
    /// send time (coordinated omission corrected).
    pub ops: std::collections::BTreeMap<String, LatencySummary>,
    /// Open loop only: from the actual send time.
    pub service_time: Option<std::collections::BTreeMap<String, LatencySummary>>,
    pub errors: ErrorSummary,
    pub hops: HopsSummary,
    pub verify: VerifyReport,
    pub seed: u64,
    pub git_commit: Option<String>,
    pub machine: Machine,
    pub cluster: ClusterInfo,
    /// The faults injected, in the order they happened.
    pub faults: Vec<FaultRecord>,
    pub workload: Workload,
}

/// One injected fault, as it happened.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultRecord {
    /// Seconds since the measurement started (negative: during the warm-up, which cannot be
    /// asked for).
    pub at_s: f64,
    /// `kill`, `pause`, `resume`, `restart`, `add`, `remove`, `partition` or `heal`.
    pub action: String,
    /// The addresses of the nodes it was applied to (for a partition: of every node in its
    /// groups; for a heal: none).
    pub nodes: Vec<String>,
    /// A partition's groups, by address: no packet passes between two groups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Vec<String>>,
    /// The nodes by index and address, for the terminal: `node 3 (127.0.0.1:7103)`.
    #[serde(skip)]
    pub what: String,
    /// Why it failed, if it did (on some or all of its nodes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl FaultRecord {
    /// One line for the terminal: `fault at 5.0 s: kill node 3 (127.0.0.1:7103)`.
    pub fn describe(&self) -> String {
        let mut line = format!("fault at {:.1} s: {} {}", self.at_s, self.action, self.what);
        if let Some(e) = &self.error {
            line.push_str(&format!("; failed: {e}"));
        }
        line
    }

    /// The `timeline.csv` form: `kill 127.0.0.1:7103;kill 127.0.0.1:7105`; a partition is one
    /// entry with its groups apart (`partition 10.78.5.10:7000 10.78.5.11:7000 | 10.78.5.12:7000`),
    /// a heal is `heal`.
    pub fn timeline_entries(&self) -> Vec<String> {
        let failed = if self.error.is_some() { " (failed)" } else { "" };
        if !self.groups.is_empty() {
            let groups: Vec<String> = self.groups.iter().map(|g| g.join(" ")).collect();
            return vec![format!("{} {}{failed}", self.action, groups.join(" | "))];
        }
        if self.action == "heal" {
            return vec![format!("heal{failed}")];
        }
        if self.nodes.is_empty() {
            return vec![format!("{} (none)", self.action)];
        }
        self.nodes
            .iter()
            .map(|n| format!("{} {n}", self.action))
            .collect()
    }
}

/// One second of the run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TimelineRow {
    /// Seconds since the start of the load (warm-up included), at the end of the interval.
    pub elapsed_s: f64,
    /// Seconds the row covers: one second, except the run's last row, which ends with the
    /// last operation and may be shorter ([`TimelineRow::is_partial`]).
    pub interval_s: f64,
    pub warmup: bool,
    pub ops_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub errors: u64,
    /// Faults injected in this interval, `action address` each.
    pub faults: Vec<String>,
}

impl TimelineRow {
    /// Whether the row covers less than half a second (the end of a run): its ops/s are
    /// those of a moment, not of an interval, and the plots leave it out.
    pub fn is_partial(&self) -> bool {
        self.interval_s < 0.5
    }
}

/// `timeline.csv`: one row per second of the load (`interval_s` tells a short last row).
pub fn timeline_csv(rows: &[TimelineRow]) -> String {
    let mut out = String::from("elapsed_s,interval_s,phase,ops_per_s,p50_us,p99_us,errors,faults\n");
    for r in rows {
        let _ = writeln!(
            out,
            "{:.3},{:.3},{},{:.1},{},{},{},{}",
            r.elapsed_s,
            r.interval_s,
            if r.warmup { "warmup" } else { "measure" },
            r.ops_per_s,
            r.p50_us,
            r.p99_us,
            r.errors,
            r.faults.join(";")
        );
    }
    out
}

/// Writes `text` to `dir/name`.
pub fn write_file(dir: &Path, name: &str, text: &str) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| Error::step(format!("cannot write {}", path.display()), e))
}

/// Writes `<name>.hgrm` (values in microseconds, or in hops).
pub fn write_hgrm(dir: &Path, name: &str, h: &Histogram<u64>) -> Result<()> {
    write_file(
        dir,
        &format!("{name}.hgrm"),
        &hgrm::percentile_distribution(h, 1.0),
    )
}

pub fn machine() -> Machine {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory_bytes = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    Machine { cores, memory_bytes }
}

/// `git rev-parse HEAD` in the current directory, if git and a repository are there.
pub fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!commit.is_empty()).then_some(commit)
}

/// `(compact, iso)` UTC timestamps of `t`, to the second: `20261124T215800Z` and
/// `2026-11-24T21:58:00Z` (RFC 3339). Times before 1970 read as 1970-01-01T00:00:00Z.
pub fn utc_timestamps(t: SystemTime) -> (String, String) {
    let t = t.max(UNIX_EPOCH);
    let iso = humantime::format_rfc3339_seconds(t).to_string();
    let compact = iso.replace(['-', ':'], "");
    (compact, iso)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_cluster_known_to_be_available_may_serve_stale_reads() {
        let info = |policy: Option<&str>| ClusterInfo {
            local: policy.is_some(),
            nodes: Vec::new(),
            partition_policy: policy.map(String::from),
            read_from: policy.map(|_| "primary".to_string()),
        };
        assert!(info(Some("consistent")).promises_consistency());
        assert!(
            info(None).promises_consistency(),
            "a cluster loadgen did not start"
        );
        assert!(!info(Some("available")).promises_consistency());
        let replicas = ClusterInfo {
            read_from: Some("replicas".to_string()),
            ..info(Some("consistent"))
        };
        assert!(
            !replicas.promises_consistency(),
            "reads from any copy may be stale (R = 1)"
        );
        assert!(replicas.why_stale_allowed().contains("read_from: replicas"));
    }
}
