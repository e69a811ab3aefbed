//! Replication with real `chordkv node` processes on loopback: every key lives on its primary
//! and the next two nodes (`--replicas 2`), so two simultaneous crashes lose nothing, three
//! adjacent crashes lose exactly the keys only they held, anti-entropy restores the missing
//! copies, a restarted node gets its ranges back, and `--ack one` still ends with three copies.
//!
//! Every wait is a bounded poll; the times printed are for reading, never asserted. The tests
//! of this file run one at a time: four clusters of debug binaries at once on a small machine
//! can starve a node past the 400 ms RPC timeout, and a node wrongly presumed dead changes
//! where copies go (see `stand_in_copies_are_dropped_when_a_paused_replica_returns`).
//!
//! Run with `cargo build --workspace --bins && cargo test -p chordkv-tests --test replication`
//! (add `-- --nocapture` to see the seeds and the times).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chordkv_client::RingReport;
use chordkv_core::rng::Rng;
use chordkv_harness::cluster::LocalCluster;
use chordkv_tests::{
    all_stats, check_all_keys, converge, counter, expected_value, index_of, one_at_a_time, preference_list,
    replicated_spec, seed, start_spec, stat_sum, stats_table, wait_stat_sum, write_keys, Clients, AVAILABLE,
    NOTHING_LOST, POLL_PAUSE, QUOTED_STATS,
};

/// Copies of every key: the primary and `--replicas 2`.
const COPIES: u64 = 3;
/// Bound of the wait for every key to be readable again after crashes.
const READABLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of the wait for anti-entropy to restore copies or for counters to settle.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts `nodes` nodes with two replicas per key and `extra` node arguments
/// ([`replicated_spec`]), writes `keys` keys through random nodes ([`write_keys`]) and waits
/// until every key has its [`COPIES`] copies (panicking after [`REPAIR_TIMEOUT`]). Returns the
/// cluster, its clients, the keys written with their values, and how long after the last write
/// the last copy was in place.
fn start_loaded(
    name: &str,
    rng: &mut Rng,
    nodes: usize,
    extra: &[&str],
    keys: usize,
) -> (LocalCluster, Clients, BTreeMap<String, String>, Duration) {
    let cluster = start_spec(name, replicated_spec(name, nodes, extra));
    let mut clients = Clients::new();
    let addrs = cluster.addrs();
    let data = write_keys(&mut clients, rng, &addrs, keys);
    let took = wait_stat_sum(&mut clients, &addrs, "keys", COPIES * keys as u64, REPAIR_TIMEOUT);
    (cluster, clients, data, took)
}

/// How many of `keys` each node of `ring` should hold.
fn expected_holdings<'a>(
    ring: &RingReport,
    keys: impl IntoIterator<Item = &'a String>,
) -> BTreeMap<SocketAddr, u64> {
    let mut held: BTreeMap<SocketAddr, u64> = ring.nodes.iter().map(|n| (n.addr.host, 0)).collect();
    for key in keys {
        for addr in preference_list(ring, key.as_bytes(), COPIES as usize) {
            *held.get_mut(&addr).expect("a ring node") += 1;
        }
    }
    held
}

/// Polls until every node of `ring` holds exactly the keys its preference lists give it.
fn wait_expected_holdings(clients: &mut Clients, ring: &RingReport, want: &BTreeMap<SocketAddr, u64>) {
    let addrs = ring.addrs();
    let start = Instant::now();
    let mut last = BTreeMap::new();
    while start.elapsed() < REPAIR_TIMEOUT {
        if let Ok(stats) = all_stats(clients, &addrs) {
            last = stats.iter().map(|(a, s)| (*a, counter(s, "keys"))).collect();
            if last == *want {
                return;
            }
        }
        std::thread::sleep(POLL_PAUSE);
    }
    panic!(
        "the nodes do not hold the keys their preference lists give them:\n want {want:?}\n have {last:?}"
    );
}

/// Reads that did not (yet) find what they should, while polling.
#[derive(Debug, Default)]
struct Misses {
    /// Reads that failed (timeouts, unavailable owners...).
    errors: u64,
    /// Reads that answered with another value, or with none.
    wrong: u64,
    /// The last few of either, to quote.
    examples: Vec<String>,
}

impl Misses {
    fn note(&mut self, what: String) {
        if self.examples.len() >= 5 {
            self.examples.remove(0);
        }
        self.examples.push(what);
    }
}

impl std::fmt::Display for Misses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} failed reads, {} wrong answers on the way",
            self.errors, self.wrong
        )?;
        if !self.examples.is_empty() {
            write!(f, ", the last: {:?}", self.examples)?;
        }
        Ok(())
    }
}

/// Polls until every key of `data` reads back as expected (its value, or not found for the
/// keys in `lost`) through a node picked by `via`, each key until it does once; returns the
/// misses seen on the way.
fn wait_readable(
    clients: &mut Clients,
    data: &BTreeMap<String, String>,
    lost: &BTreeSet<String>,
    timeout: Duration,
    mut via: impl FnMut() -> SocketAddr,
) -> Misses {
    let start = Instant::now();
    let mut pending: Vec<&String> = data.keys().collect();
    let mut misses = Misses::default();
    loop {
        let mut still = Vec::new();
        for key in pending {
            let addr = via();
            let want = expected_value(data, lost, key);
            match clients.with(addr, |c| c.get(key.clone())) {
                Ok(got) if got.value.as_deref() == want => {}
                Ok(got) => {
                    misses.wrong += 1;
                    misses.note(format!(
                        "GET {key} through {addr} found {:?} (version {})",
                        got.value.as_deref().map(String::from_utf8_lossy),
                        got.version
                    ));
                    still.push(key);
                }
                Err(e) => {
                    misses.errors += 1;
                    misses.note(format!("GET {key} through {addr}: {e}"));
                    still.push(key);
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            return misses;
        }
        assert!(
            start.elapsed() < timeout,
            "{} keys did not read back as expected within {:.0} s, e.g. {:?}; {misses}",
            pending.len(),
            timeout.as_secs_f64(),
            &pending[..pending.len().min(10)]
        );
        std::thread::sleep(POLL_PAUSE);
    }
}

/// Picks `count` distinct indices below `len`.
fn pick_distinct(rng: &mut Rng, len: usize, count: usize) -> Vec<usize> {
    let mut picked = BTreeSet::new();
    while picked.len() < count {
        picked.insert(rng.below(len as u64) as usize);
    }
    picked.into_iter().collect()
}

#[test]
fn two_simultaneous_kills_lose_nothing_and_copies_are_restored() {
    // Copies restored onto the surviving nodes: the partition policy `available`.
    const KEYS: usize = 2_000;
    let _serial = one_at_a_time();
    let name = "two_kills";
    let mut rng = Rng::new(seed(name));
    let (mut cluster, mut clients, data, _) = start_loaded(name, &mut rng, 8, &AVAILABLE, KEYS);
    let addrs = cluster.addrs();

    let victims = pick_distinct(&mut rng, addrs.len(), 2);
    let victim_addrs: Vec<SocketAddr> = victims.iter().map(|&i| addrs[i]).collect();
    eprintln!("{name}: killing nodes {victims:?} ({victim_addrs:?}) at once");
    let killed_at = Instant::now();
    for &v in &victims {
        cluster.kill(v).expect("kill");
    }
    let live = cluster.live_addrs();

    let misses = wait_readable(&mut clients, &data, NOTHING_LOST, READABLE_TIMEOUT, || {
        live[rng.below(live.len() as u64) as usize]
    });
    eprintln!(
        "{name}: kill -> all {KEYS} keys readable: {:.2} s ({misses})",
        killed_at.elapsed().as_secs_f64()
    );

    let wait = REPAIR_TIMEOUT.saturating_sub(killed_at.elapsed());
    wait_stat_sum(&mut clients, &live, "keys", COPIES * KEYS as u64, wait);
    eprintln!(
        "{name}: kill -> {} copies restored: {:.2} s",
        COPIES * KEYS as u64,
        killed_at.elapsed().as_secs_f64()
    );

    let ring = converge(&mut cluster, "the ring of 6 converges");
    assert_eq!(ring.nodes.len(), 6);
    wait_stat_sum(&mut clients, &live, "keys_primary", KEYS as u64, REPAIR_TIMEOUT);
    wait_expected_holdings(&mut clients, &ring, &expected_holdings(&ring, data.keys()));
    check_all_keys(&mut clients, &mut rng, &live, &data, NOTHING_LOST);
    eprintln!(
        "{name}: per node:{}",
        stats_table(&mut clients, &live, &QUOTED_STATS)
    );
}

#[test]
fn three_adjacent_kills_lose_exactly_the_keys_they_all_held() {
    const KEYS: usize = 2_000;
    let _serial = one_at_a_time();
    let name = "three_adjacent_kills";
    let mut rng = Rng::new(seed(name));
    let (mut cluster, mut clients, data, _) = start_loaded(name, &mut rng, 8, &AVAILABLE, KEYS);

    // The keys whose three holders are exactly the three adjacent nodes about to die are those
    // whose primary is the first of them.
    let ring = converge(&mut cluster, "the ring of 8 is consistent");
    let n = ring.nodes.len();
    assert_eq!(n, 8);
    let run_of_three = |first: usize| -> (BTreeSet<SocketAddr>, BTreeSet<String>) {
        let dying: BTreeSet<SocketAddr> = (0..3).map(|j| ring.nodes[(first + j) % n].addr.host).collect();
        let doomed = data
            .keys()
            .filter(|k| {
                preference_list(&ring, k.as_bytes(), COPIES as usize)
                    .into_iter()
                    .collect::<BTreeSet<_>>()
                    == dying
            })
            .cloned()
            .collect();
        (dying, doomed)
    };
    // A random run of three adjacent nodes among those that hold some key alone (a node whose
    // range is tiny may be the primary of none of the keys, and its run would test nothing).
    let mut runs: Vec<_> = (0..n)
        .map(run_of_three)
        .filter(|(_, doomed)| !doomed.is_empty())
        .collect();
    assert!(
        !runs.is_empty(),
        "no run of three adjacent nodes holds a key alone"
    );
    let (dying, doomed) = runs.swap_remove(rng.below(runs.len() as u64) as usize);
    let victims: Vec<usize> = dying.iter().map(|&a| index_of(&cluster, a)).collect();
    let victim_addrs: Vec<SocketAddr> = victims.iter().map(|&i| cluster.addr(i)).collect();
    eprintln!(
        "{name}: killing adjacent nodes {victims:?} ({victim_addrs:?}) at once; {} of {KEYS} keys \
         are held by them alone",
        doomed.len()
    );
    let killed_at = Instant::now();
    for &v in &victims {
        cluster.kill(v).expect("kill");
    }
    let ring = converge(&mut cluster, "the ring of 5 converges");
    assert_eq!(ring.nodes.len(), 5);
    let live = ring.addrs();

    let misses = wait_readable(&mut clients, &data, &doomed, READABLE_TIMEOUT, || {
        live[rng.below(live.len() as u64) as usize]
    });
    eprintln!(
        "{name}: kill -> every key as expected ({} not found, the rest with their values): {:.2} s \
         ({misses})",
        doomed.len(),
        killed_at.elapsed().as_secs_f64()
    );
    check_all_keys(&mut clients, &mut rng, &live, &data, &doomed);

    // The survivors' copies are restored, and nothing of the lost keys reappears.
    let survivors = (KEYS - doomed.len()) as u64;
    wait_stat_sum(&mut clients, &live, "keys", COPIES * survivors, REPAIR_TIMEOUT);
    eprintln!(
        "{name}: kill -> {} copies of the {survivors} surviving keys restored: {:.2} s",
        COPIES * survivors,
        killed_at.elapsed().as_secs_f64()
    );
    wait_stat_sum(&mut clients, &live, "keys_primary", survivors, REPAIR_TIMEOUT);
}

#[test]
fn a_restarted_node_gets_its_ranges_back() {
    const KEYS: usize = 1_000;
    let _serial = one_at_a_time();
    let name = "restart_gets_ranges";
    let mut rng = Rng::new(seed(name));
    let (mut cluster, mut clients, data, _) = start_loaded(name, &mut rng, 6, &AVAILABLE, KEYS);
    let addrs = cluster.addrs();

    let victim = rng.below(addrs.len() as u64) as usize;
    let victim_addr = addrs[victim];
    eprintln!("{name}: killing node {victim} ({victim_addr})");
    let killed_at = Instant::now();
    cluster.kill(victim).expect("kill");
    let live = cluster.live_addrs();
    wait_stat_sum(&mut clients, &live, "keys", COPIES * KEYS as u64, REPAIR_TIMEOUT);
    eprintln!(
        "{name}: kill -> copies restored: {:.2} s",
        killed_at.elapsed().as_secs_f64()
    );

    cluster.restart(victim).expect("restart");
    let restarted_at = Instant::now();
    let ring = converge(&mut cluster, "the ring of 6 converges");
    assert_eq!(ring.nodes.len(), 6);
    let want = expected_holdings(&ring, data.keys())[&victim_addr];
    assert!(want > 0, "no key belongs on {victim_addr}");

    // Through the restarted node itself: it serves its own range and routes the rest.
    let misses = wait_readable(&mut clients, &data, NOTHING_LOST, READABLE_TIMEOUT, || {
        victim_addr
    });
    eprintln!(
        "{name}: restart -> every key readable through the restarted node: {:.2} s ({misses})",
        restarted_at.elapsed().as_secs_f64()
    );
    // It holds again every key whose preference list names it: its primary range by handoff,
    // its predecessors' ranges by anti-entropy.
    wait_stat_sum(&mut clients, &[victim_addr], "keys", want, REPAIR_TIMEOUT);
    eprintln!(
        "{name}: restart -> the restarted node holds its {want} keys: {:.2} s",
        restarted_at.elapsed().as_secs_f64()
    );
    // Not asserted (see `stand_in_copies_are_dropped_when_a_paused_replica_returns`): the
    // nodes that stood in for the dead one keep their copies after it is back.
    let held = stat_sum(&mut clients, &ring.addrs(), "keys").unwrap_or_default();
    eprintln!(
        "{name}: copies held after the restart: {held} ({} in preference lists); per node:{}",
        COPIES * KEYS as u64,
        stats_table(&mut clients, &ring.addrs(), &QUOTED_STATS)
    );
}

#[test]
fn ack_one_replicates_in_the_background() {
    const KEYS: usize = 500;
    let _serial = one_at_a_time();
    let name = "ack_one";
    let mut rng = Rng::new(seed(name));
    let (mut cluster, mut clients, data, copies_took) =
        start_loaded(name, &mut rng, 5, &["--ack", "one"], KEYS);
    let addrs = cluster.addrs();
    eprintln!(
        "{name}: last write -> {} copies: {:.2} s",
        COPIES * KEYS as u64,
        copies_took.as_secs_f64()
    );
    check_all_keys(&mut clients, &mut rng, &addrs, &data, NOTHING_LOST);
    let ring = converge(&mut cluster, "the ring of 5 is consistent");
    wait_expected_holdings(&mut clients, &ring, &expected_holdings(&ring, data.keys()));
}

/// A replica that stops answering for a second (SIGSTOP: a long GC pause, an overloaded host)
/// is presumed dead; meanwhile its primaries write to, and anti-entropy fills, the next node
/// of their successor lists instead. Once it answers again it is repaired, and the stand-in
/// copies go (stray-copy collection, `sync.rs`): otherwise they would stay forever, outside
/// every preference list, missed by later deletes and by anti-entropy, ready to resurrect a
/// deleted key once its tombstone has been collected and the stand-in becomes a replica again.
#[test]
fn stand_in_copies_are_dropped_when_a_paused_replica_returns() {
    const KEYS: usize = 400;
    let _serial = one_at_a_time();
    let name = "stand_in_copies";
    let mut rng = Rng::new(seed(name));
    let (mut cluster, mut clients, mut data, _) = start_loaded(name, &mut rng, 5, &[], KEYS / 2);

    let ring = converge(&mut cluster, "the ring of 5 is consistent");
    let addrs = ring.addrs();
    let frozen = addrs[rng.below(addrs.len() as u64) as usize];
    let others: Vec<SocketAddr> = addrs.iter().copied().filter(|a| *a != frozen).collect();

    let frozen_index = index_of(&cluster, frozen);
    cluster.pause(frozen_index).expect("pause");
    eprintln!("{name}: paused {frozen}");
    for k in KEYS / 2..KEYS {
        let key = format!("key-{k:05}");
        let value = format!("value-{k}");
        let addr = others[rng.below(others.len() as u64) as usize];
        clients.retrying(addr, &format!("PUT {key}"), |c| c.put(key.clone(), value.clone()));
        data.insert(key, value);
    }
    cluster.resume(frozen_index).expect("resume");
    let ring = converge(&mut cluster, "the resumed node is back in the ring");
    assert_eq!(ring.addrs(), addrs);

    check_all_keys(&mut clients, &mut rng, &addrs, &data, NOTHING_LOST);
    let want = expected_holdings(&ring, data.keys());
    wait_expected_holdings(&mut clients, &ring, &want);
}
