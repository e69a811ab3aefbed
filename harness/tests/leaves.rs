//! Graceful leaves under network faults. Simultaneous leaves hand each range on along a chain
//! of leaving nodes; every request, reply and hint of that chain may be lost, duplicated or
//! late. Whatever the network does during the leaves, the nodes that stay must end as one
//! ring that serves every acknowledged write: under `consistent` a leaving node some survivor
//! never hears from stays in its lists for good, a silent member it waits on.
//!
//! Found by tests/tests/faults.rs (`five_of_six_nodes_leaving_at_once_...`) failing in CI: a
//! survivor kept a departed node as its successor. The causes, each a test seed here: a lost
//! `LeavingReply` made the survivor refuse the retried leave it had already accepted; a node
//! took over a range naming a predecessor that had left meanwhile, and refused the leave of
//! its real predecessor; a late lookup reply from a departed node put it back in the successor
//! list; a leave hint lost with the process that sent it.
//!
//! `SIM_SEEDS=1-2000 cargo test --release -p chordkv-harness --test leaves` for the long mode.

mod common;

use chordkv_core::chord::Config;
use chordkv_core::rng::Rng;
use chordkv_harness::sim::{Sim, SimConfig};
use common::{build_ring, seeds, Acked, STABILIZE_MS};

const NODES: usize = 6;
const KEYS: usize = 60;

/// The network during the leaves.
#[derive(Clone, Copy, Debug)]
struct Faults {
    loss: f64,
    duplicate: f64,
    reorder: f64,
    /// Vnodes per host: a host's leave hands every position's range on at once.
    vnodes: u16,
    /// One-way message delay, uniform in this range of ms.
    delay_ms: (u64, u64),
    /// The leaves start this far apart at most, in ms (uniform): signals reach real
    /// processes one after another.
    stagger_ms: u64,
}

/// Builds a ring of [`NODES`] (replicas 2), writes [`KEYS`] keys, makes all but one node leave
/// at once under `faults`, then heals the network. Returns the seeds whose survivor did not
/// end a ring of one serving every key, with the problem.
fn all_but_one_leave(faults: Faults, seeds: &[u64]) -> Vec<(u64, String)> {
    let mut bad = Vec::new();
    for &seed in seeds {
        let mut chord = Config::with_stabilize_interval_ms(STABILIZE_MS);
        chord.replicas = 2;
        let mut s = Sim::new(SimConfig {
            seed,
            min_delay_ms: faults.delay_ms.0,
            max_delay_ms: faults.delay_ms.1,
            chord,
            vnodes: faults.vnodes,
            ..SimConfig::default()
        });
        let mut rng = Rng::new(seed);
        build_ring(&mut s, NODES, &mut rng);
        let mut acked = Acked::default();
        for k in 0..KEYS {
            let (key, value) = (format!("k{k}"), format!("v{k}-{seed}"));
            let via = rng.below(NODES as u64) as usize;
            let reply = s.put(via, &key, &value);
            acked.record(&key, &value, reply);
        }
        let survivor = rng.below(NODES as u64) as usize;
        s.set_loss(faults.loss);
        s.set_duplicate(faults.duplicate);
        s.set_reorder(faults.reorder);
        for i in (0..NODES).filter(|&i| i != survivor) {
            s.leave(i);
            if faults.stagger_ms > 0 {
                s.run_for(rng.below(faults.stagger_ms + 1));
            }
        }
        // Longer than a leave may take (the leave timeout), so every leaver is done.
        s.run_for(40_000);
        s.set_loss(0.0);
        s.set_duplicate(0.0);
        s.set_reorder(0.0);
        let consistent = s.run_until_consistent(STABILIZE_MS, 60_000);
        if !consistent || s.alive() != vec![survivor] {
            let problem = s.ring_problem().unwrap_or_default();
            bad.push((seed, format!("live {:?}: {problem}", s.alive())));
            continue;
        }
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| acked.verify(&mut s, seed)))
        {
            let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
            bad.push((seed, msg));
        }
    }
    bad
}

fn check(faults: Faults) {
    // 1600: a leave storm (see the vnode test's doc comment).
    let seeds = seeds(&(1..=40).chain([1600]).collect::<Vec<_>>());
    let bad = all_but_one_leave(faults, &seeds);
    assert!(
        bad.is_empty(),
        "{faults:?}: {} of {} seeds failed, first: {:?}",
        bad.len(),
        seeds.len(),
        &bad[..bad.len().min(5)]
    );
}

/// The signals of a real test reach the processes a millisecond or so apart, on a network of
/// sub-millisecond delays: a node's leave notice names successors that left a moment before,
/// and arrives after their own notices. Found by `tests/tests/faults.rs` failing in CI (the
/// survivor kept a departed successor for good): the notice's successor list was spliced into
/// ours as it came (76 of 1,000 seeds failed). Every change of a successor list now drops the
/// nodes known to have left (`Node::set_successor_list`).
#[test]
fn five_of_six_leaving_one_after_another_on_a_fast_network_leave_a_ring_of_one_serving_every_key() {
    check(Faults {
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        vnodes: 1,
        delay_ms: (0, 1),
        stagger_ms: 3,
    });
}

#[test]
fn five_of_six_leaving_at_once_under_message_loss_leave_a_ring_of_one_serving_every_key() {
    check(Faults {
        loss: 0.1,
        duplicate: 0.0,
        reorder: 0.0,
        vnodes: 1,
        delay_ms: (1, 10),
        stagger_ms: 0,
    });
}

#[test]
fn five_of_six_leaving_at_once_under_duplication_and_reordering_leave_a_ring_of_one_serving_every_key() {
    check(Faults {
        loss: 0.0,
        duplicate: 0.1,
        reorder: 0.1,
        vnodes: 1,
        delay_ms: (1, 10),
        stagger_ms: 0,
    });
}

/// With vnodes, before a leaving node's `Notify` said it was active, 10 seeds of 400 failed (29,
/// 35, 185, 199, 226, ...: acknowledged writes lost, and a departed position kept in the
/// survivor's successor list). Traced on seed 29 (`SIM_TRACE_KEY=k43`, then `SIM_TRACE_NODE=1`):
/// 0#1 leaves and hands its range, holding k43, to 1#1, which presumes 0#1 down once a request
/// to it fails; a `Notify` 0#1 sent while leaving arrives late, with `active: false` (the
/// node was no longer `Active`), and reads as the join of a node restarted on 0#1's address:
/// 1#1 makes 0#1 its predecessor again and hands it the range back, so its own leave later
/// transfers only (0#1, 1#1] and k43 leaves with it. A leaving node's notify now says it is
/// active (`a_leaving_nodes_notify_does_not_read_as_a_restarted_nodes_join` in
/// `core/src/chord/handoff.rs`).
///
/// Seed 1600 exhausted the memory of the test process (tens of GiB): host 2's first vnode,
/// leaving, asked a sibling vnode to take its range over, which accepted the leave and refused
/// its transfer; an aborted leave transfer was retried at once, and every answer to a leave
/// hint re-ran the leave, which announced it again with a hint to each neighbour: each answer
/// made five more messages, millions within a few simulated milliseconds. An aborted leave
/// transfer now retries on the next stabilize round, as a refused leave does, and a neighbour
/// with a hint unanswered is not sent another (`Node::abort_transfer`, `Node::announce_leave`).
/// The sibling refused the transfer because the leaving vnode's range had grown since it
/// accepted the leave (the leaver's own predecessor had left and handed it its range), so the
/// transfer's start was not the one it expected; a transfer that ends at the node whose leave
/// was accepted is now taken whatever its start
/// (`a_leaving_predecessors_range_that_grew_since_its_leave_is_taken` in
/// `core/src/chord/handoff.rs`). Seeds 1 to 2,000 of the four tests here pass.
///
/// Earlier: a late `Notify` from a departed node that was still `Active` when it sent it was
/// accepted (`a_late_notify_from_a_node_that_left_does_not_make_it_our_predecessor_again`); a
/// survivor forgets a leave `gone_keep_ms` after the last message that named the departed
/// position, so a later message from a host still leaving can name it again. Sharing a leave
/// among a host's vnodes was tried (12 of 200 seeds failed, with lost writes: a sibling that
/// takes the departed position's range in `depart` before the handoff arrives), and reverted.
#[test]
fn five_of_six_hosts_of_four_vnodes_leaving_at_once_under_faults_leave_one_serving_every_key() {
    check(Faults {
        loss: 0.05,
        duplicate: 0.05,
        reorder: 0.05,
        vnodes: 4,
        delay_ms: (1, 10),
        stagger_ms: 0,
    });
}
