//! The simulator's fault model and oracles, checked on small hand-made schedules, so that
//! when a fault test (`faults.rs`) fails it is the store that misbehaved, not the harness.
//!
//! Each fault is observed through the inputs the simulator feeds the nodes
//! ([`Sim::record_inputs`]): who got what, when, with which clock. The history oracle is
//! checked on a quiet ring (clean) and on stores the test tampers with (each anomaly found).

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use chordkv_core::chord::Config;
use chordkv_core::rng::Rng;
use chordkv_core::store::{Entry, Store};
use chordkv_harness::sim::recorder::{value_of_write, Recorder};
use chordkv_harness::sim::{Input, InputKind, Sim, SimConfig};
use chordkv_protocol::Message;
use common::{build_ring, STABILIZE_MS};

fn config(seed: u64) -> SimConfig {
    let mut chord = Config::with_stabilize_interval_ms(STABILIZE_MS);
    chord.replicas = 2;
    SimConfig {
        seed,
        min_delay_ms: 1,
        max_delay_ms: 10,
        chord,
        ..SimConfig::default()
    }
}

fn ring(seed: u64, n: usize) -> Sim {
    let mut s = Sim::new(config(seed));
    build_ring(&mut s, n, &mut Rng::new(seed));
    s
}

/// The peer an input came from, for messages between nodes.
fn sender(input: &Input) -> Option<(usize, u64)> {
    match input.kind {
        InputKind::Request {
            from: Some(from),
            sent: Some(sent),
            ..
        } => Some((from, sent)),
        InputKind::Reply { from, sent, .. } => Some((from, sent)),
        _ => None,
    }
}

fn is_message(input: &Input) -> bool {
    matches!(
        input.kind,
        InputKind::Request { .. } | InputKind::Reply { .. } | InputKind::Unreachable { .. }
    )
}

#[test]
fn a_paused_node_queues_its_inputs_and_handles_them_in_order_on_resume_with_its_clock_jumped() {
    let mut s = ring(1, 5);
    s.record_inputs();
    let p = 2;
    let last_clock_before = s.node_now(p);
    let paused_at = s.now();
    s.pause(p);
    // A client request queues like any message, first in line.
    let h = s.client_request(
        p,
        Message::Get {
            key: Bytes::from_static(b"k"),
        },
    );
    s.run_for(2_000);
    assert!(
        s.inputs().iter().all(|i| i.node != p || i.at <= paused_at),
        "nothing is fed to a paused node"
    );
    let queued = s.queued(p);
    // The client request and its neighbours' requests until they presumed it dead.
    assert!(queued >= 3, "its peers asked it: {queued}");
    assert!(s.reply(h).is_none());
    assert!(
        !s.inputs()
            .iter()
            .any(|i| i.kind == InputKind::Unreachable { peer: p }),
        "a paused node is silent, not unreachable"
    );
    let resumed_at = s.now();
    s.resume(p);
    assert_eq!(s.queued(p), 0);
    let fed: Vec<&Input> = s
        .inputs()
        .iter()
        .filter(|i| i.node == p && i.at == resumed_at)
        .collect();
    let messages: Vec<&&Input> = fed.iter().filter(|i| is_message(i)).collect();
    assert_eq!(messages.len(), queued, "every queued input is handled on resume");
    assert!(
        matches!(messages[0].kind, InputKind::Request { from: None, .. }),
        "in arrival order: the client request came first"
    );
    assert_eq!(
        fed.iter()
            .rfind(|i| i.kind != InputKind::StoreDone)
            .map(|i| &i.kind),
        Some(&InputKind::Tick),
        "then it ticks"
    );
    assert!(
        fed.iter().all(|i| i.clock >= last_clock_before + 2_000),
        "its clock jumped"
    );
    s.run_for(1_000);
    assert!(
        matches!(s.reply(h), Some(Message::GetReply { .. })),
        "the queued request is served"
    );
    assert!(
        s.run_until_consistent(STABILIZE_MS, 30_000),
        "{:?}",
        s.ring_problem()
    );
}

/// Node 0 is cut from the rest for two seconds in `hold` mode. Returns the inputs that crossed
/// the cut after the heal and had been sent before it.
fn hold_partition(seed: u64) -> (Sim, Vec<Input>, usize) {
    let mut s = ring(seed, 6);
    s.record_inputs();
    let rest: Vec<usize> = (1..6).collect();
    let cut_at = s.now();
    s.partition_hold(&[0], &rest);
    s.run_for(2_000);
    let across = |i: &Input| sender(i).is_some_and(|(from, _)| (i.node == 0) != (from == 0));
    assert!(
        s.inputs().iter().all(|i| !across(i) || i.at <= cut_at + 10),
        "nothing crosses the cut (but what was on the wire before it)"
    );
    let held = s.held_messages();
    assert!(
        held >= 4,
        "both sides sent until they presumed the other dead: {held}"
    );
    let (healed_at, last_sent) = (s.now(), s.last_sent());
    s.heal();
    assert_eq!(s.held_messages(), 0);
    s.run_for(100);
    let late: Vec<Input> = s
        .inputs()
        .iter()
        .filter(|i| i.at >= healed_at && across(i) && sender(i).is_some_and(|(_, sent)| sent <= last_sent))
        .cloned()
        .collect();
    (s, late, held)
}

#[test]
fn a_hold_partition_delivers_what_it_held_after_the_heal_in_send_order_per_link() {
    let (mut s, late, held) = hold_partition(2);
    assert_eq!(late.len(), held, "every held message arrives after the heal");
    let mut last: BTreeMap<(usize, usize), u64> = BTreeMap::new();
    for i in &late {
        let (from, sent) = sender(i).unwrap();
        let prev = last.insert((from, i.node), sent);
        assert!(prev.is_none_or(|p| p < sent), "{from} -> {} out of order", i.node);
    }
    assert!(
        !s.inputs()
            .iter()
            .any(|i| matches!(i.kind, InputKind::Unreachable { .. })),
        "a cut is silent"
    );
    assert!(
        s.inputs().iter().all(|i| i.clock == i.at),
        "without clock faults every node reads true time"
    );
    assert!(
        s.run_until_consistent(STABILIZE_MS, 30_000),
        "{:?}",
        s.ring_problem()
    );
}

#[test]
fn a_drop_partition_loses_what_crosses_it_silently() {
    let mut s = ring(3, 6);
    s.record_inputs();
    let rest: Vec<usize> = (1..6).collect();
    let first = s.last_sent() + 1;
    s.partition(&[0], &rest);
    s.run_for(2_000);
    let last = s.last_sent();
    assert_eq!(s.held_messages(), 0);
    s.heal();
    s.run_for(2_000);
    let crossed = s.inputs().iter().filter(|i| {
        sender(i).is_some_and(|(from, sent)| (i.node == 0) != (from == 0) && (first..=last).contains(&sent))
    });
    assert_eq!(
        crossed.count(),
        0,
        "nothing sent across the cut arrives, even after the heal"
    );
    assert!(!s
        .inputs()
        .iter()
        .any(|i| matches!(i.kind, InputKind::Unreachable { .. })));
    assert!(
        s.run_until_consistent(STABILIZE_MS, 30_000),
        "{:?}",
        s.ring_problem()
    );
}

/// Node 5 leaves (its process exits) while cut from its predecessor, which keeps asking it.
#[test]
fn a_cut_hides_an_exited_node_until_the_heal() {
    for hold in [false, true] {
        let mut s = ring(4, 6);
        s.record_inputs();
        let x = 5;
        let p = s.index_of(&s.node(x).predecessor().unwrap().addr).unwrap();
        if hold {
            s.partition_hold(&[p], &[x]);
        } else {
            s.partition(&[p], &[x]);
        }
        s.leave(x);
        s.run_for(3_000);
        assert!(!s.is_alive(x), "node {x} left");
        let refused = |s: &Sim, since: u64| {
            s.inputs()
                .iter()
                .filter(|i| i.node == p && i.at >= since && i.kind == InputKind::Unreachable { peer: x })
                .count()
        };
        assert_eq!(refused(&s, 0), 0, "hold={hold}: behind the cut, silence");
        let healed_at = s.now();
        let held = s.held_messages();
        s.heal();
        s.run_for(1_000);
        if hold {
            assert!(held > 0);
            assert!(
                refused(&s, healed_at) > 0,
                "the requests held at the cut reach a closed port: refused"
            );
        }
        assert!(
            s.run_until_consistent(STABILIZE_MS, 30_000),
            "{:?}",
            s.ring_problem()
        );
    }
}

#[test]
fn duplication_delivers_some_messages_twice_and_reordering_delays_some() {
    let mut config = config(5);
    config.reorder_max_ms = 500;
    let mut s = Sim::new(config);
    build_ring(&mut s, 6, &mut Rng::new(5));
    s.record_inputs();
    s.set_duplicate(0.2);
    s.set_reorder(0.2);
    s.run_for(5_000);
    s.set_duplicate(0.0);
    s.set_reorder(0.0);
    let mut copies: BTreeMap<u64, Vec<&Input>> = BTreeMap::new();
    for i in s.inputs() {
        if let Some((_, sent)) = sender(i) {
            copies.entry(sent).or_default().push(i);
        }
    }
    let twice = copies.values().filter(|c| c.len() == 2).count();
    assert!(copies.values().all(|c| c.len() <= 2));
    let share = twice as f64 / copies.len() as f64;
    assert!(
        (0.1..0.3).contains(&share),
        "{twice} of {} delivered twice",
        copies.len()
    );
    // Reordered: a message that arrived more than the network's 10 ms jitter after one sent
    // later on the same link.
    let mut per_link: BTreeMap<(usize, usize), Vec<(u64, u64)>> = BTreeMap::new();
    for i in s.inputs() {
        if let Some((from, sent)) = sender(i) {
            per_link.entry((from, i.node)).or_default().push((sent, i.at));
        }
    }
    let overtaken = per_link
        .values()
        .flat_map(|v| v.windows(2))
        .filter(|w| w[1].0 < w[0].0 && w[1].1 > w[0].1 + 10)
        .count();
    assert!(overtaken > 10, "{overtaken} messages overtaken");
    let late = per_link
        .values()
        .flat_map(|v| v.windows(2))
        .filter(|w| w[1].0 < w[0].0)
        .map(|w| w[1].1 - w[0].1)
        .max()
        .unwrap_or(0);
    assert!(late <= 500 + 10, "the extra delay is bounded: {late}");
    assert!(
        s.run_until_consistent(STABILIZE_MS, 30_000),
        "{:?}",
        s.ring_problem()
    );
}

#[test]
fn every_input_carries_the_nodes_own_clock_skewed_and_drifting_within_the_bound() {
    let mut config = config(6);
    config.clock_skew = true;
    config.clock_drift_ppm = 2_000;
    let bound = config.chord.max_clock_offset_ms;
    let mut s = Sim::new(config);
    s.record_inputs();
    build_ring(&mut s, 6, &mut Rng::new(6));
    for k in 0..50 {
        s.put(k % 6, &format!("k{k}"), "v");
    }
    s.run_for(20_000);
    let offsets: Vec<i64> = (0..6).map(|i| s.clock(i).offset_ms).collect();
    assert!(
        offsets.iter().max().unwrap() - offsets.iter().min().unwrap() > 100,
        "offsets drawn apart: {offsets:?}"
    );
    assert!(offsets.iter().all(|o| o.unsigned_abs() <= bound / 2));
    let mut last = [0; 6];
    for i in s.inputs() {
        assert_eq!(i.clock, s.clock(i.node).read(i.at), "the node's own clock");
        assert!(i.clock >= last[i.node], "node {} clock went back", i.node);
        last[i.node] = i.clock;
        let dev = i.clock as i64 - i.at as i64 - s.clock(i.node).epoch_ms as i64;
        assert!(
            dev.unsigned_abs() <= bound / 2,
            "node {} deviates {dev} ms",
            i.node
        );
    }
    for t in (0..s.now()).step_by(997) {
        let readings: Vec<u64> = (0..6).map(|i| s.clock(i).read(t)).collect();
        let spread = readings.iter().max().unwrap() - readings.iter().min().unwrap();
        assert!(spread <= bound, "clocks {spread} ms apart at {t}");
    }
    // Ticks still come at the nodes' stabilize rate, their deadlines converted to true time.
    let ticks = s
        .inputs()
        .iter()
        .filter(|i| i.node == 3 && i.kind == InputKind::Tick)
        .count();
    let seconds = s.now() / 1_000;
    assert!(ticks as u64 > 10 * seconds, "{ticks} ticks in {seconds} s");
    assert!(
        s.run_until_consistent(STABILIZE_MS, 30_000),
        "{:?}",
        s.ring_problem()
    );
}

#[test]
fn a_restart_with_the_store_keeps_it_and_an_empty_restart_does_not() {
    let mut s = ring(7, 6);
    for k in 0..60 {
        assert!(matches!(
            s.put(k % 6, &format!("k{k}"), "v"),
            Some(Message::PutReply { .. })
        ));
    }
    let held_by = |s: &Sim, i: usize| -> Vec<String> {
        (0..60)
            .map(|k| format!("k{k}"))
            .filter(|k| s.entry(i, k.as_bytes()).is_some())
            .collect()
    };
    let before = held_by(&s, 2);
    assert!(!before.is_empty());
    s.crash(2);
    s.run_for(2_000);
    assert_eq!(held_by(&s, 2), before, "a crashed node's store is kept aside");
    s.restart_with_store(2, 0);
    assert_eq!(held_by(&s, 2), before, "and given back on a persistent restart");
    s.crash(3);
    s.run_for(2_000);
    s.restart(3, 0);
    assert!(held_by(&s, 3).is_empty(), "an empty restart starts empty");
    assert!(
        s.run_until_consistent(STABILIZE_MS, 30_000),
        "{:?}",
        s.ring_problem()
    );
    for k in 0..60 {
        assert_eq!(
            common::value_of(&s.get(k % 6, &format!("k{k}"))),
            Some(Bytes::from_static(b"v"))
        );
    }
}

#[test]
fn two_rings_in_one_simulation_break_zave_invariants_and_one_ring_keeps_them() {
    let mut s = Sim::new(config(8));
    let a = s.add_first();
    s.add_joining(a);
    s.run_for(1_000);
    s.add_joining(a);
    s.run_for(3_000);
    assert_eq!(s.zave_problem(), None);
    let c = s.add_first();
    s.add_joining(c);
    s.run_for(3_000);
    let p = s.zave_problem().expect("two rings");
    assert!(p.starts_with("2 rings"), "{p}");
}

/// Random puts, deletes and gets on a few keys through random nodes of a quiet ring, with
/// several in flight: the history is clean.
fn quiet_history(s: &mut Sim, rng: &mut Rng, rec: &mut Recorder, ops: usize) {
    for _ in 0..ops {
        let via = rng.below(s.len() as u64) as usize;
        let key = format!("k{}", rng.below(8));
        match rng.below(10) {
            0..=3 => rec.put(s, via, key.as_bytes()),
            4 => rec.delete(s, via, key.as_bytes()),
            _ => rec.get(s, via, key.as_bytes()),
        };
        s.run_for(3);
        rec.poll(s);
    }
    s.run_for(2_000);
    rec.poll(s);
}

#[test]
fn the_history_oracle_is_clean_on_a_quiet_ring() {
    let mut s = ring(9, 6);
    let (mut rng, mut rec) = (Rng::new(9), Recorder::new());
    quiet_history(&mut s, &mut rng, &mut rec, 600);
    rec.final_reads(&mut s, 3, 500);
    rec.finish();
    let (r, c) = (rec.check(), rec.counts().clone());
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(c.puts_acked + c.deletes_acked, c.puts + c.deletes, "{c:?}");
    assert!(c.gets_ok > 200 && r.reads_checked > 200, "{c:?} {r:?}");
}

/// The history oracle on stores the test tampers with, every copy of a key at once (the
/// store's own merge rule, highest version wins, is bypassed by writing a higher version).
#[test]
fn the_history_oracle_finds_lost_stale_resurrected_and_unexpected_values() {
    let mut s = ring(10, 6);
    let mut rec = Recorder::new();
    let all: Vec<usize> = (0..6).collect();
    let run = |s: &mut Sim, rec: &mut Recorder| {
        s.run_for(500);
        rec.poll(s);
    };
    // Every write is acknowledged and read back before the tampering.
    let ids = (1..=5).collect::<Vec<u64>>(); // the Recorder numbers writes from 1
    rec.put(&mut s, 0, b"lost"); // w1
    rec.put(&mut s, 1, b"stale"); // w2
    run(&mut s, &mut rec);
    rec.put(&mut s, 2, b"stale"); // w3
    rec.put(&mut s, 3, b"dead"); // w4
    run(&mut s, &mut rec);
    rec.delete(&mut s, 4, b"dead"); // w5
    rec.put(&mut s, 5, b"odd"); // w6
    run(&mut s, &mut rec);
    assert_eq!(rec.counts().puts_acked + rec.counts().deletes_acked, 6);
    let clean = rec.check();
    assert!(clean.is_clean() && ids.len() == 5, "{clean:?}");
    let tamper = |s: &Sim, key: &[u8], value: Option<Bytes>| {
        for &i in &all {
            let k = Bytes::copy_from_slice(key);
            match &value {
                None => {
                    s.store(i).delete(key, u64::MAX).unwrap();
                }
                Some(v) => {
                    let entry = Entry {
                        version: u64::MAX / 2,
                        value: Some(v.clone()),
                        expires_at: 0,
                    };
                    s.store(i).put(&k, entry).unwrap();
                }
            }
        }
    };
    tamper(&s, b"lost", None);
    tamper(&s, b"stale", Some(value_of_write(2)));
    tamper(&s, b"dead", Some(value_of_write(4)));
    tamper(&s, b"odd", Some(Bytes::from_static(b"w999")));
    for (via, key) in [(1, &b"stale"[..]), (2, b"dead"), (3, b"odd")] {
        rec.get(&mut s, via, key);
    }
    run(&mut s, &mut rec);
    rec.final_reads(&mut s, 3, 500);
    rec.finish();
    let r = rec.check();
    println!("{r:#?}");
    assert_eq!(
        (r.lost, r.stale_reads, r.resurrected, r.unexpected),
        (2, 1, 2, 2),
        "lost: final reads of 'lost' and 'stale'; stale: the read of 'stale'; resurrected: the \
         read and final read of 'dead'; unexpected: the read and final read of 'odd'"
    );
}
