//! Virtual nodes with real `chordkv node` processes on loopback (issue 14): each process runs
//! several ring positions, a key's two copies (`--replicas 1`) are on two distinct processes,
//! so killing any one process loses nothing, a process restarted on its address takes back
//! the positions it had, and a process gone for good is forgotten with all its positions. A
//! process paused (SIGSTOP) stops all its positions at once; with three copies of each key
//! the ring keeps taking writes and deletes without it, and once resumed it loses none of them
//! and takes its positions back.
//!
//! Every wait is a bounded poll; times are never asserted. The tests run one at a time
//! ([`one_at_a_time`]): a process starved by another test's cluster on a small machine looks
//! paused to its neighbours, which is a fault of its own.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chordkv_harness::cluster::{LocalCluster, NetworkMode};
use chordkv_protocol::{Id, NodeAddr};
use chordkv_tests::{
    check_all_keys, check_every_key_through_each, chordkv, cluster_spec, converge, converge_to, loaded_ring,
    logs_of, one_at_a_time, overwrite_and_delete, positions, wait_anti_entropy_rounds, wait_failure_detected,
    with_args, LoadedRing, VnodeRing, CONVERGE_TIMEOUT, NOTHING_LOST, POLL_PAUSE, SETTLE_ROUNDS,
};

const PROCESSES: usize = 4;
const VNODES: usize = 4;
const KEYS: usize = 300;
/// The ring of the kill, restart and forget tests: each key on two processes.
const TWO_COPIES: VnodeRing = VnodeRing {
    processes: PROCESSES,
    vnodes: VNODES,
    replicas: 1,
    keys: KEYS,
};

#[test]
fn killing_one_process_with_one_replica_loses_nothing_and_its_restart_keeps_its_positions() {
    let _serial = one_at_a_time();
    let name = "vnodes_kill_one_process";
    let LoadedRing {
        mut rng,
        mut cluster,
        ring,
        addrs,
        mut clients,
        data,
    } = loaded_ring(name, TWO_COPIES, NetworkMode::Host);
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
    let _serial = one_at_a_time();
    let name = "vnodes_forget_dead_process";
    let LoadedRing {
        mut rng,
        mut cluster,
        addrs,
        mut clients,
        data,
        ..
    } = loaded_ring(name, TWO_COPIES, NetworkMode::Host);
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

/// The ring of the pause test: five processes, each key on three of them (`--replicas 2`).
/// Under the default partition policy (`consistent`) a range is served, and a write
/// acknowledged, only with a majority of its copies: with two copies (`--replicas 1`) a paused
/// process would leave every range it holds a copy of without one, and the test could
/// acknowledge no write to them while it is paused; with three, two remain.
const THREE_COPIES: VnodeRing = VnodeRing {
    processes: 5,
    vnodes: VNODES,
    replicas: 2,
    keys: KEYS,
};
/// Keys overwritten or deleted while the process is paused.
const OPS_WHILE_PAUSED: usize = 150;
/// How long the process stays paused at least (as `tests/tests/faults.rs`' case 1): far past
/// failure detection (an RPC timeout of 0.4 s with `NODE_ARGS`) and a lease period. A fault's
/// length, not a wait for a condition: nothing is asserted about time.
const PAUSE: Duration = Duration::from_secs(5);

/// Pause: one process of a vnode ring is frozen whole (SIGSTOP: a GC pause, a VM migration),
/// so all its positions stop answering at once, for longer than failure detection and a
/// lease. Five processes of four vnodes, each key on the preference list of three distinct
/// processes, 300 keys. While it is paused, keys are overwritten and deleted through the
/// other processes (each acknowledged) and every key reads back through each of them; then it
/// is resumed (SIGCONT). Asserts: every key reads back its last acknowledged value, and every
/// deleted key reads as not found (no tombstone undone by the stale copies the paused process
/// kept), through every process, the resumed one too, at once after the resume, once the ring
/// has converged, and after anti-entropy rounds; and the ring converges with every position
/// of every process back as before and none down. (It found the writes to a range whose
/// stand-in is a vnode 0 refused for the whole pause: see `host.rs` `vnode_for` and
/// `harness/tests/vnodes.rs` `every_key_of_a_paused_host_stays_writable_through_its_stand_in`.)
#[test]
fn a_paused_process_loses_no_acknowledged_write_and_no_delete_and_gets_its_positions_back() {
    let _serial = one_at_a_time();
    let name = "vnodes_pause_one_process";
    let LoadedRing {
        mut rng,
        mut cluster,
        ring,
        addrs,
        mut clients,
        mut data,
    } = loaded_ring(name, THREE_COPIES, NetworkMode::Host);
    let logs = logs_of(&cluster);
    let before = positions(&ring);
    let victim = rng.below(THREE_COPIES.processes as u64) as usize;
    let others: Vec<SocketAddr> = addrs.iter().copied().filter(|&a| a != addrs[victim]).collect();
    eprintln!(
        "{name}: pausing process {victim} ({}) with its {VNODES} vnodes",
        addrs[victim]
    );
    cluster.pause(victim).expect("pause a process");
    let paused_at = Instant::now();
    let detected = wait_failure_detected(&mut clients, &others);
    let mut deleted = BTreeSet::new();
    let (puts, dels) = overwrite_and_delete(
        &mut clients,
        &mut rng,
        &others,
        &mut data,
        &mut deleted,
        OPS_WHILE_PAUSED,
    );
    eprintln!(
        "{name}: presumed down after {:.1} s; {puts} writes and {dels} deletes acknowledged \
         after {:.1} s; {} keys deleted",
        detected.as_secs_f64(),
        paused_at.elapsed().as_secs_f64(),
        deleted.len()
    );
    check_every_key_through_each(&mut clients, &others, &data, &deleted, "while paused", &logs);
    std::thread::sleep(PAUSE.saturating_sub(paused_at.elapsed()));

    cluster.resume(victim).expect("resume it");
    let resumed_at = Instant::now();
    eprintln!("{name}: resumed after {:.1} s", paused_at.elapsed().as_secs_f64());
    // At once: the resumed process must not answer from its stale copies or an expired lease.
    check_every_key_through_each(
        &mut clients,
        &addrs,
        &data,
        &deleted,
        "at once after the resume",
        &logs,
    );
    let ring = converge_to(
        &mut cluster,
        &before,
        CONVERGE_TIMEOUT,
        "the ring converges with every position of the resumed process back",
    );
    assert_eq!(ring.nodes.len(), THREE_COPIES.processes * VNODES);
    eprintln!(
        "{name}: the ring converged with its {} positions {:.1} s after the resume",
        ring.nodes.len(),
        resumed_at.elapsed().as_secs_f64()
    );
    check_every_key_through_each(
        &mut clients,
        &addrs,
        &data,
        &deleted,
        "once the ring converged",
        &logs,
    );
    // Anti-entropy compares the resumed process's copies with the others': its old values and
    // the keys deleted while it was paused must not spread back.
    wait_anti_entropy_rounds(&mut clients, &addrs, SETTLE_ROUNDS * VNODES as u64, |_| {});
    check_every_key_through_each(&mut clients, &addrs, &data, &deleted, "after anti-entropy", &logs);
}

/// Hosts started all at once, each joining the first (a script that does not wait between
/// them, a supervisor starting the whole cluster), while the first host's own vnodes are still
/// finding each other: each joiner claims the positions it chose at the node it read the ring
/// through (`CLAIM_POSITIONS`) and chooses again around the claims of the others, so the ring
/// ends as even as when they join one after another. Before claims, 8 hosts of 8 vnodes
/// started so read the same ring and chose the same positions: one host owned 75% of the ring
/// and four owned none. 10 hosts, more than a successor list names (8): such rings never
/// became consistent before lists learnt under `consistent` dropped the tails their answers no
/// longer vouch for (`harness/tests/vnodes.rs`
/// `a_ring_of_more_hosts_than_the_successor_list_names_converges_to_exact_lists`).
#[test]
fn hosts_started_at_once_claim_distinct_positions_and_share_the_ring_evenly() {
    let _serial = one_at_a_time();
    let name = "vnodes_started_at_once";
    const HOSTS: usize = 10;
    const EACH: usize = 8;
    let spec = with_args(
        cluster_spec(name, 1),
        &["--vnodes", &EACH.to_string(), "--replicas", "1"],
    );
    let mut cluster = LocalCluster::start(spec).expect("start the first host");
    cluster
        .add_nodes_at_once(HOSTS - 1)
        .expect("start the other hosts at once");
    let ring = converge(&mut cluster, "the ring of hosts started at once converges");
    assert_eq!(ring.nodes.len(), HOSTS * EACH, "every vnode is a ring position");
    assert_eq!(ring.hosts.len(), HOSTS);
    assert_even_shares(name, &ring, &cluster);
}

/// Hosts started at once through *different* join peers: each claims its positions at the
/// lowest-address host of the ring it read, the same host whatever its join peer, so they are
/// ordered as those joining through one node are. Before, each claimed at its join peer, where
/// the others' claims were not: 8 hosts joining through two nodes left one host with none of
/// the ring.
#[test]
fn hosts_started_at_once_through_different_join_peers_share_the_ring_evenly() {
    let _serial = one_at_a_time();
    let name = "vnodes_started_through_different_peers";
    const EACH: usize = 8;
    let spec = with_args(
        cluster_spec(name, 2),
        &["--vnodes", &EACH.to_string(), "--replicas", "1"],
    );
    let mut cluster = LocalCluster::start(spec).expect("start two hosts");
    let joined = cluster
        .add_nodes_at_once_through_different_nodes(6)
        .expect("start six more hosts at once, through the two by turns");
    let ring = converge(&mut cluster, "the ring of hosts started at once converges");
    let hosts = 2 + joined.len();
    assert_eq!(ring.nodes.len(), hosts * EACH, "every vnode is a ring position");
    assert_even_shares(name, &ring, &cluster);
}

/// Every host of `ring` owns within 25% of the mean share (printed, relative to the mean).
fn assert_even_shares(name: &str, ring: &chordkv_client::RingReport, cluster: &LocalCluster) {
    let mean = 1.0 / ring.hosts.len() as f64;
    let shares: Vec<(SocketAddr, f64)> = ring.hosts.iter().map(|h| (h.host, h.share / mean)).collect();
    eprintln!("{name}: shares relative to the mean: {shares:?}");
    assert!(
        shares.iter().all(|(_, s)| (0.75..=1.25).contains(s)),
        "every host owns within 25% of the mean share: {shares:?}; logs in {}",
        logs_of(cluster)
    );
}

/// A process of 8 vnodes that left gracefully (SIGTERM) and is started again on its address
/// joins the ring again (found by a fresh user: before, it never did, the ring staying at the
/// other hosts while the restarted one walked a loop of its own; the simulation form is
/// `harness/tests/vnodes.rs` `a_host_of_vnodes_that_left_joins_again_on_its_address`).
#[test]
fn a_process_that_left_joins_again_on_its_address() {
    let _serial = one_at_a_time();
    let name = "vnodes_left_and_back";
    let spec = with_args(cluster_spec(name, 3), &["--vnodes", "8", "--replicas", "1"]);
    let mut cluster = LocalCluster::start(spec).expect("start three hosts");
    converge(&mut cluster, "the ring of three converges");
    cluster.terminate(2).expect("a graceful leave");
    cluster.restart(2).expect("start it again on its address");
    let ring = converge(&mut cluster, "the ring converges with the host that came back");
    assert_eq!(
        ring.hosts.len(),
        3,
        "every host is in the ring again; logs in {}",
        logs_of(&cluster)
    );
    assert_eq!(ring.nodes.len(), 24, "every vnode is a ring position");
}

/// A host killed (SIGKILL) while its vnodes join, among hosts started at once, and restarted
/// on its address at once: its vnodes take back the positions its first run claimed (some were
/// in peers' tables already, though not in the ring it reads), so the ring converges with every
/// position under one id. (Found by trying the claims as a user: before, the restarted host
/// chose new positions, peers kept listing `host#5` under its old id, and the ring never became
/// consistent. How far the first run got depends on timing: this end-to-end form passes with
/// the build before as well when the victim finished joining before the kill; the case is
/// pinned in `server/src/tests.rs` `a_restarted_joiner_takes_back_the_positions_its_first_run_claimed`.)
#[test]
fn a_host_killed_while_it_joins_and_restarted_takes_back_the_positions_it_claimed() {
    let _serial = one_at_a_time();
    let name = "vnodes_killed_while_joining";
    let spec = with_args(cluster_spec(name, 1), &["--vnodes", "8", "--replicas", "1"]);
    let mut cluster = LocalCluster::start(spec).expect("start the first host");
    let joined = cluster
        .add_nodes_at_once(7)
        .expect("start the other hosts at once");
    let victim = joined[2];
    cluster.kill(victim).expect("kill a host while it joins");
    cluster.restart(victim).expect("restart it on its address");
    let ring = converge(&mut cluster, "the ring converges with the restarted host");
    assert_eq!(
        ring.nodes.len(),
        8 * 8,
        "every vnode is a ring position, under one id"
    );
    assert!(
        ring.hosts
            .iter()
            .all(|h| (0.75..=1.25).contains(&(h.share * 8.0))),
        "every host owns within 25% of the mean share: {:?}; logs in {}",
        ring.hosts.iter().map(|h| (h.host, h.share)).collect::<Vec<_>>(),
        logs_of(&cluster)
    );
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
