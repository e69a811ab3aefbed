//! Helpers for the integration tests in `tests/tests/`, which run the shipped `chordkv`
//! binary as real processes on loopback.
//!
//! Cargo builds another package's binary for an integration test only if asked, so run
//!
//! ```text
//! cargo build --bins && cargo test -p chordkv-tests
//! ```
//!
//! The binary is `$CHORDKV_BIN` if set, else `target/<profile>/chordkv` next to the test
//! executable. Every cluster uses free ports, so the tests run in parallel. Waits are bounded
//! polls, never timing assertions. Node logs go to `target/tmp/chordkv-tests/`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chordkv_client::{Client, ClientError, RingReport};
use chordkv_core::rng::Rng;
use chordkv_harness::cluster::{ClusterSpec, LocalCluster, NetworkMode};
use chordkv_protocol::{Id, NodeAddr};

/// Bound of every wait for the ring to converge or for data to settle.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of the retries of one client operation that fails with a retryable error.
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of each client request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound of one run of a client command of the CLI.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Arguments of every test node: a fast stabilize so that rings converge quickly, and one
/// ring position per process (`--vnodes 1`): the tests of other features count processes as
/// ring members; tests/tests/vnodes.rs and the tests that pass `--vnodes` run several.
pub const NODE_ARGS: [&str; 4] = ["--stabilize-ms", "100", "--vnodes", "1"];
/// Pause between two polls of the nodes' counters.
pub const POLL_PAUSE: Duration = Duration::from_millis(100);
/// Bound of the waits for anti-entropy to repair copies or collect tombstones.
pub const REPAIR_TIMEOUT: Duration = Duration::from_secs(90);
/// Anti-entropy rounds every node must complete after a fault before a check counts as
/// "after repair" ([`wait_anti_entropy_rounds`]): a round runs every 20 stabilize periods,
/// and at the first stabilize round after a change of predecessor or replicas.
pub const SETTLE_ROUNDS: u64 = 3;
/// The counters failure messages quote for every node ([`stats_table`]).
pub const QUOTED_STATS: [&str; 9] = [
    "keys",
    "keys_primary",
    "keys_replica",
    "anti_entropy_rounds",
    "anti_entropy_keys_repaired",
    "tombstones_collected",
    "failovers_served",
    "rpc_timeouts",
    "peers_failed",
];

/// The `chordkv` binary under test ([`chordkv_harness::cluster::chordkv_binary`]). Panics with
/// instructions when it has not been built.
pub fn chordkv_bin() -> PathBuf {
    chordkv_harness::cluster::chordkv_binary()
        .unwrap_or_else(|e| panic!("{e:#} (before `cargo test -p chordkv-tests`)"))
}

/// The repository's root (the parent of this crate's directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// A fresh directory for one test's logs: `target/tmp/chordkv-tests/<name>-<pid>-<n>`.
pub fn scratch_dir(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let bin = chordkv_bin();
    let target = bin
        .parent()
        .and_then(|profile| profile.parent())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = target.join("tmp").join("chordkv-tests").join(format!(
        "{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    dir
}

/// The spec of a test cluster: `nodes` nodes on free ports with [`NODE_ARGS`], logging to a
/// scratch directory named after the test.
pub fn cluster_spec(name: &str, nodes: usize) -> ClusterSpec {
    let mut spec = ClusterSpec::new(chordkv_bin(), nodes);
    spec.node_args = NODE_ARGS.iter().map(|s| s.to_string()).collect();
    spec.log_dir = Some(scratch_dir(name));
    spec
}

/// `spec` with the node arguments `extra` added after the ones it has; a flag of `extra`
/// that takes a value and is there already (`--vnodes 4` over [`NODE_ARGS`]' `--vnodes 1`)
/// replaces the old one.
pub fn with_args(mut spec: ClusterSpec, extra: &[&str]) -> ClusterSpec {
    for flag in extra.iter().filter(|a| a.starts_with("--")) {
        if let Some(i) = spec.node_args.iter().position(|a| a == flag) {
            if spec.node_args.get(i + 1).is_some_and(|v| !v.starts_with("--")) {
                spec.node_args.drain(i..i + 2);
            }
        }
    }
    spec.node_args.extend(extra.iter().map(|s| s.to_string()));
    spec
}

/// The spec of a test cluster ([`cluster_spec`]) of `nodes` nodes that keep every key on its
/// primary and the next two nodes (`--replicas 2`), with the node arguments `extra` besides.
pub fn replicated_spec(name: &str, nodes: usize, extra: &[&str]) -> ClusterSpec {
    with_args(with_args(cluster_spec(name, nodes), &["--replicas", "2"]), extra)
}

/// Arguments that make a ring drop a node that stops answering and serve on without it: the
/// partition policy `available`. The tests of re-replication onto the surviving nodes use it;
/// under the default `consistent` a node that stops answering stays a member until it returns
/// or is forgotten (see `tests/tests/faults.rs`).
pub const AVAILABLE: [&str; 2] = ["--partition-policy", "available"];

/// Starts a test cluster and waits until its ring is consistent.
pub fn start_cluster(name: &str, nodes: usize) -> LocalCluster {
    start_spec(name, cluster_spec(name, nodes))
}

/// Starts the cluster `spec` describes and waits until its ring is consistent.
pub fn start_spec(name: &str, spec: ClusterSpec) -> LocalCluster {
    let nodes = spec.nodes;
    let logs = spec.log_dir.clone().expect("set by cluster_spec");
    eprintln!("{name}: node logs in {}", logs.display());
    let mut cluster = LocalCluster::start(spec).expect("start the cluster");
    let report = cluster
        .wait_consistent(CONVERGE_TIMEOUT)
        .expect("the new ring converges");
    assert_eq!(report.nodes.len(), nodes);
    cluster
}

/// Waits at most [`CONVERGE_TIMEOUT`] until the ring of `cluster` is consistent and made of
/// exactly its live nodes, and returns it; panics naming `what`, the error and the logs.
pub fn converge(cluster: &mut LocalCluster, what: &str) -> RingReport {
    cluster
        .wait_consistent(CONVERGE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{what}: {e}; logs in {}", logs_of(cluster)))
}

/// Adds a node to `cluster` and waits until the ring is consistent with it ([`converge`]);
/// returns the new node's index and the ring. Panics when the node cannot be started or the
/// ring does not converge, and asserts that the ring has `nodes` nodes.
pub fn join_one(cluster: &mut LocalCluster, nodes: usize) -> (usize, RingReport) {
    let new = cluster.add_node().expect("add a node");
    let what = format!("the ring converges with the new node {}", cluster.addr(new));
    let ring = converge(cluster, &what);
    assert_eq!(ring.nodes.len(), nodes, "{what}");
    (new, ring)
}

/// Stops node `victim` of `cluster` gracefully (SIGTERM: it hands its keys over and leaves)
/// and waits until the ring is consistent without it ([`converge`]); returns the ring. Asserts
/// that the node left cleanly and that the ring has `nodes` nodes.
pub fn leave_one(name: &str, cluster: &mut LocalCluster, victim: usize, nodes: usize) -> RingReport {
    eprintln!("{name}: terminating node {victim} ({})", cluster.addr(victim));
    let stopped = cluster.terminate(victim).expect("terminate");
    assert!(
        stopped.is_clean(),
        "node {victim} did not leave cleanly: {stopped:?}"
    );
    let ring = converge(cluster, "the ring converges without the node that left");
    assert_eq!(ring.nodes.len(), nodes);
    ring
}

/// The test's RNG seed: `$CHORDKV_TEST_SEED`, else the clock. Printed, so a failure can be
/// replayed.
pub fn seed(name: &str) -> u64 {
    let seed = match std::env::var("CHORDKV_TEST_SEED") {
        Ok(s) => s.parse().expect("CHORDKV_TEST_SEED is a u64"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    };
    eprintln!("{name}: seed {seed} (replay with CHORDKV_TEST_SEED={seed})");
    seed
}

/// Polls `f` until it returns `Some`, for at most `timeout`; panics naming `what` after that.
pub fn poll_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {:.1} s waiting for {what}",
            timeout.as_secs_f64()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One connection per node, reconnected after an error that breaks it.
#[derive(Debug, Default)]
pub struct Clients {
    clients: BTreeMap<SocketAddr, Client>,
}

impl Clients {
    pub fn new() -> Clients {
        Clients::default()
    }

    /// Runs `op` on the connection to `addr`.
    pub fn with<T>(
        &mut self,
        addr: SocketAddr,
        op: impl FnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let client = match self.clients.entry(addr) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(Client::connect(addr, REQUEST_TIMEOUT)?)
            }
        };
        let result = op(client);
        if result.as_ref().is_err_and(|e| e.breaks_connection()) {
            self.clients.remove(&addr);
        }
        result
    }

    /// Runs `op` on `addr`, retrying retryable errors for at most [`RETRY_TIMEOUT`]; panics
    /// on any other error, naming `what`.
    pub fn retrying<T>(
        &mut self,
        addr: SocketAddr,
        what: &str,
        mut op: impl FnMut(&mut Client) -> Result<T, ClientError>,
    ) -> T {
        let deadline = Instant::now() + RETRY_TIMEOUT;
        loop {
            match self.with(addr, &mut op) {
                Ok(v) => return v,
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("{what} through {addr} failed: {e}"),
            }
        }
    }
}

/// Held by each test of a test binary for its whole run, so that the tests of that binary
/// (each starting its own cluster) run one at a time on a 2-core machine.
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A test that panicked poisons the lock; the next one may run all the same.
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The value of counter `name` in a node's stats (`GET_STATS`); panics when the node reports
/// no such counter.
pub fn counter(stats: &[(String, u64)], name: &str) -> u64 {
    stats
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("the node reports no counter {name:?}: {stats:?}"))
}

/// Counter `name` of the node at `addr` (one `GET_STATS`), or why it did not answer; panics
/// when the node reports no such counter.
pub fn try_stat(clients: &mut Clients, addr: SocketAddr, name: &str) -> Result<u64, ClientError> {
    clients.with(addr, Client::stats).map(|s| counter(&s, name))
}

/// Counter `name` of the node at `addr`, retrying retryable errors ([`Clients::retrying`]);
/// panics on any other error, or when the node reports no such counter.
pub fn stat(clients: &mut Clients, addr: SocketAddr, name: &str) -> u64 {
    clients.retrying(addr, "GET_STATS", |c| c.stats().map(|s| counter(&s, name)))
}

/// Counter `name` of every node of `addrs` ([`stat`]: retrying, panicking as it does).
pub fn stat_of_each(clients: &mut Clients, addrs: &[SocketAddr], name: &str) -> BTreeMap<SocketAddr, u64> {
    addrs.iter().map(|&a| (a, stat(clients, a, name))).collect()
}

/// The stats of every node of `addrs` (one `GET_STATS` each), or a description of the first
/// node that did not answer.
pub fn all_stats(
    clients: &mut Clients,
    addrs: &[SocketAddr],
) -> Result<BTreeMap<SocketAddr, Vec<(String, u64)>>, String> {
    addrs
        .iter()
        .map(|&addr| match clients.with(addr, Client::stats) {
            Ok(stats) => Ok((addr, stats)),
            Err(e) => Err(format!("stats of {addr}: {e}")),
        })
        .collect()
}

/// Counter `name` summed over the nodes of `addrs` ([`all_stats`]), or why not every node
/// answered; panics when a node reports no such counter.
pub fn stat_sum(clients: &mut Clients, addrs: &[SocketAddr], name: &str) -> Result<u64, String> {
    Ok(all_stats(clients, addrs)?
        .values()
        .map(|s| counter(s, name))
        .sum())
}

/// Polls, for at most `timeout`, until counter `name` summed over the nodes of `addrs`
/// ([`stat_sum`]) is `want`; returns how long that took. Panics after `timeout` with the last
/// sum and the [`QUOTED_STATS`] of every node.
pub fn wait_stat_sum(
    clients: &mut Clients,
    addrs: &[SocketAddr],
    name: &str,
    want: u64,
    timeout: Duration,
) -> Duration {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < timeout {
        match stat_sum(clients, addrs, name) {
            Ok(sum) if sum == want => return start.elapsed(),
            Ok(sum) => last = format!("sum {sum}"),
            Err(e) => last = e,
        }
        std::thread::sleep(POLL_PAUSE);
    }
    let hint = if name == "keys" && last.strip_prefix("sum ").and_then(|n| n.parse::<u64>().ok()) > Some(want)
    {
        "; more copies than keys x copies per key: some node holds copies outside its preference \
         list (a peer presumed dead, see rpc_timeouts and peers_failed, makes primaries replicate \
         to the next node instead, and nothing removes those copies later)"
    } else {
        ""
    };
    panic!(
        "{name} summed over {} nodes did not reach {want} within {:.0} s (last: {last}){hint}; per node:{}",
        addrs.len(),
        timeout.as_secs_f64(),
        stats_table(clients, addrs, &QUOTED_STATS)
    );
}

/// Waits until every node of `addrs` has completed `rounds` anti-entropy rounds more than it
/// had when this was called (every range has been compared since the fault), calling
/// `each_poll` before every look; panics after [`REPAIR_TIMEOUT`]. A process of several vnodes
/// reports the rounds of all its positions summed.
pub fn wait_anti_entropy_rounds(
    clients: &mut Clients,
    addrs: &[SocketAddr],
    rounds: u64,
    mut each_poll: impl FnMut(&mut Clients),
) {
    let start = stat_of_each(clients, addrs, "anti_entropy_rounds");
    let deadline = Instant::now() + REPAIR_TIMEOUT;
    loop {
        each_poll(clients);
        let now = stat_of_each(clients, addrs, "anti_entropy_rounds");
        if start.iter().all(|(a, s)| now[a] >= s + rounds) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not every node ran {rounds} anti-entropy rounds within {:.0} s: before {start:?}, \
             now {now:?}",
            REPAIR_TIMEOUT.as_secs_f64()
        );
        std::thread::sleep(POLL_PAUSE);
    }
}

/// Polls, for at most [`CONVERGE_TIMEOUT`], until some node of `live` presumes a ring member
/// down (its `members_down` gauge: a neighbour stopped answering its RPCs); returns how long
/// that took. Panics with the [`QUOTED_STATS`] of every node after that.
pub fn wait_failure_detected(clients: &mut Clients, live: &[SocketAddr]) -> Duration {
    let start = Instant::now();
    while start.elapsed() < CONVERGE_TIMEOUT {
        if stat_sum(clients, live, "members_down").is_ok_and(|down| down > 0) {
            return start.elapsed();
        }
        std::thread::sleep(POLL_PAUSE);
    }
    panic!(
        "no node of {live:?} presumed a member down within {:.0} s; per node:{}",
        CONVERGE_TIMEOUT.as_secs_f64(),
        stats_table(clients, live, &QUOTED_STATS)
    );
}

/// Counters `quoted` of every node of `addrs`, one line each, for failure messages.
pub fn stats_table(clients: &mut Clients, addrs: &[SocketAddr], quoted: &[&str]) -> String {
    let mut out = String::new();
    for &addr in addrs {
        let line = match clients.with(addr, Client::stats) {
            Ok(stats) => quoted
                .iter()
                .map(|name| format!("{name}={}", counter(&stats, name)))
                .collect::<Vec<_>>()
                .join(" "),
            Err(e) => format!("no answer: {e}"),
        };
        out.push_str(&format!("\n  {addr}: {line}"));
    }
    out
}

/// Writes `count` keys (`key-00000`, `key-00001`...), each with a random value and through a
/// random node of `addrs`, retrying retryable errors ([`Clients::retrying`], which panics on
/// any other); returns them with their values.
pub fn write_keys(
    clients: &mut Clients,
    rng: &mut Rng,
    addrs: &[SocketAddr],
    count: usize,
) -> BTreeMap<String, String> {
    let mut data = BTreeMap::new();
    for k in 0..count {
        let key = format!("key-{k:05}");
        let value = format!("value-{k}-{:016x}", rng.next_u64());
        let addr = addrs[rng.below(addrs.len() as u64) as usize];
        clients.retrying(addr, &format!("PUT {key}"), |c| c.put(key.clone(), value.clone()));
        data.insert(key, value);
    }
    data
}

/// What a GET of `key` of `data` should find: nothing for the keys in `lost`, else its value.
pub fn expected_value<'a>(
    data: &'a BTreeMap<String, String>,
    lost: &BTreeSet<String>,
    key: &str,
) -> Option<&'a [u8]> {
    if lost.contains(key) {
        None
    } else {
        Some(data[key].as_bytes())
    }
}

/// No key lost: the `lost` of [`check_all_keys`] when every key must read back with its value.
pub const NOTHING_LOST: &BTreeSet<String> = &BTreeSet::new();

/// Reads every key of `data` once through a random node of `live` (retrying only failed
/// requests) and asserts it finds what it should ([`expected_value`]: not found for the keys
/// in `lost`, else its value).
pub fn check_all_keys(
    clients: &mut Clients,
    rng: &mut Rng,
    live: &[SocketAddr],
    data: &BTreeMap<String, String>,
    lost: &BTreeSet<String>,
) {
    for key in data.keys() {
        let addr = live[rng.below(live.len() as u64) as usize];
        let got = clients.retrying(addr, &format!("GET {key}"), |c| c.get(key.clone()));
        assert_eq!(
            got.value.as_deref(),
            expected_value(data, lost, key),
            "GET {key} through {addr} (version {})",
            got.version
        );
    }
}

/// Overwrites or deletes `ops` keys of `data` picked at random (about one in three deleted),
/// each through a random node of `entries`, retrying retryable errors ([`Clients::retrying`],
/// which panics on any other): the acknowledged value goes to `data`, an acknowledged delete
/// to `deleted` (which a later write of the key takes it out of again). Returns how many
/// writes and deletes were acknowledged.
pub fn overwrite_and_delete(
    clients: &mut Clients,
    rng: &mut Rng,
    entries: &[SocketAddr],
    data: &mut BTreeMap<String, String>,
    deleted: &mut BTreeSet<String>,
    ops: usize,
) -> (usize, usize) {
    let keys: Vec<String> = data.keys().cloned().collect();
    let (mut puts, mut dels) = (0, 0);
    for op in 0..ops {
        let key = keys[rng.below(keys.len() as u64) as usize].clone();
        let addr = entries[rng.below(entries.len() as u64) as usize];
        if rng.below(3) == 0 {
            clients.retrying(addr, &format!("DEL {key}"), |c| c.delete(key.clone()));
            deleted.insert(key);
            dels += 1;
        } else {
            let value = format!("{key}-overwrite-{op}-{:016x}", rng.next_u64());
            clients.retrying(addr, &format!("PUT {key}"), |c| c.put(key.clone(), value.clone()));
            deleted.remove(&key);
            data.insert(key, value);
            puts += 1;
        }
    }
    (puts, dels)
}

/// Reads every key of `data` through every node of `entries` (retrying only failed requests)
/// and asserts that each read finds its last acknowledged value ([`expected_value`]: nothing
/// for the keys in `deleted`): no acknowledged write lost, no delete undone, no stale read,
/// whichever node is asked. The failure counts the wrong reads, quotes the first ten and
/// names `when` and `logs`.
pub fn check_every_key_through_each(
    clients: &mut Clients,
    entries: &[SocketAddr],
    data: &BTreeMap<String, String>,
    deleted: &BTreeSet<String>,
    when: &str,
    logs: &str,
) {
    let mut wrong = Vec::new();
    for key in data.keys() {
        let want = expected_value(data, deleted, key);
        for &addr in entries {
            let got = clients.retrying(addr, &format!("GET {key} {when}"), |c| c.get(key.clone()));
            if got.value.as_deref() != want {
                wrong.push(format!(
                    "GET {key} through {addr}: {:?} (version {}), expected {:?}",
                    got.value.as_deref().map(String::from_utf8_lossy),
                    got.version,
                    want.map(String::from_utf8_lossy)
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{when}: {} of {} reads did not find the last acknowledged value ({} keys deleted); the \
         first: {:#?}; logs in {logs}",
        wrong.len(),
        data.len() * entries.len(),
        deleted.len(),
        &wrong[..wrong.len().min(10)]
    );
}

/// The shape of a ring of processes with virtual nodes: `processes` processes of `vnodes`
/// ring positions each (`--vnodes`), each key kept on `replicas + 1` distinct processes
/// (`--replicas`: the preference list of distinct hosts), loaded with `keys` keys.
#[derive(Clone, Copy, Debug)]
pub struct VnodeRing {
    pub processes: usize,
    pub vnodes: usize,
    pub replicas: usize,
    pub keys: usize,
}

impl VnodeRing {
    /// Copies of each key.
    pub fn copies(&self) -> usize {
        self.replicas + 1
    }
}

/// A ring of processes with vnodes ([`loaded_ring`]), converged, with its keys written and
/// every copy of each stored.
pub struct LoadedRing {
    pub rng: Rng,
    pub cluster: LocalCluster,
    /// The converged ring, every position of every process in it.
    pub ring: RingReport,
    /// The processes' addresses, by index in `cluster`.
    pub addrs: Vec<SocketAddr>,
    pub clients: Clients,
    /// Every key written, with its value.
    pub data: BTreeMap<String, String>,
}

/// Starts `shape.processes` `chordkv node` processes of `shape.vnodes` vnodes and
/// `shape.replicas` replicas ([`cluster_spec`], in `network`), waits until the ring converges
/// with every position, writes `shape.keys` keys through random processes ([`write_keys`], the
/// RNG seeded by [`seed`]) and waits until every copy of each is stored.
pub fn loaded_ring(name: &str, shape: VnodeRing, network: NetworkMode) -> LoadedRing {
    let mut rng = Rng::new(seed(name));
    let mut spec = with_args(
        cluster_spec(name, shape.processes),
        &[
            "--vnodes",
            &shape.vnodes.to_string(),
            "--replicas",
            &shape.replicas.to_string(),
        ],
    );
    spec.network = network;
    eprintln!(
        "{name}: {shape:?}; node logs in {}",
        spec.log_dir
            .as_deref()
            .unwrap_or(std::path::Path::new(""))
            .display()
    );
    let mut cluster = LocalCluster::start(spec).expect("start the cluster");
    let ring = converge(&mut cluster, "the ring of processes with vnodes converges");
    assert_eq!(
        ring.nodes.len(),
        shape.processes * shape.vnodes,
        "every vnode is a ring position"
    );
    let addrs = cluster.addrs();
    let mut clients = Clients::new();
    let data = write_keys(&mut clients, &mut rng, &addrs, shape.keys);
    wait_stat_sum(
        &mut clients,
        &addrs,
        "keys",
        (shape.copies() * shape.keys) as u64,
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

/// The ring positions of `ring` (address and id), for comparing a ring before and after a
/// fault.
pub fn positions(ring: &RingReport) -> BTreeSet<(NodeAddr, Id)> {
    ring.nodes.iter().map(|n| (n.addr, n.id)).collect()
}

/// Polls, for at most `timeout`, until the ring of `cluster` is consistent, made of
/// exactly its live processes, with exactly the positions `want`, and no member down: none
/// that the walk could not reach, and none that a process presumes down (`members_down`; the
/// walk from this process reaches nodes that their peers may not, across a partition).
/// Returns the ring; panics naming `what`, the last look and the logs.
pub fn converge_to(
    cluster: &mut LocalCluster,
    want: &BTreeSet<(NodeAddr, Id)>,
    timeout: Duration,
    what: &str,
) -> RingReport {
    let mut clients = Clients::new();
    let deadline = Instant::now() + timeout;
    loop {
        let last = match cluster.wait_consistent(Duration::ZERO) {
            Ok(ring) if ring.down.is_empty() && positions(&ring) == *want => {
                let live = cluster.live_addrs();
                match stat_of_each_once(&mut clients, &live, "members_down") {
                    Ok(down) if down.values().all(|&d| d == 0) => return ring,
                    Ok(down) => format!("consistent, but members presumed down per process: {down:?}"),
                    Err(e) => e,
                }
            }
            Ok(ring) => {
                let got = positions(&ring);
                format!(
                    "consistent, but down {:?}; positions missing {:?}; unexpected {:?}",
                    ring.down,
                    want.difference(&got).collect::<Vec<_>>(),
                    got.difference(want).collect::<Vec<_>>()
                )
            }
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not within {:.0} s; last: {last}; logs in {}",
            timeout.as_secs_f64(),
            logs_of(cluster)
        );
        std::thread::sleep(POLL_PAUSE);
    }
}

/// Counter `name` of every node of `addrs` (one `GET_STATS` each, no retry), or a description
/// of the first node that did not answer.
fn stat_of_each_once(
    clients: &mut Clients,
    addrs: &[SocketAddr],
    name: &str,
) -> Result<BTreeMap<SocketAddr, u64>, String> {
    Ok(all_stats(clients, addrs)?
        .into_iter()
        .map(|(a, s)| (a, counter(&s, name)))
        .collect())
}

/// The hosts holding `key` in the consistent ring `ring`, in ring order: its primary's, the
/// first position whose id is at or after the key's id (wrapping), then the hosts of the
/// following positions, each host once (Dynamo's preference list of distinct machines), up
/// to `copies` (all hosts when the ring has fewer).
pub fn preference_list(ring: &RingReport, key: &[u8], copies: usize) -> Vec<SocketAddr> {
    let n = ring.nodes.len();
    let id = Id::of_key(key);
    let primary = ring.nodes.partition_point(|node| node.id < id) % n;
    let mut hosts: Vec<SocketAddr> = Vec::new();
    for j in 0..n {
        let host = ring.nodes[(primary + j) % n].addr.host;
        if hosts.len() < copies && !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    hosts
}

/// The index in `cluster` of the node at `addr`; panics when no node of it has that address.
pub fn index_of(cluster: &LocalCluster, addr: SocketAddr) -> usize {
    cluster
        .addrs()
        .iter()
        .position(|a| *a == addr)
        .unwrap_or_else(|| panic!("{addr} is not a node of the cluster"))
}

/// Where the node logs of `cluster` are, for failure messages.
pub fn logs_of(cluster: &LocalCluster) -> String {
    cluster
        .spec()
        .log_dir
        .as_ref()
        .map(|d| d.display().to_string())
        .unwrap_or_default()
}

/// A child process that is stopped when dropped (SIGTERM, then SIGKILL after 10 s), so a
/// failing test leaves nothing behind.
#[derive(Debug)]
pub struct ChildGuard {
    pub child: Child,
}

impl ChildGuard {
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = signal(self.child.id(), SIGTERM);
            if self.wait_timeout(Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

pub const SIGTERM: i32 = 15;

/// Sends signal `sig` to process `pid` with `kill(1)` (this crate has no libc dependency).
pub fn signal(pid: u32, sig: i32) -> std::io::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("kill -{sig} {pid}: {status}")))
    }
}

/// Reads lines from `reader` on a thread; the receiver yields them as they come.
pub fn lines_of(reader: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A `chordkv cluster` command run by a test, stopped when dropped ([`ChildGuard`]).
#[derive(Debug)]
pub struct CliCluster {
    pub process: ChildGuard,
    /// The lines it prints on stdout, as they come ([`lines_of`]).
    pub stdout: mpsc::Receiver<String>,
    /// The file its stderr goes to.
    pub stderr_path: PathBuf,
}

impl CliCluster {
    /// Runs `chordkv cluster ARGS... NODE_ARGS... --log-dir DIR`, DIR a fresh scratch directory
    /// named after `name` ([`scratch_dir`]) which also gets its stderr (`cluster.stderr`).
    /// Panics when the command cannot be started.
    pub fn start(name: &str, args: &[&str]) -> CliCluster {
        let logs = scratch_dir(name);
        let stderr_path = logs.join("cluster.stderr");
        let child = Command::new(chordkv_bin())
            .arg("cluster")
            .args(args)
            .args(NODE_ARGS)
            .arg("--log-dir")
            .arg(&logs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("start chordkv cluster");
        let mut process = ChildGuard::new(child);
        let stdout = lines_of(process.child.stdout.take().expect("piped"));
        CliCluster {
            process,
            stdout,
            stderr_path,
        }
    }

    /// What it has printed on stderr so far (empty if that cannot be read).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The next line it prints on stdout, waiting at most [`CONVERGE_TIMEOUT`]; panics quoting
    /// its stderr when none comes.
    pub fn next_line(&self) -> String {
        self.stdout.recv_timeout(CONVERGE_TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "no line from chordkv cluster ({e}); its stderr:\n{}",
                self.stderr()
            )
        })
    }

    /// The addresses of its next line, which must be its ready line (`ready: ADDR ADDR...`);
    /// panics when that line does not come ([`CliCluster::next_line`]) or is another.
    pub fn ready(&self) -> Vec<String> {
        self.labelled("ready")
    }

    /// The addresses of its next line, which must be a `LABEL: ADDR ADDR...` line (`resp`,
    /// `metrics`: printed before the ready line); panics when it is another.
    pub fn addresses(&self, label: &str) -> Vec<SocketAddr> {
        self.labelled(label)
            .iter()
            .map(|a| {
                a.parse()
                    .unwrap_or_else(|e| panic!("{label}: {a:?} is no address: {e}"))
            })
            .collect()
    }

    /// The words after `LABEL: ` of its next line; panics when the line has another label.
    fn labelled(&self, label: &str) -> Vec<String> {
        let line = self.next_line();
        line.strip_prefix(&format!("{label}: "))
            .unwrap_or_else(|| panic!("not a {label} line: {line:?}"))
            .split(' ')
            .map(String::from)
            .collect()
    }

    /// Sends it SIGTERM and waits at most [`CONVERGE_TIMEOUT`] for it to exit; returns how it
    /// exited. Panics when the signal cannot be sent or it does not exit in time.
    pub fn stop(&mut self) -> ExitStatus {
        signal(self.process.pid(), SIGTERM).expect("SIGTERM the cluster");
        self.process.wait_timeout(CONVERGE_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "chordkv cluster did not exit after SIGTERM; stderr:\n{}",
                self.stderr()
            )
        })
    }
}

/// What a finished `chordkv` command printed.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Runs `chordkv ARGS...` to completion (killing it after [`COMMAND_TIMEOUT`]).
pub fn chordkv(args: &[&str]) -> Run {
    let mut child = Command::new(chordkv_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run chordkv");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut guard = ChildGuard::new(child);
    let status = guard
        .wait_timeout(COMMAND_TIMEOUT)
        .unwrap_or_else(|| panic!("`chordkv {}` did not finish", args.join(" ")));
    Run {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

pub use chordkv_harness::redis_server::{RedisServer, REDIS_START_TIMEOUT};

/// The spec of a test cluster whose nodes keep their keys in `redis` (all sharing it, each
/// under its own namespace).
pub fn redis_cluster_spec(name: &str, nodes: usize, redis: &RedisServer) -> ClusterSpec {
    let mut spec = cluster_spec(name, nodes);
    spec.node_args.extend(["--store".to_string(), redis.url()]);
    spec
}
