//! Deterministic simulation tests of the Chord core: many real state machines on a simulated
//! network, checked against a global oracle. Each test prints its seed; a failure replays
//! exactly with the same seed.

use bytes::Bytes;
use chordkv_core::chord::config::PartitionPolicy;
use chordkv_core::chord::{Config, Phase};
use chordkv_core::rng::Rng;
use chordkv_harness::sim::{Sim, SimConfig};
use chordkv_protocol::{Id, Message};

mod common;

use common::{build_ring, seeds, send_put, value_of, Acked, STABILIZE_MS};

/// A simulation of plain Chord: one copy of every key (replication has its own tests in
/// `replication.rs`), so these tests can check exactly where each key lives. Chord's own ring
/// maintenance drops a node that stops answering from the ring: the partition policy
/// `available` (under `consistent` a failed node stays a member until it returns or is
/// forgotten; see `faults.rs` and `replication.rs`).
fn sim(seed: u64) -> Sim {
    sim_with(seed, PartitionPolicy::Available)
}

fn sim_with(seed: u64, policy: PartitionPolicy) -> Sim {
    println!("seed = {seed}, {policy}");
    let mut chord = Config::with_stabilize_interval_ms(STABILIZE_MS);
    chord.replicas = 0;
    chord.partition_policy = policy;
    Sim::new(SimConfig {
        seed,
        min_delay_ms: 1,
        max_delay_ms: 10,
        loss: 0.0,
        chord,
        ..SimConfig::default()
    })
}

#[test]
fn sixty_four_nodes_converge_and_fingers_become_correct() {
    let mut s = sim(64);
    let mut rng = Rng::new(64);
    build_ring(&mut s, 64, &mut rng);
    // fix_fingers refreshes one remote finger per round; give it enough rounds.
    let mut rounds = 0;
    while !s.fingers_are_correct() && rounds < 600 {
        s.run_for(STABILIZE_MS);
        rounds += 1;
    }
    assert!(
        s.fingers_are_correct(),
        "{} fingers still wrong",
        s.finger_errors()
    );
    assert!(s.ring_is_consistent());
}

/// `ring_size_estimate` (GET_STATS; `chordkv_ring_size_estimate` on /metrics): exact on a
/// ring the successor list reaches around, near the truth from the list's density on a larger
/// one.
#[test]
fn nodes_estimate_the_ring_size() {
    let mut s = sim(5);
    build_ring(&mut s, 5, &mut Rng::new(5));
    for i in 0..5 {
        assert_eq!(s.node(i).ring_size_estimate(), 5, "node {i} of a ring of 5");
    }
    let mut s = sim(64);
    build_ring(&mut s, 64, &mut Rng::new(64));
    let mut estimates: Vec<u64> = (0..64).map(|i| s.node(i).ring_size_estimate()).collect();
    estimates.sort_unstable();
    let median = estimates[32];
    assert!(
        (48..=90).contains(&median),
        "median estimate {median} of a ring of 64: {estimates:?}"
    );
}

#[test]
fn lookups_from_every_node_agree_with_the_oracle() {
    let mut s = sim(7);
    let mut rng = Rng::new(7);
    build_ring(&mut s, 32, &mut rng);
    s.run_for(20_000); // let the fingers settle
    let keys: Vec<String> = (0..400).map(|i| format!("key-{i}")).collect();
    for k in &keys {
        let via = rng.below(32) as usize;
        match s.put(via, k, &format!("v-{k}")) {
            Some(Message::PutReply { .. }) => {}
            other => panic!("put {k} via {via}: {other:?}"),
        }
    }
    // Every key is stored at exactly its oracle owner.
    for k in &keys {
        let owner = s.owner_of(&Id::of_key(k.as_bytes())).unwrap();
        let holders: Vec<usize> = s
            .alive()
            .into_iter()
            .filter(|&i| s.holds(i, k.as_bytes()).is_some())
            .collect();
        assert_eq!(holders, vec![s.index_of(&owner.addr).unwrap()], "key {k}");
    }
    // Every node finds every key (a sample of keys per node), within a few hops.
    let mut max_hops = 0;
    for node in 0..32 {
        for k in keys.iter().skip(node).step_by(16) {
            let reply = s.get(node, k);
            if let Some(Message::GetReply { hops, .. }) = reply {
                max_hops = max_hops.max(hops);
            }
            assert_eq!(
                value_of(&reply),
                Some(Bytes::from(format!("v-{k}"))),
                "get {k} via {node}"
            );
        }
    }
    assert!(max_hops <= 8, "a 32-node ring needs few hops, saw {max_hops}");
}

#[test]
fn a_crashed_node_is_routed_around() {
    let mut s = sim(11);
    let mut rng = Rng::new(11);
    build_ring(&mut s, 24, &mut rng);
    s.run_for(10_000);
    let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
    for k in &keys {
        assert!(matches!(s.put(0, k, "v"), Some(Message::PutReply { .. })));
    }
    let victim = 5;
    let lost: Vec<&String> = keys
        .iter()
        .filter(|k| s.holds(victim, k.as_bytes()).is_some())
        .collect();
    s.crash(victim);
    assert!(
        s.run_until_consistent(STABILIZE_MS, 60_000),
        "{:?}",
        s.ring_problem()
    );
    // Keys the crashed node did not hold are all still served, from every node.
    for (i, k) in keys.iter().enumerate() {
        let via = [0, 3, 7, 12, 23][i % 5];
        let reply = s.get(via, k);
        if lost.contains(&k) {
            assert_eq!(
                value_of(&reply),
                None,
                "{k} was only on the crashed node (one copy)"
            );
        } else {
            assert_eq!(
                value_of(&reply),
                Some(Bytes::from_static(b"v")),
                "get {k} via {via}"
            );
        }
    }
    // And the crashed node's range is writable again, at its successor.
    for k in &lost {
        assert!(matches!(s.put(1, k, "again"), Some(Message::PutReply { .. })));
        assert_eq!(value_of(&s.get(2, k)), Some(Bytes::from_static(b"again")));
    }
    // The node restarts with an empty store and rejoins: its range (with the rewritten keys)
    // is handed back to it, and every key is still readable from everywhere.
    s.restart(victim, 0);
    assert!(
        s.run_until_consistent(STABILIZE_MS, 60_000),
        "{:?}",
        s.ring_problem()
    );
    for k in &lost {
        assert_eq!(
            s.holds(victim, k.as_bytes()),
            Some(Bytes::from_static(b"again")),
            "{k} back at its owner"
        );
    }
    for (i, k) in keys.iter().enumerate() {
        let want = if lost.contains(&k) {
            Some(Bytes::from_static(b"again"))
        } else {
            Some(Bytes::from_static(b"v"))
        };
        assert_eq!(value_of(&s.get(i % 24, k)), want, "get {k} after the restart");
    }
}

/// Writes keep flowing (several in flight at once) while nodes join and leave; at the end
/// every acknowledged write is readable with its value or a newer one.
#[test]
fn joins_and_leaves_under_load_lose_no_acknowledged_write() {
    for (seed, policy) in seeds(&[3, 17, 99]).into_iter().flat_map(|seed| {
        [
            (seed, PartitionPolicy::Available),
            (seed, PartitionPolicy::Consistent),
        ]
    }) {
        let mut s = sim_with(seed, policy);
        let mut rng = Rng::new(seed);
        build_ring(&mut s, 12, &mut rng);
        let mut acked = Acked::default();
        let mut in_flight: Vec<(u64, String, String)> = Vec::new();
        let mut written = 0u64;
        let mut leaving = Vec::new();
        for round in 0..240 {
            // Membership changes: a join every 20 rounds, a leave every 30.
            if round % 20 == 10 {
                let alive: Vec<usize> = s
                    .alive()
                    .into_iter()
                    .filter(|&i| s.node(i).in_ring() && !leaving.contains(&i))
                    .collect();
                let via = alive[rng.below(alive.len() as u64) as usize];
                s.add_joining(via);
            }
            if round % 30 == 25 {
                let alive: Vec<usize> = s.alive().into_iter().filter(|i| !leaving.contains(i)).collect();
                let who = alive[rng.below(alive.len() as u64) as usize];
                leaving.push(who);
                s.leave(who);
            }
            // Eight writes per round, to new keys and overwrites, through random live nodes.
            for _ in 0..8 {
                let alive: Vec<usize> = s.alive().into_iter().filter(|i| !leaving.contains(i)).collect();
                let via = alive[rng.below(alive.len() as u64) as usize];
                let key = format!("key-{}", rng.below(500));
                written += 1;
                in_flight.push(send_put(&mut s, via, key, format!("value-{written}")));
            }
            s.run_for(20);
            in_flight.retain(|(h, k, v)| match s.reply(*h) {
                Some(r) => {
                    acked.record(k, v, Some(r));
                    false
                }
                None => true,
            });
        }
        s.run_for(15_000);
        for (h, k, v) in in_flight.drain(..) {
            acked.record(&k, &v, s.reply(h));
        }
        assert!(
            s.run_until_consistent(STABILIZE_MS, 60_000),
            "seed {seed}: {:?}",
            s.ring_problem()
        );
        assert!(
            acked.0.len() > 300,
            "seed {seed}: most writes must be acknowledged ({})",
            acked.0.len()
        );
        acked.verify(&mut s, seed);
        let alive = s.alive();
        // Every key (acknowledged or not) lives only at its owner: handoffs left no stray copies.
        for k in 0..500 {
            let key = format!("key-{k}");
            let holders: Vec<usize> = alive
                .iter()
                .copied()
                .filter(|&i| s.holds(i, key.as_bytes()).is_some())
                .collect();
            if holders.is_empty() {
                assert!(!acked.0.contains_key(&key), "seed {seed}: {key}");
                continue;
            }
            let owner = s
                .owner_of(&Id::of_key(key.as_bytes()))
                .and_then(|o| s.index_of(&o.addr));
            assert_eq!(
                holders,
                vec![owner.unwrap()],
                "seed {seed}: {key} held away from its owner"
            );
        }
    }
}

#[test]
fn an_isolated_node_rejoins_after_the_partition_heals() {
    let mut s = sim(5);
    let mut rng = Rng::new(5);
    build_ring(&mut s, 10, &mut rng);
    let others: Vec<usize> = (0..10).filter(|&i| i != 4).collect();
    s.partition(&[4], &others);
    s.run_for(10_000);
    assert!(!s.ring_is_consistent());
    s.heal();
    assert!(
        s.run_until_consistent(STABILIZE_MS, 60_000),
        "{:?}",
        s.ring_problem()
    );
}

#[test]
fn message_loss_slows_the_ring_but_it_still_converges() {
    let mut s = sim(21);
    let mut rng = Rng::new(21);
    s.set_loss(0.05);
    s.add_first();
    for _ in 1..16 {
        let alive = s.alive();
        let via = alive[rng.below(alive.len() as u64) as usize];
        s.add_joining(via);
        s.run_for(3 * STABILIZE_MS);
    }
    s.run_for(10_000);
    s.set_loss(0.0);
    assert!(
        s.run_until_consistent(STABILIZE_MS, 120_000),
        "{:?}",
        s.ring_problem()
    );
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let run = |seed: u64| {
        let mut s = sim(seed);
        let mut rng = Rng::new(seed);
        build_ring(&mut s, 16, &mut rng);
        for i in 0..50 {
            s.put(i % 16, &format!("k{i}"), "v");
        }
        s.crash(3);
        s.run_for(5_000);
        (s.now(), s.messages, s.keys_per_node())
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42).1, run(43).1);
}

#[test]
fn a_join_through_a_dead_node_goes_on_through_the_next_one_given() {
    for seed in seeds(&[1, 2, 3, 4, 5]) {
        let mut s = sim(seed);
        build_ring(&mut s, 4, &mut Rng::new(seed));
        s.crash(1);
        // The first node given is dead before the join starts; the second is alive.
        let new = s.add_joining_through(&[1, 2]);
        assert!(
            s.run_until_consistent(STABILIZE_MS, 60_000),
            "seed {seed}: the ring did not take in node {new}: {:?}",
            s.ring_problem()
        );
        assert_eq!(s.node(new).phase(), Phase::Active, "seed {seed}");
    }
}

/// A node without replicas collects its own tombstones (`collect_own_tombstones`) once an
/// anti-entropy interval, and once none is left it stops scanning its range for them until
/// the next delete (before, the first delete made it scan its whole range every interval for
/// good, whatever it held). A later delete is collected again.
#[test]
fn a_node_without_replicas_scans_for_tombstones_only_while_it_holds_some() {
    let mut s = sim(9);
    let mut rng = Rng::new(9);
    build_ring(&mut s, 4, &mut rng);
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    for k in &keys {
        s.put(rng.below(4) as usize, k, "v");
    }
    let delete = |s: &mut Sim, k: &str| {
        let reply = s.request(
            0,
            Message::Delete {
                key: Bytes::from(k.to_string()),
            },
            10_000,
        );
        assert!(
            matches!(reply, Some(Message::DeleteReply { .. })),
            "{k}: {reply:?}"
        );
    };
    let counters = |s: &Sim| -> (u64, u64) {
        s.alive().iter().fold((0, 0), |(c, t), &i| {
            let st = s.node(i).stats();
            (c + st.tombstone_collections, t + st.tombstones_collected)
        })
    };
    let config = Config::with_stabilize_interval_ms(STABILIZE_MS);
    let collect_until = |s: &mut Sim, want: u64| {
        let until = s.now() + config.tombstone_grace_ms + 20 * config.anti_entropy_interval_ms;
        while counters(s).1 < want && s.now() < until {
            s.run_for(1_000);
        }
        assert_eq!(counters(s).1, want, "tombstones collected");
    };
    for k in &keys[..10] {
        delete(&mut s, k);
    }
    collect_until(&mut s, 10);
    let (collections, _) = counters(&s);
    // Writes go on, with no delete: nobody scans for tombstones.
    for round in 0..8 {
        for k in &keys[10..20] {
            s.put(rng.below(4) as usize, k, &format!("v{round}"));
        }
        s.run_for(config.anti_entropy_interval_ms);
    }
    assert_eq!(
        counters(&s).0,
        collections,
        "collections with no tombstone anywhere"
    );
    delete(&mut s, &keys[30]);
    collect_until(&mut s, 11);
    assert!(counters(&s).0 > collections, "the next delete is collected");
    for k in keys[..10].iter().chain([&keys[30]]) {
        assert_eq!(value_of(&s.get(1, k)), None, "{k}");
    }
}
