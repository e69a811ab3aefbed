//! Real `chordkv node` processes on loopback: data survives joins and graceful leaves, the
//! ring heals after crashes and freezes, and the `chordkv` command behaves as documented.
//!
//! Run with `cargo build --bins && cargo test -p chordkv-tests`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use chordkv_client::{Client, RingReport};
use chordkv_core::rng::Rng;
use chordkv_harness::cluster::LocalCluster;
use chordkv_protocol::{in_half_open, Id};
use chordkv_tests::{
    check_all_keys, chordkv, cluster_spec, converge, join_one, leave_one, seed, start_cluster, start_spec,
    with_args, CliCluster, Clients, AVAILABLE, CONVERGE_TIMEOUT, NOTHING_LOST, REQUEST_TIMEOUT,
};

const KEYS: usize = 1_000;

/// Any index of `addrs` but `not`.
fn other_than(rng: &mut Rng, len: usize, not: usize) -> usize {
    let j = rng.below(len as u64 - 1) as usize;
    if j >= not {
        j + 1
    } else {
        j
    }
}

/// How many of `keys` each host of a consistent ring owns: key k belongs to the first position
/// n with id(k) in (predecessor(n), n], and so to n's host.
fn expected_owners(report: &RingReport, keys: &BTreeSet<Id>) -> BTreeMap<SocketAddr, u64> {
    let n = report.nodes.len();
    let mut owned = BTreeMap::new();
    for (i, node) in report.nodes.iter().enumerate() {
        let pred = &report.nodes[(i + n - 1) % n];
        let count = keys
            .iter()
            .filter(|k| in_half_open(*k, &pred.id, &node.id))
            .count() as u64;
        *owned.entry(node.addr.host).or_insert(0) += count;
    }
    owned
}

/// The live key count of every node, as each reports it.
fn key_counts(clients: &mut Clients, live: &[SocketAddr]) -> BTreeMap<SocketAddr, u64> {
    live.iter()
        .map(|&addr| {
            let info = clients.retrying(addr, "GET_INFO", |c| c.info());
            (addr, info.keys)
        })
        .collect()
}

/// Waits until every node holds exactly the keys it owns, and returns the counts.
fn wait_keys_at_owners(
    clients: &mut Clients,
    report: &RingReport,
    keys: &BTreeSet<Id>,
) -> BTreeMap<SocketAddr, u64> {
    let want = expected_owners(report, keys);
    let live = report.addrs();
    let mut last = BTreeMap::new();
    let mut settled = None;
    for _ in 0..(CONVERGE_TIMEOUT.as_millis() / 100) {
        last = key_counts(clients, &live);
        if last == want {
            settled = Some(last.clone());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    settled.unwrap_or_else(|| panic!("keys did not settle at their owners:\n want {want:?}\n have {last:?}"))
}

#[test]
fn keys_survive_a_join_and_a_graceful_leave() {
    let name = "join_and_leave";
    let mut rng = Rng::new(seed(name));
    // One copy per key: this test checks that every key lives exactly at its owner through the
    // handoffs (replication has its own tests).
    let mut cluster = start_spec(name, with_args(cluster_spec(name, 8), &["--replicas", "0"]));
    let mut clients = Clients::new();

    // Write through random nodes, read back through different ones.
    let addrs = cluster.addrs();
    let mut data = BTreeMap::new();
    for k in 0..KEYS {
        let key = format!("key-{k:04}");
        let value = format!("value-{k}-{:016x}", rng.next_u64());
        let writer = rng.below(addrs.len() as u64) as usize;
        clients.retrying(addrs[writer], &format!("PUT {key}"), |c| {
            c.put(key.clone(), value.clone())
        });
        let reader = other_than(&mut rng, addrs.len(), writer);
        let got = clients.retrying(addrs[reader], &format!("GET {key}"), |c| c.get(key.clone()));
        assert_eq!(got.value.as_deref(), Some(value.as_bytes()), "GET {key}");
        data.insert(key, value);
    }
    let key_ids: BTreeSet<Id> = data.keys().map(|k| Id::of_key(k.as_bytes())).collect();
    assert_eq!(key_ids.len(), KEYS);

    // A ninth node joins and takes over its range.
    let (ninth, report) = join_one(&mut cluster, 9);
    let counts = wait_keys_at_owners(&mut clients, &report, &key_ids);
    let ninth_addr = cluster.addr(ninth);
    if expected_owners(&report, &key_ids)[&ninth_addr] > 0 {
        assert!(counts[&ninth_addr] > 0, "the ninth node holds no key");
    } else {
        eprintln!("{name}: the ninth node's range happens to hold none of the keys");
    }
    check_all_keys(&mut clients, &mut rng, &cluster.live_addrs(), &data, NOTHING_LOST);

    // One node leaves gracefully and hands its keys to its successor.
    let victim = rng.below(9) as usize;
    let report = leave_one(name, &mut cluster, victim, 8);
    check_all_keys(&mut clients, &mut rng, &report.addrs(), &data, NOTHING_LOST);
    let counts = wait_keys_at_owners(&mut clients, &report, &key_ids);
    assert_eq!(counts.values().sum::<u64>(), KEYS as u64);
}

#[test]
fn ring_heals_after_a_crash_a_restart_and_a_freeze() {
    let name = "crash_restart_freeze";
    // A ring that routes around a crashed or frozen node by dropping it: `available`.
    let mut cluster: LocalCluster = start_spec(name, with_args(cluster_spec(name, 4), &AVAILABLE));
    let mut clients = Clients::new();

    cluster.kill(1).expect("kill node 1");
    assert!(!cluster.is_running(1));
    let report = converge(&mut cluster, "the ring routes around the crashed node");
    assert_eq!(report.nodes.len(), 3);

    cluster.restart(1).expect("restart node 1");
    assert!(cluster.is_running(1));
    let report = converge(&mut cluster, "the restarted node rejoins");
    assert_eq!(report.nodes.len(), 4);

    cluster.pause(2).expect("pause node 2");
    let report = converge(&mut cluster, "the ring routes around the frozen node");
    assert_eq!(report.nodes.len(), 3);
    cluster.resume(2).expect("resume node 2");
    let report = converge(&mut cluster, "the resumed node is back in the ring");
    assert_eq!(report.nodes.len(), 4);

    // The healed ring serves writes and reads through every node.
    let addrs = cluster.addrs();
    for (i, &addr) in addrs.iter().enumerate() {
        let key = format!("after-heal-{i}");
        clients.retrying(addr, "PUT", |c| c.put(key.clone(), "v"));
        let reader = addrs[(i + 1) % addrs.len()];
        let got = clients.retrying(reader, "GET", |c| c.get(key.clone()));
        assert_eq!(got.value.as_deref(), Some(&b"v"[..]));
    }
}

#[test]
fn the_chordkv_command() {
    let mut cluster = CliCluster::start("cli", &["--nodes", "3"]);
    let addrs = cluster.ready();
    assert_eq!(addrs.len(), 3, "{addrs:?}");
    let (a, b, c) = (addrs[0].as_str(), addrs[1].as_str(), addrs[2].as_str());

    let ok = |args: &[&str]| {
        let run = chordkv(args);
        assert_eq!(run.code(), Some(0), "chordkv {args:?}: {run:?}");
        run.stdout
    };
    assert_eq!(ok(&["put", "colour", "blue", "--node", a]), "ok\n");
    assert_eq!(ok(&["get", "colour", "--node", b]), "blue\n");
    // Values may start with a dash; the global timeout goes anywhere.
    assert_eq!(
        ok(&["put", "n", "-5", "--node", c, "--timeout-ms", "3000"]),
        "ok\n"
    );
    assert_eq!(ok(&["--timeout-ms", "3000", "get", "n", "--node", a]), "-5\n");
    assert_eq!(ok(&["del", "colour", "--node", c]), "deleted\n");

    for args in [["get", "colour", "--node", a], ["del", "colour", "--node", b]] {
        let run = chordkv(&args);
        assert_eq!(run.code(), Some(1), "{args:?}: {run:?}");
        assert_eq!(run.stderr, "not found\n", "{args:?}");
        assert_eq!(run.stdout, "", "{args:?}");
    }

    let json = ok(&["ring", "--json", "--node", b]);
    let ring: serde_json::Value = serde_json::from_str(&json).expect("ring --json is JSON");
    assert_eq!(ring["consistent"], true, "{json}");
    assert_eq!(ring["problems"].as_array().map(Vec::len), Some(0), "{json}");
    let nodes = ring["nodes"].as_array().expect("nodes");
    let listed: BTreeSet<&str> = nodes.iter().filter_map(|n| n["addr"].as_str()).collect();
    assert_eq!(listed, addrs.iter().map(String::as_str).collect(), "{json}");
    for node in nodes {
        assert_eq!(node["id"].as_str().map(str::len), Some(40), "{node}");
        assert_eq!(node["status"], "active", "{node}");
        assert!(node["predecessor"].is_string() && node["successor"].is_string());
        assert!(node["keys"].is_u64(), "{node}");
    }
    let table = ok(&["ring", "--node", c]);
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains("consistent: yes\n"), "{table}");
    assert_eq!(table.lines().count(), 1 + 3 + 1, "{table}");

    let stats = ok(&["stats", "--json", "--node", a]);
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("stats --json is JSON");
    assert!(stats.is_object(), "{stats}");
    // The plain listing shows the latency histogram as two percentiles, not 19 buckets.
    let plain = ok(&["stats", "--node", a]);
    assert!(!plain.contains("latency_le_us"), "{plain}");
    if stats["latency_count"].as_u64() > Some(0) {
        let p99 = plain.lines().find_map(|l| l.strip_prefix("latency_p99_us "));
        assert!(p99.is_some_and(|v| v.parse::<u64>().is_ok()), "{plain}");
    }

    // Errors are clear and exit non-zero.
    let run = chordkv(&["get", "k", "--node", "127.0.0.1:1"]);
    assert_eq!(run.code(), Some(1), "{run:?}");
    assert_eq!(
        run.stderr,
        "error: cannot reach 127.0.0.1:1: connection refused\n"
    );
    let run = chordkv(&["get", "k", "--node", "not-an-address"]);
    assert_eq!(run.code(), Some(1), "{run:?}");
    assert!(
        run.stderr
            .starts_with("error: invalid address 'not-an-address': "),
        "{run:?}"
    );
    // Forgetting an address that is no member (the ring is `consistent`: every member, up or
    // down, is listed) says so and forgets nothing.
    for dead in ["127.0.0.1:1", &format!("{a}#7")] {
        let run = chordkv(&["forget", "--node", a, dead]);
        assert_eq!(run.code(), Some(1), "{run:?}");
        assert!(run.stderr.contains("no node of the ring lists"), "{run:?}");
    }
    let json = ok(&["ring", "--json", "--node", a]);
    assert!(json.contains("\"consistent\":true"), "{json}");
    let run = chordkv(&["get", "k"]);
    assert_eq!(run.code(), Some(2), "a missing --node is a usage error: {run:?}");
    let run = chordkv(&["frobnicate"]);
    assert_eq!(run.code(), Some(2), "{run:?}");

    // SIGTERM stops every node gracefully and exits 0.
    let status = cluster.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "chordkv cluster: {status}; stderr:\n{}",
        cluster.stderr()
    );
    for addr in &addrs {
        let addr: SocketAddr = addr.parse().expect("an address");
        assert!(
            Client::connect(addr, REQUEST_TIMEOUT).is_err(),
            "the node at {addr} still answers after the cluster stopped"
        );
    }
    // Nothing more was printed on stdout after the ready line.
    assert!(cluster.stdout.recv_timeout(Duration::from_secs(1)).is_err());
}

/// `chordkv cluster` with a node that cannot start fails at once, naming it, instead of waiting
/// out its ready timeout and then counting ring positions as nodes. The port of node 1 is held
/// by another ring's node, which answers the readiness probes: only the process's exit tells.
#[test]
fn a_cluster_whose_node_cannot_listen_fails_naming_it() {
    let other = start_cluster("occupied", 1);
    let taken = other.addr(0);
    let base = (taken.port() - 1).to_string();
    let out = chordkv(&["cluster", "--nodes", "2", "--base-port", &base]);
    assert!(!out.status.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains("exited while the ring was forming")
            || out.stderr.contains("exited during start-up"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("already in use"), "{}", out.stderr);
}
