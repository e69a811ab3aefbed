//! Real `chordkv node` processes, each in its own network namespace (`NetworkMode::Namespaces`,
//! see `node/src/netns.rs`), with the network between them cut and healed: the mechanism
//! itself (packets across the cut vanish, this process reaches every node throughout), and
//! the second case of issue 11 (a write that failed across a cut must not come back when TCP
//! delivers it late).
//!
//! Needs root and `ip`; without them each test prints why and passes without running.
//! Run with `cargo build --bins && cargo test -p chordkv-tests --test partition`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use chordkv_node::client::Client;
use chordkv_node::cluster::{LocalCluster, NetworkMode};
use chordkv_node::netns;
use chordkv_tests::{chordkv_bin, cluster_spec, poll_until, start_spec, CONVERGE_TIMEOUT, REQUEST_TIMEOUT};

/// Bound of one `chordkv` command run inside a namespace.
const COMMAND_TIMEOUT_MS: u64 = 1_000;

/// Held by each test for its whole run: the clusters of this file are timing-sensitive (a
/// starved node is presumed dead), so they do not share the machine with each other.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `false`, with the reason printed, when this process cannot make network namespaces.
fn namespaces_available(test: &str) -> bool {
    match netns::unavailable() {
        None => true,
        Some(why) => {
            eprintln!("{test}: SKIPPED: {why}");
            false
        }
    }
}

/// A started cluster of `nodes` nodes, each in its own namespace, with `extra` node arguments.
fn start_in_namespaces(name: &str, nodes: usize, extra: &[&str]) -> LocalCluster {
    let mut spec = cluster_spec(name, nodes);
    spec.network = NetworkMode::Namespaces;
    spec.node_args.extend(extra.iter().map(|s| s.to_string()));
    start_spec(name, spec)
}

/// Runs `chordkv get KEY --node ADDR` inside node `from`'s namespace: what that node's side of
/// the network sees. Returns stderr when it fails.
fn get_from_namespace(cluster: &LocalCluster, from: usize, to: SocketAddr) -> Result<(), String> {
    let ns = cluster.namespace(from).expect("a namespace per node");
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(chordkv_bin())
        .args(["get", "probe", "--node", &to.to_string()])
        .args(["--timeout-ms", &COMMAND_TIMEOUT_MS.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run chordkv inside a namespace");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // "not found" is an answer: the node was reached.
    if out.status.success() || stderr.contains("not found") {
        Ok(())
    } else {
        Err(stderr)
    }
}

#[test]
fn a_partition_drops_packets_between_groups_and_the_heal_restores_them() {
    const TEST: &str = "partition_mechanism";
    if !namespaces_available(TEST) {
        return;
    }
    let _serial = one_at_a_time();
    let mut cluster = start_in_namespaces(TEST, 3, &[]);
    let addrs = cluster.addrs();
    assert!(
        get_from_namespace(&cluster, 0, addrs[1]).is_ok(),
        "node 0's namespace reaches node 1 before the cut"
    );

    cluster.partition(&[vec![0], vec![1, 2]]).expect("partition");
    assert_eq!(cluster.partitioned(), Some(&[vec![0], vec![1, 2]][..]));
    // Across the cut: no answer at all, not a refusal.
    let across = get_from_namespace(&cluster, 0, addrs[1]).expect_err("the cut drops packets");
    assert!(across.contains("timed out"), "dropped, not refused: {across}");
    // Within a side, and from this process to every node, traffic flows.
    assert!(
        get_from_namespace(&cluster, 1, addrs[2]).is_ok(),
        "1 and 2 are on the same side"
    );
    for &addr in &addrs {
        let mut c = Client::connect(addr, REQUEST_TIMEOUT).expect("this process reaches every node");
        c.info().expect("and every node answers it");
    }
    // The ring sees the cut: node 0 is alone on its side.
    poll_until(CONVERGE_TIMEOUT, "node 0 to drop its cut-off peers", || {
        let info = Client::connect(addrs[0], REQUEST_TIMEOUT).ok()?.info().ok()?;
        let alone = info.successors.iter().all(|s| s.addr == addrs[0]);
        alone.then_some(())
    });

    let healed_at = Instant::now();
    cluster.heal().expect("heal");
    assert_eq!(cluster.partitioned(), None);
    assert!(get_from_namespace(&cluster, 0, addrs[1]).is_ok(), "healed");
    cluster
        .wait_consistent(CONVERGE_TIMEOUT)
        .expect("the ring of 3 forms again after the heal");
    eprintln!(
        "{TEST}: the ring re-formed {:.1} s after the heal",
        healed_at.elapsed().as_secs_f64()
    );
}

#[test]
fn partitions_need_namespaces() {
    // A loopback cluster cannot be cut; the error says what is needed.
    let _serial = one_at_a_time();
    let mut cluster = start_spec("partition_loopback", cluster_spec("partition_loopback", 2));
    let e = cluster.partition(&[vec![0], vec![1]]).unwrap_err();
    assert!(format!("{e:#}").contains("network namespaces"), "{e:#}");
    if netns::unavailable().is_none() {
        let mut spec = cluster_spec("partition_groups", 2);
        spec.network = NetworkMode::Namespaces;
        let mut cluster = start_spec("partition_groups", spec);
        for (groups, want) in [
            (vec![vec![0, 1]], "at least two groups"),
            (vec![vec![0], vec![2]], "node 2 does not exist"),
            (vec![vec![0, 1], vec![1]], "node 1 is in two groups"),
        ] {
            let e = cluster.partition(&groups).unwrap_err();
            assert!(format!("{e:#}").contains(want), "{groups:?}: {e:#}");
        }
        cluster.heal().expect("healing without a partition is a no-op");
    }
}
