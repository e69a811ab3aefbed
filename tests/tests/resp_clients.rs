//! Today's Redis client libraries, with their default settings, against the RESP ports of a
//! real 3-node ring: redis-py 8 and node-redis 6 (which send `HELLO 3` as they connect and
//! stopped at `-NOPROTO` before RESP3 was spoken) and ioredis. Each runs a script in
//! `tests/clients/` that checks pings, writes through one node and reads through every node,
//! nulls, MGET, DEL, INFO and pipelines.
//!
//! `tests/run-all.sh` installs the clients into `target/clients` (pip `--target`, npm
//! `--prefix`); without them these tests fail, naming the command that installs them.

use std::path::PathBuf;
use std::process::Command;

use chordkv_harness::cluster::LocalCluster;
use chordkv_tests::{cluster_spec, repo_root, start_spec};

fn start(name: &str) -> LocalCluster {
    let mut spec = cluster_spec(name, 3);
    spec.resp = true;
    start_spec(name, spec)
}

/// Runs `program args` and returns its stdout, failing with both outputs unless it exits 0
/// and prints `ok` last.
fn run_script(program: &str, args: &[String], env: &[(&str, PathBuf)]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (tests/run-all.sh installs it)"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "{program} {args:?}: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    stdout
}

#[test]
fn redis_py_8_connects_with_its_defaults() {
    let python = repo_root().join("target/clients/python");
    assert!(
        python.join("redis").is_dir(),
        "redis-py is not in {} (tests/run-all.sh installs it)",
        python.display()
    );
    let cluster = start("redis_py");
    let mut args = vec![repo_root()
        .join("tests/clients/redis_py.py")
        .display()
        .to_string()];
    args.extend(cluster.resp_addrs().iter().map(|a| a.to_string()));
    let out = run_script("python3", &args, &[("PYTHONPATH", python)]);
    assert!(out.contains("HELLO proto 3"), "{out}");
}

#[test]
fn node_redis_6_and_ioredis_connect_with_their_defaults() {
    let modules = repo_root().join("target/clients/node/node_modules");
    assert!(
        modules.join("redis").is_dir() && modules.join("ioredis").is_dir(),
        "node-redis and ioredis are not in {} (tests/run-all.sh installs them)",
        modules.display()
    );
    let cluster = start("node_clients");
    let mut args = vec![
        repo_root()
            .join("tests/clients/node_clients.cjs")
            .display()
            .to_string(),
        modules.display().to_string(),
    ];
    args.extend(cluster.resp_addrs().iter().map(|a| a.to_string()));
    run_script("node", &args, &[]);
}
