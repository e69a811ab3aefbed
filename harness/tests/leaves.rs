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
//! `SIM_SEEDS=1-2000 cargo test -p chordkv-harness --test leaves -- --include-ignored` for
//! the long mode (the test marked ignored fails on the current core: see its reason).

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
    let seeds = seeds(&(1..=40).collect::<Vec<_>>());
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

/// With vnodes the leaves still go wrong in 2 seeds of 200 (159: an acknowledged write lost;
/// 198: the survivor keeps a departed position in a successor list). It was 8 of 200 (seeds
/// 28, 75, 112, ...) before a late `Notify` from a departed node was refused (see
/// `a_late_notify_from_a_node_that_left_does_not_make_it_our_predecessor_again` in
/// `core/src/chord/handoff.rs`): traced on seed 28 (`SIM_TRACE_NODE=i` prints each request a
/// host receives with the receiving vnode's predecessor), a duplicated `Notify` from before a
/// leave reached the survivor after it had taken the range over, was accepted (the departed
/// node was presumed down as well as gone, which the restart exception let through), and the
/// range went back to the departed node, which stayed the survivor's predecessor; the survivor
/// then refused the leave of the node before it for good, and the chain of simultaneous leaves
/// behind it waited out its leave deadline without handing its ranges on.
///
/// Seed 159 (traced with `SIM_TRACE_KEY=k16`): 4#1, leaving, hands its range (holding k16, taken
/// over from 3#0) to 4#3, which sets its predecessor back past 5#1, a node still leaving
/// between them; later 4#3's predecessor is 5#1 again, so 4#3's own leave transfers only
/// (5#1, 4#3] and k16, outside it, leaves with the host. A node whose predecessor moves
/// forward should hand the range it no longer owns on (as a join's notify does), or a leave
/// should transfer every primary key it holds.
///
/// Seed 198: the survivor forgets a leave 3.2 s (`gone_keep_ms`) after the last message that
/// named the departed position, and a later message from a host still leaving names it again.
/// A leave remembered for as long as a leave may take (`leave_timeout_ms`, 30 s) would need a
/// restarted node to be told apart from a late message (an incarnation in the leave notice).
/// Sharing a leave among a host's vnodes was tried (12 of 200 seeds failed, with lost writes:
/// a sibling that takes the departed position's range in `depart` before the handoff arrives),
/// and reverted.
#[test]
#[ignore = "fails on the current core: a few seeds in 200, see the doc comment"]
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
