//! Failure injection: the workload's `faults:` schedule, fired at its times relative to the
//! start of the measurement through a [`NodeControl`] (the local cluster today; remote nodes
//! over ssh can implement the same trait), and the set of nodes the clients may talk to.
//!
//! ```text
//!   fault thread: sleep until measure_start + at_s -> pick nodes (seeded) -> NodeControl
//!                 -> log line on stderr, FaultRecord -> Targets = the live nodes
//!   load threads: pick entry nodes from Targets; drop connections to nodes no longer in it
//! ```
//!
//! A partition leaves every node live (clients reach both sides); a partition still in place
//! when the load ends is healed then, so that the final reads see the healed cluster.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use chordkv_core::rng::Rng;
use chordkv_harness::cluster::NodeControl;

use crate::report::FaultRecord;
use crate::workload::{Fault, FaultAction};

/// Longest sleep of the fault thread, so that it sees the end of the load.
const POLL: Duration = Duration::from_millis(20);
/// Mixed into the run's seed for the fault thread's choices.
const FAULT_SEED: u64 = 0x4641_554c_5453;

/// The nodes clients may send requests to: every node given or started, then, once faults
/// fire, the live ones. Never empty.
#[derive(Debug)]
pub struct Targets {
    addrs: RwLock<Vec<SocketAddr>>,
    generation: AtomicU64,
}

impl Targets {
    /// `addrs` must not be empty.
    pub fn new(addrs: Vec<SocketAddr>) -> Targets {
        assert!(!addrs.is_empty(), "targets need at least one node");
        Targets {
            addrs: RwLock::new(addrs),
            generation: AtomicU64::new(0),
        }
    }

    /// The current nodes.
    pub fn snapshot(&self) -> Vec<SocketAddr> {
        self.addrs.read().expect("not poisoned").clone()
    }

    /// Changes each time [`Targets::set`] changes the nodes.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replaces the nodes; an empty list is ignored (every node is down: keep trying the last
    /// known ones rather than none).
    pub fn set(&self, addrs: Vec<SocketAddr>) {
        if addrs.is_empty() {
            return;
        }
        let mut current = self.addrs.write().expect("not poisoned");
        if *current != addrs {
            *current = addrs;
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The first node (the entry of `entry: fixed`).
    pub fn first(&self) -> SocketAddr {
        self.addrs.read().expect("not poisoned")[0]
    }

    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.addrs.read().expect("not poisoned").contains(&addr)
    }

    /// A random node, other than `avoid` when there is another.
    pub fn pick(&self, rng: &mut Rng, avoid: Option<SocketAddr>) -> SocketAddr {
        let addrs = self.addrs.read().expect("not poisoned");
        match avoid.and_then(|a| addrs.iter().position(|&x| x == a)) {
            Some(skip) if addrs.len() > 1 => {
                let i = rng.below(addrs.len() as u64 - 1) as usize;
                addrs[if i >= skip { i + 1 } else { i }]
            }
            _ => addrs[rng.below(addrs.len() as u64) as usize],
        }
    }
}

/// One step of the schedule: a fault of the workload, or the end of a timed pause or
/// partition.
enum Step {
    Fault(Fault),
    Unpause(Vec<usize>),
    Heal,
}

/// Fires `faults` at `measure_start + at_s` each, until they are all done. Once `stop` is
/// set (the load is over), the faults still to come are skipped, except the ends of timed
/// pauses and partitions, which fire at once so that no node is left frozen or cut off; a
/// partition with no end is healed then too. Each fault is logged to stderr and appended to
/// `log`; after each, `targets` becomes the live nodes.
pub fn run_schedule(
    faults: &[Fault],
    ctl: &mut dyn NodeControl,
    targets: &Targets,
    log: &Mutex<Vec<FaultRecord>>,
    measure_start: Instant,
    stop: &AtomicBool,
    seed: u64,
) {
    let mut rng = Rng::new(seed ^ FAULT_SEED);
    let mut partitioned = false;
    let mut schedule: Vec<(f64, Step)> = faults.iter().map(|f| (f.at_s, Step::Fault(f.clone()))).collect();
    schedule.sort_by(|a, b| a.0.total_cmp(&b.0));
    schedule.reverse();
    while let Some((at_s, step)) = schedule.pop() {
        let due = measure_start + Duration::from_secs_f64(at_s);
        let mut stopped = false;
        loop {
            if stop.load(Ordering::Relaxed) {
                stopped = true;
                break;
            }
            let now = Instant::now();
            if now >= due {
                break;
            }
            std::thread::sleep((due - now).min(POLL));
        }
        let (action, nodes) = match step {
            Step::Fault(f) if stopped => {
                eprintln!(
                    "fault at {at_s:.1} s: {} skipped: the load is over",
                    f.action.name()
                );
                continue;
            }
            Step::Fault(f) => {
                let nodes = match (&f.nodes, &f.groups) {
                    (Some(n), _) => n.clone(),
                    (None, Some(groups)) => groups.concat(),
                    (None, None) => pick_nodes(ctl, f.action, f.count_or_default(), &mut rng),
                };
                (f, nodes)
            }
            Step::Unpause(nodes) => (Fault::new(at_s, FaultAction::Resume), nodes),
            Step::Heal => (Fault::new(at_s, FaultAction::Heal), Vec::new()),
        };
        let record = apply(ctl, &action, &nodes, measure_start);
        let ok = record.error.is_none();
        let end = match (action.action, action.duration_s) {
            (FaultAction::Pause, Some(d)) => {
                let paused: Vec<usize> = nodes
                    .iter()
                    .copied()
                    .filter(|&i| ctl.is_running(i) && !ctl.is_live(i))
                    .collect();
                (!paused.is_empty()).then_some((at_s + d, Step::Unpause(paused)))
            }
            // Also after a partition that failed half-way: a heal undoes what was cut.
            (FaultAction::Partition, Some(d)) => Some((at_s + d, Step::Heal)),
            _ => None,
        };
        if let Some((end, step)) = end {
            // Keep the schedule sorted, soonest last.
            let pos = schedule.partition_point(|(t, _)| *t > end);
            schedule.insert(pos, (end, step));
        }
        match action.action {
            FaultAction::Partition => partitioned = true,
            FaultAction::Heal if ok => partitioned = false,
            _ => {}
        }
        targets.set(ctl.live_addrs());
        log.lock().expect("not poisoned").push(record);
    }
    if partitioned {
        // A partition with no end lasts as long as the load; the final reads need it healed.
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(POLL);
        }
        let at_s = Instant::now()
            .saturating_duration_since(measure_start)
            .as_secs_f64();
        let record = apply(ctl, &Fault::new(at_s, FaultAction::Heal), &[], measure_start);
        log.lock().expect("not poisoned").push(record);
    }
}

/// `count` nodes the action applies to, picked with `rng`: live nodes for kill, pause and
/// remove, paused ones for resume, dead ones for restart and forget. Fewer when fewer qualify; none for
/// add (it starts new nodes).
fn pick_nodes(ctl: &mut dyn NodeControl, action: FaultAction, count: usize, rng: &mut Rng) -> Vec<usize> {
    let n = ctl.addrs().len();
    let mut candidates: Vec<usize> = (0..n)
        .filter(|&i| match action {
            FaultAction::Kill | FaultAction::Pause | FaultAction::Remove => ctl.is_live(i),
            FaultAction::Resume => ctl.is_running(i) && !ctl.is_live(i),
            FaultAction::Restart | FaultAction::Forget => !ctl.is_running(i),
            FaultAction::Add | FaultAction::Partition | FaultAction::Heal => false,
        })
        .collect();
    if matches!(
        action,
        FaultAction::Add | FaultAction::Partition | FaultAction::Heal
    ) {
        return Vec::new();
    }
    // A partial Fisher-Yates shuffle: the first `count` are a uniform sample.
    let take = count.min(candidates.len());
    for k in 0..take {
        let j = k + rng.below((candidates.len() - k) as u64) as usize;
        candidates.swap(k, j);
    }
    candidates.truncate(take);
    candidates.sort_unstable();
    candidates
}

/// Applies `fault` to `nodes` (or, for add, starts `count` new nodes; a partition cuts
/// between its groups), logs it and returns its record.
fn apply(ctl: &mut dyn NodeControl, fault: &Fault, nodes: &[usize], measure_start: Instant) -> FaultRecord {
    let at_s = Instant::now()
        .saturating_duration_since(measure_start)
        .as_secs_f64();
    let mut done = Vec::new();
    let mut errors = Vec::new();
    let addrs = ctl.addrs();
    let name = |i: &usize| addrs.get(*i).map_or(format!("node {i}"), |a| a.to_string());
    let mut groups = Vec::new();
    if let Some(g) = fault
        .groups
        .as_ref()
        .filter(|_| fault.action == FaultAction::Partition)
    {
        groups = g.iter().map(|group| group.iter().map(name).collect()).collect();
        match ctl.partition(g) {
            Ok(()) => done.extend_from_slice(nodes),
            Err(e) => errors.push(format!("{e:#}")),
        }
    } else if fault.action == FaultAction::Heal {
        if let Err(e) = ctl.heal() {
            errors.push(format!("{e:#}"));
        }
    } else if fault.action == FaultAction::Add {
        for _ in 0..fault.count_or_default() {
            match ctl.add_node() {
                Ok(i) => done.push(i),
                Err(e) => errors.push(format!("add: {e:#}")),
            }
        }
    } else {
        for &i in nodes {
            let result = match fault.action {
                FaultAction::Kill => ctl.kill(i),
                FaultAction::Pause => ctl.pause(i),
                FaultAction::Resume => ctl.resume(i),
                FaultAction::Restart => ctl.restart(i),
                FaultAction::Forget => ctl.forget(i),
                FaultAction::Remove => ctl.terminate(i).map(|_| ()),
                FaultAction::Add | FaultAction::Partition | FaultAction::Heal => {
                    unreachable!("handled above")
                }
            };
            match result {
                Ok(()) => done.push(i),
                Err(e) => errors.push(format!("node {i}: {e:#}")),
            }
        }
    }
    let addrs = ctl.addrs();
    let names: Vec<String> = done
        .iter()
        .filter_map(|&i| addrs.get(i))
        .map(|a| a.to_string())
        .collect();
    let indices: Vec<String> = done.iter().map(|i| i.to_string()).collect();
    let what = if let Some(g) = fault
        .groups
        .as_ref()
        .filter(|_| fault.action == FaultAction::Partition)
    {
        g.iter()
            .map(|group| {
                let idx: Vec<String> = group.iter().map(|i| i.to_string()).collect();
                let names: Vec<String> = group.iter().map(name).collect();
                format!("nodes {} ({})", idx.join(", "), names.join(", "))
            })
            .collect::<Vec<_>>()
            .join(" | ")
    } else if fault.action == FaultAction::Heal {
        "the network".to_string()
    } else if done.is_empty() {
        "no node".to_string()
    } else {
        format!(
            "node{} {} ({})",
            if done.len() == 1 { "" } else { "s" },
            indices.join(", "),
            names.join(", ")
        )
    };
    let error = (!errors.is_empty()).then(|| errors.join("; "));
    FaultRecord {
        at_s: (at_s * 1000.0).round() / 1000.0,
        action: fault.action.name().to_string(),
        nodes: names,
        groups,
        what,
        error,
    }
}
