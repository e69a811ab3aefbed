//! The store under network faults (issue 11): random fault schedules under a client workload,
//! judged by a history oracle and a ring oracle. One test per kind of fault, then a mixed
//! one, one for the `available` partition policy, and a replay check.
//!
//! Each run builds a ring of [`NODES`] nodes (replicas 2, ack all, stabilize 100 ms, the
//! partition policy under test), generates a schedule from the seed ([`Schedule`]), and runs
//! it while clients put, delete and get a few keys through random live nodes, several
//! operations in flight. Every schedule ends healed, then a quiet period; then:
//!
//! - the history oracle ([`chordkv_harness::history`]) judges every read by real-time order:
//!   no acknowledged write lost (each key is read once at the end), no stale read, no deleted
//!   value back, no value that was never written;
//! - every key's final read must succeed (after the heal the store is available again);
//! - the ring oracle ([`Sim::zave_problem`]) wants one ring that satisfies Zave's invariants.
//!
//! Each run prints its seed and schedule. `SIM_SEEDS=A-B` runs seeds A to B instead of the
//! few CI runs, and a failing test lists every failing seed with its schedule and the first
//! anomalies; one seed replays exactly with `SIM_SEEDS=N`. Long mode (roughly half an hour to an
//! hour on two cores in release, or name one test after `--include-ignored`; the tests marked
//! ignored fail on the current core, see their reasons):
//!
//! ```text
//! SIM_SEEDS=1-2000 cargo test --release -p chordkv-harness --test faults -- --include-ignored
//! ```
//!
//! **Virtual nodes** (issue 14). The `vnodes_*` tests run the same schedules on [`VNODE_HOSTS`]
//! hosts of [`VNODES`] ring positions each: a fault names a host and takes all its positions
//! (a pause freezes them together, a partition cuts them together, a restart empties every
//! partition of its store), each key's copies are on three distinct hosts, and the oracles
//! look at every position (Zave's invariants over all vnodes; the history over the keys).
//! `SIM_VNODES=V` runs any test on hosts of V vnodes (on [`VNODE_HOSTS`] hosts, or
//! `SIM_HOSTS=H`); summaries name the shape (`seed 7 (8 hosts x 4 vnodes): ...`). The long
//! mode with vnodes, each kind on its own (about 1 s a seed at V = 4 on one core; the test
//! profile optimises the core and the harness, so a debug build is as fast as release):
//!
//! ```text
//! SIM_SEEDS=1-200 cargo test -p chordkv-harness --test faults -- vnodes_
//! SIM_SEEDS=1-40 SIM_VNODES=16 SIM_HOSTS=4 cargo test -p chordkv-harness --test faults -- vnodes_
//! ```
//!
//! Debugging aids: `SIM_TRACE_KEY=k7` prints every store write of a key, `SIM_TRACE_NODE=3`
//! every message of a node, `SIM_RING_AT=9500,10800` every node's view of the ring at those
//! (true) times.

mod common;

use bytes::Bytes;
use chordkv_core::chord::config::{AckPolicy, PartitionPolicy};
use chordkv_core::chord::Config;
use chordkv_core::rng::Rng;
use chordkv_harness::history::Report;
use chordkv_harness::sim::recorder::{Counts, Recorder};
use chordkv_harness::sim::schedule::{FaultKind, Schedule, ScheduleConfig};
use chordkv_harness::sim::{Sim, SimConfig};
use common::{build_ring, seeds, STABILIZE_MS};

/// Hosts of the rings without vnodes.
const NODES: usize = 10;
/// Hosts and vnodes per host of the rings with vnodes (issue 14): 32 positions, each key's
/// three copies on three distinct hosts.
const VNODE_HOSTS: usize = 8;
const VNODES: u16 = 4;
const REPLICAS: usize = 2;
/// Few keys, so that reads meet recent writes of the same key often.
const KEYS: u64 = 30;
/// One client operation is sent every this many milliseconds, whatever is in flight.
const OP_GAP_MS: u64 = 10;
/// The load goes on this long after the heal, while the ring merges and repairs.
const LOAD_AFTER_HEAL_MS: u64 = 2_000;
/// Final reads: attempts per key, and the pause between them.
const FINAL_READ_ATTEMPTS: u32 = 5;
const FINAL_READ_RETRY_MS: u64 = 1_000;
/// Salt for the workload's RNG (the simulation and the schedule have their own).
const WORKLOAD_SALT: u64 = 0x10ad_10ad;

/// The ring a run builds: hosts (the schedule's nodes), and vnodes per host.
#[derive(Clone, Copy, Debug)]
struct Shape {
    hosts: usize,
    vnodes: u16,
}

impl Shape {
    /// One position per host.
    const PLAIN: Shape = Shape {
        hosts: NODES,
        vnodes: 1,
    };
    /// Hosts of [`VNODES`] positions each.
    const VNODES: Shape = Shape {
        hosts: VNODE_HOSTS,
        vnodes: VNODES,
    };

    /// `SIM_VNODES=V` (and `SIM_HOSTS=H`) override `default`'s shape: the long mode runs any
    /// test on hosts of V vnodes.
    fn from_env_or(default: Shape) -> Shape {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.parse::<usize>().unwrap_or_else(|_| panic!("{name}=N")))
        };
        let vnodes = var("SIM_VNODES").map_or(default.vnodes, |v| v as u16);
        let hosts = var("SIM_HOSTS").unwrap_or(if vnodes == default.vnodes {
            default.hosts
        } else if vnodes > 1 {
            VNODE_HOSTS
        } else {
            NODES
        });
        Shape { hosts, vnodes }
    }
}

/// What a run found.
struct Outcome {
    seed: u64,
    shape: Shape,
    schedule: Schedule,
    /// The true time the schedule starts at (histories and traces give true times).
    t0: u64,
    report: Report,
    counts: Counts,
    /// The ring's problem after the quiet period, by Zave's invariants, and every node's
    /// view then.
    ring: Option<String>,
    ring_views: String,
    /// A digest of every reply, of every store, and the count of messages sent: equal for
    /// two runs of one seed.
    digest: (u64, u64, u64),
    /// The operations on the first keys the examples name.
    keys: Vec<(String, Vec<String>)>,
}

/// Histories of this many keys are printed for a failing seed.
const KEYS_DESCRIBED: usize = 3;

impl Outcome {
    fn is_clean(&self) -> bool {
        self.report.is_clean() && self.ring.is_none() && self.counts.final_unavailable == 0
    }

    fn summary(&self) -> String {
        let (r, c) = (&self.report, &self.counts);
        format!(
            "seed {} ({} hosts x {} vnodes): lost {} stale {} resurrected {} unexpected {} (reads checked {}); final reads \
             unavailable {}/{}; ring {}; puts {}/{} acked, deletes {}/{}, writes failed {} \
             unanswered {} destroyed by the faults {}, gets {}/{} ok",
            self.seed,
            self.shape.hosts,
            self.shape.vnodes,
            r.lost,
            r.stale_reads,
            r.resurrected,
            r.unexpected,
            r.reads_checked,
            c.final_unavailable,
            c.final_reads,
            self.ring.as_deref().unwrap_or("ok"),
            c.puts_acked,
            c.puts,
            c.deletes_acked,
            c.deletes,
            c.writes_failed,
            c.writes_unanswered,
            c.writes_destroyed,
            c.gets_ok,
            c.gets,
        )
    }

    /// The summary, the schedule, the first anomalies and the history of the first keys
    /// involved: enough to start on a failure.
    fn details(&self) -> String {
        let mut s = format!(
            "{}\n{}\n  (the schedule starts at t={})\n",
            self.summary(),
            self.schedule,
            self.t0
        );
        for e in &self.report.examples {
            s += &format!("    {e}\n");
        }
        if self.ring.is_some() || self.counts.final_unavailable > 0 {
            s += &format!("  the ring after the quiet period:\n{}", self.ring_views);
        }
        for (key, ops) in &self.keys {
            s += &format!("  history of {key}:\n");
            for op in ops {
                s += &format!("    {op}\n");
            }
        }
        s
    }
}

/// `SIM_RING_AT=t1,t2,..`: the true times at which to print every node's view of the ring
/// (debugging aid).
fn ring_trace_times() -> Vec<u64> {
    let mut v: Vec<u64> = std::env::var("SIM_RING_AT")
        .map(|v| v.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs one seed's schedule of `kinds` under load on a ring of `shape`, then judges it.
fn run(seed: u64, kinds: &[FaultKind], policy: PartitionPolicy, shape: Shape) -> Outcome {
    let Shape { hosts, vnodes } = shape;
    println!("seed = {seed}, {hosts} hosts x {vnodes} vnodes, {policy}");
    let mut chord = Config::with_stabilize_interval_ms(STABILIZE_MS);
    chord.replicas = REPLICAS;
    chord.ack = AckPolicy::All;
    chord.partition_policy = policy;
    let schedule = Schedule::generate(&ScheduleConfig::new(seed, hosts, REPLICAS, kinds, STABILIZE_MS));
    println!("{schedule}");
    let mut config = SimConfig {
        seed,
        min_delay_ms: 1,
        max_delay_ms: 10,
        chord,
        track_copies: true,
        vnodes,
        ..SimConfig::default()
    };
    schedule.configure(&mut config);
    let mut s = Sim::new(config);
    let mut rng = Rng::new(seed ^ WORKLOAD_SALT);
    build_ring(&mut s, hosts, &mut rng);
    if schedule.clock_skew {
        let clocks: Vec<(i64, i64)> = (0..hosts)
            .map(|i| (s.clock(i).offset_ms, s.clock(i).drift_ppm))
            .collect();
        println!("  clocks (offset ms, drift ppm): {clocks:?}");
    }
    let mut rec = Recorder::new();
    let t0 = s.now();
    // Histories and traces give true times; the schedule's are after t0.
    println!("  the schedule starts at t={t0}");
    let mut steps = schedule.steps.iter().peekable();
    let load_until = t0 + schedule.healed_at_ms + LOAD_AFTER_HEAL_MS;
    let mut ring_at = ring_trace_times();
    while s.now() < load_until {
        let next_op = s.now() + OP_GAP_MS;
        if ring_at.first().is_some_and(|&t| t < next_op) {
            ring_at.remove(0);
            println!("ring at t={}:\n{}", s.now(), s.describe_ring());
        }
        while let Some(step) = steps.next_if(|st| t0 + st.at_ms < next_op) {
            s.run_until(t0 + step.at_ms);
            s.apply(&step.fault);
        }
        let alive = s.alive();
        let via = alive[rng.below(alive.len() as u64) as usize];
        let key = format!("k{}", rng.below(KEYS));
        match rng.below(20) {
            0..=8 => rec.put(&mut s, via, key.as_bytes()),
            9..=10 => rec.delete(&mut s, via, key.as_bytes()),
            _ => rec.get(&mut s, via, key.as_bytes()),
        };
        s.run_until(next_op);
        rec.poll(&mut s);
    }
    assert!(steps.next().is_none(), "every fault ends by healed_at");
    s.run_until(t0 + schedule.end_ms);
    rec.poll(&mut s);
    let ring = s.zave_problem();
    let ring_views = format!(
        "{}  exact ring (ring_problem): {}\n",
        s.describe_ring(),
        s.ring_problem().as_deref().unwrap_or("ok")
    );
    rec.final_reads(&mut s, FINAL_READ_ATTEMPTS, FINAL_READ_RETRY_MS);
    rec.finish();
    rec.excuse_destroyed(s.destroyed_writes());
    let report = rec.check();
    // The keys to describe: those with lost writes first, then resurrected, then stale.
    let mut by_key: Vec<(Bytes, Report)> = rec
        .check_by_key()
        .into_iter()
        .filter(|(_, r)| !r.is_clean())
        .collect();
    by_key.sort_by_key(|(k, r)| (r.lost == 0, r.resurrected == 0, r.unexpected == 0, k.clone()));
    let keys: Vec<(String, Vec<String>)> = by_key
        .iter()
        .take(KEYS_DESCRIBED)
        .map(|(k, r)| {
            let mut lines = r.examples.clone();
            lines.extend(rec.describe(k).iter().cloned());
            (String::from_utf8_lossy(k).into_owned(), lines)
        })
        .collect();
    let keys = keys
        .into_iter()
        .chain(rec.unavailable().iter().take(KEYS_DESCRIBED).map(|k| {
            let name = format!("{} (final read failed)", String::from_utf8_lossy(k));
            (name, rec.describe(k).to_vec())
        }))
        .collect();
    let outcome = Outcome {
        seed,
        shape,
        t0,
        keys,
        report,
        counts: rec.counts().clone(),
        ring,
        ring_views,
        digest: (rec.digest(), s.store_digest(), s.messages),
        schedule,
    };
    println!("{}", outcome.summary());
    outcome
}

/// Runs the seeds (`SIM_SEEDS` or `default`) on rings without vnodes (or `SIM_VNODES`) and
/// fails listing every seed that was not clean.
fn check(kinds: &[FaultKind], default: &[u64]) {
    check_seeds(kinds, &seeds(default));
}

/// [`check`] on hosts of [`VNODES`] vnodes (or `SIM_VNODES`).
fn check_vnodes(kinds: &[FaultKind], default: &[u64]) {
    check_shape(Shape::from_env_or(Shape::VNODES), kinds, &seeds(default));
}

fn check_seeds(kinds: &[FaultKind], seeds: &[u64]) {
    check_shape(Shape::from_env_or(Shape::PLAIN), kinds, seeds);
}

fn check_shape(shape: Shape, kinds: &[FaultKind], seeds: &[u64]) {
    let failed: Vec<String> = seeds
        .iter()
        .map(|&seed| run(seed, kinds, PartitionPolicy::Consistent, shape))
        .filter(|o| !o.is_clean())
        .map(|o| o.details())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} seeds failed:\n{}",
        failed.len(),
        seeds.len(),
        failed.join("\n")
    );
}

// The long mode's findings are in docs/architecture.md (section 5) and the issue's closing
// note; every seed it found failing became a fixed seed of a test here or was fixed.

#[test]
fn pause() {
    check(&[FaultKind::Pause], &[1, 2]);
}

/// A primary paused while a catch-up of its range was in flight: on resume the catch-up's
/// replies (read before the stand-in's writes) arrived with a new lease, and it served from
/// them. A lease gained anew starts its catch-up over (seed 907, found by the long mode).
#[test]
fn a_catch_up_from_before_a_pause_does_not_serve_a_new_lease() {
    check_seeds(&[FaultKind::Pause], &[907]);
}

#[test]
fn partition_hold() {
    check(&[FaultKind::PartitionHold], &[1, 2]);
}

#[test]
fn partition_drop() {
    check(&[FaultKind::PartitionDrop], &[1, 2]);
}

#[test]
fn duplication_and_reordering() {
    check(&[FaultKind::DuplicateReorder], &[1, 2]);
}

/// Skew and drift alone, on a stable ring: versions stamped by clocks up to
/// `max_clock_offset_ms` apart must all be accepted and ordered.
#[test]
fn clock_skew_and_drift() {
    check(&[FaultKind::ClockSkew], &[1, 2]);
}

/// Skew and drift where ownership moves (pauses, crashes): leases and deadlines must hold
/// with clocks up to `max_clock_offset_ms` apart and a paused node's clock jumping ahead.
#[test]
fn clock_skew_with_pauses_and_restarts() {
    check(
        &[FaultKind::ClockSkew, FaultKind::Pause, FaultKind::CrashPersistent],
        &[1, 2],
    );
}

#[test]
fn restart_with_persistent_store() {
    check(&[FaultKind::CrashPersistent], &[1, 2]);
}

#[test]
fn restart_with_empty_store() {
    check(&[FaultKind::CrashEmpty], &[1, 2]);
}

/// Copies of a key restarted on empty stores one after the other: the first, not refilled
/// yet, must not vouch for the range when the second (the primary) catches up, or the primary
/// serves a read that misses a write the third copy holds. Seeds found by the long mode
/// (stale reads before copies were *trusted*, `chord/trust.rs`); always these.
#[test]
fn copies_restarted_empty_one_after_another_do_not_vouch_for_each_other() {
    check_seeds(&[FaultKind::CrashEmpty], &[103, 155, 185, 229, 264]);
}

/// Mixed schedules the long mode found stale reads in before copies were trusted; in seed 615
/// a paused copy and two restarted empty wipe every copy of some writes (judged as destroyed
/// by the faults, `sim/copies.rs`, not as lost); in seed 681 a primary back with its store,
/// its successor list not refilled yet, saw a preference list of two and took one trusted
/// copy (its own) for enough (`Node::copies_of`).
#[test]
fn mixed_seeds_with_copies_restarted_empty() {
    check_seeds(&FaultKind::ALL, &[10, 59, 615, 681]);
}

/// Nodes restarted on their old address before their crash was noticed (a supervisor's
/// fast restart), some at the same instant as their ring neighbour: seeds found by the long
/// mode (always these, whatever `SIM_SEEDS` says).
#[test]
fn restart_on_the_old_address_before_the_crash_is_noticed() {
    check_seeds(&[FaultKind::CrashPersistent], &[5, 10, 21, 22, 25]);
}

#[test]
fn mixed() {
    check(&FaultKind::ALL, &[1, 2]);
}

/// `available` promises less: every key stays writable on both sides of a partition, and
/// divergent copies merge by version after the heal (last write wins), so acknowledged
/// writes may be overwritten by concurrent ones and reads may be stale. It still never
/// returns a value nobody wrote, and the ring must come back as one.
#[test]
fn available_policy_returns_only_written_values_and_the_ring_converges() {
    let mut failed = Vec::new();
    // Seed 599: a node restarted during a partition leaves two rings that interleave on the
    // circle; no probed node names one of the other ring's nodes as a closer successor, so
    // the merge needs a lookup through the other ring (1 of the 5 in 2,000 long-mode seeds
    // that ended with two rings before it). Seed 574: that lookup's answer names our own
    // successor (the other side's tables still list our nodes), which does not prove one
    // ring: the departed node must stay probed. Seed 1041: only the cut-off node's successor
    // remembers it, so the other ring must be told of us (a NOTIFY to the node of that ring
    // that should have us as its predecessor).
    for seed in seeds(&[1, 2, 574, 599, 1041]) {
        let o = run(
            seed,
            &FaultKind::ALL,
            PartitionPolicy::Available,
            Shape::from_env_or(Shape::PLAIN),
        );
        if o.report.unexpected > 0 || o.ring.is_some() {
            failed.push(o.details());
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// One mixed seed run twice gives the same replies at the same times, the same stores and
/// the same message count.
#[test]
fn a_mixed_seed_replays_exactly() {
    let seed = seeds(&[3])[0];
    let shape = Shape::from_env_or(Shape::PLAIN);
    let a = run(seed, &FaultKind::ALL, PartitionPolicy::Consistent, shape);
    let b = run(seed, &FaultKind::ALL, PartitionPolicy::Consistent, shape);
    assert_eq!(a.digest, b.digest, "seed {seed}");
    assert_eq!(a.report, b.report, "seed {seed}");
    assert_eq!(a.counts, b.counts, "seed {seed}");
    let c = run(seed + 1, &FaultKind::ALL, PartitionPolicy::Consistent, shape);
    assert_ne!(a.digest, c.digest, "another seed, another run");
}

// ---- hosts of vnodes (issue 14) ----------------------------------------------------------
//
// The same schedules on hosts of [`VNODES`] positions: a fault takes every position of its
// host at once (a pause freezes them together, a partition cuts them together), and the
// copies of a key are on distinct hosts, so a host's fault costs each key at most one copy.

#[test]
fn vnodes_pause() {
    check_vnodes(&[FaultKind::Pause], &[1, 2, 3]);
}

#[test]
fn vnodes_partition_hold() {
    check_vnodes(&[FaultKind::PartitionHold], &[1, 2, 3]);
}

#[test]
fn vnodes_partition_drop() {
    check_vnodes(&[FaultKind::PartitionDrop], &[1, 2, 3]);
}

#[test]
fn vnodes_duplication_and_reordering() {
    check_vnodes(&[FaultKind::DuplicateReorder], &[1, 2, 3]);
}

#[test]
fn vnodes_mixed() {
    check_vnodes(&FaultKind::ALL, &[1, 2, 3]);
}

/// Seed 49 of the mixed schedules on hosts of 4 vnodes (found by the long mode): a primary
/// restarted empty rejoined as a member with a successor list that skipped its true successor
/// (a lookup answer padded with the answerer's fingers, and the next node cut off by a
/// partition, so stabilize could not walk back). Its view of the range's preference list named
/// a node that keeps no copy of the range; that node answered the catch-up as a trusted copy,
/// and the primary served a read that missed writes its true successor held. A first fix (a
/// copy counts for a catch-up only if it granted the lease) was reverted: with it, real
/// processes of tests/tests/faults.rs lost liveness after kills and leaves. The gap is closed
/// at its root: under `consistent` a lookup answer is never padded with fingers
/// (`placement.rs` `extend_list`; `lookup.rs`
/// `a_lookup_answer_under_consistent_names_consecutive_members_only` fails without it), and a
/// short successor list is filled from the predecessor's (scenario `restart_neighbours`). The
/// seed no longer reaches that trajectory since successor lists count hosts; it runs as a
/// plain seed.
#[test]
fn vnodes_a_catch_up_counts_only_copies_that_granted_the_lease() {
    check_shape(Shape::VNODES, &FaultKind::ALL, &[49]);
}

/// Seed 249 of the mixed schedules on hosts of 4 vnodes (found by the long mode after the fix
/// above): a split brain. Host 4 restarted with its store while a partition cut off hosts 0, 5
/// and 7, whose positions n5#3 and n7#3 lie just before n4#0 (members that are down, which
/// `consistent` keeps). The lookup answer n4#2 rejoined with (`rejoin_as_member`) was padded
/// from the answerer's fingers (`placement.rs` `extend_list`): `[n4#2, n4#0, n1#3]`, without
/// n5#3 and n7#3. n4#0's `check_predecessor` then asked the nearest live node before it, its
/// own sibling n4#2, whose list confirmed n4#2 as n4#0's predecessor; n4#0 took the ranges of
/// n5#3 and n7#3, and got a lease on them from its own preference list while n5#3 and n7#3,
/// two of the three copies, kept serving them on the other side: a stale read and a deleted
/// value read back. The root is that a lookup answer padded with fingers is taken as a
/// contiguous successor list (the same gap as seed 49's, now closed: see above). The seed
/// stopped reproducing it when successor lists began to count hosts and hosts to tick only
/// the vnodes that are due (both change every trajectory), so it runs as a plain seed.
#[test]
fn vnodes_a_restarted_host_does_not_take_the_ranges_of_members_cut_off() {
    check_shape(Shape::VNODES, &FaultKind::ALL, &[249]);
}

/// Seed 341 of the mixed schedules on hosts of 4 vnodes (found by the long mode after the fix
/// above): a deleted value read back during a partition that holds messages (`[1, 3, 6, 7] |
/// rest`), after host 1 restarted empty. Not analysed; the seed stopped reproducing it with
/// the same changes as seed 249's, so it runs as a plain seed.
#[test]
fn vnodes_mixed_seed_341_resurrects_no_delete() {
    check_shape(Shape::VNODES, &FaultKind::ALL, &[341]);
}
