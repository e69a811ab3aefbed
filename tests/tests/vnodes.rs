//! Virtual nodes with real `chordkv node` processes on loopback (issue 14): each process runs
//! several ring positions, a key's two copies (`--replicas 1`) are on two distinct processes,
//! so killing any one process loses nothing, and a process restarted on its address takes
//! back the positions it had.
//!
//! Every wait is a bounded poll; times are never asserted.

use std::collections::BTreeSet;
use std::time::Duration;

use chordkv_core::rng::Rng;
use chordkv_harness::cluster::LocalCluster;
use chordkv_protocol::Id;
use chordkv_tests::{
    check_all_keys, cluster_spec, converge, logs_of, seed, wait_stat_sum, with_args, write_keys, Clients,
    NOTHING_LOST,
};

const PROCESSES: usize = 4;
const VNODES: usize = 4;
const KEYS: usize = 300;

#[test]
fn killing_one_process_with_one_replica_loses_nothing_and_its_restart_keeps_its_positions() {
    let name = "vnodes_kill_one_process";
    let mut rng = Rng::new(seed(name));
    let spec = with_args(
        cluster_spec(name, PROCESSES),
        &["--vnodes", &VNODES.to_string(), "--replicas", "1"],
    );
    let mut cluster = LocalCluster::start(spec).expect("start the cluster");
    let ring = converge(&mut cluster, "the ring of processes with vnodes converges");
    assert_eq!(
        ring.nodes.len(),
        PROCESSES * VNODES,
        "every vnode is a ring position"
    );
    assert_eq!(ring.hosts.len(), PROCESSES);
    assert!(ring.hosts.iter().all(|h| h.vnodes == VNODES));
    let addrs = cluster.addrs();
    let mut clients = Clients::new();
    let data = write_keys(&mut clients, &mut rng, &addrs, KEYS);
    // Two copies of each key, on two processes.
    wait_stat_sum(
        &mut clients,
        &addrs,
        "keys",
        2 * KEYS as u64,
        Duration::from_secs(60),
    );

    let victim = 1 + rng.below(PROCESSES as u64 - 1) as usize;
    let positions = |ring: &chordkv_client::RingReport| -> BTreeSet<Id> {
        ring.nodes
            .iter()
            .filter(|n| n.addr.host == addrs[victim])
            .map(|n| n.id)
            .collect()
    };
    let before = positions(&ring);
    eprintln!(
        "{name}: killing process {victim} ({}), restarting it on its address",
        addrs[victim]
    );
    cluster.kill(victim).expect("kill a process");
    cluster.restart(victim).expect("restart it");
    let ring = converge(&mut cluster, "the ring converges with the restarted process");
    assert_eq!(
        positions(&ring),
        before,
        "the restarted process took back its positions; logs in {}",
        logs_of(&cluster)
    );
    // Its memory store came back empty: every key is read back from the other copy.
    check_all_keys(&mut clients, &mut rng, &cluster.addrs(), &data, NOTHING_LOST);
}
