//! Random fault schedules: from a set of fault kinds and a seed, a timed list of faults and
//! their ends, which [`Sim::apply`] carries out. The same seed gives the same schedule, and
//! the schedule prints as text, so a failing run can be read and replayed.
//!
//! ```text
//!   0 ─────── faults ─────────────────────── healed_at ──── quiet ──── end
//!     crash n3 ──── restart n3 (empty)         every node running,
//!          pause n7 ─ resume n7                every cut healed,
//!               partition hold [2 5] ── heal   no duplication,
//!                   dup 0.20 reorder 0.10 ── off    then nothing happens
//! ```
//!
//! Bounds that keep a schedule within what the system promises to survive:
//! - At most `replicas` nodes lose their store (crash, then restart empty) within any window
//!   of `recovery_ms` after the last of them restarted: losing more copies than that loses
//!   data by definition, whatever the store does. A crash with a persistent restart loses
//!   nothing and is not counted.
//! - At most `max_down` nodes are crashed or paused at once, and a node has one fault at a time.
//! - One partition at a time (a minority, or one node, cut from the rest) and one window of
//!   duplication and reordering at a time.
//! - Every fault has ended by `healed_at`, followed by a quiet period.
//!
//! Clock skew and drift are not events: [`Schedule::configure`] turns them on for the run.

use std::fmt;

use super::network::CutMode;
use super::{Sim, SimConfig};
use chordkv_core::chord::Millis;
use chordkv_core::rng::Rng;

/// The kinds of fault a schedule may contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// A crash, then a restart with an empty store.
    CrashEmpty,
    /// A crash, then a restart on the same address with the store it had.
    CrashPersistent,
    /// A pause, then a resume.
    Pause,
    /// A partition whose held messages are delivered after the heal.
    PartitionHold,
    /// A partition that drops the messages across it.
    PartitionDrop,
    /// A window of message duplication and reordering.
    DuplicateReorder,
    /// Clock skew and drift on every node, for the whole run.
    ClockSkew,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::CrashEmpty,
        FaultKind::CrashPersistent,
        FaultKind::Pause,
        FaultKind::PartitionHold,
        FaultKind::PartitionDrop,
        FaultKind::DuplicateReorder,
        FaultKind::ClockSkew,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::CrashEmpty => "crash-empty",
            FaultKind::CrashPersistent => "crash-persistent",
            FaultKind::Pause => "pause",
            FaultKind::PartitionHold => "partition-hold",
            FaultKind::PartitionDrop => "partition-drop",
            FaultKind::DuplicateReorder => "duplicate-reorder",
            FaultKind::ClockSkew => "clock-skew",
        }
    }
}

/// One fault (or the end of one), as [`Sim::apply`] carries it out.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    Crash {
        node: usize,
    },
    /// The node restarts and joins through a running ring member it can reach.
    Restart {
        node: usize,
        keep_store: bool,
    },
    Pause {
        node: usize,
    },
    Resume {
        node: usize,
    },
    /// `side` is cut from every other node.
    Partition {
        side: Vec<usize>,
        mode: CutMode,
    },
    Heal,
    /// Sets the probabilities of duplication and of an extra delay (0 and 0 end a window).
    Network {
        duplicate: f64,
        reorder: f64,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Crash { node } => write!(f, "crash n{node}"),
            Fault::Restart {
                node,
                keep_store: true,
            } => write!(f, "restart n{node} with its store"),
            Fault::Restart {
                node,
                keep_store: false,
            } => write!(f, "restart n{node} empty"),
            Fault::Pause { node } => write!(f, "pause n{node}"),
            Fault::Resume { node } => write!(f, "resume n{node}"),
            Fault::Partition { side, mode } => write!(f, "partition {mode} {side:?} | rest"),
            Fault::Heal => write!(f, "heal"),
            Fault::Network { duplicate, reorder } if *duplicate == 0.0 && *reorder == 0.0 => {
                write!(f, "network clean")
            }
            Fault::Network { duplicate, reorder } => {
                write!(f, "network duplicate {duplicate:.2} reorder {reorder:.2}")
            }
        }
    }
}

/// A fault at a time, in milliseconds after the schedule starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub at_ms: Millis,
    pub fault: Fault,
}

/// What a schedule may contain, and its bounds.
#[derive(Clone, Debug)]
pub struct ScheduleConfig {
    pub seed: u64,
    /// Faults name nodes `0..nodes`.
    pub nodes: usize,
    /// Replicas after the primary: the most nodes that may lose their store at once.
    pub replicas: usize,
    pub kinds: Vec<FaultKind>,
    /// Every fault starts and ends within `[0, faults_ms]`.
    pub faults_ms: u64,
    /// Time between the starts of two faults, uniform in this range.
    pub gap_ms: (u64, u64),
    /// How long a fault lasts, uniform in this range.
    pub fault_ms: (u64, u64),
    /// How long after its restart a node that lost its store still counts as lost (the
    /// time re-replication needs to fill it again).
    pub recovery_ms: u64,
    /// Most nodes crashed or paused at once.
    pub max_down: usize,
    /// The quiet period after the heal.
    pub quiet_ms: u64,
    /// With [`FaultKind::ClockSkew`]: the drift bound (the offset bound is the nodes'
    /// `max_clock_offset_ms`).
    pub clock_drift_ppm: u64,
    /// With [`FaultKind::DuplicateReorder`]: the longest extra delay of a reordered message.
    pub reorder_max_ms: u64,
}

impl ScheduleConfig {
    /// Bounds scaled from the nodes' stabilize period: faults last long enough to be noticed
    /// (several RPC timeouts) and recovery spans several anti-entropy rounds.
    pub fn new(
        seed: u64,
        nodes: usize,
        replicas: usize,
        kinds: &[FaultKind],
        stabilize_ms: u64,
    ) -> ScheduleConfig {
        ScheduleConfig {
            seed,
            nodes,
            replicas,
            kinds: kinds.to_vec(),
            faults_ms: 150 * stabilize_ms,
            gap_ms: (5 * stabilize_ms, 20 * stabilize_ms),
            fault_ms: (3 * stabilize_ms, 40 * stabilize_ms),
            recovery_ms: 60 * stabilize_ms,
            max_down: (nodes.saturating_sub(1) / 3).max(1),
            quiet_ms: 120 * stabilize_ms,
            clock_drift_ppm: 200,
            reorder_max_ms: 5 * stabilize_ms,
        }
    }
}

/// A timed list of faults, ending healed.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub seed: u64,
    pub nodes: usize,
    pub kinds: Vec<FaultKind>,
    /// In time order (ties in the order generated).
    pub steps: Vec<Step>,
    /// Every fault has ended by then.
    pub healed_at_ms: Millis,
    /// The end of the quiet period.
    pub end_ms: Millis,
    pub clock_skew: bool,
    pub clock_drift_ppm: u64,
    pub reorder_max_ms: u64,
}

/// Salt for the schedule's RNG, so a schedule and a simulation with the same seed draw
/// unrelated numbers.
const SCHEDULE_SALT: u64 = 0x5c4e_d01e_fa17_5eed;

impl Schedule {
    pub fn generate(c: &ScheduleConfig) -> Schedule {
        let mut rng = Rng::new(c.seed ^ SCHEDULE_SALT);
        let events: Vec<FaultKind> = c
            .kinds
            .iter()
            .copied()
            .filter(|&k| k != FaultKind::ClockSkew)
            .collect();
        let mut steps: Vec<Step> = Vec::new();
        // A node is free for a new fault from this time on.
        let mut free_at = vec![0; c.nodes];
        // [start, end) of every crash or pause, and of every store loss (to restart + recovery).
        let mut down: Vec<(Millis, Millis)> = Vec::new();
        let mut losses: Vec<(Millis, Millis)> = Vec::new();
        let (mut partition_until, mut network_until) = (0, 0);
        let overlapping =
            |v: &[(Millis, Millis)], s: Millis, e: Millis| v.iter().filter(|w| w.0 < e && s < w.1).count();
        let mut t = rng.range(c.gap_ms.0, c.gap_ms.1);
        while !events.is_empty() && t + c.fault_ms.0 <= c.faults_ms {
            let kind = events[rng.below(events.len() as u64) as usize];
            let end = (t + rng.range(c.fault_ms.0, c.fault_ms.1)).min(c.faults_ms);
            let mut push = |at_ms, fault| steps.push(Step { at_ms, fault });
            match kind {
                FaultKind::CrashEmpty | FaultKind::CrashPersistent | FaultKind::Pause => {
                    let loses = kind == FaultKind::CrashEmpty;
                    let room = overlapping(&down, t, end) < c.max_down
                        && (!loses || overlapping(&losses, t, end + c.recovery_ms) < c.replicas);
                    let free: Vec<usize> = (0..c.nodes).filter(|&n| free_at[n] <= t).collect();
                    if room && !free.is_empty() {
                        let node = free[rng.below(free.len() as u64) as usize];
                        free_at[node] = end + 1;
                        down.push((t, end));
                        if loses {
                            losses.push((t, end + c.recovery_ms));
                        }
                        if kind == FaultKind::Pause {
                            push(t, Fault::Pause { node });
                            push(end, Fault::Resume { node });
                        } else {
                            push(t, Fault::Crash { node });
                            push(
                                end,
                                Fault::Restart {
                                    node,
                                    keep_store: !loses,
                                },
                            );
                        }
                    }
                }
                FaultKind::PartitionHold | FaultKind::PartitionDrop if partition_until <= t => {
                    let mode = if kind == FaultKind::PartitionHold {
                        CutMode::Hold
                    } else {
                        CutMode::Drop
                    };
                    // One node alone, or a minority of the ring.
                    let size = if rng.chance(0.5) {
                        1
                    } else {
                        rng.range(1, (c.nodes as u64 / 2).max(1)) as usize
                    };
                    let mut all: Vec<usize> = (0..c.nodes).collect();
                    let mut side = Vec::with_capacity(size);
                    for _ in 0..size {
                        side.push(all.remove(rng.below(all.len() as u64) as usize));
                    }
                    side.sort();
                    partition_until = end + 1;
                    push(t, Fault::Partition { side, mode });
                    push(end, Fault::Heal);
                }
                FaultKind::DuplicateReorder if network_until <= t => {
                    let duplicate = rng.range(5, 30) as f64 / 100.0;
                    let reorder = rng.range(5, 30) as f64 / 100.0;
                    network_until = end + 1;
                    push(t, Fault::Network { duplicate, reorder });
                    push(
                        end,
                        Fault::Network {
                            duplicate: 0.0,
                            reorder: 0.0,
                        },
                    );
                }
                _ => {}
            }
            t += rng.range(c.gap_ms.0, c.gap_ms.1);
        }
        steps.sort_by_key(|s| s.at_ms);
        let skew = c.kinds.contains(&FaultKind::ClockSkew);
        Schedule {
            seed: c.seed,
            nodes: c.nodes,
            kinds: c.kinds.clone(),
            steps,
            healed_at_ms: c.faults_ms,
            end_ms: c.faults_ms + c.quiet_ms,
            clock_skew: skew,
            clock_drift_ppm: if skew { c.clock_drift_ppm } else { 0 },
            reorder_max_ms: c.reorder_max_ms,
        }
    }

    /// Sets what the simulation needs before its nodes exist: clock skew and drift, and the
    /// reordering delay bound.
    pub fn configure(&self, config: &mut SimConfig) {
        config.clock_skew = self.clock_skew;
        config.clock_drift_ppm = self.clock_drift_ppm;
        config.reorder_max_ms = self.reorder_max_ms;
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds: Vec<&str> = self.kinds.iter().map(|k| k.name()).collect();
        write!(
            f,
            "schedule seed={} nodes={} kinds={kinds:?}",
            self.seed, self.nodes
        )?;
        if self.clock_skew {
            write!(
                f,
                " clock skew (max offset from the nodes' config), drift ±{} ppm",
                self.clock_drift_ppm
            )?;
        }
        writeln!(f)?;
        for s in &self.steps {
            writeln!(f, "  t+{:>6} ms  {}", s.at_ms, s.fault)?;
        }
        write!(
            f,
            "  t+{:>6} ms  healed; quiet until t+{} ms",
            self.healed_at_ms, self.end_ms
        )
    }
}

impl Sim {
    /// Carries out one fault of a schedule.
    pub fn apply(&mut self, fault: &Fault) {
        match fault {
            Fault::Crash { node } => self.crash(*node),
            Fault::Restart { node, keep_store } => {
                let via = self.join_candidates(*node);
                self.restart_through(*node, &via, *keep_store);
            }
            Fault::Pause { node } => self.pause(*node),
            Fault::Resume { node } => self.resume(*node),
            Fault::Partition { side, mode } => {
                let rest: Vec<usize> = (0..self.len()).filter(|n| !side.contains(n)).collect();
                self.partition_with(side, &rest, *mode);
            }
            Fault::Heal => self.heal(),
            Fault::Network { duplicate, reorder } => {
                self.set_duplicate(*duplicate);
                self.set_reorder(*reorder);
            }
        }
    }

    /// The nodes a restarting node `i` joins through: running ring members it can reach, in
    /// index order starting after `i`, then the other live nodes (a join rotates through
    /// them until one answers).
    pub fn join_candidates(&self, i: usize) -> Vec<usize> {
        let n = self.len();
        let order = (1..n).map(|d| (i + d) % n);
        let good = |j: &usize| {
            self.is_alive(*j)
                && !self.is_paused(*j)
                && self.node(*j).in_ring()
                && self.cut_mode(i, *j).is_none()
        };
        let mut via: Vec<usize> = order.clone().filter(good).collect();
        via.extend(order.filter(|j| self.is_alive(*j) && !good(j)));
        via
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(seed: u64, kinds: &[FaultKind]) -> ScheduleConfig {
        ScheduleConfig::new(seed, 10, 2, kinds, 100)
    }

    /// Replays a schedule's steps on a model of the nodes and checks every bound.
    fn check_bounds(c: &ScheduleConfig, s: &Schedule) {
        let mut crashed = vec![None::<bool>; c.nodes]; // Some(empty restart?) while crashed
        let mut paused = vec![false; c.nodes];
        let mut losses: Vec<(Millis, Millis)> = Vec::new(); // (crash, restart + recovery)
        let mut lost_since = vec![0; c.nodes];
        let (mut cut, mut network) = (false, false);
        let mut last = 0;
        for step in &s.steps {
            assert!(step.at_ms >= last, "steps in time order");
            assert!(step.at_ms <= s.healed_at_ms);
            last = step.at_ms;
            match &step.fault {
                Fault::Crash { node } => {
                    assert!(
                        crashed[*node].is_none() && !paused[*node],
                        "one fault per node: {s}"
                    );
                    crashed[*node] = Some(false);
                    lost_since[*node] = step.at_ms;
                }
                Fault::Restart { node, keep_store } => {
                    assert!(crashed[*node].is_some());
                    crashed[*node] = None;
                    if !keep_store {
                        losses.push((lost_since[*node], step.at_ms + c.recovery_ms));
                    }
                }
                Fault::Pause { node } => {
                    assert!(crashed[*node].is_none() && !paused[*node]);
                    paused[*node] = true;
                }
                Fault::Resume { node } => {
                    assert!(paused[*node]);
                    paused[*node] = false;
                }
                Fault::Partition { side, .. } => {
                    assert!(!cut, "one partition at a time");
                    assert!(!side.is_empty() && side.len() <= c.nodes / 2);
                    cut = true;
                }
                Fault::Heal => cut = false,
                Fault::Network { duplicate, .. } => network = *duplicate > 0.0,
            }
            let down = crashed.iter().filter(|c| c.is_some()).count() + paused.iter().filter(|&&p| p).count();
            assert!(down <= c.max_down, "{down} down at once: {s}");
        }
        assert!(crashed.iter().all(Option::is_none) && !paused.contains(&true) && !cut && !network);
        // Store losses: at no instant are more than `replicas` windows open.
        for &(t, _) in &losses {
            let open = losses.iter().filter(|w| w.0 <= t && t < w.1).count();
            assert!(open <= c.replicas, "{open} store losses overlap at {t}: {s}");
        }
    }

    #[test]
    fn schedules_respect_their_bounds_and_end_healed() {
        for seed in 0..300 {
            for kinds in [
                vec![FaultKind::CrashEmpty],
                vec![
                    FaultKind::CrashEmpty,
                    FaultKind::Pause,
                    FaultKind::CrashPersistent,
                ],
                FaultKind::ALL.to_vec(),
            ] {
                let c = config(seed, &kinds);
                check_bounds(&c, &Schedule::generate(&c));
            }
        }
    }

    #[test]
    fn a_seed_gives_the_same_schedule_and_kinds_are_respected() {
        let c = config(7, &FaultKind::ALL);
        assert_eq!(
            Schedule::generate(&c).to_string(),
            Schedule::generate(&c).to_string()
        );
        assert_ne!(
            Schedule::generate(&c).to_string(),
            Schedule::generate(&config(8, &FaultKind::ALL)).to_string()
        );
        let pauses = Schedule::generate(&config(7, &[FaultKind::Pause]));
        assert!(!pauses.steps.is_empty());
        assert!(pauses
            .steps
            .iter()
            .all(|s| matches!(s.fault, Fault::Pause { .. } | Fault::Resume { .. })));
        let skew = Schedule::generate(&config(7, &[FaultKind::ClockSkew]));
        assert!(skew.steps.is_empty() && skew.clock_skew);
    }

    #[test]
    fn every_kind_of_event_appears_in_mixed_schedules() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..20 {
            for s in Schedule::generate(&config(seed, &FaultKind::ALL)).steps {
                seen.insert(
                    s.fault
                        .to_string()
                        .split(' ')
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" "),
                );
            }
        }
        for want in [
            "crash",
            "restart",
            "pause",
            "resume",
            "partition hold",
            "partition drop",
            "heal",
            "network duplicate",
            "network clean",
        ] {
            assert!(
                seen.iter().any(|s| s.starts_with(want)),
                "{want} missing from {seen:?}"
            );
        }
    }
}
