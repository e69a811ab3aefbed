//! Real `chordkv node` processes, each in its own network namespace (`NetworkMode::Namespaces`,
//! see `harness/src/netns.rs`), with the network between them cut and healed: the mechanism
//! itself (packets across the cut vanish, this process reaches every node throughout), and
//! the second case of issue 11 (a write that failed across a cut must not come back when TCP
//! delivers it late), and a process of a vnode ring cut off and healed.
//!
//! Needs root and `ip`; without them each test prints why and passes without running.
//! Run with `cargo build --bins && cargo test -p chordkv-tests --test partition`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use chordkv_client::{Client, ClientError};
use chordkv_harness::cluster::{LocalCluster, NetworkMode};
use chordkv_harness::netns;
use chordkv_protocol::{in_half_open, Id};
use chordkv_tests::{
    check_every_key_through_each, chordkv_bin, cluster_spec, converge_to, expected_value, loaded_ring,
    logs_of, one_at_a_time, overwrite_and_delete, poll_until, positions, preference_list, start_spec,
    wait_anti_entropy_rounds, wait_failure_detected, with_args, Clients, LoadedRing, VnodeRing,
    CONVERGE_TIMEOUT, REQUEST_TIMEOUT, SETTLE_ROUNDS,
};

/// How long the mechanism test keeps its cut: several failure-detection periods.
const CUT: Duration = Duration::from_secs(2);
/// Bound of one `chordkv` command run inside a namespace.
const COMMAND_TIMEOUT_MS: u64 = 1_000;
/// How long the entry may take to answer a write it cannot deliver: far more than any
/// request deadline, so that no answer at all is a failure of its own.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound of the wait, after the heal, for the held bytes to be delivered (TCP's
/// retransmission backoff doubles from 200 ms: a few seconds for a cut of a few seconds).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of the wait for the ring to re-form after the heal.
const RING_TIMEOUT: Duration = Duration::from_secs(20);
/// After the held bytes are delivered, how long every node is watched for the old value.
const WATCH: Duration = Duration::from_secs(3);

/// The guard that runs the tests of this file one at a time ([`one_at_a_time`]); `None`, with
/// the reason printed, when this process cannot make network namespaces.
fn namespaces_one_at_a_time(name: &str) -> Option<MutexGuard<'static, ()>> {
    if let Some(why) = netns::unavailable() {
        eprintln!("{name}: SKIPPED: {why}");
        return None;
    }
    Some(one_at_a_time())
}

/// A started cluster of `nodes` nodes, each in its own namespace, with `extra` node arguments,
/// and the guard of [`namespaces_one_at_a_time`], held while it started; `None` when this
/// process cannot make network namespaces.
fn start_in_namespaces(
    name: &str,
    nodes: usize,
    extra: &[&str],
) -> Option<(MutexGuard<'static, ()>, LocalCluster)> {
    let serial = namespaces_one_at_a_time(name)?;
    let mut spec = with_args(cluster_spec(name, nodes), extra);
    spec.network = NetworkMode::Namespaces;
    Some((serial, start_spec(name, spec)))
}

/// Runs `chordkv get probe --node ADDR` inside node `from`'s namespace: whether that node's
/// side of the network reaches `to` (any answer counts). Returns stderr when it does not.
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
    // "not found" and a server error ("no lease yet", ...) are answers: the node was reached.
    if out.status.success() || stderr.contains("not found") || stderr.contains("server error (") {
        Ok(())
    } else {
        Err(stderr)
    }
}

#[test]
fn a_partition_drops_packets_between_groups_and_the_heal_restores_them() {
    const TEST: &str = "partition_mechanism";
    let Some((_serial, mut cluster)) = start_in_namespaces(TEST, 3, &[]) else {
        return;
    };
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
    let within = get_from_namespace(&cluster, 1, addrs[2]);
    assert!(within.is_ok(), "1 and 2 are on the same side: {within:?}");
    for &addr in &addrs {
        let mut c = Client::connect(addr, REQUEST_TIMEOUT).expect("this process reaches every node");
        c.info().expect("and every node answers it");
    }
    // What the nodes make of the cut is the core's business (the consistent policy keeps
    // unanswering members in the ring); the test only holds the cut long enough to matter.
    std::thread::sleep(CUT);

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

/// Bytes sent from namespace `ns` to `to` and not yet acknowledged (the Send-Q of every TCP
/// socket, orphans included), per `ss`; `None` if `ss` cannot be run.
fn unacknowledged_bytes(ns: &str, to: SocketAddr) -> Option<u64> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ss", "-H", "-t", "-a", "-n", "dst"])
        .arg(to.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    // "ESTAB 0 1234 10.78.5.14:51234 10.78.5.10:7000": state, Recv-Q, Send-Q, local, peer.
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
            .sum(),
    )
}

/// Issue 11, observed case 2: two groups of nodes, traffic between them dropped. An entry sends
/// `PUT k OLD` to the key's owner across the cut and answers an error; `PUT k NEW` is then
/// acknowledged on the owner's side. After the heal, TCP retransmission delivers the old
/// request. OLD failed before NEW was sent, so every node must return NEW: a node may not
/// apply a request its entry has already answered with an error.
///
/// ```text
///   ring order:  E=pred(O) | O  R1  R2 | F        k in (E, O]: O owns it, R1 and R2 replicate it
///   cut:         [E, F]    x  [O, R1, R2]         (the owner's whole preference list on one side)
///   PUT k OLD -> E -> O: held in E's socket; E answers an error
///   PUT k NEW -> O: acknowledged;  heal;  E's retransmission delivers OLD to O
/// ```
#[test]
fn a_write_answered_with_an_error_across_a_cut_never_applies_after_the_heal() {
    const TEST: &str = "late_delivery";
    let Some((_serial, mut cluster)) = start_in_namespaces(TEST, 5, &["--replicas", "2"]) else {
        return;
    };
    let ring = cluster
        .wait_consistent(CONVERGE_TIMEOUT)
        .expect("the ring is consistent");
    let addrs = cluster.addrs();
    let index = |a: SocketAddr| addrs.iter().position(|&x| x == a).expect("a node of the cluster");
    // Ring order from the lowest id: O is ring[1], so E = ring[0] is its predecessor and
    // the preference list O, R1, R2 is ring[1..4].
    let ring: Vec<_> = ring.nodes.iter().map(|n| (n.id, n.addr.host)).collect();
    let (entry, owner) = (ring[0], ring[1]);
    let key = (0..)
        .map(|n| format!("late-{n}"))
        .find(|k| in_half_open(&Id::of_key(k.as_bytes()), &entry.0, &owner.0))
        .expect("some key falls in (E, O]");
    let near: Vec<usize> = [ring[0], ring[4]].iter().map(|n| index(n.1)).collect();
    let far: Vec<usize> = ring[1..4].iter().map(|n| index(n.1)).collect();
    eprintln!(
        "{TEST}: key {key}: entry {} and {} | owner {} and replicas {}, {}",
        entry.1, ring[4].1, owner.1, ring[2].1, ring[3].1
    );

    cluster.partition(&[near.clone(), far]).expect("partition");
    let cut_at = Instant::now();
    let mut client = Client::connect(entry.1, ANSWER_TIMEOUT).expect("connect to the entry");
    let old = client.put(key.clone(), "OLD");
    eprintln!(
        "{TEST}: PUT {key} OLD through the entry: {old:?} after {:.2} s",
        cut_at.elapsed().as_secs_f64()
    );
    match &old {
        Err(ClientError::Timeout { .. }) => panic!(
            "the entry did not answer PUT OLD within {} s: it must answer within its request deadline",
            ANSWER_TIMEOUT.as_secs()
        ),
        Err(ClientError::Server { .. }) => {}
        Err(e) => panic!("PUT OLD failed without an answer: {e}"),
        // Acknowledged: then it happened before NEW, which must still win.
        Ok(_) => {}
    }

    let mut clients = Clients::new();
    clients.retrying(owner.1, "PUT NEW", |c| c.put(key.clone(), "NEW"));
    let read = clients.retrying(owner.1, "GET", |c| c.get(key.clone()));
    assert_eq!(read.value.as_deref(), Some(&b"NEW"[..]), "NEW is acknowledged");

    let held = unacknowledged_bytes(cluster.namespace(near[0]).expect("a namespace"), owner.1);
    cluster.heal().expect("heal");
    let healed_at = Instant::now();
    eprintln!(
        "{TEST}: healed after a cut of {:.2} s; {held:?} bytes from the entry to the owner unacknowledged",
        cut_at.elapsed().as_secs_f64()
    );
    let entry_ns = cluster.namespace(near[0]).expect("a namespace").to_string();
    poll_until(
        DELIVERY_TIMEOUT,
        "the entry's held bytes to reach the owner",
        || (unacknowledged_bytes(&entry_ns, owner.1).unwrap_or(0) == 0).then_some(()),
    );
    eprintln!(
        "{TEST}: the held bytes were delivered {:.2} s after the heal",
        healed_at.elapsed().as_secs_f64()
    );
    // A ring that does not re-form shows in the reads below, with the value each side holds.
    if let Err(e) = cluster.wait_consistent(RING_TIMEOUT) {
        eprintln!("{TEST}: WARNING: {e:#}");
    }

    let watch_until = Instant::now() + WATCH;
    while Instant::now() < watch_until {
        for &addr in &addrs {
            let got = clients.retrying(addr, "GET after the heal", |c| c.get(key.clone()));
            assert_eq!(
                got.value.as_deref(),
                Some(&b"NEW"[..]),
                "GET {key} through {addr}, {:.2} s after the heal: every node must return NEW, \
                 acknowledged after PUT OLD was answered ({old:?})",
                healed_at.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The vnode ring of the cut: five processes of four vnodes, each key on three of them
/// (`--replicas 2`). Under the default partition policy (`consistent`) a range is served only
/// with a majority of its copies: a process cut off leaves two of every range's three on the
/// other side (with `--replicas 1`, one of two: no write to those ranges could be
/// acknowledged during the cut).
const VNODE_RING: VnodeRing = VnodeRing {
    processes: 5,
    vnodes: 4,
    replicas: 2,
    keys: 300,
};
/// Keys overwritten or deleted through the majority side during the cut.
const OPS_DURING_CUT: usize = 150;
/// Keys read through the cut-off process during the cut, one attempt each (a refusal takes
/// the entry's retries, seconds).
const READS_ACROSS_CUT: usize = 3;

/// Partition and heal with vnodes: one process of a vnode ring (all its positions at once) is
/// cut off from the four others, each in its own network namespace; the cut drops packets.
/// During the cut, keys are overwritten and deleted through the majority side (each
/// acknowledged), and every key reads back through each process of that side; reads through
/// the cut-off process, of keys whose primary it runs and that changed, must answer the last
/// acknowledged value or an error, never its stale copy (a minority lost its leases). After
/// the heal, asserts: the ring re-forms with every position of every process as before, none
/// down or presumed down by any process; every key reads back its last acknowledged value,
/// and every deleted key reads as not found (no tombstone undone by the stale copies of the
/// cut-off process), through every process, once the ring has re-formed and again after
/// anti-entropy rounds.
#[test]
fn a_process_of_a_vnode_ring_cut_off_and_healed_loses_no_acknowledged_write_and_no_delete() {
    const TEST: &str = "vnodes_partition_heal";
    let Some(_serial) = namespaces_one_at_a_time(TEST) else {
        return;
    };
    let LoadedRing {
        mut rng,
        mut cluster,
        ring,
        addrs,
        mut clients,
        mut data,
    } = loaded_ring(TEST, VNODE_RING, NetworkMode::Namespaces);
    let logs = logs_of(&cluster);
    let before = positions(&ring);
    let cut = rng.below(VNODE_RING.processes as u64) as usize;
    let majority: Vec<usize> = (0..VNODE_RING.processes).filter(|&i| i != cut).collect();
    let majority_addrs: Vec<SocketAddr> = majority.iter().map(|&i| addrs[i]).collect();
    eprintln!(
        "{TEST}: cutting process {cut} ({}) with its {} vnodes off",
        addrs[cut], VNODE_RING.vnodes
    );
    cluster
        .partition(&[vec![cut], majority.clone()])
        .expect("partition");
    let cut_at = Instant::now();
    let detected = wait_failure_detected(&mut clients, &majority_addrs);
    let mut deleted = BTreeSet::new();
    let loaded = data.clone();
    let (puts, dels) = overwrite_and_delete(
        &mut clients,
        &mut rng,
        &majority_addrs,
        &mut data,
        &mut deleted,
        OPS_DURING_CUT,
    );
    eprintln!(
        "{TEST}: presumed down after {:.1} s; {puts} writes and {dels} deletes acknowledged after \
         {:.1} s; {} keys deleted",
        detected.as_secs_f64(),
        cut_at.elapsed().as_secs_f64(),
        deleted.len()
    );
    check_every_key_through_each(
        &mut clients,
        &majority_addrs,
        &data,
        &deleted,
        "during the cut",
        &logs,
    );
    // The cut-off side: an error, or the last acknowledged value, never the older one it
    // holds. Keys it is the primary of and that changed during the cut: it held their lease
    // before the cut, and holds a copy of their old value.
    let changed: Vec<&String> = data
        .keys()
        .filter(|k| deleted.contains(*k) || data[*k] != loaded[*k])
        .filter(|k| preference_list(&ring, k.as_bytes(), 1)[0] == addrs[cut])
        .take(READS_ACROSS_CUT)
        .collect();
    let reads_at = Instant::now();
    let (mut answered, mut refused) = (0, 0);
    for key in &changed {
        match clients.with(addrs[cut], |c| c.get((*key).clone())) {
            Ok(got) => {
                answered += 1;
                assert_eq!(
                    got.value.as_deref(),
                    expected_value(&data, &deleted, key),
                    "GET {key} through the cut-off process {} during the cut (version {}); logs in {logs}",
                    addrs[cut],
                    got.version
                );
            }
            Err(_) => refused += 1,
        }
    }
    eprintln!(
        "{TEST}: {} keys of the cut-off process changed during the cut, read through it: \
         {answered} answered, {refused} refused, in {:.1} s",
        changed.len(),
        reads_at.elapsed().as_secs_f64()
    );

    cluster.heal().expect("heal");
    let healed_at = Instant::now();
    // The messages the nodes sent across the cut wait in their TCP connections, whose
    // retransmissions back off (doubling from 200 ms) while the cut lasts: the next one can
    // come about as long after the heal as the cut lasted, and only then do the two sides
    // hear each other again on those connections.
    let ring = converge_to(
        &mut cluster,
        &before,
        CONVERGE_TIMEOUT + cut_at.elapsed(),
        "the ring re-forms with every position of every process after the heal",
    );
    eprintln!(
        "{TEST}: the ring re-formed with its {} positions {:.1} s after the heal",
        ring.nodes.len(),
        healed_at.elapsed().as_secs_f64()
    );
    check_every_key_through_each(&mut clients, &addrs, &data, &deleted, "after the heal", &logs);
    // Anti-entropy compares the copies of the process that was cut off with the others': its
    // old values and the keys deleted during the cut must not spread back.
    wait_anti_entropy_rounds(
        &mut clients,
        &addrs,
        SETTLE_ROUNDS * VNODE_RING.vnodes as u64,
        |_| {},
    );
    check_every_key_through_each(&mut clients, &addrs, &data, &deleted, "after anti-entropy", &logs);
}
