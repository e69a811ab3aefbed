//! `chordkv top` against real nodes, its stdout a pipe: the plain lines of each refresh name
//! every node with its keys, the rates show the requests sent while it ran, a node killed
//! with SIGKILL is a `down` row, not a failure of `top`, a host with vnodes is one row, and
//! SIGINT ends it with status 0.
//!
//! Run with `cargo build --bins && cargo test -p chordkv-tests --test top`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chordkv_core::rng::Rng;
use chordkv_harness::cluster::LocalCluster;
use chordkv_tests::{
    chordkv, chordkv_bin, cluster_spec, converge, one_at_a_time, seed, signal, start_spec, with_args,
    write_keys, ChildGuard, Clients, Run, COMMAND_TIMEOUT,
};

const KEYS: usize = 60;
const NODES: usize = 3;
/// Most GETs the driver thread sends while `top` runs (it stops earlier, when `top` exits).
const MAX_DRIVEN_GETS: usize = 1_000_000;

/// One refresh of the plain output: the summary's and each node row's `key=value` fields.
#[derive(Debug)]
struct Refresh {
    summary: BTreeMap<String, String>,
    rows: Vec<BTreeMap<String, String>>,
}

/// `key=value` words of a line after its time and kind.
fn fields(words: &[&str]) -> BTreeMap<String, String> {
    words
        .iter()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Splits `top`'s plain output into refreshes; panics on a line that is neither kind.
fn refreshes(stdout: &str) -> Vec<Refresh> {
    let mut out: Vec<Refresh> = Vec::new();
    for line in stdout.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(words.len() > 2, "short line: {line}");
        assert!(words[0].ends_with('Z'), "no UTC timestamp first: {line}");
        match words[1] {
            "ring" => out.push(Refresh {
                summary: fields(&words[2..]),
                rows: Vec::new(),
            }),
            "node" => out
                .last_mut()
                .expect("a node line after a ring line")
                .rows
                .push(fields(&words[2..])),
            _ => panic!("unexpected line: {line}"),
        }
    }
    out
}

fn number(row: &BTreeMap<String, String>, key: &str) -> Option<f64> {
    row.get(key).and_then(|v| v.parse().ok())
}

fn top(addr: SocketAddr, count: &str) -> Run {
    let addr = addr.to_string();
    chordkv(&["top", "--node", &addr, "--count", count, "--interval", "0.2"])
}

#[test]
fn top_shows_every_node_its_keys_and_the_requests_sent_meanwhile() {
    let _serial = one_at_a_time();
    let name = "top_rows";
    let cluster = start_spec(name, cluster_spec(name, NODES));
    let addrs = cluster.addrs();
    let mut clients = Clients::new();
    let data = write_keys(&mut clients, &mut Rng::new(seed(name)), &addrs, KEYS);

    // GETs through every node for as long as `top` runs.
    let done = Arc::new(AtomicBool::new(false));
    let driver = {
        let (done, addrs) = (Arc::clone(&done), addrs.clone());
        let keys: Vec<String> = data.keys().cloned().collect();
        std::thread::spawn(move || {
            let mut clients = Clients::new();
            let mut sent = 0;
            while sent < MAX_DRIVEN_GETS && !done.load(Ordering::Relaxed) {
                let addr = addrs[sent % addrs.len()];
                let key = keys[sent % keys.len()].clone();
                clients.retrying(addr, "GET", |c| c.get(key.clone()));
                sent += 1;
            }
            sent
        })
    };
    let run = top(addrs[0], "3");
    done.store(true, Ordering::Relaxed);
    let sent = driver.join().expect("the driver thread");
    assert!(run.status.success(), "top failed: {run:?}");
    assert!(sent > 0);

    let refreshes = refreshes(&run.stdout);
    assert_eq!(refreshes.len(), 3, "{}", run.stdout);
    for r in &refreshes {
        assert_eq!(r.summary["consistent"], "yes", "{}", run.stdout);
        assert_eq!(r.summary["hosts"], NODES.to_string());
        assert_eq!(r.rows.len(), NODES, "{}", run.stdout);
        let mut shown: Vec<&str> = r.rows.iter().map(|row| row["addr"].as_str()).collect();
        shown.sort();
        let mut expected: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        expected.sort();
        assert_eq!(shown, expected);
        assert!(
            r.rows.iter().all(|row| row["state"] == "active"),
            "{}",
            run.stdout
        );
        let sum = |key| {
            r.rows
                .iter()
                .map(|row| number(row, key).expect(key) as usize)
                .sum::<usize>()
        };
        // Each key has one primary; its copies are on the other nodes too.
        assert_eq!(sum("primary"), KEYS, "{}", run.stdout);
        assert!(sum("keys") >= KEYS, "{}", run.stdout);
    }
    // The first refresh has no interval; the others saw the GETs.
    assert!(refreshes[0].rows.iter().all(|row| row["ops/s"] == "-"));
    assert_eq!(refreshes[0].summary["ops/s"], "-");
    let busy = refreshes[1..]
        .iter()
        .filter(|r| number(&r.summary, "ops/s").is_some_and(|v| v > 0.0))
        .count();
    assert!(busy > 0, "no refresh saw the {sent} GETs:\n{}", run.stdout);
    let with_latency = refreshes[1..]
        .iter()
        .flat_map(|r| &r.rows)
        .filter(|row| number(row, "p99_ms").is_some_and(|ms| ms > 0.0))
        .count();
    assert!(with_latency > 0, "no p99 shown:\n{}", run.stdout);
}

#[test]
fn a_killed_node_is_a_down_row_and_top_goes_on() {
    let _serial = one_at_a_time();
    let name = "top_down";
    // The default partition policy (`consistent`) keeps a member that stops answering in the
    // ring: the walk lists it down at once, whatever the time since the kill.
    let mut cluster = start_spec(name, cluster_spec(name, NODES));
    let addrs = cluster.addrs();
    cluster.kill(2).expect("SIGKILL node 2");

    let run = top(addrs[0], "2");
    assert!(run.status.success(), "top failed: {run:?}");
    let refreshes = refreshes(&run.stdout);
    assert_eq!(refreshes.len(), 2, "{}", run.stdout);
    for r in &refreshes {
        assert_eq!(r.rows.len(), NODES, "{}", run.stdout);
        for row in &r.rows {
            let expected = if row["addr"] == addrs[2].to_string() {
                "down"
            } else {
                "active"
            };
            assert_eq!(row["state"], expected, "{}", run.stdout);
        }
        let dead = r
            .rows
            .iter()
            .find(|row| row["addr"] == addrs[2].to_string())
            .expect("row");
        assert_eq!(dead["keys"], "-");
    }
}

#[test]
fn a_host_with_vnodes_is_one_row() {
    let _serial = one_at_a_time();
    let name = "top_vnodes";
    let hosts = 2;
    let spec = with_args(cluster_spec(name, hosts), &["--vnodes", "4"]);
    let mut cluster = LocalCluster::start(spec).expect("start the cluster");
    converge(&mut cluster, "the ring of vnodes");
    let run = top(cluster.addr(0), "1");
    assert!(run.status.success(), "top failed: {run:?}");
    let refreshes = refreshes(&run.stdout);
    assert_eq!(refreshes.len(), 1, "{}", run.stdout);
    assert_eq!(refreshes[0].summary["nodes"], (hosts * 4).to_string());
    assert_eq!(refreshes[0].summary["hosts"], hosts.to_string());
    assert_eq!(refreshes[0].rows.len(), hosts, "{}", run.stdout);
}

#[test]
fn sigint_ends_top_with_status_0() {
    let _serial = one_at_a_time();
    let name = "top_sigint";
    let cluster = start_spec(name, cluster_spec(name, 1));
    let child = Command::new(chordkv_bin())
        .args(["top", "--node", &cluster.addr(0).to_string(), "--interval", "0.2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chordkv top");
    let mut top = ChildGuard::new(child);
    let stdout = top.child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    // Without --count it runs until told: wait for its first refresh, then interrupt it.
    let first = lines.next().expect("a first line").expect("utf-8");
    assert!(first.contains(" ring "), "{first}");
    signal(top.pid(), libc::SIGINT).expect("send SIGINT");
    let status = top.wait_timeout(COMMAND_TIMEOUT).expect("top exits on SIGINT");
    assert!(status.success(), "{status:?}");
}
