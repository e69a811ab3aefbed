//! Virtual nodes with real `chordkv node` processes on loopback (issue 14): each process runs
//! several ring positions, a key's two copies (`--replicas 1`) are on two distinct processes,
//! so killing any one process loses nothing, a process restarted on its address takes back
//! the positions it had, and a process gone for good is forgotten with all its positions.
//!
//! Every wait is a bounded poll; times are never asserted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chordkv_core::rng::Rng;
use chordkv_harness::cluster::LocalCluster;
use chordkv_protocol::{Id, NodeAddr};
use chordkv_tests::{
    check_all_keys, chordkv, cluster_spec, converge, logs_of, seed, wait_stat_sum, with_args, write_keys,
    Clients, CONVERGE_TIMEOUT, NOTHING_LOST, POLL_PAUSE,
};

const PROCESSES: usize = 4;
const VNODES: usize = 4;
const KEYS: usize = 300;

/// A ring of [`PROCESSES`] processes of [`VNODES`] vnodes (`--replicas 1`), converged, with
/// [`KEYS`] keys written and both copies of each stored.
struct LoadedRing {
    rng: Rng,
    cluster: LocalCluster,
    ring: chordkv_client::RingReport,
    addrs: Vec<SocketAddr>,
    clients: Clients,
    data: BTreeMap<String, String>,
}

fn loaded_ring(name: &str) -> LoadedRing {
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
    LoadedRing {
        rng,
        cluster,
        ring,
        addrs,
        clients,
        data,
    }
}

#[test]
fn killing_one_process_with_one_replica_loses_nothing_and_its_restart_keeps_its_positions() {
    let name = "vnodes_kill_one_process";
    let LoadedRing {
        mut rng,
        mut cluster,
        ring,
        addrs,
        mut clients,
        data,
    } = loaded_ring(name);
    assert_eq!(ring.hosts.len(), PROCESSES);
    assert!(ring.hosts.iter().all(|h| h.vnodes == VNODES));
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

/// A process of a vnode ring dies for good (kill -9) and an operator forgets it by its
/// address (`chordkv forget IP:PORT`): every position it ran leaves the ring, not its vnode 0
/// alone. Under the partition policy `consistent` its positions stay down members until then
/// (and `chordkv forget IP:PORT#1` beforehand takes out that position only); afterwards
/// `chordkv ring --json` lists the survivors' positions only, none of the dead host's (up or
/// down), the ring is consistent, and every key is read back (`--replicas 1`: its other copy
/// is on a survivor).
#[test]
fn forgetting_a_dead_process_by_its_address_forgets_every_position_it_ran() {
    let name = "vnodes_forget_dead_process";
    let LoadedRing {
        mut rng,
        mut cluster,
        addrs,
        mut clients,
        data,
        ..
    } = loaded_ring(name);
    let victim = 1 + rng.below(PROCESSES as u64 - 1) as usize;
    let dead = addrs[victim];
    eprintln!("{name}: killing process {victim} ({dead}) for good");
    cluster.kill(victim).expect("kill a process");
    let live = cluster.live_addrs();
    let positions_of_dead = |vnodes: &[u16]| -> BTreeSet<String> {
        vnodes
            .iter()
            .map(|&v| NodeAddr::new(dead, v).to_string())
            .collect()
    };
    // Under `consistent` its positions are down members until they are forgotten: one first
    // (`IP:PORT#1`), then the process with all the others (`IP:PORT`).
    let one = NodeAddr::new(dead, 1).to_string();
    assert_eq!(forget(live[0], &one), format!("forgotten: {one}\n"));
    wait_for_ring(&cluster, live[0], dead, &positions_of_dead(&[0, 2, 3]));
    assert_eq!(
        forget(live[1], &dead.to_string()),
        format!("forgotten: {dead} (every position of the host)\n")
    );
    let ring = wait_for_ring(&cluster, live[0], dead, &BTreeSet::new());
    let hosts: BTreeSet<SocketAddr> = ring["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["addr"].as_str()?.parse::<NodeAddr>().ok())
        .map(|a| a.host)
        .collect();
    assert_eq!(hosts, live.iter().copied().collect(), "{ring}");
    assert_eq!(
        ring["nodes"].as_array().map(Vec::len),
        Some((PROCESSES - 1) * VNODES),
        "every survivor keeps its positions: {ring}"
    );
    check_all_keys(&mut clients, &mut rng, &live, &data, NOTHING_LOST);
}

/// Runs `chordkv forget --node FROM DEAD` and returns what it printed; asserts it succeeded.
fn forget(from: SocketAddr, dead: &str) -> String {
    let out = chordkv(&["forget", "--node", &from.to_string(), dead]);
    assert!(
        out.status.success(),
        "chordkv forget {dead}: {}{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// Polls `chordkv ring --json --node FROM` (at most [`CONVERGE_TIMEOUT`]) until the ring is
/// consistent, none of the positions of the host `dead` answers in it, and those listed as
/// down are exactly `down`; returns the ring's JSON. Panics with the last walk and the logs.
fn wait_for_ring(
    cluster: &LocalCluster,
    from: SocketAddr,
    dead: SocketAddr,
    down: &BTreeSet<String>,
) -> serde_json::Value {
    let of_dead = |ring: &serde_json::Value, field: &str| -> BTreeSet<String> {
        let listed = ring[field].as_array().cloned().unwrap_or_default();
        listed
            .iter()
            .filter_map(|n| n.as_str().or_else(|| n["addr"].as_str()))
            .filter(|a| a.parse::<NodeAddr>().is_ok_and(|a| a.host == dead))
            .map(str::to_string)
            .collect()
    };
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let run = chordkv(&["ring", "--json", "--node", &from.to_string()]);
        let ring: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_default();
        if ring["consistent"] == true && of_dead(&ring, "nodes").is_empty() && of_dead(&ring, "down") == *down
        {
            return ring;
        }
        assert!(
            Instant::now() < deadline,
            "expected a consistent ring with {down:?} of {dead} down and none of its positions \
             up: {}{}; logs in {}",
            run.stdout,
            run.stderr,
            logs_of(cluster)
        );
        std::thread::sleep(POLL_PAUSE);
    }
}
