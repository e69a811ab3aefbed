//! Deployment over ssh to real sshd hosts: `deploy/test-netns.sh` makes four hosts on this
//! machine (network namespaces on a private bridge, each with its own address and sshd; sshd
//! on distinct loopback addresses where namespaces are not allowed), deploys a 4-node cluster
//! with `deploy/cluster.sh`, checks `status` through a kill and a restart, runs
//! `loadgen --inventory` with `workloads/deploy-smoke.yaml` (a kill and a restart fault over
//! ssh), stops the cluster, and tears everything down, also on failure. This test runs it and
//! checks what it left in its output directory.
//!
//! Needs root and Debian's openssh-server (tests/run-all.sh installs it). Run with
//! `cargo build --bins && cargo test -p chordkv-tests --test deploy`.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chordkv_tests::{chordkv_bin, repo_root, scratch_dir};

/// Bound of the whole script (each of its steps is bounded too); it tears down on SIGTERM.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Why the test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref().ok() != Some("0") {
        return Some("needs root (network namespaces, sshd)".into());
    }
    let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"];
    if !sshd.iter().any(|p| Path::new(p).is_file()) {
        return Some("sshd is not installed: apt-get install openssh-server (tests/run-all.sh does)".into());
    }
    None
}

#[test]
fn a_cluster_deployed_over_ssh_survives_a_kill_and_a_restart_under_load() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("SKIPPED deploy test: {why}");
        return;
    }
    let chordkv = chordkv_bin();
    let loadgen = chordkv.with_file_name(format!("loadgen{}", std::env::consts::EXE_SUFFIX));
    assert!(
        loadgen.is_file(),
        "{} does not exist: run `cargo build --bins` first",
        loadgen.display()
    );
    let out = scratch_dir("deploy");
    let log_path = out.join("test-netns.log");
    let log = std::fs::File::create(&log_path).expect("create the script's log");
    let mut child = Command::new("bash")
        .arg(repo_root().join("deploy/test-netns.sh"))
        .arg(&out)
        .env("CHORDKV_BIN", &chordkv)
        .env("LOADGEN_BIN", &loadgen)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log file"))
        .stderr(log)
        .spawn()
        .expect("run deploy/test-netns.sh");
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the script") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // SIGTERM: the script's trap tears the hosts down.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut output = String::new();
    std::fs::File::open(&log_path)
        .and_then(|mut f| f.read_to_string(&mut output))
        .expect("read the script's log");
    println!("{output}");
    let status = status.unwrap_or_else(|| {
        panic!(
            "deploy/test-netns.sh did not finish within {} s",
            SCRIPT_TIMEOUT.as_secs()
        )
    });
    assert!(
        status.success(),
        "deploy/test-netns.sh failed ({status}); see above"
    );
    assert!(output.contains("deploy test: passed"), "no pass line");
    assert!(output.contains("deploy test: torn down"), "no teardown line");

    // cluster.sh: the errors it must give, and the ring at each step.
    assert!(
        read(&out.join("push-foreign.txt")).contains("is built for"),
        "a foreign binary was not refused by its architecture"
    );
    assert!(read(&out.join("status-unreachable.txt")).contains("unreachable over ssh"));
    for file in [
        "status-up.txt",
        "status-restarted.txt",
        "status-rotated.txt",
        "status-after-load.txt",
    ] {
        let status = read(&out.join(file));
        assert!(
            status.contains("ring: consistent, 4 nodes"),
            "{file}: the ring is not consistent with 4 nodes:\n{status}"
        );
    }
    let killed = read(&out.join("status-killed.txt"));
    assert!(killed.contains(" dead"), "{killed}");
    assert!(killed.contains("ring: consistent, 3 nodes"), "{killed}");
    let down = read(&out.join("state-down.txt"));
    assert_eq!(down.lines().filter(|l| l.ends_with(" dead")).count(), 4, "{down}");

    // loadgen against the deployed cluster: the faults happened over ssh, nothing was lost.
    let summary: serde_json::Value =
        serde_json::from_str(&read(&out.join("results/summary.json"))).expect("summary.json parses");
    let verify = &summary["verify"];
    assert!(verify["acknowledged"].as_u64().unwrap() > 0, "{verify}");
    assert_eq!(verify["lost"], 0, "acknowledged writes were lost: {verify}");
    assert_eq!(verify["unreadable"], 0, "{verify}");
    assert_eq!(summary["cluster"]["local"], false);
    assert_eq!(summary["cluster"]["nodes"].as_array().unwrap().len(), 4);
    let faults = summary["faults"].as_array().expect("a faults list");
    let actions: Vec<&str> = faults.iter().map(|f| f["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["kill", "restart"], "{faults:?}");
    for fault in faults {
        assert!(fault.get("error").is_none_or(|e| e.is_null()), "{fault}");
        assert_eq!(fault["nodes"].as_array().unwrap().len(), 1, "{fault}");
    }
    assert_eq!(
        faults[0]["nodes"], faults[1]["nodes"],
        "restart picks the killed node"
    );
}

/// Runs `deploy/cluster.sh INVENTORY args...` on an inventory with `text`; exit code and stderr.
fn cluster_sh(text: &str, args: &[&str]) -> (i32, String) {
    let dir = scratch_dir("inventory");
    let inventory = dir.join("inventory");
    std::fs::write(&inventory, text).expect("write the inventory");
    let out = Command::new("bash")
        .arg(repo_root().join("deploy/cluster.sh"))
        .arg(&inventory)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run deploy/cluster.sh");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_inventories_and_arguments_are_refused_with_their_line() {
    let host = "host a ssh=root@10.0.0.1 listen=10.0.0.1:7000\n";
    let cases: [(String, &[&str], &str); 11] = [
        (
            format!("replicas=2\nfrobs=1\n{host}"),
            &["status"],
            ":2: unknown setting 'frobs'",
        ),
        (
            format!("replicas=2\nvnodes=0\n{host}"),
            &["status"],
            ":2: vnodes=0: expected a whole number",
        ),
        (
            format!("{host}vnodes=257\n"),
            &["status"],
            ":2: vnodes=257: expected a whole number",
        ),
        (
            format!("vnodes=four\n{host}"),
            &["status"],
            ":1: vnodes=four: expected a whole number",
        ),
        (
            "host a ssh=x listen=10.0.0.1\n".into(),
            &["status"],
            ":1: listen=10.0.0.1 is not IP:PORT",
        ),
        (
            "host a listen=10.0.0.1:7000\n".into(),
            &["status"],
            ":1: host a has no ssh=",
        ),
        ("host a ssh=x\n".into(), &["status"], ":1: host a has no listen="),
        (format!("{host}{host}"), &["status"], ":2: host a is listed twice"),
        (
            "host a ssh=x listen=0.0.0.0:7000\n".into(),
            &["status"],
            "give advertise=IP:PORT",
        ),
        (host.into(), &["kill", "b"], "no host 'b'"),
        (host.into(), &["frob"], "unknown command 'frob'"),
    ];
    for (text, args, expected) in cases {
        let (code, stderr) = cluster_sh(&text, args);
        assert_eq!(code, 2, "{args:?} on {text:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?} on {text:?}: expected {expected:?} in {stderr}"
        );
    }
    let (code, stderr) = cluster_sh(
        &format!("{host}host b ssh=x listen=10.0.0.2:7000 spare=yes\n"),
        &["kill"],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("kill needs a HOST"), "{stderr}");
}
