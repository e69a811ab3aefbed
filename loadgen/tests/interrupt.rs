//! Ctrl-C during a run, as a user does it: the shipped `loadgen` binary starts a local cluster
//! of the shipped `chordkv` binary (built next to it: `cargo build --bins`), gets SIGINT while
//! the load runs, and must write the partial run's summary, exit with 130, and leave no node
//! running. No timing assertions: every wait is bounded and only fails the test when a process
//! never does what it should.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bound of every wait for the child to get somewhere.
const PATIENCE: Duration = Duration::from_secs(120);

fn work_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("loadgen-interrupt")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts loadgen on a 60-second workload of a local 3-node cluster; returns it once its
/// first progress line shows the load running, with the rest of its stderr lines to come.
fn start_loadgen(dir: &Path) -> (Child, mpsc::Receiver<String>) {
    let workload = dir.join("long.yaml");
    std::fs::write(
        &workload,
        "name: long
duration_s: 60
connections: 4
threads: 2
keys: 200
mix: { get: 0.5, put: 0.5 }
distribution: uniform
preload: false
seed: 7
cluster: { nodes: 3, replicas: 1, stabilize_ms: 100 }
",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("--workload")
        .arg(&workload)
        .arg("--out")
        .arg(dir.join("out"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loadgen starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + PATIENCE;
    loop {
        let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("loadgen showed no progress line within {PATIENCE:?}");
        };
        // A progress line (stderr is no terminal): "[   1.0 s] ... ops/s ...".
        if line.starts_with('[') && line.contains("ops/s") {
            return (child, rx);
        }
    }
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let child: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(rc, 0, "cannot signal {pid}");
}

/// Waits for `child` to exit (killing it and failing after [`PATIENCE`]); returns its code.
fn wait_exit(child: &mut Child) -> Option<i32> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("loadgen did not exit within {PATIENCE:?} of the signal");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every node loadgen started is gone, within [`PATIENCE`] (a node that lived on would show
/// here).
fn assert_gone(nodes: &[u32]) {
    let deadline = Instant::now() + PATIENCE;
    while nodes.iter().any(|&p| alive(p)) {
        assert!(
            Instant::now() < deadline,
            "nodes still running after loadgen exited: {:?}",
            nodes.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ctrl_c_writes_the_partial_run_and_stops_the_cluster() {
    let dir = work_dir("once");
    let (mut child, rx) = start_loadgen(&dir);
    let nodes = children_of(child.id());
    assert_eq!(nodes.len(), 3, "loadgen's children: {nodes:?}");
    signal(child.id(), libc::SIGINT);
    assert_eq!(wait_exit(&mut child), Some(130));
    let said: Vec<String> = rx.try_iter().collect();
    assert_gone(&nodes);

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/summary.json")).expect("summary.json"))
            .unwrap();
    assert_eq!(summary["interrupted"], "SIGINT", "{summary}");
    assert!(summary["measured_s"].as_f64().unwrap() < 60.0, "{summary}");
    assert_eq!(summary["verify"]["lost"], 0, "{summary}");
    assert!(
        summary["verify"]["acknowledged"].as_u64().unwrap() > 0,
        "{summary}"
    );
    for file in ["timeline.csv", "timeline.svg", "latency.svg", "all.hgrm"] {
        assert!(
            dir.join("out").join(file).is_file(),
            "{file} missing; stderr: {said:#?}"
        );
    }
    assert!(
        said.iter().any(|l| l.contains("partial run, stopped by SIGINT")),
        "stderr: {said:#?}"
    );
}

#[test]
fn a_second_ctrl_c_exits_at_once_and_still_stops_the_cluster() {
    let dir = work_dir("twice");
    let (mut child, _rx) = start_loadgen(&dir);
    let nodes = children_of(child.id());
    assert_eq!(nodes.len(), 3, "loadgen's children: {nodes:?}");
    signal(child.id(), libc::SIGINT);
    signal(child.id(), libc::SIGINT);
    assert_eq!(wait_exit(&mut child), Some(130));
    assert_gone(&nodes);
}
