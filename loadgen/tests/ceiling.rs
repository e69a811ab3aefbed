//! The null target behind `loadgen --ceiling` is a correct (if trivial) key-value store: a
//! run against it verifies, so its throughput is a fair ceiling for loadgen itself.

use std::path::PathBuf;

use loadgen::ceiling::NullTarget;
use loadgen::run::{run, RunOptions};
use loadgen::workload::Workload;

#[test]
fn a_run_against_the_null_target_verifies() {
    let target = NullTarget::start().unwrap();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("loadgen-tests")
        .join(format!("ceiling-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let workload = Workload::from_yaml(
        "name: ceiling
duration_s: 1
connections: 4
threads: 4
keys: 500
mix: { get: 0.5, put: 0.4, delete: 0.1 }
distribution: uniform
preload: true
seed: 7
",
        "inline",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let outcome = run(RunOptions {
        workload,
        nodes: Some(vec![target.addr()]),
        out_dir: Some(dir.clone()),
        results_root: dir,
        chordkv_bin: None,
        progress: false,
    })
    .unwrap_or_else(|e| panic!("the run failed: {e:#}"));
    let s = &outcome.summary;
    assert!(s.ops["all"].count > 0);
    assert_eq!(s.errors.total, 0);
    assert_eq!(s.verify.lost, 0);
    assert_eq!(s.verify.unexpected, 0);
    assert_eq!(s.verify.unreadable, 0);
    assert!(s.verify.acknowledged > 0);
}
